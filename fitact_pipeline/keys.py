"""Stage keys: the hash of exactly the settings that determine a stage's result (docs/tracking.md).

Each key is built from a whitelist, never from the whole config minus a few keys, so settings that
do not change results (paths, progress bars, worker counts, the fused kernel choice, overhead
timing, which site's profile is logged) never re-run a finished stage, and cloning or moving the
checkout keeps every key. Each key contains the one before it:

    baseline (model, data identity, training, seed, device type)
      -> profile (+ BatchNorm folding, profiling images)
        -> bounds (+ protection; post-training settings or the search and its fault settings)
          -> job (+ campaign, fault model and format, fault space, sampler)
"""
from __future__ import annotations

import inspect
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from .cache import config_hash

#: protection settings that choose a kernel, not a result (the fused form equals the eager one), or
#: whose whole effect is which bounds stage runs, which the key holds ("stage": FitAct's posttrain)
NON_RESULT_PROTECTION_KEYS = ("fused", "posttrain")
CAMPAIGN_RESULT_KEYS = ("rates", "trials", "seed", "eval_split", "eval_images", "batch_size", "confidence")
#: the fault settings the FT-ClipAct search injects with (bit flips in the stored parameters)
SEARCH_FAULT_KEYS = ("fmt", "word_bits", "frac_bits", "targets", "include", "exclude", "fold_batchnorm")


def plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _pick(node: DictConfig, keys) -> dict:
    return {k: plain(node.get(k)) for k in keys if k in node}


def _defaults(cls) -> dict:
    """Constructor defaults of a class and its bases (the subclass's own win)."""
    out: dict = {}
    for klass in reversed(cls.__mro__):
        if "__init__" in vars(klass):
            out.update({n: p.default for n, p in inspect.signature(klass.__init__).parameters.items()
                        if p.default is not inspect.Parameter.empty})
    return out


def data_parts(cfg: DictConfig, datamodule) -> dict:
    """The data by content (the module's identity), and the data settings that change results. A
    setting at its constructor default is left out, so a new option of a data module (whose default
    does what was done before) keeps every existing key; changing a default that configs do not
    spell out therefore needs a new ``identity()``."""
    defaults = _defaults(type(datamodule))
    chosen = _pick(cfg.dataset, type(datamodule).RESULT_KEYS)
    return {**datamodule.identity(), **{k: v for k, v in chosen.items() if k not in defaults or v != defaults[k]}}


def baseline_key(cfg: DictConfig, datamodule, device: torch.device) -> str:
    from .training import RESULT_KEYS as TRAIN_KEYS

    return config_hash({"model": plain(cfg.model), "data": data_parts(cfg, datamodule),
                        "train": _pick(cfg.train, TRAIN_KEYS), "seed": cfg.seed, "device": device.type})


def profile_key(cfg: DictConfig, datamodule, device: torch.device) -> str:
    return config_hash({"baseline": baseline_key(cfg, datamodule, device), "fold": cfg.faults.fold_batchnorm,
                        "images": cfg.profile_images})


def _faults(cfg: DictConfig) -> dict:
    """The keys every fault model shares and the chosen model's own (faults/fault_models.py)."""
    from .faults import FAULT_MODELS
    from .faults.fault_models import COMMON_KEYS

    return _pick(cfg.faults, COMMON_KEYS + FAULT_MODELS[cfg.faults.model].config_keys)


def bounds_key(cfg: DictConfig, datamodule, device: torch.device) -> str:
    """Key of the bounds after the protection's bounds stage: post-trained bounds depend on the
    post-training settings, searched thresholds on the search and the faults it injects."""
    from .faults import SAMPLER
    from .protect import PROTECTIONS
    from .protect.posttrain import result_settings
    from .stages import bounds_stage, search_rates

    stage = bounds_stage(cfg)
    entry = PROTECTIONS[cfg.protection.name]
    own = [k for k in entry.config_keys if k not in NON_RESULT_PROTECTION_KEYS]  # not another protection's
    parts = {"profile": profile_key(cfg, datamodule, device), "protection": {"name": entry.name, **_pick(cfg.protection, own)},
             "default_granularity": entry.default_granularity, "stage": stage}
    if stage == "posttrain":
        parts["posttrain"] = result_settings(plain(cfg.posttrain))
        if cfg.posttrain.get("fault_rate") is not None:  # the twin's faults are stored as the campaign's
            parts["posttrain_faults"] = {**_pick(cfg.faults, SEARCH_FAULT_KEYS), "sampler": SAMPLER}
    if stage == "search":
        parts["search"] = {"faults": _pick(cfg.faults, SEARCH_FAULT_KEYS), "rates": search_rates(cfg), "sampler": SAMPLER,
                           "seed": cfg.campaign.seed, "batch_size": cfg.campaign.batch_size}
    return config_hash(parts)


def job_key(cfg: DictConfig, datamodule, device: torch.device) -> str:
    """Key of a job's result: a finished run with this key makes the job a skip."""
    from .faults import SAMPLER

    campaign = _pick(cfg.campaign, CAMPAIGN_RESULT_KEYS)
    if cfg.campaign.adaptive.enabled:
        campaign["adaptive"] = plain(cfg.campaign.adaptive)
    # the design settings only when not today's (classic, one map per pass): existing keys stay
    design = cfg.campaign.get("design", "classic")
    if design != "classic":
        campaign.update(design=design, images_per_trial=cfg.campaign.images_per_trial)
    if cfg.campaign.get("maps_per_pass", 1) != 1:
        campaign["maps_per_pass"] = cfg.campaign.maps_per_pass
    faults = _faults(cfg)
    if cfg.faults.model == "activation":  # its weights are stored in faults.fmt now: older runs differ
        faults["weights_stored"] = True
    return config_hash({"bounds": bounds_key(cfg, datamodule, device), "campaign": campaign,
                        "faults": faults, "sampler": SAMPLER})
