"""The fault-rate unit (DESIGN.md §2.1, faults/units.py): per bit (the default, unchanged), per word
(Binomial(words, rate) words, one flipped bit each) and the authors' toolbox rule (exactly
floor(numel x bits x rate) draws per tensor, with replacement, a bit drawn twice flipping back)."""
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.utils import instantiate
from omegaconf import OmegaConf
from scipy import stats
from torch import nn

from fitact_pipeline.faults import FAULT_MODELS, FaultInjector, check_faults_config
from fitact_pipeline.faults.sampler import BitFlips, StuckBits, field_keys, salted, stream_uniforms
from fitact_pipeline.faults.units import RATE_UNITS, toolbox_counts
from fitact_pipeline.identity import result_identity
from fitact_pipeline.registry import ConfigError

CONF = Path(__file__).resolve().parents[1] / "conf"


def net(seed=0, extra=False):
    torch.manual_seed(seed)
    layers = [nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 20), nn.ReLU(), nn.Linear(20, 3)]
    return nn.Sequential(*layers, *([nn.Linear(3, 3)] if extra else [])).eval()


def injector(unit, model=None, stuck=None):
    entry = RATE_UNITS[unit]
    sampler = BitFlips(entry) if stuck is None else StuckBits(stuck, entry)
    return FaultInjector(model if model is not None else net(), sampler=sampler)


def test_per_word_hits_binomial_words_with_one_flipped_bit_each(one_thread):
    inj = injector("word")
    words = int(inj.space.field_numel.sum())
    rate, trials = 2e-3, 400
    counts = []
    for t in range(trials):
        fmap = inj.sample(rate, seed=5, trial=t)
        word_ids = inj.space.field_elem_offset[fmap.field_idx] + fmap.elements
        assert len(set(word_ids.tolist())) == len(fmap)  # one flipped bit per hit word
        assert bool((fmap.bits >= 0).all() and (fmap.bits < 32).all())
        assert fmap.realised_ber == len(fmap) / words
        counts.append(len(fmap))
    counts = np.array(counts)
    mean, var = words * rate, words * rate * (1 - rate)
    # the mean of 400 draws within 4 standard errors, the variance within 25 % of the binomial's
    assert abs(counts.mean() - mean) < 4 * math.sqrt(var / trials)
    assert abs(counts.var(ddof=1) / var - 1) < 0.25
    # and the whole distribution: chi-square of the counts against Binomial(words, rate)
    edges = np.arange(0, 25)
    expected = np.diff(stats.binom.cdf(np.append(edges, 10 ** 9) - 1, words, rate)) * trials
    observed = np.bincount(np.minimum(counts, edges[-1]), minlength=edges.size)
    keep = expected > 5
    obs, exp = observed[keep], expected[keep]
    assert stats.chisquare(obs, exp * obs.sum() / exp.sum()).pvalue > 1e-3


def test_per_word_bit_positions_are_uniform(one_thread):
    inj = injector("word")
    bits = torch.cat([inj.sample(2e-2, 1, t).bits for t in range(60)])
    observed = np.bincount(bits.numpy(), minlength=32)
    assert stats.chisquare(observed).pvalue > 1e-3


def test_toolbox_rule_draws_exactly_floor_numel_bits_rate_per_tensor():
    inj = injector("toolbox")
    space = inj.space
    for rate in (1e-5, 3e-4, 1e-3, 0.02):
        counts = toolbox_counts(space, rate)
        assert counts.tolist() == [math.floor(f.numel * f.bits * rate) for f in space.fields]
        fmap = inj.sample(rate, seed=2, trial=3)
        per_tensor = np.bincount(fmap.field_idx.numpy(), minlength=len(space.fields))
        # a bit drawn twice flips back: the map holds the draws less an even number per tensor
        assert ((counts - per_tensor) % 2 == 0).all() and (per_tensor <= counts).all()
    # small tensors get none at low rates (the bias of 3 outputs: 96 bits)
    assert toolbox_counts(space, 1e-3)[-1] == 0


def test_toolbox_bits_drawn_twice_cancel_and_others_stay():
    # one 1-element tensor at rate 1: 32 draws into its 32 bits, so some bits are drawn twice
    inj = injector("toolbox", nn.Sequential(nn.Linear(1, 1, bias=False)))
    hashes = salted(inj.space.field_name_hash, "toolbox")
    u = stream_uniforms(field_keys(hashes, 9, 0), np.array([64])).reshape(-1, 2)
    drawn = np.floor(u[:, 1] * 32).astype(int)
    odd = sorted(b for b in set(drawn.tolist()) if (drawn == b).sum() % 2)
    fmap = inj.sample(1.0, 9, 0)
    assert sorted(fmap.bits.tolist()) == odd and len(odd) < 32 and (fmap.elements == 0).all()


@pytest.mark.parametrize("unit", ["word", "toolbox"])
def test_other_units_pair_across_models_and_restore_bit_exactly(unit):
    a, b = net(0), net(1, extra=True)  # b: other values and one more tensor
    inj_a, inj_b = injector(unit, a), injector(unit, b)
    clean = [p.detach().clone() for p in a.parameters()]
    fa, fb = inj_a.sample(5e-3, 4, 2), inj_b.sample(5e-3, 4, 2)
    shared = [r for r in fb.records if r[0] in set(fa.names)]
    assert len(fa) > 0 and fa.records == shared
    with inj_a.inject(5e-3, 4, 2):
        assert any(not torch.equal(p, c) for p, c in zip(a.parameters(), clean))
    assert all(torch.equal(p, c) for p, c in zip(a.parameters(), clean))


def test_stuck_at_per_word_sticks_one_bit_of_each_hit_word():
    inj = injector("word", stuck="mix")
    fmap = inj.sample(0.05, 3, 0)
    word_ids = inj.space.field_elem_offset[fmap.field_idx] + fmap.elements
    assert len(fmap) > 10 and len(set(word_ids.tolist())) == len(fmap)
    assert set(fmap.values.tolist()) == {0, 1}


def composed(*overrides):
    with initialize_config_dir(config_dir=str(CONF), version_base=None):
        cfg = compose("config", overrides=list(overrides), return_hydra_config=True)
    HydraConfig.instance().set_config(cfg)
    return cfg


def faults_cfg(*overrides):
    return composed(*overrides).faults


def job_faults(*overrides):
    """The fault settings a job's identity (and so its key) holds."""
    cfg = composed(*overrides)
    return result_identity(cfg, instantiate(cfg.dataset), torch.device("cpu"))["job"]["faults"]


def test_default_is_the_models_own_unit_and_keeps_maps_and_keys():
    cfg = faults_cfg()
    assert cfg.rate_unit == "auto"
    built = FAULT_MODELS["memory"].build(net(), cfg)
    plain = FaultInjector(net(), fmt="fixed", word_bits=32, frac_bits=16)
    assert built.sample(1e-3, 0, 1).records == plain.sample(1e-3, 0, 1).records
    assert built.fault_space["rate_unit"] == "bit"
    # auto resolves to the model's own unit: the same identity (and key) as naming it
    assert job_faults()["rate_unit"] == "bit"
    assert job_faults() == job_faults("faults.rate_unit=bit")
    assert job_faults("faults.rate_unit=word")["rate_unit"] == "word"
    burst = faults_cfg("faults.model=burst")
    assert FAULT_MODELS["burst"].build(net(), burst).fault_space["rate_unit"] == "word"


@pytest.mark.parametrize("overrides, message", [
    (["faults.rate_unit=byte"], "faults.rate_unit='byte' is not allowed; faults.model=memory honours: auto, bit, word, toolbox"),
    (["faults.model=burst", "faults.rate_unit=bit"], "faults.rate_unit='bit' is not allowed; faults.model=burst honours: auto, word"),
    (["faults.model=stuck_at", "faults.rate_unit=toolbox"], "faults.model=stuck_at honours: auto, bit, word"),
    (["faults.model=activation", "faults.rate_unit=word"], "faults.model=activation honours: auto, bit"),
])
def test_a_unit_the_fault_model_does_not_honour_is_one_line_error(overrides, message):
    with pytest.raises(ConfigError) as err:
        check_faults_config(faults_cfg(*overrides))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_curve_label_and_context_say_the_unit():
    from fitact_pipeline.report.runs import context_of, variant_of

    tags = {"protection": "fitact", "fault_model": "memory", "model": "m", "dataset": "d"}
    assert variant_of(tags, {}) == "fitact" == variant_of({**tags, "rate_unit": "bit"}, {})
    assert variant_of({**tags, "rate_unit": "word"}, {}) == "fitact (per stored word)"
    assert context_of(tags, {}) != context_of({**tags, "rate_unit": "word"}, {})
    assert variant_of({**tags, "fault_model": "burst", "rate_unit": "word"}, {}) == "fitact"


def test_the_unit_is_tagged_on_the_logged_run(tmp_path):
    from mlflow.tracking import MlflowClient

    from fitact_pipeline.api import measure_resilience

    torch.manual_seed(0)
    x, y = torch.randn(16, 3, 8, 8), torch.randint(0, 3, (16,))
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    out = measure_resilience(net(), (x, y), rates=[1e-3], trials=2, faults={"rate_unit": "word"},
                             mlflow={"tracking_uri": uri, "experiment": "units"})
    assert out.fault_space["rate_unit"] == "word"
    assert MlflowClient(uri).get_run(out.run_id).data.tags["rate_unit"] == "word"
