"""The Python API (fitact_pipeline.api): harden one's own nn.Module from DataLoaders and measure it,
with the statistics a pipeline job logs; and the runnable example that the README shows."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fitact_pipeline import Hardened, harden, measure_resilience
from fitact_pipeline.protect import BoundedReLU
from fitact_pipeline.registry import ConfigError
from fitact_pipeline.stats import summarize

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def setting(one_thread):
    """A GELU/ELU MLP trained a little on separable blobs, and its loaders."""
    gen = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 6, generator=gen) * 3
    y = torch.arange(360) % 3
    x = centres[y] + torch.randn(360, 6, generator=gen)
    model = nn.Sequential(nn.Linear(6, 32), nn.BatchNorm1d(32), nn.GELU(), nn.Linear(32, 32), nn.ELU(), nn.Linear(32, 3))
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(30):
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[:240]), y[:240]).backward()
        opt.step()
    loaders = [DataLoader(TensorDataset(x[s], y[s]), batch_size=40) for s in (slice(0, 240), slice(240, 300), slice(300, 360))]
    return model.eval(), loaders


def test_harden_protects_a_copy_and_post_trains(setting):
    model, (train, val, test) = setting
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fit = harden(model, "fitact", train, val, posttrain={"epochs": 2, "max_batches_per_epoch": 3})
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the user's model untouched
    sites = {n: m for n, m in fit.model.named_modules() if isinstance(m, BoundedReLU)}
    assert {m.kind for m in sites.values()} == {"gelu", "elu"} and fit.granularity == "neuron"
    assert sites["4"].lower.shape == (32,) and set(fit.lower) == {"4"}
    assert [h["epoch"] for h in fit.bounds_info["history"]] == [0, 1, 2] and 0 < fit.clean_val_accuracy <= 1
    assert not any(isinstance(m, nn.BatchNorm1d) for m in fit.reference.modules())  # folded, as deployed


def test_measure_resilience_returns_the_pipelines_statistics_paired_across_protections(setting):
    model, (train, val, test) = setting
    ranger = harden(model, "ranger", train)
    plain = measure_resilience(ranger.reference, test, rates=[1e-3], trials=3, seed=5)
    bounded = measure_resilience(ranger, test, rates=[1e-3], trials=3, seed=5)
    assert set(plain.per_rate[1e-3]) == set(summarize([0.5, 0.6], pool=10)) | {"images_per_trial"}
    assert plain.per_rate[1e-3]["trials"] == 3 and len(plain.trials) == 3
    for a, b in zip(plain.trials, bounded.trials):  # trial i hits the same weight bits in both models
        weights = lambda t: {k: v for k, v in t["flips_per_tensor"].items() if not k.endswith((".bound", ".lower"))}
        assert weights(a) == weights(b)
    assert "| 0.001 |" in plain.table() and plain.mean(1e-3) == plain.per_rate[1e-3]["mean"]
    again = measure_resilience(ranger, (torch.cat([x for x, _ in test]), torch.cat([y for _, y in test])),
                               rates=[1e-3], trials=3, seed=5)
    assert again.per_rate == bounded.per_rate  # reproducible, tensors or loader alike
    f32 = measure_resilience(ranger, test, rates=[1e-3], trials=1, faults="float32")
    assert f32.fault_space["format"] != bounded.fault_space["format"]


def test_clipact_search_and_bad_input(setting):
    model, (train, val, test) = setting
    clip = harden(model, "clipact", train, val, search={"rates": [1e-3], "candidates": 2, "iterations": 1,
                                                       "trials": 1, "images": 40})
    assert set(clip.bounds_info["thresholds"]) == {"2", "4"}
    assert isinstance(clip, Hardened) and harden(model, "clipact", train).bounds_info == {}  # no search asked
    with pytest.raises(ValueError, match="unknown faults 'q15'; choose one of: .*q15_16"):
        measure_resilience(model, test, rates=[1e-3], faults="q15")
    with pytest.raises(ConfigError, match="faults.fmt='fixd' is not allowed"):
        measure_resilience(model, test, rates=[1e-3], faults={"fmt": "fixd"})
    with pytest.raises(ValueError, match="fitact's bounds stage \\(posttrain: .*\\) needs val: pass val_loader"):
        harden(model, "fitact", train)


@pytest.mark.slow
def test_the_example_runs_and_logs_to_mlflow(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "examples/harden_your_model.py", "--epochs", "3", "--trials", "2",
                           "--rates", "1e-5", "3e-4", "--mlflow", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [line for line in proc.stdout.splitlines() if line.startswith("| ")]
    assert rows[0] == "| protection | clean | 1e-05 | 0.0003 |"
    assert [r.split("|")[1].strip() for r in rows[1:]] == ["none", "ranger", "clipact", "fitact"]
    assert all(0 <= float(v) <= 100 for r in rows[1:] for v in r.split("|")[2:5])
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("harden_your_model").experiment_id])
    assert sorted(r.data.tags["protection"] for r in runs) == ["clipact", "fitact", "none", "ranger"]
    assert all(r.data.metrics["acc_trials/ber_1e-05"] == 2 for r in runs)


def test_conditioned_design_answers_any_rate_from_the_api(setting, tmp_path):
    from fitact_pipeline.faults.conditioned import acc_at_rate, rate_at_loss
    model, (train, val, test) = setting
    fit = harden(model, "ranger", train)
    res = measure_resilience(fit, test, rates=[1e-5, 1e-4], trials=3, seed=2, design="conditioned",
                             images_per_trial=20, mlflow={"experiment": "api_conditioned",
                                                          "tracking_uri": f"sqlite:///{tmp_path}/mlflow.db"})
    assert res.ak_table is not None and res.ak_table["rates"] == [1e-5, 1e-4]
    for rate in (1e-5, 1e-4):  # the campaign's own rates: what it reported
        assert res.at_rate(rate)["mean"] == pytest.approx(res.per_rate[rate]["mean"], abs=1e-12)
    between = res.at_rate(3e-5)  # a rate the campaign did not run
    assert between == acc_at_rate(res.ak_table, 3e-5)
    assert between["ci_low"] <= between["mean"] <= between["ci_high"]
    assert res.rate_at_loss(0.02) == rate_at_loss(res.ak_table, 0.02)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    run = client.get_run(res.run_id)
    assert run.data.params["campaign.design"] == "conditioned"
    assert "conditioned_ak.json" in {a.path for a in client.list_artifacts(res.run_id)}
    classic = measure_resilience(fit, test, rates=[1e-4], trials=2)
    with pytest.raises(ValueError, match="needs a count-conditioned campaign"):
        classic.at_rate(1e-5)
    with pytest.raises(ValueError, match=r"^campaign.design='bogus' is not allowed; choose one of: classic, nested, conditioned$"):
        measure_resilience(fit, test, rates=[1e-4], design="bogus")
    with pytest.raises(ValueError, match=r"^campaign.images_per_trial=0 is not allowed"):
        measure_resilience(fit, test, rates=[1e-4], design="nested", images_per_trial=0)
    with pytest.raises(ValueError, match=r"^campaign.images_per_trial='auto' is not allowed; the conditioned"):
        measure_resilience(fit, test, rates=[1e-4], design="conditioned", images_per_trial="auto")
    with pytest.raises(ValueError, match="stored-parameter fault model"):
        measure_resilience(fit, test, rates=[1e-4], design="conditioned", images_per_trial=10,
                           faults={"model": "activation"})


def test_logging_a_campaign_leaves_the_callers_mlflow_state_alone(setting, tmp_path):
    """measure_resilience(mlflow=...) logs into its own store and experiment; a run the caller starts
    afterwards goes where the caller's settings say (no experiment id from the other store)."""
    import mlflow
    model, (train, val, test) = setting
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mine.db")
    try:
        res = measure_resilience(model, test, rates=[1e-4], trials=2,
                                 mlflow={"experiment": "api_other", "tracking_uri": f"sqlite:///{tmp_path}/api.db"})
        assert mlflow.get_tracking_uri() == f"sqlite:///{tmp_path}/mine.db"
        with mlflow.start_run() as run:  # the caller's store, its default experiment
            mlflow.log_metric("x", 1.0)
        assert MlflowClient(f"sqlite:///{tmp_path}/mine.db").get_run(run.info.run_id).data.metrics == {"x": 1.0}
        assert MlflowClient(f"sqlite:///{tmp_path}/api.db").get_run(res.run_id).info.status == "FINISHED"
    finally:
        mlflow.set_tracking_uri("")
