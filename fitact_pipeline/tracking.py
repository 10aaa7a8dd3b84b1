"""MLflow conventions: the store, one parent run per sweep, one child run per job, job keys.

Metadata lives in SQLite (`mlruns/mlflow.db`) and artifacts under `mlruns/artifacts` because MLflow
3.13+ refuses the old folder store. A fresh SQLite store initialised by several processes at once
corrupts itself, so the store and experiment are created under a file lock (and once more by the
Hydra callback before a multirun launches any job). Conventions: docs/tracking.md.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
from pathlib import Path
from typing import Any, Iterator

import mlflow
from filelock import FileLock, Timeout
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig

from .checks import check_keys, expect_bool, expect_str, fail
from .protect.bounds_stages import BOUNDS_STAGES, BoundsStage

log = logging.getLogger(__name__)

def check_tracking_config(cfg) -> None:
    """A one-line ConfigError for a bad ``tracking`` value, before any work."""
    check_keys(cfg, "tracking", ("root", "experiment", "resume", "uri", "label"))
    expect_str(cfg.get("root"), "tracking.root")
    expect_str(cfg.get("experiment"), "tracking.experiment")
    expect_bool(cfg.get("resume", True), "tracking.resume")
    expect_str(cfg.get("label"), "tracking.label", allow_none=True)
    uri = cfg.get("uri")
    expect_str(uri, "tracking.uri", allow_none=True)
    if uri is not None and not str(uri).startswith(("http://", "https://")):
        fail("tracking.uri", uri, "expected a tracking server address http(s)://host:port, or null for the "
             "local store under tracking.root")


def rate_label(rate: float) -> str:
    """The spelling of a fault rate in metric names and tables: 1e-05, 1.5e-04, 0."""
    if rate == 0:
        return "0"
    mantissa, exponent = f"{rate:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"


def store_paths(tracking_cfg: DictConfig) -> tuple[str, Path]:
    root = Path(tracking_cfg.root).resolve()
    return f"sqlite:///{root / 'mlflow.db'}", root / "artifacts"


def ensure_store(tracking_cfg: DictConfig) -> str:
    """Create the store and experiment once (under a lock); return the experiment id.

    Sets the tracking URI of this process: joblib workers are reused between jobs, so every job
    calls this rather than trusting global state left by a previous one."""
    if tracking_cfg.get("uri"):
        # A tracking server (several machines): it serialises store access and owns artifacts.
        mlflow.set_tracking_uri(tracking_cfg.uri)
        client = MlflowClient(tracking_cfg.uri)
        exp = client.get_experiment_by_name(tracking_cfg.experiment)
        return exp.experiment_id if exp else client.create_experiment(tracking_cfg.experiment)
    uri, artifacts = store_paths(tracking_cfg)
    root = Path(tracking_cfg.root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(uri)
    with FileLock(str(root / ".store.lock")):
        relocate_artifacts(root)
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(tracking_cfg.experiment)
        if exp is not None:
            return exp.experiment_id
        return client.create_experiment(tracking_cfg.experiment,
                                        artifact_location=(artifacts / tracking_cfg.experiment).as_uri())


def relocate_artifacts(root: Path) -> int:
    """Point the artifact locations of a moved (or copied) store at its new place.

    MLflow keeps every experiment's and run's artifact location as an absolute file URI; after the
    checkout moves they would name the old folder, so new runs would write there and the report
    could not read the old ones. Rewrites the prefix of every location that ends in the expected
    ``artifacts/<experiment>``; returns how many experiments moved."""
    db = root / "mlflow.db"
    if not db.exists():
        return 0
    artifacts_uri = (root / "artifacts").as_uri()
    moved = 0
    with contextlib.closing(sqlite3.connect(db, timeout=60)) as con, con:
        for exp_id, name, location in con.execute("SELECT experiment_id, name, artifact_location FROM experiments"):
            expected = (root / "artifacts" / name).as_uri()
            suffix = expected[len(artifacts_uri):]
            if not location or location == expected or not location.endswith(suffix):
                continue
            old = location[: len(location) - len(suffix)]
            con.execute("UPDATE experiments SET artifact_location = ? WHERE experiment_id = ?", (expected, exp_id))
            con.execute("UPDATE runs SET artifact_uri = ? || substr(artifact_uri, ?) "
                        "WHERE experiment_id = ? AND substr(artifact_uri, 1, ?) = ?",
                        (artifacts_uri, len(old) + 1, exp_id, len(old), old))
            moved += 1
    if moved:
        log.warning("MLflow store %s was moved: artifact locations of %d experiment(s) now point here", root, moved)
    return moved


def claims_dir(tracking_cfg: DictConfig, cache_dir: str) -> Path:
    """Where job claims live: beside the local store, or (tracking server) in the stage cache, which
    every machine of a cluster sweep shares anyway."""
    folder = Path(cache_dir) / "claims" if tracking_cfg.get("uri") else Path(tracking_cfg.root) / ".claims"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@contextlib.contextmanager
def claim(tracking_cfg: DictConfig, cache_dir: str, key: str) -> Iterator[None]:
    """Hold a job's key while the job runs. A second launcher of the same job waits here, then
    finds the finished run and skips it (or runs it, if the first failed). The claim is an OS file
    lock, released when its process ends however it ends: a killed launcher's claim expires."""
    lock = FileLock(str(claims_dir(tracking_cfg, cache_dir) / f"{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        log.info("job %s is running in another launcher: waiting for it", key)
        lock.acquire()
    try:
        yield
    finally:
        lock.release()


def find_runs(client: MlflowClient, experiment_id: str, **tags: str) -> list:
    query = " and ".join(f"tags.{k} = '{v}'" for k, v in tags.items())
    return client.search_runs([experiment_id], filter_string=query, max_results=10000)


def finished_run(client: MlflowClient, experiment_id: str, key: str):
    runs = [r for r in find_runs(client, experiment_id, job_key=key) if r.info.status == "FINISHED"]
    return runs[0] if runs else None


def retire_unfinished(client: MlflowClient, experiment_id: str, key: str) -> int:
    """Mark runs of this job left RUNNING by a killed process as KILLED, so a re-launch leaves one
    live run per grid point. Returns how many were retired."""
    stale = [r for r in find_runs(client, experiment_id, job_key=key) if r.info.status == "RUNNING"]
    for run in stale:
        client.set_terminated(run.info.run_id, status="KILLED")
    return len(stale)


def parent_run_file(sweep_dir: str | os.PathLike) -> Path:
    return Path(sweep_dir) / "mlflow_parent_run_id"


def open_parent_run(tracking_cfg: DictConfig, cache_dir: str, sweep_key: str, sweep_dir: str | os.PathLike,
                    name: str) -> str:
    """Create (or reuse, when the same sweep is re-launched, also concurrently) the sweep's parent run.
    The launcher holds the sweep's live lock until it ends (``release_sweep``); runs left RUNNING by
    processes that died are marked KILLED first."""
    exp_id = ensure_store(tracking_cfg)
    client = MlflowClient(mlflow.get_tracking_uri())
    hold_sweep(tracking_cfg, cache_dir, sweep_key)  # before the parent is RUNNING: never seen dead
    retire_dead_runs(client, exp_id, tracking_cfg, cache_dir)
    with claim(tracking_cfg, cache_dir, f"sweep-{sweep_key}"):
        existing = find_runs(client, exp_id, sweep_key=sweep_key, run_kind="sweep")
        if existing:
            run_id = existing[0].info.run_id
            client.update_run(run_id, status="RUNNING")
        else:
            run_id = client.create_run(exp_id, run_name=name, tags={"sweep_key": sweep_key, "run_kind": "sweep"}).info.run_id
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    parent_run_file(sweep_dir).write_text(run_id)
    return run_id


_LIVE: dict[str, FileLock] = {}  # sweep key -> the live lock this process holds


def _live_lock_path(tracking_cfg: DictConfig, cache_dir: str, sweep_key: str, pid: int | str) -> Path:
    return claims_dir(tracking_cfg, cache_dir) / f"sweep-live-{sweep_key}-{pid}.lock"


def hold_sweep(tracking_cfg: DictConfig, cache_dir: str, sweep_key: str) -> None:
    """Mark this process as the live launcher of a sweep: an OS lock, released however it ends."""
    if sweep_key not in _LIVE:
        lock = FileLock(str(_live_lock_path(tracking_cfg, cache_dir, sweep_key, os.getpid())))
        lock.acquire(timeout=0)
        _LIVE[sweep_key] = lock


def release_sweep(sweep_key: str) -> None:
    lock = _LIVE.pop(sweep_key, None)
    if lock is not None:
        lock.release()
        Path(lock.lock_file).unlink(missing_ok=True)


def sweep_is_live(tracking_cfg: DictConfig, cache_dir: str, sweep_key: str) -> bool:
    """Whether some process still holds a live lock of this sweep (its own locks count)."""
    if sweep_key in _LIVE:
        return True
    for path in claims_dir(tracking_cfg, cache_dir).glob(f"sweep-live-{sweep_key}-*.lock"):
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            return True
        lock.release()
        path.unlink(missing_ok=True)  # its launcher is gone
    return False


def _claim_free(tracking_cfg: DictConfig, cache_dir: str, key: str) -> bool:
    """Nobody holds the job's claim: a job that holds none is not running anywhere."""
    lock = FileLock(str(claims_dir(tracking_cfg, cache_dir) / f"{key}.lock"))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return False
    lock.release()
    return True


def retire_dead_runs(client: MlflowClient, experiment_id: str, tracking_cfg: DictConfig, cache_dir: str) -> int:
    """Mark runs left RUNNING by a process that was killed as KILLED: sweep parents whose launcher
    holds no live lock, and job runs whose job holds no claim (a job claims its key before its run
    exists). ``retire_unfinished`` does the same for one job key when that job runs again. Returns
    how many were retired."""
    retired = 0
    for run in client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'", max_results=10000):
        tags = run.data.tags
        if tags.get("run_kind") == "sweep":
            dead = not sweep_is_live(tracking_cfg, cache_dir, tags.get("sweep_key", ""))
        else:
            dead = tags.get("run_kind") == "job" and _claim_free(tracking_cfg, cache_dir, tags.get("job_key", ""))
        if dead:
            client.set_terminated(run.info.run_id, status="KILLED")
            retired += 1
    if retired:
        log.warning("%d run(s) left RUNNING by a process that ended were marked KILLED", retired)
    return retired


def close_parent_run(tracking_cfg: DictConfig, run_id: str, status: str) -> None:
    """End a sweep's parent run (FINISHED, FAILED or KILLED) if it is still RUNNING."""
    ensure_store(tracking_cfg)
    client = MlflowClient(mlflow.get_tracking_uri())
    if client.get_run(run_id).info.status == "RUNNING":
        client.set_terminated(run_id, status=status)


@contextlib.contextmanager
def job_run(tracking_cfg: DictConfig, run_name: str, tags: dict[str, str],
            parent_run_id: str | None) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run for one job. On an exception the run ends FAILED and the error is re-raised;
    what was logged before the failure stays in the store."""
    exp_id = ensure_store(tracking_cfg)
    client = MlflowClient(mlflow.get_tracking_uri())
    all_tags = dict(tags, run_kind="job")
    if parent_run_id:
        all_tags["mlflow.parentRunId"] = parent_run_id
    run = client.create_run(exp_id, run_name=run_name, tags=all_tags)
    try:
        with mlflow.start_run(run_id=run.info.run_id) as active:
            yield active
    except BaseException:
        client.set_terminated(run.info.run_id, status=RunStatus.to_string(RunStatus.FAILED))
        raise


def flatten(cfg: Any, prefix: str = "") -> dict[str, str]:
    """Flatten a config into MLflow params (`a.b.c` -> value); values are cut to MLflow's limit."""
    out: dict[str, str] = {}
    if isinstance(cfg, dict):
        for k, v in cfg.items():
            out.update(flatten(v, f"{prefix}{k}."))
    else:
        out[prefix[:-1]] = str(cfg)[:6000]
    return out


def log_job_results(result, fault_space: dict, train_info: dict, bounds_info: dict, *, stage: str,
                    float_accuracy: float, clean_val_accuracy: float, campaign_time_s: float) -> None:
    """Log a finished campaign into the active run, named so the MLflow UI compares resilience
    directly: `acc_mean/ber_1e-05` is the mean accuracy at that rate (docs/tracking.md)."""
    metrics = {"clean_accuracy": result.clean_accuracy, "float_accuracy": float_accuracy,
               "clean_val_accuracy": clean_val_accuracy, "campaign_time_s": campaign_time_s,
               "train_time_s": float(train_info.get("train_time_s", float("nan")))}
    for rate, summary in result.per_rate.items():
        metrics.update({f"acc_{stat}/ber_{rate_label(rate)}": float(v) for stat, v in summary.items()})
    if len(result.per_rate) == 1:  # one rate per job: plain names let the UI chart across jobs
        metrics.update({f"acc_{stat}": float(v) for stat, v in next(iter(result.per_rate.values())).items()})
    metrics.update(outcome_metrics(getattr(result, "outcomes", {})))
    mlflow.log_metrics(metrics)
    mlflow.log_table(_per_rate_table(result), artifact_file="per_rate.json")
    if getattr(result, "ak_table", None):  # the conditioned design: any rate can be asked afterwards
        mlflow.log_dict(result.ak_table, "conditioned_ak.json")
    columns = TRIAL_COLUMNS + tuple(k for k in OUTCOME_TRIAL_COLUMNS if result.trials and k in result.trials[0])
    mlflow.log_table({k: [t[k] for t in result.trials] for k in columns}, artifact_file="trials.json")
    mlflow.log_dict({"trials": [{k: t[k] for k in ("rate", "trial", "flips_per_bit", "flips_per_tensor")}
                                for t in result.trials]}, "trial_faults.json")
    mlflow.log_dict(fault_space, "fault_space.json")
    mlflow.set_tag("rate_unit", fault_space.get("rate_unit", "bit"))  # what the rates count (faults/units.py)
    mlflow.log_params({f"fault_space.{k}": fault_space[k] for k in ("num_tensors", "total_elements", "total_bits")})
    _log_bounds_info(BOUNDS_STAGES[stage], bounds_info, metrics["train_time_s"])


TRIAL_COLUMNS = ("rate", "trial", "accuracy", "images", "faults", "flips", "realised_ber")
#: per trial, beside its accuracy: the SDC, critical and wrong-to-right rates (faults/outcomes.py)
OUTCOME_TRIAL_COLUMNS = ("sdc", "critical", "wrong_to_right", "wrong_to_right_count")
#: what is logged of each outcome's per-rate statistics (metrics ``sdc_mean/ber_1e-05``, ...): the
#: interval is the bounded one (stats.summarize), also under its ``ci_bounded_*`` names, which tell a
#: reader it is not the t-interval that runs before it logged as ci_low/ci_high
OUTCOME_STATS = ("mean", "std", "ci_low", "ci_high", "ci_halfwidth", "ci_bounded_low", "ci_bounded_high")


def outcome_metrics(outcomes: dict) -> dict[str, float]:
    """``<outcome>_<stat>/ber_<rate>`` for each rate's SDC, critical and wrong-to-right statistics."""
    return {f"{name}_{stat}/ber_{rate_label(rate)}": float(summary[stat])
            for rate, per_outcome in outcomes.items() for name, summary in per_outcome.items()
            for stat in OUTCOME_STATS}


def _per_rate_table(result) -> dict[str, list]:
    rows = sorted(result.per_rate.items())
    table: dict[str, list] = {"rate": [r for r, _ in rows]}
    for stat in rows[0][1]:
        table[stat] = [s[stat] for _, s in rows]
    outcomes = getattr(result, "outcomes", {})
    for name in next(iter(outcomes.values()), {}):  # beside accuracy: sdc_mean, sdc_ci_low, ...
        for stat in OUTCOME_STATS:
            table[f"{name}_{stat}"] = [outcomes[rate][name][stat] for rate, _ in rows]
    return table


def _log_bounds_info(stage: BoundsStage, info: dict, train_time_s: float) -> None:
    """What the bounds stage declares it logs (protect/bounds_stages.py): its per-epoch curves as
    ``<curves>/<k>``, one step per epoch (FitAct's post-training: loss, val_acc and the diagnostics of
    protect/bound_training.py; ProAct's progressive training, step = its running epoch count over
    every site), its metrics (training time, the kept bounds' ratio), params and artifacts."""
    if not info:  # the stage did not run (a cached job's info is the stage's own record)
        return
    for entry in info.get("history", []) if stage.curves else []:
        mlflow.log_metrics({f"{stage.curves}/{k}": float(v) for k, v in entry.items()
                            if k != "epoch" and isinstance(v, (int, float)) and not isinstance(v, bool)},
                           step=int(entry["epoch"]))
    if stage.metrics(info, train_time_s):
        mlflow.log_metrics(stage.metrics(info, train_time_s))
    if stage.params(info):
        mlflow.log_params(stage.params(info))
    for name, table in stage.artifacts(info).items():
        mlflow.log_dict(table, name)
