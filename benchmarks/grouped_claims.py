"""Accuracy, paired differences and claims of an experiment whose runs split into groups by one
setting: the stored format (repro_cpu_formats, issue 29) or the fault model and weight protection
(repro_cpu_weights, issue 28).

    python benchmarks/grouped_claims.py --experiment repro_cpu_formats --group faults.fmt
    python benchmarks/grouped_claims.py --experiment repro_cpu_weights --group faults.model \
        --pair-by weight_protection.name

Per group: mean accuracy with its interval of record at every rate, the clean accuracy, and the
paired differences (same fault maps and images: runs of one result context) that decide the
paper's ordering FitAct > Clip-Act > Ranger > none, by one-sided tests (fitact_pipeline/claims.py,
default: the bounded-mean test the paired interval shows), Holm across the whole table. With
--pair-by, the weight protections of one activation protection are compared too (X + clamp > X,
X + parity_zero > X) and each weight protection alone against FitAct alone, both ways. Prints
Markdown; the last line is JSON.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import defaultdict
from pathlib import Path

from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fitact_pipeline import claims  # noqa: E402
from fitact_pipeline.report.runs import Experiment  # noqa: E402

ORDER = ("fitact", "clipact", "ranger", "none")
PAIRS = (("fitact", "clipact"), ("clipact", "ranger"), ("ranger", "none"), ("fitact", "none"))


def arms(exp: Experiment, group: str, pair_by: str | None) -> dict:
    """{(group value, result context): {(protection, pair_by value): {(rate, trial): accuracy}}} and
    the jobs by the same keys."""
    trials, jobs = defaultdict(dict), defaultdict(dict)
    for job in exp.jobs:
        key = (job.params.get(group, "?"), job.context)
        arm = (job.protection, job.params.get(pair_by, "none") if pair_by else "")
        trials[key][arm] = exp.trials(job)
        jobs[key][arm] = job
    return trials, jobs


def arm_name(arm: tuple[str, str]) -> str:
    return arm[0] + (f" + {arm[1]}" if arm[1] not in ("", "none") else "")


def accuracy_table(jobs: dict) -> list[str]:
    rates = sorted({r for per in jobs.values() for job in per.values() for r in job.curve})
    lines = ["| group | arm | run id | clean | " + " | ".join(f"{r:.0e}" for r in rates) + " |",
             "|---" * (4 + len(rates)) + "|"]
    for (value, _), per in sorted(jobs.items(), key=lambda kv: str(kv[0][0])):
        for arm in sorted(per, key=lambda a: (ORDER.index(a[0]) if a[0] in ORDER else 9, a[1])):
            job = per[arm]
            cells = [f"{100 * s['mean']:.1f} [{100 * s['ci_low']:.1f}, {100 * s['ci_high']:.1f}]"
                     if (s := job.curve.get(r)) else "-" for r in rates]
            lines.append(f"| {value} | {arm_name(arm)} | `{job.run_id[:8]}` | "
                         f"{100 * job.metrics['clean_accuracy']:.2f} | " + " | ".join(cells) + " |")
    return lines


def comparisons(trials: dict, pair_by: str | None) -> list[tuple[str, tuple, tuple]]:
    """(group value, arm A, arm B) of every claim "A > B" the table tests."""
    out = []
    for (value, _), per in trials.items():
        second = sorted({a[1] for a in per})
        for extra in second:
            out += [(value, (a, extra), (b, extra)) for a, b in PAIRS if (a, extra) in per and (b, extra) in per]
        if pair_by:
            for prot in ORDER:
                out += [(value, (prot, w), (prot, "none")) for w in second
                        if w != "none" and (prot, w) in per and (prot, "none") in per]
            # the question a reader of FitAct asks: does the weight-side protection alone do as
            # well as neuron-wise activation bounds alone? Both directions are claims of their own.
            for w in (w for w in second if w != "none" and ("none", w) in per and ("fitact", "none") in per):
                out += [(value, ("none", w), ("fitact", "none")), (value, ("fitact", "none"), ("none", w))]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--experiment", required=True)
    ap.add_argument("--group", required=True, help="the run param that splits the table, e.g. faults.fmt")
    ap.add_argument("--pair-by", default=None, help="a second param compared within a protection, e.g. "
                    "weight_protection.name")
    ap.add_argument("--store", default="mlruns/mlflow.db")
    ap.add_argument("--alpha", type=float, default=0.05)
    ap.add_argument("--test", choices=claims.TESTS, default=claims.DEFAULT_TEST)
    args = ap.parse_args()
    client = MlflowClient(tracking_uri=f"sqlite:///{Path(args.store).resolve()}")
    found = client.get_experiment_by_name(args.experiment)
    if found is None:
        sys.exit(f"no MLflow experiment named {args.experiment!r} in {args.store}")
    with tempfile.TemporaryDirectory() as tmp:
        exp = Experiment(client, found.experiment_id, Path(tmp))
        trials, jobs = arms(exp, args.group, args.pair_by)
        print(f"## `{args.experiment}`: mean accuracy (%) [interval of record] per rate, by {args.group}\n")
        print("\n".join(accuracy_table(jobs)) + "\n")
        tested, rows = [], []
        for value, a, b in comparisons(trials, args.pair_by):
            per = next(p for (v, _), p in trials.items() if v == value and a in p and b in p)
            for rate, d in sorted(claims.paired_by_rate(per[a], per[b]).items()):
                tested.append(claims.Claim(f"{value}: {arm_name(a)} > {arm_name(b)} at {rate:.0e}", ">", tuple(d)))
                rows.append((value, arm_name(a), arm_name(b), rate, claims.shown_interval(d, args.test)))
    decisions = claims.decide(tested, args.alpha, args.test)
    print("## Paired differences A - B (points, same maps and images) and the claim A > B\n")
    print(claims.method_note(args.alpha, None, args.test) + "\n")
    print("| group | A | B | rate | pairs | mean A - B [95 % CI] | Holm-adjusted p | A > B |")
    print("|---|---|---|---|---|---|---|---|")
    data = {}
    for (value, a, b, rate, (mean, low, high)), dec in zip(rows, decisions):
        print(f"| {value} | {a} | {b} | {rate:.0e} | {len(dec.claim.diffs)} | {100 * mean:+.2f} [{100 * low:+.2f}, "
              f"{100 * high:+.2f}] | {dec.p_adjusted:.3g} | {dec.verdict} |")
        data[dec.claim.name] = {"mean": mean, "ci": [low, high], "p_adjusted": dec.p_adjusted,
                                "supported": dec.supported}
    print(json.dumps(data))


if __name__ == "__main__":
    main()
