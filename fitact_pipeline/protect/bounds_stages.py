"""The bounds stages: what sets a protection's bounds after profiling (DESIGN.md §2.3, §2.4).

One registry entry per stage declares everything the rest of the pipeline needs of it:
- ``run(job)``: runs it on a protected model (the CLI job, ``api.harden`` and the benchmarks call it
  the same way, through ``recipe.run_bounds_stage``), changing only ``.bound``/``.lower`` tensors;
- ``settings(cfg)``: the settings of a job config that decide its result, which the bounds key
  hashes (keys.py) and nothing else lists;
- ``from_config(cfg)``: the ``BoundsJob`` fields a CLI job runs it with;
- ``curves``/``metrics``/``artifacts``: what a run logs of its result (tracking.py reads them).

A protection's registry entry names its stage (``Protection.bounds_stage``); adding a protection
with an existing stage is one module and one config file (docs/architecture.md).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from ..faults import SAMPLER, as_rate_list, injector_kwargs
from ..registry import Registry
from .clipact_search import clipact_search
from .posttrain import posttrain_bounds, result_settings
from .progressive import progressive_bounds

#: the fault settings a stage that injects faults stores its model with (the FT-ClipAct search, a
#: fault-aware post-training): bit flips in the stored parameters, whatever the campaign's fault model
STORED_FAULT_KEYS = ("fmt", "word_bits", "frac_bits", "targets", "include", "exclude", "fold_batchnorm")


@dataclass
class BoundsJob:
    """What a bounds stage runs on. ``data`` has ``setup``, ``train_dataloader``, ``val_dataloader``
    and ``eval_tensors("val", n, seed)`` (a LightningDataModule of data/, or ``data.LoaderData``)."""

    protected: nn.Module
    reference: nn.Module | None  # the unprotected model (ProAct's teacher)
    data: Any
    clean_val_acc: float | None
    settings: Mapping | None = None  # the stage's own settings (its config node)
    faults: Mapping | None = None  # FaultInjector keywords of a stage that injects faults
    seed: int = 0
    batch_size: int = 256
    checkpoint_dir: Any = None  # where a long stage keeps its work in progress (the cache's partial folder)


def _plain(node) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def _pick(node, keys) -> dict:
    return {k: _plain(node.get(k)) for k in keys if k in node}


def _search_rates(cfg: DictConfig) -> list[float]:
    """The search's own rate list when it has one, else the campaign's rates."""
    rates = cfg.protection.search.rates
    return as_rate_list(rates) if rates else as_rate_list(cfg.campaign.rates)


# --- none: the profiled bounds (Ranger, Clip-Act without search, GBReLU, FitAct without post-training)

def _nothing(job: BoundsJob) -> dict:
    return {}


# --- posttrain: FitAct's bound-only post-training

def _posttrain(job: BoundsJob) -> dict:
    return posttrain_bounds(job.protected, job.data, job.settings, job.clean_val_acc, faults=job.faults)


def _posttrain_settings(cfg: DictConfig) -> dict:
    parts = {"posttrain": result_settings(_plain(cfg.posttrain))}
    if cfg.posttrain.get("fault_rate") is not None:  # the twin's faults are stored as the campaign's
        parts["posttrain_faults"] = {**_pick(cfg.faults, STORED_FAULT_KEYS), "sampler": SAMPLER}
    return parts


def _posttrain_job(cfg: DictConfig) -> dict:
    # a fault-aware post-training's twin stores its weights in the campaign's format
    return {"settings": _plain(cfg.posttrain), "faults": injector_kwargs(cfg.faults)}


# --- search: the FT-ClipAct threshold search

def _search(job: BoundsJob) -> dict:
    """FT-ClipAct on validation images, on fault maps of its own seed (never the test maps)."""
    s = dict(job.settings)
    images, labels = job.data.eval_tensors("val", s["images"], job.seed)
    thresholds = clipact_search(job.protected, images, labels, dict(job.faults or {}), rates=s["rates"],
                                candidates=s["candidates"], iterations=s["iterations"], trials=s["trials"],
                                seed=job.seed, batch_size=job.batch_size, checkpoint_dir=job.checkpoint_dir)
    return {"thresholds": thresholds}


def _search_settings(cfg: DictConfig) -> dict:
    return {"search": {"faults": _pick(cfg.faults, STORED_FAULT_KEYS), "rates": _search_rates(cfg),
                       "sampler": SAMPLER, "seed": cfg.campaign.seed, "batch_size": cfg.campaign.batch_size}}


def _search_job(cfg: DictConfig) -> dict:
    search = cfg.protection.search
    settings = {"images": search.images, "rates": _search_rates(cfg), "candidates": search.candidates,
                "iterations": search.iterations, "trials": search.trials}
    return {"settings": settings, "faults": injector_kwargs(cfg.faults), "seed": cfg.campaign.seed + 1,
            "batch_size": cfg.campaign.batch_size}


# --- progressive: ProAct's site-by-site distilled bound training

def _progressive(job: BoundsJob) -> dict:
    if job.reference is None:
        raise ValueError("ProAct's progressive training distils from the unprotected model: pass reference=")
    return progressive_bounds(job.protected, job.reference, job.data, job.settings, job.clean_val_acc, seed=job.seed)


def _progressive_settings(cfg: DictConfig) -> dict:
    # its settings are the protection's own (``protection.progressive``, keyed with the protection);
    # the seed of its batch order and validation images is the campaign's
    return {"progressive_seed": cfg.campaign.seed}


def _progressive_job(cfg: DictConfig) -> dict:
    return {"settings": _plain(cfg.protection.progressive), "seed": cfg.campaign.seed + 2}


def _no_settings(cfg: DictConfig) -> dict:
    return {}


def _training_metrics(info: Mapping, train_time_s: float) -> dict[str, float]:
    return {"posttrain_time_s": float(info["time_s"]), "posttrain_overhead": float(info["time_s"]) / train_time_s,
            "mean_bound_ratio": float(info["mean_bound_ratio"])}


def _no_metrics(info: Mapping, train_time_s: float) -> dict[str, float]:
    return {}


def _no_artifacts(info: Mapping) -> dict[str, dict]:
    return {}


def _thresholds(info: Mapping) -> dict[str, dict]:
    return {"clipact_thresholds.json": {k: float(v) for k, v in info["thresholds"].items()}}


def _selected_epoch(info: Mapping) -> dict[str, Any]:
    return {"posttrain.selected_epoch": info["selected_epoch"]} if "selected_epoch" in info else {}


@dataclass(frozen=True)
class BoundsStage:
    """One bounds stage (see the module docstring)."""

    name: str
    summary: str
    run: Callable[[BoundsJob], dict]
    settings: Callable[[DictConfig], dict] = field(default=_no_settings)
    from_config: Callable[[DictConfig], dict] = field(default=lambda cfg: {})
    needs: tuple[str, ...] = ()  # what a caller must provide: "train" and "val" loaders, "reference"
    curves: str | None = None  # MLflow prefix of the per-epoch history (one step per epoch)
    metrics: Callable[[Mapping, float], dict[str, float]] = field(default=_no_metrics)
    params: Callable[[Mapping], dict[str, Any]] = field(default=lambda info: {})
    artifacts: Callable[[Mapping], dict[str, dict]] = field(default=_no_artifacts)

    def job(self, cfg: DictConfig, protected: nn.Module, reference: nn.Module | None, data,
            clean_val_acc: float) -> BoundsJob:
        """The job of this stage as a CLI job config runs it."""
        return BoundsJob(protected, reference, data, clean_val_acc, **self.from_config(cfg))


BOUNDS_STAGES: Registry[BoundsStage] = Registry("bounds stage")
for _stage in (
    BoundsStage("none", "the profiled bounds, unchanged", _nothing),
    BoundsStage("posttrain", "FitAct's bound-only post-training (posttrain.py)", _posttrain, _posttrain_settings,
                _posttrain_job, needs=("train", "val"), curves="posttrain", metrics=_training_metrics,
                params=_selected_epoch),
    BoundsStage("search", "the FT-ClipAct threshold search on validation images (clipact_search.py)", _search,
                _search_settings, _search_job, needs=("val",), artifacts=_thresholds),
    BoundsStage("progressive", "ProAct's site-by-site distilled bound training (progressive.py)", _progressive,
                _progressive_settings, _progressive_job, needs=("train", "val", "reference"), curves="progressive",
                metrics=_training_metrics, params=_selected_epoch),
):
    BOUNDS_STAGES.register(_stage.name, _stage)


def bound_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors a bounds stage may change (what its cache entry holds), on the CPU."""
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items() if k.endswith((".bound", ".lower"))}


__all__ = ["BOUNDS_STAGES", "BoundsJob", "BoundsStage", "STORED_FAULT_KEYS", "bound_tensors"]
