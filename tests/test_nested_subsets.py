"""The nested design's estimator (DESIGN.md §2.7): every pool image is in a trial with probability
exactly n / pool, for any n and class sizes; a trial's images and n do not depend on the protection;
``campaign.design=nested`` alone is a valid configuration; the intervals of stats.summarize."""
import copy
import itertools
import logging
from fractions import Fraction

import numpy as np
import pytest
import torch
from scipy import stats as sps

from fitact_pipeline import stats
from fitact_pipeline.data.sampling import StratifiedSampler, randomised_quotas
from fitact_pipeline.faults import FaultInjector, run_campaign
from fitact_pipeline.faults.designs import AUTO_IMAGES, DESIGNS, resolve_images
from fitact_pipeline.validate import ConfigError, preflight

pytestmark = pytest.mark.usefixtures("one_thread")

# (class sizes, subset sizes): equal classes with n the class count does not divide, unequal classes
CASES = [([200] * 10, (5, 7, 25, 1999)), ([36] * 10, (5, 7, 13)), ([3, 7, 11, 19], (1, 5, 7, 13, 39)),
         ([1, 1, 50], (1, 2, 3, 51)), ([5, 9], (3, 13))]


@pytest.mark.parametrize("counts,sizes", CASES)
def test_randomised_quotas_give_each_class_its_exact_expected_share(counts, sizes):
    """Enumerating the random start (uniform on 0 .. total - 1) for several class orders: the expected
    quota of class c is exactly n N_c / total, so each member's inclusion probability is n / total."""
    total = sum(counts)
    orders = list(itertools.islice(itertools.permutations(range(len(counts))), 6))
    for num, order in itertools.product(sizes, orders):
        expected = [Fraction(0)] * len(counts)
        for start in range(total):
            quotas = randomised_quotas(counts, num, list(order), start)
            assert sum(quotas) == num and all(0 <= q <= n for q, n in zip(quotas, counts)), (num, quotas)
            assert all(q - num * n // total in (0, 1) for q, n in zip(quotas, counts))  # floor or floor + 1
            expected = [e + Fraction(q, total) for e, q in zip(expected, quotas)]
        assert [e / n for e, n in zip(expected, counts)] == [Fraction(num, total)] * len(counts), (counts, num)


def test_fixed_largest_remainders_are_what_was_biased():
    # the old quotas: with 200 per class and n = 25, classes 0-4 always get 3 and 5-9 always 2
    labels = torch.arange(10).repeat_interleave(200)
    assert StratifiedSampler(labels).quotas(25) == [3] * 5 + [2] * 5


@pytest.mark.parametrize("counts,num", [([13, 29, 8], 7), ([20] * 10, 5), ([40, 5, 15], 13)])
def test_every_pool_image_is_drawn_with_probability_n_over_pool(counts, num):
    """The sampler itself, statistically: over 4,000 seeds every image's inclusion count is within
    the binomial's 99.99 % range around 4,000 n / pool (and the class counts average n N_c / pool)."""
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])[torch.randperm(sum(counts))]
    sampler, draws = StratifiedSampler(labels), 4000
    hits = torch.zeros(len(labels), dtype=torch.long)
    for seed in range(draws):
        subset = sampler.unbiased_subset(num, seed)
        assert len(subset) == num and len(set(subset.tolist())) == num
        hits[subset] += 1
    p = num / len(labels)
    low, high = sps.binom.ppf([0.5e-4, 1 - 0.5e-4], draws, p)
    assert low <= int(hits.min()) and int(hits.max()) <= high, (hits.min(), hits.max(), draws * p)
    per_class = [int(hits[labels == c].sum()) / draws for c in range(len(counts))]
    assert np.allclose(per_class, [num * n / len(labels) for n in counts], atol=0.05)


def test_a_trial_subset_is_a_pure_function_of_seed_and_trial():
    labels = torch.arange(10).repeat_interleave(36)
    nested = DESIGNS["nested"]
    again = StratifiedSampler(labels.clone())  # a sampler built anew (another job) draws the same images
    for trial in range(5):
        assert torch.equal(nested.trial_images(labels, 7, 3, trial), nested.trial_images(again, 7, 3, trial))
    assert not torch.equal(nested.trial_images(labels, 7, 3, 0), nested.trial_images(labels, 7, 3, 1))
    assert not torch.equal(nested.trial_images(labels, 7, 3, 0), nested.trial_images(labels, 7, 4, 0))


@pytest.fixture(scope="module")
def protected(small_protected):
    return small_protected(90, 5, ("none", "ranger", "fitact"))


def test_auto_gives_every_protection_and_rate_the_same_n_and_images(protected):
    nets, images, labels = protected
    seen = {}
    for name, net in nets.items():
        model = copy.deepcopy(net)
        result = run_campaign(model, FaultInjector(model), images, labels, [1e-4, 3e-3], trials=4, seed=6,
                              batch_size=45, progress=False, design="nested", images_per_trial="auto")
        seen[name] = result
        assert {st["images_per_trial"] for st in result.per_rate.values()} == {min(AUTO_IMAGES, 90)}
        assert all(t["images"] == min(AUTO_IMAGES, 90) for t in result.trials)
    # the images of trial i come from (pool labels, seed, i) only: the same in every protection, so the
    # accuracy of a map that changes no bit is the clean model's on the same images in each
    subsets = [DESIGNS["nested"].trial_images(labels, resolve_images("auto", 90), 6, t) for t in range(4)]
    assert len({tuple(s.tolist()) for s in subsets}) == 4
    for name, result in seen.items():
        clean = nets[name](images).argmax(1) == labels
        for t in result.trials:
            if t["flips"] == 0:
                assert t["accuracy"] == float(clean[subsets[t["trial"]]].float().mean())
    assert resolve_images("auto", 10) == 10 and resolve_images(None, 500) == AUTO_IMAGES == 25
    assert resolve_images(7, 500) == 7


def test_design_nested_alone_is_a_valid_configuration():
    """What the command line checks before any work: the quick start with only the design changed."""
    preflight(["experiment=quickstart", "campaign.design=nested"])
    preflight(["-m", "experiment=quickstart", "campaign.design=nested", "protection=none,fitact"])
    preflight(["experiment=quickstart", "campaign.design=nested", "campaign.images_per_trial=auto"])
    with pytest.raises(ConfigError, match="campaign.images_per_trial=0"):
        preflight(["experiment=quickstart", "campaign.design=nested", "campaign.images_per_trial=0"])


# -- the intervals of summarize ---------------------------------------------------------------------

def test_the_bounded_interval_covers_rare_catastrophic_maps_where_the_t_interval_does_not():
    """20 maps, 2 % of them catastrophic (accuracy 0.1, the rest 0.8 +- 0.005): the t-interval misses
    the true mean whenever no catastrophic map is drawn (67 % of campaigns); the bounded one must not."""
    rng = np.random.default_rng(0)
    truth = 0.98 * 0.8 + 0.02 * 0.1
    t_hits = b_hits = 0
    for _ in range(300):
        maps = np.where(rng.uniform(size=20) < 0.02, 0.1, rng.normal(0.8, 0.005, size=20))
        _, low, high = stats.mean_ci(maps)
        t_hits += low <= truth <= high
        _, low, high = stats.bounded_mean_ci(maps)
        b_hits += low <= truth <= high
    assert t_hits / 300 < 0.5 and b_hits / 300 >= 0.95


def test_bounded_interval_known_answers():
    # M equal values a: the low end is a (1 - q), q the 97.5 % quantile of Beta(1, M)
    mean, low, high = stats.bounded_mean_ci([0.8] * 20)
    assert mean == pytest.approx(0.8) and low == pytest.approx(0.8 * 0.025 ** (1 / 20), abs=3e-3)
    assert high == pytest.approx(0.8 + 0.2 * (1 - 0.025 ** (1 / 20)), abs=3e-3)
    assert stats.bounded_mean_ci([0.3, 0.9, 0.5], seed=4) == stats.bounded_mean_ci([0.3, 0.9, 0.5], seed=4)
    # many values: close to the t-interval
    x = np.random.default_rng(1).uniform(0.4, 0.6, size=500)
    assert np.allclose(stats.bounded_mean_ci(x)[1:], stats.mean_ci(x)[1:], atol=2e-3)


def test_population_interval_adds_the_pools_own_error():
    low, high = stats.population_ci(0.8, 0.8, 0.8, pool=2000)  # maps agree: only the pool's error
    assert high - 0.8 == pytest.approx(1.959964 * np.sqrt(0.16 / 2000)) and 0.8 - low == pytest.approx(high - 0.8)
    low, high = stats.population_ci(0.8, 0.77, 0.82, pool=2000)
    assert 0.8 - low == pytest.approx(np.hypot(0.03, 1.959964 * np.sqrt(0.16 / 2000)))
    s = stats.summarize([0.7, 0.8, 0.75, 0.9], pool=500)
    assert s["ci_pop_low"] < s["ci_bounded_low"] <= s["ci_bounded_high"] < s["ci_pop_high"]
    assert "ci_pop_low" not in stats.summarize([0.7, 0.8])  # no pool size, no population interval


def test_few_classic_maps_log_the_bounded_interval_and_no_warning(protected, caplog):
    """3 classic maps: the interval of record (ci_low/ci_high) is the bounded one of their accuracies,
    which holds at any map count (no more warning that a t-interval may miss, there is none)."""
    nets, images, labels = protected
    model = copy.deepcopy(nets["none"])
    with caplog.at_level(logging.WARNING, logger="fitact_pipeline.faults.campaign"):
        result = run_campaign(model, FaultInjector(model), images, labels, [1e-3], trials=3, seed=0, progress=False)
    accs = [t["accuracy"] for t in result.trials]
    st = result.per_rate[1e-3]
    assert (st["ci_low"], st["ci_high"]) == stats.bounded_mean_ci(accs)[1:]
    assert (st["ci_low"], st["ci_high"]) == (st["ci_bounded_low"], st["ci_bounded_high"])
    assert st["ci_high"] - st["ci_low"] > 0.3  # 3 maps leave up to 70 % of maps unseen at either bound
    assert "t-interval" not in caplog.text