"""Build the report of one MLflow experiment: every output of outputs.py, notes for what could not be
drawn, and a report run that holds them.

    python -m fitact_pipeline.report experiment=quickstart        # config: conf/report.yaml

reads the finished job runs of one experiment and writes the paper's Fig. 1, 2, 3, 5, 6, Table I
and a resilience summary (docs/report.md) to `<figures_dir>/<experiment>/`, and logs them to a
report run (`run_kind=report`) in the same experiment. Every output whose runs are missing is
skipped with a note (report_notes.md), so a half-finished experiment still gives a report.
"""
from __future__ import annotations

import logging
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from ..checks import expect_bool, expect_choice, expect_int, expect_list, expect_number, expect_str
from ..configs import CONF_DIR
from ..registry import ConfigError
from . import figures
from .outputs import OUTPUTS
from .runs import Experiment, open_store

log = logging.getLogger(__name__)


@dataclass
class Report:
    """What a report produced: files, notes, what every figure drew (tests compare it with the
    runs), and the report run's id when it was logged to MLflow."""
    cfg: Any
    out_dir: Path
    files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    drawn: dict[str, Any] = field(default_factory=dict)
    run_id: str | None = None

    def skip(self, what: str, why: str) -> None:
        self.notes.append(f"{what} skipped: {why}")
        log.warning("%s skipped: %s", what, why)

    def save_figure(self, fig, stem: str) -> None:
        self.files += figures.save(fig, self.out_dir, stem, list(self.cfg.formats), int(self.cfg.dpi))

    def write_notes(self) -> None:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        notes = self.out_dir / "report_notes.md"
        notes.write_text("# Report notes\n\n" + ("\n".join(f"- {n}" for n in self.notes) or "- none") + "\n")
        self.files.append(notes)


def render(exp: Experiment, report: Report) -> None:
    if not exp.jobs:
        report.notes.append("the experiment has no finished job runs")
    for job in exp.superseded:
        report.notes.append(f"run {job.run_id} ({job.model} {job.variant}) superseded by a newer run of the same "
                            "model, protection and rates; to compare settings, give each its own tracking.experiment")
    for output in OUTPUTS:
        try:
            output(exp, report.cfg, report)
        except Exception as exc:  # one broken output must not cost the others
            log.exception("%s failed", output.__name__)
            report.notes.append(f"{output.__name__} failed: {type(exc).__name__}: {exc}")
    report.write_notes()


def _log_report_run(client, experiment_id: str, report: Report, source_runs: int) -> None:
    run = client.create_run(experiment_id, run_name="report", tags={"run_kind": "report"})
    try:
        for path in report.files:
            client.log_artifact(run.info.run_id, str(path))
        client.log_param(run.info.run_id, "source_runs", source_runs)
        client.set_terminated(run.info.run_id, "FINISHED")
    except BaseException:
        client.set_terminated(run.info.run_id, "FAILED")
        raise
    report.run_id = run.info.run_id


FIGURE_FORMATS = ("png", "pdf", "svg", "eps", "ps", "jpg", "tif")


def check_report_config(cfg: Any) -> None:
    """A one-line ConfigError for a bad value of conf/report.yaml, before any run is read."""
    expect_str(cfg.get("experiment_name"), "experiment_name")
    for fmt in expect_list(cfg.get("formats"), "formats"):
        expect_choice(fmt, "formats", FIGURE_FORMATS)
    expect_int(cfg.get("dpi"), "dpi", 10)
    expect_bool(cfg.get("log_to_mlflow"), "log_to_mlflow")
    expect_number(cfg.get("confidence"), "confidence", 0, 1, low_open=True, high_open=True)
    expect_number(cfg.critical.get("level"), "critical.level", 0, 1, low_open=True)
    expect_bool(cfg.critical.get("relative"), "critical.relative")
    expect_int(cfg.fig2.get("bins"), "fig2.bins", 1)
    if cfg.conditioned.get("rates") is not None:
        expect_list(cfg.conditioned.rates, "conditioned.rates", lambda v, path: expect_number(v, path, 0, 1))
    expect_number(cfg.conditioned.get("loss"), "conditioned.loss", 0, 1, low_open=True, high_open=True)
    for key in ("global_bound", "neuron_bound", "k"):
        expect_number(cfg.fig3.get(key), f"fig3.{key}", 0, low_open=True)
    for fig in ("fig1", "fig2", "fig5"):
        for key in ("model", "dataset"):
            expect_str(cfg[fig].get(key), f"{fig}.{key}", allow_none=True)


def build_report(cfg: Any) -> Report:
    """Build every figure and table of `cfg.experiment_name`; log them to a report run when asked."""
    check_report_config(cfg)
    client = open_store(cfg)
    experiment = client.get_experiment_by_name(cfg.experiment_name)
    if experiment is None:
        raise LookupError(f"no MLflow experiment named {cfg.experiment_name!r}")
    report = Report(cfg, Path(cfg.figures_dir) / cfg.experiment_name)
    with tempfile.TemporaryDirectory() as tmp:
        exp = Experiment(client, experiment.experiment_id, Path(tmp))
        render(exp, report)
    if cfg.log_to_mlflow:
        _log_report_run(client, experiment.experiment_id, report, len(exp.jobs))
    for note in report.notes:
        log.info("note: %s", note)
    log.info("report of %s: %d files in %s", cfg.experiment_name, len(report.files), report.out_dir)
    return report


def main() -> None:

    @hydra.main(config_path=str(CONF_DIR), config_name="report", version_base="1.3")
    def _run(cfg: DictConfig) -> None:
        try:
            build_report(cfg)
        except (FileNotFoundError, LookupError, ConfigError) as exc:
            log.error("error: %s", exc)
            raise SystemExit(2) from None

    # `experiment=<name>` would select a file of the pipeline's config group conf/experiment/ (which
    # shares this config directory); the report's key is experiment_name.
    sys.argv = [("experiment_name=" + a[len("experiment="):]) if a.startswith("experiment=") else a
                for a in sys.argv]
    _run()
