"""Command-line jobs on the models people deploy (issue 16): torchvision's mobilenet_v2 (ReLU6),
efficientnet_b0 (SiLU, Sigmoid gates), resnet18 (reused ReLU modules) and a small VisionTransformer
(GELU, attention, LayerNorm), each with every protection, on a small ImageFolder tree cut from the
CIFAR-10 copy; and the errors a user of them can run into, one line each, before any work."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

from fitact_pipeline.protect import PROTECTIONS as REGISTERED_PROTECTIONS
from tests.test_devices_and_data import small_tree

ROOT = Path(__file__).resolve().parent.parent
# every registered protection (a new one is tested on the deployed models without editing this file)
PROTECTIONS = ",".join(REGISTERED_PROTECTIONS)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    return small_tree(tmp_path_factory.mktemp("deployed") / "tree")


def sweep(tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fitact_pipeline", "-m", f"tracking.root={tmp}/mlruns", f"cache_dir={tmp}/cache",
           f"figures_dir={tmp}/figures", f"hydra.sweep.dir={tmp}/sweep", "tracking.experiment=deployed",
           "progress_bar=false", "threads=1", "train.epochs=1", "posttrain.epochs=1", "posttrain.max_batches_per_epoch=1",
           "campaign.trials=2", "campaign.rates=[1e-4]", "campaign.eval_images=null", "profile_images=30",
           "dataset.val_size=30", "dataset.batch_size=64", "train.batch_size=64"]
    others = ",".join(p for p in REGISTERED_PROTECTIONS if p != "proact")
    first = subprocess.run(cmd + [f"protection={others}", *overrides], cwd=ROOT, capture_output=True, text=True,
                           timeout=900)
    if first.returncode or "proact" not in REGISTERED_PROTECTIONS:
        return first
    # ProAct's default schedule (11 decays per site) is the toolbox's; one decay shows that it runs.
    # A sweep of its own: the other protections have no progressive settings to override
    return subprocess.run(cmd + ["protection=proact", "protection.progressive.decays=[4.0e-5]", *overrides],
                          cwd=ROOT, capture_output=True, text=True, timeout=900)


def runs(tmp: Path) -> list:
    client = MlflowClient(f"sqlite:///{tmp}/mlruns/mlflow.db")
    experiment = client.get_experiment_by_name("deployed")
    return [r for r in client.search_runs([experiment.experiment_id]) if "job_key" in r.data.tags]


def fault_space(tmp: Path, run) -> dict:
    client = MlflowClient(f"sqlite:///{tmp}/mlruns/mlflow.db")
    return json.loads(Path(client.download_artifacts(run.info.run_id, "fault_space.json", str(tmp))).read_text())


@pytest.mark.slow
def test_torchvision_cnns_with_every_protection(tree, tmp_path):
    proc = sweep(tmp_path, "dataset=imagefolder", f"dataset.root={tree}", "model=torchvision",
                 "model.arch=mobilenet_v2,efficientnet_b0,resnet18")
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = runs(tmp_path)
    assert sorted((r.data.tags["model"], r.data.tags["protection"]) for r in done) == sorted(
        (m, p) for m in ("mobilenet_v2", "efficientnet_b0", "resnet18") for p in PROTECTIONS.split(","))
    for run in done:
        assert run.info.status == "FINISHED" and run.data.metrics["acc_trials"] == 2
        bounds = [t for t in fault_space(tmp_path, run)["tensors"] if t["kind"] == "bound"]
        # one bound per activation site: 35 ReLU6 (mobilenet_v2), 49 SiLU (efficientnet_b0), 17 ReLU
        # call sites of resnet18 (its blocks call one nn.ReLU twice: split into two sites)
        sites = {"mobilenet_v2": 35, "efficientnet_b0": 49, "resnet18": 17}[run.data.tags["model"]]
        assert len(bounds) == (0 if run.data.tags["protection"] == "none" else sites), run.data.tags
        if run.data.tags["protection"] == "fitact":
            assert "posttrain_time_s" in run.data.metrics and run.data.tags["granularity"] == "neuron"


@pytest.mark.slow
def test_a_small_vision_transformer_with_every_protection(tree, tmp_path):
    proc = sweep(tmp_path, "dataset=imagefolder", f"dataset.root={tree}", "model=vit_tiny_p4",
                 "model.kwargs.num_layers=2", "model.kwargs.hidden_dim=16", "model.kwargs.mlp_dim=32",
                 "model.kwargs.num_heads=2", "faults.targets=[weight,bias,bound,attention,layernorm]",
                 "protection.granularity=channel")
    assert proc.returncode == 0, proc.stderr[-3000:]
    done = runs(tmp_path)
    assert sorted(r.data.tags["protection"] for r in done) == sorted(PROTECTIONS.split(","))
    for run in done:
        assert run.info.status == "FINISHED" and run.data.tags["model"] == "vit_tiny_p4"
        tensors = {t["name"]: t for t in fault_space(tmp_path, run)["tensors"]}
        assert tensors["encoder.layers.encoder_layer_0.self_attention.in_proj_weight"]["kind"] == "attention"
        assert tensors["encoder.layers.encoder_layer_1.ln_2.weight"]["kind"] == "layernorm"  # never folded
        assert tensors["encoder.layers.encoder_layer_0.mlp.0.weight"]["kind"] == "weight"
        gelu = "encoder.layers.encoder_layer_0.mlp.1.bound"
        if run.data.tags["protection"] in ("none", "gbrelu"):
            assert (gelu in tensors) == (run.data.tags["protection"] == "gbrelu")
        else:  # channel granularity on a token map: one bound per MLP feature
            assert tensors[gelu]["elements"] == 32


@pytest.mark.parametrize("argv, fragment", [
    (["model=torchvision", "model.arch=efficentnet_b0"],
     "model.arch='efficentnet_b0' is not allowed; torchvision has no such classifier (close matches: efficientnet_b0"),
    (["model=timm", "model.arch=vit_tiny_patch16_2244"],
     "model.arch='vit_tiny_patch16_2244' is not allowed; timm has no such classifier (close matches: vit_tiny_patch16_224"),
    (["model=torchvision", "model.weights=/no/such/file.pth"], "model.weights='/no/such/file.pth' is not allowed; "
                                                                "no such weights file"),
    (["model=torchvision", "model.arch=mobilenet_v3_small", "+model.kwargs.norm_layer=x"],
     "model.kwargs={'norm_layer': 'x'} is not allowed for torchvision mobilenet_v3_small"),
    (["model=vit_tiny_p4", "dataset.crop=24", "dataset.resize=24"],
     "model vit_tiny_p4 cannot run on the dataset's 3x24x24 images: Wrong image height! Expected 32 but got 24!"),
])
def test_model_errors_stop_before_any_work(argv, fragment, tree):
    from fitact_pipeline.registry import ConfigError
    from fitact_pipeline.validate import preflight

    with pytest.raises(ConfigError) as err:
        preflight(["dataset=imagefolder", f"dataset.root={tree}", "dataset.val_size=30", *argv])
    assert fragment in str(err.value) and "\n" not in str(err.value)


@pytest.mark.slow
def test_cli_refuses_an_activation_without_bounded_form_and_a_mismatching_file(tree, tmp_path):
    import torchvision

    wrong = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), wrong)
    cmd = [sys.executable, "-m", "fitact_pipeline", f"tracking.root={tmp_path}/mlruns", f"cache_dir={tmp_path}/cache",
           "dataset=imagefolder", f"dataset.root={tree}", "dataset.val_size=30", "model=torchvision",
           "model.arch=mobilenet_v2"]
    proc = subprocess.run([*cmd, f"model.weights={wrong}"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().startswith(f"error: model.weights='{wrong}' is not allowed; "
                                                                   "it does not match torchvision mobilenet_v2")
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "cache").exists()


def test_an_activation_without_bounded_form_is_refused_naming_where_it_sits(tree):
    """timm builds its models with any activation (act_layer): SELU has no bounded form."""
    pytest.importorskip("timm")
    from fitact_pipeline.registry import ConfigError
    from fitact_pipeline.validate import preflight

    with pytest.raises(ConfigError, match=r"^model has activations the protections cannot bound: conv1.2 \(SELU\), "
                                          r"conv1.5 \(SELU\), act1 \(SELU\) and 9 more; bounded forms exist for"):
        preflight(["dataset=imagefolder", f"dataset.root={tree}", "dataset.val_size=30", "model=timm",
                   "model.arch=test_resnet",
                   "+model.kwargs.act_layer=selu"])
