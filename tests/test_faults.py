"""FaultInjector: sampling statistics, exact restore, pairing, replay, evaluation, bad input."""

import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from fitact_pipeline.evaluate import correct_rows, count_correct, evaluate_accuracy
from fitact_pipeline.faults import SAMPLER, FaultInjector, FaultMap
from fitact_pipeline.faults.sampler import _GAMMA, Bursts, StuckBits, bernoulli_positions, field_keys, mix64


class Bounded(nn.Module):
    """Stand-in for a bounded activation: stores its bound as the parameter `bound`."""

    def __init__(self, shape):
        super().__init__()
        self.bound = nn.Parameter(torch.full(shape, 4.0))

    def forward(self, x):
        return torch.minimum(torch.relu(x), self.bound)


def tiny_model(bounded: bool = False, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    act1 = Bounded((4, 6, 6)) if bounded else nn.ReLU()
    act2 = Bounded((8,)) if bounded else nn.ReLU()
    return nn.Sequential(
        nn.Conv2d(3, 4, 3), act1, nn.Flatten(), nn.Linear(4 * 6 * 6, 8), act2, nn.Linear(8, 2)
    )


def bits_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone().view(torch.int32) for k, v in model.state_dict().items()
            if v.dtype == torch.float32}


def same_bits(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def keys(fmap: FaultMap) -> set:
    return set(fmap.records)


# ---------------------------------------------------------------------------------------------
# Construction and fault space


def test_construction_quantises_and_describes_fault_space():
    model = tiny_model(bounded=True)
    raw = {k: v.clone() for k, v in model.state_dict().items()}
    inj = FaultInjector(model)
    space = inj.fault_space
    names = [t["name"] for t in space["tensors"]]
    assert names == ["0.weight", "0.bias", "1.bound", "3.weight", "3.bias", "4.bound", "5.weight", "5.bias"]
    assert {t["kind"] for t in space["tensors"]} == {"weight", "bias", "bound"}
    assert space["total_bits"] == 32 * sum(v.numel() for v in raw.values()) == inj.num_bits
    assert space["format"] == "fixed" and space["frac_bits"] == 16
    assert space["sampler"] == SAMPLER  # logged with every run: which procedure drew its maps
    for k, v in model.state_dict().items():
        scaled = v.double() * 2 ** 16
        assert torch.equal(scaled, scaled.round())  # on the Q15.16 grid
        assert (v - raw[k]).abs().max() <= 2 ** -17
    assert not all(torch.equal(raw[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("fmt", ["fixed", "float32", "float16"])
def test_tensor_by_tensor_path_flips_like_the_one_buffer_path(fmt):
    """Models whose tensors cannot share one buffer (several devices) are flipped tensor by tensor;
    the faulty values and the restore must be those of the one-buffer path."""
    one, per = tiny_model(bounded=True), tiny_model(bounded=True)
    inj_one, inj_per = FaultInjector(one, fmt=fmt), FaultInjector(per, fmt=fmt)
    inj_per.space.store = None  # what construction leaves when the tensors are on several devices
    clean = bits_of(per)
    for trial in range(5):
        with inj_one.inject(3e-3, seed=2, trial=trial) as a, inj_per.inject(3e-3, seed=2, trial=trial) as b:
            assert len(a) == len(b) > 0
            assert same_bits(bits_of(one), bits_of(per))
    assert same_bits(bits_of(per), clean)


@pytest.mark.parametrize("fmt", ["fixed", "float32", "bfloat16"])
def test_one_buffer_store_keeps_values_outputs_and_tensor_identity(fmt):
    """The injector moves the fault space into one buffer; the model must compute exactly what the
    same model quantised tensor by tensor computes, and keep its Parameter objects."""
    import copy

    from fitact_pipeline.faults.formats import make_codec
    from fitact_pipeline.models import build_model

    torch.manual_seed(0)
    model = build_model("vgg16", num_classes=10, width=0.125).eval()
    reference = copy.deepcopy(model)
    codec = make_codec(fmt, 32, 16)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.copy_(codec.quantize(p.view(-1)).view(p.shape))
    params = {n: p for n, p in model.named_parameters()}
    injector = FaultInjector(model, fmt=fmt, targets=("weight", "bias"))
    assert injector.space.store is not None
    assert all(p is params[n] for n, p in model.named_parameters())
    assert all(p.data_ptr() % 64 == 0 for p in model.parameters())
    x = torch.randn(16, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))
        with injector.inject(3e-4, seed=0, trial=0) as fmap:
            assert len(fmap) > 0 and not torch.equal(model(x), reference(x))
        assert torch.equal(model(x), reference(x))


def test_selection_by_kind_and_glob():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4, 2))
    names = lambda inj: [t["name"] for t in inj.fault_space["tensors"]]  # noqa: E731
    assert names(FaultInjector(model, targets=("batchnorm",))) == [
        "1.weight", "1.bias", "1.running_mean", "1.running_var"]
    assert names(FaultInjector(model, targets=("weight",), exclude=("4.*",))) == ["0.weight"]
    assert names(FaultInjector(model, include=("4.*",))) == ["4.weight", "4.bias"]
    assert names(FaultInjector(model, fmt="int8", targets=("weight", "scale"), include="0.*")) == [
        "0.weight", "0.weight:scale"]


# ---------------------------------------------------------------------------------------------
# Sampling statistics


def test_flip_counts_follow_the_binomial():
    model = tiny_model()
    inj = FaultInjector(model)
    n, rate, trials = inj.num_bits, 2e-3, 400
    counts = [len(inj.sample(rate, seed=7, trial=t)) for t in range(trials)]
    # Chi-square goodness of fit against Binomial(N, rate) on bins of roughly equal mass.
    dist = stats.binom(n, rate)
    edges = [-1] + [int(dist.ppf(q)) for q in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)] + [n]
    observed = [sum(lo < c <= hi for c in counts) for lo, hi in zip(edges, edges[1:])]
    expected = [trials * (dist.cdf(hi) - dist.cdf(lo)) for lo, hi in zip(edges, edges[1:])]
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    # A systematic bias of a few percent (e.g. a rounded-down count) would be far outside this.
    assert abs(sum(counts) / trials - n * rate) < 4 * math.sqrt(n * rate * (1 - rate) / trials)


def test_small_tensor_counts_are_never_rounded_down():
    # The 2-element bias of the last layer has 64 bits: at rate 1e-3 it expects 0.064 flips per
    # trial. Rounding per-tensor counts down would give it none, ever.
    inj = FaultInjector(tiny_model())
    trials = 1500
    hits = sum(m.summary()["flips_per_tensor"]["5.bias"] for m in (inj.sample(1e-3, 1, t) for t in range(trials)))
    assert stats.binomtest(hits, 64 * trials, 1e-3).pvalue > 1e-3


@pytest.mark.parametrize("rate", [3e-3, 0.3])  # sparse and dense maps
def test_positions_are_uniform_and_distinct(rate):
    inj = FaultInjector(tiny_model())
    offsets, off = {}, 0
    for t in inj.fault_space["tensors"]:
        offsets[t["name"]] = off
        off += t["bits"]
    glob, bits = [], []
    for trial in range(300 if rate < 0.1 else 3):
        fmap = inj.sample(rate, seed=3, trial=trial)
        g = [offsets[name] + 32 * i + b for name, i, b in fmap.records]
        assert len(set(g)) == len(g) == len(fmap)  # no repeated position within a map
        glob += g
        bits += [b for _, _, b in fmap.records]
    assert stats.chisquare(torch.bincount(torch.tensor(bits), minlength=32).tolist()).pvalue > 1e-3
    assert stats.kstest([x / off for x in glob], "uniform").pvalue > 1e-3


def reference_positions(key: int, n_bits: int, rate: float) -> list[int]:
    """The definition, one draw at a time: draw j = 1, 2, ... of the field's splitmix64 stream is
    a uniform U in (0, 1); floor(log U / log(1 - rate)) unflipped bits, then a flipped one, until
    the position leaves the field."""
    positions, pos, j = [], -1, 0
    log_keep = math.log1p(-rate) if rate < 1 else -math.inf
    while True:
        j += 1
        state = np.array([(key + j * int(_GAMMA)) % 2**64], dtype=np.uint64)
        u = ((int(mix64(state)[0]) >> 11) + 0.5) * 2.0**-53
        pos += math.floor(min(float(np.log(np.array([u]))[0]) / log_keep, n_bits)) + 1
        if pos >= n_bits:
            return positions
        positions.append(pos)


@pytest.mark.parametrize("rate", [1e-5, 3e-3, 0.05, 0.3, 1.0])
@pytest.mark.parametrize("batch_scale", [1.0, 0.05])  # one round of draws, or many
def test_vectorised_draw_equals_the_one_draw_at_a_time_definition(rate, batch_scale):
    """Every field's positions are the definition's, whatever the batching and the other fields:
    so maps never depend on how the draws were vectorised."""
    inj = FaultInjector(tiny_model())
    n_bits = inj.space.field_n_bits
    for trial in range(3 if rate < 0.3 else 1):
        keys = field_keys(inj.space.field_name_hash, 5, trial)
        fid, pos = bernoulli_positions(keys, n_bits, rate, batch_scale)
        for t in range(n_bits.size):
            expected = reference_positions(int(keys[t]), int(n_bits[t]), rate)
            assert pos[fid == t].tolist() == expected
        if rate == 1.0:
            assert fid.size == n_bits.sum()  # every bit flips


@pytest.mark.parametrize("sampler", [None, StuckBits("mix"), Bursts(3)], ids=["memory", "stuck_at", "burst"])
@pytest.mark.parametrize("rate", [0.0, 1e-4, 0.02, 1.0])
def test_a_block_of_maps_drawn_together_is_each_trials_own_map(sampler, rate):
    inj = FaultInjector(tiny_model(), sampler=sampler)
    trials = [7, 0, 3, 3, 12]  # any order, repeats allowed
    block = inj.sample_block(rate, 5, trials)
    for trial, fmap in zip(trials, block):
        alone = inj.sample(rate, 5, trial)
        assert fmap.trial == trial and fmap.records == alone.records
        assert fmap.summary() == alone.summary()
    if rate == 0.02:
        assert len({tuple(m.records) for m in block}) == 4 and all(len(m) for m in block)


def test_same_seed_same_map_other_trial_or_seed_differs():
    inj = FaultInjector(tiny_model())
    a, b = inj.sample(0.01, 5, 2), inj.sample(0.01, 5, 2)
    assert a.records == b.records and len(a) > 0
    assert keys(inj.sample(0.01, 5, 3)) != keys(a)
    assert keys(inj.sample(0.01, 6, 2)) != keys(a)
    # Pure function of (seed, trial, name): an independently built injector agrees.
    assert FaultInjector(tiny_model(seed=1)).sample(0.01, 5, 2).records == a.records


def test_models_differing_only_in_activations_get_the_same_weight_faults():
    plain = FaultInjector(tiny_model(bounded=False))
    bounded = FaultInjector(tiny_model(bounded=True))
    bound_hits = 0
    for trial in range(20):
        p, b = plain.sample(3e-3, 11, trial), bounded.sample(3e-3, 11, trial)
        b_shared = {r for r in b.records if not r[0].endswith(".bound")}
        assert keys(p) == b_shared
        bound_hits += len(b) - len(b_shared)
    assert bound_hits > 0  # the bounds are in the protected model's fault space


def test_summary_reports_counts_ber_bits_and_tensors():
    inj = FaultInjector(tiny_model())
    fmap = inj.sample(0.01, 0, 0)
    s = fmap.summary()
    assert s["num_flips"] == len(fmap.records) > 0
    assert s["num_bits"] == inj.num_bits
    assert s["realised_ber"] == pytest.approx(len(fmap.records) / inj.num_bits)
    assert len(s["flips_per_bit"]) == 32 and sum(s["flips_per_bit"]) == s["num_flips"]
    for bit, c in enumerate(s["flips_per_bit"]):
        assert c == sum(1 for r in fmap.records if r[2] == bit)
    assert set(s["flips_per_tensor"]) == {t["name"] for t in inj.fault_space["tensors"]}
    for name, c in s["flips_per_tensor"].items():
        assert c == sum(1 for r in fmap.records if r[0] == name)
    assert inj.sample(0.0, 0, 0).summary()["num_flips"] == 0
    assert len(inj.sample(1.0, 0, 0)) == inj.num_bits


# ---------------------------------------------------------------------------------------------
# Injection and restore


def test_known_flip_changes_the_stored_value():
    model = tiny_model()
    inj = FaultInjector(model)
    with torch.no_grad():
        model[0].weight.view(-1)[5] = 0.5
    fmap = FaultMap([("0.weight", 5, 16), ("0.weight", 7, 31), ("5.bias", 1, 0), ("5.bias", 1, 16)], inj.num_bits)
    w7, b1 = float(model[0].weight.view(-1)[7]), float(model[5].bias[1])
    with inj.apply(fmap):
        assert float(model[0].weight.view(-1)[5]) == 1.5
        # Sign bit: -32768 for a non-negative word, +32768 for a negative one. The exact Q15.16
        # result (|v| >= 256) is rounded once to the float32 the model computes with.
        exact = torch.tensor(w7 - 32768.0 * (1 if w7 >= 0 else -1), dtype=torch.float64)
        assert float(model[0].weight.view(-1)[7]) == float(exact.to(torch.float32))
        assert float(model[5].bias[1]) != b1  # two bits of one word flipped together
    assert float(model[0].weight.view(-1)[5]) == 0.5


@pytest.mark.parametrize("fmt", ["fixed", "float32", "float16", "bfloat16", "int8"])
def test_restore_is_bit_exact_after_many_trials(fmt):
    model = tiny_model(bounded=True)
    targets = ("weight", "bias", "bound") + (("scale",) if fmt == "int8" else ())
    inj = FaultInjector(model, fmt=fmt, targets=targets)
    clean = bits_of(model)
    changed = 0
    for trial in range(1000 if fmt == "fixed" else 200):
        with inj.inject(0.02, seed=1, trial=trial):
            changed += not same_bits(bits_of(model), clean) if trial < 20 else 0
    assert changed >= 15  # the trials did change the model
    assert same_bits(bits_of(model), clean)


def test_restore_after_exception_inside_inject():
    model = tiny_model()
    inj = FaultInjector(model, fmt="float32")
    clean = bits_of(model)
    with pytest.raises(RuntimeError, match="boom"):
        with inj.inject(0.05, seed=0):
            assert not same_bits(bits_of(model), clean)
            raise RuntimeError("boom")
    assert same_bits(bits_of(model), clean)
    with inj.inject(0.05, seed=0):  # the injector is usable again
        with pytest.raises(RuntimeError, match="already active"):
            with inj.inject(0.05, seed=0, trial=1):
                pass
    assert same_bits(bits_of(model), clean)


def test_save_load_replays_exactly(tmp_path):
    model = tiny_model(bounded=True)
    inj = FaultInjector(model)
    with inj.inject(0.01, seed=4, trial=9) as fmap:
        faulty = bits_of(model)
        fmap.save(tmp_path / "map.json")
    loaded = FaultMap.load(tmp_path / "map.json")
    assert loaded.records == fmap.records and loaded.num_bits == fmap.num_bits
    assert loaded.summary() == fmap.summary()
    with inj.apply(loaded):
        assert same_bits(bits_of(model), faulty)
    # A second model replays the map onto its own clean values identically.
    other = tiny_model(bounded=True)
    inj2 = FaultInjector(other)
    with inj2.apply(loaded):
        assert same_bits(bits_of(other), faulty)


def test_apply_rejects_maps_that_do_not_fit():
    inj = FaultInjector(tiny_model())
    with pytest.raises(ValueError, match="not in this fault space"):
        with inj.apply(FaultMap([("1.bound", 0, 0)], inj.num_bits)):
            pass
    with pytest.raises(ValueError, match="repeats"):
        with inj.apply(FaultMap([("0.bias", 0, 3), ("0.bias", 0, 3)], inj.num_bits)):
            pass
    with pytest.raises(ValueError, match="outside"):
        with inj.apply(FaultMap([("0.bias", 0, 32)], inj.num_bits)):
            pass
    other = FaultInjector(tiny_model(), fmt="float32").sample(0.01, 0)
    with pytest.raises(ValueError, match="format"):
        with inj.apply(other):
            pass


def test_int8_scale_fault_changes_a_whole_channel():
    model = tiny_model()
    inj = FaultInjector(model, fmt="int8", targets=("weight", "scale"))
    clean = model[0].weight.detach().clone()
    with inj.apply(FaultMap([("0.weight:scale", 2, 23)], inj.num_bits)):  # exponent LSB: x2 or /2
        w = model[0].weight.detach()
        ratio = w[2][clean[2] != 0] / clean[2][clean[2] != 0]
        assert torch.allclose(ratio, ratio[0].expand_as(ratio)) and float(ratio[0]) in (2.0, 0.5)
        assert torch.equal(w[[0, 1, 3]], clean[[0, 1, 3]])
    assert torch.equal(model[0].weight, clean)


# ---------------------------------------------------------------------------------------------
# Evaluation under faults


def test_count_correct_treats_non_finite_rows_as_misses():
    logits = torch.tensor([[2.0, 1.0], [float("nan"), 1.0], [0.0, float("inf")], [1.0, 3.0]])
    labels = torch.tensor([0, 1, 1, 1])
    assert count_correct(logits, labels) == 2


def test_count_correct_reads_the_last_dimension_for_stacked_maps():
    logits = torch.tensor([[[0.0, 1.0], [2.0, 0.0]], [[float("nan"), 1.0], [0.0, 3.0]]])  # (maps, images, classes)
    labels = torch.tensor([[1, 0], [1, 0]])
    assert correct_rows(logits, labels).tolist() == [[True, True], [False, False]]


def test_evaluation_restores_each_modules_own_mode():
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Dropout(0.5), nn.Linear(8, 3))
    model.train()
    model[1].eval()  # a frozen BatchNorm inside a training model
    seen = []
    model[2].register_forward_hook(lambda m, i, o: seen.append(m.training))
    images, labels = torch.randn(16, 4), torch.randint(0, 3, (16,))
    evaluate_accuracy(model, images, labels, 5)
    assert seen == [False] * 4  # eval mode inside, every batch
    assert [m.training for m in model] == [True, False, True, True]
    model.eval()
    evaluate_accuracy(model, images, labels, 5)
    assert not any(m.training for m in model.modules())


def test_nan_fault_is_a_miss_not_a_crash():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 3))
    images = torch.randn(50, 4)
    with torch.no_grad():
        labels = model(images).argmax(1)
        model[0].weight.view(-1)[0] = 1.5  # 0x3FC00000: flipping bit 30 gives a NaN
    inj = FaultInjector(model, fmt="float32")
    clean_acc = evaluate_accuracy(model, images, labels, batch_size=16)
    assert clean_acc > 0.5
    with inj.apply(FaultMap([("0.weight", 0, 30)], inj.num_bits)):
        assert math.isnan(float(model[0].weight.view(-1)[0]))
        assert evaluate_accuracy(model, images, labels, batch_size=16) == 0.0
    assert evaluate_accuracy(model, images, labels, batch_size=16) == clean_acc


# ---------------------------------------------------------------------------------------------
# Bad input


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fmt": "posit"}, "unknown fault format 'posit'"),
        ({"word_bits": 33}, "word_bits=33"),
        ({"word_bits": 1}, "word_bits=1"),
        ({"frac_bits": 32}, "frac_bits=32"),
        ({"word_bits": 16, "frac_bits": 16}, "frac_bits=16"),
        ({"frac_bits": -1}, "frac_bits=-1"),
        ({"targets": ("weights",)}, "unknown target kind 'weights'"),
        ({"targets": ("weight", "scale")}, "needs fmt='int8'"),
        ({"include": ("nothing.*",)}, "empty fault space"),
        ({"targets": ()}, "empty fault space"),
    ],
)
def test_bad_construction_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message) as err:
        FaultInjector(tiny_model(), **kwargs)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("rate", [-0.1, 1.5, float("nan"), "high"])
def test_bad_rate(rate):
    inj = FaultInjector(tiny_model())
    clean = bits_of(inj.model)
    with pytest.raises(ValueError, match=r"rate=.*\[0, 1\]"):
        with inj.inject(rate, seed=0):
            pass
    assert same_bits(bits_of(inj.model), clean)
