"""Typed checks of config values, shared by the components that own the values (data modules,
training, post-training, campaign, faults, tracking, ...). Each raises a ConfigError whose one line
names the config path, the bad value and what is allowed."""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable, Mapping

from omegaconf import DictConfig, ListConfig, OmegaConf

from .registry import ConfigError


def fail(path: str, value: Any, allowed: str) -> None:
    raise ConfigError(f"{path}={value!r} is not allowed; {allowed}")


def is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def expect_int(value: Any, path: str, minimum: int | None = None, maximum: int | None = None,
               allow_none: bool = False, words: tuple[str, ...] = ()) -> None:
    """An integer within the bounds, or null (``allow_none``), or one of ``words`` (e.g. ``auto``)."""
    if (value is None and allow_none) or (isinstance(value, str) and value in words):
        return
    if not is_int(value) or (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        bounds = " and ".join(b for b in (f">= {minimum}" if minimum is not None else "",
                                          f"<= {maximum}" if maximum is not None else "") if b)
        others = [*words, *(["null"] if allow_none else [])]
        fail(path, value, f"expected an integer{' ' + bounds if bounds else ''}" + "".join(f" or {w}" for w in others))


def expect_number(value: Any, path: str, low: float | None = None, high: float | None = None, *,
                  low_open: bool = False, high_open: bool = False, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    ok = is_number(value) and math.isfinite(value)
    if ok and low is not None:
        ok = value > low if low_open else value >= low
    if ok and high is not None:
        ok = value < high if high_open else value <= high
    if not ok:
        lo = "" if low is None else ("(" if low_open else "[") + f"{low:g}"
        hi = "" if high is None else f"{high:g}" + (")" if high_open else "]")
        where = f" in {lo}, {hi}" if low is not None and high is not None else \
            (f" {'>' if low_open else '>='} {low:g}" if low is not None else "")
        fail(path, value, f"expected a number{where}" + (" or null" if allow_none else ""))


def expect_bool(value: Any, path: str) -> None:
    if not isinstance(value, bool):
        fail(path, value, "expected true or false")


def expect_str(value: Any, path: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, str) or not value.strip():
        fail(path, value, "expected a non-empty string" + (" or null" if allow_none else ""))


def expect_choice(value: Any, path: str, choices: Iterable[str]) -> None:
    choices = list(choices)
    if value not in choices:
        fail(path, value, f"choose one of: {', '.join(map(str, choices))}")


def expect_list(value: Any, path: str, item: Callable[[Any, str], None] | None = None,
                allow_scalar: bool = False) -> list:
    """The value as a plain list (a scalar too when ``allow_scalar``); each item checked."""
    if isinstance(value, (ListConfig, list, tuple)):
        items = list(OmegaConf.to_container(value) if isinstance(value, ListConfig) else value)
    elif allow_scalar and not isinstance(value, (DictConfig, dict)):
        items = [value]
    else:
        fail(path, value, "expected a list")
    for entry in items:
        if item is not None:
            item(entry, path)
    return items


def expect_str_item(value: Any, path: str) -> None:
    if not isinstance(value, str):
        fail(path, value, "expected a list of strings")


def check_keys(node: Mapping, path: str, allowed: Iterable[str]) -> None:
    """Refuse keys a component does not know (for configs built in Python, where Hydra's preflight
    does not see them)."""
    allowed = set(allowed)
    unknown = sorted(k for k in node if k not in allowed and not str(k).startswith("_"))
    if unknown:
        raise ConfigError(f"unknown config option '{path}.{unknown[0]}'; keys allowed under '{path}': "
                          f"{', '.join(sorted(allowed))}")
