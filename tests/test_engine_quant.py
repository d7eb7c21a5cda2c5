"""Q8_0 and fp16 conversions: bit-exact with gguf.quants / numpy."""
import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

from engine.quant import dequantize_q8_0, f16_to_f32, f32_to_f16, quantize_q8_0


def _edge_rows():
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((48, 256)) * rng.uniform(1e-4, 1e3, (48, 1))).astype(np.float32)
    x[0] = 0.0                                   # d == 0 -> id == 0
    x[1, :32] = 1e-7                             # subnormal fp16 scale
    x[2, :32] = np.linspace(-1, 1, 32)           # exact .5 ties after scaling
    x[3, :32] = 127.0 * np.arange(32) / 31 - 63  # many half-way points
    x[4, 7] = 8e6                                # scale beyond fp16 range -> inf handling
    x[5] = -x[5]
    return x


@pytest.mark.parametrize("reps", [1, 8])  # 48 rows serial, 384 rows through prange
def test_quantize_q8_0_bit_exact_with_gguf(reps):
    x = np.tile(_edge_rows(), (reps, 1))
    ours = quantize_q8_0(x)
    ref = quants.quantize(x, T.Q8_0)
    assert ours.shape == ref.shape
    assert np.array_equal(ours, ref)


def test_dequantize_q8_0_matches_gguf():
    q = quants.quantize(_edge_rows(), T.Q8_0)
    assert np.array_equal(dequantize_q8_0(q), quants.dequantize(q, T.Q8_0), equal_nan=True)


def test_quantize_rejects_partial_blocks():
    with pytest.raises(ValueError, match="multiple of 32"):
        quantize_q8_0(np.zeros((2, 40), np.float32))


def test_f32_to_f16_round_to_nearest_even_like_numpy():
    rng = np.random.default_rng(1)
    parts = [rng.standard_normal(4000).astype(np.float32) * s for s in (1e-8, 1e-6, 1e-3, 1, 300, 6e4)]
    special = np.array([0.0, -0.0, np.inf, -np.inf, 65504, 65519, 65520, 6e-8, 2.98e-8, 5.96e-8], np.float32)
    v = np.concatenate(parts + [special])[None, :]
    with np.errstate(over="ignore"):
        ref = v.astype(np.float16).view(np.uint16)
    assert np.array_equal(f32_to_f16(v), ref)


def test_f16_to_f32_all_65536_patterns():
    h = np.arange(65536, dtype=np.uint16)[None, :]
    ours = f16_to_f32(h)
    ref = h.view(np.float16).astype(np.float32)
    finite = ~np.isnan(ref)
    assert np.array_equal(ours[finite].view(np.uint32), ref[finite].view(np.uint32))
    assert np.isnan(ours[~finite]).all()
