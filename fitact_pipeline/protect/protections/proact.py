"""ProAct (Mousavi et al., arXiv 2406.06313): a hybrid bounded activation, one bound per site
(layer-wise) at every activation site but the last, whose bound is neuron-wise; the bounds start at
the profiled maxima and are trained site by site with every weight frozen, distilled from the
unprotected model (progressive.py). The activation is FitReLU, smooth while training and, as the
authors deploy it, at inference (``hard: true``: FitReLU-Naive, as FitAct deploys), so everything
that trains or faults FitAct's bounds serves ProAct too."""
from __future__ import annotations

from ...registry import ConfigError
from ..progressive import check_progressive_config
from ..registry import Protection, register_protection
from .fitact import FitReLU, check_fitrelu


class ProActReLU(FitReLU):
    """FitReLU at a ProAct site: a scalar bound, or neuron-wise bounds at the model's last site."""


def _options(cfg, sites) -> dict:
    return {"fused": bool(cfg.get("fused", False)), "k": cfg["k"], "hard": cfg["hard"]}


def _site_granularity(sites: list[str], granularity: str) -> dict[str, str]:
    """The last site (in module order: the forward order of the registry models) is neuron-wise."""
    return {sites[-1]: "neuron"} if sites else {}


def _check(cfg) -> None:
    check_fitrelu(cfg)
    if cfg.get("granularity", "layer") == "neuron":
        raise ConfigError("protection.granularity='neuron' is not allowed; ProAct bounds every site but the last "
                          "per layer or per channel (the last is always neuron-wise): choose layer or channel")
    check_progressive_config(cfg.get("progressive") or {})


def _hard(params) -> bool:
    return params.get("protection.hard") == "True"


register_protection(Protection(
    "proact", ProActReLU, "as fitact, with one b per site (layer) at every site but the last, neuron-wise b "
    "there; b trained site by site, distilled from the unprotected model",
    config_keys=("granularity", "k", "hard", "fused", "progressive"), bounds_stage="progressive",
    default_granularity="layer", order=50, options=_options, check=_check, defaults={"hard": False},
    site_granularity=_site_granularity, label=lambda params: " hard" if _hard(params) else "",
    inference_form=lambda params: "FitReLU-Naive (hard)" if _hard(params) else "FitReLU (smooth)"))
