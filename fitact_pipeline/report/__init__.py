"""The report: reading runs from MLflow (runs.py), choosing what to draw (select.py), drawing and
tabulating (figures.py, tables.py, outputs.py), and building it all (build.py)."""
from .build import Report, build_report, main
from .runs import Experiment, JobRun, current_jobs, latest_per_slot, rate_stats, variant_of, without_design
from .select import merge_curves
from .sweep import sweep_resilience_figure

__all__ = ["Experiment", "JobRun", "Report", "build_report", "current_jobs", "latest_per_slot", "main", "merge_curves",
           "rate_stats", "sweep_resilience_figure", "variant_of", "without_design"]
