"""Clip-Act (Hoang et al., DATE 2020): zero above a per-layer bound, the profiled maximum or the
FT-ClipAct threshold search (DESIGN §2.4, clipact_search.py)."""
from __future__ import annotations

from ..bounded import BoundedReLU
from ...checks import check_keys, expect_bool, expect_int, expect_list, expect_number
from ..registry import ConfigError, Protection, register_protection
from .ranger import options


class ClipActReLU(BoundedReLU):
    """x if 0 <= x <= b else 0; other kinds: g(x) if a <= g(x) <= b else 0."""

    def forward(self, x):
        return self._clip(x)


def _searches(cfg) -> bool:
    return bool((cfg.get("search") or {}).get("enabled", False))


def _check_search(search) -> None:
    check_keys(search, "protection.search", ("enabled", "candidates", "iterations", "trials", "images", "rates"))
    expect_bool(search.get("enabled", False), "protection.search.enabled")
    expect_int(search.get("candidates", 2), "protection.search.candidates", 2)
    for key in ("iterations", "trials"):
        expect_int(search.get(key, 1), f"protection.search.{key}", 1)
    expect_int(search.get("images", 1), "protection.search.images", 1, allow_none=True)  # null: the whole val split
    if search.get("rates") is not None:
        for rate in expect_list(search["rates"], "protection.search.rates", allow_scalar=True):
            expect_number(rate, "protection.search.rates", 0, 1, low_open=True)


def _check(cfg) -> None:
    if "search" in cfg:
        _check_search(cfg["search"] or {})
    if _searches(cfg) and cfg.get("granularity", "layer") != "layer":
        raise ConfigError(f"protection.granularity={cfg.get('granularity')!r} is not allowed with the FT-ClipAct "
                          "search; it tunes one threshold per layer (granularity=layer)")


register_protection(Protection("clipact", ClipActReLU, "x if 0 <= x <= b else 0 (other g: g(x) if a <= g(x) <= b); b = profiled maximum or FT-ClipAct search",
                               config_keys=("granularity", "fused", "search"),
                               bounds_stage="search", order=20, options=options,
                               stage_enabled=_searches, check=_check))
