"""`protection=proact` and `protection=fitact protection.posttrain=false` run end to end from the
command line (one job each on digits, tiny settings), into a temporary MLflow store."""
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

# end-to-end: jobs, sweeps and reports in subprocesses or real MLflow stores (the slow tier)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def run_job(tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fitact_pipeline", "experiment=quickstart", *overrides,
           f"tracking.root={tmp}/mlruns", f"cache_dir={tmp}/cache", f"figures_dir={tmp}/figures",
           f"hydra.run.dir={tmp}/run", "train.epochs=3", "campaign.trials=2", "campaign.rates=[1e-4]",
           "campaign.eval_images=100", "overhead.enabled=false", "profile_images=300", "progress_bar=false",
           "threads=1"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli19")
    for overrides in (["protection=proact", "protection.progressive.decays=[0.1]", "protection.progressive.val_images=200"],
                      ["protection=fitact", "protection.posttrain=false"]):
        proc = run_job(tmp, *overrides)
        assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("quickstart")
    found = [r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("run_kind") == "job"]
    return client, {(r.data.tags["protection"], r.data.params.get("protection.posttrain")): r for r in found}


def test_proact_job_logs_its_progressive_training(runs):
    client, by = runs
    run = by[("proact", None)]
    assert run.info.status == "FINISHED" and "acc_mean/ber_1e-04" in run.data.metrics
    steps = client.get_metric_history(run.info.run_id, "progressive/val_acc")
    assert len(steps) >= 2 and run.data.metrics["mean_bound_ratio"] <= 1.0
    assert "posttrain_time_s" in run.data.metrics


def test_fitact_without_posttraining_keeps_the_profiled_bounds(runs):
    client, by = runs
    run = by[("fitact", "False")]
    assert run.info.status == "FINISHED" and "acc_mean/ber_1e-04" in run.data.metrics
    assert "mean_bound_ratio" not in run.data.metrics  # no bounds stage ran
    assert not client.get_metric_history(run.info.run_id, "posttrain/val_acc")
