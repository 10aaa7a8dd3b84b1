"""The report end to end: a tiny sweep into a temporary MLflow store, the report CLI on it, and every
drawn or tabulated number compared with what the runs logged."""
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from fitact_pipeline import stats
from fitact_pipeline.report import build_report, variant_of
from fitact_pipeline.report.tables import read_csv


ROOT = Path(__file__).resolve().parent.parent
EXP = "report_test"
RATES = [1e-4, 3e-4]
TRIALS = 3
BOUNDS = [0.5, 4.0]
FIGURES = ["fig1_gbrelu_bound", "fig2_neuron_maxima", "fig3_activations", "fig5_boxplots", "fig6_resilience_grid",
           "fig_sdc_critical"]
TABLES = ["table1_overhead.csv", "table1_overhead.md", "table1_overhead.tex", "resilience_summary.csv",
          "resilience_summary.md", "paired_differences.csv", "report_notes.md"]


def _pipeline(tmp: Path, name: str, *overrides: str) -> None:
    cmd = [sys.executable, "-m", "fitact_pipeline", "-m", *overrides, f"tracking.experiment={EXP}",
           f"tracking.root={tmp}/mlruns", f"cache_dir={tmp}/cache", f"figures_dir={tmp}/sweepfig",
           f"hydra.sweep.dir={tmp}/{name}", "train.epochs=3", "posttrain.epochs=2",
           f"campaign.trials={TRIALS}", "campaign.rates=[" + ",".join(map(str, RATES)) + "]", "progress_bar=false"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]


def _cfg(tmp: Path, **over):
    cfg = OmegaConf.load(ROOT / "conf" / "report.yaml")
    del cfg["hydra"]
    cfg.merge_with({"experiment_name": EXP, "tracking_root": f"{tmp}/mlruns", "figures_dir": f"{tmp}/inproc",
                    "log_to_mlflow": False, **over})
    return cfg


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    # one baseline (identical train settings) serves both sweeps through the stage cache
    _pipeline(tmp, "main", "experiment=quickstart", "protection=none,fitact", "overhead.enabled=true")
    # Fig. 1: GBReLU bounds at one site (the experiment's protection.sites) with faults in the first layers.
    _pipeline(tmp, "fig1", "experiment=fig1_gbrelu", "protection.bound=" + ",".join(map(str, BOUNDS)))
    cli = subprocess.run([sys.executable, "-m", "fitact_pipeline.report", f"experiment={EXP}",
                          f"tracking_root={tmp}/mlruns", f"figures_dir={tmp}/figures"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name(EXP)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    jobs = {variant_of(r.data.tags, r.data.params): r for r in runs if r.data.tags.get("run_kind") == "job"}
    report = build_report(_cfg(tmp))  # in process: gives what every figure drew
    return tmp, client, exp, runs, jobs, report


def _table(client, run_id, name, dst):
    data = json.loads(Path(client.download_artifacts(run_id, name, str(dst))).read_text())
    return data


def _trials(client, run, dst) -> dict:
    t = _table(client, run.info.run_id, "trials.json", dst / run.info.run_id)
    col = {c: i for i, c in enumerate(t["columns"])}
    return {(row[col["rate"]], row[col["trial"]]): row[col["accuracy"]] for row in t["data"]}


def _metric(run, stat, rate):
    return run.data.metrics[f"acc_{stat}/ber_{rate:.0e}"]


@pytest.mark.slow
def test_every_output_written_and_logged_to_a_report_run(sweep):
    tmp, client, _, runs, jobs, _ = sweep
    assert len(jobs) == 4, sorted(jobs)
    out = tmp / "figures" / EXP
    for stem in FIGURES:
        assert (out / f"{stem}.png").stat().st_size > 10_000
        assert (out / f"{stem}.pdf").read_bytes()[:4] == b"%PDF"
    for name in TABLES:
        assert (out / name).stat().st_size > 0
    assert "- none" in (out / "report_notes.md").read_text()  # nothing skipped on a complete sweep
    reports = [r for r in runs if r.data.tags.get("run_kind") == "report"]
    assert len(reports) == 1 and reports[0].info.status == "FINISHED"
    logged = {a.path for a in client.list_artifacts(reports[0].info.run_id)}
    assert {f"{s}.png" for s in FIGURES} | {f"{s}.pdf" for s in FIGURES} | set(TABLES) <= logged


@pytest.mark.slow
def test_fig6_curves_equal_the_logged_metrics(sweep):
    _, _, _, _, jobs, report = sweep
    panel = report.drawn["fig6"][("small_cnn", "digits", "memory")]
    assert set(panel) == set(jobs)
    for variant, run in jobs.items():
        assert panel[variant]["rates"] == RATES
        assert panel[variant]["mean"] == pytest.approx([100 * _metric(run, "mean", r) for r in RATES])
        # the band is the interval of record, bounded (docs/campaigns.md "Intervals"), logged under both names
        low, high = ([_metric(run, name, r) for r in RATES] for name in ("ci_bounded_low", "ci_bounded_high"))
        assert panel[variant]["ci_low"] == pytest.approx([max(0, 100 * v) for v in low])
        assert panel[variant]["ci_high"] == pytest.approx([min(100, 100 * v) for v in high])
        assert low == [_metric(run, "ci_low", r) for r in RATES] and high == [_metric(run, "ci_high", r) for r in RATES]


@pytest.mark.slow
def test_sdc_figure_and_summary_column_equal_the_logged_metrics(sweep):
    tmp, _, _, _, jobs, report = sweep
    panel = report.drawn["sdc"][("small_cnn", "digits", "memory")]
    assert set(panel["sdc"]) == set(jobs)
    rows = {r["protection"]: r for r in read_csv(tmp / "figures" / EXP / "resilience_summary.csv")}
    for variant, run in jobs.items():
        for outcome in ("sdc", "critical"):
            logged = [run.data.metrics[f"{outcome}_mean/ber_{r:.0e}"] for r in RATES]
            assert panel[outcome][variant]["mean"] == pytest.approx([100 * v for v in logged])
            # its band: the bounded interval of the logged per-trial rates, as for accuracy
            low = [run.data.metrics[f"{outcome}_ci_bounded_low/ber_{r:.0e}"] for r in RATES]
            assert low == [run.data.metrics[f"{outcome}_ci_low/ber_{r:.0e}"] for r in RATES]
            assert panel[outcome][variant]["ci_low"] == pytest.approx([max(0, 100 * v) for v in low])
        assert float(rows[variant]["sdc_at_max"]) == pytest.approx(run.data.metrics[f"sdc_mean/ber_{max(RATES):.0e}"])


@pytest.mark.slow
def test_fig5_boxes_equal_trials_and_metrics(sweep):
    tmp, client, _, _, jobs, report = sweep
    boxes = report.drawn["fig5"]["boxes"]
    assert set(boxes) == set(jobs)
    for variant, run in jobs.items():
        trials = _trials(client, run, tmp / "dl")
        for rate in RATES:
            box = boxes[variant][rate]
            accs = [a for (r, _), a in trials.items() if r == rate]
            assert box["n"] == len(accs) == TRIALS == _metric(run, "trials", rate)
            assert box["med"] == pytest.approx(100 * _metric(run, "median", rate))
            assert box["q1"] == pytest.approx(100 * _metric(run, "q1", rate))
            assert box["q3"] == pytest.approx(100 * _metric(run, "q3", rate))
            assert box["mean"] == pytest.approx(100 * np.mean(accs))


@pytest.mark.slow
def test_fig1_points_equal_the_gbrelu_runs(sweep):
    _, _, _, _, jobs, report = sweep
    drawn = report.drawn["fig1"]
    assert drawn["bound"] == BOUNDS
    gb = {float(r.data.params["protection.bound"]): r for r in jobs.values()
          if r.data.tags["protection"] == "gbrelu"}
    assert drawn["clean"] == pytest.approx([100 * gb[b].data.metrics["clean_accuracy"] for b in BOUNDS])
    for rate in RATES:
        assert drawn[rate] == pytest.approx([100 * _metric(gb[b], "mean", rate) for b in BOUNDS])


@pytest.mark.slow
def test_fig2_histogram_is_the_logged_profile(sweep):
    tmp, client, _, _, jobs, report = sweep
    drawn = report.drawn["fig2"]
    profile = _table(client, drawn["run_id"], "profile_site.json", tmp / "prof")
    assert drawn["site"] == profile["site"]
    assert drawn["layer_max"] == pytest.approx(max(profile["maxima"]))
    assert sum(drawn["counts"]) == drawn["neurons"] == len(profile["maxima"]) == math.prod(profile["shape"])
    assert client.get_run(drawn["run_id"]).data.tags["protection"] == "none"  # the unprotected run is preferred


@pytest.mark.slow
def test_fig3_curves_are_the_paper_functions(sweep):
    c = _cfg(Path("/nonexistent")).fig3
    drawn = sweep[5].drawn["fig3"]
    x = drawn["x"].astype(np.float64)
    relu = np.maximum(0, x)
    curves = {k.split(" (")[0]: v.astype(np.float64) for k, v in drawn.items() if k != "x"}
    assert curves["ReLU"] == pytest.approx(relu)
    assert curves["GBReLU"] == pytest.approx(np.where(x <= c.global_bound, relu, 0.0))
    assert curves["FitReLU-Naive"] == pytest.approx(np.where(x <= c.neuron_bound, relu, 0.0))
    smooth = relu / (1 + np.exp(-c.k * (c.neuron_bound - relu)))
    assert curves["FitReLU"] == pytest.approx(smooth, abs=1e-6)


@pytest.mark.slow
def test_table1_csv_equals_overhead_metrics(sweep):
    tmp, _, _, _, jobs, _ = sweep
    rows = read_csv(tmp / "figures" / EXP / "table1_overhead.csv")
    # only fitact measured overhead (none has nothing to compare; gbrelu ran without overhead)
    assert [r["protection"] for r in rows] == ["fitact"]
    row, m = rows[0], jobs["fitact"].data.metrics
    for name in ("inference_ms_reference", "inference_ms_protected", "runtime_overhead", "model_bytes_reference",
                 "model_bytes_protected", "memory_overhead", "train_time_s", "posttrain_time_s"):
        assert float(row[name]) == pytest.approx(m[name]), name
    assert float(row["posttrain_overhead"]) == pytest.approx(m["posttrain_time_s"] / m["train_time_s"])
    assert float(row["memory_overhead"]) > 0  # neuron-wise bounds add stored bytes
    assert row["inference_form"] == "FitReLU-Naive (hard)"
    tex = (tmp / "figures" / EXP / "table1_overhead.tex").read_text()
    assert "\\begin{tabular}" in tex and f"{100 * m['memory_overhead']:+.2f} \\%" in tex


@pytest.mark.slow
def test_resilience_summary_equals_recomputed_statistics(sweep):
    tmp, _, _, _, jobs, _ = sweep
    rows = {r["protection"]: r for r in read_csv(tmp / "figures" / EXP / "resilience_summary.csv")}
    assert set(rows) == set(jobs)
    for variant, run in jobs.items():
        means = [_metric(run, "mean", r) for r in RATES]
        assert float(rows[variant]["auc"]) == pytest.approx(stats.resilience_auc(RATES, means))
        assert float(rows[variant]["critical_rate"]) == pytest.approx(stats.critical_rate(RATES, means, 0.5))
        assert float(rows[variant]["clean_accuracy"]) == pytest.approx(run.data.metrics["clean_accuracy"])


@pytest.mark.slow
def test_paired_differences_equal_recomputed_from_trials(sweep):
    tmp, client, _, _, jobs, _ = sweep
    rows = read_csv(tmp / "figures" / EXP / "paired_differences.csv")
    pairs = {(r["protection_a"], r["protection_b"]) for r in rows}
    gb = sorted(v for v in jobs if v.startswith("gbrelu"))
    # fitact vs none share fault maps; gbrelu runs hit another fault space, so only pair among themselves
    assert pairs == {("fitact", "none"), (gb[1], gb[0])}, pairs
    fit, none = _trials(client, jobs["fitact"], tmp / "p"), _trials(client, jobs["none"], tmp / "p")
    for row in (r for r in rows if r["protection_a"] == "fitact"):
        rate = float(row["rate"])
        keys = sorted(k for k in fit if k[0] == rate)
        want = stats.paired_difference([fit[k] for k in keys], [none[k] for k in keys])
        assert int(row["pairs"]) == TRIALS
        for name in ("mean_diff", "ci_low", "ci_high", "wilcoxon_p"):
            assert float(row[name]) == pytest.approx(want[name]), name
    assert {float(r["rate"]) for r in rows} == set(RATES)


@pytest.mark.slow
def test_partial_experiment_skips_with_notes(sweep):
    tmp, client, _, _, _, _ = sweep
    client.create_experiment("empty_for_report")
    report = build_report(_cfg(tmp, experiment_name="empty_for_report"))
    out = tmp / "inproc" / "empty_for_report"
    notes = (out / "report_notes.md").read_text()
    for part in ("Fig. 1", "Fig. 2", "Fig. 5", "Fig. 6", "Table I", "resilience summary"):
        assert f"{part} skipped" in notes
    assert (out / "fig3_activations.png").exists()  # analytic: needs no runs
    assert sorted(p.name for p in out.glob("*.png")) == ["fig3_activations.png"]
    assert "fig6" not in report.drawn


@pytest.mark.slow
def test_selection_without_matching_runs_is_a_note_not_a_crash(sweep):
    tmp = sweep[0]
    report = build_report(_cfg(tmp, fig1={"model": "alexnet", "dataset": None},
                               fig5={"model": None, "dataset": "cifar10"}))
    assert any(n.startswith("Fig. 1 skipped") for n in report.notes)
    assert any(n.startswith("Fig. 5 skipped") for n in report.notes)
    assert "fig6" in report.drawn and "fig1" not in report.drawn


@pytest.mark.slow
def test_unknown_experiment_is_a_one_line_error(sweep):
    tmp = sweep[0]
    proc = subprocess.run([sys.executable, "-m", "fitact_pipeline.report", "experiment=nope",
                           f"tracking_root={tmp}/mlruns", f"figures_dir={tmp}/x", "log_to_mlflow=false"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "no MLflow experiment named 'nope'" in proc.stdout + proc.stderr


def test_a_rerun_slot_keeps_only_the_newest_run_and_another_slot_is_another_curve():
    from fitact_pipeline.report import JobRun, current_jobs, merge_curves

    ctx = ("vgg16", "cifar10", "memory", "c1")

    def job(run_id, start, curve, variant="fitact", slot="s-fitact"):
        return JobRun(run_id, "vgg16", "cifar10", variant, "memory", variant, ctx, {}, {},
                      {r: {"mean": acc} for r, acc in curve.items()}, start, slot)

    old = job("old", 1, {1e-6: 0.5, 1e-5: 0.3})
    new = job("new", 2, {1e-6: 0.6, 1e-5: 0.4})
    other_rates = job("one_rate", 0, {1e-4: 0.1})  # a job of another rate of the same curve: merged
    clipact = job("clipact", 3, {1e-6: 0.55, 1e-5: 0.35}, variant="clipact", slot="s-clipact")
    # the same label, another result identity (e.g. other fault-space targets): never superseded
    other_setting = job("k10", 4, {1e-6: 0.7, 1e-5: 0.5}, slot="s-fitact-k10")
    kept, superseded = current_jobs([new, clipact, old, other_rates, other_setting])
    assert [j.run_id for j in superseded] == ["old"]
    assert [j.run_id for j in kept] == ["one_rate", "new", "clipact", "k10"]
    curves = merge_curves(kept)
    assert {r: s["mean"] for r, s in curves[(ctx, "fitact")].items()} == {1e-4: 0.1, 1e-6: 0.6, 1e-5: 0.4}
    assert {r: s["mean"] for r, s in curves[(ctx, "fitact (setting #2)")].items()} == {1e-6: 0.7, 1e-5: 0.5}


def test_variant_labels_keep_granularities_and_forms_apart():
    fit = {"protection": "fitact", "granularity": "neuron"}
    assert variant_of(fit, {"protection.hard": "True"}) == "fitact"
    assert variant_of({**fit, "granularity": "channel"}, {"protection.hard": "True"}) == "fitact channel"
    assert variant_of(fit, {"protection.hard": "False"}) == "fitact smooth"
    assert variant_of({"protection": "ranger", "granularity": "layer"}, {}) == "ranger"
    assert variant_of({"protection": "clipact", "granularity": "neuron"}, {}) == "clipact neuron"
    assert variant_of({"protection": "gbrelu", "granularity": "layer"}, {"protection.bound": "2.0"}) == "gbrelu b=2"


def test_a_sweep_over_two_seeds_draws_two_curves(tmp_path):
    """The sweep figure merges curves like the report: runs of another seed are another curve,
    never drawn over the first."""
    from fitact_pipeline.report.sweep import sweep_panels

    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    exp = client.create_experiment("two_seeds", artifact_location=(tmp_path / "art").as_uri())
    parent = client.create_run(exp, tags={"run_kind": "sweep"}).info.run_id
    for seed, acc in ((0, 0.8), (1, 0.6)):
        run = client.create_run(exp, tags={"run_kind": "job", "mlflow.parentRunId": parent, "model": "small_cnn",
                                           "dataset": "digits", "protection": "fitact", "granularity": "neuron",
                                           "result_slot": f"slot-{seed}", "result_context": f"context-{seed}"})
        client.log_param(run.info.run_id, "seed", seed)
        client.log_metric(run.info.run_id, "acc_mean/ber_1e-05", acc)
        client.set_terminated(run.info.run_id, "FINISHED")
    panel = sweep_panels(client, parent)[("small_cnn", "digits", "memory")]
    assert sorted(panel) == ["fitact", "fitact (setting #2)"]
    assert sorted(curve[1e-5]["mean"] for curve in panel.values()) == [0.6, 0.8]


def test_a_curve_label_without_its_design_names_the_protection_variant():
    """Scripts that compare variants across experiments match labels without the campaign design."""
    from fitact_pipeline.report import variant_of, without_design

    params = {"campaign.design": "nested", "campaign.images_per_trial": "25"}
    label = variant_of({"protection": "fitact", "granularity": "layer"}, params)
    assert label == "fitact layer (nested, n=25)"
    assert without_design(label) == "fitact layer"
    assert without_design("ranger faults in features.0 (nested, n=auto)") == "ranger faults in features.0"
    assert without_design("fitact (post-training penalty=sum)") == "fitact (post-training penalty=sum)"


def test_a_tracking_label_makes_a_run_its_own_curve():
    """tracking.label separates runs whose difference the automatic label does not show (e.g. a longer
    post-training schedule), so the newer does not supersede the other in the report."""
    from fitact_pipeline.report import variant_of

    tags = {"protection": "fitact", "granularity": "neuron"}
    assert variant_of(tags, {"tracking.label": "None"}) == "fitact"
    assert variant_of(tags, {"tracking.label": "8 epochs", "campaign.design": "nested",
                             "campaign.images_per_trial": "25"}) == "fitact 8 epochs (nested, n=25)"
