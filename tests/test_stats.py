"""Statistics against known answers (DESIGN.md §2.5)."""
import math

import numpy as np
import pytest

from fitact_pipeline import stats


def test_mean_ci_known_normal_sample():
    rng = np.random.default_rng(0)
    x = rng.normal(0.7, 0.05, size=1000)
    mean, low, high = stats.mean_ci(x)
    assert low < 0.7 < high
    assert high - mean == pytest.approx(1.9623 * x.std(ddof=1) / math.sqrt(1000), rel=1e-3)


def test_mean_ci_coverage_is_about_95_percent():
    rng = np.random.default_rng(1)
    hits = sum(low <= 0.5 <= high for low, high in
               (stats.mean_ci(rng.normal(0.5, 0.1, size=15))[1:] for _ in range(400)))
    assert 0.91 <= hits / 400 <= 0.985


def test_constant_and_single_values_have_zero_width_intervals():
    assert stats.mean_ci([0.8] * 5) == (0.8, 0.8, 0.8)
    assert stats.mean_ci([0.3]) == (0.3, 0.3, 0.3)
    with pytest.raises(ValueError):
        stats.mean_ci([])


def test_summarize_fields():
    s = stats.summarize([0.1, 0.2, 0.3, 0.4, 0.5])
    assert s["mean"] == pytest.approx(0.3) and s["median"] == pytest.approx(0.3)
    assert (s["min"], s["max"], s["q1"], s["q3"], s["trials"]) == (0.1, 0.5, pytest.approx(0.2), pytest.approx(0.4), 5)
    assert s["ci_low"] < 0.3 < s["ci_high"]


def test_the_logged_interval_is_the_bounded_one():
    x = [0.91, 0.88, 0.9, 0.12, 0.93, 0.9, 0.87]
    s = stats.summarize(x, pool=360)
    mean, low, high = stats.bounded_mean_ci(x)
    assert (s["mean"], s["ci_low"], s["ci_high"]) == (mean, low, high)
    assert (s["ci_bounded_low"], s["ci_bounded_high"]) == (low, high) and s["ci_halfwidth"] == (high - low) / 2
    assert (s["ci_pop_low"], s["ci_pop_high"]) == stats.population_ci(mean, low, high, 360)
    assert (s["ci_low"], s["ci_high"]) != stats.mean_ci(x)[1:]  # not the t-interval it used to be
    assert "ci_pop_low" not in stats.summarize(x)  # no pool size, no population interval
    with pytest.raises(ValueError, match=r"summarize needs per-trial values in \[0, 1\], got min -0.5"):
        stats.summarize([0.2, -0.5])


def test_the_interval_of_record_holds_where_a_t_interval_of_harmless_maps_does_not():
    """Maps of a model: 95 % harmless (accuracy 0.9), 5 % catastrophic (0.0); true mean 0.855. 20
    classic maps often hold no catastrophic one (0.95^20 = 36 %): then the t-interval is about
    [0.899, 0.901] and misses; the interval of record allows for the maps not drawn."""
    truth = 0.95 * 0.9 + 0.05 * 0.0
    harmless = 0.9 + np.linspace(-0.002, 0.002, 20)  # 20 maps that all agree closely
    _, t_low, t_high = stats.mean_ci(harmless)
    assert not t_low <= truth <= t_high
    s = stats.summarize(harmless)
    assert s["ci_low"] <= truth <= s["ci_high"]
    one_bad = [0.9] * 19 + [0.0]  # the sample with its share of catastrophic maps
    s = stats.summarize(one_bad)
    assert s["mean"] == pytest.approx(truth) and s["ci_low"] <= truth <= s["ci_high"]


def test_bootstrap_median_interval_contains_median_and_is_seeded():
    x = np.random.default_rng(2).uniform(size=50)
    med, low, high = stats.bootstrap_median_ci(x, seed=3)
    assert low <= med <= high and med == pytest.approx(np.median(x))
    assert stats.bootstrap_median_ci(x, seed=3) == (med, low, high)


def test_paired_difference_recovers_known_shift():
    rng = np.random.default_rng(4)
    b = rng.uniform(0.2, 0.8, size=40)
    a = b + 0.1 + rng.normal(0, 0.02, size=40)
    d = stats.paired_difference(a, b)
    assert d["ci_low"] < 0.1 < d["ci_high"]
    assert d["mean_diff"] == pytest.approx(0.1, abs=0.01)
    assert d["wilcoxon_p"] < 1e-6
    assert (d["ci_low"], d["ci_high"]) == stats.bounded_mean_ci(a - b, lower=-1.0, upper=1.0)[1:]
    same = stats.paired_difference(b, b)
    assert same["mean_diff"] == 0 and same["wilcoxon_p"] == 1.0
    assert same["ci_low"] < 0 < same["ci_high"]  # equal on 40 maps does not exclude a rare map unequal
    with pytest.raises(ValueError):
        stats.paired_difference([1, 2], [1])


def test_resilience_auc_and_critical_rate():
    rates = [1e-6, 1e-5, 1e-4]
    assert stats.resilience_auc(rates, [1.0, 1.0, 1.0]) == pytest.approx(1.0)
    # Linear in log10(rate) from 1 to 0: the normalised area is one half.
    assert stats.resilience_auc(rates, [1.0, 0.5, 0.0]) == pytest.approx(0.5)
    assert stats.critical_rate(rates, [1.0, 0.8, 0.2], 0.5) == pytest.approx(10 ** -4.5)
    assert stats.critical_rate(rates, [0.9, 0.9, 0.9], 0.5) == math.inf
    assert stats.critical_rate(rates, [0.1, 0.1, 0.1], 0.5) == 1e-6


def test_adaptive_stopping_stops_earlier_on_low_variance_and_never_before_min():
    rng = np.random.default_rng(5)

    def trials_needed(sd, min_trials=5, target=0.01):
        values = []
        while not stats.should_stop(values, target_halfwidth=target, min_trials=min_trials, max_trials=600):
            values.append(float(rng.normal(0.5, sd)))
        return len(values)

    # tight data stops once unseen maps could not move the mean by the target: the first M with
    # (1 - 0.025^(1/M)) * 0.5 <= 0.01, i.e. M = 183 (not at min_trials: a run of equal trials is no proof)
    assert trials_needed(0.005) == math.ceil(math.log(0.025) / math.log(1 - 0.01 / 0.5)) == 183
    assert trials_needed(0.005, min_trials=250) == 250
    assert trials_needed(0.1) > 300  # wide data: t decides, (1.97 * 0.1 / 0.01)^2 = 388 trials
    assert trials_needed(0.001, target=0.1) == 17  # a loose target: (1 - 0.025^(1/M)) * 0.5 <= 0.1 from M = 17
    assert not stats.should_stop([0.5] * 4, 0.01, min_trials=5, max_trials=10)
    assert not stats.should_stop([1.0] * 30, 0.01, min_trials=5, max_trials=1000)  # all equal: not yet
    assert stats.should_stop([0.1, 0.9] * 5, 0.0001, min_trials=2, max_trials=10)


def test_the_paired_interval_holds_where_a_t_interval_of_harmless_pairs_does_not():
    """A - B: 0 on 95 % of maps, -0.9 on the 5 % catastrophic for A only (true mean -0.045); 20
    pairs without such a map give a t-interval near 0 that misses it, the paired interval of record not."""
    truth = 0.05 * -0.9
    b = 0.9 + np.linspace(-0.01, 0.01, 20)
    a = b + np.linspace(-0.002, 0.002, 20)[::-1]
    _, t_low, t_high = stats.mean_ci(a - b)
    assert not t_low <= truth <= t_high
    d = stats.paired_difference(a, b)
    assert d["ci_low"] <= truth <= d["ci_high"]
