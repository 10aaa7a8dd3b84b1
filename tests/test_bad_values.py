"""Every value a user can set is checked before any work: for every leaf of the composed configs a
value of the wrong type gives a one-line ConfigError naming it; and the values the issue saw fail
after training now fail before it."""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, ListConfig, OmegaConf

from fitact_pipeline.validate import CONF_DIR, ConfigError, check_config, preflight

ROOT = Path(__file__).resolve().parent.parent
# values that are free text by nature: any string is a valid name or path
FREE_TEXT = {"tracking.experiment", "tracking.root", "cache_dir", "figures_dir", "dataset.name", "dataset.root",
             "dataset.cache_dir", "model.label", "tracking.label"}


def composed(*overrides: str) -> DictConfig:
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    OmegaConf.set_struct(cfg, False)
    return cfg


def leaves(node, prefix=""):
    for key in node.keys():
        path = f"{prefix}{key}"
        if path.startswith("hydra"):
            continue
        child = node[key]
        if isinstance(child, DictConfig):
            yield from leaves(child, path + ".")
        else:
            yield path, child


SETTINGS = [("experiment=quickstart",), ("experiment=repro_cpu", "protection=clipact_ft"),
            ("protection=gbrelu", "faults=int8"), ("dataset=cifar10",),
            ("experiment=beyond_relu", "protection=clipact_ft", "model=vit_tiny_p4", "dataset=imagefolder224",
             f"dataset.root={ROOT.parent / 'shared' / 'data' / 'cifar10'}", "dataset.resize=32", "dataset.crop=32"),
            ("model=timm", "dataset=cifar10")]


@pytest.mark.parametrize("setting", SETTINGS, ids=lambda s: " ".join(s))
def test_a_wrong_type_anywhere_is_refused_with_one_line_naming_it(setting):
    base = composed(*setting)
    check_config(base, structure=False)  # the setting itself is valid
    checked = 0
    for path, value in leaves(base):
        if path in FREE_TEXT:
            continue
        # a number is a valid value where the word "auto" is (maps_per_pass, images_per_trial)
        bad = 12345 if isinstance(value, str) and value != "auto" else "abc"
        cfg = copy.deepcopy(base)  # a copy, not a new compose per value: the sweep stays a few seconds
        OmegaConf.update(cfg, path, bad, force_add=True)
        try:
            check_config(cfg)
        except ConfigError as err:
            message = str(err)
        else:
            pytest.fail(f"{path}={bad!r} was accepted")
        assert "\n" not in message and (path in message or path.split(".")[-1] in message), (path, message)
        checked += 1
    assert checked > 40


@pytest.mark.parametrize("argv, fragment", [
    (["faults.include=[conv9.*]"], "faults.include='conv9.*' is not allowed; the pattern matches no tensor"),
    (["faults.exclude=[*]"], "faults.exclude=['*'] is not allowed; it leaves an empty fault space"),
    (["campaign.eval_split=train2"], "campaign.eval_split='train2' is not allowed; choose one of: val, test"),
    (["faults.word_bits=abc"], "faults.word_bits='abc' is not allowed"),
    (["device=tpu"], "device='tpu' is not allowed"),
    (["profile_site=99"], "profile_site has 99"),
    (["protection=gbrelu", "protection.sites=[7]"], "protection.sites has 7"),
    (["dataset=imagefolder"], "dataset.root has no value (???)"),
    (["dataset=imagefolder", "dataset.root=/no/such/tree"], "ImageFolder root '/no/such/tree' has no 'train/' folder"),
    (["dataset=cifar10", "dataset.download=false", "dataset.root=/no/data"], "dataset.download=false and dataset.root='/no/data' has no 'cifar-10-batches-py/'"),
    (["-m", "experiment=quickstart", "faults.include=[0.0.*,nothing.*]"], "faults.include='nothing.*'"),
    (["faults.model=cosmic"], "faults.model='cosmic' is not allowed; choose one of: memory, stuck_at, burst, activation"),
    (["faults.model=stuck_at", "faults.stuck_value=2"], "faults.stuck_value=2 is not allowed; choose one of: 0, 1, mix"),
    (["faults.model=burst", "faults.burst_length=0"], "faults.burst_length=0 is not allowed; expected an integer >= 1 and <= 32"),
    (["faults=int8", "faults.model=burst", "faults.burst_length=9"], "faults.burst_length=9 is not allowed; expected an integer >= 1 and <= 8"),
    (["faults.model=activation", "faults.sites=[classifier.*]"], "faults.sites='classifier.*' is not allowed; the pattern matches no module"),
    (["faults.model=activation", "faults.datapath.fmt=int8"], "faults.datapath.fmt='int8' is not allowed"),
    (["faults.datapath.fmt=fixed", "faults.datapath.frac_bits=40"], "faults.datapath.frac_bits=40 is not allowed"),
    # the allowed words are named with the numbers
    (["campaign.maps_per_pass=many"], "campaign.maps_per_pass='many' is not allowed; expected an integer >= 1 or auto"),
    (["campaign.design=nested", "campaign.images_per_trial=0"],
     "campaign.images_per_trial=0 is not allowed; expected an integer >= 1 or auto or null"),
])
def test_values_that_used_to_fail_after_training_fail_in_preflight(argv, fragment):
    with pytest.raises(ConfigError) as err:
        preflight(argv)
    assert fragment in str(err.value) and "\n" not in str(err.value)


def test_cuda_without_a_gpu_is_refused_before_any_work():
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    with pytest.raises(ConfigError, match="device='cuda' is not allowed; this machine has no CUDA device"):
        preflight(["device=cuda"])


def test_an_experiments_own_sweep_is_checked_job_by_job():
    """repro_cpu sweeps three models and four protections in its config: a value that breaks one
    of those jobs (a pattern only some models have) is caught before the first job runs."""
    with pytest.raises(ConfigError, match="faults.include='layer4.*'"):
        preflight(["-m", "experiment=repro_cpu", "faults.include=[layer4.*]"])


def test_imagefolder_root_on_the_command_line_is_accepted(tmp_path):
    from PIL import Image

    for split in ("train", "test"):
        for cls in ("a", "b"):
            (tmp_path / split / cls).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / cls / "0.png")
    preflight(["dataset=imagefolder", f"dataset.root={tmp_path}", "model=small_cnn", "dataset.val_size=1"])


@pytest.mark.slow
def test_cli_bad_device_is_one_line_exit_2_and_nothing_is_written(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "fitact_pipeline", "device=tpu", f"cache_dir={tmp_path}/cache",
                           f"tracking.root={tmp_path}/mlruns"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert [line for line in proc.stderr.splitlines() if line.strip()] == [
        "error: device='tpu' is not allowed; use cpu, cuda, cuda:<index> or auto"]
    assert not (tmp_path / "cache").exists() and not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("key, value", [("dpi", "abc"), ("formats", ["gif"]), ("confidence", 1.5),
                                        ("critical.level", 0), ("fig2.bins", 0), ("fig3.k", -1),
                                        ("log_to_mlflow", "yes"), ("fig5.model", 3)])
def test_the_report_checks_its_values_before_reading_any_run(key, value, tmp_path):
    from fitact_pipeline.report import build_report

    cfg = OmegaConf.load(CONF_DIR / "report.yaml")
    del cfg["hydra"]
    cfg.merge_with({"tracking_root": str(tmp_path / "no_store"), "figures_dir": str(tmp_path)})
    OmegaConf.update(cfg, key, value)
    with pytest.raises(ConfigError, match=f"{key}=.* is not allowed"):
        build_report(cfg)
