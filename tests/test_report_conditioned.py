"""The report's count-conditioned output: acc(rate) at rates the campaign never ran and the rate of
the first lost point, read back from the a_k table the run logged to MLflow."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from omegaconf import OmegaConf

from fitact_pipeline.faults.conditioned import acc_at_rate, rate_at_loss
from fitact_pipeline.registry import ConfigError
from fitact_pipeline.report import build_report
from fitact_pipeline.report.tables import read_csv

ROOT = Path(__file__).resolve().parent.parent
EXP = "report_conditioned_test"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report_conditioned")
    cmd = [sys.executable, "-m", "fitact_pipeline", "experiment=quickstart", "protection=none",
           "campaign.design=conditioned", "campaign.images_per_trial=30", "campaign.trials=3",
           "campaign.rates=[1e-6,1e-5]", "train.epochs=2", "overhead.enabled=false", "progress_bar=false",
           f"tracking.experiment={EXP}", f"tracking.root={tmp}/mlruns", f"cache_dir={tmp}/cache",
           f"figures_dir={tmp}/sweepfig", f"hydra.run.dir={tmp}/run"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp}/mlruns/mlflow.db")
    exp = client.get_experiment_by_name(EXP)
    job = next(r for r in client.search_runs([exp.experiment_id]) if r.data.tags.get("run_kind") == "job")
    table = json.loads(Path(client.download_artifacts(job.info.run_id, "conditioned_ak.json", str(tmp))).read_text())
    return tmp, table


def _cfg(tmp, **conditioned):
    cfg = OmegaConf.load(ROOT / "conf" / "report.yaml")
    del cfg["hydra"]
    cfg.merge_with({"experiment_name": EXP, "tracking_root": f"{tmp}/mlruns", "figures_dir": f"{tmp}/figures",
                    "log_to_mlflow": False, "conditioned": conditioned})
    return cfg


def test_any_rate_and_the_first_lost_point_from_the_logged_table(store):
    tmp, table = store
    rates = [1e-9, 3e-7, 2e-6]  # none of them run by the campaign
    report = build_report(_cfg(tmp, rates=rates, loss=0.02))
    rows = read_csv(report.out_dir / "conditioned_rates.csv")
    assert [float(r["rate"]) for r in rows] == rates
    for row, rate in zip(rows, rates):
        expect = acc_at_rate(table, rate)
        for key in ("mean", "ci_low", "ci_high", "tail_mass"):
            assert float(row[key]) == pytest.approx(expect[key], rel=1e-12, abs=1e-15)
        assert float(row["ci_low"]) <= float(row["mean"]) <= float(row["ci_high"])
    first = read_csv(report.out_dir / "first_loss.csv")
    assert len(first) == 1 and first[0]["protection"].startswith("none")
    expect = rate_at_loss(table, 0.02)
    assert float(first[0]["rate"]) == pytest.approx(expect["rate"])
    assert float(first[0]["rate_low"]) <= float(first[0]["rate"]) <= float(first[0]["rate_high"])
    assert "Rate at which accuracy first falls 2 point(s) below clean" in (report.out_dir / "conditioned_rates.md").read_text()
    # without rates: the campaign's own
    own = read_csv(build_report(_cfg(tmp, rates=None, loss=0.01)).out_dir / "conditioned_rates.csv")
    assert [float(r["rate"]) for r in own] == [1e-6, 1e-5]


@pytest.mark.parametrize("conditioned, fragment", [
    ({"rates": [1e-7, 2.0], "loss": 0.01}, "conditioned.rates=2.0"),
    ({"rates": None, "loss": 0.0}, "conditioned.loss=0.0"),
])
def test_bad_conditioned_report_values_are_one_line(store, conditioned, fragment):
    tmp, _ = store
    with pytest.raises(ConfigError) as err:
        build_report(_cfg(tmp, **conditioned))
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_band_captions_name_each_designs_interval():
    from types import SimpleNamespace

    from fitact_pipeline.report.select import band_caption
    job = lambda design: SimpleNamespace(params={} if design is None else {"campaign.design": design})
    assert "bounded" in band_caption([job(None), job("nested")]) and "tail" not in band_caption([job("nested")])
    conditioned = band_caption([job("conditioned")])
    assert "truncated tail" in conditioned and "bounded" not in conditioned
    mixed = band_caption([job("nested"), job("conditioned"), job("classic")])
    assert mixed.startswith("classic/nested: ") and "; conditioned: " in mixed
