"""Campaign designs (classic, nested), stopping at a CI target, and several fault maps per pass."""
import copy

import numpy as np
import pytest
import torch
from scipy import stats as sps
from torch.func import functional_call, vmap

from fitact_pipeline import stats
from fitact_pipeline.evaluate import evaluate_accuracy
from fitact_pipeline.faults import FaultInjector, run_campaign
from fitact_pipeline.faults.designs import DESIGNS, Pilot, pilot_estimates
from fitact_pipeline.faults.multimap import stacked_fault_space
from fitact_pipeline.faults.sampler import Bursts, StuckBits

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def models(small_protected):
    return small_protected(120, 7, ("none", "ranger", "clipact", "fitact"))


def test_classic_is_every_map_on_every_image(models):
    nets, images, labels = models
    model = copy.deepcopy(nets["fitact"])
    result = run_campaign(model, FaultInjector(model), images, labels, [3e-3], trials=4, seed=2, batch_size=50,
                          progress=False)
    reference = copy.deepcopy(nets["fitact"])
    injector = FaultInjector(reference)
    for record in result.trials:
        with injector.inject(3e-3, 2, record["trial"]):
            assert record["accuracy"] == evaluate_accuracy(reference, images, labels, 50)
        assert record["images"] == 120
    assert result.per_rate[3e-3]["images_per_trial"] == 120 and result.design == "classic"


def test_nested_trials_pair_maps_and_image_subsets_across_protections(models):
    nets, images, labels = models
    per_protection = {}
    for name in ("none", "fitact"):
        model = copy.deepcopy(nets[name])
        result = run_campaign(model, FaultInjector(model), images, labels, [3e-3], trials=6, seed=2, batch_size=50,
                              progress=False, design="nested", images_per_trial=20)
        per_protection[name] = result
        injector = FaultInjector(copy.deepcopy(nets[name]))
        for record in result.trials:
            subset = DESIGNS["nested"].trial_images(labels, 20, 2, record["trial"])
            assert record["images"] == 20 and len(subset) == 20
            # stratified: the class proportions of the pool
            assert torch.bincount(labels[subset], minlength=10).sub(
                torch.bincount(labels, minlength=10) * 20 / 120).abs().max() < 1
            with injector.inject(3e-3, 2, record["trial"]):
                assert record["accuracy"] == evaluate_accuracy(injector.model, images[subset], labels[subset], 50)
    # the same trial index: the same map in the shared tensors and the same images
    subsets = [DESIGNS["nested"].trial_images(labels, 20, 2, t) for t in range(6)]
    assert len({tuple(s.tolist()) for s in subsets}) == 6  # each trial its own images
    flips = {n: [t["flips_per_tensor"] for t in r.trials] for n, r in per_protection.items()}
    for a, b in zip(flips["none"], flips["fitact"]):
        assert {k: v for k, v in b.items() if not k.endswith(".bound")} == a


@pytest.mark.parametrize("protection", ["none", "ranger", "clipact", "fitact"])
@pytest.mark.parametrize("sampler,fmt", [(None, "fixed"), (StuckBits("mix"), "fixed"), (Bursts(2), "fixed"),
                                         (None, "int8")], ids=["memory", "stuck_at", "burst", "memory-int8"])
def test_several_maps_per_pass_give_the_one_at_a_time_logits(models, protection, sampler, fmt):
    nets, images, labels = models
    model = copy.deepcopy(nets[protection])
    # int8: each tensor in its own storage (no one buffer), scales in the fault space
    injector = FaultInjector(model, fmt=fmt, sampler=sampler,
                             targets=("weight", "bias", "bound") + (("scale",) if fmt == "int8" else ()))
    trials = [0, 1, 2, 3]
    rows, maps = stacked_fault_space(injector, 1e-2, 5, trials)
    with torch.no_grad():
        vmapped = vmap(lambda p, x: functional_call(model, p, (x,)), in_dims=(0, None))(rows, images[:30])
    assert all(m.effective_flips for m in maps)  # every map has its row, in trial order
    for k, trial in enumerate(trials):
        with injector.inject(1e-2, 5, trial) as fmap, torch.no_grad():
            alone = model(images[:30])
        assert fmap.effective_flips == maps[k].effective_flips
        finite = torch.isfinite(alone)
        assert torch.equal(finite, torch.isfinite(vmapped[k]))
        assert torch.allclose(vmapped[k][finite], alone[finite], rtol=1e-4, atol=1e-4)
    assert sum(m.effective_flips for m in maps) > 0


def test_a_campaign_gives_the_same_trials_with_one_or_several_maps_per_pass(models):
    nets, images, labels = models
    results = {}
    # at 3e-6 about half the maps change no bit: in a block they are the clean model, as alone
    for design, n in (("classic", None), ("nested", 15)):
        for k in (1, 4):
            model = copy.deepcopy(nets["ranger"])
            result = run_campaign(model, FaultInjector(model), images, labels, [3e-6, 2e-3, 1e-2], trials=8,
                                  seed=1, batch_size=40, progress=False, design=design, images_per_trial=n,
                                  maps_per_pass=k)
            results[(design, k)] = [(t["rate"], t["trial"], t["accuracy"], t["flips"]) for t in result.trials]
        assert results[(design, 1)] == results[(design, 4)], design
        low = [flips for rate, _, _, flips in results[(design, 4)] if rate == 3e-6]
        assert 0 < low.count(0) < len(low)
    clean = evaluate_accuracy(nets["ranger"], images, labels)
    assert all(acc == clean for rate, _, acc, flips in results[("classic", 4)] if flips == 0)


def test_stopping_at_the_target_half_width_works_for_both_designs(models):
    nets, images, labels = models
    for design, n, k in (("classic", None, 1), ("nested", 10, 3)):
        model = copy.deepcopy(nets["clipact"])
        result = run_campaign(model, FaultInjector(model), images, labels, [3e-3], trials=0, seed=0, batch_size=60,
                              progress=False, design=design, images_per_trial=n, maps_per_pass=k,
                              adaptive={"target_halfwidth": 0.05, "min_trials": 8, "max_trials": 300})
        st = result.per_rate[3e-3]
        accs = [t["accuracy"] for t in result.trials]
        # the rule reads the t half-width; the logged interval of record is the bounded one of those trials
        assert 8 <= st["trials"] < 300 and stats.t_halfwidth(accs) <= 0.05
        assert (st["ci_low"], st["ci_high"]) == stats.bounded_mean_ci(accs)[1:]
        # it stopped at the first block boundary where the interval, and what maps not yet seen could
        # change (stats.unseen_tail), were narrow enough
        assert stats.unseen_tail(accs) <= 0.05
        before = accs[: st["trials"] - k]
        assert len(before) < 8 or max(stats.unseen_tail(before), sps.t.ppf(0.975, len(before) - 1) * np.std(
            before, ddof=1) / np.sqrt(len(before))) > 0.05


def test_the_pilot_rule_and_its_estimates():
    # n* = sqrt(c) * sigma_w / sigma_b, within [5, pool]
    assert Pilot(0.1, 0.5, 16.0).best_n(2000) == 20
    assert Pilot(0.001, 0.5, 16.0).best_n(300) == 300
    assert Pilot(0.5, 0.1, 4.0).best_n(2000) == 5
    rng = np.random.default_rng(0)
    maps = rng.uniform(0.3, 0.9, size=400)  # between-map spread: sd of U(0.3, 0.9) = 0.173
    accs = rng.binomial(200, maps) / 200
    est = pilot_estimates(accs.tolist(), 200, map_seconds=0.02, image_seconds=0.001)
    assert est.sigma_b == pytest.approx(0.6 / np.sqrt(12), rel=0.1)
    assert est.sigma_w == pytest.approx(np.sqrt(np.mean(maps * (1 - maps))), rel=0.05)
    assert est.map_cost_images == pytest.approx(20)


def test_nested_intervals_cover_the_mean_over_maps_and_images(models):
    """The nested t-interval is a CI of the mean accuracy over maps and images: 40 campaigns of 25
    trials of 10 images cover the mean of a large classic campaign (300 maps on every image)."""
    nets, images, labels = models
    model = copy.deepcopy(nets["none"])
    injector = FaultInjector(model)
    reference = run_campaign(model, injector, images, labels, [4e-3], trials=300, seed=99, batch_size=120,
                             progress=False).per_rate[4e-3]["mean"]
    covered = 0
    for repetition in range(40):
        st = run_campaign(model, injector, images, labels, [4e-3], trials=25, seed=repetition, batch_size=120,
                          progress=False, design="nested", images_per_trial=10, maps_per_pass=5).per_rate[4e-3]
        covered += st["ci_low"] <= reference <= st["ci_high"]
    assert covered >= 34  # 95 % nominal; 34/40 is below it with probability < 2 %


def test_auto_maps_per_pass_takes_several_only_where_they_paid():
    """The measured rule (docs/campaigns.md): several maps on a GPU and for tiny models on a CPU; one for
    larger models on a CPU and for attention models anywhere."""
    from fitact_pipeline.models import build_model
    from fitact_pipeline.pipeline import AUTO_MAPS_PER_PASS, maps_per_pass

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    tiny, vgg = build_model("small_cnn", 10, 1, 1.0), build_model("vgg16", 10, 3, 0.25)
    attention = torch.nn.Sequential(torch.nn.MultiheadAttention(8, 2))
    assert maps_per_pass("auto", tiny, cpu) == AUTO_MAPS_PER_PASS > 1
    assert maps_per_pass("auto", vgg, cpu) == 1
    assert maps_per_pass("auto", vgg, cuda) == AUTO_MAPS_PER_PASS
    assert maps_per_pass("auto", attention, cuda) == 1
    assert maps_per_pass(3, vgg, cpu) == 3
