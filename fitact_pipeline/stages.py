"""The stages before a fault campaign, each cached by a hash of the config parts that determine it:
baseline -> fold BatchNorm -> profile -> protect -> bounds stage (post-training or search).

Every protection x rate job of a sweep reuses one trained baseline and one profile; every rate job
of one protection reuses its bounds (cache.py: computed once, also by parallel jobs).
"""
from __future__ import annotations

from pathlib import Path

import torch
from omegaconf import DictConfig

from .cache import cached_stage, partial_path
from .evaluate import evaluate_accuracy
from .identity import plain
from .models import model_from_config, owns_init
from .protect import PROTECTIONS, profile_ranges
from .protect.bounds_stages import BOUNDS_STAGES, bound_tensors
from .recipe import Prepared, prepare, run_bounds_stage
from .training import train_baseline


def _save_pair(names: tuple[str, str]):
    def save(path: Path, artefact) -> None:
        torch.save(artefact[0], path / names[0])
        torch.save(artefact[1], path / names[1])
    return save


def stage_baseline(cfg: DictConfig, datamodule, device: torch.device, keys: dict[str, str]
                   ) -> tuple[torch.nn.Module, dict]:
    """Train (or load) the baseline: once per model x data x training config x seed x device type.
    Returned on the CPU (the cache holds CPU tensors). A torchvision or timm model comes initialised
    (its library's initialisation or pretrained weights, head replaced): training fine-tunes it.
    Training checkpoints every epoch into the entry's partial folder, so a job of the same key that
    finds one (an earlier job crashed or was stopped) resumes it instead of starting over."""
    model = model_from_config(cfg.model, datamodule.num_classes, datamodule.in_channels, cfg.seed)
    train_cfg = {**plain(cfg.train), "init_from_seed": False} if owns_init(cfg.model) else cfg.train

    def compute() -> tuple[dict, dict]:
        info = train_baseline(model, datamodule, train_cfg, seed=cfg.seed, device=device, label=keys["baseline"],
                              checkpoint_dir=partial_path(cfg.cache_dir, "baseline", keys["baseline"]))
        return {k: v.cpu() for k, v in model.state_dict().items()}, dict(info)

    def load(path: Path):
        return (torch.load(path / "model.pt", weights_only=True), torch.load(path / "info.pt", weights_only=True))

    state, info = cached_stage(cfg.cache_dir, "baseline", keys["baseline"], compute,
                               _save_pair(("model.pt", "info.pt")), load)
    model.load_state_dict(state)
    return model.eval(), info


def stage_profile(cfg: DictConfig, model: torch.nn.Module, datamodule, keys: dict[str, str]
                  ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Per-neuron maxima of every site, and minima of the sites with a lower bound (LeakyReLU,
    PReLU, ELU; none in a ReLU model), on the model's device, cached on the CPU."""
    def save(path: Path, ranges) -> None:
        torch.save(ranges[0], path / "profile.pt")
        if ranges[1]:  # a ReLU model's artefact stays the one file it always was
            torch.save(ranges[1], path / "lower.pt")

    def load(path: Path):
        lower = path / "lower.pt"
        return (torch.load(path / "profile.pt", weights_only=True),
                torch.load(lower, weights_only=True) if lower.exists() else {})

    return cached_stage(
        cfg.cache_dir, "profile", keys["profile"],
        lambda: profile_ranges(model, datamodule.profile_dataloader(cfg.profile_images), cfg.profile_images),
        save, load)


def bounds_stage(cfg: DictConfig) -> str:
    """The bounds stage this job runs (the protection's registry entry: protect/bounds_stages.py)."""
    return PROTECTIONS[cfg.protection.name].bounds_stage_for(cfg.protection)


def stage_bounds(cfg: DictConfig, prepared: Prepared, datamodule, keys: dict[str, str]) -> dict:
    """The protection's bounds stage on ``prepared.protected`` (on ``device``). It only changes
    `.bound` (and `.lower`) tensors, which are cached (on the CPU) so that every fault-rate job of
    one protection reuses them. A stage that can resume (the FT-ClipAct search) keeps its progress
    in the entry's partial folder."""
    stage = BOUNDS_STAGES[prepared.stage]
    if stage.name == "none":
        return {}

    def compute():
        job = stage.job(cfg, prepared.protected, prepared.reference, datamodule, prepared.clean_val_acc)
        job.checkpoint_dir = partial_path(cfg.cache_dir, f"bounds_{cfg.protection.name}", keys["bounds"])
        info = run_bounds_stage(prepared, job)
        return bound_tensors(prepared.protected), info

    def load(path: Path):
        return (torch.load(path / "bounds.pt", weights_only=True), torch.load(path / "info.pt", weights_only=False))

    bounds, info = cached_stage(cfg.cache_dir, f"bounds_{cfg.protection.name}", keys["bounds"],
                                compute, _save_pair(("bounds.pt", "info.pt")), load)
    prepared.protected.load_state_dict(bounds, strict=False)
    prepared.bounds_info = info
    return info


def prepare_protected(cfg: DictConfig, datamodule, device: torch.device, keys: dict[str, str]) -> Prepared:
    """Baseline (cached) -> the recipe (recipe.py: fold BN -> profile (cached) -> protect), as every
    job (and the benchmarks) runs it, on ``device``; the bounds stage comes next."""
    baseline, train_info = stage_baseline(cfg, datamodule, device, keys)
    val_images, val_labels = datamodule.eval_tensors("val", None, cfg.campaign.seed)  # the whole split

    def clean_val(model: torch.nn.Module) -> float:
        return evaluate_accuracy(model, val_images.to(device), val_labels.to(device), cfg.campaign.batch_size)

    prepared = prepare(baseline, cfg.protection, lambda model: stage_profile(cfg, model, datamodule, keys),
                       fold=cfg.faults.fold_batchnorm, clean_val=clean_val, device=device)
    prepared.train_info = train_info
    return prepared
