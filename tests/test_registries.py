"""The registries are the one definition of each swappable component: configs, validation, the
report's order and the docs all follow them, and a new protection is one module plus one config."""
import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from omegaconf import OmegaConf

from fitact_pipeline.faults import FAULT_MODELS, FORMATS, TARGET_KINDS, FaultInjector, run_campaign
from fitact_pipeline.models import MODELS, build_model
from fitact_pipeline.models.sources import SOURCES
from fitact_pipeline.protect import PROTECTIONS, BoundedReLU, Protection, profile_activations, protect_model, register_protection
from fitact_pipeline.report.select import variant_sort_key
from fitact_pipeline.validate import CONF_DIR, ConfigError, check_config

ROOT = Path(__file__).resolve().parent.parent


class HalvingReLU(BoundedReLU):
    """A toy bounded activation: values above the bound are halved instead of cut."""

    def forward(self, x):
        y = torch.where(torch.isfinite(x), torch.relu(x), 0.0)
        return torch.where(y > self.bound, y / 2, y)


@pytest.fixture
def toy_protection():
    register_protection(Protection("halving", HalvingReLU, "y/2 above b", config_keys=("granularity",),
                                   default_granularity="channel", order=35))
    yield "halving"
    PROTECTIONS.unregister("halving")


def test_a_protection_registered_from_a_test_runs_a_campaign_and_passes_validation(toy_protection):
    torch.manual_seed(0)
    model = build_model("small_cnn", 10, 1, 0.25).eval()
    images, labels = torch.randn(24, 1, 8, 8), torch.randint(0, 10, (24,))
    profile = profile_activations(model, images)
    protected = protect_model(copy.deepcopy(model), toy_protection, profile=profile)
    acts = [m for m in protected.modules() if isinstance(m, HalvingReLU)]
    assert len(acts) == 3 and all(a.granularity == "channel" and a.bound.dim() in (1, 3) for a in acts)
    result = run_campaign(protected, FaultInjector(protected), images, labels, [1e-3], trials=3, seed=0,
                          progress=False)
    assert [t["trial"] for t in result.trials] == [0, 1, 2] and result.per_rate[1e-3]["trials"] == 3
    # validation and the report's order read the registry: the toy sorts where its entry says
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    OmegaConf.set_struct(cfg, False)
    cfg.protection = {"name": "halving", "granularity": "channel"}
    check_config(cfg)
    assert sorted(["fitact", "halving", "clipact"], key=variant_sort_key) == ["clipact", "halving", "fitact"]
    PROTECTIONS.unregister("halving")
    with pytest.raises(ConfigError, match="protection.name='halving' is not allowed; choose one of: none, ranger"):
        check_config(cfg)


def _yaml(path: Path) -> dict:
    return OmegaConf.to_container(OmegaConf.load(path))


def test_every_protection_has_its_config_and_every_config_its_protection():
    configs = {p.stem: _yaml(p) for p in (CONF_DIR / "protection").glob("*.yaml")}
    named = {c.get("name") for c in configs.values() if "name" in c}
    assert named == set(PROTECTIONS), "conf/protection/*.yaml and the protection registry disagree"
    for name in PROTECTIONS:
        assert name in configs, f"conf/protection/{name}.yaml missing"
        keys = set(configs[name]) - {"name", "defaults"}
        assert keys == set(PROTECTIONS[name].config_keys), name


def test_fault_configs_and_model_configs_name_registered_components():
    for path in (CONF_DIR / "faults").glob("*.yaml"):
        faults = _yaml(path)
        assert faults["fmt"] in FORMATS and faults["model"] in FAULT_MODELS, path.name
        assert set(faults["targets"]) <= set(TARGET_KINDS), path.name
    from fitact_pipeline.faults.designs import DESIGNS

    for path in list((CONF_DIR / "campaign").glob("*.yaml")) + list((CONF_DIR / "experiment").glob("*.yaml")):
        design = (_yaml(path).get("campaign") or {}) if path.parent.name == "experiment" else _yaml(path)
        assert design.get("design", "classic") in DESIGNS, path.name
    for path in (CONF_DIR / "model").glob("*.yaml"):
        model = _yaml(path)
        model = model["model"] if "model" in model else model
        assert model["name"] in MODELS or model["name"] in SOURCES, path.name
        if model["name"] in SOURCES:  # a source's config has exactly the keys its entry lists
            assert set(model) == {"name", "label", *SOURCES[model["name"]].keys}, path.name


@pytest.mark.slow
def test_docs_lists_are_generated_from_the_registries():
    proc = subprocess.run([sys.executable, "docs/tools/registry_tables.py", "--check"], cwd=ROOT,
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    text = (ROOT / "docs" / "protections.md").read_text()
    assert all(f"| `{name}` |" in text for name in PROTECTIONS)
