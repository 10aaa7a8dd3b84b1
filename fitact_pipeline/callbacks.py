"""Hydra callbacks: create the MLflow store and the sweep's parent run before any job starts, and
draw the sweep's resilience figure when it ends.

Doing the store set-up here, in the launching process, is what keeps parallel joblib workers from
racing to initialise the same SQLite file (DESIGN.md §5).
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any

from hydra.core.hydra_config import HydraConfig
from hydra.experimental.callback import Callback
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


class MLflowSweepCallback(Callback):
    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        # Hydra sets HydraConfig for jobs only; `${hydra:runtime.cwd}` in tracking.root needs it here.
        HydraConfig.instance().set_config(config)
        key = sweep_key(config)
        name = "sweep " + " ".join(config.hydra.overrides.task) if config.hydra.overrides.task else "sweep"
        run_id = tracking.open_parent_run(config.tracking, config.cache_dir, key, config.hydra.sweep.dir, name[:250])
        log.info("MLflow parent run %s (experiment %s)", run_id, config.tracking.experiment)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        marker = tracking.parent_run_file(config.hydra.sweep.dir)
        if not marker.exists():
            return
        parent = marker.read_text().strip()
        HydraConfig.instance().set_config(config)
        from mlflow.tracking import MlflowClient
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
