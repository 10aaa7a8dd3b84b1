"""Figures and tables built from MLflow runs (never from in-memory results, so anyone with the store
can regenerate them).

    python -m fitact_pipeline.report experiment=quickstart        # config: conf/report.yaml

reads the finished job runs of one MLflow experiment and writes the paper's Fig. 1, 2, 3, 5, 6,
Table I and a resilience summary (docs/report.md) to `<figures_dir>/<experiment>/`, and logs them to
a report run (`run_kind=report`) in the same experiment. Every output whose runs are missing is
skipped with a note (report_notes.md), so a half-finished experiment still gives a report.

Numbers come from the names in docs/tracking.md: metrics `acc_<stat>/ber_<rate>`, `clean_accuracy`,
the overhead metrics, and the artifacts `trials.json` and `profile_site.json`.
"""
from __future__ import annotations

import itertools
import json
import logging
import math
import os
import re
import statistics
import sys
import tempfile
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from mlflow.tracking import MlflowClient

from . import figures, stats, tables
from .figures import PROTECTION_ORDER, PROTECTION_STYLE, plot_resilience, variant_sort_key  # noqa: F401

log = logging.getLogger(__name__)

_RATE_METRIC = re.compile(r"^acc_(?P<stat>[a-z0-9_]+)/ber_(?P<rate>[0-9.e+-]+)$")
# Params that decide which fault maps a trial gets and which model they hit: runs that agree on all
# of them saw the same fault map at the same (rate, trial) in their shared tensors (DESIGN §2.1).
_CONTEXT_PARAMS = ("seed", "model.width", "campaign.seed", "campaign.eval_split", "campaign.eval_images",
                   "faults.fmt", "faults.word_bits", "faults.frac_bits", "faults.include", "faults.exclude",
                   "faults.fold_batchnorm", "profile_images")
_CONTEXT_PREFIXES = ("train.", "model.", "dataset.")
_IGNORED = ("progress_bar", "num_workers", "cache_dir", "root")


def rate_stats(metrics: dict[str, float]) -> dict[float, dict[str, float]]:
    """{rate: {stat: value}} from one run's metrics."""
    out: dict[float, dict[str, float]] = defaultdict(dict)
    for name, value in metrics.items():
        match = _RATE_METRIC.match(name)
        if match:
            out[float(match["rate"])][match["stat"]] = value
    return dict(out)


_DEFAULT_GRANULARITY = {"fitact": "neuron"}  # conf/protection/*.yaml; every other one: layer


def _patterns(param: str) -> str:
    """A list param as MLflow stores it ("['0.0.*', '0.3.*']") written short: 0.0.*,0.3.*"""
    return re.sub(r"[\[\]' ]", "", param)


def variant_of(tags: dict[str, str], params: dict[str, str]) -> str:
    """The curve label of a run: its protection, plus what makes two runs of one protection
    different curves (a granularity other than the protection's default, FitAct's smooth form, the
    GBReLU bound, a restricted fault space). Runs that differ only in other settings share a label
    (and a rerun supersedes the older run, see latest_per_slot)."""
    protection = tags.get("protection", "?")
    label = protection
    granularity = tags.get("granularity")
    if granularity and granularity != _DEFAULT_GRANULARITY.get(protection, "layer"):
        label += f" {granularity}"
    if protection == "fitact" and params.get("protection.hard") == "False":
        label += " smooth"
    if protection == "gbrelu" and "protection.bound" in params:
        label += f" b={float(params['protection.bound']):g}"
    include = params.get("faults.include", "[]")
    if include not in ("[]", "", "None"):
        label += " faults in " + _patterns(include)
    return label


def context_of(tags: dict[str, str], params: dict[str, str]) -> tuple:
    keys = [k for k in params if k.startswith(_CONTEXT_PREFIXES) or k in _CONTEXT_PARAMS]
    keys = [k for k in keys if not any(word in k for word in _IGNORED)]
    return (tags.get("model"), tags.get("dataset")) + tuple(sorted((k, params[k]) for k in keys))


@dataclass
class JobRun:
    """One finished job run, reduced to what the report uses."""
    run_id: str
    model: str
    dataset: str
    protection: str
    variant: str
    context: tuple
    params: dict[str, str]
    metrics: dict[str, float]
    curve: dict[float, dict[str, float]] = field(default_factory=dict)
    start_time: int = 0  # ms since the epoch, as MLflow stores it

    @classmethod
    def from_run(cls, run) -> "JobRun":
        tags, params = run.data.tags, run.data.params
        return cls(run.info.run_id, tags.get("model", "?"), tags.get("dataset", "?"), tags.get("protection", "?"),
                   variant_of(tags, params), context_of(tags, params), dict(params), dict(run.data.metrics),
                   rate_stats(run.data.metrics), int(run.info.start_time or 0))


def latest_per_slot(jobs: list[JobRun]) -> tuple[list[JobRun], list[JobRun]]:
    """(kept, superseded): of finished runs of the same slot (context, curve label and rate set),
    only the newest is kept. A slot is rerun when a setting the report does not tell apart changed
    (e.g. the post-training defaults): merging both runs would mix two settings in one curve."""
    latest: dict[tuple, JobRun] = {}
    superseded = []
    for job in sorted(jobs, key=lambda j: j.start_time):
        slot = (job.context, job.variant, tuple(sorted(job.curve)))
        if slot in latest:
            superseded.append(latest[slot])
        latest[slot] = job
    return sorted(latest.values(), key=lambda j: j.start_time), superseded


def curves_from_runs(runs) -> dict[tuple[str, str, str], dict[float, dict[str, float]]]:
    """Merge finished job runs into one curve per (model, dataset, variant): jobs of one rate each
    and jobs of many rates give the same curve."""
    curves: dict[tuple[str, str, str], dict[float, dict[str, float]]] = defaultdict(dict)
    finished = [JobRun.from_run(run) for run in runs
                if run.info.status == "FINISHED" and run.data.tags.get("run_kind") == "job"]
    for job in latest_per_slot(finished)[0]:  # oldest first: a newer run's rates win
        curves[(job.model, job.dataset, job.variant)].update(job.curve)
    return dict(curves)


def sweep_resilience_figure(client: MlflowClient, parent_run_id: str, out_dir: Path) -> Path | None:
    """The quick-start figure: the children of one sweep's parent run, one panel per model x dataset."""
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=10000)
    curves = curves_from_runs(runs)
    if not curves:
        return None
    panels: dict = defaultdict(dict)
    for (model, dataset, variant), curve in curves.items():
        panels[(model, dataset)][variant] = curve
    fig, _ = figures.fig6_grid(dict(panels))
    return figures.save(fig, Path(out_dir), "resilience", ["png"], 120)[0]


# --- reading the experiment --------------------------------------------------------------------

class Experiment:
    """The finished job runs of one experiment, and their artifacts fetched on demand."""

    def __init__(self, client: MlflowClient, experiment_id: str, workdir: Path):
        self.client, self.experiment_id, self.workdir = client, experiment_id, workdir
        finished = [JobRun.from_run(r) for r in self._search("tags.run_kind = 'job'")
                    if r.info.status == "FINISHED"]
        self.jobs, self.superseded = latest_per_slot(finished)
        self._artifacts: dict[tuple[str, str], Any] = {}

    def _search(self, filter_string: str) -> list:
        runs, token = [], None
        while True:
            page = self.client.search_runs([self.experiment_id], filter_string=filter_string,
                                           max_results=1000, page_token=token)
            runs.extend(page)
            token = page.token
            if not token:
                return runs

    def artifact(self, run_id: str, path: str) -> Any | None:
        """A JSON artifact of a run, or None when the run has none (older or failed stages)."""
        key = (run_id, path)
        if key not in self._artifacts:
            names = {a.path for a in self.client.list_artifacts(run_id)}
            if path not in names:
                self._artifacts[key] = None
            else:
                local = self.client.download_artifacts(run_id, path, str(self.workdir))
                self._artifacts[key] = json.loads(Path(local).read_text())
                Path(local).unlink()  # the next run's file of the same name lands here too
        return self._artifacts[key]

    def trials(self, job: JobRun) -> dict[tuple[float, int], float]:
        """{(rate, trial): accuracy} from a run's trials.json (an MLflow table)."""
        table = self.artifact(job.run_id, "trials.json")
        if not table:
            return {}
        col = {c: i for i, c in enumerate(table["columns"])}
        return {(float(row[col["rate"]]), int(row[col["trial"]])): float(row[col["accuracy"]])
                for row in table["data"]}


def _merge_curves(jobs: list[JobRun]) -> dict[tuple, dict[float, dict[str, float]]]:
    """{(context, variant): {rate: stats}}: jobs of one rate each merge into one curve."""
    out: dict[tuple, dict[float, dict[str, float]]] = defaultdict(dict)
    for job in jobs:
        out[(job.context, job.variant)].update(job.curve)
    return dict(out)


def _panels(curves: dict[tuple, Any], notes: list[str]) -> dict[tuple[str, str], dict[str, Any]]:
    """Group (context, variant) items by (model, dataset). Two contexts in one panel (other seed,
    other training) would give two curves of one name: the later gets a numbered label."""
    panels: dict[tuple[str, str], dict[str, Any]] = defaultdict(dict)
    for (context, variant), value in sorted(curves.items(), key=lambda kv: (repr(kv[0][0]), kv[0][1])):
        key = (context[0], context[1])
        label, n = variant, 1
        while label in panels[key]:
            n += 1
            label = f"{variant} (setting #{n})"
        if n > 1:
            notes.append(f"{key[0]} on {key[1]}: runs of {variant} differ in seed/training/fault settings; "
                         f"labelled '{label}'.")
        panels[key][label] = value
    return dict(panels)


def _pick_panel(available, model: str | None, dataset: str | None, size) -> tuple[str, str] | None:
    keys = [k for k in available if (model is None or k[0] == model) and (dataset is None or k[1] == dataset)]
    if not keys:
        return None
    return sorted(keys, key=lambda k: (-size(k), k))[0]


# --- the outputs -------------------------------------------------------------------------------

class Report:
    def __init__(self, exp: Experiment, cfg: Any, out_dir: Path):
        self.exp, self.cfg, self.out_dir = exp, cfg, out_dir
        self.notes: list[str] = []
        self.files: list[Path] = []
        self.drawn: dict[str, Any] = {}  # what every figure drew (tests compare it with the runs)
        self.run_id: str | None = None  # the report run, when logged to MLflow

    def skip(self, what: str, why: str) -> None:
        self.notes.append(f"{what} skipped: {why}")
        log.warning("%s skipped: %s", what, why)

    def _save(self, fig, stem: str) -> None:
        self.files += figures.save(fig, self.out_dir, stem, list(self.cfg.formats), int(self.cfg.dpi))

    def build(self) -> None:
        for part in (self.fig1, self.fig2, self.fig3, self.fig5, self.fig6, self.table1, self.resilience):
            try:
                part()
            except Exception as exc:  # one broken part must not cost the others
                log.exception("%s failed", part.__name__)
                self.notes.append(f"{part.__name__} failed: {type(exc).__name__}: {exc}")
        notes = self.out_dir / "report_notes.md"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        notes.write_text("# Report notes\n\n" + ("\n".join(f"- {n}" for n in self.notes) or "- none") + "\n")
        self.files.append(notes)

    def fig1(self) -> None:
        jobs = [j for j in self.exp.jobs if j.protection == "gbrelu" and "protection.bound" in j.params]
        if not jobs:
            return self.skip("Fig. 1", "no finished gbrelu runs (run experiment=fig1_gbrelu)")
        groups: dict[tuple, list[JobRun]] = defaultdict(list)
        for job in jobs:
            groups[job.context + (("protection.sites", job.params.get("protection.sites")),)].append(job)
        sel = self.cfg.fig1
        picked = _pick_panel(groups, sel.model, sel.dataset, lambda k: len({j.params["protection.bound"]
                                                                            for j in groups[k]}))
        if picked is None:
            return self.skip("Fig. 1", f"no gbrelu runs for model={sel.model} dataset={sel.dataset}")
        if len(groups) > 1:
            self.notes.append(f"Fig. 1: {len(groups)} gbrelu settings found; drew the one with most bounds.")
        points: dict[float, dict] = {}
        for job in groups[picked]:
            entry = points.setdefault(float(job.params["protection.bound"]),
                                      {"clean": job.metrics.get("clean_accuracy", math.nan), "rates": {}})
            entry["rates"].update({r: s for r, s in job.curve.items() if "mean" in s})
        job = groups[picked][0]
        sites = job.params.get("protection.sites", "None")
        title = (f"{job.model} on {job.dataset}: GBReLU at "
                 + ("every site" if sites == "None" else f"site {sites}")
                 + f", faults in {_patterns(job.params.get('faults.include', '[]')) or 'every layer'}")
        fig, drawn = figures.fig1_gbrelu(points, title)
        self.drawn["fig1"] = drawn
        self._save(fig, "fig1_gbrelu_bound")

    def fig2(self) -> None:
        sel = self.cfg.fig2
        jobs = [j for j in self.exp.jobs if (sel.model is None or j.model == sel.model)
                and (sel.dataset is None or j.dataset == sel.dataset)]
        # the profile is taken on the unprotected baseline, so any run has it; prefer `none`
        jobs.sort(key=lambda j: (j.protection != "none", j.model, j.dataset, j.run_id))
        for job in jobs:
            profile = self.exp.artifact(job.run_id, "profile_site.json")
            if profile and profile.get("maxima"):
                fig, drawn = figures.fig2_profile(profile["maxima"], profile["site"],
                                                  f"{job.model} on {job.dataset}: per-neuron maxima at site "
                                                  f"{profile['site']} (shape {profile['shape']})", int(sel.bins))
                self.drawn["fig2"] = dict(drawn, run_id=job.run_id, site=profile["site"])
                return self._save(fig, "fig2_neuron_maxima")
        self.skip("Fig. 2", "no run with profile_site.json" + (f" for {sel.model}/{sel.dataset}"
                                                                if sel.model or sel.dataset else ""))

    def fig3(self) -> None:
        c = self.cfg.fig3
        fig, drawn = figures.fig3_activations(float(c.global_bound), float(c.neuron_bound), float(c.k))
        self.drawn["fig3"] = drawn
        self._save(fig, "fig3_activations")

    def fig5(self) -> None:
        per_panel: dict[tuple[str, str], list[JobRun]] = defaultdict(list)
        for job in self.exp.jobs:
            per_panel[(job.model, job.dataset)].append(job)
        sel = self.cfg.fig5
        picked = _pick_panel(per_panel, sel.model, sel.dataset, lambda k: len({j.variant for j in per_panel[k]}))
        if picked is None:
            return self.skip("Fig. 5", f"no job runs for model={sel.model} dataset={sel.dataset}")
        trials: dict[tuple, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
        for job in per_panel[picked]:
            for (rate, _), acc in sorted(self.exp.trials(job).items()):
                trials[(job.context, job.variant)][rate].append(acc)
        if not trials:
            return self.skip("Fig. 5", f"no trials.json in the runs of {picked[0]} on {picked[1]}")
        panel = _panels({k: dict(v) for k, v in trials.items()}, self.notes)[picked]
        fig, drawn = figures.fig5_boxes(panel, f"{picked[0]} on {picked[1]}: accuracy of every trial")
        self.drawn["fig5"] = {"panel": picked, "boxes": drawn}
        self._save(fig, "fig5_boxplots")

    def fig6(self) -> None:
        curves = {k: v for k, v in _merge_curves(self.exp.jobs).items() if v}
        if not curves:
            return self.skip("Fig. 6", "no job run logged acc_mean/ber_<rate>")
        fig, drawn = figures.fig6_grid(_panels(curves, []))
        self.drawn["fig6"] = drawn
        self._save(fig, "fig6_resilience_grid")

    # Table I: the protected model vs its ReLU original, measured in the same job (overhead.py).
    TABLE1 = ("model", "dataset", "protection", "inference_form", "runs", "inference_ms_reference",
              "inference_ms_protected", "runtime_overhead", "model_bytes_reference", "model_bytes_protected",
              "memory_overhead", "train_time_s", "posttrain_time_s", "posttrain_overhead")

    def table1(self) -> None:
        groups: dict[tuple, list[JobRun]] = defaultdict(list)
        for job in self.exp.jobs:
            if job.protection != "none" and "runtime_overhead" in job.metrics:
                form = "-"
                if job.protection == "fitact":
                    form = "FitReLU-Naive (hard)" if job.params.get("protection.hard") == "True" else "FitReLU (smooth)"
                groups[(job.model, job.dataset, job.variant, form)].append(job)
        if not groups:
            return self.skip("Table I", "no run logged overhead metrics (run jobs with overhead.enabled=true)")
        rows = []
        for (model, dataset, variant, form), jobs in sorted(groups.items(), key=lambda kv: (
                kv[0][0], kv[0][1], variant_sort_key(kv[0][2]) != variant_sort_key("fitact"), variant_sort_key(kv[0][2]))):
            row: dict[str, Any] = {"model": model, "dataset": dataset, "protection": variant,
                                   "inference_form": form, "runs": len(jobs)}
            # Several jobs (one per rate) measure the same model: the median damps a noisy machine.
            for name in self.TABLE1[5:]:
                values = [j.metrics[name] for j in jobs if name in j.metrics]
                if name == "posttrain_overhead" and not values:
                    values = [j.metrics["posttrain_time_s"] / j.metrics["train_time_s"] for j in jobs
                              if "posttrain_time_s" in j.metrics and j.metrics.get("train_time_s")]
                row[name] = float(statistics.median(values)) if values else math.nan
            rows.append(row)
        headers = ["model", "dataset", "protection", "inference form", "runs", "ReLU ms/batch",
                   "protected ms/batch", "runtime overhead", "ReLU bytes", "protected bytes", "memory overhead",
                   "training s", "post-training s", "post-training overhead"]
        pct = {c: tables.fmt_percent for c in ("runtime_overhead", "memory_overhead", "posttrain_overhead")}
        pct.update({c: (lambda v: tables.fmt_number(v, 6)) for c in ("model_bytes_reference", "model_bytes_protected")})
        note = ("Inference time: median of interleaved passes over one batch of `overhead.batch_size` images "
                "(median over the runs of one row). Memory: bytes of all parameters and buffers. "
                "Post-training overhead = post-training time / baseline training time.")
        stem = self.out_dir / "table1_overhead"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.files += [tables.write_csv(stem.with_suffix(".csv"), self.TABLE1, rows),
                       tables.write_markdown(stem.with_suffix(".md"), "Table I: overhead of bounded activations vs ReLU",
                                             self.TABLE1, headers, rows, pct, note),
                       tables.write_latex(stem.with_suffix(".tex"), "Runtime and memory overhead of the protected "
                                          "models vs ReLU, and post-training overhead.", "tab:overhead",
                                          self.TABLE1, headers, rows, pct)]
        self.drawn["table1"] = rows

    SUMMARY = ("model", "dataset", "protection", "clean_accuracy", "rates", "rate_min", "rate_max", "auc",
               "critical_level", "critical_rate")
    PAIRED = ("model", "dataset", "protection_a", "protection_b", "rate", "pairs", "mean_diff", "ci_low",
              "ci_high", "wilcoxon_p")

    def resilience(self) -> None:
        curves = {k: v for k, v in _merge_curves(self.exp.jobs).items() if v}
        if not curves:
            return self.skip("resilience summary", "no job run logged acc_mean/ber_<rate>")
        level, relative = float(self.cfg.critical.level), bool(self.cfg.critical.relative)
        clean = {(j.context, j.variant): j.metrics.get("clean_accuracy", math.nan) for j in self.exp.jobs}
        rows = []
        for (context, variant), curve in sorted(curves.items(), key=lambda kv: (kv[0][0][:2], variant_sort_key(kv[0][1]))):
            rates = sorted(r for r in curve if r > 0 and "mean" in curve[r])
            means = [curve[r]["mean"] for r in rates]
            threshold = level * clean[(context, variant)] if relative else level
            rows.append({"model": context[0], "dataset": context[1], "protection": variant,
                         "clean_accuracy": clean[(context, variant)], "rates": len(rates),
                         "rate_min": min(rates) if rates else math.nan, "rate_max": max(rates) if rates else math.nan,
                         "auc": stats.resilience_auc(rates, means) if rates else math.nan,
                         "critical_level": threshold,
                         "critical_rate": stats.critical_rate(rates, means, threshold) if rates else math.nan})
        paired = self._paired_rows()
        stem = self.out_dir / "resilience_summary"
        self.out_dir.mkdir(parents=True, exist_ok=True)
        fmt = {"rate_min": tables.fmt_rate, "rate_max": tables.fmt_rate, "critical_rate": tables.fmt_rate,
               "rate": tables.fmt_rate, "mean_diff": lambda v: f"{100 * v:+.2f} pp",
               "ci_low": lambda v: f"{100 * v:+.2f} pp", "ci_high": lambda v: f"{100 * v:+.2f} pp",
               "clean_accuracy": lambda v: f"{100 * v:.2f} %", "critical_level": lambda v: f"{100 * v:.1f} %"}
        level_text = (f"{100 * level:g} % of the curve's clean accuracy" if relative else f"{100 * level:g} % accuracy")
        self.files.append(tables.write_csv(stem.with_suffix(".csv"), self.SUMMARY, rows))
        self.files.append(tables.write_csv(self.out_dir / "paired_differences.csv", self.PAIRED, paired))
        md = stem.with_suffix(".md")
        tables.write_markdown(md, "Resilience summary", self.SUMMARY,
                              ["model", "dataset", "protection", "clean accuracy", "rates", "lowest rate",
                               "highest rate", "AUC", "critical level", "critical rate"], rows, fmt,
                              "AUC: area under mean accuracy vs log10(fault rate) over the curve's own rates, "
                              "divided by the decades spanned (1 = no loss at 100 %). Critical rate: where mean "
                              f"accuracy first falls below {level_text} (log-interpolated; 'never' = not within "
                              "the rates run; equal to the lowest rate = already below there).")
        paired_md = stem.parent / "_paired.md"
        tables.write_markdown(paired_md, "Paired differences on the same fault maps", self.PAIRED,
                              ["model", "dataset", "A", "B", "fault rate", "pairs", "mean A - B", "95 % CI low",
                               "95 % CI high", "Wilcoxon p"], paired, fmt,
                              "Accuracy of A minus accuracy of B over trials with the same (rate, trial) index "
                              "(the same fault map in the shared tensors), same model, data, seeds and fault space. "
                              "CI: Student t of the mean difference; p: Wilcoxon signed-rank (two-sided).")
        md.write_text(md.read_text() + "\n" + paired_md.read_text())
        paired_md.unlink()
        self.files.append(md)
        self.drawn["resilience"] = {"summary": rows, "paired": paired}

    def _paired_rows(self) -> list[dict]:
        trials: dict[tuple, dict[str, dict[tuple[float, int], float]]] = defaultdict(lambda: defaultdict(dict))
        for job in self.exp.jobs:
            trials[job.context][job.variant].update(self.exp.trials(job))
        rows = []
        level = float(self.cfg.confidence)
        for context, by_variant in sorted(trials.items(), key=lambda kv: repr(kv[0])):
            # B is the earlier protection in PROTECTION_ORDER, so every row vs `none` reads "A - none"
            for b, a in itertools.combinations(sorted(by_variant, key=variant_sort_key), 2):
                common = sorted(set(by_variant[a]) & set(by_variant[b]))
                for rate in sorted({r for r, _ in common}):
                    keys = [k for k in common if k[0] == rate]
                    res = stats.paired_difference([by_variant[a][k] for k in keys], [by_variant[b][k] for k in keys],
                                                  level)
                    rows.append({"model": context[0], "dataset": context[1], "protection_a": a,
                                 "protection_b": b, "rate": rate, **res})
        return rows


# --- entry point -------------------------------------------------------------------------------

def open_store(cfg: Any) -> MlflowClient:
    # one progress bar per downloaded JSON would drown the notes in the log
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if cfg.get("tracking_uri"):
        return MlflowClient(cfg.tracking_uri)
    db = Path(cfg.tracking_root) / "mlflow.db"
    if not db.exists():  # MlflowClient would silently create an empty store
        raise FileNotFoundError(f"no MLflow store at {db} (set tracking_root=... or tracking_uri=...)")
    return MlflowClient(f"sqlite:///{db.resolve()}")


def build_report(cfg: Any) -> Report:
    """Build every figure and table of `cfg.experiment_name`; log them to a report run when asked."""
    client = open_store(cfg)
    experiment = client.get_experiment_by_name(cfg.experiment_name)
    if experiment is None:
        raise LookupError(f"no MLflow experiment named {cfg.experiment_name!r}")
    out_dir = Path(cfg.figures_dir) / cfg.experiment_name
    with tempfile.TemporaryDirectory() as tmp:
        exp = Experiment(client, experiment.experiment_id, Path(tmp))
        report = Report(exp, cfg, out_dir)
        if not exp.jobs:
            report.notes.append("the experiment has no finished job runs")
        for job in exp.superseded:
            report.notes.append(f"run {job.run_id} ({job.model} {job.variant}) superseded by a newer run of "
                                "the same model, protection and rates; to compare settings, give each its "
                                "own tracking.experiment")
        report.build()
    if cfg.log_to_mlflow:
        run = client.create_run(experiment.experiment_id, run_name="report", tags={"run_kind": "report"})
        try:
            for path in report.files:
                client.log_artifact(run.info.run_id, str(path))
            client.log_param(run.info.run_id, "source_runs", len(exp.jobs))
            client.set_terminated(run.info.run_id, "FINISHED")
        except BaseException:
            client.set_terminated(run.info.run_id, "FAILED")
            raise
        report.run_id = run.info.run_id
    for note in report.notes:
        log.info("note: %s", note)
    log.info("report of %s: %d files in %s", cfg.experiment_name, len(report.files), out_dir)
    return report


def main() -> None:
    import hydra
    from omegaconf import DictConfig

    from .validate import CONF_DIR

    @hydra.main(config_path=str(CONF_DIR), config_name="report", version_base="1.3")
    def _run(cfg: DictConfig) -> None:
        try:
            build_report(cfg)
        except (FileNotFoundError, LookupError) as exc:
            log.error("error: %s", exc)
            raise SystemExit(2) from None

    # `experiment=<name>` would select a file of the pipeline's config group conf/experiment/ (which
    # shares this config directory); the report's key is experiment_name.
    sys.argv = [("experiment_name=" + a[len("experiment="):]) if a.startswith("experiment=") else a
                for a in sys.argv]
    _run()


if __name__ == "__main__":
    main()
