"""The low-bit stored formats (faults/lowbit.py, int4 in formats.py) against their specifications:
OCP FP8 E4M3/E5M2 code by code, FP4 E2M1, the MX block scale, int4; and every memory fault model
and a campaign on each."""
import math

import pytest
import torch
from torch import nn

from fitact_pipeline import measure_resilience
from fitact_pipeline.faults import FORMATS, FaultInjector, FaultMap, make_codec
from fitact_pipeline.faults.lowbit import E8M0Codec, block_elements, block_of
from fitact_pipeline.faults.sampler import Bursts, StuckBits

NEW_FORMATS = ("fp8_e4m3", "fp8_e5m2", "int4", "mxfp8", "mxfp4")


def spec_value(code: int, exp_bits: int, man_bits: int, kind: str) -> float:
    """The value of an FP8 code by the OCP specification's formula (independent of torch)."""
    sign = -1.0 if code >> (exp_bits + man_bits) else 1.0
    e = (code >> man_bits) & ((1 << exp_bits) - 1)
    m = code & ((1 << man_bits) - 1)
    bias, top = (1 << (exp_bits - 1)) - 1, (1 << exp_bits) - 1
    if kind == "e4m3" and e == top and m == (1 << man_bits) - 1:
        return math.nan  # E4M3: only S.1111.111 is special (NaN); no infinities
    if kind == "e5m2" and e == top:
        return sign * math.inf if m == 0 else math.nan
    if e == 0:
        return sign * 2.0 ** (1 - bias) * m / (1 << man_bits)
    return sign * 2.0 ** (e - bias) * (1 + m / (1 << man_bits))


@pytest.mark.parametrize("fmt, exp_bits, man_bits, kind", [("fp8_e4m3", 4, 3, "e4m3"), ("fp8_e5m2", 5, 2, "e5m2")])
def test_every_fp8_code_decodes_per_spec_and_round_trips(fmt, exp_bits, man_bits, kind):
    codec = make_codec(fmt)
    codes = torch.arange(256, dtype=torch.int64)
    values = codec.decode(codes)
    for code, got in zip(codes.tolist(), values.tolist()):
        want = spec_value(code, exp_bits, man_bits, kind)
        if math.isnan(want):
            assert math.isnan(got), (fmt, hex(code))
        else:
            assert got == want and math.copysign(1, got) == math.copysign(1, want), (fmt, hex(code), got, want)
    finite = torch.isfinite(values)
    assert torch.equal(codec.encode(values[finite]), codes[finite])  # every finite code, -0 included
    assert int((~torch.isfinite(values) & ~torch.isinf(values)).sum()) == (2 if kind == "e4m3" else 6)


@pytest.mark.parametrize("fmt, value, code", [
    # saturation: beyond the largest finite (inf too) -> largest finite of that sign
    ("fp8_e4m3", 448.0, 0x7E), ("fp8_e4m3", 464.0, 0x7E), ("fp8_e4m3", 1e6, 0x7E), ("fp8_e4m3", math.inf, 0x7E),
    ("fp8_e4m3", -math.inf, 0xFE), ("fp8_e5m2", 57344.0, 0x7B), ("fp8_e5m2", 61440.0, 0x7B),
    ("fp8_e5m2", math.inf, 0x7B), ("fp8_e5m2", -1e9, 0xFB),
    # smallest subnormals, and ties to even below them
    ("fp8_e4m3", 2.0 ** -9, 0x01), ("fp8_e4m3", 2.0 ** -10, 0x00), ("fp8_e4m3", 1.5 * 2.0 ** -10, 0x01),
    ("fp8_e5m2", 2.0 ** -16, 0x01), ("fp8_e5m2", 2.0 ** -17, 0x00), ("fp8_e5m2", 3 * 2.0 ** -17, 0x02),
    # by hand: 1.0 = 1.0 x 2^0; -2.5 = -1.25 x 2^1; 0.1 = 1.6 x 2^-4 (mantissa 4.8 -> 5 eighths, 2.4 -> 2 quarters)
    ("fp8_e4m3", 1.0, 0x38), ("fp8_e5m2", 1.0, 0x3C), ("fp8_e4m3", -2.5, 0xC2), ("fp8_e5m2", -2.5, 0xC1),
    ("fp8_e4m3", 0.1, 0x1D), ("fp8_e5m2", 0.1, 0x2E), ("fp8_e4m3", -0.0, 0x80),
])
def test_fp8_encodings(fmt, value, code):
    assert make_codec(fmt).encode(torch.tensor([value])).item() == code


def test_fp8_quantize_is_decode_of_encode_and_nan_pattern():
    e4m3 = make_codec("fp8_e4m3")
    assert e4m3.quantize(torch.tensor([0.1, 1000.0])).tolist() == [0.1015625, 448.0]
    assert e4m3.decode(torch.tensor([0x7F, 0xFF])).isnan().all()  # S.1111.111
    assert e4m3.decode(torch.tensor([0x7E ^ 0x01])).isnan().all()  # a flip of 448's mantissa LSB: NaN
    assert make_codec("fp8_e5m2").decode(torch.tensor([0x7C, 0xFC])).tolist() == [math.inf, -math.inf]


def test_fp4_e2m1_all_codes_and_rounding():
    fp4 = make_codec("mxfp4").element
    table = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
    values = fp4.decode(torch.arange(16))
    assert values.tolist() == table + [-v for v in table]
    assert torch.equal(fp4.encode(values), torch.arange(16))  # -0.0 -> 0b1000
    ties = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 5.1, 7.0, math.inf, -0.3])
    assert fp4.decode(fp4.encode(ties)).tolist() == [0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, 6.0, -0.5]


def test_e8m0_scale_codes():
    e8m0 = E8M0Codec()
    assert e8m0.decode(torch.tensor([0, 127, 128, 254])).tolist() == [2.0 ** -127, 1.0, 2.0, 2.0 ** 127]
    assert e8m0.decode(torch.tensor([255])).isnan().all()
    assert e8m0.encode(torch.tensor([2.0 ** -127, 1.0, 0.5, 2.0 ** 127])).tolist() == [0, 127, 126, 254]


def block_model(values: torch.Tensor) -> nn.Module:
    layer = nn.Linear(values.shape[1], values.shape[0], bias=False)
    with torch.no_grad():
        layer.weight.copy_(values)
    return nn.Sequential(layer)


def hand_block() -> torch.Tensor:
    """Row 0: one block of 32 with max|v| = 3.0 (floor log2 = 1); row 1: max 3.9 (saturates)."""
    row0 = torch.zeros(32)
    row0[:4] = torch.tensor([3.0, 0.1, -1.0, 0.3])
    row1 = torch.zeros(32)
    row1[:2] = torch.tensor([3.9, -0.26])
    return torch.stack([row0, row1])


@pytest.mark.parametrize("fmt, code, stored0, stored1", [
    # mxfp8: shared_exp = 1 - 8 = -7, X = 2^-7 (E8M0 code 120): 3.0/X = 384 exact, 0.1/X = 12.8 -> 13,
    # 0.3/X = 38.4 -> 40 (E4M3 step 4 in [32, 64)); row 1: 3.9/X = 499.2 saturates to 448 -> 3.5,
    # -0.26/X = -33.28 -> -32
    ("mxfp8", 120, [3.0, 13 / 128, -1.0, 40 / 128], [3.5, -0.25]),
    # mxfp4: shared_exp = 1 - 2 = -1, X = 0.5 (code 126): 6 -> 3.0, 0.2 -> 0, -2 -> -1.0, 0.6 -> 0.5 -> 0.25;
    # row 1: 7.8 saturates to 6 -> 3.0, -0.52 -> -0.5 -> -0.25
    ("mxfp4", 126, [3.0, 0.0, -1.0, 0.25], [3.0, -0.25]),
])
def test_mx_block_scale_by_hand_and_a_scale_flip_scales_the_whole_block(fmt, code, stored0, stored1):
    model = block_model(hand_block())
    injector = FaultInjector(model, fmt=fmt, targets=("weight", "scale"))
    weight = model[0].weight.detach()
    assert weight[0, :4].tolist() == stored0 and weight[1, :2].tolist() == stored1
    slot = injector.space.slots[0]
    assert E8M0Codec().encode(slot.scales).tolist() == [code, code]
    clean = weight.clone()
    # bit 0 of an even code: X doubles for the 32 values of block 0 only; bit 1 of 120/126: X / 2 or x 4
    with injector.apply(FaultMap([("0.weight:scale", 0, 0)], injector.num_bits)):
        assert torch.equal(weight[0], 2 * clean[0]) and torch.equal(weight[1], clean[1])
    factor = 0.25 if code & 2 else 4.0
    with injector.apply(FaultMap([("0.weight:scale", 1, 1)], injector.num_bits)):
        assert torch.equal(weight[1], factor * clean[1]) and torch.equal(weight[0], clean[0])
    with injector.apply(FaultMap([("0.weight:scale", 0, 7)], injector.num_bits)):  # code + 128: X x 2^128
        assert torch.equal(weight[0], (clean[0].double() * 2.0 ** 128).float())  # 3.0 x 2^121 overflows: inf
    assert torch.equal(weight, clean)


def test_mx_blocks_follow_rows_and_the_last_block_is_short():
    # rows of 40: blocks [0, 32), [32, 40) per row; four scales for two rows
    assert block_of(torch.arange(80), 40, 32).tolist() == [0] * 32 + [1] * 8 + [2] * 32 + [3] * 8
    assert block_elements(torch.tensor([1, 2]), 40, 32).tolist() == list(range(32, 72))
    values = torch.linspace(-1, 1, 80).reshape(2, 40)
    values[0, 35] = 100.0  # only the second block of row 0 gets a large scale
    stored, scales = make_codec("mxfp8").quantize_tensor(values)
    # block maxima 1, 100, 0.797 (values 40..71 of the ramp), 1: floor(log2) - 8 = -8, -2, -9, -8
    assert scales.tolist() == [2.0 ** -8, 2.0 ** -2, 2.0 ** -9, 2.0 ** -8]
    assert stored[0, 35].item() == 96.0  # 100 / 0.25 = 400, halfway between E4M3's 384 and 416: even, 384
    assert torch.equal(make_codec("mxfp8").quantize_tensor(stored)[0], stored)  # storing twice changes nothing


def test_int4_range_scale_and_the_flip_to_minus_eight():
    model = block_model(torch.tensor([[3.5, -1.0, 0.26, 0.0], [0.7, 0.0, -0.7, 0.1]]))
    injector = FaultInjector(model, fmt="int4", targets=("weight", "scale"))
    weight = model[0].weight.detach()
    # scale = max|v| / 7: 0.5 (q = 7, -2, 1, 0) and 0.1 (q = 7, 0, -7, 1)
    assert injector.space.slots[0].scales.tolist() == pytest.approx([0.5, 0.1])
    assert weight[0].tolist() == [3.5, -1.0, 0.5, 0.0]
    codec = injector.codec
    q = codec.encode_q(weight.reshape(-1), injector.space.slots[0].scales.repeat_interleave(4))
    assert (q - 16 * (q >= 8)).tolist() == [7, -2, 1, 0, 7, 0, -7, 1]
    with injector.apply(FaultMap([("0.weight", 3, 3)], injector.num_bits)):  # q = 0 -> 0b1000 = -8
        assert weight[0, 3].item() == -4.0
    assert injector.fault_space["total_bits"] == 8 * 4 + 2 * 32
    codes = torch.arange(16)
    assert torch.equal(codec.encode_q(codec.decode_q(codes, torch.full((16,), 0.5)), torch.full((16,), 0.5)), codes)


def tiny_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 40), nn.ReLU(),
                         nn.Linear(40, 3))


def targets_of(fmt: str) -> tuple[str, ...]:
    return ("weight", "bias", "scale") if FORMATS[fmt].family == "scaled" else ("weight", "bias")


@pytest.mark.parametrize("fmt", NEW_FORMATS)
@pytest.mark.parametrize("sampler", [None, StuckBits("mix"), Bursts(2)], ids=["memory", "stuck_at", "burst"])
def test_every_memory_fault_model_flips_and_restores_bit_exactly(fmt, sampler, one_thread):
    model = tiny_model()
    injector = FaultInjector(model, fmt=fmt, targets=targets_of(fmt), sampler=sampler)
    clean = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        before = model(x)
        with injector.inject(0.05, seed=3, trial=1) as fmap:
            changed = any(not torch.equal(v, clean[k]) for k, v in model.state_dict().items())
            faulty = model(x)
    assert fmap.effective_flips > 0 and changed and not torch.equal(faulty, before)
    assert set(fmap.names) >= ({"0.weight:scale"} if "scale" in targets_of(fmt) else {"0.weight"})
    for k, v in model.state_dict().items():
        assert torch.equal(v.view(torch.int32), clean[k].view(torch.int32)), k


@pytest.mark.parametrize("fmt", NEW_FORMATS)
def test_a_campaign_runs_on_each_format_from_its_conf_file(fmt, one_thread):
    x = torch.randn(60, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    model = tiny_model().eval()
    y = model(x).argmax(1)
    result = measure_resilience(model, (x, y), rates=[1e-3, 0.05], trials=3, seed=1, faults=fmt)
    assert result.fault_space["format"] == fmt
    assert ("0.weight:scale" in [t["name"] for t in result.fault_space["tensors"]]) == fmt.startswith("mx")
    assert len(result.trials) == 6 and result.per_rate[0.05]["mean"] < result.clean_accuracy
    again = measure_resilience(model, (x, y), rates=[1e-3, 0.05], trials=3, seed=1, faults=fmt)
    assert [t["accuracy"] for t in again.trials] == [t["accuracy"] for t in result.trials]


@pytest.mark.parametrize("fmt", ["fp8_e4m3", "fp8_e5m2"])
def test_activation_faults_in_an_fp8_datapath(fmt, one_thread):
    x = torch.randn(30, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    model = tiny_model().eval()
    y = model(x).argmax(1)
    faults = {"model": "activation", "fmt": fmt, "word_bits": 8,
              "datapath": {"fmt": fmt, "word_bits": 8, "frac_bits": 0}}
    result = measure_resilience(model, (x, y), rates=[0.02], trials=2, seed=0, faults=faults)
    assert all(t["faults"] > 0 for t in result.trials) and result.per_rate[0.02]["mean"] < 1.0
