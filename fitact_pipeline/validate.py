"""Catch bad input before any job starts, with one-line errors that name the value and what is allowed.

Two layers: `preflight(argv)` checks command-line overrides against the config tree (unknown groups,
options and keys) and composes every job a sweep would launch (the command line's sweeps and the
experiment's `hydra.sweeper.params`); `check_config(cfg)` checks one composed job config. The
checks belong to the components that own the values (data modules, models, training, protections,
formats, fault models, campaign, tracking): this module only calls them, then builds the model's
skeleton once to check what depends on its structure (fault-space patterns, sites). Both raise
ConfigError; `__main__` prints it on one line and exits 2.
"""
from __future__ import annotations

import itertools
import re
import sys
from typing import Iterable

from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from .checks import check_keys, expect_bool, expect_int, expect_str, fail, is_int
from .cli_errors import closest, hydra_message, parse_error
from .configs import CONF_DIR
from .counts import check_counts
from .data import TensorDataModule
from .device import resolve_device
from .faults import check_campaign_config, check_faults_config
from .faults.conditioned_campaign import check_conditioned_config
from .faults.faultlist import check_fault_list
from .launchers import check_launcher
from .models import check_model_config
from .overhead import check_overhead_config
from .protect import GRANULARITIES, PROTECTIONS
from .protect.posttrain import check_posttrain_config
from .protect.weights import check_weight_protection_config
from .registry import ConfigError
from .store_check import check_store
from .structure import check_structure, structure_key
from .tracking import check_tracking_config
from .training import check_train_config

TOP_KEYS = ("seed", "device", "threads", "progress_bar", "profile_images", "profile_site", "overhead",
            "cache_dir", "figures_dir")
# Flags that belong to Hydra itself, not to overrides.
_HYDRA_FLAGS_WITH_VALUE = {"-cn", "--config-name", "-cp", "--config-path", "-cd", "--config-dir",
                           "--info", "-i", "--experimental-rerun", "--cfg", "-c", "--package", "-p"}


def check_config(cfg: DictConfig, structure: bool = True, explicit: Iterable[str] = ()) -> list[str]:
    """Every value of one job's config, each by the component that owns it, and every image count
    against the data (counts.py; ``explicit``: the keys given on the command line); then, unless
    ``structure=False``, what depends on the model's structure. Returns notes for the user."""

    _check_top(cfg)
    check_model_config(cfg.model)
    dataset_class = _dataset_class(cfg.dataset)
    dataset_class.check_config(cfg.dataset)
    check_train_config(cfg.train)
    check_posttrain_config(cfg.posttrain)
    check_campaign_config(cfg.campaign)
    _check_protection(cfg.protection)
    check_faults_config(cfg.faults)
    check_conditioned_config(cfg.campaign, cfg.faults)
    check_weight_protection_config(cfg.get("weight_protection"), cfg.faults)
    check_fault_list(cfg.faults, cfg.campaign)
    check_overhead_config(cfg.overhead)
    check_tracking_config(cfg.tracking)
    notes = check_counts(cfg, dataset_class, explicit) + _schedule_notes(cfg.train)
    if structure:
        check_structure(cfg)
    return notes


def _check_top(cfg: DictConfig) -> None:
    expect_int(cfg.get("seed"), "seed", 0, 2**32 - 1)  # Lightning seeds numpy with it: numpy's range
    resolve_device(cfg.get("device", "auto"))
    expect_int(cfg.get("threads"), "threads", 1, allow_none=True)
    expect_bool(cfg.get("progress_bar", True), "progress_bar")
    expect_int(cfg.get("profile_images"), "profile_images", 1, allow_none=True)
    site = cfg.get("profile_site")
    if site is not None and not is_int(site) and not isinstance(site, str):
        fail("profile_site", site, "expected a site index, a site name or null")
    for key in ("cache_dir", "figures_dir"):
        expect_str(cfg.get(key), key)


def _schedule_notes(train: DictConfig) -> list[str]:
    """A run that never leaves its learning-rate warm-up trains at a fraction of train.lr throughout:
    allowed (quick tests do it), but said."""
    warmup, epochs = train.get("warmup_epochs", 0), train.get("epochs")
    if is_int(epochs) and isinstance(warmup, (int, float)) and warmup > 0 and warmup >= epochs:
        return [f"train.warmup_epochs={warmup} >= train.epochs={epochs}: the whole training is the learning-rate "
                "warm-up (the rate ramps up to train.lr and never decays); set train.warmup_epochs=0 for a short run"]
    return []


def _dataset_class(dataset: DictConfig):


    target = dataset.get("_target_")
    try:
        cls = get_class(str(target))
    except Exception:  # noqa: BLE001 - Hydra's message is several lines
        cls = None
    if cls is None or not (isinstance(cls, type) and issubclass(cls, TensorDataModule)):
        fail("dataset._target_", target, "expected a data module class of fitact_pipeline.data")
    return cls


def _check_protection(protection: DictConfig) -> None:
    """The protection's own registry entry checks its values (protect/protections/<name>.py)."""
    entry = PROTECTIONS.check("protection.name", protection.get("name"))
    # an experiment may set one protection's keys for a sweep over several (repro_cpu's search)
    check_keys(protection, "protection", {"name"}.union(*(p.config_keys for _, p in PROTECTIONS.items())))
    granularity = protection.get("granularity", entry.default_granularity)
    if granularity not in GRANULARITIES:
        fail("protection.granularity", granularity, f"choose one of: {', '.join(GRANULARITIES)}")
    if "fused" in protection:
        expect_bool(protection.fused, "protection.fused")
    entry.check(protection)


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


def _parse(texts: list[str]) -> list[tuple[str, list[str]]]:
    """(key, values) of each override; a sweep has several values. An append (``+model.kwargs.x=1``,
    how a new builder argument is given) keeps its ``+``, so the jobs are checked with it."""

    parser = OverridesParser.create()
    try:
        overrides = parser.parse_overrides(texts)
    except Exception:  # Hydra's grammar errors are several lines long and name no fix
        raise ConfigError(parse_error(texts, lambda text: parser.parse_overrides([text]))) from None
    return [(("+" if o.is_add() else "") + o.key_or_group, list(o.sweep_string_iterator()) if o.is_sweep_override()
             else [o.get_value_element_as_str()]) for o in overrides
            if not (o.key_or_group.startswith("hydra") or o.is_delete())]


def preflight(argv: list[str]) -> None:
    """Validate every override on the command line and every job a sweep would launch."""
    groups = config_groups()
    given = _parse(_override_args(argv))
    multirun = "-m" in argv or "--multirun" in argv
    for key, values in given:
        if len(values) > 1 and not multirun:  # Hydra's answer spans five lines
            raw = next(t for t in _override_args(argv) if t.split("=", 1)[0] == key)
            as_list = "" if key in groups else f", or write a list for one job ({key}=[{raw.split('=', 1)[1]}])"
            raise ConfigError(f"{raw} lists several values, which is a sweep: add -m to run one job per value{as_list}")
    for key, values in given:
        if key in groups:
            for value in values:
                if value not in groups[key] and value != "null":
                    raise ConfigError(f"unknown {key} '{value}'{closest(value, groups[key])}; "
                                      f"choose one of: {', '.join(groups[key])}")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        base = _compose(compose, [f"{k}={v[0]}" for k, v in given], groups)
        dims = list(given)
        if multirun:  # the experiment's own sweep, unless overridden
            params = OmegaConf.to_container(base.hydra.sweeper.get("params") or OmegaConf.create({}))
            dims += [kv for kv in _parse([f"{k}={v}" for k, v in params.items()]) if kv[0] not in dict(given)]
        checked: set = set()
        stores: dict = {}
        notes: dict[str, None] = {}  # ordered, each once
        for combo in itertools.product(*[[f"{k}={v}" for v in values] for k, values in dims]):
            cfg = _compose(compose, list(combo), groups)
            notes.update(dict.fromkeys(check_config(cfg, structure=False, explicit=[k.lstrip("+") for k, _ in given])))
            _check_structure_once(cfg, checked)
            stores[(cfg.tracking.get("uri"), cfg.tracking.root, cfg.cache_dir, cfg.figures_dir)] = cfg
        check_launcher(_hydra_node(compose, argv).launcher)
    for cfg in stores.values():  # last: the only check that waits (up to a few seconds for a server)
        check_store(cfg.tracking, cfg.cache_dir, figures_dir=cfg.figures_dir)
    for note in notes:
        print(f"note: {note}", file=sys.stderr)


def _hydra_node(compose, argv: list[str]) -> DictConfig:
    """The ``hydra`` node with the command line's own Hydra overrides (launcher and its settings)."""
    texts = [t for t in _override_args(argv) if t.lstrip("+~").startswith("hydra")]
    try:
        return compose("config", overrides=texts, return_hydra_config=True).hydra
    except Exception as exc:  # Hydra's message is several lines
        message = hydra_message(exc)
        unknown = re.match(r"unknown config option '(hydra\.[^']+)'", message)
        if unknown:  # name the keys the chosen launcher (or other hydra node) has
            groups_only = [t for t in texts if "/" in t.split("=", 1)[0]]
            node = compose("config", overrides=groups_only, return_hydra_config=True)
            owner = _launcher_owning(compose, unknown.group(1))
            known = [k for k in known_keys(node, hydra=True) if not k.rsplit(".", 1)[-1].startswith("_")]
            message += owner or closest(unknown.group(1), known)
        raise ConfigError(message) from None


def _launcher_owning(compose, key: str) -> str:
    """``; it is a setting of hydra/launcher=X: add that`` when another launcher of conf/ has ``key``."""
    if not key.startswith("hydra.launcher."):
        return ""
    leaf = key.split(".", 2)[2]
    for option in config_groups().get("hydra/launcher", []):
        launcher = compose("config", overrides=[f"hydra/launcher={option}"], return_hydra_config=True).hydra.launcher
        if leaf in launcher:
            return f"; it is a setting of hydra/launcher={option}: add hydra/launcher={option} to the command line"
    return ""


def _check_structure_once(cfg: DictConfig, checked: set) -> None:
    key = structure_key(cfg)
    if key not in checked:
        check_structure(cfg)
        checked.add(key)


def _compose(compose, overrides: list[str], groups: dict[str, list[str]]) -> DictConfig:
    group_overrides = [o for o in overrides if o.split("=", 1)[0] in groups]
    cfg = compose("config", overrides=group_overrides)
    for o in overrides:
        key = o.split("=", 1)[0]
        if key in groups or key.startswith("+"):  # an append adds a key: Hydra checks its parent exists
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(cfg, parent) if parent else cfg
        # keys(), not `in`: a key whose value is ??? (dataset.root of imagefolder) counts as absent for `in`
        if not isinstance(node, DictConfig) or leaf not in list(node.keys()):
            where = f"under '{parent}'" if parent else "at the top level"
            hint = closest(key, [*known_keys(cfg), *groups])
            if not isinstance(node, DictConfig):
                raise ConfigError(f"unknown config option '{key}'{hint}; the config has no section '{parent}'")
            raise ConfigError(f"unknown config option '{key}'{hint}; keys allowed {where}: {', '.join(sorted(node.keys()))}")
    try:
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    except Exception as exc:
        raise ConfigError(hydra_message(exc)) from None
    HydraConfig.instance().set_config(cfg)  # ${hydra:runtime.cwd} in paths resolves as in a job
    missing = [k for k in _missing_keys(cfg) if not k.startswith("hydra")]
    if missing:
        raise ConfigError(f"{missing[0]} has no value (???); set it on the command line, e.g. {missing[0]}=...")
    return cfg


def known_keys(node: DictConfig, prefix: str = "", hydra: bool = False) -> list[str]:
    """Every dotted key of a composed config (without Hydra's own node unless ``hydra``)."""
    out = []
    for key in node.keys():
        path = f"{prefix}{key}"
        if path.startswith("hydra") and not hydra:
            continue
        out.append(path)
        child = node._get_node(key)
        if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
            out += known_keys(child, path + ".", hydra)
    return out


def _missing_keys(node, prefix: str = "") -> list[str]:
    out = []
    for key in node.keys():
        path = f"{prefix}{key}"
        if OmegaConf.is_missing(node, key):
            out.append(path)
        elif isinstance(node.get(key), DictConfig) and not path.startswith("hydra"):
            out += _missing_keys(node[key], path + ".")
    return out
