"""The tables of docs/RESULTS.md, "Beyond ReLU", computed from the MLflow runs of experiment=beyond_relu.

    python -m fitact_pipeline -m experiment=beyond_relu
    python -m fitact_pipeline -m experiment=beyond_relu protection=fitact protection.granularity=layer
    python benchmarks/beyond_relu.py                  # --store mlruns/mlflow.db

Prints, in Markdown: the baselines, mean accuracy per rate of every run (run ids), and the paired
comparisons that answer the question (per-trial accuracies of the runs: the same fault maps in every
variant), decided by tests that can fail (fitact_pipeline/claims.py: one-sided bounded-mean test for "A > B",
equivalence within --margin for a tie, Holm across the table): does neuron-wise bounding (FitAct,
neuron) beat layer-wise bounding (Clip-Act with the FT-ClipAct search; FitAct's own post-training at
layer granularity) on a ReLU6 and a GELU network?
The last line is JSON with the counts of rates where A > B, B > A, a tie is established, or nothing.
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
from fitact_pipeline import claims, stats  # noqa: E402
from fitact_pipeline.report import Experiment, rate_stats, without_design  # noqa: E402

ORDER = ["none", "ranger", "clipact", "fitact layer", "fitact"]
COMPARISONS = [("fitact", "clipact"), ("fitact", "fitact layer"), ("clipact", "ranger"), ("ranger", "none"),
               ("fitact", "none")]


def _order(variant: str) -> int:
    return ORDER.index(without_design(variant)) if without_design(variant) in ORDER else len(ORDER)


def runs_table(exp: Experiment, rates: list[float]) -> list[str]:
    lines = ["| model | protection | run id | clean test acc | " + " | ".join(f"{r:.0e}" for r in rates) + " |",
             "|---" * (4 + len(rates)) + "|"]
    for job in sorted(exp.jobs, key=lambda j: (j.model, _order(j.variant))):
        stats = rate_stats(job.metrics)
        cells = [f"{100 * stats[r]['mean']:.1f}" if r in stats else "-" for r in rates]
        lines.append(f"| {job.model} | {job.variant} | `{job.run_id}` | "
                     f"{100 * job.metrics.get('clean_accuracy', float('nan')):.2f} % | " + " | ".join(cells) + " |")
    return lines


def baselines_table(exp: Experiment) -> list[str]:
    lines = ["| model | parameters | epochs | training time | val acc | clean test acc (Q15.16) | fault space bits |",
             "|---|---|---|---|---|---|---|"]
    for job in sorted((j for j in exp.jobs if j.protection == "none"), key=lambda j: j.model):
        m = job.metrics
        lines.append(f"| {job.model} | {job.params.get('model.arch')} {job.params.get('model.kwargs', '')[:60]} | "
                     f"{job.params.get('train.epochs')} | {m['train_time_s'] / 60:.1f} min | "
                     f"{100 * m['clean_val_accuracy']:.2f} % | {100 * m['clean_accuracy']:.2f} % | "
                     f"{job.params.get('fault_space.total_bits')} |")
    return lines


def trial_accuracies(exp: Experiment) -> dict[str, dict[str, dict[tuple[float, int], float]]]:
    """{model: {variant: {(rate, trial): accuracy}}}: what every paired comparison is tested on."""
    out: dict = defaultdict(lambda: defaultdict(dict))
    for job in exp.jobs:
        out[job.model][without_design(job.variant)].update(exp.trials(job))
    return out


def comparisons(trials: dict, min_rate: float, margin: float, alpha: float) -> tuple[list[str], dict]:
    """Each pair of COMPARISONS at each rate: the paired mean difference with its CI, and what the
    tests establish (A > B, B > A, a tie within the margin; Holm across the whole table)."""
    cells, found = [], []
    for model in sorted(trials):
        for a, b in COMPARISONS:
            if a not in trials[model] or b not in trials[model]:
                continue
            for rate, d in sorted(claims.paired_by_rate(trials[model][a], trials[model][b], min_rate).items()):
                cells.append((model, a, b, rate, stats.paired_ci(d), len(found)))
                found += claims.comparison(a, b, d, margin, where=f"({model}, {rate:.0e})")
    decisions = claims.decide(found, alpha)
    lines = ["| model | A - B | rate | paired mean difference (points) [95 % CI] | established |",
             "|---|---|---|---|---|"]
    verdict: dict = {}
    for model, a, b, rate, (mean, low, high), first in cells:
        better, worse, tie = (decisions[first + i].supported for i in range(3))
        shown = [w for w, on in (("A > B", better), ("B > A", worse), (f"tie within +-{100 * margin:g}", tie)) if on]
        lines.append(f"| {model} | {a} - {b} | {rate:.0e} | {100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] | "
                     f"{', '.join(shown) or 'nothing'} |")
        counts = verdict.setdefault(f"{model}: {a} - {b}", {"better": 0, "worse": 0, "tie": 0, "undecided": 0})
        for key, on in (("better", better), ("worse", worse), ("tie", tie)):
            counts[key] += on
        counts["undecided"] += not (better or worse or tie)
    return lines, verdict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="mlruns/mlflow.db")
    ap.add_argument("--experiment", default="beyond_relu")
    ap.add_argument("--min-rate", type=float, default=1e-6)
    ap.add_argument("--alpha", type=float, default=0.05, help="family-wise error rate of the table (Holm)")
    ap.add_argument("--margin", type=float, default=0.01, help="equivalence margin, accuracy fraction")
    args = ap.parse_args()
    if not 0 < args.alpha < 1 or not args.margin > 0:
        raise SystemExit(f"--alpha={args.alpha} must lie in (0, 1) and --margin={args.margin} must be positive")
    client = MlflowClient(f"sqlite:///{Path(args.store).resolve()}")
    exp_info = client.get_experiment_by_name(args.experiment)
    if exp_info is None:
        raise SystemExit(f"no experiment {args.experiment!r} in {args.store}")
    with tempfile.TemporaryDirectory() as tmp:
        exp = Experiment(client, exp_info.experiment_id, Path(tmp))
        rates = sorted({r for j in exp.jobs for r in rate_stats(j.metrics)})
        compared, verdict = comparisons(trial_accuracies(exp), args.min_rate, args.margin, args.alpha)
        note = claims.method_note(args.alpha, args.margin)
        print("\n".join(baselines_table(exp) + [""] + runs_table(exp, rates) + [""] + compared + ["", note]))
    print(json.dumps(verdict))


if __name__ == "__main__":
    main()
