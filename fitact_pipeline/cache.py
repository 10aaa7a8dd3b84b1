"""Stage cache: an artefact per (stage, config hash), computed once even by parallel jobs.

Layout: ``cache_dir/<stage>/<key>/`` holds whatever ``save`` writes, plus a ``.complete`` marker
that records the SHA-256 of every file.
The artefact is written into a temporary sibling folder and renamed into place, so a reader never
sees a half-written artefact and a crash leaves only a temporary folder that the next run replaces.
A ``filelock`` lock on ``cache_dir/<stage>/<key>.lock`` makes a second process that starts while the
first is computing wait and then load instead of computing again.

A stage whose computation is long (the baseline's training) keeps its work in progress in
``cache_dir/<stage>/<key>.partial/`` (``partial_path``): named by the key, so only a job of the same
config picks it up; removed once the artefact is in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any, Callable

from filelock import FileLock
from omegaconf import DictConfig, ListConfig, OmegaConf

MARKER = ".complete"
log = logging.getLogger(__name__)


def _canonical(obj: Any) -> Any:
    """JSON-able form with a single spelling per value (OmegaConf nodes, tuples, paths, floats)."""
    if isinstance(obj, (DictConfig, ListConfig)):
        obj = OmegaConf.to_container(obj, resolve=True)
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


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.iterdir()) if p.is_file() and p.name != MARKER}


def _check(path: Path) -> str | None:
    """Why the artefact at ``path`` cannot be trusted (None: complete and intact)."""
    try:
        recorded = json.loads((path / MARKER).read_text())["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        return "its completion marker has no checksums"
    if sorted(recorded) != sorted(p.name for p in path.iterdir() if p.is_file() and p.name != MARKER):
        return "its files are not the ones its marker lists"
    bad = [name for name, digest in _digests(path).items() if recorded.get(name) != digest]
    return f"checksum mismatch of {', '.join(bad)}" if bad else None


_ABSENT = object()


def _load_trusted(path: Path, load: Callable[[Path], Any], discard: bool) -> Any:
    """``load(path)`` if the artefact is complete and intact, else _ABSENT; a bad one is reported
    (naming its path) and, when ``discard`` (we hold the lock), removed."""
    if not (path / MARKER).exists():
        return _ABSENT
    problem = _check(path)
    if problem is None:
        try:
            return load(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable artefact is recomputed
            problem = f"it cannot be loaded ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
    if discard:
        log.warning("cached artefact %s is corrupt or partial (%s): recomputing it", path, problem)
        shutil.rmtree(path, ignore_errors=True)
    return _ABSENT


def partial_path(cache_dir: str | Path, stage: str, key: str) -> Path:
    """Where a computation of ``stage``/``key`` keeps its work in progress (e.g. a training's last
    checkpoint) until the artefact is written; ``cached_stage`` removes it then."""
    return Path(cache_dir) / stage / f"{key}.partial"


def cached_stage(cache_dir: str | Path, stage: str, key: str, compute: Callable[[], Any],
                 save: Callable[[Path, Any], None], load: Callable[[Path], Any]) -> Any:
    """Return ``load(path)`` if ``cache_dir/stage/key`` is complete and intact, else compute, save
    and return it. ``save(path, artefact)`` writes files into the folder ``path``; ``load(path)``
    reads them back. The completion marker records a SHA-256 of every file, checked before each
    load: a truncated or altered artefact is recomputed with a warning, never loaded."""
    path = Path(cache_dir) / stage / key
    artefact = _load_trusted(path, load, discard=False)
    if artefact is not _ABSENT:
        return artefact
    path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(path) + ".lock"):
        # Another process may have finished while we waited for the lock.
        artefact = _load_trusted(path, load, discard=True)
        if artefact is not _ABSENT:
            return artefact
        artefact = compute()
        tmp = path.parent / f".{key}.tmp-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        save(tmp, artefact)
        (tmp / MARKER).write_text(json.dumps({"sha256": _digests(tmp)}, indent=1) + "\n")
        shutil.rmtree(path, ignore_errors=True)  # leftovers of a crashed run (no marker)
        os.replace(tmp, path)
        shutil.rmtree(partial_path(cache_dir, stage, key), ignore_errors=True)  # the artefact supersedes it
        return artefact


def is_cached(cache_dir: str | Path, stage: str, key: str) -> bool:
    path = Path(cache_dir) / stage / key
    return (path / MARKER).exists() and _check(path) is None
