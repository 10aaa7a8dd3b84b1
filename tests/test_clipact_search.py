"""FT-ClipAct search on a small real task (digits): thresholds in range, score no worse than max."""
import copy
from types import SimpleNamespace

import pytest
import torch
from hydra import compose, initialize_config_dir

from fitact_pipeline import stages
from fitact_pipeline.cache import partial_path
from fitact_pipeline.configs import CONF_DIR
from fitact_pipeline.evaluate import evaluate_accuracy
from fitact_pipeline.faults import FaultInjector
from fitact_pipeline.protect.clipact_search import _score, clipact_search
from fitact_pipeline.models import build_model
from fitact_pipeline.protect import bound_parameters, bounds_stages, fold_batchnorm, profile_activations, protect_model

RATES, TRIALS, SEED = (1e-4, 1e-3), 1, 3
FAULTS = {"fmt": "fixed", "word_bits": 32, "frac_bits": 16}


@pytest.fixture(scope="module")
def digits_clipact(trained_digits):
    dm, model = trained_digits()
    fold_batchnorm(model)
    prof = profile_activations(model, dm.profile_dataloader(500), 500)
    images, labels = dm.eval_tensors("val", 150, seed=0)
    return protect_model(model, "clipact", "layer", prof), prof, images, labels


def test_search_thresholds_in_range_and_score_no_worse(digits_clipact):
    model, prof, images, labels = digits_clipact
    reference = copy.deepcopy(model)  # every bound at the profiled max
    searched = copy.deepcopy(model)
    seen = []
    thr = clipact_search(searched, images, labels, FAULTS, rates=RATES, candidates=3, iterations=2,
                         trials=TRIALS, seed=SEED, log=lambda *a: seen.append(a))
    assert set(thr) == set(prof)  # every site, also the ones nested in submodules (features.*)
    for site, t in thr.items():
        assert 0.0 <= t <= prof[site].amax().item() + 2 ** -16  # Q15.16 rounding of the stored bound
        # the threshold is set on the model (up to Q15.16 rounding by the injector)
        assert abs(bound_parameters(searched)[site].item() - t) <= 2 ** -16
    assert len(seen) > len(thr)  # more than the reference was scored

    def score(m):
        return _score(m, images, labels, RATES, TRIALS, SEED, FAULTS, 256, FaultInjector, evaluate_accuracy)
    assert score(searched) >= score(reference) - 1e-9


def test_search_bad_inputs(digits_clipact):
    model, prof, images, labels = digits_clipact
    with pytest.raises(ValueError, match="no ClipActReLU"):
        clipact_search(build_model("small_cnn", 10, 1, 0.25), images, labels)
    neuron = protect_model(build_model("small_cnn", 10, 1, 0.25), "clipact", "neuron",
                           profile_activations(build_model("small_cnn", 10, 1, 0.25), torch.randn(2, 1, 8, 8)))
    with pytest.raises(ValueError, match="not layer-wise"):
        clipact_search(neuron, images, labels)
    with pytest.raises(ValueError, match="rates must be positive"):
        clipact_search(model, images, labels, rates=(0.0,))


def _scores(model, images, labels, reuse_prefix, **kwargs):
    seen = []
    thresholds = clipact_search(model, images, labels, FAULTS, log=lambda *a: seen.append(a), reuse_prefix=reuse_prefix,
                                **kwargs)
    return thresholds, seen


@pytest.mark.parametrize("arch", ["small_cnn", "resnet"])
def test_prefix_reuse_scores_every_candidate_as_full_passes_do_and_skips_the_prefix(digits_clipact, arch):
    model, prof, images, labels = digits_clipact
    if arch == "resnet":  # not a chain: cut by torch.fx at its blocks' boundaries; in-place fused activations
        base = build_model("resnet50", 10, 1, 0.0625)
        prof = profile_activations(base.eval(), images[:64])
        model = protect_model(base, "clipact", "layer", prof, fused=True)
    kwargs = dict(rates=RATES, candidates=3, iterations=2, trials=2, seed=SEED)
    if arch == "resnet":
        sites = list(prof)
        kwargs["sites"] = [sites[0], sites[len(sites) // 2], sites[-1]]  # the first, one in a block, the last
    full_model, reused_model = copy.deepcopy(model), copy.deepcopy(model)
    first_conv = next(m for m in reused_model.modules() if isinstance(m, torch.nn.Conv2d))
    calls = []
    first_conv.register_forward_hook(lambda *_: calls.append(1))
    full = _scores(full_model, images, labels, False, **kwargs)
    reused = _scores(reused_model, images, labels, True, **kwargs)
    assert reused == full  # every candidate's score, and the chosen thresholds, bit for bit
    assert all(torch.equal(bound_parameters(reused_model)[s], bound_parameters(full_model)[s]) for s in prof)
    scores, maps = len(full[1]), len(RATES) * 2
    # the first conv runs once per map for each site after the first stage, not once per score
    assert len(calls) < scores * maps / 2


class Stop(Exception):
    pass


def test_a_stopped_search_resumes_at_its_next_site_and_chooses_the_same(digits_clipact, tmp_path):
    model, prof, images, labels = digits_clipact
    kwargs = dict(rates=RATES, candidates=3, iterations=2, trials=TRIALS, seed=SEED)
    whole = copy.deepcopy(model)
    expected = clipact_search(whole, images, labels, FAULTS, **kwargs)
    sites = list(expected)
    assert len(sites) >= 2

    def stop_at_second_site(site, *_):
        if site == sites[1]:
            raise Stop
    with pytest.raises(Stop):
        clipact_search(copy.deepcopy(model), images, labels, FAULTS, log=stop_at_second_site,
                       checkpoint_dir=tmp_path, **kwargs)
    scored = []
    resumed_model = copy.deepcopy(model)
    resumed = clipact_search(resumed_model, images, labels, FAULTS, log=lambda site, *_: scored.append(site),
                             checkpoint_dir=tmp_path, **kwargs)
    assert resumed == expected  # the same thresholds, and the same bounds on the model, bit for bit
    assert all(torch.equal(bound_parameters(resumed_model)[s], bound_parameters(whole)[s]) for s in sites)
    assert sites[0] not in scored and sites[1] in scored  # the first site was not searched again
    # a checkpoint of another search's sites is refused, not silently mixed in
    with pytest.raises(ValueError, match="not the first sites"):
        clipact_search(copy.deepcopy(model), images, labels, FAULTS, sites=sites[1:], checkpoint_dir=tmp_path,
                       **kwargs)


def test_a_cli_jobs_search_keeps_its_progress_in_the_bounds_entrys_partial_folder(monkeypatch, tmp_path):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=["experiment=quickstart", "protection=clipact_ft", f"cache_dir={tmp_path}"])
    seen = {}

    def search(model, images, labels, faults, **kwargs):
        seen.update(kwargs)
        return {"0.2": 1.0}
    monkeypatch.setattr(bounds_stages, "clipact_search", search)
    data = SimpleNamespace(eval_tensors=lambda split, n, seed: (torch.zeros(2, 1, 8, 8), torch.zeros(2)))
    prepared = SimpleNamespace(stage="search", protected=torch.nn.Linear(2, 2), reference=None, clean_val_acc=0.9)
    info = stages.stage_bounds(cfg, prepared, data, {"bounds": "k1"})
    assert info == {"thresholds": {"0.2": 1.0}}
    assert seen["checkpoint_dir"] == partial_path(tmp_path, "bounds_clipact", "k1")
