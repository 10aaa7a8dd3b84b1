"""Off the tuned path: one's own ImageFolder tree end to end, and every stage on the configured
device (the CUDA tests run wherever a GPU is, and skip cleanly elsewhere)."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from mlflow.tracking import MlflowClient

ROOT = Path(__file__).resolve().parent.parent
CIFAR = ROOT.parent / "shared" / "data" / "cifar10"
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def small_tree(dest: Path, classes=("airplane", "cat", "ship"), train=40, test=12) -> Path:
    """A small ImageFolder tree cut from the CIFAR-10 copy."""
    for split, count in (("train", train), ("test", test)):
        for cls in classes:
            (dest / split / cls).mkdir(parents=True)
            for image in sorted((CIFAR / split / cls).iterdir())[:count]:
                shutil.copy(image, dest / split / cls / image.name)
    return dest


def job(tmp: Path, *overrides: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "fitact_pipeline", f"tracking.root={tmp}/mlruns", f"cache_dir={tmp}/cache",
           f"figures_dir={tmp}/figures", f"hydra.run.dir={tmp}/run", "tracking.experiment=offpath",
           "progress_bar=false", "model=small_cnn", "model.width=0.25", "train.epochs=1", "posttrain.epochs=1",
           "campaign.trials=2", "campaign.rates=[1e-4]", *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_your_own_imagefolder_tree_end_to_end(tmp_path):
    tree = small_tree(tmp_path / "tree")
    proc = job(tmp_path, "dataset=imagefolder", f"dataset.root={tree}", "dataset.val_size=30",
               "profile_images=60", "campaign.eval_images=null", "protection=fitact")
    assert proc.returncode == 0, proc.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    run = client.search_runs([client.get_experiment_by_name("offpath").experiment_id])[0]
    assert run.info.status == "FINISHED" and run.data.tags["dataset"] == "imagefolder"
    assert run.data.tags["device"] == "cpu"
    assert run.data.metrics["clean_accuracy"] > 1 / 3 - 0.2 and run.data.metrics["acc_trials"] == 2
    assert run.data.params["campaign.eval_images"] == "None"  # the whole 36-image test split


def test_training_and_post_training_get_the_configured_device(monkeypatch, trained_digits):
    """Lightning is told the job's device; it no longer picks one itself ("auto")."""
    import lightning as L

    from fitact_pipeline.protect import profile_activations, protect_model
    from fitact_pipeline.protect.posttrain import posttrain_bounds
    from fitact_pipeline.training import train_baseline

    seen, real = [], L.Trainer
    monkeypatch.setattr(L, "Trainer", lambda **kw: seen.append((kw["accelerator"], kw["devices"])) or real(**kw))
    dm, model = trained_digits()
    train_baseline(model, dm, {"epochs": 1, "progress_bar": False}, seed=0, device="cpu")
    protected = protect_model(model, "fitact", profile=profile_activations(model, dm.profile_dataloader(64), 64))
    posttrain_bounds(protected, dm, {"epochs": 1, "max_batches_per_epoch": 2})
    assert seen == [("cpu", 1), ("cpu", 1)]


@cuda
def test_every_stage_runs_on_cuda(tmp_path):
    proc = job(tmp_path, "device=cuda", "protection=clipact_ft", "protection.search.candidates=2",
               "protection.search.iterations=1", "protection.search.trials=1", "protection.search.images=64",
               "overhead.enabled=true")
    assert proc.returncode == 0, proc.stderr[-3000:]
    fit = job(tmp_path, "device=cuda", "protection=fitact", "overhead.enabled=true")
    assert fit.returncode == 0, fit.stderr[-3000:]
    client = MlflowClient(f"sqlite:///{tmp_path}/mlruns/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("offpath").experiment_id])
    assert {r.data.tags["protection"] for r in runs} == {"clipact", "fitact"}
    assert {r.data.tags["device"] for r in runs} == {"cuda"}
    assert all("peak_cuda_overhead" in r.data.metrics for r in runs)
    assert all("posttrain_time_s" in r.data.metrics for r in runs if r.data.tags["protection"] == "fitact")


@cuda
@pytest.mark.parametrize("fmt", ["fixed", "float32", "float16", "bfloat16", "int8"])
def test_flip_and_restore_on_a_cuda_model_in_every_format(fmt):
    from fitact_pipeline.faults import FaultInjector
    from fitact_pipeline.models import build_model

    model = build_model("small_cnn", 10, 3, 0.5).cuda().eval()
    targets = ("weight", "bias", "scale") if fmt == "int8" else ("weight", "bias")
    injector = FaultInjector(model, fmt=fmt, targets=targets)
    clean = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 32, 32, device="cuda")
    with torch.no_grad():
        reference = model(x)
        with injector.inject(1e-3, seed=0, trial=1) as fmap:
            assert fmap.num_flips > 0
            assert any(not torch.equal(v, clean[k]) for k, v in model.state_dict().items())
        assert all(torch.equal(v, clean[k]) for k, v in model.state_dict().items())
        assert torch.equal(model(x), reference)
