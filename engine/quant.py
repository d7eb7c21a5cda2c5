"""Q8_0 and fp16 conversions as numba kernels.

Q8_0 block (ggml / gguf): fp16 scale ``d`` then 32 int8 quants, value = d*q;
34 bytes, taken from ``gguf.GGML_QUANT_SIZES`` (``engine.layout``). The quantizer is bit-exact with
``gguf.quants.quantize(x, Q8_0)`` (float32 math: d = amax/127, id = 1/d,
q = roundf(x*id) rounding half away from zero, d stored as fp16 RNE).

numba has no float16 arrays, so fp16 data is kept as raw uint16 bits (or as the
two bytes inside a Q8_0 block) and converted with exact integer code.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from engine._numba import NJIT, PARALLEL
from engine._simd import f32_bits, f32_from_bits
from engine.layout import Q8_0_BYTES, Q8_0_SCALE_BYTES, QK8_0


@njit(inline="always", **NJIT)
def f32_to_f16_bits(x):
    """fp16 bits (as int64) of float32 x, round-to-nearest-even like numpy."""
    u = np.int64(f32_bits(np.float32(x)))
    sign = (u >> 16) & 0x8000
    exp = (u >> 23) & 0xFF
    mant = u & 0x7FFFFF
    if exp == 0xFF:
        return sign | 0x7C00 | (0x200 if mant != 0 else 0)
    e = exp - 112  # rebias 127 -> 15
    if e >= 31:
        return sign | 0x7C00
    if e <= 0:
        if e < -10:
            return sign
        mant = mant | 0x800000
        shift = 14 - e
        half = mant >> shift
        rem = mant & ((np.int64(1) << shift) - 1)
        halfway = np.int64(1) << (shift - 1)
        if rem > halfway or (rem == halfway and (half & 1) == 1):
            half += 1
        return sign | half
    half = (e << 10) | (mant >> 13)
    rem = mant & 0x1FFF
    if rem > 0x1000 or (rem == 0x1000 and (half & 1) == 1):
        half += 1  # a carry into the exponent is the correct rounding (up to inf)
    return sign | half


@njit(inline="always", **NJIT)
def f16_bits_to_f32(h):
    """float32 value of fp16 bits h (any int type)."""
    h = np.int64(h)
    sign = (h & 0x8000) << 16
    exp = (h >> 10) & 0x1F
    mant = h & 0x3FF
    if exp == 0:
        if mant == 0:
            bits = sign
        else:
            e = np.int64(113)
            while (mant & 0x400) == 0:
                mant <<= 1
                e -= 1
            bits = sign | (e << 23) | ((mant & 0x3FF) << 13)
    elif exp == 31:
        bits = sign | 0x7F800000 | (mant << 13)
    else:
        bits = sign | ((exp + 112) << 23) | (mant << 13)
    return f32_from_bits(np.uint32(bits))


@njit(inline="always", **NJIT)
def _roundf(v):
    # ggml's roundf: half away from zero, in float32, as gguf's np_roundf.
    a = abs(v)
    fl = np.floor(a)
    b = fl + np.floor(np.float32(2.0) * (a - fl))
    return -b if v < 0 else b


@njit(**NJIT)
def quantize_row_q8_0(x, out, out_off):
    """Q8_0 of one row x (n,) f32, n % 32 == 0, into the flat u8 out at byte out_off."""
    nb = x.shape[0] // QK8_0
    for b in range(nb):
        amax = np.float32(0.0)
        for i in range(QK8_0):
            a = abs(x[b * QK8_0 + i])
            if a > amax:
                amax = a
        d = amax / np.float32(127.0)
        idv = np.float32(0.0) if d == 0 else np.float32(1.0) / d
        o = out_off + b * Q8_0_BYTES
        hb = f32_to_f16_bits(d)
        out[o] = hb & 0xFF
        out[o + 1] = (hb >> 8) & 0xFF
        for i in range(QK8_0):
            q = np.int64(_roundf(x[b * QK8_0 + i] * idv))
            out[o + Q8_0_SCALE_BYTES + i] = q & 0xFF


@njit(**PARALLEL)
def _quantize_rows_q8_0(x, out):
    # x: (n_rows, n) f32; out: (n_rows, n/32*34) u8
    for r in prange(x.shape[0]):
        quantize_row_q8_0(x[r], out[r], 0)


@njit(**NJIT)
def _quantize_rows_q8_0_serial(x, out):
    # small batches (TG): a parallel launch would cost more than the work
    for r in range(x.shape[0]):
        quantize_row_q8_0(x[r], out[r], 0)


@njit(**PARALLEL)
def _quantize_pair_par(a, a_out, b, b_out):
    # two row sets with the same row count (K and V of one batch) in one launch
    for r in prange(a.shape[0]):
        quantize_row_q8_0(a[r], a_out[r], 0)
        quantize_row_q8_0(b[r], b_out[r], 0)


@njit(**NJIT)
def _quantize_pair_serial(a, a_out, b, b_out):
    for r in range(a.shape[0]):
        quantize_row_q8_0(a[r], a_out[r], 0)
        quantize_row_q8_0(b[r], b_out[r], 0)


@njit(**PARALLEL)
def _dequantize_rows_q8_0(q, out):
    # q: (n_rows, nb*34) u8; out: (n_rows, nb*32) f32
    nb = q.shape[1] // Q8_0_BYTES
    for r in prange(q.shape[0]):
        for b in range(nb):
            o = b * Q8_0_BYTES
            d = f16_bits_to_f32(np.int64(q[r, o]) | (np.int64(q[r, o + 1]) << 8))
            for i in range(QK8_0):
                v = np.int64(q[r, o + Q8_0_SCALE_BYTES + i])
                if v > 127:
                    v -= 256
                out[r, b * QK8_0 + i] = d * np.float32(v)


@njit(**PARALLEL)
def _f32_to_f16_rows(x, out):
    # x: (n_rows, n) f32; out: (n_rows, n) u16
    for r in prange(x.shape[0]):
        for i in range(x.shape[1]):
            out[r, i] = f32_to_f16_bits(x[r, i])


@njit(**PARALLEL)
def _f16_to_f32_rows(h, out):
    # h: (n_rows, n) u16; out: (n_rows, n) f32
    for r in prange(h.shape[0]):
        for i in range(h.shape[1]):
            out[r, i] = f16_bits_to_f32(h[r, i])


def _check_2d(name: str, a: np.ndarray, dtype) -> None:
    if a.ndim != 2 or a.dtype != dtype or not a.flags.c_contiguous:
        raise ValueError(f"{name}: expected a C-contiguous 2-D {np.dtype(dtype)} array, "
                         f"got {a.dtype} {a.shape}")


def quantize_q8_0(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(n_rows, n) f32 -> (n_rows, n/32*34) u8 Q8_0 blocks, bit-exact with gguf."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if x.ndim == 1:
        x = x[None, :]
    _check_2d("x", x, np.float32)
    if x.shape[1] % QK8_0:
        raise ValueError(f"row length {x.shape[1]} is not a multiple of {QK8_0}")
    shape = (x.shape[0], x.shape[1] // QK8_0 * Q8_0_BYTES)
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    elif out.shape != shape or out.dtype != np.uint8:
        raise ValueError(f"out: expected uint8 {shape}, got {out.dtype} {out.shape}")
    (_quantize_rows_q8_0_serial if x.size < 65536 else _quantize_rows_q8_0)(x, out)
    return out


def quantize_q8_0_pair(a: np.ndarray, a_out: np.ndarray, b: np.ndarray, b_out: np.ndarray) -> None:
    """quantize_q8_0(a, a_out) and quantize_q8_0(b, b_out) in one kernel launch (the same
    bytes): K and V of a batch written straight into their cache rows."""
    for name, x, out in (("a", a, a_out), ("b", b, b_out)):
        _check_2d(name, x, np.float32)
        _check_2d(f"{name}_out", out, np.uint8)
        if x.shape[1] % QK8_0 or out.shape != (x.shape[0], x.shape[1] // QK8_0 * Q8_0_BYTES):
            raise ValueError(f"{name}: rows {x.shape} do not fit Q8_0 rows {out.shape}")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"quantize_q8_0_pair: {a.shape[0]} and {b.shape[0]} rows")
    (_quantize_pair_serial if a.size + b.size < 65536 else _quantize_pair_par)(a, a_out, b, b_out)


def dequantize_q8_0(q: np.ndarray) -> np.ndarray:
    """(n_rows, nb*34) u8 -> (n_rows, nb*32) f32."""
    q = np.ascontiguousarray(q)
    if q.ndim == 1:
        q = q[None, :]
    _check_2d("q", q, np.uint8)
    if q.shape[1] % Q8_0_BYTES:
        raise ValueError(f"row of {q.shape[1]} bytes is not whole Q8_0 blocks")
    out = np.empty((q.shape[0], q.shape[1] // Q8_0_BYTES * QK8_0), dtype=np.float32)
    _dequantize_rows_q8_0(q, out)
    return out


def f32_to_f16(x: np.ndarray) -> np.ndarray:
    """(n_rows, n) f32 -> (n_rows, n) uint16 fp16 bits (RNE, same as numpy astype)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    _check_2d("x", x, np.float32)
    out = np.empty(x.shape, dtype=np.uint16)
    _f32_to_f16_rows(x, out)
    return out


def f16_to_f32(h: np.ndarray) -> np.ndarray:
    """(n_rows, n) uint16 fp16 bits -> f32."""
    h = np.ascontiguousarray(h, dtype=np.uint16)
    _check_2d("h", h, np.uint16)
    out = np.empty(h.shape, dtype=np.float32)
    _f16_to_f32_rows(h, out)
    return out
