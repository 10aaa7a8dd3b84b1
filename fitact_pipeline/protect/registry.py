"""The protection registry: one name -> one ``Protection`` (DESIGN.md §2.2).

A protection is defined in one module of ``protect/protections/`` (its activation class and its
``register_protection`` call) plus one config file ``conf/protection/<name>.yaml``; the modules are
discovered at import, so adding one touches nothing else (docs/architecture.md has the worked
example). Everything that needs to know the protections (site rewriting, the job's bounds stage,
validation, config tests, the report's order, the docs' tables) reads this registry.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from torch import nn

from ..registry import ConfigError, Registry


def _no_options(cfg: Mapping, sites: list[str]) -> dict[str, Any]:
    return {}


def _always(cfg: Mapping) -> bool:
    return True


def _same_granularity(sites: list[str], granularity: str) -> dict[str, str]:
    return {}


def _no_check(cfg: Mapping) -> None:
    return None


def _no_label(params: Mapping[str, str]) -> str:
    return ""


@dataclass(frozen=True)
class Protection:
    """What the pipeline needs to know of one protection.

    ``options(cfg, sites)`` turns the protection's config node (and the model's site names, in
    forward order) into keyword arguments of ``protect_model``; ``check(cfg)`` raises ConfigError
    for a bad value of its own config keys; ``stage_enabled(cfg)`` says whether its bounds stage
    runs (Clip-Act searches only when asked).
    """

    name: str
    activation: type[nn.Module] | None  # None: the sites stay nn.ReLU
    summary: str = ""  # f(x) at one neuron with bound b, for the docs' table
    config_keys: tuple[str, ...] = ("granularity",)
    bounds_stage: str = "none"  # a name of bounds_stages.BOUNDS_STAGES: what sets the bounds after profiling
    default_granularity: str = "layer"
    order: int = 100  # position in reports and docs: weakest protection first
    given_bounds: bool = False  # bounds come from the config, not from profiling
    defaults: Mapping[str, Any] = field(default_factory=dict)  # activation options when not given (FitAct: hard)
    options: Callable[[Mapping, list[str]], dict] = field(default=_no_options)
    stage_enabled: Callable[[Mapping], bool] = field(default=_always)
    site_granularity: Callable[[list[str], str], dict[str, str]] = field(default=_same_granularity)
    check: Callable[[Mapping], None] = field(default=_no_check)
    # what tells two runs of this protection apart in a curve label, from the run's params (" smooth")
    label: Callable[[Mapping[str, str]], str] = field(default=_no_label)
    # the inference form Table I measured, from the run's params
    inference_form: Callable[[Mapping[str, str]], str] = field(default=lambda params: "-")

    def bounds_stage_for(self, cfg: Mapping) -> str:
        """The bounds stage a job with this protection config runs."""
        return self.bounds_stage if self.stage_enabled(cfg) else "none"


class _ProtectionRegistry(Registry[Protection]):
    def names(self) -> list[str]:
        return sorted(super().names(), key=lambda n: (self[n].order, n))


PROTECTIONS: Registry[Protection] = _ProtectionRegistry("protection")


def register_protection(protection: Protection) -> Protection:
    return PROTECTIONS.register(protection.name, protection)


def _discover() -> None:
    from . import protections

    for module in pkgutil.iter_modules(protections.__path__):
        importlib.import_module(f"{protections.__name__}.{module.name}")


__all__ = ["PROTECTIONS", "ConfigError", "Protection", "register_protection"]
_discover()
