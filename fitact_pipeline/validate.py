"""Catch bad input before any job starts, with one-line errors that name the value and what is allowed.

Two layers: `preflight(argv)` checks command-line overrides against the config tree (unknown groups,
options and keys; every value of every sweep parameter) and `check_config(cfg)` checks the meaning of
one composed job config. Both raise ConfigError; `__main__` prints it on one line and exits 2.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable

from omegaconf import DictConfig, OmegaConf

from .registry import ConfigError

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# Flags that belong to Hydra itself, not to overrides.
_HYDRA_FLAGS_WITH_VALUE = {"-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir",
                           "--info", "-i", "--experimental-rerun", "--cfg", "-c", "--package", "-p"}


def as_rate_list(rates: Any) -> list[float]:
    """`campaign.rates` may be one rate (a sweep of one rate per job) or a list of rates."""
    if OmegaConf.is_list(rates) or isinstance(rates, (list, tuple)):
        return [float(r) for r in rates]
    return [float(rates)]


def _fail(what: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{what}={value!r} is not allowed; {allowed}")


def _check_int(cfg: DictConfig, path: str, minimum: int) -> None:
    value = OmegaConf.select(cfg, path)
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(path, value, f"expected an integer >= {minimum}")


def check_config(cfg: DictConfig) -> None:
    """Semantic checks of one job's config (types and ranges; contradictions between settings)."""
    try:
        rates = as_rate_list(cfg.campaign.rates)
    except (TypeError, ValueError):
        _fail("campaign.rates", OmegaConf.to_container(cfg.campaign, resolve=False).get("rates"),
              "expected a fault rate or a list of fault rates in [0, 1]")
    if not rates:
        _fail("campaign.rates", [], "expected at least one fault rate in [0, 1]")
    for rate in rates:
        if math.isnan(rate) or not 0.0 <= rate <= 1.0:
            _fail("campaign.rates", rate, "a fault rate (bit error rate) must be in [0, 1]")
    _check_int(cfg, "campaign.trials", 1)
    _check_int(cfg, "campaign.eval_images", 1)
    _check_int(cfg, "campaign.batch_size", 1)
    if cfg.campaign.get("adaptive") and cfg.campaign.adaptive.enabled:
        _check_int(cfg, "campaign.adaptive.min_trials", 2)
        _check_int(cfg, "campaign.adaptive.max_trials", 2)
        if cfg.campaign.adaptive.min_trials > cfg.campaign.adaptive.max_trials:
            _fail("campaign.adaptive.min_trials", cfg.campaign.adaptive.min_trials,
                  f"must be <= campaign.adaptive.max_trials={cfg.campaign.adaptive.max_trials}")
    _check_protection(cfg.protection)
    drop = cfg.posttrain.max_accuracy_drop
    if not isinstance(drop, (int, float)) or not 0.0 <= drop <= 1.0:
        _fail("posttrain.max_accuracy_drop", drop, "expected a fraction of accuracy in [0, 1]")
    _check_int(cfg, "posttrain.epochs", 0)
    _check_int(cfg, "train.epochs", 0)
    for path in ("posttrain.lr", "train.lr"):
        value = OmegaConf.select(cfg, path)
        if not isinstance(value, (int, float)) or value <= 0:
            _fail(path, value, "expected a positive learning rate")
    if not cfg.model.width or cfg.model.width <= 0:
        _fail("model.width", cfg.model.width, "expected a positive width multiplier")
    _check_faults(cfg.faults)


def _check_protection(protection: DictConfig) -> None:
    """The protection's own registry entry checks its values (protect/protections/<name>.py)."""
    from .protect import GRANULARITIES, PROTECTIONS

    entry = PROTECTIONS.check("protection.name", protection.name)
    granularity = protection.get("granularity", entry.default_granularity)
    if granularity not in GRANULARITIES:
        _fail("protection.granularity", granularity, f"choose one of: {', '.join(GRANULARITIES)}")
    entry.check(protection)


def _check_faults(faults: DictConfig) -> None:
    """Formats, target kinds and fault models are checked against their registries (faults/)."""
    from .faults import FAULT_MODELS, FORMATS
    from .faults.space import check_targets

    FAULT_MODELS.check("faults.model", faults.get("model"))
    FORMATS.check("faults.fmt", faults.fmt).check(faults.word_bits, faults.frac_bits)
    check_targets(list(faults.targets), faults.fmt)
    if "batchnorm" in faults.targets and faults.fold_batchnorm:
        _fail("faults.targets", "batchnorm", "BatchNorm is folded (faults.fold_batchnorm=true): "
              "set faults.fold_batchnorm=false to put BatchNorm in the fault space")


# --------------------------------------------------------------------------- command-line preflight

def config_groups() -> dict[str, list[str]]:
    """Every config group under conf/ with its options (nested groups as `a/b`)."""
    groups: dict[str, list[str]] = {}
    for path in CONF_DIR.rglob("*.yaml"):
        rel = path.relative_to(CONF_DIR)
        if len(rel.parts) > 1:
            groups.setdefault("/".join(rel.parts[:-1]), []).append(path.stem)
    return {g: sorted(opts) for g, opts in groups.items()}


def _override_args(argv: Iterable[str]) -> list[str]:
    args, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg in _HYDRA_FLAGS_WITH_VALUE:
            skip = True
        elif not arg.startswith("-"):
            args.append(arg)
    return args


def preflight(argv: list[str]) -> None:
    """Validate every override on the command line and every job a sweep would launch."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    try:
        overrides = parser.parse_overrides(_override_args(argv))
    except Exception as exc:  # Hydra's grammar errors are several lines long
        raise ConfigError(f"cannot parse the command line: {str(exc).splitlines()[0]}") from None
    groups = config_groups()
    fixed, sweeps = [], []
    for o in overrides:
        key = o.key_or_group
        if key.startswith("hydra") or o.is_add() or o.is_delete():
            continue
        values = list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()]
        if key in groups:
            for value in values:
                if value not in groups[key] and value != "null":
                    raise ConfigError(f"unknown {key} '{value}'; choose one of: {', '.join(groups[key])}")
        (sweeps if len(values) > 1 else fixed).append((key, values))
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        base = [f"{k}={v[0]}" for k, v in fixed + sweeps]
        jobs = [base] + [[f"{k}={v}" if k == key else f"{k}={vs[0]}" for k, vs in fixed + sweeps]
                         for key, values in sweeps for v in values[1:]]
        for job in jobs:
            check_config(_compose(compose, job, groups))


def _compose(compose, overrides: list[str], groups: dict[str, list[str]]) -> DictConfig:
    group_overrides = [o for o in overrides if o.split("=", 1)[0] in groups]
    cfg = compose("config", overrides=group_overrides)
    for o in overrides:
        key = o.split("=", 1)[0]
        if key in groups:
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        if not isinstance(node, DictConfig) or leaf not in node:
            where = f"under '{parent}'" if parent else "at the top level"
            allowed = ", ".join(sorted(node.keys())) if isinstance(node, DictConfig) else "none"
            raise ConfigError(f"unknown config option '{key}'; keys allowed {where}: {allowed}")
    try:
        return compose("config", overrides=overrides)
    except Exception as exc:
        raise ConfigError(str(exc).splitlines()[0]) from None
