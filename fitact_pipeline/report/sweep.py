"""The sweep's resilience figure: the children of one sweep's parent run, drawn as the report's
Fig. 6 (the same curve merging, so runs of another seed or setting stay separate curves)."""
from __future__ import annotations

from pathlib import Path

from mlflow.tracking import MlflowClient

from . import figures
from .runs import current_jobs, finished_jobs
from .select import merge_curves, panels


def sweep_panels(client: MlflowClient, parent_run_id: str) -> dict[tuple[str, str], dict]:
    """{(model, dataset): {curve label: {rate: stats}}} of the finished children of one sweep."""
    parent = client.get_run(parent_run_id)
    runs = client.search_runs([parent.info.experiment_id],
                              filter_string=f"tags.mlflow.parentRunId = '{parent_run_id}'", max_results=10000)
    return panels(merge_curves(current_jobs(finished_jobs(runs))[0]), [])


def sweep_resilience_figure(client: MlflowClient, parent_run_id: str, out_dir: Path) -> Path | None:
    curves = sweep_panels(client, parent_run_id)
    if not curves:
        return None
    fig, _ = figures.fig6_grid(curves)
    return figures.save(fig, Path(out_dir), "resilience", ["png"], 120)[0]
