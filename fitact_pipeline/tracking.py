"""MLflow conventions: the store, one parent run per sweep, one child run per job, job keys.

Metadata lives in SQLite (`mlruns/mlflow.db`) and artifacts under `mlruns/artifacts` because MLflow
3.13+ refuses the old folder store. A fresh SQLite store initialised by several processes at once
corrupts itself, so the store and experiment are created under a file lock (and once more by the
Hydra callback before a multirun launches any job). Conventions: docs/tracking.md.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Iterator

import mlflow
from filelock import FileLock
from mlflow.entities import RunStatus
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from .faults import SAMPLER

log = logging.getLogger(__name__)

# Config parts that never change a job's numbers: excluded from its key so that e.g. turning the
# progress bar off does not re-run a finished job.
_NON_RESULT_KEYS = {"tracking", "hydra", "progress_bar", "num_workers", "work_dir", "cache_dir"}


def rate_label(rate: float) -> str:
    """The spelling of a fault rate in metric names and tables: 1e-05, 1.5e-04, 0."""
    if rate == 0:
        return "0"
    mantissa, exponent = f"{rate:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{exponent}"


def job_key(cfg: DictConfig) -> str:
    """Hash of the resolved config parts that determine a job's result."""
    def strip(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: strip(v) for k, v in sorted(node.items()) if k not in _NON_RESULT_KEYS}
        if isinstance(node, list):
            return [strip(v) for v in node]
        return node

    from .protect import PROTECTIONS

    resolved = OmegaConf.to_container(cfg, resolve=True)
    name = resolved.get("protection", {}).get("name")
    if name not in PROTECTIONS or PROTECTIONS[name].bounds_stage != "posttrain":
        resolved.pop("posttrain", None)  # only post-trained bounds depend on post-training
    # The sampler is code, not config, but it decides the fault maps and so the numbers.
    blob = json.dumps({"config": strip(resolved), "fault_sampler": SAMPLER}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


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
        client = MlflowClient(uri)
        exp = client.get_experiment_by_name(tracking_cfg.experiment)
        if exp is not None:
            return exp.experiment_id
        return client.create_experiment(tracking_cfg.experiment,
                                        artifact_location=(artifacts / tracking_cfg.experiment).as_uri())


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


def open_parent_run(tracking_cfg: DictConfig, sweep_key: str, sweep_dir: str | os.PathLike,
                    name: str) -> str:
    """Create (or reuse, when the same sweep is re-launched) the sweep's parent run."""
    exp_id = ensure_store(tracking_cfg)
    client = MlflowClient(mlflow.get_tracking_uri())
    existing = [r for r in find_runs(client, exp_id, sweep_key=sweep_key, run_kind="sweep")]
    if existing:
        run_id = existing[0].info.run_id
        client.update_run(run_id, status="RUNNING")
    else:
        run = client.create_run(exp_id, run_name=name,
                                tags={"sweep_key": sweep_key, "run_kind": "sweep"})
        run_id = run.info.run_id
    Path(sweep_dir).mkdir(parents=True, exist_ok=True)
    parent_run_file(sweep_dir).write_text(run_id)
    return run_id


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


def log_job_results(result, fault_space: dict, train_info: dict, bounds_info: dict, *,
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
    mlflow.log_metrics(metrics)
    mlflow.log_table(_per_rate_table(result), artifact_file="per_rate.json")
    mlflow.log_table({k: [t[k] for t in result.trials]
                      for k in ("rate", "trial", "accuracy", "flips", "realised_ber")}, artifact_file="trials.json")
    mlflow.log_dict({"trials": [{k: t[k] for k in ("rate", "trial", "flips_per_bit", "flips_per_tensor")}
                                for t in result.trials]}, "trial_faults.json")
    mlflow.log_dict(fault_space, "fault_space.json")
    mlflow.log_params({f"fault_space.{k}": fault_space[k] for k in ("num_tensors", "total_elements", "total_bits")})
    _log_bounds_info(bounds_info, metrics["train_time_s"])


def _per_rate_table(result) -> dict[str, list]:
    rows = sorted(result.per_rate.items())
    table: dict[str, list] = {"rate": [r for r, _ in rows]}
    for stat in rows[0][1]:
        table[stat] = [s[stat] for _, s in rows]
    return table


def _log_bounds_info(info: dict, train_time_s: float) -> None:
    """FitAct post-training curves (one step per epoch) and the post-training overhead."""
    for entry in info.get("history", []):
        mlflow.log_metrics({f"posttrain/{k}": float(v) for k, v in entry.items() if k != "epoch"},
                           step=int(entry["epoch"]))
    if "time_s" in info:
        mlflow.log_metrics({"posttrain_time_s": float(info["time_s"]),
                            "posttrain_overhead": float(info["time_s"]) / train_time_s,
                            "mean_bound_ratio": float(info["mean_bound_ratio"])})
        mlflow.log_param("posttrain.selected_epoch", info.get("selected_epoch"))
    if "thresholds" in info:
        mlflow.log_dict({k: float(v) for k, v in info["thresholds"].items()}, "clipact_thresholds.json")
