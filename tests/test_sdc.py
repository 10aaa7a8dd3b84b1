"""SDC, critical and wrong-to-right rates: each image's faulty prediction against the fault-free
prediction of the same image (faults/outcomes.py, DESIGN.md §2.5)."""
import contextlib
import copy
import json
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn

from fitact_pipeline import measure_resilience, stats
from fitact_pipeline.evaluate import MISS, predictions
from fitact_pipeline.faults import FaultInjector, run_campaign
from fitact_pipeline.faults.designs import DESIGNS
from fitact_pipeline.faults.outcomes import trial_outcomes
from fitact_pipeline.models import build_model
from fitact_pipeline.protect import fold_batchnorm, protect_model

pytestmark = pytest.mark.usefixtures("one_thread")

# Linear(2, 2) without bias, clean weight = identity: the prediction is the larger coordinate.
IMAGES = torch.tensor([[2.0, 1.0], [1.0, 2.0], [2.0, 1.0], [1.0, 3.0]])
LABELS = torch.tensor([0, 1, 1, 0])  # clean: right, right, wrong, wrong (clean accuracy 0.5)
NAN = float("nan")
# trial -> faulty weight, and what it must give: (accuracy, sdc, critical, wrong_to_right)
FAULTS = {
    0: ([[0.0, 1.0], [1.0, 0.0]], (0.5, 1.0, 0.5, 0.5)),  # swaps every prediction: accuracy unchanged, all SDC
    1: ([[1.0, 0.0], [0.0, NAN]], (0.0, 1.0, 0.5, 0.0)),  # every logit row non-finite: a miss and an SDC
    2: ([[1.0, 0.0], [0.0, 0.4]], (0.25, 0.25, 0.25, 0.0)),  # only image 1 changes (1 -> 0): critical
    3: ([[1.0, 0.0], [0.0, 1.0]], (0.5, 0.0, 0.0, 0.0)),  # a fault that leaves the value: no SDC
}


class _Map:
    """The parts of a FaultMap a campaign reads."""
    effective_flips = 1

    def summary(self):
        return {"num_flips": 1, "effective_flips": 1, "realised_ber": 0.0, "flips_per_bit": [],
                "flips_per_tensor": {}}


class _KnownFaults:
    """Trial t sets the weight to FAULTS[t] for its pass: which images flip is known by hand."""

    def __init__(self, model):
        self.weight = model.weight

    @contextlib.contextmanager
    def inject(self, rate, seed, trial):
        clean = self.weight.detach().clone()
        with torch.no_grad():
            self.weight.copy_(torch.tensor(FAULTS[trial][0]))
        try:
            yield _Map()
        finally:
            with torch.no_grad():
                self.weight.copy_(clean)


def _identity():
    model = nn.Linear(2, 2, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.eye(2))
    return model.eval()


def test_hand_built_faults_give_the_known_sdc_critical_and_rescues():
    model = _identity()
    result = run_campaign(model, _KnownFaults(model), IMAGES, LABELS, [0.1], trials=4, seed=0, batch_size=3,
                          progress=False)
    assert result.clean_accuracy == 0.5
    for record in result.trials:
        expected = FAULTS[record["trial"]][1]
        got = tuple(record[k] for k in ("accuracy", "sdc", "critical", "wrong_to_right"))
        assert got == expected, f"trial {record['trial']}"
        assert record["wrong_to_right_count"] == round(expected[3] * 4)
    sdc = result.outcomes[0.1]["sdc"]
    assert sdc["mean"] == pytest.approx((1.0 + 1.0 + 0.25 + 0.0) / 4) and sdc["trials"] == 4
    assert sdc["ci_low"] < sdc["mean"] < sdc["ci_high"]
    # the outcome's interval of record is the bounded one of its per-trial fractions, as for accuracy
    assert (sdc["ci_low"], sdc["ci_high"]) == stats.bounded_mean_ci([1.0, 1.0, 0.25, 0.0])[1:]
    assert set(result.outcomes[0.1]) == {"sdc", "critical", "wrong_to_right"}


def test_nested_trials_compare_with_the_clean_predictions_of_their_own_images():
    """Under the nested design trial i sees its own images: its SDC is counted against the clean
    predictions of those images, not of the pool (the identity acc = clean acc - critical + rescues
    holds per trial only then)."""
    torch.manual_seed(0)
    net = build_model("small_cnn", 10, 1, 0.5).eval()
    fold_batchnorm(net)
    net = protect_model(net, "none")
    images = torch.randn(60, 1, 8, 8)
    labels = torch.randint(0, 10, (60,))
    labels[::2] = net(images[::2]).argmax(1)  # half the images right
    reference = copy.deepcopy(net)
    for k in (1, 3):
        model = copy.deepcopy(net)
        result = run_campaign(model, FaultInjector(model), images, labels, [1e-3], trials=6, seed=4, batch_size=25,
                              progress=False, design="nested", images_per_trial=20, maps_per_pass=k)
        clean = predictions(reference, images)
        injector = FaultInjector(reference)
        assert sum(r["sdc"] for r in result.trials) > 0  # the rate is high enough to change predictions
        for record in result.trials:
            ids = DESIGNS["nested"].trial_images(labels, 20, 4, record["trial"])
            with injector.inject(1e-3, 4, record["trial"]):
                faulty = predictions(reference, images[ids])
            expected = trial_outcomes(clean[ids], faulty, labels[ids])
            assert {k: record[k] for k in expected} == pytest.approx(expected)
            clean_acc = int((clean[ids] == labels[ids]).sum()) / len(ids)
            assert record["accuracy"] == pytest.approx(clean_acc - record["critical"] + record["wrong_to_right"])


def test_outcomes_rule_for_non_finite_rows():
    clean = torch.tensor([0, 1, 2])
    labels = torch.tensor([0, 2, 2])
    faulty = torch.tensor([MISS, MISS, 2])
    assert trial_outcomes(clean, faulty, labels) == {"sdc": 2 / 3, "critical": 1 / 3, "wrong_to_right": 0.0,
                                                     "wrong_to_right_count": 0}
    with pytest.raises(ValueError, match="differ in shape"):
        trial_outcomes(clean, faulty[:2], labels)


def test_measure_resilience_returns_and_logs_sdc_per_rate(tmp_path):
    torch.manual_seed(1)
    net = build_model("small_cnn", 10, 1, 0.5).eval()
    images, labels = torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    result = measure_resilience(net, (images, labels), rates=[1e-3, 1e-2], trials=3, seed=2,
                                mlflow={"tracking_uri": uri, "experiment": "sdc"})
    assert set(result.outcomes) == {1e-3, 1e-2} and result.sdc(1e-2) == result.outcomes[1e-2]["sdc"]["mean"]
    assert "SDC % [CI]" in result.table()
    run = MlflowClient(uri).get_run(result.run_id)
    assert run.data.metrics["sdc_mean/ber_1e-02"] == result.sdc(1e-2)
    assert "critical_ci_high/ber_1e-03" in run.data.metrics
    for stat in ("low", "high"):  # logged under both names (older readers read ci_bounded_*)
        metrics = run.data.metrics
        assert metrics[f"critical_ci_bounded_{stat}/ber_1e-03"] == metrics[f"critical_ci_{stat}/ber_1e-03"]
    folder = Path(MlflowClient(uri).download_artifacts(result.run_id, "", str(tmp_path / "a")))
    per_rate = json.loads((folder / "per_rate.json").read_text())
    trials = json.loads((folder / "trials.json").read_text())
    assert {"sdc_mean", "critical_ci_low", "wrong_to_right_mean"} <= set(per_rate["columns"])
    assert {"sdc", "critical", "wrong_to_right", "wrong_to_right_count"} <= set(trials["columns"])
