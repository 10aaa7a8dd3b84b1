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


def test_a_true_tie_is_never_reported_as_better():
    d = _tie()
    assert 0 < superiority_p(d) and superiority_p(d) == pytest.approx(0.5)  # t = 0 exactly
    (dec,) = decide([Claim("A > B", ">", tuple(d))])
    assert not dec.supported and dec.verdict == "not supported"
    # under the null, ">" comes out supported in about alpha of the data sets, not more
    rng = np.random.default_rng(1)
    false = sum(superiority_p(rng.normal(0.0, 0.02, 20)) < 0.05 for _ in range(400))
    assert false / 400 < 0.05 + 3 * math.sqrt(0.05 * 0.95 / 400)


def test_a_clear_difference_is_reported_as_better_and_its_reverse_is_not():
    d = 0.05 + _tie(spread=0.01)
    decisions = decide(comparison("fitact", "clipact", d, margin=0.01, where="at 1e-05"))
    verdicts = {x.claim.name: x.verdict for x in decisions}
    assert verdicts == {"fitact > clipact at 1e-05": "supported", "clipact > fitact at 1e-05": "not supported",
                        "fitact ties clipact at 1e-05": "not supported"}


def test_superiority_is_the_one_sided_paired_t_test():
    d = [0.01, 0.02, 0.03]
    t = 0.02 / (0.01 / math.sqrt(3))
    assert superiority_p(d) == pytest.approx(sps.t.sf(t, 2))
    assert superiority_p(d, test="wilcoxon") < 0.2  # three positive differences: exact p = 1/8


def test_equivalence_within_the_margin_on_a_constructed_tie():
    d = _tie(spread=0.005)
    assert decide([Claim("A ties B", "ties", tuple(d), margin=0.01)])[0].supported
    # the same data cannot show a tie within a margin narrower than their own spread allows
    assert not decide([Claim("A ties B", "ties", tuple(d), margin=0.0005)])[0].supported
    # a real difference of 2 points is no tie within 1 point, however precise
    assert equivalence_p(0.02 + _tie(spread=0.001), margin=0.01) > 0.5


def test_holm_across_the_table_can_overturn_a_raw_p_below_alpha():
    rng = np.random.default_rng(3)
    # a small effect, each claim's raw p between 0.01 and 0.05: supported alone, not in a table of ten
    d = None
    for _ in range(1000):
        cand = 0.01 + rng.normal(0.0, 0.02, 20)
        if 0.01 < superiority_p(cand) < 0.05:
            d = tuple(cand)
            break
    assert d is not None
    assert decide([Claim("alone", ">", d)])[0].supported
    decisions = decide([Claim(f"claim {i}", ">", d) for i in range(10)])
    assert all(not x.supported and x.p_adjusted == pytest.approx(min(1.0, 10 * x.p)) for x in decisions)


def test_degenerate_differences_use_the_exact_sign_test():
    zeros = [0.0] * 10
    assert superiority_p(zeros) == 1.0  # all maps harmless to both: nothing shows A > B
    assert equivalence_p(zeros, 0.01) == pytest.approx(0.5 ** 10)
    assert superiority_p([0.01] * 10) == pytest.approx(0.5 ** 10)
    assert superiority_p([0.3]) == 1.0 and equivalence_p([0.0], 0.01) == 1.0  # one trial decides nothing


def test_the_table_says_which_test_margin_and_correction():
    decisions = decide(comparison("a", "b", 0.05 + _tie(spread=0.01), margin=0.01))
    lines = table(decisions)
    assert lines[0].startswith("| claim | test | margin |") and len(lines) == 2 + 3
    assert "| a ties b | equivalence (TOST) | +-1 |" in lines[4]
    note = method_note(0.05, 0.01)
    assert "one-sided paired t-test" in note and "+-1 points" in note and "Holm" in note


@pytest.mark.parametrize("make, match", [
    (lambda: Claim("x", ">=", (0.1, 0.2)), "claim kind '>=' is not allowed; choose one of: >, ties"),
    (lambda: Claim("x", "ties", (0.1, 0.2)), "needs a positive equivalence margin"),
    (lambda: superiority_p([0.1, 0.2], test="z"), "test='z' is not allowed; choose one of: t, wilcoxon"),
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
