"""Neuron-wise bounds chosen from a vulnerability map (protect/map_choice.py)."""
import copy

import pytest
import torch

from fitact_pipeline.faults.vulnerability import Cell, VulnerabilityMap
from fitact_pipeline.protect import profile_activations, protect_model
from fitact_pipeline.protect.bounded import BoundedReLU
from fitact_pipeline.protect.map_choice import bound_memory, choose_sites, site_layers, site_scores

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def cnn(folded_small_cnn):
    return protect_model(folded_small_cnn(), "none")


def _map(model, sdc_of_layer: dict[str, float]) -> VulnerabilityMap:
    """A map where every bit of layer L's weight and bias has P(SDC) = sdc_of_layer[L]."""
    cells, tensors = [], []
    for name, p in model.named_parameters():
        layer = name.rsplit(".", 1)[0]
        tensors.append({"name": name, "elements": p.numel()})
        cells += [Cell(name, "weight", b, 10, 0, sdc_of_layer[layer], 0, 1, 0, 0, 0) for b in range(4)]
    return VulnerabilityMap(cells, 0.05, 0.95, 10, {"tensors": tensors})


def test_sites_bound_the_layers_before_them_and_scores_weigh_words(cnn):
    layers = site_layers(cnn)
    convs = [n for n, m in cnn.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    assert list(layers) == ["0.2", "0.5", "0.9"] and [l for ls in layers.values() for l in ls] == convs[:-1]
    sdc = {layer: 0.5 for layer in convs}
    scores = site_scores(_map(cnn, sdc), cnn)
    words = {n: p.numel() for n, p in cnn.named_parameters()}
    total = sum(words.values())
    for site, ls in layers.items():
        want = sum(words[t] for t in words if t.rsplit(".", 1)[0] in ls) / total * 0.5
        assert scores[site] == pytest.approx(want)


def test_choice_takes_the_most_vulnerable_sites_within_the_budget(cnn):
    profile = profile_activations(cnn, torch.randn(4, 1, 8, 8))
    neurons = {s: int(p.numel()) for s, p in profile.items()}
    scores = {"0.2": 0.3, "0.5": 0.2, "0.9": 0.1}
    assert choose_sites(scores, neurons, neurons["0.2"] - 1) == {"0.2": "neuron"}
    both = choose_sites(scores, neurons, neurons["0.2"] + neurons["0.9"] - 2)
    assert both == {"0.2": "neuron", "0.9": "neuron"}  # 0.5 does not fit after 0.2; 0.9 does
    assert choose_sites(scores, neurons, 0) == {}
    assert bound_memory(neurons, both) == neurons["0.2"] + neurons["0.9"] + 1
    # the chosen layout is what protect_model builds
    model = protect_model(copy.deepcopy(cnn), "fitact", "layer", profile, site_granularity=both)
    stored = sum(m.bound.numel() for m in model.modules() if isinstance(m, BoundedReLU))
    assert stored == bound_memory(neurons, both)
    with pytest.raises(ValueError, match=r"site_granularity names \['nope'\]"):
        protect_model(copy.deepcopy(cnn), "fitact", "layer", profile, site_granularity={"nope": "neuron"})
