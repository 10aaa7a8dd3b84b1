"""GBReLU (paper Fig. 1): one given global bound per layer, at chosen sites; the others stay ReLU."""
from __future__ import annotations

from ...checks import expect_list, fail
from ...registry import ConfigError
from ..registry import Protection, register_protection
from ..sites import select_sites
from .clipact import ClipActReLU


class GBReLU(ClipActReLU):
    """Globally bounded ReLU used for the Fig. 1 sweeps: Clip-Act's function with a given bound."""


def _options(cfg, sites) -> dict:
    chosen = select_sites(sites, cfg.get("sites"), "protection.sites")
    return {"fused": bool(cfg.get("fused", False)), "bounds": {site: float(cfg["bound"]) for site in chosen}}


def _check(cfg) -> None:
    bound = cfg.get("bound")
    if isinstance(bound, bool) or not isinstance(bound, (int, float)) or not bound > 0:
        raise ConfigError(f"protection.bound={bound!r} is not allowed; GBReLU needs a positive global bound")
    sites = cfg.get("sites")
    if sites is not None:
        for site in expect_list(sites, "protection.sites"):
            if isinstance(site, bool) or not isinstance(site, (int, str)):
                fail("protection.sites", site, "expected site indices or site names")


def _label(params) -> str:
    return f" b={float(params['protection.bound']):g}" if "protection.bound" in params else ""


register_protection(Protection("gbrelu", GBReLU, "as clipact, one given b per layer at chosen sites (Fig. 1)",
                               config_keys=("granularity", "bound", "sites", "fused"),
                               order=30, given_bounds=True, options=_options, check=_check, label=_label))
