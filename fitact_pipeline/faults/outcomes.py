"""Silent data corruption: each image's faulty prediction next to its fault-free one (DESIGN.md §2.5).

Fault-injection tools report more than accuracy: how often a fault changes the prediction at all
(SDC), how often it turns a right answer wrong (critical), and how often it turns a wrong answer
right. The fault-free prediction is the clean (quantised) model's top-1 on the same image, computed
once per campaign. A faulty row with a non-finite logit is a miss (evaluate.py) and an SDC.

Every rate is a fraction of the trial's images, so per trial
    accuracy = clean accuracy on the trial's images - critical + wrong_to_right.
"""
from __future__ import annotations

from typing import Sequence

import torch

from .. import stats
from ..evaluate import MISS

#: the per-trial outcome rates, in the order tables show them
OUTCOMES = ("sdc", "critical", "wrong_to_right")


def trial_outcomes(clean: torch.Tensor, faulty: torch.Tensor, labels: torch.Tensor) -> dict[str, float | int]:
    """SDC, critical and wrong-to-right rates of one trial (fractions of its images), and the count
    of wrong-to-right flips. ``clean``, ``faulty``: top-1 per image (MISS for non-finite logits)."""
    if not clean.shape == faulty.shape == labels.shape:
        raise ValueError(f"predictions and labels differ in shape: {tuple(clean.shape)}, {tuple(faulty.shape)}, "
                         f"{tuple(labels.shape)}")
    n = len(labels)
    clean_ok, faulty_ok = clean == labels, faulty == labels
    sdc = (faulty != clean) | (faulty == MISS)
    rescued = int((~clean_ok & faulty_ok).sum())
    return {"sdc": int(sdc.sum()) / n, "critical": int((clean_ok & ~faulty_ok).sum()) / n,
            "wrong_to_right": rescued / n, "wrong_to_right_count": rescued}


def summarize_outcomes(records: Sequence[dict], level: float = 0.95) -> dict[str, dict[str, float]]:
    """Per outcome, the per-rate statistics of its per-trial values (as for accuracy: each is a
    fraction of the trial's images, in [0, 1], so the bounded interval of ``stats.summarize`` holds);
    records without outcomes (a result from before they were measured) give {}. The per-trial
    ``wrong_to_right_count`` is a count, not a fraction: it stays a per-trial column and is not
    summarised (its rate, ``wrong_to_right``, is)."""
    if not records or "sdc" not in records[0]:
        return {}
    return {name: stats.summarize([r[name] for r in records], level) for name in OUTCOMES}
