"""Claims decided by tests that can fail (DESIGN.md §2.5): superiority, equivalence, Holm.

A claim compares two arms (protections, variants) on the same trials: its data are the per-trial
paired differences d_i = acc_A(trial i) - acc_B(trial i) over the same fault maps (and, in the nested
design, the same images). Two kinds of claim:

- ``">"`` (A beats B): one-sided test of H0: mean(d) <= 0 against H1: mean(d) > 0. The mean is the
  estimand every curve reports, so the test is on the mean. By default (``test="bounded"``) it is
  the test the paired interval of record inverts (``stats.bounded_mean_p``, Gaffke's bounded-mean
  test on d in [-1, 1]): valid for any distribution of the differences, rare maps catastrophic for
  one arm only included, so a claim is never supported while the interval shown beside it holds 0.
  ``test="t"`` (paired t-test; asymptotic, it over-rejects with 20 classic maps and heavy tails) and
  ``test="wilcoxon"`` (signed-rank; tests the pseudo-median) remain as options.
- ``"ties"`` (A ties B within a margin m): equivalence by two one-sided tests (TOST), H0: |mean(d)| >= m
  against H1: -m < mean(d) < m; its p-value is the larger of the two one-sided p-values.

A claim that its test does not establish is "not supported": failing to find a difference is never
evidence of ">=" or of a tie. Every claims table is one family: Holm's step-down adjustment controls
the probability of any false "supported" in it at ``alpha``, whatever the dependence between claims.

For the t and Wilcoxon tests, when all differences are equal to 1e-12 (e.g. every fault map harmless
to both arms) the statistic is undefined; the p-value is then the exact sign test's: 0.5 ** n if all
n differences lie on the claimed side (above 0; inside (-m, m)), else 1 (the bounded test needs no
such case). Fewer than two trials decide nothing (p = 1).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
from scipy import stats as sps

from . import stats

KINDS = (">", "ties")
TESTS = ("bounded", "t", "wilcoxon")
TEST_NAMES = {"bounded": "one-sided bounded-mean test (Gaffke; any distribution of differences in [-1, 1])",
              "t": "one-sided paired t-test", "wilcoxon": "one-sided Wilcoxon signed-rank test"}
#: the test a claims table uses unless told otherwise: the one the paired interval of record inverts
DEFAULT_TEST = "bounded"
CORRECTION = "Holm"
#: differences closer than this are equal (accuracies of equal counts that rounding set apart by 1e-17)
SPREAD_TOL = 1e-12


@dataclass(frozen=True)
class Claim:
    """``name`` says what is claimed (e.g. "vgg16: fitact > clipact at 1e-05"); ``diffs`` are the
    per-trial A - B; ``margin`` is the equivalence margin of a "ties" claim (same unit as diffs)."""

    name: str
    kind: str
    diffs: tuple[float, ...]
    margin: float = 0.0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"claim kind {self.kind!r} is not allowed; choose one of: {', '.join(KINDS)}")
        if self.kind == "ties" and not self.margin > 0:
            raise ValueError(f"a 'ties' claim needs a positive equivalence margin, got {self.margin!r}")


@dataclass(frozen=True)
class Decision:
    claim: Claim
    mean: float
    p: float
    p_adjusted: float
    supported: bool

    @property
    def verdict(self) -> str:
        return "supported" if self.supported else "not supported"


def _one_sided(d: np.ndarray, shift: float, greater: bool, test: str) -> float:
    """p of H1: mean(d) > shift (``greater``) or < shift, by ``test``; see the module doc for the
    degenerate cases."""
    if d.size < 2:
        return 1.0
    if test == "bounded":
        return stats.bounded_mean_p(d, shift, greater, lower=-1.0, upper=1.0)
    x = d - shift
    if np.ptp(x) <= SPREAD_TOL:  # no spread: the exact sign test (all n on the claimed side, or not)
        centre = float(np.mean(x))
        return float(0.5 ** x.size) if (centre > SPREAD_TOL if greater else centre < -SPREAD_TOL) else 1.0
    alternative = "greater" if greater else "less"
    if test == "t":
        return float(sps.ttest_1samp(x, 0.0, alternative=alternative).pvalue)
    # zsplit: zero differences count half for each side instead of being dropped
    return float(sps.wilcoxon(x, zero_method="zsplit", alternative=alternative).pvalue)


def superiority_p(diffs: Sequence[float], test: str = DEFAULT_TEST) -> float:
    """p-value of "A > B" (H1: mean(A - B) > 0)."""
    return _one_sided(_check(diffs, test), 0.0, True, test)


def equivalence_p(diffs: Sequence[float], margin: float, test: str = DEFAULT_TEST) -> float:
    """TOST p-value of "A ties B within +-margin" (H1: -margin < mean(A - B) < margin)."""
    d = _check(diffs, test)
    return max(_one_sided(d, -margin, True, test), _one_sided(d, margin, False, test))


def shown_interval(diffs: Sequence[float], test: str = DEFAULT_TEST, level: float = 0.95) -> tuple[float, float, float]:
    """Mean and the two-sided interval a claims table shows beside a decision by ``test``: the one
    that test inverts, so a supported ">" never sits beside an interval holding 0 (bounded:
    ``stats.paired_ci``; t: the t-interval; Wilcoxon tests no mean: the t-interval)."""
    d = _check(diffs, test)
    return stats.paired_ci(d, level) if test == "bounded" else stats.mean_ci(d, level)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: the i-th smallest p (i = 0, 1, ...)
    times (m - i), made non-decreasing along the sorted order, capped at 1."""
    p = np.asarray(pvalues, dtype=np.float64)
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(1.0, np.maximum.accumulate(p[order] * (m - np.arange(m))))
    out = np.empty(m)
    out[order] = adjusted
    return out.tolist()


def decide(claims: Sequence[Claim], alpha: float = 0.05, test: str = DEFAULT_TEST) -> list[Decision]:
    """Test every claim of one table and adjust across the table (Holm): supported iff adjusted p < alpha."""
    if not 0 < alpha < 1:
        raise ValueError(f"alpha={alpha!r} is not allowed; expected a level in (0, 1)")
    raw = [superiority_p(c.diffs, test) if c.kind == ">" else equivalence_p(c.diffs, c.margin, test)
           for c in claims]
    return [Decision(c, float(np.mean(c.diffs)) if c.diffs else float("nan"), p, q, q < alpha)
            for c, p, q in zip(claims, raw, holm(raw))]


def comparison(name_a: str, name_b: str, diffs: Sequence[float], margin: float, where: str = "") -> list[Claim]:
    """The three claims one paired comparison can support: A > B, B > A, A ties B (within margin).
    At most one of the first two holds; a tie may hold beside either (a small, sure difference)."""
    d = tuple(float(v) for v in diffs)
    suffix = f" {where}" if where else ""
    return [Claim(f"{name_a} > {name_b}{suffix}", ">", d),
            Claim(f"{name_b} > {name_a}{suffix}", ">", tuple(-v for v in d)),
            Claim(f"{name_a} ties {name_b}{suffix}", "ties", d, margin)]


def paired_by_rate(a: Mapping[tuple[float, int], float], b: Mapping[tuple[float, int], float],
                   min_rate: float = 0.0) -> dict[float, list[float]]:
    """{rate: [a - b per shared trial]} from two arms' {(rate, trial): accuracy}, for every rate >=
    min_rate both ran: trial i of both saw the same fault map (and, nested, the same images)."""
    out: dict[float, list[float]] = {}
    for rate, trial in sorted(set(a) & set(b)):
        if rate >= min_rate:
            out.setdefault(rate, []).append(a[(rate, trial)] - b[(rate, trial)])
    return out


def method_note(alpha: float, margin: float | None, test: str = DEFAULT_TEST, scale: float = 100, unit: str = "points") -> str:
    """The sentence a claims table carries: which test, which margin, which correction."""
    tie = (f"; 'ties': equivalence within +-{scale * margin:g} {unit} (two one-sided tests, TOST)"
           if margin is not None else "")
    return (f"Tests: '>': {TEST_NAMES[test]} on the paired per-trial differences{tie}; "
            f"{CORRECTION}-adjusted across this table, supported iff adjusted p < {alpha:g}. "
            "A claim its test does not establish is 'not supported' (no difference found is no evidence of '>=').")


def table(decisions: Sequence[Decision], scale: float = 100) -> list[str]:
    """Markdown rows: claim, test, margin, pairs, mean difference, raw and adjusted p, verdict."""
    lines = ["| claim | test | margin | pairs | mean A - B | p | Holm-adjusted p | verdict |",
             "|---|---|---|---|---|---|---|---|"]
    for d in decisions:
        c = d.claim
        test, margin = ("superiority", "-") if c.kind == ">" else ("equivalence (TOST)", f"+-{scale * c.margin:g}")
        lines.append(f"| {c.name} | {test} | {margin} | {len(c.diffs)} | {scale * d.mean:+.2f} | {d.p:.3g} | "
                     f"{d.p_adjusted:.3g} | {d.verdict} |")
    return lines


def _check(diffs: Sequence[float], test: str) -> np.ndarray:
    if test not in TESTS:
        raise ValueError(f"test={test!r} is not allowed; choose one of: {', '.join(TESTS)}")
    d = np.asarray(diffs, dtype=np.float64)
    if not np.all(np.isfinite(d)):
        raise ValueError("paired differences must be finite; got NaN or inf")
    return d
