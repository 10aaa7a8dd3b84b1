"""Where the settings and their defaults are declared: the YAML files of conf/.

Defaults live there only. The Python API reads the same files as a Hydra job (``group_config``),
so a default changed in conf/ changes both, and no Python dict repeats it.
"""
from __future__ import annotations

from pathlib import Path

from omegaconf import OmegaConf

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def group_options(group: str) -> list[str]:
    """The options of a config group (the file names of conf/<group>/)."""
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def group_config(group: str, name: str) -> dict:
    """conf/<group>/<name>.yaml as a plain dict, its Hydra ``defaults`` list dropped (a file that
    extends another is read with it: the base first, this file on top). Interpolations of the
    whole job config (``${progress_bar}``) stay as written: they have no value outside a job."""
    path = CONF_DIR / group / f"{name}.yaml"
    if not path.exists():
        raise ValueError(f"unknown {group} {name!r}; choose one of: {', '.join(group_options(group))}")
    node = OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    out: dict = {}
    for base in node.pop("defaults", None) or []:
        if isinstance(base, str) and base != "_self_":
            out = _merge(out, group_config(group, base))
    return _merge(out, node)


def _merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out
