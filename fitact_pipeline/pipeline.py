"""One job, end to end: stages.py (baseline -> fold BN -> profile -> protect -> bounds) -> fault
campaign -> one MLflow run. A job whose finished run is already in the store is skipped.
"""
from __future__ import annotations

import logging
import os
import time
from typing import Any

import mlflow
import torch
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from . import tracking
from .evaluate import evaluate_accuracy
from .counts import eval_count
from .device import resolve_device
from .faults import FAULT_MODELS, FORMATS, apply_datapath, as_rate_list, run_campaign
from .faults.faultlist import read_fault_list, replay
from .identity import context_key, plain, result_identity, slot_key, stage_keys
from .models import model_tag
from .overhead import overhead
from .protect.sites import select_sites
from .protect.weights import WEIGHT_PROTECTIONS
from .stages import prepare_protected, stage_bounds
from .validate import check_config

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
    return resolve_device(cfg.device)


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


def _parent_run_id() -> str | None:
    try:
        hydra_cfg = HydraConfig.get()
    except ValueError:
        return None
    if str(hydra_cfg.mode) != "RunMode.MULTIRUN":
        return None
    marker = tracking.parent_run_file(hydra_cfg.sweep.dir)
    return marker.read_text().strip() if marker.exists() else None


def job_tags(cfg: DictConfig, dataset: str, identity: dict, rates: list[float], device: torch.device
             ) -> dict[str, str]:
    """The run's tags: what the MLflow UI filters on, and the result's identity as the report reads
    it (its job key, its slot: the curve it belongs to, its context: which runs it pairs with)."""
    faults = cfg.faults
    key = stage_keys(identity)["job"]
    return {"result_slot": slot_key(identity), "result_context": context_key(identity), "device": device.type,
            "model": model_tag(cfg.model), "dataset": dataset, "protection": cfg.protection.name,
            "granularity": cfg.protection.get("granularity", "layer"),
            "fault_format": FORMATS[faults.fmt].label(faults.word_bits, faults.frac_bits),
            "fault_model": faults.model, "fault_rates": ",".join(tracking.rate_label(r) for r in rates),
            "campaign_design": cfg.campaign.design, "job_key": key, "seed": str(cfg.seed),
            "weight_protection": (cfg.get("weight_protection") or {}).get("name", "none"),
            "width": str(cfg.model.get("width", 1.0))}


def run_job(cfg: DictConfig) -> dict[str, Any]:
    """Run one job end to end and log it as one MLflow run. Returns a summary (also for skips).
    The job claims its key first, so the same job started by a second launcher waits, then skips."""
    check_config(cfg)
    device = configure_runtime(cfg)
    datamodule = instantiate(cfg.dataset)
    identity = result_identity(cfg, datamodule, device)
    key = stage_keys(identity)["job"]
    exp_id = tracking.ensure_store(cfg.tracking)
    if _parent_run_id() is None:  # a launch of its own: runs that died before it are closed (a sweep's callback does it)
        tracking.retire_dead_runs(MlflowClient(mlflow.get_tracking_uri()), exp_id, cfg.tracking, cfg.cache_dir)
    with tracking.claim(cfg.tracking, cfg.cache_dir, key):
        client = MlflowClient(mlflow.get_tracking_uri())
        if cfg.tracking.resume:
            done = tracking.finished_run(client, exp_id, key)
            if done is not None:
                log.info("job %s already finished as run %s: skipped", key, done.info.run_id)
                return {"skipped": True, "run_id": done.info.run_id, "job_key": key}
            tracking.retire_unfinished(client, exp_id, key)
        return _run_logged(cfg, datamodule, device, identity)


def campaign_rates(cfg: DictConfig) -> list[float]:
    """The rates a job measures: campaign.rates, or those of the fault list it replays."""
    if cfg.faults.get("list") is not None:
        return read_fault_list(cfg.faults.list).rates
    return as_rate_list(cfg.campaign.rates)


def _run_logged(cfg: DictConfig, datamodule, device: torch.device, identity: dict) -> dict[str, Any]:
    rates = campaign_rates(cfg)
    datamodule.setup()
    tags = job_tags(cfg, datamodule.name, identity, rates, device)
    key = tags["job_key"]
    run_name = f"{tags['model']}-{datamodule.name}-{cfg.protection.name}-{tags['fault_rates']}"
    with tracking.job_run(cfg.tracking, run_name, tags, _parent_run_id()) as run:
        mlflow.log_dict(OmegaConf.to_container(cfg, resolve=True), "config.yaml")
        mlflow.log_dict(identity, "identity.json")
        mlflow.log_params(tracking.flatten(OmegaConf.to_container(cfg, resolve=True)))
        summary = _run_stages(cfg, datamodule, device, rates, stage_keys(identity))
        summary.update(run_id=run.info.run_id, job_key=key, skipped=False)
    return summary


def _run_stages(cfg: DictConfig, datamodule, device: torch.device, rates: list[float], keys: dict[str, str]
                ) -> dict[str, Any]:
    prepared = prepare_protected(cfg, datamodule, device, keys)
    _log_profile_site(prepared.profile, cfg.profile_site)
    bounds_info = stage_bounds(cfg, prepared, datamodule, keys)
    protected = prepared.protected.eval()
    apply_datapath(protected, cfg.faults.datapath)
    images, labels = datamodule.eval_tensors(cfg.campaign.eval_split, eval_count(cfg.campaign.eval_images),
                                            cfg.campaign.seed)
    images, labels = images.to(device), labels.to(device)
    if cfg.overhead.enabled:
        _log_overhead(prepared.reference, protected, images, cfg.overhead)
    weights = cfg.get("weight_protection") or {"name": "none"}
    WEIGHT_PROTECTIONS[weights["name"]].protect(protected, weights)
    float_acc = evaluate_accuracy(protected, images, labels, cfg.campaign.batch_size)
    injector = FAULT_MODELS[cfg.faults.model].build(protected, cfg.faults)
    _attach_weight_protection(weights, injector, protected, images, labels, cfg.campaign.batch_size)
    injector = replay(injector, cfg.faults)
    campaign = cfg.campaign
    adaptive = plain(campaign.adaptive) if campaign.adaptive.enabled else None
    trials = injector.faults.trials_per_rate if cfg.faults.get("list") is not None else campaign.trials
    started = time.perf_counter()
    result = run_campaign(protected, injector, images, labels, rates, trials, campaign.seed,
                          campaign.batch_size, adaptive=adaptive, progress=cfg.progress_bar, level=campaign.confidence,
                          design=campaign.design, images_per_trial=campaign.images_per_trial,
                          maps_per_pass=maps_per_pass(campaign.maps_per_pass, protected, device))
    tracking.log_job_results(result, injector.fault_space, prepared.train_info, bounds_info,
                             stage=prepared.stage, float_accuracy=float_acc, clean_val_accuracy=prepared.clean_val_acc,
                             campaign_time_s=time.perf_counter() - started)
    return {"clean_accuracy": result.clean_accuracy,
            "mean_accuracy": {r: s["mean"] for r, s in result.per_rate.items()}}


def _attach_weight_protection(weights, injector, model, images, labels, batch_size: int) -> None:
    """The weight protection's step on the stored model (parity_zero: the parity bits), and what it
    costs without faults: ``weight_protection_cost`` = clean accuracy before - after (parity's lost bit)."""
    if weights["name"] == "none":
        return
    before = evaluate_accuracy(model, images, labels, batch_size)
    WEIGHT_PROTECTIONS[weights["name"]].attach(injector, weights)
    mlflow.log_metric("weight_protection_cost", before - evaluate_accuracy(model, images, labels, batch_size))


def maps_per_pass(setting, model: torch.nn.Module, device: torch.device) -> int:
    """``auto``: several maps per pass where it pays (benchmarks/maps_per_pass.py): on a GPU, and on a
    CPU for models of at most AUTO_MAX_PARAMS parameters; never for attention models."""
    if setting != "auto":
        return int(setting)
    if any(isinstance(m, torch.nn.MultiheadAttention) for m in model.modules()):
        return 1  # its fused kernel has no vmap rule: vmap would loop over the maps one by one
    small = sum(p.numel() for p in model.parameters()) <= AUTO_MAX_PARAMS
    return AUTO_MAPS_PER_PASS if device.type == "cuda" or small else 1


# on 2 CPU cores 8 maps per pass pay on small_cnn (34 k parameters) and lose on vgg16_w025 (0.92 M):
# docs/campaigns.md
AUTO_MAPS_PER_PASS, AUTO_MAX_PARAMS = 8, 100_000


def _log_profile_site(profile: dict[str, torch.Tensor], site_index: int | None) -> None:
    """Per-neuron maxima of one activation site (paper Fig. 2), plus a per-site summary."""
    sites = list(profile)
    mlflow.log_dict({s: {"neurons": int(p.numel()), "layer_max": float(p.max()), "mean": float(p.float().mean())}
                     for s, p in profile.items()}, "profile_summary.json")
    if site_index is None or not sites:
        return
    site = select_sites(sites, [site_index], "profile_site")[0]
    mlflow.log_dict({"site": site, "shape": list(profile[site].shape),
                     "maxima": profile[site].flatten().tolist()}, "profile_site.json")


def _log_overhead(reference: torch.nn.Module, protected: torch.nn.Module, images: torch.Tensor,
                  overhead_cfg: DictConfig) -> None:
    reps = -(-overhead_cfg.batch_size // images.shape[0])
    batch = images.repeat(reps, 1, 1, 1)[: overhead_cfg.batch_size]
    mlflow.log_metrics(overhead(reference, protected, batch, repeats=overhead_cfg.repeats))
