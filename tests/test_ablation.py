"""Issue 19's FitAct ablation variants (no post-training; channel- and layer-wise) and ProAct are
first-class variants: the same fault maps as FitAct in every shared tensor, distinct report labels,
paired rows against FitAct at every rate, and bounds keys that keep FitAct's cached bounds."""
import copy

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate

from fitact_pipeline.faults import FaultInjector
from fitact_pipeline.keys import job_key
from fitact_pipeline.models import build_model
from fitact_pipeline.protect import profile_activations, protect_model
from fitact_pipeline.report.runs import JobRun, variant_of
from fitact_pipeline.report.select import paired_rows
from fitact_pipeline.stages import bounds_stage
from fitact_pipeline.validate import CONF_DIR

CPU = torch.device("cpu")
VARIANTS = ["fitact", "fitact_noposttrain", "fitact_channel", "fitact_layer", "proact"]


def composed(*overrides):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def test_every_variant_has_the_same_fault_map_in_the_weights_and_biases():
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, 0.5).eval()
    images = torch.randn(32, 1, 8, 8)
    prof = profile_activations(model, images)
    models = {"none": protect_model(copy.deepcopy(model), "none", profile=prof),
              "fitact": protect_model(copy.deepcopy(model), "fitact", "neuron", prof),
              "fitact channel": protect_model(copy.deepcopy(model), "fitact", "channel", prof),
              "fitact layer": protect_model(copy.deepcopy(model), "fitact", "layer", prof),
              "proact": protect_model(copy.deepcopy(model), "proact", None, prof)}
    shared = {}
    for name, m in models.items():
        injector = FaultInjector(m, targets=("weight", "bias", "bound"))
        maps = [injector.sample(3e-3, seed=0, trial=t) for t in range(4)]
        shared[name] = [sorted(r for r in fm.records if not r[0].endswith((".bound", ".lower"))) for fm in maps]
        assert sum(len(s) for s in shared[name]) > 20  # the rate hits the weights in every trial
    assert all(shared[n] == shared["fitact"] for n in shared), "a variant drew other weight faults"


def test_the_ablation_sweep_and_its_variants_are_what_the_issue_asks():
    cfg = composed("experiment=repro_cpu_ablation")
    params = cfg.hydra.sweeper.params
    assert params.protection.split(",") == VARIANTS
    assert params.model.split(",") == ["vgg16_w025", "alexnet_w050", "resnet50_w0125"]
    assert cfg.tracking.experiment == "repro_cpu_ablation" and list(cfg.campaign.rates) == list(
        composed("experiment=repro_cpu").campaign.rates)
    stages = {}
    for v in VARIANTS:
        c = composed("experiment=repro_cpu_ablation", f"protection={v}")
        stages[v] = (c.protection.name, c.protection.get("granularity"), bounds_stage(c))
    assert stages == {"fitact": ("fitact", "neuron", "posttrain"), "fitact_noposttrain": ("fitact", "neuron", "none"),
                      "fitact_channel": ("fitact", "channel", "posttrain"),
                      "fitact_layer": ("fitact", "layer", "posttrain"), "proact": ("proact", "layer", "progressive")}


def test_every_variant_has_its_own_job_key():
    dm = instantiate(composed().dataset)
    jobs = {v: job_key(composed(f"protection={v}"), dm, CPU) for v in VARIANTS}
    jobs["sum"] = job_key(composed("posttrain.penalty=sum"), dm, CPU)
    jobs["fault-aware"] = job_key(composed("posttrain.fault_rate=1e-5"), dm, CPU)
    assert len(set(jobs.values())) == len(jobs)


def test_labels_are_distinct_and_paired_rows_compare_each_variant_with_fitact():
    def params(v):
        c = composed(f"protection={v}")
        out = {f"protection.{k}": str(val) for k, val in c.protection.items() if not isinstance(val, dict)}
        out.update({f"posttrain.{k}": str(val) for k, val in c.posttrain.items()})
        return {"protection": c.protection.name, "granularity": c.protection.get("granularity")}, out

    labels = {v: variant_of(*params(v)) for v in VARIANTS}
    assert labels == {"fitact": "fitact", "fitact_noposttrain": "fitact no post-training",
                      "fitact_channel": "fitact channel", "fitact_layer": "fitact layer", "proact": "proact"}
    tags, p = params("fitact")
    assert variant_of(tags, {**p, "posttrain.penalty": "sum"}) == "fitact (post-training penalty=sum)"
    assert variant_of(tags, {**p, "posttrain.fault_rate": "1e-05"}) == "fitact (post-training fault_rate=1e-05)"
    ctx = ("vgg16", "cifar10", "memory")
    rates, trials = [1e-6, 1e-5], range(6)
    jobs = [JobRun(f"r{i}", "vgg16", "cifar10", label.split(" ")[0], "memory", label, ctx, {}, {})
            for i, label in enumerate(labels.values())]
    acc = {label: 0.5 + 0.01 * i for i, label in enumerate(labels.values())}
    rows = paired_rows(jobs, lambda j: {(r, t): acc[j.variant] + 0.001 * t for r in rates for t in trials}, 0.95)
    vs_fitact = {(r["protection_a"], r["rate"]): r for r in rows if r["protection_b"] == "fitact"}
    assert set(vs_fitact) == {(label, r) for label in labels.values() if label != "fitact" for r in rates}
    for (label, _), row in vs_fitact.items():
        assert row["mean_diff"] == pytest.approx(acc[label] - acc["fitact"])


def _trials(module, accuracies):
    """Jobs of one context whose trial t at each rate has accuracy accuracies[variant](rate, t)."""
    ctx = ("vgg16", "cifar10", "memory")
    jobs = [JobRun(f"r{i}", "vgg16", "cifar10", label.split(" ")[0], "memory", label + " (nested, n=25)", ctx, {}, {})
            for i, label in enumerate(accuracies)]
    of = {job.run_id: accuracies[label] for job, label in zip(jobs, accuracies)}
    return module.trial_accuracies(jobs, lambda j: {(r, t): of[j.run_id](r, t) for r in (1e-6, 1e-5) for t in range(20)})


def test_the_claims_table_lists_each_variant_minus_fitact_at_every_rate_with_its_tests(benchmark_script):
    claims = benchmark_script("repro_claims")
    noise = lambda t: 0.01 * ((t * 7) % 5 - 2)  # noqa: E731  spread, mean 0 over each 5 trials
    trials = _trials(claims, {
        "fitact": lambda r, t: 0.5 + noise(t),
        "fitact channel": lambda r, t: 0.55 + noise(t) + 0.002 * (t % 2),  # 5 points better
        "fitact no post-training": lambda r, t: 0.5 + noise(t) + 0.002 * (t % 2 - 0.5),  # a true tie
        "proact": lambda r, t: 0.5 + noise(t) + (0.03 if r > 1e-6 else 0.0) * (t % 2 * 2 - 1),  # too noisy to tell
        "clipact": lambda r, t: 0.4})  # not a variant of FitAct
    lines, data = claims.versus_fitact(trials, margin=0.01, alpha=0.05, test="t")
    assert set(data) == {"vgg16: fitact channel", "vgg16: fitact no post-training", "vgg16: proact"}
    assert lines[0] == "| model: variant | 1e-06 | 1e-05 |" and len(lines) == 5
    assert "+5.1 [+5.1, +5.1] >" in lines[2]
    cell = data["vgg16: fitact no post-training"]["1e-05"]
    assert (cell["better"], cell["worse"], cell["tie"]) == (False, False, True)  # a tie is "=", never ">"
    assert lines[3].endswith("+0.0 [-0.0, +0.0] = | +0.0 [-0.0, +0.0] = |")
    assert lines[4].endswith("+0.0 [-1.4, +1.4] ? |")  # neither better, worse nor within 1 point: "?"
    # by default the bounded test decides and its own interval is shown: 20 maps cannot exclude a
    # 1/21 share of maps catastrophic for one arm, so 5 points is no ">" and the interval holds 0
    lines, data = claims.versus_fitact(trials, margin=0.01, alpha=0.05, test="bounded")
    cell = data["vgg16: fitact channel"]["1e-05"]
    assert not cell["better"] and cell["ci"][0] < 0 < cell["ci"][1] and lines[2].endswith("? |")


def test_the_ordering_is_decided_by_superiority_tests_not_by_ties(benchmark_script):
    claims = benchmark_script("repro_claims")
    noise = lambda t: 0.01 * ((t * 7) % 5 - 2)  # noqa: E731
    trials = _trials(claims, {"none": lambda r, t: 0.1 + noise(t), "ranger": lambda r, t: 0.3 + noise(t),
                              "clipact": lambda r, t: 0.4 + noise(t), "fitact": lambda r, t: 0.5 + noise(t)})
    text, ok, data, table = claims.ordering(trials, 1e-6, 0.05, "t")
    assert ok and len(data) == 4 * 2 and all(v["verdict"] == "supported" for v in data.values())
    # Clip-Act tied with FitAct: the old rule (CI not below 0) said the ordering holds; a test of ">" does not
    trials[("vgg16", "cifar10", "memory")]["clipact"] = dict(trials[("vgg16", "cifar10", "memory")]["fitact"])
    text, ok, data, table = claims.ordering(trials, 1e-6, 0.05, "t")
    assert not ok and "vgg16: fitact > clipact: supported at 0/2 rates" in text
    assert data["vgg16: fitact > clipact at 1e-05"]["verdict"] == "not supported"


def test_an_experiments_own_posttraining_schedule_is_no_variant():
    from fitact_pipeline.protect.protections.fitact import settings_label

    base = {"posttrain.penalty": "mean_square", "posttrain.fault_rate": "None", "posttrain.fault_weight": "1.0"}
    assert settings_label({**base, "posttrain.epochs": "8", "posttrain.lr": "0.03"}) == ""
    assert settings_label({**base, "posttrain.fault_weight": "0.5"}) == " (post-training fault_weight=0.5)"
