"""Sweeps: parallel workers on a fresh store, crash + re-launch, launcher configs that compose."""
import contextlib
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from hydra import compose, initialize_config_dir
from mlflow.tracking import MlflowClient

from fitact_pipeline.validate import CONF_DIR


# end-to-end: jobs, sweeps and reports in subprocesses or real MLflow stores (the slow tier)
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent


def sweep_cmd(tmp: Path, *overrides: str) -> list[str]:
    return [sys.executable, "-m", "fitact_pipeline", "-m", "experiment=quickstart",
            f"tracking.root={tmp}/mlruns", f"cache_dir={tmp}/cache", f"figures_dir={tmp}/figures",
            f"hydra.sweep.dir={tmp}/multirun", "train.epochs=3", "progress_bar=false",
            "tracking.experiment=sweeps", *overrides]


def runs_of(tmp: Path):
    client = MlflowClient(f"sqlite:///{tmp}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name("sweeps")
    return client.search_runs([exp.experiment_id], max_results=1000) if exp else []


def finished_jobs_read_only(tmp: Path) -> int:
    """Finished job runs, read with plain sqlite in read-only mode: an MlflowClient would run the
    store's schema migrations and race the sweep that is creating the store."""
    db = tmp / "mlruns" / "mlflow.db"
    if not db.exists():
        return 0
    try:
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)) as con:
            return con.execute("SELECT COUNT(*) FROM runs r JOIN tags t ON t.run_uuid = r.run_uuid "
                               "WHERE t.key = 'run_kind' AND t.value = 'job' AND r.status = 'FINISHED'"
                               ).fetchone()[0]
    except sqlite3.Error:  # tables not created yet, or locked for a moment
        return 0


def test_parallel_sweep_on_fresh_store(tmp_path):
    proc = subprocess.run(sweep_cmd(tmp_path, "hydra/launcher=local_parallel", "hydra.launcher.n_jobs=2",
                                    "protection=none,ranger", "campaign.rates=1e-5,1e-4", "campaign.trials=3"),
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "locked" not in proc.stderr.lower()
    runs = runs_of(tmp_path)
    parents = [r for r in runs if r.data.tags.get("run_kind") == "sweep"]
    jobs = [r for r in runs if r.data.tags.get("run_kind") == "job"]
    assert len(parents) == 1 and len(jobs) == 4
    assert all(r.info.status == "FINISHED" for r in runs)
    assert {r.data.tags["mlflow.parentRunId"] for r in jobs} == {parents[0].info.run_id}
    grid = {(r.data.tags["protection"], r.data.tags["fault_rates"]) for r in jobs}
    assert grid == {(p, r) for p in ("none", "ranger") for r in ("1e-05", "1e-04")}
    # Both workers needed the same baseline: it was trained once (one cache entry).
    assert len(list((tmp_path / "cache" / "baseline").glob("*/model.pt"))) == 1


def test_killed_sweep_relaunch_finishes_only_what_is_missing(tmp_path):
    # Enough trials that a job lasts seconds (the poll below must see the sweep mid-way).
    overrides = ("protection=none", "campaign.rates=1e-6,3e-6,1e-5,3e-5", "campaign.trials=1000")
    log = tmp_path / "first_launch.log"
    launcher = subprocess.Popen(sweep_cmd(tmp_path, *overrides), cwd=ROOT, stdout=subprocess.DEVNULL,
                                stderr=log.open("w"), start_new_session=True)
    deadline = time.time() + 400
    finished_before = 0
    while time.time() < deadline and launcher.poll() is None:
        time.sleep(0.5)
        finished_before = finished_jobs_read_only(tmp_path)
        if finished_before:
            break
    assert finished_before and launcher.poll() is None, (
        f"sweep ended (rc={launcher.poll()}) before it could be killed:\n{log.read_text()[-3000:]}")
    os.killpg(launcher.pid, signal.SIGKILL)
    launcher.wait()
    first_ids = {r.info.run_id for r in runs_of(tmp_path)
                 if r.data.tags.get("run_kind") == "job" and r.info.status == "FINISHED"}
    assert 1 <= len(first_ids) < 4

    proc = subprocess.run(sweep_cmd(tmp_path, *overrides), cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    jobs = [r for r in runs_of(tmp_path) if r.data.tags.get("run_kind") == "job"]
    finished = [r for r in jobs if r.info.status == "FINISHED"]
    rates = sorted(r.data.tags["fault_rates"] for r in finished)
    assert rates == ["1e-05", "1e-06", "3e-05", "3e-06"]  # exactly one finished run per grid point
    assert first_ids <= {r.info.run_id for r in finished}  # jobs done before the kill were not re-run
    assert all(r.info.status in ("FINISHED", "KILLED") for r in jobs)
    assert len([r for r in runs_of(tmp_path) if r.data.tags.get("run_kind") == "sweep"]) == 1


def test_launcher_configs_compose():
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        slurm = compose("config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
        local = compose("config", overrides=["hydra/launcher=local_parallel"], return_hydra_config=True)
    assert slurm.hydra.launcher._target_.endswith("SlurmLauncher")
    assert slurm.hydra.launcher.gpus_per_node == 1
    assert local.hydra.launcher._target_.endswith("JoblibLauncher") and local.hydra.launcher.n_jobs == 2


EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))


def test_every_experiment_config_composes_and_passes_preflight():
    from fitact_pipeline.validate import preflight

    assert {"quickstart", "repro_cpu", "repro_cpu_fig1", "paper_cifar10", "paper_cifar100"} <= set(EXPERIMENTS)
    for name in EXPERIMENTS:
        preflight(["-m", f"experiment={name}"])
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose("config", overrides=[f"experiment={name}"], return_hydra_config=True)
        assert cfg.tracking.experiment == name
        assert cfg.hydra.sweeper.params, name  # every published setting is a sweep


def test_two_identical_sweeps_launched_together_run_each_job_once(tmp_path):
    """Each job claims its key before it starts: the second launcher waits for a job the first is
    running, then finds its finished run and skips it. One finished run per job key, one parent."""
    overrides = ("protection=none,ranger", "campaign.rates=1e-5,1e-4", "campaign.trials=20")
    logs = [tmp_path / f"launcher{i}.log" for i in (1, 2)]
    launchers = [subprocess.Popen(sweep_cmd(tmp_path, *overrides), cwd=ROOT, stdout=log.open("w"),
                                  stderr=subprocess.STDOUT) for log in logs]
    for launcher, log in zip(launchers, logs):
        assert launcher.wait(timeout=900) == 0, log.read_text()[-3000:]
    runs = runs_of(tmp_path)
    jobs = [r for r in runs if r.data.tags.get("run_kind") == "job"]
    keys = [r.data.tags["job_key"] for r in jobs if r.info.status == "FINISHED"]
    assert len(keys) == len(set(keys)) == 4 and len(jobs) == 4
    assert len([r for r in runs if r.data.tags.get("run_kind") == "sweep"]) == 1
    skipped = sum(log.read_text().count("already finished") for log in logs)
    assert skipped == 4  # every job ran in one launcher and was skipped by the other


def test_submitit_sweep_against_a_tracking_server(tmp_path, mlflow_server):
    """The cluster path for real: submitit's local executor (the machinery of the SLURM launcher)
    and an MLflow server: parent run, children under it, the sweep figure, and a relaunch that
    resumes (skips every finished job)."""
    overrides = ("hydra/launcher=submitit_local", "protection=none,fitact", "campaign.rates=[1e-4,3e-4]",
                 "campaign.trials=2", "posttrain.epochs=1")
    with mlflow_server(f"sqlite:///{tmp_path}/server.db", "--artifacts-destination",
                       str(tmp_path / "server_artifacts")) as uri:
        cmd = sweep_cmd(tmp_path, *overrides, f"tracking.uri={uri}")
        first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert first.returncode == 0, first.stderr[-3000:]
        assert "raised" not in first.stderr, first.stderr[-3000:]  # no callback warning
        again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
        assert again.returncode == 0, again.stderr[-3000:]
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name("sweeps")
        runs = client.search_runs([exp.experiment_id], max_results=100)
    parents = [r for r in runs if r.data.tags.get("run_kind") == "sweep"]
    jobs = [r for r in runs if r.data.tags.get("run_kind") == "job"]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert sorted(r.data.tags["protection"] for r in jobs) == ["fitact", "none"]
    assert all(r.info.status == "FINISHED" and r.data.tags["mlflow.parentRunId"] == parents[0].info.run_id
               for r in jobs)
    submitit_logs = "".join(p.read_text() for p in (tmp_path / "multirun").rglob("*_log.out"))
    assert submitit_logs.count("already finished") == 2  # the relaunch resumed: both jobs skipped
    assert (tmp_path / "figures" / "sweeps" / "resilience.png").exists()


def test_a_sweep_without_sweeper_params_gets_its_parent_run():
    """The callback failed (`Input cfg is not an OmegaConf config object`) when the sweep came only
    from the command line, so the experiment had no hydra.sweeper.params."""
    from omegaconf import OmegaConf

    from fitact_pipeline.callbacks import sweep_key

    cfg = OmegaConf.create({"tracking": {"experiment": "x"},
                            "hydra": {"sweeper": {"params": None}, "overrides": {"task": ["protection=none,fitact"]}}})
    assert sweep_key(cfg) == sweep_key(cfg) and len(sweep_key(cfg)) == 16
