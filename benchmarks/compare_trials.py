"""Compare the per-trial accuracies of two MLflow stores: the proof that a change kept results.

    python benchmarks/compare_trials.py /tmp/before/mlruns mlruns --experiment quickstart

Runs are matched by what identifies a job's grid point (model, dataset, protection, granularity,
fault format and rates, seed, width, fault model); the job key is not used, because a change of the
key recipe must not hide a change of results. For every matched pair the `trials.json` tables are
compared row by row (rate, trial, accuracy, flips) for exact equality. Prints one line per job and
a final JSON line; exits 1 when anything differs or a job is missing on either side.

Reads the stores with MLflow only (no fitact_pipeline import), so it works across refactors.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from mlflow.tracking import MlflowClient

IDENTITY_TAGS = ("model", "dataset", "protection", "granularity", "fault_format", "fault_rates", "seed",
                 "width", "fault_model", "campaign_design", "variant", "weight_protection")


def finished_jobs(store: Path, experiment: str) -> dict[tuple, str]:
    client = MlflowClient(f"sqlite:///{(store / 'mlflow.db').resolve()}")
    exp = client.get_experiment_by_name(experiment)
    if exp is None:
        raise SystemExit(f"error: no experiment {experiment!r} in {store}")
    runs = client.search_runs([exp.experiment_id], "tags.run_kind = 'job' and attributes.status = 'FINISHED'",
                              max_results=10000, order_by=["attributes.start_time ASC"])
    # the newest finished run of a grid point wins, as in the report
    return {tuple((t, r.data.tags.get(t, "")) for t in IDENTITY_TAGS): r.info.run_id for r in runs}


def trials(store: Path, run_id: str, workdir: str) -> list[tuple]:
    client = MlflowClient(f"sqlite:///{(store / 'mlflow.db').resolve()}")
    table = json.loads(Path(client.download_artifacts(run_id, "trials.json", workdir)).read_text())
    col = {c: i for i, c in enumerate(table["columns"])}
    return sorted((float(row[col["rate"]]), int(row[col["trial"]]), float(row[col["accuracy"]]),
                   int(row[col["flips"]])) for row in table["data"])


def _relevant(key: tuple) -> tuple:
    # tags an older store does not have (added later) are left out of the match
    return tuple((t, v) for t, v in key if v != "")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("before", type=Path, help="folder holding mlflow.db (tracking.root)")
    ap.add_argument("after", type=Path)
    ap.add_argument("--experiment", default="quickstart")
    args = ap.parse_args()
    before = {_relevant(k): v for k, v in finished_jobs(args.before, args.experiment).items()}
    after_all = finished_jobs(args.after, args.experiment)
    after = {}
    for key, run_id in after_all.items():
        # match on the tags the older store knows
        known = tuple((t, v) for t, v in key if any(t == bt for b in before for bt, _ in b))
        after[_relevant(known)] = run_id
    same = differ = 0
    missing = sorted(set(before) ^ set(after), key=repr)
    with tempfile.TemporaryDirectory() as tmp:
        for key in sorted(set(before) & set(after), key=repr):
            a = trials(args.before, before[key], tmp + "/a")
            b = trials(args.after, after[key], tmp + "/b")
            label = " ".join(v for _, v in key if v)
            if a == b:
                same += 1
                print(f"identical  {label}: {len(a)} trials")
            else:
                differ += 1
                diffs = [(x, y) for x, y in zip(a, b) if x != y]
                print(f"DIFFERENT  {label}: {len(diffs)} of {len(a)} trials differ, first {diffs[:1]}"
                      + (f"; {len(a)} vs {len(b)} trials" if len(a) != len(b) else ""))
    for key in missing:
        print(f"MISSING    {' '.join(v for _, v in key if v)}: only in {'before' if key in before else 'after'}")
    print(json.dumps({"identical_jobs": same, "different_jobs": differ, "missing_jobs": len(missing)}))
    return 0 if differ == 0 and not missing and same else 1


if __name__ == "__main__":
    sys.exit(main())
