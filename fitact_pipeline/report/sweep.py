"""The sweep's resilience figure: the children of one sweep's parent run, drawn as the report's
Fig. 6 (the same curve merging, so runs of another seed or setting stay separate curves)."""
from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from . import figures
from .runs import current_jobs, finished_jobs
from .select import band_caption, merge_curves, panels


def sweep_jobs(client: MlflowClient, parent_run_id: str) -> list:
    """The finished children of one sweep (newest per curve)."""
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=10000)
    return current_jobs(finished_jobs(runs))[0]


def sweep_panels(client: MlflowClient, parent_run_id: str) -> dict[tuple[str, str], dict]:
    """{(model, dataset): {curve label: {rate: stats}}} of the finished children of one sweep."""
    return panels(merge_curves(sweep_jobs(client, parent_run_id)), [])


def sweep_resilience_figure(client: MlflowClient, parent_run_id: str, out_dir: Path) -> Path | None:
    jobs = sweep_jobs(client, parent_run_id)
    curves = panels(merge_curves(jobs), [])
    if not curves:
        return None
    fig, _ = figures.fig6_grid(curves, band_caption(jobs))
    return figures.save(fig, Path(out_dir), "resilience", ["png"], 120)[0]
