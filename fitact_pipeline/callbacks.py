"""Hydra callbacks: create the MLflow store and the sweep's parent run before any job starts, and
draw the sweep's resilience figure when it ends.

Doing the store set-up here, in the launching process, is what keeps parallel joblib workers from
racing to initialise the same SQLite file (DESIGN.md §5).
"""
from __future__ import annotations

import hashlib
import json
import logging
import sys
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
from mlflow.tracking import MlflowClient
from omegaconf import DictConfig, OmegaConf

from . import tracking

log = logging.getLogger(__name__)


def sweep_key(config: DictConfig) -> str:
    """Same command line (overrides and sweeper parameters) = same sweep, so a re-launch after a
    crash reuses the parent run instead of starting a second one."""
    hydra = config.hydra
    params = hydra.sweeper.get("params")
    params = OmegaConf.to_container(params, resolve=True) if params else {}
    blob = json.dumps({"experiment": config.tracking.experiment,
                       "overrides": sorted(hydra.overrides.task), "params": params}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


#: the sweep this process opened and has not closed yet: (tracking config, cache_dir, parent run id,
#: sweep key). ``__main__`` closes it FAILED or KILLED when the sweep ends any other way than
#: on_multirun_end (a failed job, Ctrl-C, SIGTERM), so no parent is left RUNNING.
OPEN_SWEEP: dict[str, Any] = {}


class MLflowSweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra turns a callback's exception into a warning and launches the jobs anyway: a sweep
        # whose store cannot be opened must stop here instead, on one line.
        try:
            self._open(config)
        except Exception as exc:  # noqa: BLE001 - any failure to open the store stops the sweep
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            print(f"error: the sweep's MLflow parent run could not be opened in the store "
                  f"({config.tracking.get('uri') or config.tracking.root}): {reason}", file=sys.stderr)
            raise SystemExit(2) from None

    def _open(self, config: DictConfig) -> None:
        # Hydra sets HydraConfig for jobs only; `${hydra:runtime.cwd}` in tracking.root needs it here.
        HydraConfig.instance().set_config(config)
        key = sweep_key(config)
        name = "sweep " + " ".join(config.hydra.overrides.task) if config.hydra.overrides.task else "sweep"
        run_id = tracking.open_parent_run(config.tracking, config.cache_dir, key, config.hydra.sweep.dir, name[:250])
        OPEN_SWEEP.update(tracking=config.tracking, run_id=run_id, key=key)
        log.info("MLflow parent run %s (experiment %s)", run_id, config.tracking.experiment)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        marker = tracking.parent_run_file(config.hydra.sweep.dir)
        if not marker.exists():
            return
        parent = marker.read_text().strip()
        HydraConfig.instance().set_config(config)
        # the report's figures import matplotlib, slow to import: only when a sweep ends
        from .report.sweep import sweep_resilience_figure

        tracking.ensure_store(config.tracking)
        client = MlflowClient()
        out_dir = Path(config.figures_dir) / config.tracking.experiment
        try:
            path = sweep_resilience_figure(client, parent, out_dir)
            if path is not None:
                client.log_artifact(parent, str(path))
                log.info("resilience figure: %s", path)
        finally:
            client.set_terminated(parent, status="FINISHED")
            close_open_sweep(None)


def close_open_sweep(status: str | None) -> None:
    """End the sweep this process opened: its parent run gets ``status`` (FAILED, KILLED) if it is
    still RUNNING (None: it was closed already), and its live lock is released."""
    if not OPEN_SWEEP:
        return
    sweep = dict(OPEN_SWEEP)
    OPEN_SWEEP.clear()
    try:
        if status is not None:
            tracking.close_parent_run(sweep["tracking"], sweep["run_id"], status)
    finally:
        tracking.release_sweep(sweep["key"])
