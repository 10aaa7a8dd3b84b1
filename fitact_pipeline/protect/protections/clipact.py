"""Clip-Act (Hoang et al., DATE 2020): zero above a per-layer bound, the profiled maximum or the
FT-ClipAct threshold search (DESIGN §2.4, clipact_search.py)."""
from __future__ import annotations

from ..bounded import BoundedReLU
from ..registry import ConfigError, Protection, register_protection
from .ranger import options


class ClipActReLU(BoundedReLU):
    """x if 0 <= x <= b else 0."""

    def forward(self, x):
        return self._clip(x)


def _searches(cfg) -> bool:
    return bool((cfg.get("search") or {}).get("enabled", False))


def _check(cfg) -> None:
    if _searches(cfg) and cfg.get("granularity", "layer") != "layer":
        raise ConfigError(f"protection.granularity={cfg.get('granularity')!r} is not allowed with the FT-ClipAct "
                          "search; it tunes one threshold per layer (granularity=layer)")


register_protection(Protection("clipact", ClipActReLU, "x if 0 <= x <= b else 0; b = profiled maximum or FT-ClipAct search",
                               config_keys=("granularity", "fused", "search"),
                               bounds_stage="search", order=20, options=options,
                               stage_enabled=_searches, check=_check))
