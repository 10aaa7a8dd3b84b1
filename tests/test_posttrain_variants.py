"""Issue 19's post-training variants: the literal penalty (zeta * sum of bounds), fault-aware
post-training, per-epoch bound diagnostics (and their MLflow curves), and their config checks."""
import copy

import pytest
import torch

from fitact_pipeline.evaluate import accuracy
from fitact_pipeline.protect import profile_activations, protect_model
from fitact_pipeline.protect.bound_training import bound_diagnostics, bound_penalty
from fitact_pipeline.protect.posttrain import DEFAULTS, posttrain_bounds, result_settings
from fitact_pipeline.validate import ConfigError, preflight

DIAGNOSTICS = {"mean_bound_ratio", "zero_fraction", "ratio_q05", "ratio_q25", "ratio_q50", "ratio_q75", "ratio_q95",
               "penalty"}


@pytest.fixture(scope="module")
def digits_fitact(trained_digits, one_thread):
    dm, model = trained_digits()
    clean = accuracy(model, dm.val_dataloader())
    prof = profile_activations(model, dm.profile_dataloader(300), 300)
    return dm, protect_model(model, "fitact", "neuron", prof, hard=True), clean


def _only_bounds_changed(before, model):
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    return changed and all(k.endswith(".bound") for k in changed)


def test_diagnostics_of_known_bounds():
    initial = {"a.bound": torch.tensor([1.0, 2.0, 4.0, 0.0]), "b.bound": torch.tensor(2.0)}
    bounds = {"a.bound": torch.tensor([0.0, 1.0, 4.0, 0.0]), "b.bound": torch.tensor(1.0)}
    d = bound_diagnostics(bounds, initial)
    assert d["mean_bound_ratio"] == pytest.approx((5 / 7 + 0.5) / 2)  # a ratio of means, per tensor
    assert d["zero_fraction"] == pytest.approx(2 / 5)  # the neuron profiled at 0 counts as off too
    # per-element ratios over elements profiled away from 0: 0, 0.5, 1 (a) and 0.5 (b)
    assert d["ratio_q50"] == pytest.approx(0.5) and d["ratio_q05"] == pytest.approx(0.075)
    assert float(bound_penalty([torch.tensor([1.0, -3.0])], "sum")) == 4.0
    assert float(bound_penalty([torch.tensor([1.0, 3.0])], "mean_square")) == 5.0


def test_sum_penalty_runs_shrinks_and_records_diagnostics_per_epoch(digits_fitact):
    dm, protected, clean = digits_fitact
    model = copy.deepcopy(protected)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    res = posttrain_bounds(model, dm, {"epochs": 2, "lr": 0.03, "zeta": 1e-4, "penalty": "sum",
                                       "max_accuracy_drop": 0.05}, clean)
    assert _only_bounds_changed(before, model)
    assert [h["epoch"] for h in res["history"]] == [0, 1, 2]
    assert all(DIAGNOSTICS <= set(h) for h in res["history"])
    assert res["history"][0]["mean_bound_ratio"] == 1.0 and res["history"][0]["zero_fraction"] < 1
    assert res["history"][2]["ratio_q50"] < 1.0  # the median neuron's bound moved down
    assert DIAGNOSTICS <= set(res["diagnostics"])


def test_fault_aware_posttraining_moves_only_bounds(digits_fitact):
    dm, protected, clean = digits_fitact
    model = copy.deepcopy(protected)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plain = copy.deepcopy(protected)
    cfg = {"epochs": 1, "lr": 0.03, "zeta": 0.1, "max_accuracy_drop": 0.05, "max_batches_per_epoch": 6}
    posttrain_bounds(plain, dm, cfg, clean)
    res = posttrain_bounds(model, dm, {**cfg, "fault_rate": 1e-3, "fault_weight": 1.0}, clean)
    assert _only_bounds_changed(before, model)  # the twin's faults never reach the trained model
    assert res["history"][1]["mean_bound_ratio"] < 1.0
    # the twin's term changed where the bounds went
    moved = [k for k, v in model.state_dict().items() if k.endswith(".bound")
             and not torch.equal(v, plain.state_dict()[k])]
    assert moved


def test_every_post_training_result_setting_is_keyed_and_the_progress_bar_is_not():
    assert set(result_settings({**DEFAULTS})) == set(DEFAULTS) - {"progress_bar"}
    assert result_settings({**DEFAULTS, "penalty": "sum"})["penalty"] == "sum"
    assert result_settings({**DEFAULTS, "fault_rate": 1e-4})["fault_rate"] == 1e-4


def test_posttrain_history_is_logged_per_epoch(tmp_path):
    import mlflow
    from mlflow.tracking import MlflowClient

    from fitact_pipeline.protect.bounds_stages import BOUNDS_STAGES
    from fitact_pipeline.tracking import _log_bounds_info

    mlflow.set_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db")
    history = [{"epoch": e, "loss": 1.0 / (e + 1), "val_acc": 0.9, "mean_bound_ratio": 1 - 0.1 * e,
                "zero_fraction": 0.01 * e, "ratio_q50": 1 - 0.1 * e, "penalty": 0.5} for e in range(3)]
    with mlflow.start_run() as run:
        _log_bounds_info(BOUNDS_STAGES["posttrain"], {"history": history, "time_s": 2.0, "mean_bound_ratio": 0.8, "selected_epoch": 2}, 100.0)
    client = MlflowClient(f"sqlite:///{tmp_path}/mlflow.db")
    for name in ("posttrain/zero_fraction", "posttrain/ratio_q50", "posttrain/penalty", "posttrain/mean_bound_ratio"):
        steps = sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, name))
        assert [s for s, _ in steps] == [0, 1, 2], name
    assert client.get_run(run.info.run_id).data.metrics["posttrain_overhead"] == pytest.approx(0.02)
    mlflow.set_tracking_uri("")


@pytest.mark.parametrize("argv, fragment", [
    (["posttrain.penalty=foo"], "posttrain.penalty='foo' is not allowed; choose one of: mean_square, sum"),
    (["posttrain.fault_rate=2"], "posttrain.fault_rate=2 is not allowed; expected a number in (0, 1] or null"),
    (["posttrain.fault_rate=0"], "posttrain.fault_rate=0 is not allowed"),
    (["posttrain.fault_weight=-1"], "posttrain.fault_weight=-1 is not allowed; expected a number >= 0"),
    (["protection.posttrain=maybe"], "protection.posttrain='maybe' is not allowed; expected true"),
])
def test_bad_posttrain_values_are_refused_with_one_line(argv, fragment):
    with pytest.raises(ConfigError) as err:
        preflight(argv)
    assert fragment in str(err.value) and "\n" not in str(err.value)
