"""Harden your own model, and measure it, without Hydra (README, "Python API").

    from fitact_pipeline import harden, measure_resilience

    fitact = harden(model, "fitact", train_loader, val_loader)     # fold BN, profile, protect, post-train
    result = measure_resilience(fitact, test_loader, rates=[1e-6, 1e-5, 1e-4], trials=20)
    print(result.table())

``harden`` runs the pipeline's stages on a copy of ``model`` (stages.py does the same for a job):
BatchNorm folding, profiling (maxima, and minima where the activation has a lower bound), protection,
and the protection's bounds stage (FitAct's post-training; Clip-Act's FT-ClipAct search when asked).
``measure_resilience`` runs the pipeline's fault campaign on a copy (the fault space is quantised in
place) and returns the statistics a job logs; with ``mlflow=...`` it also logs them as a job does.
Pass the same ``seed`` to compare protections: trial i then hits the same weight bits in every model.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import mlflow
import torch
from torch import nn

from . import tracking
from .configs import group_config
from .data.loaders import LoaderData, as_tensors
from .evaluate import accuracy, evaluate_accuracy
from .faults import FAULT_MODELS, apply_datapath, as_rate_list, check_faults_config, run_campaign
from .protect import PROTECTIONS, profile_ranges
from .protect.bounds_stages import STORED_FAULT_KEYS, BoundsJob
from .recipe import Prepared, check_needs, prepare, protection_config, run_bounds_stage
from .training import quiet_lightning

#: the faults of a campaign when none are given: conf/faults/<DEFAULT_FAULTS>.yaml, the paper's Q15.16
#: bit flips in weights, biases and bounds
DEFAULT_FAULTS = "q15_16"


#: a hardened model is the recipe's result (recipe.Prepared): ``.model`` to deploy, ``.reference``
Hardened = Prepared

#: the FT-ClipAct search's settings harden() takes besides the config's (conf/protection/clipact.yaml)
SEARCH_EXTRAS = ("seed", "faults", "batch_size")


def harden(model: nn.Module, protection: str = "fitact", train_loader=None, val_loader=None, *,
           granularity: str | None = None, profile_loader=None, profile_images: int | None = 5000,
           fold_batchnorm: bool = True, posttrain: Mapping | None = None, search: Mapping | None = None,
           progressive: Mapping | None = None,
           device: str | torch.device | None = None, **options) -> Hardened:
    """Protect a copy of a trained ``model`` with ``protection`` (none, ranger, clipact, gbrelu, proact,
    fitact) from DataLoaders of ``(images, labels)``, by the recipe every job runs (recipe.py).

    Bounds come from profiling ``profile_images`` images of ``profile_loader`` (default:
    ``train_loader``; a loader without augmentation is best). FitAct then post-trains its bounds on
    ``train_loader`` and selects them on ``val_loader`` (``posttrain``: the keys of
    conf/posttrain/default.yaml); ProAct trains its bounds site by site distilled from the model
    (``progressive``: the keys of conf/protection/proact.yaml's ``progressive``). Clip-Act searches
    its thresholds when ``search`` is given (the keys of conf/protection/clipact.yaml's ``search``,
    whose defaults apply, ``rates`` required; and ``seed``, ``faults``, ``batch_size``).
    ``options`` go to the bounded activations (FitAct's ``k``, ``hard``; ``fused``; GBReLU's
    ``bounds``). The model's activations may be any kind of docs/protections.md.
    """
    if not (posttrain or {}).get("progress_bar", False):
        quiet_lightning(False)  # Lightning's device banners, once per post-training, are noise here
    loader = profile_loader if profile_loader is not None else train_loader
    if loader is None:
        raise ValueError("harden needs images to profile: pass train_loader (or profile_loader)")
    search_node = None if search is None else {**{k: v for k, v in search.items() if k not in SEARCH_EXTRAS},
                                               "enabled": True}
    config = protection_config(protection, granularity=granularity, search=search_node, progressive=progressive,
                               **{k: v for k, v in options.items() if k in PROTECTIONS[protection].config_keys})
    extra = {k: v for k, v in options.items() if k not in PROTECTIONS[protection].config_keys}
    given = {name for name, value in (("train", train_loader), ("val", val_loader)) if value is not None}
    check_needs(protection, PROTECTIONS[protection].bounds_stage_for(config), given | {"reference"})
    hardened = prepare(model, config, lambda reference: profile_ranges(reference, loader, profile_images),
                       fold=fold_batchnorm, clean_val=(lambda m: accuracy(m, val_loader)) if val_loader else None,
                       device=device, **extra)
    job = BoundsJob(hardened.protected, hardened.reference, LoaderData(train_loader, val_loader),
                    hardened.clean_val_acc, **_stage_settings(hardened.stage, config, posttrain, search))
    run_bounds_stage(hardened, job)
    hardened.protected.eval()
    return hardened


def _stage_settings(stage: str, config: Mapping, posttrain: Mapping | None, search: Mapping | None) -> dict:
    """The BoundsJob fields of ``stage`` from harden()'s arguments (a job reads them from its config)."""
    if stage == "posttrain":
        return {"settings": posttrain}
    if stage == "progressive":
        return {"settings": config.get("progressive")}
    if stage == "search":
        if config["search"].get("rates") is None:
            raise ValueError("search={...} needs 'rates': the fault rates the thresholds are scored at")
        faults = _faults_config(search.get("faults"))
        return {"settings": {**config["search"], "rates": as_rate_list(config["search"]["rates"])},
                "faults": {k: faults[k] for k in STORED_FAULT_KEYS if k != "fold_batchnorm"},
                "seed": search.get("seed", 0), "batch_size": search.get("batch_size", 256)}
    return {}


def _faults_config(faults: str | Mapping | None) -> dict:
    """A ``faults`` config: a name of conf/faults/ (``q15_16``, ``float32``, ...), or keys over the
    default (Q15.16 in weights, biases and bounds), checked as a job's are."""
    cfg = group_config("faults", faults if isinstance(faults, str) else DEFAULT_FAULTS)
    if not isinstance(faults, str):
        cfg.update(dict(faults or {}))
    check_faults_config(cfg)
    return cfg


@dataclass
class Resilience:
    """What a campaign measured: the same statistics a pipeline job logs (``per_rate``: mean, std,
    median, q1, q3, min, max, ci_low, ci_high, trials of the accuracy at each fault rate; ``trials``:
    one record per fault map), the fault space, and the MLflow run when it was logged."""

    clean_accuracy: float
    per_rate: dict[float, dict[str, float]]
    trials: list[dict[str, Any]]
    fault_space: dict
    run_id: str | None = None

    def mean(self, rate: float) -> float:
        return self.per_rate[float(rate)]["mean"]

    def table(self) -> str:
        """A Markdown table: mean accuracy and its confidence interval per fault rate."""
        rows = [f"| clean | {100 * self.clean_accuracy:.2f} | | |"]
        rows += [f"| {rate:g} | {100 * s['mean']:.2f} | [{100 * s['ci_low']:.2f}, {100 * s['ci_high']:.2f}] | "
                 f"{int(s['trials'])} |" for rate, s in sorted(self.per_rate.items())]
        return "\n".join(["| fault rate | mean accuracy % | CI % | trials |", "|---|---|---|---|", *rows])


def measure_resilience(model: nn.Module | Hardened, data, rates: Sequence[float], trials: int = 20, *, seed: int = 0,
                       faults: str | Mapping | None = None, images: int | None = None, batch_size: int = 256,
                       confidence: float = 0.95, adaptive: Mapping | None = None,
                       mlflow: Mapping | None = None) -> Resilience:
    """A fault campaign on a copy of ``model`` (or of a ``Hardened`` model): ``trials`` fault maps per
    rate, each kept for one pass over the evaluation images (``data``: a DataLoader or an
    ``(images, labels)`` pair; ``images``: the first that many of them, no more than it holds).
    ``faults``: a name of conf/faults/ (``q15_16``, ``float32``, ``int8``, ...) or keys over the
    default, Q15.16 bit flips in weights, biases and bounds; every key applies as in a job
    (``datapath``: activations rounded and saturated to that format; ``model: activation``: weights
    stored in ``fmt``, faults in the activation words). ``adaptive``: ``{"target_halfwidth", "min_trials", "max_trials"}`` stops a rate
    early. ``mlflow``: ``{"experiment": name, "tracking_uri": uri, "run_name": name}`` logs the run as
    a job logs its campaign (docs/tracking.md)."""
    hardened = model if isinstance(model, Hardened) else None
    net = copy.deepcopy(hardened.model if hardened else model).eval()
    x, y = as_tensors(data, images)
    if images is not None and len(y) < images:  # a requested quantity is never silently reduced
        raise ValueError(f"images={images} is more than the {len(y)} images of data; pass images <= {len(y)}, "
                         "or None for all of them")
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    x, y = x.to(device), y.to(device)
    cfg = _faults_config(faults)
    apply_datapath(net, cfg["datapath"])  # as a job does: before the clean evaluation and any fault hook
    float_accuracy = evaluate_accuracy(net, x, y, batch_size)  # before the fault space is quantised
    injector = FAULT_MODELS[cfg["model"]].build(net, cfg)
    started = time.perf_counter()
    result = run_campaign(net, injector, x, y, [float(r) for r in rates], trials, seed, batch_size,
                          adaptive=dict(adaptive) if adaptive else None, progress=False, level=confidence)
    out = Resilience(result.clean_accuracy, result.per_rate, result.trials, injector.fault_space)
    if mlflow is not None:
        out.run_id = _log(mlflow, result, injector.fault_space, hardened, float_accuracy,
                          time.perf_counter() - started, {"rates": list(rates), "trials": trials, "seed": seed,
                                                          "faults": cfg})
    return out


def _log(target: Mapping, result, fault_space: dict, hardened: Hardened | None, float_accuracy: float,
         campaign_time_s: float, settings: dict) -> str:
    if target.get("tracking_uri"):
        mlflow.set_tracking_uri(target["tracking_uri"])
    mlflow.set_experiment(target.get("experiment", "fitact_api"))
    tags = {"protection": hardened.protection if hardened else "none", "source": "fitact_pipeline.api"}
    if hardened:
        tags["granularity"] = hardened.granularity
    with mlflow.start_run(run_name=target.get("run_name"), tags=tags) as run:
        mlflow.log_params(tracking.flatten(settings))
        clean_val = hardened.clean_val_accuracy if hardened and hardened.clean_val_accuracy is not None else float("nan")
        tracking.log_job_results(result, fault_space, {}, hardened.bounds_info if hardened else {},
                                 stage=hardened.stage if hardened else "none", float_accuracy=float_accuracy, clean_val_accuracy=clean_val,
                                 campaign_time_s=campaign_time_s)
        return run.info.run_id


__all__ = ["DEFAULT_FAULTS", "Hardened", "Resilience", "as_tensors", "harden", "measure_resilience"]
