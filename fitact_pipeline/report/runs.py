"""Reading runs from MLflow: a finished job run reduced to what the report uses, the experiment's
runs, and their JSON artifacts fetched on demand. Every number of the report comes from here (never
from in-memory results), so anyone with the store can regenerate it."""
from __future__ import annotations

import json
import os
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlflow.tracking import MlflowClient

from ..faults import FAULT_MODELS
from ..faults.outcomes import OUTCOMES
from ..faults.units import suffix
from ..protect import PROTECTIONS
from ..tracking import OUTCOME_STATS

# sdc_mean/ber_1e-05, critical_ci_low/..., wrong_to_right_std/... (faults/outcomes.py, tracking.py)
_OUTCOME_METRIC = re.compile(rf"^(?P<outcome>{'|'.join(OUTCOMES)})_(?P<stat>{'|'.join(OUTCOME_STATS)})"
                             r"/ber_(?P<rate>[0-9.e+-]+)$")
_RATE_METRIC = re.compile(r"^acc_(?P<stat>[a-z0-9_]+)/ber_(?P<rate>[0-9.e+-]+)$")

def rate_stats(metrics: dict[str, float]) -> dict[float, dict[str, float]]:
    """{rate: {stat: value}} from one run's metrics."""
    out: dict[float, dict[str, float]] = defaultdict(dict)
    for name, value in metrics.items():
        match = _RATE_METRIC.match(name)
        if match:
            out[float(match["rate"])][match["stat"]] = value
    return dict(out)


def outcome_stats(metrics: dict[str, float]) -> dict[float, dict[str, dict[str, float]]]:
    """{rate: {outcome: {stat: value}}} of the SDC, critical and wrong-to-right rates a run logged."""
    out: dict[float, dict[str, dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for name, value in metrics.items():
        match = _OUTCOME_METRIC.match(name)
        if match:
            out[float(match["rate"])][match["outcome"]][match["stat"]] = value
    return {rate: dict(per) for rate, per in out.items()}


def patterns(param: str) -> str:
    """A list param as MLflow stores it ("['0.0.*', '0.3.*']") written short: 0.0.*,0.3.*"""
    return re.sub(r"[\[\]' ]", "", param)


def variant_of(tags: dict[str, str], params: dict[str, str]) -> str:
    """The curve label of a run: its protection, plus what makes two runs of one protection
    different curves (a granularity other than the protection's default, FitAct's smooth form, the
    GBReLU bound, a restricted fault space, a stored format other than Q15.16). Runs that differ only in other settings share a label
    (and a rerun of the same slot supersedes the older run, see latest_per_slot)."""
    protection = tags.get("protection", "?")
    label = protection
    granularity = tags.get("granularity")
    default = PROTECTIONS[protection].default_granularity if protection in PROTECTIONS else "layer"
    if granularity and granularity != default:
        label += f" {granularity}"
    if protection in PROTECTIONS:
        label += PROTECTIONS[protection].label(params)
    include = params.get("faults.include", "[]")
    if include not in ("[]", "", "None"):
        label += " faults in " + patterns(include)
    label += unit_suffix(tags)
    user_label = params.get("tracking.label", "None")
    if user_label not in ("None", ""):
        label += f" {user_label}"
    label += format_suffix(params)
    weights = params.get("weight_protection.name", "none")
    if weights != "none":
        label += f" + weights {weights}" + (f" {params['weight_protection.granularity']}"
                                            if params.get("weight_protection.granularity", "tensor") != "tensor" else "")
    design = params.get("campaign.design", "classic")
    if design != "classic":
        label += f" ({design}, n={params.get('campaign.images_per_trial')})"
    return label


def format_suffix(params: dict[str, str]) -> str:
    """' in fp8_e4m3' (or ' in Q7.8' for another fixed point) for a run whose stored format is not
    the paper's Q15.16, else '': one panel may hold one model in several formats (repro_cpu_formats)."""
    fmt = params.get("faults.fmt", "fixed")
    bits = (params.get("faults.word_bits", "32"), params.get("faults.frac_bits", "16"))
    if fmt == "fixed" and bits == ("32", "16"):
        return ""
    return " in " + (f"Q{int(bits[0]) - int(bits[1]) - 1}.{bits[1]}" if fmt == "fixed" else fmt)


def rate_unit(tags: dict[str, str]) -> tuple[str, str]:
    """(the run's rate unit, its fault model's own)."""
    fault_model = tags.get("fault_model", "memory")
    native = FAULT_MODELS[fault_model].rate_units[0] if fault_model in FAULT_MODELS else "bit"
    return tags.get("rate_unit", native), native


def unit_suffix(tags: dict[str, str]) -> str:
    """' (per stored word)' for a run whose rate unit is not its fault model's own, else ''."""
    return suffix(*rate_unit(tags))


def without_design(label: str) -> str:
    """``fitact layer`` of ``fitact layer (nested, n=25)``: the curve's protection variant without the
    campaign design that measured it (the suffix variant_of adds)."""
    return re.sub(r" \([a-z_]+, n=[^)]*\)$", "", label)


def context_of(tags: dict[str, str]) -> tuple:
    """(model, dataset, fault model, context key): runs of one context saw the same fault maps in
    their shared tensors (identity.context_key, logged as a tag). The first three name a panel:
    figures and tables are split by fault model."""
    return (tags.get("model"), tags.get("dataset"), tags.get("fault_model", "memory"), tags.get("result_context"))


@dataclass
class JobRun:
    """One finished job run, reduced to what the report uses."""
    run_id: str
    model: str
    dataset: str
    protection: str
    fault_model: str
    variant: str
    context: tuple
    params: dict[str, str]
    metrics: dict[str, float]
    curve: dict[float, dict[str, float]] = field(default_factory=dict)
    start_time: int = 0  # ms since the epoch, as MLflow stores it
    slot: str = ""  # the curve it belongs to: identity.slot_key, logged as a tag
    outcomes: dict[float, dict[str, dict[str, float]]] = field(default_factory=dict)  # SDC etc. per rate

    @classmethod
    def from_run(cls, run) -> "JobRun":
        tags, params = run.data.tags, run.data.params
        return cls(run.info.run_id, tags.get("model", "?"), tags.get("dataset", "?"), tags.get("protection", "?"),
                   tags.get("fault_model", "memory"), variant_of(tags, params), context_of(tags), dict(params),
                   dict(run.data.metrics), rate_stats(run.data.metrics), int(run.info.start_time or 0),
                   tags.get("result_slot", ""), outcome_stats(run.data.metrics))


def finished_jobs(runs) -> list[JobRun]:
    return [JobRun.from_run(r) for r in runs if r.info.status == "FINISHED" and r.data.tags.get("run_kind") == "job"]


def latest_per_slot(jobs: list[JobRun]) -> tuple[list[JobRun], list[JobRun]]:
    """(kept, superseded): of finished runs of the same slot (the same result identity, rates
    aside: identity.slot_key) and the same rate set, only the newest is kept: a rerun of the same
    settings replaces the older run instead of merging with it."""
    latest: dict[tuple, JobRun] = {}
    superseded = []
    for job in sorted(jobs, key=lambda j: j.start_time):
        slot = (job.slot, tuple(sorted(job.curve)))
        if slot in latest:
            superseded.append(latest[slot])
        latest[slot] = job
    return sorted(latest.values(), key=lambda j: j.start_time), superseded


def label_variants(jobs: list[JobRun]) -> list[JobRun]:
    """Give runs of different slots in one context different curve labels: a setting the automatic
    label does not show (a post-training schedule, the fault-space targets) must not merge two
    results into one curve; the later slot gets a numbered label (oldest first)."""
    slots: dict[tuple, list[str]] = defaultdict(list)
    for job in sorted(jobs, key=lambda j: j.start_time):
        seen = slots[(job.context, job.variant)]
        if job.slot not in seen:
            seen.append(job.slot)
    for job in jobs:
        n = slots[(job.context, job.variant)].index(job.slot) + 1
        if n > 1:
            job.variant = f"{job.variant} (setting #{n})"
    return jobs


def current_jobs(jobs: list[JobRun]) -> tuple[list[JobRun], list[JobRun]]:
    """(kept, superseded) with the kept runs' curve labels made unique per slot."""
    kept, superseded = latest_per_slot(jobs)
    return label_variants(kept), superseded


def search_all(client: MlflowClient, experiment_id: str, filter_string: str) -> list:
    runs, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000, page_token=token)
        runs.extend(page)
        token = page.token
        if not token:
            return runs


class Experiment:
    """The finished job runs of one experiment (newest per slot), and their artifacts on demand."""

    def __init__(self, client: MlflowClient, experiment_id: str, workdir: Path):
        self.client, self.experiment_id, self.workdir = client, experiment_id, workdir
        self.jobs, self.superseded = current_jobs(finished_jobs(search_all(client, experiment_id,
                                                                           "tags.run_kind = 'job'")))
        self._artifacts: dict[tuple[str, str], Any] = {}

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


def open_store(cfg: Any) -> MlflowClient:
    # one progress bar per downloaded JSON would drown the notes in the log
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if cfg.get("tracking_uri"):
        return MlflowClient(cfg.tracking_uri)
    db = Path(cfg.tracking_root) / "mlflow.db"
    if not db.exists():  # MlflowClient would silently create an empty store
        raise FileNotFoundError(f"no MLflow store at {db} (set tracking_root=... or tracking_uri=...)")
    return MlflowClient(f"sqlite:///{db.resolve()}")
