"""The identity of a result: every setting that decides it, each declared once by the registry entry
that owns it, and read from here by the stage keys (keys.py), the run's tags (tracking) and the
report's grouping (report/runs.py).

``result_identity`` lists, per stage, the settings that stage adds to the result:

    baseline  the model config, the data by content and its result keys (data/base.py RESULT_KEYS),
              the training result keys (training.py key_settings), seed, device type
    profile   BatchNorm folding, profiling images
    bounds    the protection and its own keys (its registry entry's config_keys, less the kernel
              choice), and what its bounds stage declares (protect/bounds_stages.py)
    job       the campaign's result keys and the interval it logs (stats.INTERVAL), the fault
              model's keys (faults/fault_models.py: the keys every fault model shares and the
              chosen model's own) and its rate unit, the sampler, the weight protection and its
              own keys (protect/weights.py)

A run's *slot* in the report (which curve it belongs to) is the identity without the fault rates;
its *context* (which runs saw the same fault maps, so that comparisons pair) is the identity
without the protections (activation: the bounds stage; weights: the weight protection) and the rates. Both are hashes of the same identity the keys hash,
so no setting can change a result without changing the job key, the slot and (unless it is the
protection's) the context.
"""
from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .cache import config_hash
from .faults import FAULT_MODELS, SAMPLER
from .faults.designs import SUBSETS
from .faults.fault_models import COMMON_KEYS
from .stats import INTERVAL, STOPPING
from .faults.faultlist import read_fault_list
from .protect import PROTECTIONS
from .protect.bounds_stages import BOUNDS_STAGES
from .protect.weights import WEIGHT_PROTECTIONS
from .training import key_settings as train_key_settings

#: the version of what the identity holds: when it changes, the integer goes up and every stage
#: reruns once (instead of code that keeps the keys of earlier versions alive)
KEY_SCHEME = 2

STAGES = ("baseline", "profile", "bounds", "job")
#: protection settings that choose a kernel, not a result (the fused form equals the eager one), or
#: whose whole effect is which bounds stage runs, which the identity holds ("stage": FitAct's posttrain)
NON_RESULT_PROTECTION_KEYS = ("fused", "posttrain")
CAMPAIGN_RESULT_KEYS = ("rates", "trials", "seed", "eval_split", "eval_images", "batch_size", "confidence",
                        "design", "images_per_trial", "maps_per_pass")


def plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def pick(node, keys) -> dict:
    return {k: plain(node.get(k)) for k in keys if k in node}


def result_identity(cfg: DictConfig, datamodule, device: torch.device) -> dict[str, dict]:
    """{stage: the settings it adds to the result}, in stage order (see the module docstring)."""
    protection = PROTECTIONS[cfg.protection.name]
    stage = BOUNDS_STAGES[protection.bounds_stage_for(cfg.protection)]
    own = [k for k in protection.config_keys if k not in NON_RESULT_PROTECTION_KEYS]
    campaign = pick(cfg.campaign, CAMPAIGN_RESULT_KEYS)
    # what ci_low/ci_high hold: a finished run is reused by its key (tracking.resume), and runs from
    # before the bounded interval logged a t-interval under the same names
    campaign["interval"] = INTERVAL
    if cfg.campaign.adaptive.enabled:
        campaign["adaptive"] = plain(cfg.campaign.adaptive)
        campaign["stopping"] = STOPPING  # the stopping rule decides the trials a result holds
    if cfg.campaign.get("design", "classic") != "classic":  # how per-trial image subsets are drawn
        campaign["subsets"] = SUBSETS
    fault_model = FAULT_MODELS[cfg.faults.model]
    weights = WEIGHT_PROTECTIONS[cfg.weight_protection.name]
    # the unit the rate is counted in, resolved (auto = the fault model's own unit)
    faults = {**pick(cfg.faults, COMMON_KEYS + fault_model.config_keys), "rate_unit": fault_model.unit(cfg.faults)}
    if fault_model.name == "activation":  # its weights are stored in faults.fmt since issue 26: earlier runs differ
        faults["weights_stored"] = True
    if cfg.faults.get("list") is not None:  # a replayed fault list by content; without one, no entry
        faults["list"] = read_fault_list(cfg.faults.list).digest()
    return {
        "baseline": {"scheme": KEY_SCHEME, "model": plain(cfg.model),
                     "data": {**datamodule.identity(), **pick(cfg.dataset, type(datamodule).RESULT_KEYS)},
                     "train": train_key_settings(cfg.train), "seed": cfg.seed, "device": device.type},
        "profile": {"fold": cfg.faults.fold_batchnorm, "images": cfg.profile_images},
        "bounds": {"protection": {"name": protection.name, **pick(cfg.protection, own)},
                   "default_granularity": protection.default_granularity, "stage": stage.name,
                   **stage.settings(cfg)},
        "job": {"campaign": campaign, "faults": faults, "sampler": SAMPLER,
                "weight_protection": {"name": weights.name, **pick(cfg.weight_protection, weights.config_keys)}},
    }


def stage_keys(identity: dict[str, dict]) -> dict[str, str]:
    """{stage: key}: each stage's key hashes its own settings and the key of the stage before it."""
    keys: dict[str, str] = {}
    before: dict[str, str] = {}
    for stage in STAGES:
        keys[stage] = config_hash({**before, **identity[stage]})
        before = {stage: keys[stage]}
    return keys


def _without_rates(identity: dict[str, dict]) -> dict[str, dict]:
    job = dict(identity["job"])
    job["campaign"] = {k: v for k, v in job["campaign"].items() if k != "rates"}
    return {**identity, "job": job}


def _without_protections(identity: dict[str, dict]) -> dict[str, dict]:
    job = {k: v for k, v in identity["job"].items() if k != "weight_protection"}
    return {**{k: v for k, v in identity.items() if k != "bounds"}, "job": job}


def slot_key(identity: dict[str, dict]) -> str:
    """The curve a run belongs to: its identity without the fault rates."""
    return config_hash(_without_rates(identity))


def context_key(identity: dict[str, dict]) -> str:
    """Which runs saw the same fault maps in their shared tensors: the identity without the
    protections and the rates."""
    return config_hash(_without_protections(_without_rates(identity)))


__all__ = ["CAMPAIGN_RESULT_KEYS", "KEY_SCHEME", "NON_RESULT_PROTECTION_KEYS", "STAGES", "context_key",
           "result_identity", "slot_key", "stage_keys"]
