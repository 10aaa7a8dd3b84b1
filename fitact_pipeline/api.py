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
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .evaluate import accuracy, evaluate_accuracy

#: the faults of a campaign when none are given: conf/faults/<DEFAULT_FAULTS>.yaml, the paper's Q15.16
#: bit flips in weights, biases and bounds
DEFAULT_FAULTS = "q15_16"


@dataclass
class Hardened:
    """A hardened model: ``model`` is what to deploy; ``reference`` is the unprotected model as it is
    deployed (BatchNorm folded), the baseline to measure against."""

    model: nn.Module
    reference: nn.Module
    protection: str
    granularity: str
    profile: dict[str, torch.Tensor]
    lower: dict[str, torch.Tensor]
    clean_val_accuracy: float | None = None
    bounds_info: dict = field(default_factory=dict)  # post-training history, or searched thresholds


class _Loaders:
    """The two loaders post-training reads, in the shape of a data module."""

    def __init__(self, train, val):
        self.train, self.val = train, val

    def setup(self, stage=None) -> None:
        return None

    def train_dataloader(self):
        return self.train

    def val_dataloader(self):
        return self.val

    def eval_tensors(self, split: str = "val", num_images: int | None = None, seed: int = 0):
        """The first ``num_images`` validation images (ProAct's decisions); never a test split."""
        if split != "val":
            raise ValueError(f"harden decides on val_loader only, not on {split!r}")
        return as_tensors(self.val, num_images)


def harden(model: nn.Module, protection: str = "fitact", train_loader=None, val_loader=None, *,
           granularity: str | None = None, profile_loader=None, profile_images: int | None = 5000,
           fold_batchnorm: bool = True, posttrain: Mapping | None = None, search: Mapping | None = None,
           progressive: Mapping | None = None,
           device: str | torch.device | None = None, **options) -> Hardened:
    """Protect a copy of a trained ``model`` with ``protection`` (none, ranger, clipact, gbrelu, proact,
    fitact) from DataLoaders of ``(images, labels)``.

    Bounds come from profiling ``profile_images`` images of ``profile_loader`` (default:
    ``train_loader``; a loader without augmentation is best). FitAct then post-trains its bounds on
    ``train_loader`` and selects them on ``val_loader`` (``posttrain``: the keys of
    conf/posttrain/default.yaml); ProAct trains its bounds site by site distilled from the model
    (``progressive``: the keys of conf/protection/proact.yaml's ``progressive``). Clip-Act searches its thresholds when ``search`` is given (keys
    ``rates``, ``candidates``, ``iterations``, ``trials``, ``images``, ``seed``, ``faults``).
    ``options`` go to the bounded activations (FitAct's ``k``, ``hard``; ``fused``; GBReLU's
    ``bounds``). The model's activations may be any kind of docs/protections.md.
    """
    from .protect import PROTECTIONS, fold_batchnorm as fold, profile_ranges, protect_model

    entry = PROTECTIONS[protection]
    if not (posttrain or {}).get("progress_bar", False):
        from .training import _quiet_lightning

        _quiet_lightning(False)  # Lightning's device banners, once per post-training, are noise here
    reference = copy.deepcopy(model).eval()
    if device is not None:
        reference.to(device)
    if fold_batchnorm:
        fold(reference)
    loader = profile_loader if profile_loader is not None else train_loader
    if loader is None:
        raise ValueError("harden needs images to profile: pass train_loader (or profile_loader)")
    profile, lower = profile_ranges(reference, loader, profile_images)
    clean = accuracy(reference, val_loader) if val_loader is not None else None
    protected = protect_model(copy.deepcopy(reference), protection, granularity, profile, lower=lower, **options)
    info = _bounds_stage(entry, protected, reference, train_loader, val_loader, clean, posttrain, search, progressive)
    return Hardened(protected.eval(), reference, protection, granularity or entry.default_granularity, profile,
                    lower, clean, info)


def _bounds_stage(entry, protected, reference, train_loader, val_loader, clean, posttrain, search, progressive) -> dict:
    if entry.bounds_stage == "posttrain":
        from .protect.posttrain import posttrain_bounds

        if train_loader is None or val_loader is None:
            raise ValueError(f"{entry.name} post-trains its bounds: pass train_loader and val_loader")
        return posttrain_bounds(protected, _Loaders(train_loader, val_loader), posttrain, clean)
    if entry.bounds_stage == "progressive":
        from .protect.progressive import progressive_bounds

        if train_loader is None or val_loader is None:
            raise ValueError(f"{entry.name} trains its bounds site by site: pass train_loader and val_loader")
        return progressive_bounds(protected, reference, _Loaders(train_loader, val_loader), progressive, clean)
    if entry.bounds_stage == "search" and search is not None:
        from .protect.clipact_search import clipact_search

        if val_loader is None:
            raise ValueError(f"{entry.name}'s search scores thresholds on validation images: pass val_loader")
        s = dict(search)
        images, labels = as_tensors(val_loader, s.pop("images", 500))
        faults = _faults_config(s.pop("faults", None))
        kwargs = {k: faults[k] for k in ("fmt", "word_bits", "frac_bits", "targets", "include", "exclude")}
        return {"thresholds": clipact_search(protected, images, labels, kwargs, **s)}
    return {}


def as_tensors(data, num_images: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(images, labels)`` from a DataLoader (its first ``num_images`` in iteration order: pass an
    unshuffled one) or from an ``(images, labels)`` pair."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and torch.is_tensor(data[0]):
        images, labels = data
    else:
        xs, ys, seen = [], [], 0
        for x, y in data:
            xs.append(x)
            ys.append(y)
            seen += len(y)
            if num_images is not None and seen >= num_images:
                break
        if not xs:
            raise ValueError("the data yielded no images")
        images, labels = torch.cat(xs), torch.cat(ys)
    return (images, labels) if num_images is None else (images[:num_images], labels[:num_images])


def _faults_config(faults: str | Mapping | None) -> dict:
    """A ``faults`` config: a name of conf/faults/ (``q15_16``, ``float32``, ...), or keys over the
    default (Q15.16 in weights, biases and bounds), checked as a job's are."""
    from omegaconf import OmegaConf

    from .faults import check_faults_config
    from .validate import CONF_DIR

    name = faults if isinstance(faults, str) else DEFAULT_FAULTS
    path = CONF_DIR / "faults" / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"unknown faults {name!r}; choose one of: "
                         f"{', '.join(sorted(p.stem for p in path.parent.glob('*.yaml')))}, or give a dict")
    cfg = OmegaConf.to_container(OmegaConf.load(path), resolve=True)
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
    from .faults import FAULT_MODELS, apply_datapath, run_campaign

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
    import mlflow as ml

    from . import tracking

    if target.get("tracking_uri"):
        ml.set_tracking_uri(target["tracking_uri"])
    ml.set_experiment(target.get("experiment", "fitact_api"))
    tags = {"protection": hardened.protection if hardened else "none", "source": "fitact_pipeline.api"}
    if hardened:
        tags["granularity"] = hardened.granularity
    with ml.start_run(run_name=target.get("run_name"), tags=tags) as run:
        ml.log_params(tracking.flatten(settings))
        clean_val = hardened.clean_val_accuracy if hardened and hardened.clean_val_accuracy is not None else float("nan")
        tracking.log_job_results(result, fault_space, {}, hardened.bounds_info if hardened else {},
                                 float_accuracy=float_accuracy, clean_val_accuracy=clean_val,
                                 campaign_time_s=campaign_time_s)
        return run.info.run_id


__all__ = ["DEFAULT_FAULTS", "Hardened", "Resilience", "as_tensors", "harden", "measure_resilience"]
