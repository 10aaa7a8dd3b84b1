"""Can the jobs of a launch write their results? Checked in preflight, before any job, within seconds.

MLflow's client retries an unreachable server for minutes (urllib3's back-off schedule) and only
fails once a job has trained; a read-only local store fails when the first run is created. Both are
known before anything starts: a tracking server must answer one plain HTTP request within
``TIMEOUT_S``, and the local store's folder (or, while it does not exist yet, the folder it would be
created in) must take a file. Nothing is created by the check: a probe file in an existing folder is
removed at once.
"""
from __future__ import annotations

import os
import socket
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import Mapping

from .registry import ConfigError

TIMEOUT_S = 3.0


def check_store(tracking_cfg: Mapping, cache_dir: str | None = None, timeout: float = TIMEOUT_S,
                figures_dir: str | None = None) -> None:
    """A one-line ConfigError when the store of ``tracking_cfg`` cannot be reached or written, or the
    stage cache (``cache_dir``: baselines, profiles, bounds, job claims) or ``figures_dir`` cannot
    be written."""
    for folder, path in ((cache_dir, "cache_dir"), (figures_dir, "figures_dir")):
        if folder:
            check_writable(Path(folder), path)
    uri = tracking_cfg.get("uri")
    if uri:
        check_server(str(uri), timeout)
    else:
        check_writable(Path(str(tracking_cfg.get("root"))), "tracking.root")


def check_server(uri: str, timeout: float = TIMEOUT_S) -> None:
    """Any HTTP answer from ``<uri>/health`` (MLflow's liveness endpoint) within ``timeout`` seconds
    means a server listens; no answer, a refused connection or an unknown host is a ConfigError."""
    fix = "start the tracking server (mlflow server --host 0.0.0.0 --port <port>) or set tracking.uri=null " \
          "for the local store under tracking.root"
    try:
        with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout):
            return
    except urllib.error.HTTPError as err:
        if err.code in (401, 403):
            raise ConfigError(f"tracking.uri={uri!r} is not allowed; the server refuses access (HTTP {err.code}): "
                              "set MLFLOW_TRACKING_USERNAME/MLFLOW_TRACKING_PASSWORD or MLFLOW_TRACKING_TOKEN") from None
        return  # it answered: a server listens (a proxy may not route /health)
    except (urllib.error.URLError, socket.timeout, TimeoutError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ConfigError(f"tracking.uri={uri!r} is not allowed; no tracking server answers there within "
                          f"{timeout:g} s ({reason}); {fix}") from None


def check_writable(folder: Path, path: str) -> None:
    """``folder`` (or the nearest existing folder above it, where it would be created) takes a file."""
    folder = folder.expanduser()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise ConfigError(f"{path}='{folder}' is not allowed; '{existing}' is a file, not a folder: "
                          "choose a folder you can write")
    try:
        if existing == folder:  # a real probe: os.access ignores read-only mounts and says yes to root
            with tempfile.TemporaryFile(dir=folder):
                pass
            database = folder / "mlflow.db"
            if database.exists() and not os.access(database, os.W_OK):
                raise PermissionError(f"{database} is read-only")
        elif not os.access(existing, os.W_OK | os.X_OK):
            raise PermissionError(f"cannot create folders in '{existing}'")
    except OSError as err:
        raise ConfigError(f"{path}='{folder}' is not allowed; it cannot be written "
                          f"({getattr(err, 'strerror', None) or err}): choose a folder you can write") from None
