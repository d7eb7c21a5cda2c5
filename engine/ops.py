"""Elementwise and row kernels: RMSNorm, RoPE, SwiGLU, GeGLU, softmax.

Each public wrapper checks shapes/dtypes and calls a private numba kernel that
writes a preallocated output over disjoint prange rows. The numpy references
these are tested against live in tests/reference.py.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from engine._numba import FAST, FAST_PARALLEL, NJIT, PARALLEL
from engine.layout import Q8_0_BYTES, QK8_0
from engine.quant import quantize_row_q8_0


# Below this many elements a kernel runs serially: a parallel launch costs tens of
# microseconds (milliseconds when another process holds the other core), far more than
# a TG-sized row takes, and TG makes ~20 such calls per layer.
SERIAL_ELEMENTS = 65536


@njit(inline="always", **NJIT)
def _rmsnorm_row(x, w, eps, out, t):
    # x: (n, d) f32; w: (d,) f32; out: (n, d) f32. Sum of squares in f64 like ggml.
    d = x.shape[1]
    ss = 0.0
    for i in range(d):
        v = np.float64(x[t, i])
        ss += v * v
    scale = np.float32(1.0 / math.sqrt(ss / d + eps))
    for i in range(d):
        out[t, i] = x[t, i] * scale * w[i]


@njit(**PARALLEL)
def _rmsnorm_par(x, w, eps, out):
    for t in prange(x.shape[0]):
        _rmsnorm_row(x, w, eps, out, t)


@njit(**NJIT)
def _rmsnorm_ser(x, w, eps, out):
    for t in range(x.shape[0]):
        _rmsnorm_row(x, w, eps, out, t)


@njit(**PARALLEL)
def _rmsnorm_q8_par(x, w, eps, out, outq):
    for t in prange(x.shape[0]):
        _rmsnorm_row(x, w, eps, out, t)
        quantize_row_q8_0(out[t], outq[t], 0)


@njit(**NJIT)
def _rmsnorm_q8_ser(x, w, eps, out, outq):
    for t in range(x.shape[0]):
        _rmsnorm_row(x, w, eps, out, t)
        quantize_row_q8_0(out[t], outq[t], 0)


def _serial(a: np.ndarray) -> bool:
    return a.size < SERIAL_ELEMENTS


def rmsnorm(x: np.ndarray, w: np.ndarray, eps: float, out: np.ndarray | None = None) -> np.ndarray:
    """RMSNorm over the last axis: x / sqrt(mean(x^2) + eps) * w."""
    if x.ndim != 2 or w.shape != (x.shape[1],):
        raise ValueError(f"rmsnorm: x {x.shape} and weight {w.shape} do not match")
    if out is None:
        out = np.empty_like(x)
    (_rmsnorm_ser if _serial(x) else _rmsnorm_par)(x, w, float(eps), out)
    return out


def rmsnorm_q8_0(x: np.ndarray, w: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    """RMSNorm and its Q8_0 quantization in one pass: ((n, d) f32, (n, d/32*34) u8)."""
    if x.ndim != 2 or w.shape != (x.shape[1],) or x.shape[1] % QK8_0:
        raise ValueError(f"rmsnorm_q8_0: x {x.shape} and weight {w.shape} do not match or d % 32 != 0")
    out = np.empty_like(x)
    outq = np.empty((x.shape[0], x.shape[1] // QK8_0 * Q8_0_BYTES), dtype=np.uint8)
    (_rmsnorm_q8_ser if _serial(x) else _rmsnorm_q8_par)(x, w, float(eps), out, outq)
    return out, outq


def rope_cache(positions: np.ndarray, n_rot: int, freq_base: float, freq_scale: float = 1.0,
               ext_factor: float = 0.0, attn_factor: float = 1.0, n_ctx_orig: int = 0,
               beta_fast: float = 32.0, beta_slow: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """cos/sin tables (n_pos, n_rot/2) f32 following ggml's rope_yarn.

    freq_scale = 1/factor for linear and YaRN scaling; ext_factor > 0 turns on
    YaRN's ramp between interpolated and extrapolated frequencies (and its
    mscale); ext_factor = 0 is plain (optionally linearly scaled) RoPE.
    """
    half = n_rot // 2
    theta_scale = freq_base ** (-2.0 / n_rot)
    i0 = np.arange(half, dtype=np.float64)  # pair index (= ggml's i0/2)
    theta_extrap = positions.astype(np.float64)[:, None] * theta_scale ** i0[None, :]
    theta_interp = freq_scale * theta_extrap
    mscale = attn_factor
    if ext_factor != 0.0:
        def corr_dim(n_r):
            return n_rot * math.log(n_ctx_orig / (n_r * 2 * math.pi)) / (2 * math.log(freq_base))
        low = max(0.0, math.floor(corr_dim(beta_fast)))
        high = min(n_rot - 1.0, math.ceil(corr_dim(beta_slow)))
        y = (i0 - low) / max(0.001, high - low)
        ramp_mix = (1.0 - np.clip(y, 0.0, 1.0)) * ext_factor
        theta = theta_interp * (1 - ramp_mix) + theta_extrap * ramp_mix
        mscale *= 1.0 + 0.1 * math.log(1.0 / freq_scale)
    else:
        theta = theta_interp
    return ((np.cos(theta) * mscale).astype(np.float32),
            (np.sin(theta) * mscale).astype(np.float32))


@njit(inline="always", **NJIT)
def _rope_row(x, cos, sin, n_rot, neox, t):
    # x: (n, n_head, hd) f32 rotated in place; cos/sin: (n, n_rot/2) f32
    half = n_rot // 2
    for h in range(x.shape[1]):
        for i in range(half):
            c = cos[t, i]
            s = sin[t, i]
            if neox:
                a = x[t, h, i]
                b = x[t, h, i + half]
                x[t, h, i] = a * c - b * s
                x[t, h, i + half] = a * s + b * c
            else:
                a = x[t, h, 2 * i]
                b = x[t, h, 2 * i + 1]
                x[t, h, 2 * i] = a * c - b * s
                x[t, h, 2 * i + 1] = a * s + b * c


@njit(**PARALLEL)
def _rope_par(x, cos, sin, n_rot, neox):
    for t in prange(x.shape[0]):
        _rope_row(x, cos, sin, n_rot, neox, t)


@njit(**NJIT)
def _rope_ser(x, cos, sin, n_rot, neox):
    for t in range(x.shape[0]):
        _rope_row(x, cos, sin, n_rot, neox, t)


def rope_inplace(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, n_rot: int, neox: bool) -> None:
    """Rotate the first n_rot dims of every head: NORM pairs (2i, 2i+1), NEOX pairs (i, i+n_rot/2)."""
    if x.ndim != 3 or cos.shape != (x.shape[0], n_rot // 2) or sin.shape != cos.shape:
        raise ValueError(f"rope: x {x.shape}, cos {cos.shape} do not match n_rot {n_rot}")
    if n_rot > x.shape[2] or n_rot % 2:
        raise ValueError(f"rope: n_rot {n_rot} invalid for head size {x.shape[2]}")
    (_rope_ser if _serial(x) else _rope_par)(x, cos, sin, n_rot, bool(neox))


@njit(inline="always", **NJIT)
def _qk_row(q2, k2, q3, k3, qn, kn, use_norm, eps, cos, sin, n_rot, neox, t):
    # token t: per-head RMSNorm in place (rows t*H..t*H+H-1 of the (n*H, hd) views), then RoPE
    if use_norm:
        for h in range(q3.shape[1]):
            _rmsnorm_row(q2, qn, eps, q2, t * q3.shape[1] + h)
        for h in range(k3.shape[1]):
            _rmsnorm_row(k2, kn, eps, k2, t * k3.shape[1] + h)
    _rope_row(q3, cos, sin, n_rot, neox, t)
    _rope_row(k3, cos, sin, n_rot, neox, t)


@njit(**PARALLEL)
def _qk_par(q2, k2, q3, k3, qn, kn, use_norm, eps, cos, sin, n_rot, neox):
    for t in prange(q3.shape[0]):
        _qk_row(q2, k2, q3, k3, qn, kn, use_norm, eps, cos, sin, n_rot, neox, t)


@njit(**NJIT)
def _qk_ser(q2, k2, q3, k3, qn, kn, use_norm, eps, cos, sin, n_rot, neox):
    for t in range(q3.shape[0]):
        _qk_row(q2, k2, q3, k3, qn, kn, use_norm, eps, cos, sin, n_rot, neox, t)


_NO_NORM = np.ones(1, dtype=np.float32)


def qk_norm_rope(q: np.ndarray, k: np.ndarray, q_norm: np.ndarray | None, k_norm: np.ndarray | None,
                 eps: float, cos: np.ndarray, sin: np.ndarray, n_rot: int, neox: bool) -> None:
    """In place, one launch for both: q (n, H, hd) and k (n, Hkv, hd) f32, each head RMSNorm'd
    with q_norm / k_norm (hd,) when given (Gemma 3, Qwen3), then rotated like rope_inplace.
    The same arithmetic as rmsnorm + rope_inplace on each, in the same order."""
    for x, w in ((q, q_norm), (k, k_norm)):
        if x.ndim != 3 or not x.flags.c_contiguous or x.dtype != np.float32 or x.shape[0] != q.shape[0]:
            raise ValueError(f"qk_norm_rope: expected contiguous f32 (n, heads, hd), got {x.dtype}{x.shape}")
        if w is not None and w.shape != (x.shape[2],):
            raise ValueError(f"qk_norm_rope: norm {w.shape} does not match head size {x.shape[2]}")
    if (q_norm is None) != (k_norm is None):
        raise ValueError("qk_norm_rope: q_norm and k_norm go together")
    if cos.shape != (q.shape[0], n_rot // 2) or sin.shape != cos.shape or n_rot % 2 or \
            n_rot > min(q.shape[2], k.shape[2]):
        raise ValueError(f"qk_norm_rope: cos {cos.shape} does not match n_rot {n_rot} / heads {q.shape}")
    use = q_norm is not None
    n = q.shape[0]
    kernel = _qk_ser if q.size + k.size < SERIAL_ELEMENTS else _qk_par
    kernel(q.reshape(n * q.shape[1], q.shape[2]), k.reshape(n * k.shape[1], k.shape[2]), q, k,
           q_norm if use else _NO_NORM, k_norm if use else _NO_NORM, use, float(eps), cos, sin, n_rot, bool(neox))


@njit(inline="always", **FAST)
def _swiglu_row(g, u, out, t):
    # g, u, out: (n, f) f32; out = silu(g) * u
    for i in range(g.shape[1]):
        v = g[t, i]
        out[t, i] = v / (np.float32(1.0) + np.exp(-v)) * u[t, i]


_GELU_C = np.float32(math.sqrt(2.0 / math.pi))


@njit(inline="always", **FAST)
def _geglu_row(g, u, out, t):
    # g, u, out: (n, f) f32; out = gelu_tanh(g) * u (Gemma's gated FFN; ggml_gelu's formula)
    for i in range(g.shape[1]):
        v = g[t, i]
        out[t, i] = np.float32(0.5) * v * (np.float32(1.0) + np.tanh(
            _GELU_C * v * (np.float32(1.0) + np.float32(0.044715) * v * v))) * u[t, i]


@njit(inline="always", **FAST)
def _gated_row(g, u, gelu, out, t):
    if gelu:
        _geglu_row(g, u, out, t)
    else:
        _swiglu_row(g, u, out, t)


# One pair of kernels for both activations (a runtime flag per row: a function argument
# would make them uncacheable, see engine.attention).
@njit(**FAST_PARALLEL)
def _gated_q8_par(g, u, gelu, out, outq):
    for t in prange(g.shape[0]):
        _gated_row(g, u, gelu, out, t)
        quantize_row_q8_0(out[t], outq[t], 0)


@njit(**FAST)
def _gated_q8_ser(g, u, gelu, out, outq):
    for t in range(g.shape[0]):
        _gated_row(g, u, gelu, out, t)
        quantize_row_q8_0(out[t], outq[t], 0)


def _gated_q8_0(name, gelu: bool, g: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # shared checks/allocation of the gated-FFN activations: ((n, f) f32, (n, f/32*34) u8)
    if g.shape != u.shape or g.ndim != 2 or g.shape[1] % QK8_0:
        raise ValueError(f"{name}: gate {g.shape} and up {u.shape} differ or width % 32 != 0")
    out = np.empty_like(g)
    outq = np.empty((g.shape[0], g.shape[1] // QK8_0 * Q8_0_BYTES), dtype=np.uint8)
    (_gated_q8_ser if _serial(g) else _gated_q8_par)(g, u, gelu, out, outq)
    return out, outq


def swiglu_q8_0(g: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """silu(g) * u and its Q8_0 quantization in one pass."""
    return _gated_q8_0("swiglu", False, g, u)


def swiglu(g: np.ndarray, u: np.ndarray) -> np.ndarray:
    """silu(g) * u."""
    return swiglu_q8_0(g, u)[0]


def geglu_q8_0(g: np.ndarray, u: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """gelu_tanh(g) * u and its Q8_0 quantization in one pass."""
    return _gated_q8_0("geglu", True, g, u)


@njit(**PARALLEL)
def _softmax(x, out):
    # x, out: (n, m) f32; max-subtracted, sum in f64
    n, m = x.shape
    for t in prange(n):
        mx = x[t, 0]
        for i in range(1, m):
            if x[t, i] > mx:
                mx = x[t, i]
        s = 0.0
        for i in range(m):
            e = np.exp(x[t, i] - mx)
            out[t, i] = e
            s += e
        inv = np.float32(1.0 / s)
        for i in range(m):
            out[t, i] *= inv


def softmax(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Row-wise softmax of a (n, m) f32 array."""
    if x.ndim != 2 or x.shape[1] == 0:
        raise ValueError(f"softmax: expected non-empty 2-D input, got {x.shape}")
    if out is None:
        out = np.empty_like(x)
    _softmax(x, out)
    return out
