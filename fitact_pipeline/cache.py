"""Stage cache: an artefact per (stage, config hash), computed once even by parallel jobs.

Layout: ``cache_dir/<stage>/<key>/`` holds whatever ``save`` writes, plus a ``.complete`` marker.
The artefact is written into a temporary sibling folder and renamed into place, so a reader never
sees a half-written artefact and a crash leaves only a temporary folder that the next run replaces.
A ``filelock`` lock on ``cache_dir/<stage>/<key>.lock`` makes a second process that starts while the
first is computing wait and then load instead of computing again.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock

MARKER = ".complete"


def _canonical(obj: Any) -> Any:
    """JSON-able form with a single spelling per value (OmegaConf nodes, tuples, paths, floats)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(obj, (DictConfig, ListConfig)):
            obj = OmegaConf.to_container(obj, resolve=True)
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, dict):
        return {str(k): _canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_canonical(v) for v in obj]
    if isinstance(obj, float):
        # 1.0 and 1 configure the same thing (YAML may give either); repr keeps full precision.
        if math.isfinite(obj) and obj == int(obj):
            return int(obj)
        return repr(obj)
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, (str, int, bool)):
        return obj
    raise TypeError(f"config_hash cannot hash a {type(obj).__name__}: {obj!r}")


def config_hash(obj: Any, length: int = 16) -> str:
    """Stable hex digest of a JSON-able / OmegaConf object; dict key order does not matter."""
    text = json.dumps(_canonical(obj), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def cached_stage(cache_dir: str | Path, stage: str, key: str, compute: Callable[[], Any],
                 save: Callable[[Path, Any], None], load: Callable[[Path], Any]) -> Any:
    """Return ``load(path)`` if ``cache_dir/stage/key`` is complete, else compute, save and return it.

    ``save(path, artefact)`` writes files into the folder ``path``; ``load(path)`` reads them back.
    """
    path = Path(cache_dir) / stage / key
    if (path / MARKER).exists():
        return load(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        # Another process may have finished while we waited for the lock.
        if (path / MARKER).exists():
            return load(path)
        artefact = compute()
        tmp = path.parent / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save(tmp, artefact)
        (tmp / MARKER).write_text("ok\n")
        shutil.rmtree(path, ignore_errors=True)  # leftovers of a crashed run (no marker)
        os.replace(tmp, path)
        return artefact


def is_cached(cache_dir: str | Path, stage: str, key: str) -> bool:
    return (Path(cache_dir) / stage / key / MARKER).exists()
