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

import contextlib
import copy
import time
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import mlflow
import torch
from torch import nn

from . import tracking
from .configs import group_config
from .data.loaders import LoaderData, as_tensors
from .evaluate import accuracy, evaluate_accuracy
from .faults import FAULT_MODELS, apply_datapath, as_rate_list, check_faults_config, faultlist, run_campaign
from .faults.conditioned import acc_at_rate, rate_at_loss
from .faults.campaign import check_design
from .faults.conditioned_campaign import check_conditioned_config
from .faults.vulnerability import vulnerability_map
from .protect import PROTECTIONS, profile_ranges
from .protect.bounds_stages import STORED_FAULT_KEYS, BoundsJob
from .protect.weights import WEIGHT_PROTECTIONS, check_weight_protection_config
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
           progressive: Mapping | None = None, site_granularity: Mapping[str, str] | None = None,
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
    ``bounds``). ``site_granularity`` {site: granularity} overrides the granularity of the sites it names
    (protect/map_choice.py chooses them from a vulnerability map). The model's activations may be any
    kind of docs/protections.md.
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
    if site_granularity:
        extra["site_granularity"] = dict(site_granularity)
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
    median, q1, q3, min, max, trials of the accuracy at each fault rate, and its 95 % intervals:
    ci_low, ci_high (= ci_bounded_low/high) of the mean over fault maps on these images, valid for
    any distribution of accuracies in [0, 1], and ci_pop_low/high over maps and images, the images
    as a sample of the population; stats.summarize, docs/campaigns.md "Intervals"; ``outcomes``:
    rate -> {sdc, critical, wrong_to_right} -> the same statistics of those per-trial rates,
    faults/outcomes.py; ``trials``: one record per fault map), the fault space, and the MLflow run
    when it was logged."""

    clean_accuracy: float
    per_rate: dict[float, dict[str, float]]
    trials: list[dict[str, Any]]
    fault_space: dict
    run_id: str | None = None
    outcomes: dict[float, dict[str, dict[str, float]]] = field(default_factory=dict)
    #: design="conditioned": the a_k table (faults.conditioned.ak_table) that answers any rate
    ak_table: dict | None = None

    def mean(self, rate: float) -> float:
        return self.per_rate[float(rate)]["mean"]

    def at_rate(self, rate: float, level: float | None = None) -> dict[str, float]:
        """Mean accuracy and its interval at any ``rate`` (one the campaign did not run too) from a
        count-conditioned campaign's a_k table (faults.conditioned.acc_at_rate)."""
        return acc_at_rate(self._table("at_rate"), rate, level)

    def rate_at_loss(self, loss: float = 0.01, level: float | None = None) -> dict[str, float]:
        """The fault rate at which mean accuracy first falls ``loss`` below the clean accuracy, with
        its interval (faults.conditioned.rate_at_loss), from a count-conditioned campaign."""
        return rate_at_loss(self._table("rate_at_loss"), loss, level=level)

    def _table(self, what: str) -> dict:
        if self.ak_table is None:
            raise ValueError(f"{what} needs a count-conditioned campaign: run measure_resilience with "
                             "design='conditioned' (this one ran another design)")
        return self.ak_table

    def sdc(self, rate: float) -> float:
        """Mean SDC rate at ``rate``: the fraction of images whose faulty top-1 differs from the clean one."""
        return self.outcomes[float(rate)]["sdc"]["mean"]

    def table(self) -> str:
        """A Markdown table per fault rate: mean accuracy, SDC and critical rates, each with its 95 %
        CI of the mean over fault maps on these images (ci_low/ci_high, the bounded interval)."""
        rows = [f"| clean | {100 * self.clean_accuracy:.2f} | 0 | 0 | |"]
        rows += [f"| {rate:g} | {_pct_ci(s)} | {_pct_ci(self.outcomes.get(rate, {}).get('sdc'))} | "
                 f"{_pct_ci(self.outcomes.get(rate, {}).get('critical'))} | {int(s['trials'])} |"
                 for rate, s in sorted(self.per_rate.items())]
        return "\n".join(["| fault rate | mean accuracy % [CI] | SDC % [CI] | critical % [CI] | trials |",
                          "|---|---|---|---|---|", *rows])


def measure_resilience(model: nn.Module | Hardened, data, rates: Sequence[float] | None = None, trials: int = 20, *,
                       seed: int = 0, faults: str | Mapping | None = None, images: int | None = None,
                       batch_size: int = 256, confidence: float = 0.95, adaptive: Mapping | None = None,
                       weight_protection: str | Mapping | None = None, mlflow: Mapping | None = None,
                       design: str = "classic", images_per_trial: int | None = None) -> Resilience:
    """A fault campaign on a copy of ``model`` (or of a ``Hardened`` model): ``trials`` fault maps per
    rate, each kept for one pass over the evaluation images (``data``: a DataLoader or an
    ``(images, labels)`` pair; ``images``: the first that many of them, no more than it holds).
    ``faults``: a name of conf/faults/ (``q15_16``, ``float32``, ``int8``, ...) or keys over the
    default, Q15.16 bit flips in weights, biases and bounds; every key applies as in a job
    (``datapath``: activations rounded and saturated to that format; ``model: activation``: weights
    stored in ``fmt``, faults in the activation words); with ``"list": path`` the campaign replays
    that CSV fault list (docs/faults.md, "Fault lists"): its rates and trials replace ``rates`` and
    ``trials``. ``adaptive``: ``{"target_halfwidth", "min_trials", "max_trials"}`` stops a rate early.
    ``weight_protection``: ``clamp``, ``parity_zero`` or a dict (conf/weight_protection/), on top of
    the model's activation protection (protect/weights.py). ``mlflow``: ``{"experiment": name,
    "tracking_uri": uri, "run_name": name}`` logs the run as a job logs its campaign (docs/tracking.md).
    ``design`` (docs/campaigns.md): ``classic`` (every map on all images), ``nested`` or
    ``conditioned`` (each map on its own ``images_per_trial`` images, None: nested's default, the
    conditioned design's whole pool; ``conditioned`` measures
    a_k = E[accuracy | k faults] and answers every rate: ``Resilience.at_rate``, ``rate_at_loss``)."""
    hardened = model if isinstance(model, Hardened) else None
    check_design({"design": design, "images_per_trial": images_per_trial})
    net = copy.deepcopy(hardened.model if hardened else model).eval()
    x, y = as_tensors(data, images)
    if images is not None and len(y) < images:  # a requested quantity is never silently reduced
        raise ValueError(f"images={images} is more than the {len(y)} images of data; pass images <= {len(y)}, "
                         "or None for all of them")
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    x, y = x.to(device), y.to(device)
    cfg = _faults_config(faults)
    apply_datapath(net, cfg["datapath"])  # as a job does: before the clean evaluation and any fault hook
    faultlist.check_fault_list(cfg, {"adaptive": {"enabled": bool(adaptive)}})
    check_conditioned_config({"design": design, "trials": trials, "adaptive": {"enabled": bool(adaptive)}}, cfg)
    if cfg.get("list") is None and rates is None:
        raise ValueError("rates=None is not allowed without a fault list; give the fault rates to measure")
    weights = _weight_protection(weight_protection, cfg)
    weights_entry = WEIGHT_PROTECTIONS[weights["name"]]
    weights_entry.protect(net, weights)
    float_accuracy = evaluate_accuracy(net, x, y, batch_size)  # before the fault space is quantised
    injector = FAULT_MODELS[cfg["model"]].build(net, cfg)
    weights_entry.attach(injector, weights)
    injector = faultlist.replay(injector, cfg)
    if cfg.get("list") is not None:
        rates, trials = injector.faults.rates, injector.faults.trials_per_rate
    started = time.perf_counter()
    result = run_campaign(net, injector, x, y, [float(r) for r in rates], trials, seed, batch_size,
                          adaptive=dict(adaptive) if adaptive else None, progress=False, level=confidence,
                          design=design, images_per_trial=images_per_trial)
    out = Resilience(result.clean_accuracy, result.per_rate, result.trials, injector.fault_space,
                     outcomes=result.outcomes, ak_table=result.ak_table)
    if mlflow is not None:
        out.run_id = _log(mlflow, result, injector.fault_space, hardened, float_accuracy,
                          time.perf_counter() - started, {"rates": list(rates), "trials": trials, "seed": seed,
                                                          "faults": cfg, "weight_protection": weights,
                                                          "campaign": {"design": design,
                                                                       "images_per_trial": images_per_trial}})
    return out


def vulnerability(model: nn.Module | Hardened, data, *, faults: str | Mapping | None = None, images: int | None = None,
                  half_width: float = 0.05, confidence: float = 0.95, seed: int = 0, max_faults: int = 2000,
                  tensors: Sequence[str] | None = None, bits: Sequence[int] | None = None,
                  weight_protection: str | Mapping | None = None, batch_size: int = 256,
                  mlflow: Mapping | None = None):
    """Where single faults hurt a copy of ``model``: for every fault-space tensor x bit position,
    P(SDC) and the mean accuracy loss of one flip, with exact intervals of at most ``half_width``
    (faults/vulnerability.py). ``faults`` and ``weight_protection`` as in ``measure_resilience``
    (any stored format; ``memory`` faults); ``tensors``/``bits`` restrict the cells. ``mlflow`` (as in
    ``measure_resilience``) logs ``vulnerability.json`` to a run tagged ``run_kind=vulnerability``,
    which the report draws (heat map and ranked table)."""
    net = copy.deepcopy(model.model if isinstance(model, Hardened) else model).eval()
    x, y = as_tensors(data, images)
    device = next((p.device for p in net.parameters()), torch.device("cpu"))
    cfg = _faults_config(faults)
    if cfg["model"] != "memory":
        raise ValueError(f"the vulnerability map flips single stored bits: faults.model must be memory, not {cfg['model']!r}")
    weights = _weight_protection(weight_protection, cfg)
    WEIGHT_PROTECTIONS[weights["name"]].protect(net, weights)
    injector = FAULT_MODELS["memory"].build(net, cfg)
    WEIGHT_PROTECTIONS[weights["name"]].attach(injector, weights)
    vmap_ = vulnerability_map(net, injector, x.to(device), y.to(device), half_width=half_width, confidence=confidence,
                              seed=seed, max_faults=max_faults, tensors=list(tensors) if tensors else None,
                              bits=list(bits) if bits else None, batch_size=batch_size)
    if mlflow is not None:
        _log_vulnerability(mlflow, vmap_, model, weights["name"], {"faults": cfg, "seed": seed, "half_width": half_width,
                                                                   "confidence": confidence, "max_faults": max_faults})
    return vmap_


def _log_vulnerability(target: Mapping, vmap_, model, weights: str, settings: dict) -> None:
    tags = {"run_kind": "vulnerability", "source": "fitact_pipeline.api", "weight_protection": weights,
            "protection": model.protection if isinstance(model, Hardened) else "none"}
    with _run_in(target, tags, "vulnerability"):
        mlflow.log_params(tracking.flatten(settings))
        mlflow.log_dict(vmap_.to_dict(), "vulnerability.json")


@contextlib.contextmanager
def _run_in(target: Mapping, tags: dict, run_name: str | None = None):
    """An MLflow run in ``target``'s store and experiment (created when missing); the caller's
    MLflow state (tracking URI, active experiment) is left as it was."""
    previous_uri = mlflow.get_tracking_uri()
    if target.get("tracking_uri"):
        mlflow.set_tracking_uri(target["tracking_uri"])
    try:
        client = mlflow.tracking.MlflowClient()
        name = target.get("experiment", "fitact_api")
        found = client.get_experiment_by_name(name)
        experiment_id = found.experiment_id if found else client.create_experiment(name)
        with mlflow.start_run(experiment_id=experiment_id, run_name=target.get("run_name", run_name), tags=tags) as run:
            yield run
    finally:
        mlflow.set_tracking_uri(previous_uri)


def _weight_protection(setting: str | Mapping | None, faults: Mapping) -> dict:
    cfg = {"name": setting} if isinstance(setting, str) else dict(setting or {"name": "none"})
    check_weight_protection_config(cfg, faults)
    return cfg


def _pct_ci(s: Mapping | None) -> str:
    return "" if not s else f"{100 * s['mean']:.2f} [{100 * s['ci_low']:.2f}, {100 * s['ci_high']:.2f}]"


def write_fault_list(model: nn.Module | Hardened, path, rates: Sequence[float], trials: int = 20, *, seed: int = 0,
                     faults: str | Mapping | None = None):
    """Write the fault maps that ``measure_resilience(model, data, rates, trials, seed=seed,
    faults=faults)`` draws as a CSV fault list (docs/faults.md, "Fault lists"), evaluating nothing;
    ``measure_resilience(..., faults={..., "list": path})`` replays it. Returns the path."""
    cfg = _faults_config(faults)
    if cfg["model"] not in faultlist.MODEL_COLUMNS:
        raise ValueError(f"faults model={cfg['model']!r} is not allowed; a fault list holds persistent faults: "
                         f"{', '.join(faultlist.MODEL_COLUMNS)}")
    net = copy.deepcopy(model.model if isinstance(model, Hardened) else model)
    injector = FAULT_MODELS[cfg["model"]].build(net, cfg)
    maps = [injector.sample(float(rate), seed, trial) for rate in rates for trial in range(trials)]
    return faultlist.write_fault_list(maps, path)


def _log(target: Mapping, result, fault_space: dict, hardened: Hardened | None, float_accuracy: float,
         campaign_time_s: float, settings: dict) -> str:
    tags = {"protection": hardened.protection if hardened else "none", "source": "fitact_pipeline.api"}
    if hardened:
        tags["granularity"] = hardened.granularity
    with _run_in(target, tags) as run:
        mlflow.log_params(tracking.flatten(settings))
        clean_val = hardened.clean_val_accuracy if hardened and hardened.clean_val_accuracy is not None else float("nan")
        tracking.log_job_results(result, fault_space, {}, hardened.bounds_info if hardened else {},
                                 stage=hardened.stage if hardened else "none", float_accuracy=float_accuracy,
                                 clean_val_accuracy=clean_val, campaign_time_s=campaign_time_s)
        return run.info.run_id


__all__ = ["DEFAULT_FAULTS", "Hardened", "Resilience", "as_tensors", "harden", "measure_resilience", "vulnerability",
           "write_fault_list"]
