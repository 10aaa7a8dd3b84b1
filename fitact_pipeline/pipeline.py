"""One job, stage by stage: data -> baseline -> fold BN -> profile -> protect -> post-train/search
-> fault campaign -> MLflow. The expensive stages are cached by a hash of the config parts that
determine them, so every protection x rate job of a sweep reuses one trained baseline.
"""
from __future__ import annotations

import copy
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from . import tracking
from .cache import cached_stage, config_hash
from .campaign import run_campaign
from .faults import SAMPLER, FaultInjector, evaluate_accuracy
from .models import build_model
from .protect import fold_batchnorm, profile_activations, protect_model
from .training import train_baseline
from .validate import as_rate_list, check_config

log = logging.getLogger(__name__)


def configure_runtime(cfg: DictConfig) -> torch.device:
    """Per-job global state. Joblib reuses worker processes, so nothing is trusted from a previous
    job: seeds, threads and numeric modes are set again every time."""
    torch.manual_seed(cfg.seed)
    threads = cfg.threads or _parallel_share()
    if threads:
        torch.set_num_threads(int(threads))
    # Faulted fixed-point values reach ±32768: TF32 would change what a fault does.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def _parallel_share() -> int | None:
    """Each of n parallel joblib jobs gets cores / n threads, so jobs do not oversubscribe."""
    try:
        launcher = HydraConfig.get().launcher
    except ValueError:
        return None
    n_jobs = launcher.get("n_jobs") if "joblib" in str(launcher.get("_target_", "")).lower() else None
    if not n_jobs or n_jobs < 1:
        return None
    return max(1, (os.cpu_count() or 1) // int(n_jobs))


def _plain(node: Any) -> Any:
    return OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node


def baseline_key(cfg: DictConfig) -> str:
    dataset = {k: v for k, v in _plain(cfg.dataset).items()
               if k not in ("num_workers", "eval_batch_size", "cache_dir")}
    train = {k: v for k, v in _plain(cfg.train).items() if k != "progress_bar"}
    return config_hash({"model": _plain(cfg.model), "dataset": dataset, "train": train, "seed": cfg.seed})


def stage_baseline(cfg: DictConfig, datamodule) -> tuple[torch.nn.Module, dict]:
    """Train (or load) the baseline: once per model x dataset x training config x seed."""
    model = build_model(cfg.model.name, num_classes=datamodule.num_classes,
                        in_channels=datamodule.in_channels, width=cfg.model.width)

    def compute() -> tuple[dict, dict]:
        info = train_baseline(model, datamodule, cfg.train, seed=cfg.seed)
        return model.state_dict(), dict(info)

    def save(path: Path, artefact) -> None:
        torch.save(artefact[0], path / "model.pt")
        torch.save(artefact[1], path / "info.pt")

    def load(path: Path):
        return (torch.load(path / "model.pt", weights_only=True),
                torch.load(path / "info.pt", weights_only=True))

    state, info = cached_stage(cfg.cache_dir, "baseline", baseline_key(cfg), compute, save, load)
    model.load_state_dict(state)
    return model.eval(), info


def stage_profile(cfg: DictConfig, model: torch.nn.Module, datamodule) -> dict[str, torch.Tensor]:
    key = config_hash({"baseline": baseline_key(cfg), "fold": cfg.faults.fold_batchnorm,
                       "images": cfg.profile_images})
    return cached_stage(
        cfg.cache_dir, "profile", key,
        lambda: profile_activations(model, datamodule.profile_dataloader(cfg.profile_images), cfg.profile_images),
        lambda path, prof: torch.save(prof, path / "profile.pt"),
        lambda path: torch.load(path / "profile.pt", weights_only=True))


def stage_bounds(cfg: DictConfig, protected: torch.nn.Module, datamodule, clean_val_acc: float) -> dict:
    """FitAct post-training or the FT-ClipAct search: both only change `.bound` tensors, which are
    cached so that every fault-rate job of one protection reuses them."""
    name = cfg.protection.name
    search = _searches(cfg)
    if name != "fitact" and not search:
        return {}
    key = bounds_key(cfg)

    def compute():
        if name == "fitact":
            from .posttrain import posttrain_bounds
            info = posttrain_bounds(protected, datamodule, cfg.posttrain, clean_val_acc)
        else:
            info = {"thresholds": _search_thresholds(cfg, protected, datamodule)}
        bounds = {k: v.detach().clone() for k, v in protected.state_dict().items() if k.endswith(".bound")}
        return bounds, info

    def save(path: Path, artefact) -> None:
        torch.save(artefact[0], path / "bounds.pt")
        torch.save(artefact[1], path / "info.pt")

    def load(path: Path):
        return (torch.load(path / "bounds.pt", weights_only=True),
                torch.load(path / "info.pt", weights_only=False))

    bounds, info = cached_stage(cfg.cache_dir, f"bounds_{name}", key, compute, save, load)
    protected.load_state_dict(bounds, strict=False)
    return info


def _searches(cfg: DictConfig) -> bool:
    return cfg.protection.name == "clipact" and cfg.protection.get("search", {}).get("enabled", False)


def _search_rates(cfg: DictConfig) -> list[float]:
    """The search's own rate list when it has one, else the campaign's rates."""
    rates = cfg.protection.search.rates
    return as_rate_list(rates) if rates else as_rate_list(cfg.campaign.rates)


def bounds_key(cfg: DictConfig) -> str:
    """Cache key of the post-trained (FitAct) or searched (Clip-Act) bounds: what they depend on."""
    search = _searches(cfg)
    fitact = cfg.protection.name == "fitact"
    return config_hash({"baseline": baseline_key(cfg), "protection": _plain(cfg.protection),
                        "posttrain": _plain(cfg.posttrain) if fitact else None,
                        "faults": _plain(cfg.faults), "profile_images": cfg.profile_images,
                        "rates": _search_rates(cfg) if search else None,
                        "sampler": SAMPLER if search else None})  # the search injects faults


def fault_kwargs(faults: DictConfig) -> dict[str, Any]:
    return {"fmt": faults.fmt, "word_bits": faults.word_bits, "frac_bits": faults.frac_bits,
            "targets": tuple(faults.targets), "include": tuple(faults.include), "exclude": tuple(faults.exclude)}


def _search_thresholds(cfg: DictConfig, protected: torch.nn.Module, datamodule) -> dict[str, float]:
    """FT-ClipAct on the validation split, on fault maps of its own seed (never the test maps)."""
    from .clipact_search import clipact_search

    search = cfg.protection.search
    images, labels = datamodule.eval_tensors("val", search.images, cfg.campaign.seed + 1)
    rates = _search_rates(cfg)
    return clipact_search(protected, images, labels, fault_kwargs(cfg.faults), rates=rates,
                          candidates=search.candidates, iterations=search.iterations, trials=search.trials,
                          seed=cfg.campaign.seed + 1, batch_size=cfg.campaign.batch_size)


def _parent_run_id() -> str | None:
    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:
        return None
    if str(hydra_cfg.mode) != "RunMode.MULTIRUN":
        return None
    marker = tracking.parent_run_file(hydra_cfg.sweep.dir)
    return marker.read_text().strip() if marker.exists() else None


def job_tags(cfg: DictConfig, dataset: str, key: str, rates: list[float]) -> dict[str, str]:
    return {"model": cfg.model.name, "dataset": dataset, "protection": cfg.protection.name,
            "granularity": cfg.protection.get("granularity", "layer"), "fault_format": _format_name(cfg.faults),
            "fault_rates": ",".join(tracking.rate_label(r) for r in rates), "job_key": key,
            "seed": str(cfg.seed), "width": str(cfg.model.width)}


def _format_name(faults: DictConfig) -> str:
    if faults.fmt == "fixed":
        return f"Q{faults.word_bits - faults.frac_bits - 1}.{faults.frac_bits}"
    return faults.fmt


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Run one job end to end and log it as one MLflow run. Returns a summary (also for skips)."""
    check_config(cfg)
    device = configure_runtime(cfg)
    rates = as_rate_list(cfg.campaign.rates)
    key = tracking.job_key(cfg)
    exp_id = tracking.ensure_store(cfg.tracking)
    client = MlflowClient(mlflow.get_tracking_uri())
    if cfg.tracking.resume:
        done = tracking.finished_run(client, exp_id, key)
        if done is not None:
            log.info("job %s already finished as run %s: skipped", key, done.info.run_id)
            return {"skipped": True, "run_id": done.info.run_id, "job_key": key}
        tracking.retire_unfinished(client, exp_id, key)

    datamodule = instantiate(cfg.dataset)
    datamodule.setup()
    tags = job_tags(cfg, datamodule.name, key, rates)
    run_name = f"{cfg.model.name}-{datamodule.name}-{cfg.protection.name}-{tags['fault_rates']}"
    with tracking.job_run(cfg.tracking, run_name, tags, _parent_run_id()) as run:
        mlflow.log_dict(OmegaConf.to_container(cfg, resolve=True), "config.yaml")
        mlflow.log_params(tracking.flatten(OmegaConf.to_container(cfg, resolve=True)))
        summary = _run_stages(cfg, datamodule, device, rates)
        summary.update(run_id=run.info.run_id, job_key=key, skipped=False)
    return summary


@dataclass
class Prepared:
    """A job's model before its bounds stage: the deployed ReLU model and its protected copy."""
    reference: torch.nn.Module  # baseline, BN folded when the fault model says so
    protected: torch.nn.Module  # the same weights with bounded activations at profiled bounds
    profile: dict[str, torch.Tensor]
    clean_val_acc: float  # of the reference, on the whole validation split
    train_info: dict


def prepare_protected(cfg: DictConfig, datamodule) -> Prepared:
    """Baseline -> fold BN -> profile -> protect, as every job (and benchmarks/posttrain_settings.py)
    runs them; the bounds stage (post-training or search) comes next."""
    baseline, train_info = stage_baseline(cfg, datamodule)
    model = copy.deepcopy(baseline).eval()
    if cfg.faults.fold_batchnorm:
        fold_batchnorm(model)
    profile = stage_profile(cfg, model, datamodule)
    val_images, val_labels = datamodule.eval_tensors("val", None, cfg.campaign.seed)  # the whole split
    clean_val_acc = evaluate_accuracy(model, val_images, val_labels, cfg.campaign.batch_size)
    reference = copy.deepcopy(model)
    protection = cfg.protection
    protected = protect_model(model, protection.name, protection.get("granularity", "layer"), profile,
                              **_protection_kwargs(protection, profile))
    return Prepared(reference, protected, profile, clean_val_acc, train_info)


def _run_stages(cfg: DictConfig, datamodule, device: torch.device, rates: list[float]) -> dict[str, Any]:
    prepared = prepare_protected(cfg, datamodule)
    _log_profile_site(prepared.profile, cfg.profile_site)
    reference = prepared.reference if cfg.overhead.enabled else None
    protected, train_info, clean_val_acc = prepared.protected, prepared.train_info, prepared.clean_val_acc
    bounds_info = stage_bounds(cfg, protected, datamodule, clean_val_acc)
    protected = protected.to(device).eval()

    test_images, test_labels = datamodule.eval_tensors(cfg.campaign.eval_split, cfg.campaign.eval_images,
                                                       cfg.campaign.seed)
    if reference is not None:
        _log_overhead(reference.to(device), protected, test_images.to(device), cfg.overhead)
    float_acc = evaluate_accuracy(protected, test_images.to(device), test_labels.to(device),
                                  cfg.campaign.batch_size)
    injector = FaultInjector(protected, **fault_kwargs(cfg.faults))
    adaptive = _plain(cfg.campaign.adaptive) if cfg.campaign.adaptive.enabled else None
    started = time.perf_counter()
    result = run_campaign(protected, injector, test_images.to(device), test_labels.to(device), rates,
                          cfg.campaign.trials, cfg.campaign.seed, cfg.campaign.batch_size,
                          adaptive=adaptive, progress=cfg.progress_bar, level=cfg.campaign.confidence)
    campaign_time = time.perf_counter() - started
    tracking.log_job_results(result, injector.fault_space, train_info, bounds_info,
                             float_accuracy=float_acc, clean_val_accuracy=clean_val_acc,
                             campaign_time_s=campaign_time)
    return {"clean_accuracy": result.clean_accuracy,
            "mean_accuracy": {r: s["mean"] for r, s in result.per_rate.items()}}


def _protection_kwargs(protection: DictConfig, profile: dict[str, torch.Tensor]) -> dict[str, Any]:
    # fused: the hard bounded forms run as one kernel (activations.py, cpu_kernel.py); same outputs.
    kwargs: dict[str, Any] = {"fused": bool(protection.get("fused", False))}
    if protection.name == "fitact":
        kwargs.update(k=protection.k, hard=protection.hard)
    if protection.name == "gbrelu":
        # GBReLU at chosen sites only (paper Fig. 1: one layer); the others stay plain ReLU.
        sites = _select_sites(list(profile), protection.get("sites"))
        kwargs.update(gbrelu_bound={site: float(protection.bound) for site in sites})
    return kwargs


def _select_sites(all_sites: list[str], chosen) -> list[str]:
    """Sites by name or by index in forward order; None = all."""
    if chosen is None:
        return all_sites
    picked = []
    for item in chosen:
        if isinstance(item, int) and -len(all_sites) <= item < len(all_sites):
            picked.append(all_sites[item])
        elif item in all_sites:
            picked.append(item)
        else:
            raise ValueError(f"protection.sites has {item!r}; allowed: an index below {len(all_sites)} "
                             f"or one of: {', '.join(all_sites)}")
    return picked


def _log_profile_site(profile: dict[str, torch.Tensor], site_index: int | None) -> None:
    """Per-neuron maxima of one activation site (paper Fig. 2), plus a per-site summary."""
    sites = list(profile)
    mlflow.log_dict({s: {"neurons": int(p.numel()), "layer_max": float(p.max()), "mean": float(p.float().mean())}
                     for s, p in profile.items()}, "profile_summary.json")
    if site_index is None or not sites:
        return
    site = _select_sites(sites, [site_index])[0]
    mlflow.log_dict({"site": site, "shape": list(profile[site].shape),
                     "maxima": profile[site].flatten().tolist()}, "profile_site.json")


def _log_overhead(reference: torch.nn.Module, protected: torch.nn.Module, images: torch.Tensor,
                  overhead_cfg: DictConfig) -> None:
    from .overhead import overhead

    reps = -(-overhead_cfg.batch_size // images.shape[0])
    batch = images.repeat(reps, 1, 1, 1)[: overhead_cfg.batch_size]
    mlflow.log_metrics(overhead(reference, protected, batch, repeats=overhead_cfg.repeats))
