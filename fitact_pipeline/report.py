"""Figures and tables built from MLflow runs (never from in-memory results, so anyone with the store
can regenerate them).

Every number drawn comes from the runs' metrics `acc_<stat>/ber_<rate>` (docs/tracking.md).
"""
from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from mlflow.tracking import MlflowClient  # noqa: E402

_RATE_METRIC = re.compile(r"^acc_(?P<stat>[a-z0-9_]+)/ber_(?P<rate>[0-9.e+-]+)$")
PROTECTION_ORDER = ("none", "ranger", "clipact", "gbrelu", "fitact")
PROTECTION_STYLE = {"none": ("tab:gray", "o"), "ranger": ("tab:orange", "s"),
                    "clipact": ("tab:blue", "^"), "gbrelu": ("tab:purple", "v"), "fitact": ("tab:green", "D")}


def rate_stats(metrics: dict[str, float]) -> dict[float, dict[str, float]]:
    """{rate: {stat: value}} from one run's metrics."""
    out: dict[float, dict[str, float]] = defaultdict(dict)
    for name, value in metrics.items():
        match = _RATE_METRIC.match(name)
        if match:
            out[float(match["rate"])][match["stat"]] = value
    return dict(out)


def curves_from_runs(runs) -> dict[tuple[str, str, str], dict[float, dict[str, float]]]:
    """Merge finished job runs into one curve per (model, dataset, protection): jobs of one rate
    each and jobs of many rates give the same curve."""
    curves: dict[tuple[str, str, str], dict[float, dict[str, float]]] = defaultdict(dict)
    for run in runs:
        if run.info.status != "FINISHED" or run.data.tags.get("run_kind") != "job":
            continue
        tags = run.data.tags
        curves[(tags["model"], tags["dataset"], tags["protection"])].update(rate_stats(run.data.metrics))
    return dict(curves)


def plot_resilience(ax, curve_by_protection: dict[str, dict[float, dict[str, float]]], title: str) -> None:
    """Mean accuracy vs fault rate (log axis), one line per protection, 95 % CI band."""
    for protection in sorted(curve_by_protection, key=lambda p: PROTECTION_ORDER.index(p)
                             if p in PROTECTION_ORDER else 99):
        points = sorted(curve_by_protection[protection].items())
        rates = [r for r, _ in points if r > 0]
        stats = [s for r, s in points if r > 0]
        color, marker = PROTECTION_STYLE.get(protection, (None, "x"))
        ax.plot(rates, [100 * s["mean"] for s in stats], marker=marker, color=color, label=protection)
        if all("ci_low" in s for s in stats):
            # The t-interval can pass 0 or 100 %; accuracy cannot, so the band is drawn clipped.
            ax.fill_between(rates, [max(0.0, 100 * s["ci_low"]) for s in stats],
                            [min(100.0, 100 * s["ci_high"]) for s in stats],
                            color=color, alpha=0.2, linewidth=0)
    ax.set_xscale("log")
    ax.set_xlabel("fault rate (bit error rate, per stored bit)")
    ax.set_ylabel("accuracy under faults (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)


def sweep_resilience_figure(client: MlflowClient, parent_run_id: str, out_dir: Path) -> Path | None:
    """The quick-start figure: the children of one sweep's parent run, one panel per model x dataset."""
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=10000)
    curves = curves_from_runs(runs)
    if not curves:
        return None
    panels = sorted({(m, d) for m, d, _ in curves})
    fig, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4.2), squeeze=False)
    for ax, (model, dataset) in zip(axes[0], panels):
        plot_resilience(ax, {p: c for (m, d, p), c in curves.items() if (m, d) == (model, dataset)},
                        f"{model} on {dataset}")
        ax.legend(title="protection", loc="lower left", fontsize=8)
    fig.tight_layout()
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "resilience.png"
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
