"""Claims decided by tests that can fail (fitact_pipeline/claims.py): constructed cases whose answer is known."""
import math

import numpy as np
import pytest
from scipy import stats as sps

from fitact_pipeline.claims import (Claim, comparison, decide, equivalence_p, holm, method_note, paired_by_rate,
                                    superiority_p, table)


def _tie(n=40, spread=0.02, seed=0):
    """Paired differences of a true tie: symmetric about exactly 0."""
    half = np.random.default_rng(seed).normal(0.0, spread, n // 2)
    return np.concatenate([half, -half])


def test_holm_matches_a_hand_computed_example():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> made monotone: 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == [0.02]  # one claim: nothing to adjust


@pytest.mark.parametrize("test", ["bounded", "t"])
def test_a_true_tie_is_never_reported_as_better(test):
    d = _tie()
    if test == "t":
        assert 0 < superiority_p(d, test) and superiority_p(d, test) == pytest.approx(0.5)  # t = 0 exactly
    else:
        assert superiority_p(d, test) > 0.5  # the extra atom at -1 pulls against the claim
    (dec,) = decide([Claim("A > B", ">", tuple(d))], test=test)
    assert not dec.supported and dec.verdict == "not supported"
    # under the null, ">" comes out supported in about alpha of the data sets, not more
    rng = np.random.default_rng(1)
    false = sum(superiority_p(rng.normal(0.0, 0.02, 20), test) < 0.05 for _ in range(400))
    assert false / 400 < 0.05 + 3 * math.sqrt(0.05 * 0.95 / 400)


def test_the_default_test_does_not_support_a_claim_that_rare_catastrophic_maps_reverse():
    # 5 % of maps catastrophic for A only: true mean difference 0.95 * 0.02 - 0.05 * 1 < 0. A sample
    # of 20 maps holds none of them with probability 0.95 ** 20 = 36 %: the t-test then calls A > B.
    d = 0.02 + _tie(n=20, spread=0.002)
    assert superiority_p(d, test="t") < 1e-6
    assert superiority_p(d) > 0.5 and not decide([Claim("A > B", ">", tuple(d))])[0].supported
    # with enough maps the same sure effect is supported: 400 maps bound the unseen share to < 1 %
    assert decide([Claim("A > B", ">", tuple(0.05 + _tie(n=400, spread=0.01)))])[0].supported


def test_the_bounded_test_is_the_one_the_paired_interval_inverts():
    from fitact_pipeline import stats
    rng = np.random.default_rng(5)
    for shift in (0.0, 0.01, 0.03):
        d = shift + rng.normal(0.0, 0.02, 300)
        low = stats.bounded_mean_ci(d, 0.90, lower=-1.0, upper=1.0)[1]  # one-sided 95 % lower end
        # rejected at 5 % iff that end excludes 0 (Monte Carlo: the add-one rule moves p by <= 1e-4)
        assert (superiority_p(d) < 0.05) == (low > 0)


def test_a_clear_difference_is_reported_as_better_and_its_reverse_is_not():
    d = 0.05 + _tie(n=400, spread=0.01)  # 400 maps: the unseen share at a bound is below 1 %
    decisions = decide(comparison("fitact", "clipact", d, margin=0.01, where="at 1e-05"))
    verdicts = {x.claim.name: x.verdict for x in decisions}
    assert verdicts == {"fitact > clipact at 1e-05": "supported", "clipact > fitact at 1e-05": "not supported",
                        "fitact ties clipact at 1e-05": "not supported"}


def test_superiority_by_t_is_the_one_sided_paired_t_test():
    d = [0.01, 0.02, 0.03]
    t = 0.02 / (0.01 / math.sqrt(3))
    assert superiority_p(d, test="t") == pytest.approx(sps.t.sf(t, 2))
    assert superiority_p(d, test="wilcoxon") < 0.2  # three positive differences: exact p = 1/8


def test_equivalence_within_the_margin_on_a_constructed_tie():
    d = _tie(spread=0.005)
    assert decide([Claim("A ties B", "ties", tuple(d), margin=0.01)], test="t")[0].supported
    # the same data cannot show a tie within a margin narrower than their own spread allows
    assert not decide([Claim("A ties B", "ties", tuple(d), margin=0.0005)], test="t")[0].supported
    # a real difference of 2 points is no tie within 1 point, however precise
    assert equivalence_p(0.02 + _tie(spread=0.001), margin=0.01) > 0.5
    # the bounded test needs the unseen share times the distance to the bound below the margin: 40
    # maps cannot exclude 1/40 of maps at -1 (no tie within 1 point), 2,000 maps can
    assert not decide([Claim("A ties B", "ties", tuple(d), margin=0.01)])[0].supported
    assert decide([Claim("A ties B", "ties", tuple(_tie(n=2000, spread=0.005)), margin=0.01)])[0].supported


def test_holm_across_the_table_can_overturn_a_raw_p_below_alpha():
    rng = np.random.default_rng(3)
    # a small effect, each claim's raw p between 0.01 and 0.05: supported alone, not in a table of ten
    d = None
    for _ in range(1000):
        cand = 0.01 + rng.normal(0.0, 0.02, 20)
        if 0.01 < superiority_p(cand, test="t") < 0.05:
            d = tuple(cand)
            break
    assert d is not None
    assert decide([Claim("alone", ">", d)], test="t")[0].supported
    decisions = decide([Claim(f"claim {i}", ">", d) for i in range(10)], test="t")
    assert all(not x.supported and x.p_adjusted == pytest.approx(min(1.0, 10 * x.p)) for x in decisions)


def test_degenerate_differences_use_the_exact_sign_test():
    zeros = [0.0] * 10
    assert superiority_p(zeros, test="t") == 1.0  # all maps harmless to both: nothing shows A > B
    assert equivalence_p(zeros, 0.01, test="t") == pytest.approx(0.5 ** 10)
    assert superiority_p([0.01] * 10, test="t") == pytest.approx(0.5 ** 10)
    for test in ("bounded", "t"):
        assert superiority_p([0.3], test) == 1.0 and equivalence_p([0.0], 0.01, test) == 1.0  # one trial decides nothing


def test_the_bounded_test_on_equal_differences_is_exact():
    # all n at c > 0, atom at -1 with weight w ~ Beta(1, n): the mean exceeds 0 iff w < c / (1 + c),
    # so p = (1 - c / (1 + c)) ** n = (1 + c) ** -n exactly (up to Monte Carlo error)
    assert superiority_p([0.0] * 10) == 1.0
    assert superiority_p([0.5] * 10) == pytest.approx(1.5 ** -10, abs=0.003)
    assert superiority_p([0.1] * 30) == pytest.approx(1.1 ** -30, abs=0.01)


def test_the_table_says_which_test_margin_and_correction():
    decisions = decide(comparison("a", "b", 0.05 + _tie(spread=0.01), margin=0.01))
    lines = table(decisions)
    assert lines[0].startswith("| claim | test | margin |") and len(lines) == 2 + 3
    assert "| a ties b | equivalence (TOST) | +-1 |" in lines[4]
    note = method_note(0.05, 0.01)
    assert "bounded-mean test" in note and "one-sided paired t-test" in method_note(0.05, 0.01, "t")
    assert "one-sided paired t-test" in method_note(0.05, 0.01, "t") and "+-1 points" in note and "Holm" in note


@pytest.mark.parametrize("make, match", [
    (lambda: Claim("x", ">=", (0.1, 0.2)), "claim kind '>=' is not allowed; choose one of: >, ties"),
    (lambda: Claim("x", "ties", (0.1, 0.2)), "needs a positive equivalence margin"),
    (lambda: superiority_p([0.1, 0.2], test="z"), "test='z' is not allowed; choose one of: bounded, t, wilcoxon"),
    (lambda: superiority_p([0.1, float("nan")]), "must be finite"),
    (lambda: decide([], alpha=1.5), "alpha=1.5 is not allowed"),
])
def test_bad_claims_are_refused(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_paired_by_rate_pairs_the_same_trials_only():
    a = {(1e-5, 0): 0.9, (1e-5, 1): 0.8, (1e-4, 0): 0.5, (1e-4, 2): 0.4, (1e-6, 0): 1.0}
    b = {(1e-5, 0): 0.7, (1e-5, 1): 0.8, (1e-4, 0): 0.6, (1e-4, 1): 0.1, (1e-6, 0): 1.0}
    got = paired_by_rate(a, b, min_rate=1e-5)
    assert list(got) == [1e-5, 1e-4] and got[1e-5] == pytest.approx([0.2, 0.0]) and got[1e-4] == pytest.approx([-0.1])
