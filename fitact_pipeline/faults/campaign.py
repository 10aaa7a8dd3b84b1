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
from ..checks import (check_keys, expect_bool, expect_choice, expect_int, expect_list, expect_number, fail,
                      is_number)
from ..evaluate import evaluate_accuracy
from .injector import FaultInjector

log = logging.getLogger(__name__)


EVAL_SPLITS = ("val", "test")
CAMPAIGN_KEYS = ("rates", "trials", "seed", "eval_split", "eval_images", "batch_size", "confidence", "adaptive")


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
    expect_int(cfg.get("eval_images"), "campaign.eval_images", 1, allow_none=True)
    expect_int(cfg.get("batch_size", 1), "campaign.batch_size", 1)
    expect_number(cfg.get("confidence", 0.95), "campaign.confidence", 0, 1, low_open=True, high_open=True)
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


@dataclass
class CampaignResult:
    clean_accuracy: float
    rates: list[float]
    per_rate: dict[float, dict[str, float]]
    trials: list[dict[str, Any]] = field(default_factory=list)


def trial_record(rate: float, trial: int, accuracy: float, fault_map) -> dict[str, Any]:
    """What one trial leaves behind: enough to verify the fault model from the results alone.
    ``faults`` counts the faulty bits drawn, ``flips`` the bits they changed (fewer for stuck-at
    bits that held their value already)."""
    summary = fault_map.summary()
    return {"rate": rate, "trial": trial, "accuracy": accuracy, "faults": summary["num_flips"],
            "flips": summary["effective_flips"], "realised_ber": summary["realised_ber"],
            "flips_per_bit": summary["flips_per_bit"], "flips_per_tensor": summary["flips_per_tensor"]}


def run_campaign(model: torch.nn.Module, injector: FaultInjector, images: torch.Tensor,
                 labels: torch.Tensor, rates: Sequence[float], trials: int, seed: int,
                 batch_size: int = 256, adaptive: dict | None = None,
                 progress: bool = True, level: float = 0.95) -> CampaignResult:
    """Run `trials` fault maps per rate (or adaptively between min and max trials).

    With `adaptive = {"target_halfwidth": h, "min_trials": a, "max_trials": b}` a rate stops as soon
    as the confidence interval of its mean accuracy is narrower than ±h."""
    model.eval()
    clean = evaluate_accuracy(model, images, labels, batch_size)
    max_trials = int(adaptive["max_trials"]) if adaptive else int(trials)
    result = CampaignResult(clean_accuracy=clean, rates=[float(r) for r in rates], per_rate={})
    bar = tqdm(total=len(rates) * max_trials, desc="fault campaign", disable=not progress, leave=False)
    before_batch = injector.begin_batch if getattr(injector, "per_pass", False) else None
    for rate in result.rates:
        accs: list[float] = []
        for trial in range(max_trials):
            with injector.inject(rate, seed, trial) as fault_map:
                # No changed bit means the clean model: its accuracy is known exactly, skip the pass
                # (faults drawn per pass are known only once the pass ran: None).
                acc = clean if fault_map.effective_flips == 0 else \
                    evaluate_accuracy(model, images, labels, batch_size, before_batch)
            result.trials.append(trial_record(rate, trial, acc, fault_map))
            accs.append(acc)
            bar.update(1)
            if adaptive and stats.should_stop(accs, adaptive.get("target_halfwidth"),
                                              int(adaptive["min_trials"]), max_trials, level):
                bar.update(max_trials - trial - 1)
                break
        result.per_rate[rate] = stats.summarize(accs, level)
        log.info("rate %g: mean accuracy %.4f over %d trials", rate, result.per_rate[rate]["mean"], len(accs))
    bar.close()
    return result
