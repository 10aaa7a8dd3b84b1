"""A result's identity decides its job key and its report slot together: for every setting that a
registry entry declares as deciding its results, a run that differs from another only in it gets a
different job key, a different report slot and (unless the setting is the protection's) a different
context, so no setting can make one run silently supersede or pair with another in the report."""
from __future__ import annotations

import copy
import functools

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf, open_dict

from fitact_pipeline.faults import FAULT_MODELS, FORMATS
from fitact_pipeline.faults.designs import DESIGNS
from fitact_pipeline.faults.fault_models import COMMON_KEYS
from fitact_pipeline.faults.units import RATE_UNITS
from fitact_pipeline.identity import (CAMPAIGN_RESULT_KEYS, NON_RESULT_PROTECTION_KEYS, context_key,
                                      result_identity, slot_key, stage_keys)
from fitact_pipeline.models import MODELS
from fitact_pipeline.models.sources import SOURCES
from fitact_pipeline.protect import PROTECTIONS
from fitact_pipeline.protect.posttrain import RESULT_KEYS as POSTTRAIN_KEYS
from fitact_pipeline.protect.weights import WEIGHT_PROTECTIONS
from fitact_pipeline.training import RESULT_KEYS as TRAIN_KEYS
from fitact_pipeline.validate import CONF_DIR

CPU = torch.device("cpu")


@functools.lru_cache(maxsize=None)
def _composed(overrides: tuple[str, ...]):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True)


def composed(*overrides: str):
    cfg = copy.deepcopy(_composed(overrides))
    HydraConfig.instance().set_config(cfg)
    return cfg


@functools.lru_cache(maxsize=None)
def _datamodule(target: str):
    return instantiate(composed().dataset)  # every case uses the default data (digits): built once


#: settings whose values are registry names: changed to another registered name
REGISTERED = {"weight_protection.name": WEIGHT_PROTECTIONS, "faults.model": FAULT_MODELS, "faults.rate_unit": RATE_UNITS, "faults.fmt": FORMATS, "model.name": MODELS, "campaign.design": DESIGNS}


def other(value, path: str = ""):
    """A different value of the same kind (the identity hashes values, it does not check them)."""
    if path in REGISTERED:
        return next(n for n in REGISTERED[path].names() if n != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, float):
        return value * 2 + 1e-3
    if isinstance(value, str):
        return value + "_other"
    if isinstance(value, list):
        return [*value, value[-1] if value else "x"]
    return 1  # None


def leaves(node, prefix: str):
    """Every leaf path under ``prefix`` (a dict setting, e.g. protection.search, has several)."""
    value = OmegaConf.select(node, prefix)
    if OmegaConf.is_dict(value):
        for key in value:
            yield from leaves(node, f"{prefix}.{key}")
    else:
        yield prefix


def summary(cfg):
    identity = result_identity(cfg, _datamodule(cfg.dataset._target_), CPU)
    return stage_keys(identity)["job"], slot_key(identity), context_key(identity)


def changed(cfg, path: str):
    out = copy.deepcopy(cfg)
    value = OmegaConf.select(out, path)
    value = OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    with open_dict(out):
        OmegaConf.update(out, path, other(value, path), merge=False)
    return out


def declared_settings():
    """(overrides, setting path, whether it is the protection's) for every declared setting."""
    cases = []
    for name, entry in PROTECTIONS.items():
        over = (f"protection={name}",)
        base = composed(*over)
        for key in entry.config_keys:
            if key not in NON_RESULT_PROTECTION_KEYS and key in base.protection:
                cases += [(over, path, True) for path in leaves(base, f"protection.{key}")]
    cases += [(("protection=fitact",), f"posttrain.{k}", True) for k in POSTTRAIN_KEYS]
    for name, model in FAULT_MODELS.items():
        over = (f"faults.model={name}",)
        base = composed(*over)
        cases += [(over, path, False) for key in COMMON_KEYS + model.config_keys if key in base.faults
                  for path in leaves(base, f"faults.{key}")]
    cases += [(("faults.rate_unit=word",), "faults.rate_unit", False)]  # word -> bit: other maps
    cases += [((), f"campaign.{k}", False) for k in CAMPAIGN_RESULT_KEYS if k != "rates"]
    cases += [((), f"train.{k}", False) for k in TRAIN_KEYS]
    cases += [((), "weight_protection.name", True)]
    for name, entry in WEIGHT_PROTECTIONS.items():
        cases += [((f"weight_protection={name}",), f"weight_protection.{k}", True) for k in entry.config_keys]
    cases += [((), path, False) for path in ("seed", "profile_images", "model.name", "model.width")]
    dm = type(_datamodule(composed().dataset._target_))
    cases += [((), f"dataset.{k}", False) for k in dm.RESULT_KEYS]
    for name, source in SOURCES.items():
        cases += [((f"model={name}",), f"model.{k}", False) for k in source.keys]
    return cases


CASES = declared_settings()


@pytest.mark.parametrize("overrides,path,own", CASES, ids=[f"{'+'.join(o) or 'default'}:{p}" for o, p, _ in CASES])
def test_a_result_deciding_setting_changes_the_job_key_and_the_report_slot(overrides, path, own):
    base = composed(*overrides)
    if OmegaConf.select(base, path, default="<absent>") == "<absent>":
        with open_dict(base):
            OmegaConf.update(base, path, None, merge=False)
    job, slot, context = summary(base)
    job2, slot2, context2 = summary(changed(base, path))
    assert job2 != job and slot2 != slot, path
    assert (context2 == context) == own, path  # the protection's settings pair; all others do not


def test_the_fault_rates_change_the_job_key_only():
    base = composed()
    job, slot, context = summary(base)
    job2, slot2, context2 = summary(changed(base, "campaign.rates"))
    assert job2 != job and (slot2, context2) == (slot, context)


@pytest.mark.parametrize("path", ["cache_dir", "tracking.experiment", "tracking.label", "progress_bar", "threads",
                                  "protection.fused", "overhead.enabled", "profile_site", "dataset.num_workers"])
def test_settings_that_decide_no_result_change_nothing(path):
    base = composed("protection=fitact")
    assert summary(changed(base, path)) == summary(base)


def test_every_registered_model_source_and_protection_is_walked():
    walked = {o for o, _, _ in CASES}
    assert {(f"protection={p}",) for p in PROTECTIONS} <= walked
    assert {(f"faults.model={m}",) for m in FAULT_MODELS} <= walked
    assert {(f"model={s}",) for s in SOURCES} <= walked
    assert {(f"weight_protection={w}",) for w, entry in WEIGHT_PROTECTIONS.items() if entry.config_keys} <= walked
