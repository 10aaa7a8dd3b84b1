"""The paper's figures, drawn from data already read out of MLflow (runs.py does the reading).

Every function takes plain data, draws, and returns exactly the numbers it drew, so tests can
compare a figure with the runs it came from without reading pixels.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from matplotlib import cbook  # noqa: E402

from ..faults import FAULT_MODELS  # noqa: E402
from ..faults.designs import DESIGNS  # noqa: E402
from ..protect import PROTECTIONS  # noqa: E402
from ..protect.protections.fitact import FitReLU  # noqa: E402
from ..protect.protections.gbrelu import GBReLU  # noqa: E402
from .select import band, variant_sort_key  # noqa: E402

RATE_AXIS = "fault rate (bit error rate, flips per stored bit)"
ACC_AXIS = "accuracy (%)"
# (colour, marker) of the protections in the registry's order: none, ranger, clipact, gbrelu,
# fitact, then any further ones; a plain protection keeps its style in every figure
_STYLES = (("tab:gray", "o"), ("tab:orange", "s"), ("tab:blue", "^"), ("tab:purple", "v"), ("tab:green", "D"),
           ("tab:red", "P"), ("tab:brown", "X"), ("tab:pink", "*"))
# Colours for qualified variants (GBReLU bounds, restricted fault spaces): none of the protections'
# own colours, so a GBReLU bound never looks like FitAct.
_EXTRA_COLORS = ("tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan", "gold", "navy", "teal",
                 "darkred", "lime")


def palette(variants: Iterable[str]) -> dict[str, tuple[str, str]]:
    """{variant: (colour, marker)}: a plain protection keeps its fixed colour in every figure."""
    out, extra = {}, 0
    for variant in sorted(variants, key=variant_sort_key):
        base = variant.split(" ")[0]
        index = PROTECTIONS.index(base)
        color, marker = _STYLES[index] if base in PROTECTIONS and index < len(_STYLES) else (None, "x")
        if variant != base or color is None:
            color, extra = _EXTRA_COLORS[extra % len(_EXTRA_COLORS)], extra + 1
        out[variant] = (color, marker)
    return out


def save(fig, out_dir: Path, stem: str, formats: Sequence[str], dpi: int) -> list[Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for fmt in formats:
        path = out_dir / f"{stem}.{fmt}"
        fig.savefig(path, dpi=dpi, bbox_inches="tight")
        paths.append(path)
    plt.close(fig)
    return paths


def _legend_below(fig, axes) -> None:
    """One legend for the whole figure, under the axes: it can never cover a data point."""
    handles, labels = {}, {}
    for ax in np.ravel(axes):
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in labels:
                handles[lab], labels[lab] = h, lab
    if handles:
        # long labels (GBReLU bounds with a fault-space restriction) in fewer columns
        ncol = min(len(handles), 4 if max(map(len, handles)) < 24 else 2)
        fig.legend(list(handles.values()), list(handles), loc="upper center", bbox_to_anchor=(0.5, 0.0),
                   ncol=ncol, frameon=False)


# --- Fig. 1 -----------------------------------------------------------------------------------

def fig1_gbrelu(points: dict[float, dict], title: str):
    """Clean accuracy and mean accuracy under faults (95 % CI bars) vs the GBReLU global bound.

    points: {bound: {"clean": acc, "rates": {rate: {"mean", "ci_low", "ci_high"}}}} (fractions).
    Returns (figure, drawn) with drawn = {"bound": [...], "clean": [...], rate: [means]} in %."""
    bounds = sorted(points)
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    drawn: dict = {"bound": bounds, "clean": [100 * points[b]["clean"] for b in bounds]}
    ax.plot(bounds, drawn["clean"], "k-o", label="accuracy without faults")
    rates = sorted({r for b in bounds for r in points[b]["rates"]})
    cmap = plt.get_cmap("autumn")
    for i, rate in enumerate(rates):
        xs = [b for b in bounds if rate in points[b]["rates"]]
        st = [points[b]["rates"][rate] for b in xs]
        means = [100 * s["mean"] for s in st]
        err = np.array([[100 * (s["mean"] - band(s)[0]) for s in st], [100 * (band(s)[1] - s["mean"]) for s in st]])
        ax.errorbar(xs, means, yerr=np.clip(err, 0, None), fmt="-s", capsize=3,
                    color=cmap(i / max(1, len(rates))), label=f"under faults, BER {rate:.0e} (mean, 95 % CI)")
        drawn[rate] = means
    ax.set_xscale("log", base=2)
    ax.set_xlabel("GBReLU global bound (activation units)")
    ax.set_ylabel(ACC_AXIS)
    ax.set_ylim(0, 101.5)  # headroom: markers at 100 % stay visible
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    _legend_below(fig, ax)
    return fig, drawn


# --- Fig. 2 -----------------------------------------------------------------------------------

def fig2_profile(maxima: Sequence[float], site: str, title: str, bins: int = 40):
    """Histogram of per-neuron maximum activations of one site; the layer max (what a global bound
    would be) as a vertical line. Returns (figure, drawn) with the counts and edges drawn."""
    values = np.asarray(maxima, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    counts, edges, _ = ax.hist(values, bins=bins, color="tab:blue", alpha=0.8, label="neurons")
    layer_max = float(values.max())
    ax.axvline(layer_max, color="tab:red", linestyle="--", label=f"layer max = {layer_max:.3g}")
    ax.set_xlabel(f"maximum activation of a neuron over the profiling images (activation units), site {site}")
    ax.set_ylabel("number of neurons")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    _legend_below(fig, ax)
    return fig, {"counts": counts.tolist(), "edges": edges.tolist(), "layer_max": layer_max,
                 "neurons": int(values.size)}


# --- Fig. 3 -----------------------------------------------------------------------------------

def fig3_activations(global_bound: float = 2.0, neuron_bound: float = 1.0, k: float = 20.0,
                     x_range: tuple[float, float] = (-1.0, 3.0)):
    """ReLU, GBReLU (layer bound), FitReLU-Naive and FitReLU (neuron bound, slope k), evaluated by
    the modules the pipeline runs, so the figure shows the implemented functions."""
    x = torch.linspace(*x_range, 801)
    with torch.no_grad():
        curves = {
            "ReLU": torch.relu(x),
            f"GBReLU (global bound {global_bound:g})": GBReLU(global_bound)(x.clone()),
            f"FitReLU-Naive (neuron bound {neuron_bound:g})": FitReLU(neuron_bound, "layer", k=k, hard=True)(x.clone()),
            f"FitReLU (neuron bound {neuron_bound:g}, k={k:g})": FitReLU(neuron_bound, "layer", k=k, hard=False)(x.clone()),
        }
    jumps = {1: global_bound, 2: neuron_bound}  # hard forms drop to 0 at their bound
    # ReLU wide and light underneath; the bounded forms coincide with it below their bounds, so they
    # are told apart by dash pattern on top of it
    styles = [("0.75", "-", 6.0), ("tab:purple", "--", 2.5), ("tab:blue", ":", 2.5), ("tab:green", "-", 1.5)]
    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    xs = x.numpy().astype(np.float64)
    for i, ((label, y), (color, ls, lw)) in enumerate(zip(curves.items(), styles)):
        y = y.numpy().astype(np.float64).copy()
        if i in jumps:  # break the line at the jump instead of drawing a vertical segment
            cut = int(np.searchsorted(xs, jumps[i], side="right"))
            y = np.insert(y, cut, np.nan)
            xp = np.insert(xs, cut, jumps[i])
        else:
            xp = xs
        ax.plot(xp, y, color=color, linestyle=ls, linewidth=lw, label=label)
    for b, name in ((global_bound, "global bound"), (neuron_bound, "neuron bound")):
        ax.axvline(b, color="0.4", linewidth=0.8, linestyle=(0, (1, 3)))
        ax.annotate(name, (b, 0.95), xycoords=("data", "axes fraction"), rotation=90, ha="right", va="top",
                    fontsize=8, color="0.3")
    ax.set_xlabel("pre-activation input x (activation units)")
    ax.set_ylabel("activation output f(x) (activation units)")
    ax.set_title("bounded ReLU variants", fontsize=10)
    ax.grid(True, alpha=0.3)
    _legend_below(fig, ax)
    return fig, {"x": x.numpy(), **{k_: v.numpy() for k_, v in curves.items()}}


# --- Fig. 5 -----------------------------------------------------------------------------------

def fig5_boxes(trials: dict[str, dict[float, list[float]]], title: str):
    """Box plots of per-trial accuracy, grouped by fault rate, one box per variant.
    Returns (figure, drawn) with drawn = {variant: {rate: boxplot stats (%)}}."""
    variants = sorted(trials, key=variant_sort_key)
    rates = sorted({r for v in variants for r in trials[v]})
    width = 0.8 / max(1, len(variants))
    fig, ax = plt.subplots(figsize=(min(10.0, max(6.0, 2.5 + 0.3 * len(rates) * len(variants))), 4.2))
    drawn: dict = {}
    colors = palette(variants)
    for j, variant in enumerate(variants):
        color, _ = colors[variant]
        positions, stats = [], []
        for i, rate in enumerate(rates):
            if rate not in trials[variant]:
                continue
            st = cbook.boxplot_stats(100 * np.asarray(trials[variant][rate], dtype=np.float64))[0]
            st["label"] = variant
            positions.append(i - 0.4 + width * (j + 0.5))
            stats.append(st)
            drawn.setdefault(variant, {})[rate] = {k: st[k] for k in ("med", "q1", "q3", "mean")}
            drawn[variant][rate]["n"] = len(trials[variant][rate])
        if stats:
            ax.bxp(stats, positions=positions, widths=width * 0.85, patch_artist=True, showmeans=True,
                   boxprops={"facecolor": color, "alpha": 0.6}, medianprops={"color": "k"},
                   meanprops={"marker": "^", "markerfacecolor": "white", "markeredgecolor": "k", "markersize": 4})
        ax.plot([], [], "s", color=color, alpha=0.6, markersize=10, label=variant)  # legend handle
    ax.set_xticks(range(len(rates)), [f"{r:.0e}" for r in rates])
    ax.set_xlim(-0.6, len(rates) - 0.4)
    ax.set_xlabel(RATE_AXIS)
    ax.set_ylabel("accuracy of one trial (%)")
    ax.set_ylim(0, 101.5)  # headroom: markers at 100 % stay visible
    ax.set_title(title, fontsize=10)
    ax.grid(True, axis="y", alpha=0.3)
    _legend_below(fig, ax)
    return fig, drawn


# --- Fig. 6 -----------------------------------------------------------------------------------

def rate_axis(fault_model: str) -> str:
    return FAULT_MODELS[fault_model].rate_axis if fault_model in FAULT_MODELS else RATE_AXIS


def plot_resilience(ax, curve_by_variant: dict[str, dict[float, dict[str, float]]], title: str,
                    fault_model: str = "memory") -> dict:
    """Mean accuracy vs fault rate (log axis), one line per variant, 95 % CI band.
    Returns {variant: {"rates", "mean", "ci_low", "ci_high"}} as drawn (%; bands clipped to 0..100)."""
    drawn = {}
    colors = palette(curve_by_variant)
    for variant in sorted(curve_by_variant, key=variant_sort_key):
        points = sorted((r, s) for r, s in curve_by_variant[variant].items() if r > 0 and "mean" in s)
        if not points:
            continue
        rates = [r for r, _ in points]
        stats = [s for _, s in points]
        color, marker = colors[variant]
        means = [100 * s["mean"] for s in stats]
        ax.plot(rates, means, marker=marker, color=color, label=variant)
        entry = {"rates": rates, "mean": means}
        if all("ci_low" in s and "ci_high" in s for s in stats):
            # An older run's t-interval can pass 0 or 100 %; accuracy cannot, so the band is clipped.
            entry["ci_low"] = [max(0.0, 100 * band(s)[0]) for s in stats]
            entry["ci_high"] = [min(100.0, 100 * band(s)[1]) for s in stats]
            ax.fill_between(rates, entry["ci_low"], entry["ci_high"], color=color, alpha=0.2, linewidth=0)
        drawn[variant] = entry
    ax.set_xscale("log")
    ax.set_xlabel(rate_axis(fault_model))
    ax.set_ylabel("mean accuracy under faults (%)")
    ax.set_ylim(0, 101.5)  # headroom: markers at 100 % stay visible
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    return drawn


def fig_sdc_grid(outcomes: dict[tuple, dict[str, dict[float, dict[str, dict[str, float]]]]]):
    """Rows = panels (model, dataset, fault model); columns = SDC rate, critical rate: mean over
    trials vs fault rate with its CI band, one line per variant. outcomes: {panel: {variant: {rate:
    {outcome: stats}}}}. Returns (figure, {panel: {outcome: drawn}})."""
    panels = sorted(outcomes)
    columns = (("sdc", "SDC rate (%): faulty top-1 != fault-free top-1"),
               ("critical", "critical rate (%): right -> wrong"))
    fig, axes = plt.subplots(len(panels), 2, figsize=(9.2, 3.6 * len(panels)), squeeze=False)
    drawn: dict = {}
    for i, panel in enumerate(panels):
        for j, (outcome, label) in enumerate(columns):
            curves = {v: {r: per[outcome] for r, per in curve.items() if outcome in per}
                      for v, curve in outcomes[panel].items()}
            drawn.setdefault(panel, {})[outcome] = plot_resilience(axes[i][j], curves, panel_title(panel), panel[2])
            axes[i][j].set_ylabel(label, fontsize=8)
    fig.tight_layout()
    _legend_below(fig, axes)
    return fig, drawn


def panel_title(panel: tuple) -> str:
    """"vgg16 on cifar10_copy", with the fault model when it is not the default memory faults."""
    model, dataset, fault_model = (tuple(panel) + ("memory",))[:3]
    return f"{model} on {dataset}" + ("" if fault_model == "memory" else f", {fault_model} faults")


def fig6_grid(curves: dict[tuple, dict[str, dict[float, dict[str, float]]]], bands: str = DESIGNS["classic"].interval):
    """Grid: rows = (dataset, fault model), columns = models; each panel as plot_resilience.
    curves: {(model, dataset, fault model): {variant: {rate: stats}}}; ``bands``: which interval the
    bands are. Returns (figure, {panel: drawn})."""
    models = sorted({k[0] for k in curves})
    rows = sorted({tuple(k[1:]) for k in curves})
    fig, axes = plt.subplots(len(rows), len(models), figsize=(4.6 * len(models), 3.6 * len(rows)), squeeze=False)
    drawn = {}
    for i, row in enumerate(rows):
        for j, model in enumerate(models):
            ax, key = axes[i][j], (model, *row)
            if key not in curves:
                ax.set_axis_off()
                ax.text(0.5, 0.5, f"no runs for\n{panel_title(key)}", ha="center", va="center", transform=ax.transAxes)
                continue
            drawn[key] = plot_resilience(ax, curves[key], panel_title(key), key[2])
    fig.tight_layout()
    _legend_below(fig, axes)
    if fig.legends:  # which interval the bands are (docs/campaigns.md, "Intervals")
        fig.legends[-1].set_title(f"bands: 95 % CI {bands}", prop={"size": 8})
    return fig, drawn


# --- vulnerability map ----------------------------------------------------------------------------

def vulnerability_heatmap(tensors: Sequence[str], bits: Sequence[int], sdc: np.ndarray, loss: np.ndarray,
                          title: str):
    """Two heat maps, tensors (rows, fault-space order) x bit positions (columns): P(SDC) of a single
    fault, and the mean accuracy it loses. Returns (figure, {"sdc", "loss": the arrays drawn, %})."""
    height = max(2.5, 0.32 * len(tensors) + 1.5)
    fig, axes = plt.subplots(1, 2, figsize=(14, height), sharey=True)
    drawn = {}
    for ax, (key, data, label, cmap, low) in zip(axes, (
            ("sdc", sdc, "P(SDC | one fault) (%)", "magma_r", 0.0),
            ("loss", loss, "mean accuracy loss per fault (pp)", "RdBu_r", -100.0))):
        values = 100 * np.asarray(data, dtype=np.float64)
        image = ax.imshow(np.ma.masked_invalid(values), aspect="auto", cmap=cmap, vmin=low, vmax=100,
                          interpolation="nearest")
        ax.set_xticks(range(len(bits)))
        ax.set_xticklabels([str(b) for b in bits], fontsize=6)
        ax.set_xlabel("bit position (0 = least significant)")
        fig.colorbar(image, ax=ax, label=label, fraction=0.04, pad=0.02)
        drawn[key] = values
    axes[0].set_yticks(range(len(tensors)))
    axes[0].set_yticklabels(tensors, fontsize=7)
    axes[0].set_ylabel("fault-space tensor")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig, drawn


# --- width study ----------------------------------------------------------------------------------

_UNIT_LINES = {"bit": "-", "word": "--", "toolbox": ":"}


def width_collapse(curves: dict[tuple, list], title: str):
    """One panel per protection: retained accuracy (mean / clean, with its 95 % CI as error bars)
    against the expected integer/sign-bit flips per conv output channel (report/width.py), one line
    per (width, training epochs, rate unit): colour = width and training, line style = unit. If the
    per-channel model holds, the lines of one panel fall on one curve.
    Returns (figure, {protection: {"w<width> <unit>": drawn}}; " e<epochs>" after the width where one
    width was trained more than one way)."""
    protections = sorted({k[0] for k in curves}, key=variant_sort_key)
    models = sorted({k[1:3] for k in curves})
    several = {w for w, _ in models if sum(1 for m in models if m[0] == w) > 1}
    colors = dict(zip(models, plt.cm.viridis(np.linspace(0.0, 0.85, max(1, len(models))))))
    fig, axes = plt.subplots(1, len(protections), figsize=(5.2 * len(protections), 4.0), squeeze=False, sharey=True)
    drawn: dict = {}
    for ax, protection in zip(axes[0], protections):
        for (prot, width, epochs, unit), points in curves.items():
            if prot != protection:
                continue
            x = [p.exposure for p in points]
            kept = [p.retained for p in points]
            y = [100 * k[0] for k in kept]
            err = [[max(0.0, 100 * (k[0] - k[1])) for k in kept], [max(0.0, 100 * (k[2] - k[0])) for k in kept]]
            trained = f", {epochs} epochs" if width in several else ""
            ax.errorbar(x, y, yerr=err, color=colors[(width, epochs)], linestyle=_UNIT_LINES.get(unit, "-."),
                        marker="o", markersize=3, capsize=2, label=f"width {width:g}{trained}, per {unit}")
            key = f"w{width:g}" + (f" e{epochs}" if width in several else "") + f" {unit}"
            drawn.setdefault(protection, {})[key] = {"exposure": x, "retained": y}
        ax.axvline(1.0, color="0.5", linewidth=0.8, linestyle=(0, (1, 3)))
        ax.set_xscale("log")
        ax.set_xlabel("expected integer/sign-bit flips in conv weights\nper conv output channel")
        ax.set_title(protection, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("accuracy under faults / clean accuracy (%)")
    axes[0][0].set_ylim(0, 105)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig, drawn
