"""Weight-side protections (protect/weights.py): clamp-on-read to the clean weight range, and parity
in each stored word's LSB with a failing word read as zero (faults/parity.py)."""
import copy

import numpy as np
import pytest
import torch
from torch import nn

from fitact_pipeline.faults import FORMATS, FaultInjector, FaultMap
from fitact_pipeline.faults.lowbit import block_of
from fitact_pipeline.faults.multimap import stacked_fault_space
from fitact_pipeline.faults.parity import parity_of
from fitact_pipeline.protect import protect_model
from fitact_pipeline.protect.weights import (WEIGHT_PROTECTIONS, _read_weight, check_weight_protection_config,
                                             clamp_weights)
from fitact_pipeline.registry import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def net(folded_small_cnn):
    return protect_model(folded_small_cnn(), "none")


def _words_per_element(space, fmap) -> dict[int, int]:
    """{global element index: XOR mask of the bits the map flips in it}."""
    masks: dict[int, int] = {}
    for name, element, bit in fmap.records:
        glob = int(space.field_elem_offset[space.field_id[name]]) + element
        masks[glob] = masks.get(glob, 0) ^ (1 << bit)
    return masks


@pytest.mark.parametrize("fmt", ["fixed", "float32", "float16", "bfloat16", "fp8_e4m3", "fp8_e5m2"])
def test_parity_zero_zeroes_exactly_the_words_with_an_odd_number_of_flipped_bits(net, fmt):
    model = copy.deepcopy(net)
    injector = FaultInjector(model, fmt=fmt)
    inner = injector.space.codec
    WEIGHT_PROTECTIONS["parity_zero"].attach(injector, {})
    store = injector.space.store
    clean = store.clone()
    words = inner.encode_np(clean.numpy())
    stored = np.concatenate([np.arange(s.elem_offset, s.elem_offset + s.flat.numel()) for s in injector.space.slots])
    assert not parity_of(words[stored]).any()  # every stored word has even parity
    fmap = injector.sample(2e-2, seed=1, trial=0)  # dense enough that some words take 2 or 3 flips
    masks = _words_per_element(injector.space, fmap)
    odd = {g for g, m in masks.items() if bin(m).count("1") % 2}
    assert odd and len(odd) < len(masks)  # both cases occur
    with injector.inject(2e-2, seed=1, trial=0):
        faulty = store.clone()
    assert torch.equal(store, clean)  # restored bit for bit
    for g, mask in masks.items():
        want = 0.0 if g in odd else float(inner.decode_np(np.array([words[g] ^ mask]))[0])
        got = float(faulty[g])
        assert got == want or (np.isnan(got) and np.isnan(want)), (g, mask)
    untouched = torch.ones(store.numel(), dtype=torch.bool)
    untouched[list(masks)] = False
    assert torch.equal(faulty[untouched], clean[untouched])
    # several maps per pass decode through the same check
    rows, _ = stacked_fault_space(injector, 2e-2, 1, [0])
    for slot in injector.space.slots:
        row = rows[slot.name].reshape(-1)
        assert torch.equal(row.nan_to_num(7.0), faulty[slot.elem_offset:slot.elem_offset + row.numel()].nan_to_num(7.0))


@pytest.mark.parametrize("fmt", ["int8", "int4", "mxfp8", "mxfp4"])
def test_parity_zero_in_the_scaled_formats_zeroes_exactly_the_codes_with_an_odd_number_of_flips(fmt):
    """Flips constructed by hand in a 2 x 40 weight (MX: blocks [0, 32), [32, 40) per row): one,
    two, three and four flipped bits of four element codes; a code with an odd count reads 0, an
    even count passes as the flipped code. A scale carries no parity: its flip rescales its block."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(40, 2, bias=False))
    injector = FaultInjector(model, fmt=fmt, targets=["weight", "scale"])
    inner = injector.space.codec
    WEIGHT_PROTECTIONS["parity_zero"].attach(injector, {})
    slot, weight = injector.space.slots[0], model[0].weight.detach().reshape(-1)
    per_elem = slot.scales[block_of(torch.arange(80), slot.group, slot.block)]
    codes = inner.encode_q(weight, per_elem)
    assert torch.equal(inner.decode_q(codes, per_elem), weight)  # the stored values are codes of the format
    assert not parity_of(codes.numpy()).any()  # ... each with even parity
    top = inner.word_bits - 1
    flips = {3: [0], 17: [1, top], 45: [0, 1, 2], 70: [0, 1, 2, 3]}
    records = [("0.weight", e, b) for e, bits in flips.items() for b in bits]
    clean = weight.clone()
    with injector.apply(FaultMap(records, injector.num_bits)):
        faulty = weight.clone()
    assert torch.equal(weight, clean)
    for e, bits in flips.items():
        mask = sum(1 << b for b in bits)
        want = 0.0 if len(bits) % 2 else float(inner.decode_q(codes[e:e + 1] ^ mask, per_elem[e:e + 1])[0])
        assert float(faulty[e]) == want, (e, bits)
    untouched = torch.ones(80, dtype=torch.bool)
    untouched[list(flips)] = False
    assert torch.equal(faulty[untouched], clean[untouched])
    with injector.apply(FaultMap([("0.weight:scale", 1, inner.scale_bits - 1)], injector.num_bits)):
        block = block_of(torch.arange(80), slot.group, slot.block) == 1
        assert bool((weight[block] != clean[block]).any()) and torch.equal(weight[~block], clean[~block])
        assert int((weight[block] == 0).sum()) == int((clean[block] == 0).sum())  # no code zeroed


def test_parity_costs_at_most_the_lsb_step(net):
    model = copy.deepcopy(net)
    injector = FaultInjector(model, fmt="fixed", word_bits=32, frac_bits=16)
    before = injector.space.store.clone()
    WEIGHT_PROTECTIONS["parity_zero"].attach(injector, {})
    change = (injector.space.store - before).abs()
    assert float(change.max()) <= 2.0 ** -16 and bool((change > 0).any())


@pytest.mark.parametrize("granularity", ["tensor", "channel"])
def test_clamp_bounds_are_in_the_fault_space_and_paired(net, granularity):
    plain, clamped = copy.deepcopy(net), copy.deepcopy(net)
    added = clamp_weights(clamped, granularity)
    convs = [m for m in clamped.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert added == sum(2 * (m.out_channels if isinstance(m, nn.Conv2d) else m.out_features)
                        if granularity == "channel" else 2 for m in convs)
    a, b = FaultInjector(plain), FaultInjector(clamped)
    kinds = {t["name"]: t["kind"] for t in b.fault_space["tensors"]}
    bounds = [n for n in kinds if n.endswith((".weight_min", ".weight_max"))]
    assert len(bounds) == 2 * len(convs) and {kinds[n] for n in bounds} == {"bound"}
    hit = a_hits = 0
    for trial in range(5):
        fa, fb = a.sample(3e-3, 2, trial), b.sample(3e-3, 2, trial)
        hit += sum(v for k, v in fb.summary()["flips_per_tensor"].items() if k in bounds)
        shared = [r for r in fb.records if r[0] not in bounds]
        assert shared == fa.records  # the weights get the same bits with or without the clamp's bounds
        a_hits += len(fa.records)
    assert hit > 0 and a_hits > 0  # faults reach the bounds too


WORD_BITS = {"fixed": 32, "float32": 32, "float16": 16, "bfloat16": 16, "fp8_e4m3": 8, "fp8_e5m2": 8, "int8": 8,
             "int4": 4, "mxfp8": 8, "mxfp4": 4}


@pytest.mark.parametrize("fmt", list(WORD_BITS))
def test_clamp_in_every_format(net, fmt):
    """The bounds are stored words of the format (in the fault space, kind ``bound``, the format's
    width), they enclose the stored weights (no clean weight is clipped, though int8/int4/MX round
    some weights past their float range), and a fault in one is what the layer clamps with."""
    assert set(FORMATS) == set(WORD_BITS)
    for granularity in ("tensor", "channel"):
        model = copy.deepcopy(net)
        clamp_weights(model, granularity)
        injector = FaultInjector(model, fmt=fmt)
        WEIGHT_PROTECTIONS["clamp"].attach(injector, {})
        bounds = [t for t in injector.fault_space["tensors"] if t["name"].endswith((".weight_min", ".weight_max"))]
        clamped = [(n, m) for n, m in model.named_modules() if hasattr(m, "weight_min")]
        assert len(bounds) == 2 * len(clamped) and {(t["kind"], t["word_bits"]) for t in bounds} == {("bound",
                                                                                                        WORD_BITS[fmt])}
        for _, module in clamped:
            assert torch.equal(_read_weight(module), module.weight)
            stored = module.weight_max.detach().clone()
            assert torch.equal(injector.space.codec.quantize_tensor(stored)[0] if FORMATS[fmt].family == "scaled"
                               else injector.space.codec.quantize(stored), stored)  # a value of the format
    name, module = clamped[0]
    top = WORD_BITS[fmt] - 1  # the sign bit (two's complement: the most negative code) of the first weight_max
    with injector.apply(FaultMap([(f"{name}.weight_max", 0, top)], injector.num_bits)):
        assert float(module.weight_max.reshape(-1)[0]) < 0
        row = _read_weight(module)[0]
        assert torch.equal(row, torch.clamp(module.weight[0], max=module.weight_max[0]))
        assert not torch.equal(row, module.weight[0])
    assert torch.equal(_read_weight(module), module.weight)


def test_clamp_clamps_on_read_and_reads_nan_as_zero():
    torch.manual_seed(0)
    layer = nn.Linear(4, 3)
    ref = copy.deepcopy(layer)
    clamp_weights(layer, "channel")
    x = torch.randn(5, 4)
    assert torch.equal(layer(x), ref(x))  # the clean weights are inside their own range
    with torch.no_grad():
        layer.weight[1, 2] = 1e4
        layer.weight[0, 0] = float("nan")
        ref.weight[1, 2] = ref.weight[1].max()
        ref.weight[0, 0] = 0.0
    assert torch.equal(layer(x), ref(x))
    assert float(layer.weight[1, 2]) == 1e4  # the stored value is untouched: the clamp is on read


def test_bad_weight_protection_values():
    check_weight_protection_config({"name": "clamp", "granularity": "channel"})
    with pytest.raises(ConfigError, match="weight_protection.name='parity' is not allowed; choose one of: none, "
                                          "clamp, parity_zero"):
        check_weight_protection_config({"name": "parity"})
    with pytest.raises(ConfigError, match="weight_protection.granularity='neuron' is not allowed"):
        check_weight_protection_config({"name": "clamp", "granularity": "neuron"})
    for fmt in FORMATS:  # parity in every stored format
        check_weight_protection_config({"name": "parity_zero"}, {"model": "memory", "fmt": fmt})
    with pytest.raises(ConfigError, match="^weight_protection=parity_zero needs stored-parameter faults; got "
                                          "faults.model='activation' \\(allowed: memory, stuck_at, burst\\)$"):
        check_weight_protection_config({"name": "parity_zero"}, {"model": "activation", "fmt": "int8"})


def test_every_weight_protection_has_its_config_file_and_the_job_key_holds_it():
    from omegaconf import OmegaConf

    from test_keys import CONF, keys

    for name, entry in WEIGHT_PROTECTIONS.items():
        cfg = OmegaConf.to_container(OmegaConf.load(CONF / "weight_protection" / f"{name}.yaml"))
        assert cfg["name"] == name and set(cfg) == {"name", *entry.config_keys}
    plain = keys()
    assert keys("weight_protection=none") == plain  # the default changes no existing key
    clamp, parity = keys("weight_protection=clamp"), keys("weight_protection=parity_zero")
    assert clamp["bounds"] == plain["bounds"] and len({clamp["job"], parity["job"], plain["job"]}) == 3
    assert keys("weight_protection=clamp", "weight_protection.granularity=channel")["job"] != clamp["job"]


def test_measure_resilience_takes_a_weight_protection(net):
    from fitact_pipeline import measure_resilience

    torch.manual_seed(3)
    images, labels = torch.randn(40, 1, 8, 8), torch.randint(0, 10, (40,))
    results = {w: measure_resilience(net, (images, labels), rates=[1e-3], trials=3, seed=1, weight_protection=w)
               for w in ("none", "clamp", "parity_zero")}
    assert any(t["name"].endswith("weight_min") for t in results["clamp"].fault_space["tensors"])
    assert "parity" in results["parity_zero"].fault_space and "parity" not in results["none"].fault_space
    assert [t["accuracy"] for t in results["none"].trials] != [t["accuracy"] for t in results["parity_zero"].trials]
    with pytest.raises(ConfigError, match="weight_protection.name='x' is not allowed"):
        measure_resilience(net, (images, labels), rates=[1e-3], weight_protection="x")


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "mxfp8"])
def test_parity_never_stores_a_special_code(fmt):
    """E4M3's -448 is 0xFE: bits 1-7 all ones, so its parity bit would make it 0xFF, the NaN code.
    It is stored as -384 (0xFC, even) instead; +448 (0x7E, even) stays. In MX, where every block's
    largest element sits in [256, 448], this decided between a model and a NaN model."""
    model = nn.Sequential(nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[448.0, -448.0, -416.0, 1.0]]))
    injector = FaultInjector(model, fmt=fmt, targets=["weight"])
    before = model[0].weight.detach().clone()
    WEIGHT_PROTECTIONS["parity_zero"].attach(injector, {})
    after = model[0].weight.detach()
    assert bool(torch.isfinite(after).all())
    assert torch.equal(after[0, :3], before[0, :3] * torch.tensor([1.0, 384 / 448, 384 / 416]))
