"""The tables of docs/RESULTS.md, "Beyond ReLU", computed from the MLflow runs of experiment=beyond_relu.

    python -m fitact_pipeline -m experiment=beyond_relu
    python -m fitact_pipeline -m experiment=beyond_relu protection=fitact protection.granularity=layer
    python -m fitact_pipeline.report experiment=beyond_relu
    python benchmarks/beyond_relu.py                  # --store mlruns/mlflow.db --report-dir outputs/figures/beyond_relu

Prints, in Markdown: the baselines, mean accuracy per rate of every run (run ids), and the paired
comparisons that answer the question (from the report's paired_differences.csv: the same fault maps
in every variant): does neuron-wise bounding (FitAct, neuron) beat layer-wise bounding (Clip-Act with
the FT-ClipAct search; FitAct's own post-training at layer granularity) on a ReLU6 and a GELU network?
The last line is JSON with the counts of rates where A is better, tied, worse (paired 95 % CI).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fitact_pipeline.report import Experiment, rate_stats, without_design  # noqa: E402
from fitact_pipeline.report.tables import read_csv  # noqa: E402

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


def _paired(rows: list[dict], model: str, a: str, b: str, min_rate: float) -> list[tuple[float, float, float, float]]:
    """(rate, mean, low, high) of A - B; the report lists each pair once, in either order."""
    out = []
    for r in rows:
        pair = (without_design(r["protection_a"]), without_design(r["protection_b"]))
        if r["model"] != model or float(r["rate"]) < min_rate or pair not in ((a, b), (b, a)):
            continue
        sign = 1 if pair == (a, b) else -1
        low, high = sorted((sign * float(r["ci_low"]), sign * float(r["ci_high"])))
        out.append((float(r["rate"]), sign * float(r["mean_diff"]), low, high))
    return sorted(out)


def comparisons(rows: list[dict], min_rate: float) -> tuple[list[str], dict]:
    lines = ["| model | A - B | rate | paired mean difference (points) [95 % CI] |", "|---|---|---|---|"]
    verdict: dict = {}
    for model in sorted({r["model"] for r in rows}):
        for a, b in COMPARISONS:
            picked = _paired(rows, model, a, b, min_rate)
            counts = {"better": 0, "tie": 0, "worse": 0}
            for rate, mean, low, high in picked:
                counts["better" if low > 0 else "worse" if high < 0 else "tie"] += 1
                lines.append(f"| {model} | {a} - {b} | {rate:.0e} | {100 * mean:+.1f} [{100 * low:+.1f}, {100 * high:+.1f}] |")
            if picked:
                verdict[f"{model}: {a} - {b}"] = counts
    return lines, verdict


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="mlruns/mlflow.db")
    ap.add_argument("--experiment", default="beyond_relu")
    ap.add_argument("--report-dir", default=None, help="default: outputs/figures/<experiment>")
    ap.add_argument("--min-rate", type=float, default=1e-6)
    args = ap.parse_args()
    client = MlflowClient(f"sqlite:///{Path(args.store).resolve()}")
    exp_info = client.get_experiment_by_name(args.experiment)
    if exp_info is None:
        raise SystemExit(f"no experiment {args.experiment!r} in {args.store}")
    with tempfile.TemporaryDirectory() as tmp:
        exp = Experiment(client, exp_info.experiment_id, Path(tmp))
        rates = sorted({r for j in exp.jobs for r in rate_stats(j.metrics)})
        report = Path(args.report_dir or f"outputs/figures/{args.experiment}")
        rows = read_csv(report / "paired_differences.csv")
        compared, verdict = comparisons(rows, args.min_rate)
        print("\n".join(baselines_table(exp) + [""] + runs_table(exp, rates) + [""] + compared))
    print(json.dumps(verdict))


if __name__ == "__main__":
    main()
