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


def test_the_claims_table_lists_each_variant_minus_fitact_at_every_rate(tmp_path):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "repro_claims.py"
    spec = importlib.util.spec_from_file_location("repro_claims", path)
    claims = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(claims)
    csv = tmp_path / "paired_differences.csv"
    rows = ["model,dataset,fault_model,protection_a,protection_b,rate,mean_diff,ci_low,ci_high"]
    for a in ("fitact channel", "fitact no post-training", "proact"):
        for rate in (1e-6, 1e-5):
            rows.append(f"vgg16,cifar10,memory,{a},fitact,{rate},0.01,-0.002,0.022")
    rows.append("vgg16,cifar10,memory,fitact,clipact,1e-05,0.05,0.04,0.06")  # not a variant of FitAct
    csv.write_text("\n".join(rows) + "\n")
    lines, data = claims.versus_fitact(csv)
    assert set(data) == {"vgg16: fitact channel", "vgg16: fitact no post-training", "vgg16: proact"}
    assert lines[0] == "| model: variant | 1e-06 | 1e-05 |" and len(lines) == 5
    assert "+1.0 [-0.2, +2.2]" in lines[2]


def test_an_experiments_own_posttraining_schedule_is_no_variant():
    from fitact_pipeline.protect.protections.fitact import settings_label

    base = {"posttrain.penalty": "mean_square", "posttrain.fault_rate": "None", "posttrain.fault_weight": "1.0"}
    assert settings_label({**base, "posttrain.epochs": "8", "posttrain.lr": "0.03"}) == ""
    assert settings_label({**base, "posttrain.fault_weight": "0.5"}) == " (post-training fault_weight=0.5)"
