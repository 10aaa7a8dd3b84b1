"""Bit-exactness of the number-format codecs (fitact_pipeline.codecs)."""

import pytest
import torch

from fitact_pipeline.faults.formats import FORMATS, FixedCodec, Float32Codec, Int8Codec, make_codec


def flip(codec, value: float, bit: int) -> float:
    words = codec.encode(torch.tensor([value], dtype=torch.float32))
    return float(codec.decode(words ^ (1 << bit))[0])


def as_bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(torch.int32)


def test_q15_16_known_values():
    c = FixedCodec(32, 16)
    assert flip(c, 0.5, 16) == 1.5
    assert flip(c, 0.5, 31) == 0.5 - 32768
    assert flip(c, 0.5, 0) == 0.5 + 2 ** -16
    assert flip(c, 0.5, 30) == 0.5 + 16384
    assert flip(c, -1.0, 16) == -2.0  # two's complement: -1 = ...1111 0000..., bit 16 set -> cleared
    # Words are unsigned two's complement, bit 31 the sign bit.
    assert int(c.encode(torch.tensor([-2 ** -16]))[0]) == 0xFFFFFFFF
    assert int(c.encode(torch.tensor([0.5]))[0]) == 0x8000


def test_fixed_rounding_and_saturation():
    c = FixedCodec(32, 16)
    step = 2 ** -16
    x = torch.tensor([0.3 * step, 0.7 * step, 1e6, -1e6, -32768.0], dtype=torch.float32)
    q = c.quantize(x)
    assert q[0] == 0.0 and q[1] == step
    # Saturation: the largest word is 32768 - 2^-16, which float32 rounds to 32768.0.
    assert int(c.encode(x[2:3])[0]) == 0x7FFFFFFF
    assert int(c.encode(x[3:4])[0]) == 0x80000000
    assert q[3] == -32768.0 and q[4] == -32768.0


def test_fixed_small_word():
    c = FixedCodec(8, 4)  # Q3.4: range [-8, 8), step 1/16
    assert flip(c, 1.0, 7) == 1.0 - 8.0
    assert flip(c, 1.0, 0) == 1.0 + 1 / 16
    assert float(c.quantize(torch.tensor([100.0]))[0]) == 8 - 1 / 16


def test_fixed_roundtrip_is_identity_on_quantised_values():
    # Includes |v| >= 256, where a Q15.16 word has more significant bits than float32: the
    # stored float32 must still be a fixed point of encode/decode (restore relies on it).
    gen = torch.Generator().manual_seed(0)
    x = torch.cat([torch.randn(10000, generator=gen) * s for s in (0.01, 1.0, 300.0, 9000.0)])
    c = FixedCodec()
    q = c.quantize(x)
    assert torch.equal(as_bits(c.decode(c.encode(q))), as_bits(q))
    inside = x.abs() < 32767
    assert (q - x)[inside].abs().max() <= 2 ** -17 + 32768 * 2 ** -24  # rounding + one float32 rounding
    over = x.abs() >= 32768
    assert over.any() and (q[over].abs() == 32768).all()  # saturated
    # A flip below float32's precision of a large value is absorbed; one above it is exact.
    assert flip(c, 300.0, 0) == 300.0
    assert flip(c, 300.0, 1) == 300.0 + 2 ** -15


def test_float32_known_values_and_roundtrip():
    c = Float32Codec()
    assert flip(c, 1.0, 30) == float("inf")
    assert flip(c, 1.0, 31) == -1.0
    assert flip(c, 1.0, 23) == 0.5
    x = torch.randn(1000)
    assert torch.equal(as_bits(c.decode(c.encode(x))), as_bits(x))


@pytest.mark.parametrize("fmt", ["float16", "bfloat16"])
def test_16bit_floats(fmt):
    c = make_codec(fmt)
    assert c.word_bits == 16
    assert flip(c, 1.0, 14) == float("inf")
    assert flip(c, 1.0, 15) == -1.0
    x = torch.randn(1000) * 10
    q = c.quantize(x)
    dtype = torch.float16 if fmt == "float16" else torch.bfloat16
    assert torch.equal(q, x.to(dtype).float())  # every stored value is exact in the 16-bit format
    assert torch.equal(as_bits(c.decode(c.encode(q))), as_bits(q))
    assert torch.isfinite(c.quantize(torch.tensor([1e39 if fmt == "bfloat16" else 1e6]))).all()


def test_int8_quantisation_and_flips():
    c = Int8Codec()
    w = torch.tensor([[1.0, -0.5, 0.25], [0.0, 0.0, 0.0], [2.0, 1.0, -2.0]])
    stored, scales = c.quantize_tensor(w)
    assert torch.allclose(scales, torch.tensor([1 / 127, 2 / 127, 2 / 127]))  # zero row borrows max
    per_elem = scales.repeat_interleave(3)
    words = c.encode_q(stored.reshape(-1), per_elem)
    assert words.tolist()[:3] == [127, (-64) & 0xFF, 32]
    assert torch.equal(c.decode_q(words, per_elem), stored.reshape(-1))
    # Flipping the sign bit of q=127 gives q=-1.
    flipped = c.decode_q(words[:1] ^ (1 << 7), per_elem[:1])
    assert float(flipped[0]) == float(scales[0] * -1.0)


@pytest.mark.parametrize("codec", [FixedCodec(32, 16), FixedCodec(8, 3), FixedCodec(20, 19), Float32Codec(),
                                   make_codec("float16"), make_codec("bfloat16")], ids=repr)
def test_numpy_flip_equals_decode_of_flipped_encode(codec):
    """The injector's CPU path (``flip`` in numpy) must be the torch codec's flip bit for bit:
    random and extreme stored values, every bit of the word, several bits at once."""
    gen = torch.Generator().manual_seed(codec.word_bits)
    values = codec.quantize(torch.cat([torch.randn(3000, generator=gen) * 100, torch.tensor([0.0, -0.0, 1e9, -1e9])]))
    masks = torch.randint(0, 1 << codec.word_bits, (values.numel(),), generator=gen)
    masks[: codec.word_bits] = 1 << torch.arange(codec.word_bits)
    expected = codec.decode(codec.encode(values) ^ masks)
    got = torch.from_numpy(codec.flip(values.numpy(), masks.numpy()))
    assert torch.equal(as_bits(got), as_bits(expected))


def test_unknown_format():
    with pytest.raises(ValueError, match="unknown fault format 'posit'"):
        make_codec("posit")
    assert set(FORMATS) == {"fixed", "float32", "float16", "bfloat16", "int8", "int4", "fp8_e4m3", "fp8_e5m2", "mxfp8",
                            "mxfp4"}
