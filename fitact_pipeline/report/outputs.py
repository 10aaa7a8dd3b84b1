"""The report's outputs, one renderer each: select the data (select.py), draw or tabulate it
(figures.py, tables.py), save it. Each takes the experiment, the report config and the Report that
collects files, notes and what was drawn."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..faults.conditioned import acc_at_rate, rate_at_loss
from ..faults.designs import DESIGNS
from ..faults.vulnerability import VulnerabilityMap
from . import figures, tables
from .runs import search_all
from .select import (PAIRED, PRECISION, SUMMARY, TABLE1, band_caption, by_panel, fig1_groups, fig1_points, merge_curves,
                     merge_outcomes, paired_rows, panels, pick_panel, precision_rows, summary_rows, table1_rows,
                     trial_accuracies)

if TYPE_CHECKING:
    from .build import Report
    from .runs import Experiment


def fig1(exp: "Experiment", cfg: Any, out: "Report") -> None:
    groups = fig1_groups(exp.jobs)
    if not groups:
        return out.skip("Fig. 1", "no finished gbrelu runs (run experiment=fig1_gbrelu)")
    sel = cfg.fig1
    picked = pick_panel(groups, sel.model, sel.dataset, lambda k: len({j.params["protection.bound"] for j in groups[k]}))
    if picked is None:
        return out.skip("Fig. 1", f"no gbrelu runs for model={sel.model} dataset={sel.dataset}")
    if len(groups) > 1:
        out.notes.append(f"Fig. 1: {len(groups)} gbrelu settings found; drew the one with most bounds.")
    fig, out.drawn["fig1"] = figures.fig1_gbrelu(*fig1_points(groups[picked]))
    out.save_figure(fig, "fig1_gbrelu_bound")


def fig2(exp: "Experiment", cfg: Any, out: "Report") -> None:
    sel = cfg.fig2
    jobs = [j for j in exp.jobs if (sel.model is None or j.model == sel.model)
            and (sel.dataset is None or j.dataset == sel.dataset)]
    # the profile is taken on the unprotected baseline, so any run has it; prefer `none`
    jobs.sort(key=lambda j: (j.protection != "none", j.model, j.dataset, j.run_id))
    for job in jobs:
        profile = exp.artifact(job.run_id, "profile_site.json")
        if profile and profile.get("maxima"):
            fig, drawn = figures.fig2_profile(profile["maxima"], profile["site"],
                                              f"{job.model} on {job.dataset}: per-neuron maxima at site "
                                              f"{profile['site']} (shape {profile['shape']})", int(sel.bins))
            out.drawn["fig2"] = dict(drawn, run_id=job.run_id, site=profile["site"])
            return out.save_figure(fig, "fig2_neuron_maxima")
    out.skip("Fig. 2", "no run with profile_site.json" + (f" for {sel.model}/{sel.dataset}"
                                                           if sel.model or sel.dataset else ""))


def fig3(exp: "Experiment", cfg: Any, out: "Report") -> None:
    c = cfg.fig3
    fig, out.drawn["fig3"] = figures.fig3_activations(float(c.global_bound), float(c.neuron_bound), float(c.k))
    out.save_figure(fig, "fig3_activations")


def fig5(exp: "Experiment", cfg: Any, out: "Report") -> None:
    per_panel = by_panel(exp.jobs)
    sel = cfg.fig5
    picked = pick_panel(per_panel, sel.model, sel.dataset, lambda k: len({j.variant for j in per_panel[k]}))
    if picked is None:
        return out.skip("Fig. 5", f"no job runs for model={sel.model} dataset={sel.dataset}")
    trials = trial_accuracies(per_panel[picked], exp.trials)
    if not trials:
        return out.skip("Fig. 5", f"no trials.json in the runs of {figures.panel_title(picked)}")
    fig, drawn = figures.fig5_boxes(panels(trials, out.notes)[picked], f"{figures.panel_title(picked)}: accuracy of "
                                    f"every trial ({trial_meaning(per_panel[picked])})")
    out.drawn["fig5"] = {"panel": picked, "boxes": drawn}
    out.save_figure(fig, "fig5_boxplots")


def trial_meaning(jobs) -> str:
    """What one box-plot sample is, per design: under nested it also carries image sampling noise."""
    meanings = sorted({DESIGNS[j.params.get("campaign.design", "classic")].trial_meaning for j in jobs
                       if j.params.get("campaign.design", "classic") in DESIGNS})
    return "; ".join(meanings) or "one fault map"


def _grid(out: "Report", curves: dict, name: str, missing: str, draw, key: str, file: str) -> None:
    """A grid of panels (model x dataset x fault model) of merged curves, or a note why not."""
    if not curves:
        return out.skip(name, missing)
    fig, out.drawn[key] = draw(panels(curves, []))
    out.save_figure(fig, file)


def fig6(exp: "Experiment", cfg: Any, out: "Report") -> None:
    _grid(out, merge_curves(exp.jobs), "Fig. 6", "no job run logged acc_mean/ber_<rate>",
          lambda curves: figures.fig6_grid(curves, band_caption(exp.jobs)),
          "fig6", "fig6_resilience_grid")


def sdc(exp: "Experiment", cfg: Any, out: "Report") -> None:
    _grid(out, merge_outcomes(exp.jobs), "SDC figure", "no job run logged sdc_mean/ber_<rate> (runs from before SDC "
          "was measured)", figures.fig_sdc_grid, "sdc", "fig_sdc_critical")


def vulnerability(exp: "Experiment", cfg: Any, out: "Report") -> None:
    """Each vulnerability map logged to the experiment (api.vulnerability with mlflow=...): its heat
    map and its cells ranked by P(SDC). Optional: an experiment without one gets no note."""
    runs = search_all(exp.client, exp.experiment_id, "tags.run_kind = 'vulnerability' and attributes.status = 'FINISHED'")
    out.drawn["vulnerability"] = {}
    for run in runs:
        data = exp.artifact(run.info.run_id, "vulnerability.json")
        if not data:
            continue
        vmap_ = VulnerabilityMap.from_dict(data)
        name = f"vulnerability_{run.info.run_name or run.info.run_id}"
        tensors, bits, sdc = vmap_.matrix("sdc")
        title = (f"{run.info.run_name}: single faults, P(SDC) and accuracy loss per tensor and bit "
                 f"({vmap_.images} images; exact {100 * vmap_.confidence:g} % CI half-width <= "
                 f"{100 * vmap_.half_width:g} pp per cell)")
        fig, drawn = figures.vulnerability_heatmap(tensors, bits, sdc, vmap_.matrix("loss")[2], title)
        out.drawn["vulnerability"][name] = drawn
        out.save_figure(fig, name)
        rows = [dict(vars(c), rank=i + 1) for i, c in enumerate(vmap_.ranked(top=int(cfg.get("vulnerability_top", 20))))]
        pct = lambda v: f"{100 * v:.1f} %"  # noqa: E731
        path = out.out_dir / f"{name}.md"
        path.write_text(tables.markdown(
            f"Most vulnerable cells ({run.info.run_name})", ["rank", "tensor", "kind", "bit", "faults", "P(SDC)",
                                                              "CI low", "CI high", "accuracy loss"],
            ("rank", "tensor", "kind", "bit", "faults", "sdc", "sdc_low", "sdc_high", "loss"), rows,
            {"sdc": pct, "sdc_low": pct, "sdc_high": pct, "loss": lambda v: f"{100 * v:+.1f} pp"},
            "P(SDC): one flip of that bit in a uniformly drawn word of the tensor changes the top-1 of a "
            "uniformly drawn image; exact Clopper-Pearson interval. Loss: mean accuracy lost by that flip."))
        out.files.append(path)


def table1(exp: "Experiment", cfg: Any, out: "Report") -> None:
    rows = table1_rows(exp.jobs)
    if not rows:
        return out.skip("Table I", "no run logged overhead metrics (run jobs with overhead.enabled=true)")
    headers = ["model", "dataset", "protection", "inference form", "runs", "ReLU ms/batch", "protected ms/batch",
               "runtime overhead", "ReLU bytes", "protected bytes", "memory overhead", "training s",
               "post-training s", "post-training overhead"]
    fmt = {c: tables.fmt_percent for c in ("runtime_overhead", "memory_overhead", "posttrain_overhead")}
    fmt.update({c: (lambda v: tables.fmt_number(v, 6)) for c in ("model_bytes_reference", "model_bytes_protected")})
    note = ("Inference time: median of interleaved passes over one batch of `overhead.batch_size` images "
            "(median over the runs of one row). Memory: bytes of all parameters and buffers. "
            "Post-training overhead = post-training time / baseline training time.")
    stem = out.out_dir / "table1_overhead"
    out.out_dir.mkdir(parents=True, exist_ok=True)
    out.files += [tables.write_csv(stem.with_suffix(".csv"), TABLE1, rows),
                  tables.write_markdown(stem.with_suffix(".md"), "Table I: overhead of bounded activations vs ReLU",
                                        TABLE1, headers, rows, fmt, note),
                  tables.write_latex(stem.with_suffix(".tex"), "Runtime and memory overhead of the protected "
                                     "models vs ReLU, and post-training overhead.", "tab:overhead",
                                     TABLE1, headers, rows, fmt)]
    out.drawn["table1"] = rows


_PP = lambda v: f"{100 * v:+.2f} pp"  # noqa: E731
RESILIENCE_FORMATS = {"rate_min": tables.fmt_rate, "rate_max": tables.fmt_rate, "critical_rate": tables.fmt_rate,
                      "rate": tables.fmt_rate, "mean_diff": _PP, "ci_low": _PP, "ci_high": _PP,
                      "clean_accuracy": lambda v: f"{100 * v:.2f} %", "critical_level": lambda v: f"{100 * v:.1f} %",
                      "sdc_at_max": lambda v: "-" if v != v else f"{100 * v:.2f} %",
                      "critical_sdc_at_max": lambda v: "-" if v != v else f"{100 * v:.2f} %"}


def resilience(exp: "Experiment", cfg: Any, out: "Report") -> None:
    curves = merge_curves(exp.jobs)
    if not curves:
        return out.skip("resilience summary", "no job run logged acc_mean/ber_<rate>")
    level, relative = float(cfg.critical.level), bool(cfg.critical.relative)
    rows = summary_rows(curves, exp.jobs, level, relative)
    paired = paired_rows(exp.jobs, exp.trials, float(cfg.confidence))
    out.out_dir.mkdir(parents=True, exist_ok=True)
    stem = out.out_dir / "resilience_summary"
    level_text = f"{100 * level:g} % of the curve's clean accuracy" if relative else f"{100 * level:g} % accuracy"
    out.files.append(tables.write_csv(stem.with_suffix(".csv"), SUMMARY, rows))
    out.files.append(tables.write_csv(out.out_dir / "paired_differences.csv", PAIRED, paired))
    md = tables.markdown("Resilience summary", ["model", "dataset", "fault model", "protection", "clean accuracy", "rates",
                         "lowest rate", "highest rate", "AUC", "critical level", "critical rate",
                         "SDC at highest rate", "critical (right -> wrong) at highest rate"], SUMMARY, rows,
                         RESILIENCE_FORMATS,
                         "AUC: area under mean accuracy vs log10(fault rate) over the curve's own rates, "
                         "divided by the decades spanned (1 = no loss at 100 %). Critical rate: where mean "
                         f"accuracy first falls below {level_text} (log-interpolated; 'never' = not within "
                         "the rates run; equal to the lowest rate = already below there). SDC: mean fraction of "
                         "images whose faulty top-1 differs from the fault-free top-1 of the same image (a "
                         "non-finite logit counts); critical: right without faults, wrong with them "
                         "(fig_sdc_critical has both at every rate, with CIs).")
    md += "\n" + tables.markdown("Paired differences on the same fault maps", ["model", "dataset", "fault model", "A", "B",
                                 "fault rate", "pairs", "mean A - B", "95 % CI low", "95 % CI high", "Wilcoxon p"],
                                 PAIRED, paired, RESILIENCE_FORMATS,
                                 "Accuracy of A minus accuracy of B over trials with the same (rate, trial) index "
                                 "(the same fault map in the shared tensors), same model, data, seeds and fault "
                                 "space. CI: of the mean difference over those fault maps on the evaluation pool, "
                                 "bounded (valid for any distribution of differences in [-1, 1]; "
                                 "stats.paired_difference); p: Wilcoxon signed-rank (two-sided).")
    stem.with_suffix(".md").write_text(md)
    out.files.append(stem.with_suffix(".md"))
    out.drawn["resilience"] = {"summary": rows, "paired": paired}


def precision(exp: "Experiment", cfg: Any, out: "Report") -> None:
    rows = precision_rows(exp.jobs)
    if not rows:
        return out.skip("campaign precision", "no job run logged acc_mean/ber_<rate>")
    stem = out.out_dir / "campaign_precision"
    out.out_dir.mkdir(parents=True, exist_ok=True)
    fmt = {"rate": tables.fmt_rate, "mean": lambda v: f"{100 * v:.2f} %", "ci_halfwidth": _PP,
           "trials": lambda v: f"{v:.0f}", "images_per_trial": lambda v: f"{v:.0f}",
           "image_evaluations": lambda v: f"{v:,.0f}"}
    out.files += [tables.write_csv(stem.with_suffix(".csv"), PRECISION, rows),
                  tables.write_markdown(stem.with_suffix(".md"), "Campaign precision per curve and rate", PRECISION,
                                        ["model", "dataset", "fault model", "protection", "design", "fault rate",
                                         "trials M", "images per trial n", "image evaluations M x n", "mean accuracy",
                                         "95 % CI half-width"], rows, fmt,
                                        "classic: every fault map on the same n images; nested: trial i = map i "
                                        "plus its own random stratified subset of n images (docs/campaigns.md). "
                                        "95 % CI: of the mean over fault maps on the evaluation pool, bounded "
                                        "(ci_low/ci_high = ci_bounded_*: valid for any distribution of accuracies "
                                        "in [0, 1]); MLflow also holds ci_pop_*, over maps and images. Adaptive "
                                        "stopping stops on the t half-width and the unseen tail, so a half-width "
                                        "here can be somewhat wider than the target.")]
    out.drawn["precision"] = rows


CONDITIONED = ["model", "dataset", "fault_model", "protection", "rate", "mean", "ci_low", "ci_high", "tail_mass",
               "interp_term"]
FIRST_LOSS = ["model", "dataset", "fault_model", "protection", "clean", "loss", "rate", "rate_low", "rate_high"]


def conditioned(exp: "Experiment", cfg: Any, out: "Report") -> None:
    """acc(rate) with its interval at any rates (``conditioned.rates``; null: each campaign's own)
    from the a_k table every count-conditioned run logged, and the rate at which each curve first
    falls ``conditioned.loss`` below its clean accuracy (faults.conditioned.rate_at_loss)."""
    conditioned_jobs = [job for job in exp.jobs if job.params.get("campaign.design") == "conditioned"]
    if not conditioned_jobs:
        return  # an output of count-conditioned experiments only
    jobs = [(job, exp.artifact(job.run_id, "conditioned_ak.json")) for job in conditioned_jobs]
    jobs = [(job, table) for job, table in jobs if table is not None]
    if not jobs:
        return out.skip("conditioned rates", "no count-conditioned run logged conditioned_ak.json")
    loss, rows, firsts = float(cfg.conditioned.loss), [], []
    for job, table in jobs:
        ident = {"model": job.model, "dataset": job.dataset, "fault_model": job.fault_model, "protection": job.variant}
        rates = list(cfg.conditioned.rates) if cfg.conditioned.rates is not None else table.get("rates", [])
        rows += [{**ident, "rate": float(r), **acc_at_rate(table, float(r))} for r in rates]
        firsts.append({**ident, "loss": loss, **rate_at_loss(table, loss)})
    stem = out.out_dir / "conditioned_rates"
    out.out_dir.mkdir(parents=True, exist_ok=True)
    pct = lambda v: f"{100 * v:.2f}"
    fmt = {"rate": tables.fmt_rate, "mean": pct, "ci_low": pct, "ci_high": pct, "clean": pct,
           "tail_mass": lambda v: f"{v:.1e}", "interp_term": pct, "loss": pct,
           "rate_low": tables.fmt_rate, "rate_high": tables.fmt_rate}
    md = tables.markdown("Accuracy at any fault rate (count-conditioned runs)",
                         ["model", "dataset", "fault model", "protection", "fault rate", "mean accuracy %", "95 % CI low",
                          "95 % CI high", "tail mass", "interpolation term (points)"], CONDITIONED, rows, fmt,
                         "acc(rate) = sum_k P(K = k) a_k from the run's logged a_k table (conditioned_ak.json); the "
                         "interval holds the sampling error, the truncated tail (its mass, bounded exactly) and, "
                         "on a grid of counts, the checked interpolation (docs/campaigns.md).")
    md += "\n" + tables.markdown(f"Rate at which accuracy first falls {100 * loss:g} point(s) below clean",
                                 ["model", "dataset", "fault model", "protection", "clean accuracy %",
                                  "loss (points)", "rate", "interval low", "interval high"], FIRST_LOSS, firsts, fmt,
                                 "Rates on a log grid of 241 points from 1e-12 to 1e-2; the interval inverts the "
                                 "pointwise intervals of acc(rate) (the rates where the band straddles the "
                                 "threshold); 'never': not reached below 1e-2.")
    out.files += [tables.write_csv(stem.with_suffix(".csv"), CONDITIONED, rows),
                  tables.write_csv(out.out_dir / "first_loss.csv", FIRST_LOSS, firsts)]
    stem.with_suffix(".md").write_text(md)
    out.files.append(stem.with_suffix(".md"))
    out.drawn["conditioned"] = {"rates": rows, "first_loss": firsts}


OUTPUTS = (fig1, fig2, fig3, fig5, fig6, sdc, vulnerability, table1, resilience, precision, conditioned)
