"""Prefix reuse on models that are not a chain: cuts found in the traced graph (ResNet blocks), stages
no fault starts in merged, cuts dropped to fit the cache; predictions those of a full pass."""
import copy

import pytest
import torch
from torch import nn

from fitact_pipeline.faults import FaultInjector
from fitact_pipeline.faults import prefix as prefix_mod
from fitact_pipeline.faults.exact_count import exact_map
from fitact_pipeline.faults.prefix import PrefixCache, space_bits, stages_of
from fitact_pipeline.models import build_model
from fitact_pipeline.protect import fold_batchnorm, profile_activations, protect_model

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def resnets():
    torch.manual_seed(0)
    base = fold_batchnorm(build_model("resnet50", 10, 3, 0.0625).eval())
    images = torch.randn(24, 3, 16, 16)
    profile = profile_activations(base, images)
    nets = {name: protect_model(copy.deepcopy(base), name, profile=None if name == "none" else profile)
            for name in ("none", "fitact")}
    return nets, images


def test_resnet_cuts_fall_on_block_boundaries(resnets):
    nets, _ = resnets
    for model in nets.values():
        stages = stages_of(model)
        assert stages is not None and len(stages) > 16
        # every residual block's layers (its convolutions and shortcut) sit in one stage: no cut
        # inside a block, where the block's input is still live for the shortcut
        for layer in ("layer1", "layer2", "layer3", "layer4"):
            for b, _ in enumerate(getattr(model, layer)):
                block = f"{layer}.{b}."
                holding = {i for i, st in enumerate(stages) for o in st.owns
                           if o.startswith(block) and ("conv" in o or "shortcut" in o)}
                assert len(holding) == 1, (block, holding)


def test_every_start_gives_the_full_pass_predictions(resnets):
    nets, images = resnets
    for name, model in nets.items():
        injector = FaultInjector(model)
        cache = PrefixCache.build(model, images, 10, space_bits(injector.space))
        ids = torch.arange(3, 21)
        starts = set()
        for trial in range(10):
            with injector.inject_sampled(exact_map(injector, 1, 1 if name == "fitact" else 0, 0, trial)) as fmap:
                start = cache.first_stage(fmap)
                with torch.no_grad():
                    full = model(images[ids]).argmax(1)
                assert bool(cache.correct(start, ids, full).all()), (name, trial, start)
                starts.add(start)
            assert start == min(cache.stage_of(n) for n, *_ in fmap.records)
        assert len(starts) > 1
        # a start at any stage of the clean model: the clean predictions
        with torch.no_grad():
            clean = model(images).argmax(1)
        for s in range(len(cache.stages)):
            assert bool(cache.correct(s, torch.arange(len(images)), clean).all()), s


def test_stages_without_faulted_tensors_are_merged(resnets):
    nets, images = resnets
    model = nets["none"]
    bits = space_bits(FaultInjector(model).space)
    merged = PrefixCache.build(model, images, 10, bits)
    plain = PrefixCache.build(model, images, 10)
    assert len(merged.stages) < len(plain.stages)
    # each stage after the first reads a tensor of the fault space: a map can start there
    assert all(any(st.holds(n) for n in bits) for st in merged.stages[1:])
    # the work a start at the last stage skips is the same whichever stages were merged
    last = merged.stage_of("fc.weight")
    assert merged.ideal_saving(last) == pytest.approx(plain.ideal_saving(plain.stage_of("fc.weight")))


def test_cuts_are_dropped_until_the_cache_fits(resnets, monkeypatch):
    nets, images = resnets
    model = nets["fitact"]
    bits = space_bits(FaultInjector(model).space)
    full = PrefixCache.build(model, images, 10, bits)
    per_image = sum(t[:1].numel() * 4 for t in full.inputs)
    monkeypatch.setattr(prefix_mod, "MAX_CACHE_BYTES", per_image * len(images) // 3)
    small = PrefixCache.build(model, images, 10, bits)
    assert 1 < len(small.stages) < len(full.stages)
    assert sum(t.numel() * 4 for t in small.inputs) <= per_image * len(images) // 3
    with torch.no_grad():
        clean = model(images).argmax(1)
    for s in range(len(small.stages)):
        assert bool(small.correct(s, torch.arange(len(images)), clean).all())


class _DataDependent(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 2)

    def forward(self, x):
        x = self.a(x)
        if x.sum() > 0:  # control flow on a value: fx cannot trace it
            x = -x
        return self.b(x)


def test_a_model_fx_cannot_trace_runs_full_passes():
    model = _DataDependent().eval()
    assert stages_of(model) is None
    assert PrefixCache.build(model, torch.randn(5, 4), 5) is None


@pytest.mark.parametrize("design, n", [("classic", None), ("nested", 12)])
def test_campaigns_with_one_map_per_pass_start_at_the_first_faulted_stage(resnets, monkeypatch, design, n):
    """The classic and nested designs use the cache (a pass that starts late is counted) and log the
    per-trial results of full passes."""
    from fitact_pipeline.faults import run_campaign
    from fitact_pipeline.faults import campaign as campaign_mod
    nets, images = resnets
    model = nets["fitact"]
    with torch.no_grad():
        labels = model(images).argmax(1)
    labels[::4] = (labels[::4] + 1) % 10
    run = lambda: run_campaign(model, FaultInjector(model), images, labels, [1e-6, 1e-5], 12, 3, 8, progress=False,
                               design=design, images_per_trial=n, maps_per_pass=1)
    starts = []
    real = PrefixCache.predictions

    def spy(self, start, ids):
        starts.append(start)
        return real(self, start, ids)
    monkeypatch.setattr(PrefixCache, "predictions", spy)
    with_prefix = run()
    assert starts and max(starts) > 0  # some maps started after the first stage
    monkeypatch.setattr(campaign_mod.PrefixCache, "build", classmethod(lambda cls, *a, **k: None))
    full = run()
    assert with_prefix.trials == full.trials and len(full.trials) == 24  # accuracy, flips, SDC: every field
