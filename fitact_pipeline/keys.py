"""Stage keys: the hash of exactly the settings that determine a stage's result (docs/tracking.md).

The settings are the result's identity (identity.py), a whitelist declared by the registry entries,
never the whole config minus a few keys: settings that do not change results (paths, progress bars,
worker counts, the fused kernel choice, overhead timing, which site's profile is logged) never
re-run a finished stage, and cloning or moving the checkout keeps every key. Each key contains the
one before it:

    baseline (model, data identity, training, seed, device type)
      -> profile (+ BatchNorm folding, profiling images)
        -> bounds (+ protection; the settings its bounds stage declares: protect/bounds_stages.py)
          -> job (+ campaign, fault model and format, fault space, sampler)

Every key holds ``identity.KEY_SCHEME``.
"""
from __future__ import annotations

import torch
from omegaconf import DictConfig

from .identity import plain, result_identity, stage_keys


def all_keys(cfg: DictConfig, datamodule, device: torch.device) -> dict[str, str]:
    """{stage: key} of a job, from its identity computed once."""
    return stage_keys(result_identity(cfg, datamodule, device))


def baseline_key(cfg: DictConfig, datamodule, device: torch.device) -> str:
    return all_keys(cfg, datamodule, device)["baseline"]


def profile_key(cfg: DictConfig, datamodule, device: torch.device) -> str:
    return all_keys(cfg, datamodule, device)["profile"]


def bounds_key(cfg: DictConfig, datamodule, device: torch.device) -> str:
    return all_keys(cfg, datamodule, device)["bounds"]


def job_key(cfg: DictConfig, datamodule, device: torch.device) -> str:
    """Key of a job's result: a finished run with this key makes the job a skip."""
    return all_keys(cfg, datamodule, device)["job"]


__all__ = ["all_keys", "baseline_key", "bounds_key", "job_key", "plain", "profile_key"]
