"""The width study of issue 25: accuracy against expected integer/sign-bit flips per conv output
channel, for one model at several widths, per bit and per word, from the MLflow runs.

    python -m fitact_pipeline -m experiment=repro_cpu_width                       # widths 0.125, 0.25, 0.5
    python -m fitact_pipeline -m experiment=paper_cpu model=vgg16_cpu protection=clipact_ft,fitact \\
        faults.rate_unit=bit,word                                                  # width 1.0
    python benchmarks/width_study.py --experiments repro_cpu_width paper_cpu

Prints, in Markdown, every (width, protection, unit, rate) with its exposure (report/width.py), the
measured mean accuracy with its 95 % CI (the campaign's bounded interval over fault maps), and the
range that the other widths' curves of the same protection (either unit) give at that exposure
(interpolated in log exposure, never extrapolated), scaled by the target's clean accuracy; and draws
the figure (retained accuracy vs exposure, one panel per protection). If the per-channel model
holds, the curves collapse and each measured CI meets its predicted range. The comparison is
descriptive: the predicted range has no sampling interval of its own.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from fitact_pipeline.report import Experiment  # noqa: E402
from fitact_pipeline.report.figures import save, width_collapse  # noqa: E402
from fitact_pipeline.report.width import curves, predict, width_points  # noqa: E402


def collect(client: MlflowClient, names: list[str], model: str, protections: list[str], workdir: Path) -> list:
    points = []
    for name in names:
        found = client.get_experiment_by_name(name)
        if found is None:
            sys.exit(f"no MLflow experiment named {name!r}")
        exp = Experiment(client, found.experiment_id, workdir)
        for job in exp.jobs:
            if job.model != model or job.protection not in protections or job.fault_model != "memory":
                continue
            space = exp.artifact(job.run_id, "fault_space.json")
            try:
                if space is None:
                    raise ValueError("it has no fault_space.json")
                points += width_points(job, space)
            except ValueError as exc:  # an older run, another format: say which, keep the others
                print(f"<!-- run {job.run_id} of {name} left out: {exc} -->")
    return points


def table(points, target: float) -> list[str]:
    pct = lambda v: "-" if v is None else f"{100 * v:.1f}"  # noqa: E731
    lines = ["| width | epochs | protection | unit | rate | flips per channel | clean % | measured % [95 % CI] | "
             "other widths give % | curves |", "|---" * 10 + "|"]
    predicted = {p.point: p for p in predict(points, target)}
    for p in sorted(points, key=lambda p: (p.width, p.epochs, p.protection, p.unit, p.rate)):
        pred = predicted.get(p)
        given = "" if pred is None else (f"{pct(pred.low)}-{pct(pred.high)}" if pred.sources else "out of range")
        lines.append(f"| {p.width:g} | {p.epochs} | {p.protection} | {p.unit} | {p.rate:.0e} | {p.exposure:.3g} | "
                     f"{100 * p.clean:.2f} | {100 * p.mean:.1f} [{100 * p.ci_low:.1f}, {100 * p.ci_high:.1f}] | "
                     f"{given} | {pred.sources if pred else ''} |")
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="mlruns/mlflow.db")
    ap.add_argument("--experiments", nargs="+", default=["repro_cpu_width", "paper_cpu"])
    ap.add_argument("--model", default="vgg16")
    ap.add_argument("--protections", nargs="+", default=["clipact", "fitact"],
                    help="protection names as tagged on the runs (clipact_ft runs are tagged clipact)")
    ap.add_argument("--target-width", type=float, default=None, help="the width predicted from the others "
                    "(default: the largest found)")
    ap.add_argument("--out", default="outputs/figures/width_study", help="folder of the figure")
    args = ap.parse_args()
    store = Path(args.store)
    if not store.exists():
        sys.exit(f"--store={args.store}: no such MLflow store (mlruns/mlflow.db after a run)")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # one bar per JSON read
    client = MlflowClient(f"sqlite:///{store.resolve()}")
    with tempfile.TemporaryDirectory() as tmp:
        points = collect(client, args.experiments, args.model, args.protections, Path(tmp))
    if not points:
        sys.exit(f"no finished {args.model} runs of {args.protections} in {args.experiments}")
    target = args.target_width if args.target_width is not None else max(p.width for p in points)
    print(f"## Width study: {args.model}, target width {target:g}\n")
    print("\n".join(table(points, target)))
    fig, _ = width_collapse(curves(points), f"{args.model}: accuracy vs expected integer/sign-bit flips per conv "
                            "channel (Q15.16 stored parameters)")
    for path in save(fig, Path(args.out), "width_study", ["png"], 150):
        print(f"\nfigure: {path}")


if __name__ == "__main__":
    main()
