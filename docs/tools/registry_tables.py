"""Regenerate the docs' lists of protections, number formats, fault-space target kinds and fault
models from the registries, so the docs never keep a second list of the same names.

    python docs/tools/registry_tables.py           # rewrite the blocks in docs/*.md
    python docs/tools/registry_tables.py --check   # exit 1 if a block is out of date (tests run this)

A block is the text between `<!-- registry: NAME -->` and `<!-- /registry -->` in a docs file.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

BLOCK = re.compile(r"(<!-- registry: (?P<name>[a-z_]+) -->\n)(?P<body>.*?)(<!-- /registry -->)", re.S)


def _table(headers: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    cells = [[c.replace("|", "\\|") for c in r] for r in rows]  # a | inside a cell would split it
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in cells]) + "\n"


def tables() -> dict[str, str]:
    from fitact_pipeline.faults import FAULT_MODELS, FORMATS, TARGET_KINDS
    from fitact_pipeline.faults.designs import DESIGNS
    from fitact_pipeline.faults.units import RATE_UNITS
    from fitact_pipeline.models import MODELS
    from fitact_pipeline.models.sources import SOURCES
    from fitact_pipeline.protect import ACTIVATIONS, PROTECTIONS
    from fitact_pipeline.protect.weights import WEIGHT_PROTECTIONS
    from torch.nn import functional as F

    return {
        "protections": _table(
            ["protection", "module", "f(x) at one neuron, bound b", "config keys", "default granularity",
             "bounds stage"],
            [[f"`{n}`", f"`{p.activation.__name__}`" if p.activation else "`nn.ReLU`", p.summary,
              ", ".join(f"`{k}`" for k in p.config_keys), p.default_granularity, p.bounds_stage]
             for n, p in PROTECTIONS.items()]),
        "weight_protections": _table(["`weight_protection.name`", "what a layer reads", "config keys"],
                                     [[f"`{n}`", w.summary, ", ".join(f"`{k}`" for k in w.config_keys) or "-"]
                                      for n, w in WEIGHT_PROTECTIONS.items()]),
        "formats": _table(["`faults.fmt`", "format", "family"],
                          [[f"`{n}`", f.summary, f.family] for n, f in FORMATS.items()]),
        "targets": _table(["`faults.targets` kind", "tensors"],
                          [[f"`{n}`", k.summary + (f" ({k.family} formats only)" if k.family else "")]
                           for n, k in TARGET_KINDS.items()]),
        "designs": _table(["`campaign.design`", "trial i evaluates", "what a trial's accuracy is"],
                          [[f"`{n}`", d.summary, d.trial_meaning] for n, d in DESIGNS.items()]),
        "fault_models": _table(["`faults.model`", "faults", "`faults.rate_unit` (first: auto)"],
                               [[f"`{n}`", m.summary, ", ".join(m.rate_units)] for n, m in FAULT_MODELS.items()]),
        "rate_units": _table(["`faults.rate_unit`", "what the rate counts"],
                             [[f"`{n}`", u.summary] for n, u in RATE_UNITS.items()]),
        "activations": _table(
            ["kind", "modules (and functional forms)", "g(x)", "lower bound", "natural cap"],
            [[f"`{n}`", ", ".join([f"`nn.{c.__name__}`" for c in k.modules] + [f"`F.{f.__name__}`" for f in k.functions
                                                                                if getattr(F, f.__name__, None) is f]),
              k.summary, "profiled minimum" + (" (>= floor)" if k.floor else "") if k.lower else "-",
              f"{k.cap:g}" if k.cap is not None else "-"] for n, k in ACTIVATIONS.items()]),
        "models": _table(["`model.name`", "what", "keys"],
                         [[f"`{n}`", "registry model (`models/`)", "`width`"] for n in MODELS]
                         + [[f"`{n}`", s.summary + f"; install: {s.install}", ", ".join(f"`{k}`" for k in ("label", *s.keys))]
                            for n, s in SOURCES.items()]),
    }


def update(check: bool) -> list[str]:
    """Rewrite (or, with check, only compare) every block; returns the blocks that were out of date."""
    generated, stale = tables(), []
    for path in sorted((ROOT / "docs").glob("*.md")):
        text = path.read_text()

        def fill(m: re.Match) -> str:
            if m["name"] not in generated:
                raise SystemExit(f"{path}: unknown registry block {m['name']!r}; known: {', '.join(generated)}")
            if m["body"] != generated[m["name"]]:
                stale.append(f"{path.relative_to(ROOT)}: {m['name']}")
            return m.group(1) + generated[m["name"]] + m.group(4)

        new = BLOCK.sub(fill, text)
        if new != text and not check:
            path.write_text(new)
    return stale


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--check", action="store_true")
    stale = update(ap.parse_args().check)
    for line in stale:
        print(("out of date: " if "--check" in sys.argv else "updated: ") + line)
    sys.exit(1 if stale and "--check" in sys.argv else 0)
