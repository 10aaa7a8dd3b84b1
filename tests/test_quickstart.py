"""The quick start end to end (small overrides), asserting on what lands in MLflow."""
import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

# end-to-end: jobs, sweeps and reports in subprocesses or real MLflow stores (the slow tier)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
RATES = [1e-5, 3e-5, 1e-4, 3e-4]
TRIALS = 5
PROTECTIONS = {"none", "ranger", "clipact", "fitact"}


def run_quickstart(tmp: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fitact_pipeline", "-m", "experiment=quickstart",
           f"tracking.root={tmp}/mlruns", f"cache_dir={tmp}/cache", f"figures_dir={tmp}/figures",
           f"hydra.sweep.dir={tmp}/multirun", "train.epochs=8", "posttrain.epochs=4",
           f"campaign.trials={TRIALS}", "campaign.rates=[" + ",".join(map(str, RATES)) + "]",
           "progress_bar=false"]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def quickstart(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("quickstart")
    proc = run_quickstart(tmp)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("quickstart")
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    return tmp, client, exp, runs


def job_runs(runs):
    return {r.data.tags["protection"]: r for r in runs if r.data.tags.get("run_kind") == "job"}


def test_four_finished_runs_under_one_parent(quickstart):
    _, _, _, runs = quickstart
    jobs = job_runs(runs)
    parents = [r for r in runs if r.data.tags.get("run_kind") == "sweep"]
    assert set(jobs) == PROTECTIONS and len(runs) == 5
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    for run in jobs.values():
        assert run.info.status == "FINISHED"
        assert run.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
        assert run.data.tags["model"] == "small_cnn" and run.data.tags["dataset"] == "digits"
        assert run.data.tags["fault_format"] == "Q15.16"
        assert run.data.params["campaign.trials"] == str(TRIALS)


def test_metrics_tables_and_config_are_logged(quickstart):
    tmp, client, _, runs = quickstart
    for run in job_runs(runs).values():
        metrics = run.data.metrics
        assert metrics["clean_accuracy"] > 0.8
        for rate in RATES:
            label = f"{rate:.0e}"
            assert 0.0 <= metrics[f"acc_mean/ber_{label}"] <= 1.0
            assert metrics[f"acc_ci_low/ber_{label}"] <= metrics[f"acc_mean/ber_{label}"] <= metrics[f"acc_ci_high/ber_{label}"]
            assert metrics[f"acc_trials/ber_{label}"] == TRIALS
        path = client.download_artifacts(run.info.run_id, "trials.json", str(tmp / run.info.run_id))
        table = json.loads(Path(path).read_text())
        rows = [dict(zip(table["columns"], row)) for row in table["data"]]
        assert len(rows) == len(RATES) * TRIALS
        for rate in RATES:  # the table and the metric agree
            accs = [r["accuracy"] for r in rows if r["rate"] == rate]
            assert sum(accs) / len(accs) == pytest.approx(metrics[f"acc_mean/ber_{rate:.0e}"])
            for outcome in ("sdc", "critical"):  # SDC and critical rates beside accuracy, per trial and per rate
                values = [r[outcome] for r in rows if r["rate"] == rate]
                assert sum(values) / len(values) == pytest.approx(metrics[f"{outcome}_mean/ber_{rate:.0e}"])
        names = {a.path for a in client.list_artifacts(run.info.run_id)}
        assert {"config.yaml", "fault_space.json", "per_rate.json", "trial_faults.json"} <= names


def test_unprotected_collapses_and_fitact_protects(quickstart):
    jobs = job_runs(quickstart[3])
    none, fitact = jobs["none"].data.metrics, jobs["fitact"].data.metrics
    top = f"acc_mean/ber_{max(RATES):.0e}"
    assert none[top] <= none["clean_accuracy"] - 0.20
    mid = f"acc_mean/ber_{RATES[1]:.0e}"
    assert fitact[mid] > none[mid]


def test_fitact_bounds_shrink_within_accuracy_drop(quickstart):
    _, client, _, runs = quickstart
    run = job_runs(runs)["fitact"]
    ratio = client.get_metric_history(run.info.run_id, "posttrain/mean_bound_ratio")
    val = client.get_metric_history(run.info.run_id, "posttrain/val_acc")
    assert len(ratio) >= 2 and len(val) == len(ratio)
    assert run.data.metrics["mean_bound_ratio"] < 1.0
    drop = float(run.data.params["posttrain.max_accuracy_drop"])
    selected = int(run.data.params["posttrain.selected_epoch"])
    chosen = [m.value for m in val if m.step == selected]
    assert chosen and chosen[0] >= run.data.metrics["clean_val_accuracy"] - drop - 1e-9
    assert run.data.metrics["posttrain_overhead"] > 0


def test_paired_fault_maps_across_protections(quickstart):
    """Trial i hits the same weight bits in every protection (DESIGN §2.1 pairing)."""
    tmp, client, _, runs = quickstart
    maps = {}
    for name, run in job_runs(runs).items():
        path = client.download_artifacts(run.info.run_id, "trial_faults.json", str(tmp / ("tf" + name)))
        trials = json.loads(Path(path).read_text())["trials"]
        maps[name] = [{k: v for k, v in t["flips_per_tensor"].items() if not k.endswith(".bound")} for t in trials]
    assert maps["none"] == maps["fitact"] == maps["ranger"] == maps["clipact"]


def test_resilience_figure_written_and_logged(quickstart):
    tmp, client, _, runs = quickstart
    assert (tmp / "figures" / "quickstart" / "resilience.png").stat().st_size > 10_000
    parent = [r for r in runs if r.data.tags.get("run_kind") == "sweep"][0]
    assert "resilience.png" in {a.path for a in client.list_artifacts(parent.info.run_id)}


def test_relaunch_skips_finished_jobs(quickstart):
    tmp, client, exp, _ = quickstart
    proc = run_quickstart(tmp)
    assert proc.returncode == 0, proc.stderr[-2000:]
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    assert len([r for r in runs if r.data.tags.get("run_kind") == "job"]) == 4
    assert len([r for r in runs if r.data.tags.get("run_kind") == "sweep"]) == 1
    assert proc.stderr.count("already finished") + proc.stdout.count("already finished") == 4


def test_mlflow_server_lists_the_runs(quickstart, mlflow_server):
    tmp, _, exp, _ = quickstart
    with mlflow_server(f"sqlite:///{tmp}/mlruns/mlflow.db") as base:
        body = json.dumps({"experiment_ids": [exp.experiment_id],
                           "filter": "tags.run_kind = 'job'", "max_results": 100}).encode()
        req = urllib.request.Request(base + "/api/2.0/mlflow/runs/search", data=body,
                                     headers={"Content-Type": "application/json"})
        found = json.loads(urllib.request.urlopen(req, timeout=10).read())["runs"]
    tags = [{t["key"]: t["value"] for t in r["data"]["tags"]} for r in found]
    assert {t["protection"] for t in tags} == PROTECTIONS
    assert all(r["info"]["status"] == "FINISHED" for r in found)


def test_the_quick_start_report_has_table_1(quickstart):
    tmp, _, _, _ = quickstart
    proc = subprocess.run([sys.executable, "-m", "fitact_pipeline.report", "experiment=quickstart",
                           f"tracking_root={tmp}/mlruns", f"figures_dir={tmp}/report", "log_to_mlflow=false"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp / "report" / "quickstart" / "table1_overhead.csv").read_text().splitlines()
    assert [line.split(",")[2] for line in table[1:]] == ["fitact", "ranger", "clipact"]


def test_a_moved_checkout_reruns_nothing_and_its_report_reads_the_old_runs(tmp_path):
    """Cloning or moving the project keeps every job key: the relaunched quick start skips every
    job, and the store's artifacts (logged under the old absolute path) are found at the new one."""
    import shutil

    old, new = tmp_path / "old" / "fitact", tmp_path / "new" / "place" / "fitact"
    old.mkdir(parents=True)
    for part in ("fitact_pipeline", "conf"):
        shutil.copytree(ROOT / part, old / part, ignore=shutil.ignore_patterns("__pycache__"))
    quick = [sys.executable, "-m", "fitact_pipeline", "-m", "experiment=quickstart", "train.epochs=3",
             "posttrain.epochs=1", "campaign.trials=2", "campaign.rates=[1e-4,3e-4]", "progress_bar=false"]
    first = subprocess.run(quick, cwd=old, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    shutil.move(str(old), str(new))
    again = subprocess.run(quick, cwd=new, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    log = again.stdout + again.stderr
    assert log.count("already finished") == 4 and "Training" not in log and "loading the CPU" not in log
    report = subprocess.run([sys.executable, "-m", "fitact_pipeline.report", "experiment=quickstart",
                             "log_to_mlflow=false"], cwd=new, capture_output=True, text=True, timeout=300)
    assert report.returncode == 0, report.stderr[-2000:]
    notes = (new / "outputs" / "figures" / "quickstart" / "report_notes.md").read_text()
    assert "failed" not in notes and (new / "outputs" / "figures" / "quickstart" / "fig5_boxplots.png").exists()
    assert not (tmp_path / "old").exists() or not any((tmp_path / "old").iterdir())
