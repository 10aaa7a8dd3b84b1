"""The stages before a fault campaign, each cached by a hash of the config parts that determine it:
baseline -> fold BatchNorm -> profile -> protect -> bounds stage (post-training or search).

Every protection x rate job of a sweep reuses one trained baseline and one profile; every rate job
of one protection reuses its bounds (cache.py: computed once, also by parallel jobs).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import torch
from omegaconf import DictConfig

from .cache import cached_stage
from .evaluate import evaluate_accuracy
from .faults import as_rate_list, injector_kwargs
from .keys import baseline_key, bounds_key, plain, profile_key
from .models import model_from_config, owns_init
from .protect import PROTECTIONS, fold_batchnorm, profile_ranges, protect_model
from .training import train_baseline


def _save_pair(names: tuple[str, str]):
    def save(path: Path, artefact) -> None:
        torch.save(artefact[0], path / names[0])
        torch.save(artefact[1], path / names[1])
    return save


def stage_baseline(cfg: DictConfig, datamodule, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Train (or load) the baseline: once per model x data x training config x seed x device type.
    Returned on the CPU (the cache holds CPU tensors). A torchvision or timm model comes initialised
    (its library's initialisation or pretrained weights, head replaced): training fine-tunes it."""
    model = model_from_config(cfg.model, datamodule.num_classes, datamodule.in_channels, cfg.seed)
    train_cfg = {**plain(cfg.train), "init_from_seed": False} if owns_init(cfg.model) else cfg.train

    def compute() -> tuple[dict, dict]:
        info = train_baseline(model, datamodule, train_cfg, seed=cfg.seed, device=device)
        return {k: v.cpu() for k, v in model.state_dict().items()}, dict(info)

    def load(path: Path):
        return (torch.load(path / "model.pt", weights_only=True), torch.load(path / "info.pt", weights_only=True))

    state, info = cached_stage(cfg.cache_dir, "baseline", baseline_key(cfg, datamodule, device), compute,
                               _save_pair(("model.pt", "info.pt")), load)
    model.load_state_dict(state)
    return model.eval(), info


def stage_profile(cfg: DictConfig, model: torch.nn.Module, datamodule, device: torch.device
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-neuron maxima of every site, and minima of the sites with a lower bound (LeakyReLU,
    PReLU, ELU; none in a ReLU model), on ``device`` (``model`` must be there), cached on the CPU."""
    def save(path: Path, ranges) -> None:
        torch.save(ranges[0], path / "profile.pt")
        if ranges[1]:  # a ReLU model's artefact stays the one file it always was
            torch.save(ranges[1], path / "lower.pt")

    def load(path: Path):
        lower = path / "lower.pt"
        return (torch.load(path / "profile.pt", weights_only=True),
                torch.load(lower, weights_only=True) if lower.exists() else {})

    return cached_stage(
        cfg.cache_dir, "profile", profile_key(cfg, datamodule, device),
        lambda: profile_ranges(model, datamodule.profile_dataloader(cfg.profile_images), cfg.profile_images),
        save, load)


def bounds_stage(cfg: DictConfig) -> str:
    """The bounds stage this job runs: none, posttrain, search or progressive (the protection's registry entry)."""
    return PROTECTIONS[cfg.protection.name].bounds_stage_for(cfg.protection)


def search_rates(cfg: DictConfig) -> list[float]:
    """The search's own rate list when it has one, else the campaign's rates."""
    rates = cfg.protection.search.rates
    return as_rate_list(rates) if rates else as_rate_list(cfg.campaign.rates)


def _posttrain(cfg: DictConfig, protected: torch.nn.Module, datamodule, clean_val_acc: float, reference) -> dict:
    from .protect.posttrain import posttrain_bounds

    # a fault-aware post-training's twin stores its weights in the campaign's format
    return posttrain_bounds(protected, datamodule, cfg.posttrain, clean_val_acc, faults=injector_kwargs(cfg.faults))


def _progressive(cfg: DictConfig, protected: torch.nn.Module, datamodule, clean_val_acc: float, reference) -> dict:
    """ProAct: site-by-site bound training distilled from the unprotected model (protect/progressive.py)."""
    from .protect.progressive import progressive_bounds

    if reference is None:
        raise ValueError("ProAct's progressive training distils from the unprotected model: pass reference=")
    return progressive_bounds(protected, reference, datamodule, cfg.protection.progressive, clean_val_acc,
                              seed=cfg.campaign.seed + 2)


def _search(cfg: DictConfig, protected: torch.nn.Module, datamodule, clean_val_acc: float, reference) -> dict:
    """FT-ClipAct on the validation split, on fault maps of its own seed (never the test maps)."""
    from .protect.clipact_search import clipact_search

    search = cfg.protection.search
    images, labels = datamodule.eval_tensors("val", search.images, cfg.campaign.seed + 1)
    # the search scores thresholds under bit flips in the stored parameters, whatever the campaign's fault model
    thresholds = clipact_search(protected, images, labels, injector_kwargs(cfg.faults), rates=search_rates(cfg),
                                candidates=search.candidates, iterations=search.iterations, trials=search.trials,
                                seed=cfg.campaign.seed + 1, batch_size=cfg.campaign.batch_size)
    return {"thresholds": thresholds}


BOUNDS_STAGES = {"posttrain": _posttrain, "search": _search, "progressive": _progressive}


def stage_bounds(cfg: DictConfig, protected: torch.nn.Module, datamodule, device: torch.device,
                 clean_val_acc: float, reference: torch.nn.Module | None = None) -> dict:
    """The protection's bounds stage, on ``device`` (``protected`` must be there; ``reference``, the
    unprotected model, is ProAct's teacher). It only changes
    `.bound` (and `.lower`) tensors, which are cached (on the CPU) so that every fault-rate job of one protection
    reuses them."""
    stage = bounds_stage(cfg)
    if stage == "none":
        return {}

    def compute():
        info = BOUNDS_STAGES[stage](cfg, protected, datamodule, clean_val_acc, reference)
        bounds = {k: v.detach().cpu().clone() for k, v in protected.state_dict().items()
                  if k.endswith((".bound", ".lower"))}
        return bounds, info

    def load(path: Path):
        return (torch.load(path / "bounds.pt", weights_only=True), torch.load(path / "info.pt", weights_only=False))

    bounds, info = cached_stage(cfg.cache_dir, f"bounds_{cfg.protection.name}", bounds_key(cfg, datamodule, device), compute,
                                _save_pair(("bounds.pt", "info.pt")), load)
    protected.load_state_dict(bounds, strict=False)
    return info


@dataclass
class Prepared:
    """A job's model before its bounds stage: the deployed ReLU model and its protected copy."""
    reference: torch.nn.Module  # baseline, BN folded when the fault model says so
    protected: torch.nn.Module  # the same weights with bounded activations at profiled bounds
    profile: dict[str, torch.Tensor]  # per-neuron maxima of every site
    lower: dict[str, torch.Tensor]  # per-neuron minima of the sites with a lower bound
    clean_val_acc: float  # of the reference, on the whole validation split
    train_info: dict


def prepare_protected(cfg: DictConfig, datamodule, device: torch.device) -> Prepared:
    """Baseline -> fold BN -> profile -> protect, as every job (and benchmarks/posttrain_settings.py)
    runs them, on ``device``; the bounds stage comes next."""
    baseline, train_info = stage_baseline(cfg, datamodule, device)
    model = copy.deepcopy(baseline).eval()
    if cfg.faults.fold_batchnorm:
        fold_batchnorm(model)
    model = model.to(device)
    profile, lower = stage_profile(cfg, model, datamodule, device)
    val_images, val_labels = datamodule.eval_tensors("val", None, cfg.campaign.seed)  # the whole split
    clean_val_acc = evaluate_accuracy(model, val_images.to(device), val_labels.to(device), cfg.campaign.batch_size)
    reference = copy.deepcopy(model)
    entry = PROTECTIONS[cfg.protection.name]
    protected = protect_model(model, entry.name, cfg.protection.get("granularity"), profile, lower=lower,
                              **entry.options(cfg.protection, list(profile)))
    return Prepared(reference, protected.to(device), profile, lower, clean_val_acc, train_info)
