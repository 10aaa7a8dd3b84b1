"""Campaign designs: which images each trial evaluates (DESIGN.md §2.7), one registry entry each.

- ``classic``: M fault maps, each on the same n evaluation images (the pool).
- ``nested``: trial i is fault map i plus its own class-stratified random subset of n images of the
  pool, seeded by (campaign seed, i): the same map and the same images for trial i in every
  protection (paired). Quotas are rounded at random (``StratifiedSampler.unbiased_subset``), so every
  pool image is in a trial with probability exactly n / pool and a trial's expected accuracy is the
  map's accuracy on the whole pool. The per-trial accuracies are i.i.d. draws of "a random map on
  random images of the pool", so the t-interval over trials is a valid CI of the mean accuracy over
  maps on this pool; their spread also holds image-sampling noise.

Why nested pays: with sigma_b the spread of accuracy between fault maps and sigma_w^2 = a(1 - a) the
per-image variance, the mean over M maps of n images each has variance sigma_b^2 / M +
sigma_w^2 / (M n), and costs M (c + n) image-evaluation equivalents, c being the fixed cost of one
map (draw, inject, restore, pass overhead) in images. The variance per unit of cost is smallest at

    n* = sqrt(c sigma_w^2 / sigma_b^2)

(the classic optimal allocation of a two-stage sample), typically 10 to 50 images where the
protections differ. ``images_per_trial: auto`` is AUTO_IMAGES (the pool if smaller): one n for every
protection and rate, so paired differences compare the same images, and no timing, so a rerun gives
the same numbers. ``Pilot`` measures n* for one model (a diagnostic; docs/campaigns.md says why auto
does not use it).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from ..data.sampling import StratifiedSampler
from ..registry import Registry

#: seed offset of the per-trial image subsets (kept apart from the fault maps' streams)
SUBSET_SEED = 7_919
#: how the nested subsets are drawn: part of a nested job's key (the subsets decide its numbers)
SUBSETS = "stratified-randomised-quotas"
#: images per trial under ``images_per_trial: auto``: the middle of the pilot's n* on the quick start
#: (5 to 57) and VGG16 (a few tens where protections differ); n within a factor 2 of n* costs at most
#: 12.5 % more than n* (docs/campaigns.md)
AUTO_IMAGES = 25


def resolve_images(n: int | str | None, pool: int) -> int:
    """The images per trial of a nested campaign: ``auto`` (or unset) -> AUTO_IMAGES within the pool;
    the same for every protection and rate (a paired comparison needs one n in every arm)."""
    return min(AUTO_IMAGES, pool) if n in (None, "auto") else min(int(n), pool)


@dataclass(frozen=True)
class CampaignDesign:
    name: str
    summary: str
    #: (pool labels or their StratifiedSampler, images per trial, campaign seed, trial) -> indices
    #: into the pool, or None: all
    trial_images: Callable[[torch.Tensor | StratifiedSampler, int | None, int, int], torch.Tensor | None]
    #: what one trial's accuracy is, for box-plot captions
    trial_meaning: str
    #: every trial evaluates the whole pool (``trial_images`` gives None)
    shares_pool: bool = False
    #: the interval of record its curves carry (ci_low/ci_high), for figure captions
    interval: str = ("of the mean over fault maps on the evaluation pool, valid for any distribution in [0, 1] "
                     "(bounded; over maps and images: ci_pop_* in MLflow)")


def _pool(labels, n, seed, trial):
    return None


def _subset(labels: torch.Tensor | StratifiedSampler, n: int | None, seed: int, trial: int) -> torch.Tensor:
    """Trial ``trial``'s stratified subset, every pool image in it with probability n / pool: a pure
    function of (pool labels, seed, trial, n), so every protection evaluates trial i on the same images."""
    sampler = labels if isinstance(labels, StratifiedSampler) else StratifiedSampler(labels)
    return sampler.unbiased_subset(n, seed * 1_000_003 + trial * 7 + SUBSET_SEED)


DESIGNS: Registry[CampaignDesign] = Registry("campaign design")
for _design in (
    CampaignDesign("classic", "M fault maps, each evaluated on the same n images", _pool,
                   "one fault map on all n evaluation images", shares_pool=True),
    CampaignDesign("nested", "trial i = fault map i + its own stratified random subset of n images, each pool image "
                   "in it with probability n / pool (paired across protections)", _subset,
                   "one fault map on its own n random images"),
    CampaignDesign("conditioned", "maps with exactly k faults measure a_k = E[acc | k faults] once; acc(rate) = sum_k "
                   "P(K = k) a_k for every rate, the truncated tail bounded (stored-parameter fault models)", _subset,
                   "one map with exactly k faults on its own n random images",
                   interval="of sum_k P(K = k) a_k: Welch t over the counts' cells, plus the truncated tail and the "
                   "checked interpolation (conditioned)"),
):
    DESIGNS.register(_design.name, _design)


@dataclass
class Pilot:
    """What the pilot measured at one rate: spread between maps, per image, and a map's cost."""
    sigma_b: float
    sigma_w: float
    map_cost_images: float

    def best_n(self, pool: int, minimum: int = 5) -> int:
        """n* = sqrt(c sigma_w^2 / sigma_b^2), within [minimum, pool]."""
        if self.sigma_b <= 0:
            return pool
        return int(min(pool, max(minimum, round(math.sqrt(self.map_cost_images) * self.sigma_w / self.sigma_b))))


def pilot_estimates(accuracies: list[float], images: int, map_seconds: float, image_seconds: float) -> Pilot:
    """Pilot of P maps on ``images`` images each: sigma_w^2 = mean of a_i (1 - a_i) (times the
    unbiasing n / (n - 1)); sigma_b^2 = var(a_i) - sigma_w^2 / n (the between-map part of the
    spread), floored at a tenth of a point squared so a pilot that saw no spread still stops."""
    a = np.asarray(accuracies, dtype=np.float64)
    within = float(np.mean(a * (1 - a))) * images / max(images - 1, 1)
    between = max(float(np.var(a, ddof=1)) - within / images, 1e-6) if a.size > 1 else 1e-6
    return Pilot(math.sqrt(between), math.sqrt(within), map_seconds / max(image_seconds, 1e-12))
