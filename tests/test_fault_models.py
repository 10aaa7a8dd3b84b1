"""The fault models beyond memory flips (DESIGN.md §2.6): stuck_at, burst, activation, and the
saturating datapath. Counts and positions are checked against an independent re-implementation of
each definition written here, and statistically; semantics per bit; exact restore; pairing; replay."""
import copy
import math

import numpy as np
import pytest
import torch
from scipy import stats
from torch import nn

from fitact_pipeline.evaluate import evaluate_accuracy
from fitact_pipeline.faults import ActivationInjector, FaultInjector, FaultMap, apply_datapath
from fitact_pipeline.faults.formats import make_codec
from fitact_pipeline.faults.sampler import Bursts, StuckBits

GAMMA, M1, M2 = 0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9, 0x94D049BB133111EB
MASK64 = 2**64 - 1


def mix(z: int) -> int:
    """splitmix64's output function, in plain Python integers (independent of the numpy code)."""
    z = ((z ^ (z >> 30)) * M1) & MASK64
    z = ((z ^ (z >> 27)) * M2) & MASK64
    return z ^ (z >> 31)


def blake(text: str) -> int:
    import hashlib

    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def stream_key(name_hash: int, seed: int, trial: int) -> int:
    return mix(name_hash ^ blake(f"{seed}\x1f{trial}"))


def uniform(key: int, j: int) -> float:
    return ((mix((key + j * GAMMA) & MASK64) >> 11) + 0.5) * 2.0**-53


def gap_positions(key: int, n: int, rate: float) -> list[int]:
    """The definition, one draw at a time: geometric gaps floor(log U / log(1 - rate)) between hits."""
    out, pos, j = [], -1, 0
    while True:
        j += 1
        pos += math.floor(min(math.log(uniform(key, j)) / math.log1p(-rate), n)) + 1
        if pos >= n:
            return out
        out.append(pos)


def tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(4 * 6 * 6, 10)).eval()


def state_bits(model: nn.Module) -> dict:
    return {k: v.detach().clone().view(torch.int32) for k, v in model.state_dict().items()}


# --- stuck_at -------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [0, 1, "mix"])
def test_stuck_positions_and_values_equal_the_definition(value):
    inj = FaultInjector(tiny_model(), sampler=StuckBits(value))
    fields = inj.space.fields
    for trial in range(3):
        fmap = inj.sample(3e-3, seed=4, trial=trial)
        for t, field in enumerate(fields):
            salted_hash = blake(field.name) ^ blake("stuck_at")
            key = stream_key(salted_hash, 4, trial)
            expected = gap_positions(key, field.numel * field.bits, 3e-3)
            sel = (fmap.field_idx == t).numpy()
            got = (fmap.elements.numpy()[sel] * field.bits + fmap.bits.numpy()[sel]).tolist()
            assert got == expected
            if value == "mix":
                vkey = stream_key(salted_hash ^ blake("value"), 4, trial)
                assert fmap.values.numpy()[sel].tolist() == [int(uniform(vkey, j + 1) < 0.5) for j in range(len(got))]
            else:
                assert set(fmap.values.numpy()[sel].tolist()) <= {value}


def test_stuck_counts_are_binomial_and_positions_uniform():
    inj = FaultInjector(tiny_model(), sampler=StuckBits("mix"))
    n, rate = inj.num_bits, 2e-3
    counts, per_bit, ones = [], np.zeros(32), 0
    for trial in range(400):
        fmap = inj.sample(rate, seed=1, trial=trial)
        counts.append(len(fmap))
        per_bit += np.bincount(fmap.bits.numpy(), minlength=32)
        ones += int(fmap.values.sum())
        keys = fmap.field_idx * 10**9 + fmap.elements * 32 + fmap.bits
        assert keys.unique().numel() == len(fmap)  # distinct
    assert abs(np.mean(counts) - n * rate) < 4 * math.sqrt(n * rate * (1 - rate) / 400)
    assert np.var(counts, ddof=1) == pytest.approx(n * rate * (1 - rate), rel=0.25)
    assert stats.chisquare(per_bit).pvalue > 1e-3  # every bit position alike
    assert stats.binomtest(ones, int(per_bit.sum())).pvalue > 1e-3  # mix: half stuck at 1


@pytest.mark.parametrize("fmt", ["fixed", "float32", "bfloat16"])
def test_a_stuck_bit_holds_its_value_and_only_differing_bits_count_as_flips(fmt):
    """Per stored word: every stuck bit reads its stuck value, every other bit is unchanged, and
    the flips counted are the stuck bits that held the other value (the rest are ineffective)."""
    model = tiny_model()
    inj = FaultInjector(model, fmt=fmt, targets=("weight", "bias"), sampler=StuckBits("mix"))
    codec, params = make_codec(fmt), dict(model.named_parameters())
    fmap = inj.sample(5e-3, seed=0, trial=0)
    words: dict[tuple, list] = {}
    for name, element, bit, value in fmap.records:
        words.setdefault((name, element), []).append((bit, value))
    before = {k: params[k[0]].detach().view(-1)[k[1]:k[1] + 1].clone() for k in words}
    clean = state_bits(model)
    with inj.apply(fmap) as applied:
        differing = 0
        for (name, element), stuck in words.items():
            word = int(codec.encode(before[(name, element)])[0])
            expected = word
            for bit, value in stuck:
                expected = (expected & ~(1 << bit)) | (value << bit)
            differing += bin(word ^ expected).count("1")
            after = params[name].detach().view(-1)[element:element + 1]
            assert torch.equal(after, codec.decode(torch.tensor([expected]))), (name, element)
        assert applied.effective_flips == differing and 0 < differing < len(fmap)
    summary = fmap.summary()
    assert summary["num_flips"] == len(fmap) and summary["effective_flips"] == differing
    assert all(torch.equal(v, clean[k]) for k, v in state_bits(model).items())  # bit-exact restore


def test_int8_stuck_bits_restore_and_count(tmp_path):
    model = tiny_model()
    inj = FaultInjector(model, fmt="int8", targets=("weight", "bias", "scale"), sampler=StuckBits(0))
    clean = state_bits(model)
    with inj.inject(1e-2, seed=0, trial=0) as fmap:
        assert 0 < fmap.effective_flips < len(fmap)  # some bits already held 0
    assert all(torch.equal(v, clean[k]) for k, v in state_bits(model).items())


# --- burst ----------------------------------------------------------------------------------------

def test_bursts_are_adjacent_bits_in_drawn_words_per_the_definition():
    length, rate = 3, 2e-2
    inj = FaultInjector(tiny_model(), sampler=Bursts(length))
    fmap = inj.sample(rate, seed=2, trial=1)
    for t, field in enumerate(inj.space.fields):
        salted_hash = blake(field.name) ^ blake("burst")
        words = gap_positions(stream_key(salted_hash, 2, 1), field.numel, rate)
        skey = stream_key(salted_hash ^ blake("start"), 2, 1)
        starts = [math.floor(uniform(skey, j + 1) * (field.bits - length + 1)) for j in range(len(words))]
        expected = [(w, s + i) for w, s in zip(words, starts) for i in range(length)]
        sel = (fmap.field_idx == t).numpy()
        assert list(zip(fmap.elements.numpy()[sel].tolist(), fmap.bits.numpy()[sel].tolist())) == expected
    assert fmap.realised_ber == pytest.approx(len(fmap) / length / inj.space.field_numel.sum().item())


def test_burst_word_counts_are_binomial_over_words():
    inj = FaultInjector(tiny_model(), sampler=Bursts(2))
    words, rate = int(inj.space.field_numel.sum()), 1e-2
    counts = [len(inj.sample(rate, seed=0, trial=t)) // 2 for t in range(300)]
    assert abs(np.mean(counts) - words * rate) < 4 * math.sqrt(words * rate / 300)


@pytest.mark.parametrize("sampler", [StuckBits(1), Bursts(4)], ids=["stuck_at", "burst"])
@pytest.mark.parametrize("fmt", ["fixed", "float32", "bfloat16", "int8"])
def test_every_memory_type_trial_restores_bit_exactly(sampler, fmt):
    model = tiny_model()
    targets = ("weight", "bias", "scale") if fmt == "int8" else ("weight", "bias")
    inj = FaultInjector(model, fmt=fmt, targets=targets, sampler=sampler)
    clean = state_bits(model)
    for trial in range(5):
        with inj.inject(1e-2, seed=3, trial=trial) as fmap:
            assert fmap.effective_flips > 0
            assert not all(torch.equal(v, clean[k]) for k, v in state_bits(model).items())
        assert all(torch.equal(v, clean[k]) for k, v in state_bits(model).items())


@pytest.mark.parametrize("sampler", [StuckBits("mix"), Bursts(2)], ids=["stuck_at", "burst"])
def test_memory_type_faults_pair_across_protections_and_replay(sampler, tmp_path):
    from fitact_pipeline.protect import profile_activations, protect_model

    plain = tiny_model()
    protected = protect_model(copy.deepcopy(plain), "fitact", profile=profile_activations(plain, torch.randn(4, 3, 8, 8)))
    a = FaultInjector(plain, sampler=sampler).sample(1e-2, seed=5, trial=2)
    b = FaultInjector(protected, sampler=sampler).sample(1e-2, seed=5, trial=2)
    shared = {r for r in b.records if not r[0].endswith(".bound")}
    assert set(a.records) == shared and shared
    path = tmp_path / "map.json"
    a.save(path)
    loaded = FaultMap.load(path)
    assert loaded.records == a.records and loaded.fault_model == sampler.fault_model
    inj = FaultInjector(tiny_model(), sampler=sampler)
    with inj.apply(loaded) as replayed:
        assert replayed.effective_flips > 0


# --- activation -----------------------------------------------------------------------------------

def site_outputs(model: nn.Module, x: torch.Tensor) -> dict[str, torch.Tensor]:
    out, handles = {}, []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            handles.append(m.register_forward_hook(lambda mod, i, o, name=name: out.__setitem__(name, o.detach().clone())))
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return out


def test_activation_faults_equal_the_definition_per_image_site_and_pass():
    model = tiny_model()
    inj = ActivationInjector(model)
    x = torch.randn(5, 3, 8, 8)
    with inj.inject(1e-3, seed=7, trial=2) as trial:
        inj.begin_batch(np.arange(10, 15))  # the pass runs evaluation images 10..14
        with torch.no_grad():
            model(x)
    fmap = trial.fault_map()
    sizes = {n: o[0].numel() for n, o in site_outputs(model, x).items()}
    for s, site in enumerate(inj.names):
        for image in range(10, 15):
            h = blake(site) ^ mix(((image * GAMMA) + 0x632BE59BD9B4E019) & MASK64)
            expected = gap_positions(stream_key(h, 7, 2), sizes[site] * 32, 1e-3)
            sel = ((fmap.field_idx == s) & (fmap.images == image)).numpy()
            got = (fmap.elements.numpy()[sel] * 32 + fmap.bits.numpy()[sel]).tolist()
            assert got == expected, (site, image)


def test_activation_faults_do_not_depend_on_the_batch_size():
    model = tiny_model()
    images, labels = torch.randn(21, 3, 8, 8), torch.randint(0, 10, (21,))
    maps = []
    for batch in (4, 21):
        inj = ActivationInjector(model)
        with inj.inject(2e-3, seed=1, trial=0) as trial:
            evaluate_accuracy(model, images, labels, batch, inj.begin_batch)
        maps.append(sorted(trial.fault_map().records))
    assert maps[0] == maps[1] and len(maps[0]) > 0


def test_activation_counts_are_binomial_per_pass_with_uniform_bits():
    model = tiny_model()
    inj = ActivationInjector(model)
    x = torch.randn(8, 3, 8, 8)
    bits_per_pass = sum(o.numel() for o in site_outputs(model, x).values()) * 32
    counts, per_bit = [], np.zeros(32)
    for trial in range(300):
        with inj.inject(1e-3, seed=0, trial=trial) as t:
            with torch.no_grad():
                model(x)
        fmap = t.fault_map()
        assert fmap.num_bits == bits_per_pass
        counts.append(len(fmap))
        per_bit += np.bincount(fmap.bits.numpy(), minlength=32)
        keys = (fmap.field_idx * 100 + fmap.images) * 10**6 + fmap.elements * 32 + fmap.bits
        assert keys.unique().numel() == len(fmap)
    lam = bits_per_pass * 1e-3
    assert abs(np.mean(counts) - lam) < 4 * math.sqrt(lam / 300)
    assert np.var(counts, ddof=1) == pytest.approx(lam, rel=0.25)
    assert stats.chisquare(per_bit).pvalue > 1e-3


def test_activation_faults_change_only_where_injected_and_nothing_upstream():
    model = tiny_model()
    x = torch.randn(3, 3, 8, 8)
    clean = site_outputs(model, x)
    inj = ActivationInjector(model, sites=["2"])  # the second convolution only
    with inj.inject(5e-3, seed=0, trial=0) as trial:
        faulty = site_outputs(model, x)
    fmap = trial.fault_map()
    assert torch.equal(faulty["0"], clean["0"])  # upstream: untouched
    changed = (faulty["2"] != clean["2"]) & ~(torch.isnan(faulty["2"]) & torch.isnan(clean["2"]))
    hit = torch.zeros_like(changed)
    hit.view(3, -1)[fmap.images, fmap.elements] = True
    assert bool((changed <= hit).all()) and int(changed.sum()) > 0
    expected = clean["2"].clone()
    codec = make_codec("float32")
    for image, element, bit in zip(fmap.images.tolist(), fmap.elements.tolist(), fmap.bits.tolist()):
        flat = expected.view(3, -1)
        flat[image, element] = codec.decode(codec.encode(flat[image, element:element + 1]) ^ (1 << bit))[0]
    assert torch.equal(faulty["2"].nan_to_num(1234.5), expected.nan_to_num(1234.5))


def test_activation_faults_pair_across_protections_and_replay(tmp_path):
    from fitact_pipeline.protect import profile_activations, protect_model

    plain = tiny_model()
    images, labels = torch.randn(12, 3, 8, 8), torch.randint(0, 10, (12,))
    protected = protect_model(copy.deepcopy(plain), "clipact", profile=profile_activations(plain, images))
    maps, accs = [], []
    for model in (plain, protected):
        inj = ActivationInjector(model)
        with inj.inject(3e-3, seed=2, trial=1) as trial:
            accs.append(evaluate_accuracy(model, images, labels, 5, inj.begin_batch))
        maps.append(trial.fault_map())
    assert maps[0].records == maps[1].records  # same (site, image, element, bit)
    maps[1].save(tmp_path / "act.json")
    inj = ActivationInjector(protected)
    with inj.apply(FaultMap.load(tmp_path / "act.json")) as replay:
        assert evaluate_accuracy(protected, images, labels, 5, inj.begin_batch) == accs[1]
    assert replay.fault_map().records == maps[1].records


def test_a_fixed_point_datapath_saturates_every_activation():
    model = tiny_model()
    with torch.no_grad():
        model[0].weight.mul_(1e20)  # float32 overflows to inf by the second layer
        model[2].weight.mul_(1e20)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert not torch.isfinite(model(x)).all()
    handles = apply_datapath(model, {"fmt": "fixed", "word_bits": 32, "frac_bits": 16})
    outputs = site_outputs(model, x)
    with torch.no_grad():
        logits = model(x)
    for out in list(outputs.values()) + [logits]:
        assert torch.isfinite(out).all() and out.max() <= 32768 and out.min() >= -32768
    assert outputs["0"].abs().max() == pytest.approx(32768, abs=1)  # saturated, not wrapped
    grid = outputs["2"] * 2**16
    assert torch.equal(grid, grid.round())  # on the Q15.16 grid
    for h in handles:
        h.remove()
    assert apply_datapath(model, {"fmt": "float32"}) == []


@pytest.mark.parametrize("word_bits, frac_bits", [(32, 16), (16, 8), (24, 10)])
def test_the_float32_datapath_rounding_equals_the_codec(word_bits, frac_bits):
    from fitact_pipeline.faults.datapath import fixed_point_rounding

    codec = make_codec("fixed", word_bits, frac_bits)
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(20000, generator=gen) * 10.0 ** torch.randint(-6, 9, (20000,), generator=gen),
                   torch.tensor([0.5 / 2**frac_bits, 1.5 / 2**frac_bits, 2.5 / 2**frac_bits, -0.5 / 2**frac_bits,
                                 3.4e38, -3.4e38, 2.0 ** (word_bits - 1 - frac_bits), 1e-30])])
    assert torch.equal(fixed_point_rounding(codec)(x.clone()).view(torch.int32), codec.quantize(x).view(torch.int32))
