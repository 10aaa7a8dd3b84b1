"""Every setting of the Hydra launcher (``hydra/launcher=local_parallel|slurm``, ``hydra.launcher.*``)
checked before any job: joblib and submitit only look at them once the sweep has started, and answer
a bad one with a traceback (``n_jobs=0``: joblib's ValueError)."""
from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from .checks import expect_bool, expect_int, expect_number, expect_str, fail, is_int


def _n_jobs(value: Any, path: str) -> None:
    if not (is_int(value) and (value >= 1 or value == -1)):
        fail(path, value, "expected the number of parallel jobs, an integer >= 1 (or -1: one per core)")


def _pre_dispatch(value: Any, path: str) -> None:
    if is_int(value) and value >= 1:
        return
    if not (isinstance(value, str) and re.fullmatch(r"\s*(\d+\s*\*\s*)?n_jobs\s*|\s*all\s*|\s*\d+\s*", value)):
        fail(path, value, "expected an integer >= 1, 'all' or an expression such as '2*n_jobs'")


def _batch_size(value: Any, path: str) -> None:
    expect_int(value, path, 1, words=("auto",))


def _max_nbytes(value: Any, path: str) -> None:
    if value is None or (is_int(value) and value >= 0) or (isinstance(value, str) and re.fullmatch(r"\d+[KMG]?", value)):
        return
    fail(path, value, "expected null, a byte count or a size such as '1M'")


def _optional_str(value: Any, path: str) -> None:
    expect_str(value, path, allow_none=True)


def _int_at_least(minimum: int, allow_none: bool = False) -> Callable[[Any, str], None]:
    return lambda value, path: expect_int(value, path, minimum, allow_none=allow_none)


def _choice(*choices) -> Callable[[Any, str], None]:
    def check(value: Any, path: str) -> None:
        if value not in choices:
            fail(path, value, f"choose one of: {', '.join('null' if c is None else str(c) for c in choices)}")
    return check


#: the settings of each launcher (by the class its _target_ names) and their checks
RULES: dict[str, dict[str, Callable[[Any, str], None]]] = {
    "JoblibLauncher": {
        "n_jobs": _n_jobs, "backend": _choice("loky", "multiprocessing", "threading"),
        "prefer": _choice("processes", "threads", None), "require": _choice("sharedmem", None),
        "verbose": _int_at_least(0), "pre_dispatch": _pre_dispatch, "batch_size": _batch_size,
        "timeout": lambda v, p: expect_number(v, p, 0, low_open=True, allow_none=True),
        "temp_folder": _optional_str, "max_nbytes": _max_nbytes, "mmap_mode": _choice(None, "r+", "r", "w+", "c"),
    },
    "SlurmLauncher": {
        "timeout_min": _int_at_least(1), "cpus_per_task": _int_at_least(1, True), "gpus_per_node": _int_at_least(0, True),
        "tasks_per_node": _int_at_least(1), "mem_gb": _int_at_least(1, True), "nodes": _int_at_least(1),
        "array_parallelism": _int_at_least(1), "signal_delay_s": _int_at_least(0), "max_num_timeout": _int_at_least(0),
        "cpus_per_gpu": _int_at_least(1, True), "gpus_per_task": _int_at_least(0, True),
        "stderr_to_stdout": lambda v, p: expect_bool(v, p),
        **{k: _optional_str for k in ("partition", "qos", "comment", "constraint", "exclude", "gres", "account",
                                       "mem_per_gpu", "mem_per_cpu", "name", "submitit_folder")},
    },
}


def check_launcher(launcher: Mapping) -> None:
    """A one-line ConfigError for a bad ``hydra.launcher`` value, before any job."""
    kind = str(launcher.get("_target_", "")).rsplit(".", 1)[-1]
    for key, check in RULES.get(kind, {}).items():
        if key in launcher:
            check(launcher[key], f"hydra.launcher.{key}")


__all__ = ["RULES", "check_launcher"]
