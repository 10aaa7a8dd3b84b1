"""Models from torchvision and timm (model=torchvision / model=timm): weights from the libraries' own
downloaders (their lowest-level download call pointed at a file the test writes, so everything
above it runs for real), from a local state-dict file, or random initialisation; the head replaced
when the class count differs; and one-line errors before any work for what can go wrong."""
import builtins
import shutil
import sys
from pathlib import Path

import pytest
import torch
import torchvision
from omegaconf import OmegaConf

from fitact_pipeline.models import check_model_config, model_from_config, model_tag, owns_init
from fitact_pipeline.registry import ConfigError


def tv(**cfg):
    return OmegaConf.create({"name": "torchvision", "arch": "shufflenet_v2_x0_5", "weights": None, "kwargs": {},
                             "label": None, **cfg})


def tm(**cfg):
    return OmegaConf.create({"name": "timm", "arch": "test_vit", "pretrained": False, "kwargs": {}, "label": None,
                             **cfg})


@pytest.fixture
def imagenet_file(tmp_path):
    """A state dict of shufflenet_v2_x0_5 with 1000 classes and recognisable (seeded) values."""
    torch.manual_seed(1)
    model = torchvision.models.shufflenet_v2_x0_5()
    path = tmp_path / "shufflenet.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


def _same_except_head(model, state, head="fc."):
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith(head))


def test_torchvision_weights_name_goes_through_torchvisions_downloader(imagenet_file, monkeypatch, tmp_path):
    file, state = imagenet_file
    fetched = []

    def fake_download(url, dst, hash_prefix=None, progress=True):  # torch.hub's network call, nothing above it
        fetched.append(url)
        shutil.copy(file, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", fake_download)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    cfg = tv(weights="IMAGENET1K_V1")
    check_model_config(cfg)
    model = model_from_config(cfg, num_classes=10, seed=0)
    assert fetched == [torchvision.models.ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1.url]
    assert list((tmp_path / "torch_home" / "hub" / "checkpoints").iterdir())  # cached where torch.hub caches
    _same_except_head(model, state)
    assert model.fc.out_features == 10 and model.fc.in_features == state["fc.weight"].shape[1]
    again = model_from_config(tv(weights="ShuffleNet_V2_X0_5_Weights.IMAGENET1K_V1"), num_classes=10, seed=0)
    assert len(fetched) == 1 and torch.equal(again.fc.weight, model.fc.weight)  # cached; the new head is seeded
    assert owns_init(cfg) and model_tag(cfg) == "shufflenet_v2_x0_5" and model_tag(tv(label="mine")) == "mine"


def test_offline_a_weights_name_is_a_one_line_error(monkeypatch, tmp_path):
    def offline(*args, **kwargs):
        raise OSError("<urlopen error [Errno -3] Temporary failure in name resolution>")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(ConfigError, match=r"could not be loaded \(<urlopen error .*\); offline, give a state-dict file"):
        model_from_config(tv(weights="DEFAULT"), 10)


def test_torchvision_state_dict_file_loads_and_the_head_is_replaced(imagenet_file):
    file, state = imagenet_file
    model = model_from_config(tv(weights=str(file)), num_classes=3, seed=5)
    _same_except_head(model, state)
    assert model.fc.weight.shape == (3, state["fc.weight"].shape[1])
    same = model_from_config(tv(weights=str(file)), num_classes=1000)  # same class count: the file's head
    assert torch.equal(same.fc.weight, state["fc.weight"])


def test_random_init_is_the_librarys_own_and_seeded():
    a = model_from_config(tv(arch="VisionTransformer", kwargs={"image_size": 16, "patch_size": 8, "num_layers": 1,
                                                              "num_heads": 2, "hidden_dim": 8, "mlp_dim": 16}), 4, seed=3)
    b = model_from_config(tv(arch="VisionTransformer", kwargs={"image_size": 16, "patch_size": 8, "num_layers": 1,
                                                              "num_heads": 2, "hidden_dim": 8, "mlp_dim": 16}), 4, seed=3)
    assert a.heads.head.out_features == 4 and (a.heads.head.weight == 0).all()  # torchvision zero-inits ViT heads
    assert all(torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values()))
    state = torch.get_rng_state()
    model_from_config(tv(), 10, seed=4)
    assert torch.equal(state, torch.get_rng_state())  # the global RNG is untouched


@pytest.mark.parametrize("cfg, message", [
    (tv(arch="mobilenet_v9"), r"model.arch='mobilenet_v9' is not allowed; torchvision has no such classifier "
                              r"\(close matches: mobilenet_v2, mobilenet_v3_small"),
    (tv(weights="IMAGENET9K"), r"model.weights='IMAGENET9K' is not allowed; shufflenet_v2_x0_5 has the weights "
                               r"IMAGENET1K_V1, DEFAULT"),
    (tv(weights="ResNet18_Weights.IMAGENET1K_V1"), "those are not weights of shufflenet_v2_x0_5"),
    (tv(weights="/no/such/weights.pth"), r"model.weights='/no/such/weights.pth' is not allowed; no such weights file"),
    (tv(arch="VisionTransformer", weights="DEFAULT"), "VisionTransformer is a class, not a builder"),
    (tv(kwargs="abc"), "model.kwargs='abc' is not allowed"),
    (tv(depth=3), "unknown config option 'model.depth'"),
    (OmegaConf.create({"name": "torchvison"}), r"model.name='torchvison' is not allowed; choose one of: .*torchvision"),
])
def test_bad_torchvision_configs_are_one_line_errors(cfg, message):
    with pytest.raises(ConfigError, match=message) as err:
        check_model_config(cfg)
    assert "\n" not in str(err.value)


def test_a_weights_file_of_another_architecture_is_refused(tmp_path):
    path = tmp_path / "resnet.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    check_model_config(tv(weights=str(path)))  # the file exists: whether it matches needs the model (structure)
    with pytest.raises(ConfigError, match=rf"model.weights='{path}' is not allowed; it does not match torchvision "
                                          r"shufflenet_v2_x0_5: missing conv1.0.weight"):
        model_from_config(tv(weights=str(path)), 10)
    with pytest.raises(ConfigError, match="builds 3-channel models; the dataset has 1 channel"):
        model_from_config(tv(), 10, in_channels=1)
    with pytest.raises(ConfigError, match=r"model.kwargs=\{'depth': 3\} is not allowed for torchvision"):
        model_from_config(tv(kwargs={"depth": 3}), 10)


def test_timm_not_installed_says_how_to_install(monkeypatch):
    real_import = builtins.__import__

    def no_timm(name, *args, **kwargs):
        if name == "timm" or name.startswith("timm."):
            raise ImportError("No module named 'timm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "timm", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_timm)
    with pytest.raises(ConfigError, match=r"model=timm needs the timm package, which is not installed: "
                                          r"pip install 'fitact-pipeline\[timm\]'"):
        check_model_config(tm())


def test_timm_pretrained_goes_through_timms_hub_download(monkeypatch, tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    torch.manual_seed(2)
    reference = timm.create_model("test_vit", num_classes=1000)
    file = tmp_path / "model.safetensors"
    save_file(reference.state_dict(), str(file))
    asked = []

    def fake_hf_hub_download(repo_id, filename, **kwargs):  # the Hugging Face hub's network call
        asked.append((repo_id, filename))
        return str(file)

    monkeypatch.setattr(timm.models._hub, "hf_hub_download", fake_hf_hub_download)
    cfg = tm(pretrained=True)
    check_model_config(cfg)
    model = model_from_config(cfg, num_classes=7, seed=0)
    assert asked and asked[0][0].startswith("timm/test_vit")
    assert model.head.out_features == 7
    _same_except_head(model, reference.state_dict(), head="head.")
    from_file = model_from_config(tm(pretrained=str(file)), num_classes=7, seed=0)  # a local file, offline
    _same_except_head(from_file, reference.state_dict(), head="head.")


def test_bad_timm_configs_are_one_line_errors(tmp_path):
    pytest.importorskip("timm")
    with pytest.raises(ConfigError, match=r"model.arch='vit_tiny_patch16_2244' is not allowed; timm has no such "
                                          r"classifier \(close matches: vit_tiny_patch16_224"):
        check_model_config(tm(arch="vit_tiny_patch16_2244"))
    with pytest.raises(ConfigError, match="model.pretrained='yes' is not allowed; expected true, false or the path"):
        check_model_config(tm(pretrained="yes"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"nothing": torch.zeros(1)}, wrong)
    with pytest.raises(ConfigError, match=r"^model.pretrained='.*wrong.pth' is not allowed; it does not match timm test_vit: missing"):
        model_from_config(tm(pretrained=str(wrong)), 10)


def test_the_baseline_stage_fine_tunes_a_source_model_instead_of_reinitialising_it(imagenet_file, tmp_path):
    """With zero epochs the baseline is the loaded weights and a fresh head: training re-initialises
    registry models only (train.init_from_seed), never a source's weights."""
    from hydra.utils import instantiate

    from fitact_pipeline.keys import all_keys
    from fitact_pipeline.stages import stage_baseline
    from tests.test_devices_and_data import small_tree
    from tests.test_image_sizes import _composed

    file, state = imagenet_file
    tree = small_tree(tmp_path / "tree", train=12, test=4)
    cfg = _composed("dataset=imagefolder", f"dataset.root={tree}", "dataset.val_size=6", "model=torchvision",
                    "model.arch=shufflenet_v2_x0_5", f"model.weights={file}", "train.epochs=0",
                    f"cache_dir={tmp_path}/cache", "progress_bar=false")
    datamodule = instantiate(cfg.dataset)
    datamodule.setup()
    model, info = stage_baseline(cfg, datamodule, torch.device("cpu"), all_keys(cfg, datamodule, torch.device("cpu")))
    _same_except_head(model, state)
    assert model.fc.out_features == 3 and info["epochs"] == 0
