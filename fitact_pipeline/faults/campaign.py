"""Fault campaigns: trials of random bit flips over a sweep of fault rates, with statistics.

A trial is one fault map (FaultInjector.inject), kept for one evaluation pass over the
evaluation images, then removed. Trial i at a rate uses the map of (seed, i): the same trial index
hits the same weight bits in every protected variant of a model, so protections are compared on
paired samples (DESIGN.md §2.1).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from tqdm.auto import tqdm

from .. import stats
from ..data.sampling import StratifiedSampler
from ..checks import (check_keys, expect_bool, expect_choice, expect_int, expect_list, expect_number, fail,
                      is_number)
from ..evaluate import predictions
from .conditioned_campaign import run_conditioned
from .designs import DESIGNS, CampaignDesign, resolve_images
from .injector import FaultInjector
from .multimap import predict_stacked, stacked_fault_space
from .outcomes import summarize_outcomes, trial_outcomes
from .prefix import PrefixCache, space_bits

log = logging.getLogger(__name__)


EVAL_SPLITS = ("val", "test")
CAMPAIGN_KEYS = ("rates", "trials", "seed", "eval_split", "eval_images", "batch_size", "confidence", "adaptive",
                 "design", "images_per_trial", "maps_per_pass")


def as_rate_list(rates: Any) -> list[float]:
    """`campaign.rates` may be one rate (a sweep of one rate per job) or a list of rates."""
    return [float(r) for r in expect_list(rates, "campaign.rates", _check_rate, allow_scalar=True)]


def _check_rate(rate: Any, path: str) -> None:
    if not (is_number(rate) and 0.0 <= rate <= 1.0):
        fail(path, rate, "a fault rate (bit error rate) must be in [0, 1]")


def check_campaign_config(cfg: Mapping) -> None:
    """A one-line ConfigError for a bad ``campaign`` value, before any work."""
    check_keys(cfg, "campaign", CAMPAIGN_KEYS)
    if not as_rate_list(cfg.get("rates")):
        fail("campaign.rates", [], "expected at least one fault rate in [0, 1]")
    expect_int(cfg.get("trials", 1), "campaign.trials", 1)
    expect_int(cfg.get("seed", 0), "campaign.seed")
    expect_choice(cfg.get("eval_split", "test"), "campaign.eval_split", EVAL_SPLITS)
    expect_int(cfg.get("eval_images"), "campaign.eval_images", 1, allow_none=True, words=("all",))
    expect_int(cfg.get("batch_size", 1), "campaign.batch_size", 1)
    expect_number(cfg.get("confidence", 0.95), "campaign.confidence", 0, 1, low_open=True, high_open=True)
    check_design(cfg)
    adaptive = cfg.get("adaptive") or {}
    check_keys(adaptive, "campaign.adaptive", ("enabled", "target_halfwidth", "min_trials", "max_trials"))
    expect_bool(adaptive.get("enabled", False), "campaign.adaptive.enabled")
    expect_number(adaptive.get("target_halfwidth"), "campaign.adaptive.target_halfwidth", 0, low_open=True,
                  allow_none=True)
    expect_int(adaptive.get("min_trials", 2), "campaign.adaptive.min_trials", 2)
    expect_int(adaptive.get("max_trials", 2), "campaign.adaptive.max_trials", 2)
    if adaptive.get("enabled"):
        if adaptive["min_trials"] > adaptive["max_trials"]:
            fail("campaign.adaptive.min_trials", adaptive["min_trials"],
                 f"must be <= campaign.adaptive.max_trials={adaptive['max_trials']}")


def check_design(cfg: Mapping) -> None:
    """``design``, ``images_per_trial`` (and ``maps_per_pass``) of a campaign config or API call."""
    DESIGNS.check("campaign.design", cfg.get("design", "classic"))
    n = cfg.get("images_per_trial")
    expect_int(n, "campaign.images_per_trial", 1, allow_none=True, words=("auto",))
    if cfg.get("design") == "conditioned" and n == "auto":
        fail("campaign.images_per_trial", n, "the conditioned design needs an integer (or null: the whole pool)")
    if n not in (None, "auto") and cfg.get("eval_images") not in (None, "all") and n > cfg["eval_images"]:
        fail("campaign.images_per_trial", n, f"must be <= campaign.eval_images={cfg['eval_images']} (the pool)")
    expect_int(cfg.get("maps_per_pass", 1), "campaign.maps_per_pass", 1, words=("auto",))


@dataclass
class CampaignResult:
    clean_accuracy: float
    rates: list[float]
    per_rate: dict[float, dict[str, float]]
    trials: list[dict[str, Any]] = field(default_factory=list)
    design: str = "classic"
    #: rate -> {sdc, critical, wrong_to_right: per-rate statistics of the per-trial rates} (outcomes.py)
    outcomes: dict[float, dict[str, dict[str, float]]] = field(default_factory=dict)
    #: the conditioned design's a_k table (conditioned.ak_table), logged as conditioned_ak.json
    ak_table: dict | None = None


def trial_record(rate: float, trial: int, accuracy: float, fault_map, images: int | None = None,
                 outcomes: dict | None = None) -> dict[str, Any]:
    """What one trial leaves behind: enough to verify the fault model from the results alone.
    ``faults`` counts the faulty bits drawn, ``flips`` the bits they changed (fewer for stuck-at
    bits that held their value already); ``images`` the images the trial evaluated; ``outcomes``
    its SDC, critical and wrong-to-right rates (outcomes.py)."""
    summary = fault_map.summary()
    return {"rate": rate, "trial": trial, "accuracy": accuracy, "images": images, "faults": summary["num_flips"],
            "flips": summary["effective_flips"], "realised_ber": summary["realised_ber"],
            "flips_per_bit": summary["flips_per_bit"], "flips_per_tensor": summary["flips_per_tensor"],
            **(outcomes or {})}


@dataclass
class _Pool:
    """The evaluation pool and the clean model's predictions on it: what a trial's faulty
    predictions are compared with (SDC), and what a trial whose faults change no bit predicts."""
    images: torch.Tensor
    labels: torch.Tensor
    clean_pred: torch.Tensor
    #: the clean activations at the model's cuts (prefix.py): faulted passes start at the first faulted stage
    prefix: PrefixCache | None = None

    def __post_init__(self):
        self.sampler = StratifiedSampler(self.labels)
        self.cpu_labels = self.labels.cpu()
        self.clean_correct = self.clean_pred == self.cpu_labels

    def trial_ids(self, design: CampaignDesign, n: int | None, seed: int, trial: int) -> torch.Tensor:
        """Pool indices of one trial's images."""
        index = design.trial_images(self.sampler, n, seed, trial)
        return torch.arange(len(self.labels)) if index is None else index

    def trial_set(self, design: CampaignDesign, n: int | None, seed: int, trial: int):
        """(images, labels, pool indices) of one trial."""
        ids = self.trial_ids(design, n, seed, trial)
        if design.shares_pool:
            return self.images, self.labels, ids
        return self.images[ids], self.labels[ids], ids


def run_campaign(model: torch.nn.Module, injector: FaultInjector, images: torch.Tensor,
                 labels: torch.Tensor, rates: Sequence[float], trials: int, seed: int,
                 batch_size: int = 256, adaptive: dict | None = None, progress: bool = True,
                 level: float = 0.95, design: str = "classic", images_per_trial=None,
                 maps_per_pass: int = 1) -> CampaignResult:
    """Run `trials` fault maps per rate (or adaptively between min and max trials).

    ``design`` (designs.py): ``classic`` evaluates every map on all of ``images``; ``nested`` gives
    trial i its own stratified subset of ``images_per_trial`` images of them (an int, a dict
    rate -> int, or auto / None: designs.AUTO_IMAGES). With
    ``adaptive = {"target_halfwidth": h, "min_trials": a, "max_trials": b}`` a rate stops as soon as
    the t half-width of its mean accuracy, and what maps not yet seen could change, are within ±h
    (stats.should_stop; the bounded interval it then logs can be somewhat wider than ±h).
    ``maps_per_pass`` > 1 evaluates that many maps in one vmapped pass (multimap.py; fault models
    that persist over a pass)."""
    model.eval()
    plan = DESIGNS[design]
    pool = _Pool(images, labels, predictions(model, images, batch_size))
    result = CampaignResult(float(pool.clean_correct.float().mean()), [float(r) for r in rates], {}, design=design)
    drawn_per_pass = getattr(injector, "per_pass", False)
    maps_per_pass = 1 if drawn_per_pass else max(1, int(maps_per_pass))
    if not drawn_per_pass and hasattr(injector, "space") and (design == "conditioned" or maps_per_pass == 1):
        # one map per pass over a stored fault space: it starts at its first faulted stage (None
        # where the model has no cuts; vmapped blocks of maps run whole passes)
        pool.prefix = PrefixCache.build(model, pool.images, batch_size, space_bits(injector.space))
    if design == "conditioned":  # maps per fault count, not per rate: its own loop
        result.per_rate, result.ak_table = run_conditioned(model, injector, pool, result.rates, trials, seed,
                                                           batch_size, adaptive, level, images_per_trial, progress)
        return result
    max_trials = int(adaptive["max_trials"]) if adaptive else int(trials)
    bar = tqdm(total=len(rates) * max_trials, desc="fault campaign", disable=not progress, leave=False)
    for rate in result.rates:
        n = images_per_trial.get(rate) if isinstance(images_per_trial, dict) else images_per_trial
        n = None if plan.shares_pool else resolve_images(n, len(labels))
        accs = _run_rate(model, injector, pool, plan, rate, n, seed, batch_size, max_trials, maps_per_pass,
                         adaptive, level, result.trials, bar)
        result.per_rate[rate] = {**stats.summarize(accs, level, len(labels)),
                                 "images_per_trial": _images(plan, n, pool)}
        result.outcomes[rate] = summarize_outcomes(result.trials[-len(accs):], level)
        log.info("rate %g: mean accuracy %.4f over %d trials", rate, result.per_rate[rate]["mean"], len(accs))
    bar.close()
    return result


def _images(plan: CampaignDesign, n: int | None, pool: _Pool) -> int:
    return len(pool.labels) if plan.shares_pool else min(int(n), len(pool.labels))


def _run_rate(model, injector, pool: _Pool, plan: CampaignDesign, rate: float, n, seed: int, batch_size: int,
              max_trials: int, per_pass: int, adaptive, level: float, records: list, bar) -> list[float]:
    accs: list[float] = []
    trial = 0
    while trial < max_trials:
        block = list(range(trial, min(trial + per_pass, max_trials)))
        evaluate = _evaluate_one if len(block) == 1 else _evaluate_block
        for t, faulty, fmap, ids in evaluate(model, injector, pool, plan, rate, n, seed, batch_size, block):
            labels = pool.cpu_labels[ids]
            acc = int((faulty == labels).sum()) / len(ids)
            outcomes = trial_outcomes(pool.clean_pred[ids], faulty, labels)
            records.append(trial_record(rate, t, acc, fmap, len(ids), outcomes))
            accs.append(acc)
        trial += len(block)
        bar.update(len(block))
        if adaptive and stats.should_stop(accs, adaptive.get("target_halfwidth"), int(adaptive["min_trials"]),
                                          max_trials, level):
            bar.update(max_trials - trial)
            break
    return accs


def _evaluate_one(model, injector, pool: _Pool, plan, rate, n, seed, batch_size, block):
    trial = block[0]
    x, _, ids = pool.trial_set(plan, n, seed, trial)
    before_batch = injector.begin_batch if getattr(injector, "per_pass", False) else None
    with injector.inject(rate, seed, trial) as fault_map:
        # No changed bit means the clean model: its predictions are known, skip the pass
        # (faults drawn per pass are known only once the pass ran: None).
        if fault_map.effective_flips == 0:
            faulty = pool.clean_pred[ids]
        elif pool.prefix is not None:
            faulty = pool.prefix.predictions(pool.prefix.first_stage(fault_map), ids)
        else:
            faulty = predictions(model, x, batch_size, before_batch, ids)
    return [(trial, faulty, fault_map, ids)]


def _evaluate_block(model, injector, pool: _Pool, plan, rate, n, seed, batch_size, block):
    rows, maps = stacked_fault_space(injector, rate, seed, block)
    ids = [pool.trial_ids(plan, n, seed, t) for t in block]
    # maps that change no bit have no row: the clean model's predictions on their images, as in _evaluate_one
    faulty = [k for k, fmap in enumerate(maps) if fmap.effective_flips != 0]
    preds = [pool.clean_pred[i] for i in ids]
    if faulty:
        shared = plan.shares_pool  # every map on the same images
        index = None if shared else torch.stack([ids[k] for k in faulty])  # one gather for the block
        images = pool.images if shared else pool.images[index]
        for k, pred in zip(faulty, predict_stacked(model, rows, images, batch_size, not shared)):
            preds[k] = pred
    return list(zip(block, preds, maps, ids))
