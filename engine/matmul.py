"""Matrix products: Q8_0 weights x Q8_0 activations, and f32 weights x f32.

Layouts (row-major, like ggml's ``mul_mat(W, X)``):
  W  (n_out, nb*34) u8   Q8_0 rows of n_in = nb*32 values (the GGUF tensor bytes)
  X  (n_tok, nb*34) u8   activations quantized with ``quant.quantize_q8_0``
  Y  (n_tok, n_out) f32  Y[t, r] = sum_b dW[r,b] dX[t,b] * (qW[r,b] . qX[t,b])
The int8 dot per 32-block is exact in int32; only the per-block scaling and the
sum over blocks are float. TG (n_tok = 1) is a GEMV over 4-row tiles; PP tiles
4 rows x 2 tokens. prange runs over disjoint 4-row output tiles.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from engine import _numba
from engine._numba import FAST_PARALLEL, NJIT, PARALLEL
from engine._simd import q8_tile_1x1, q8_tile_4x1, q8_tile_4x2, q8_tile_8x1
from engine.quant import f16_bits_to_f32


@njit(inline="always", **NJIT)
def _i8(v):
    q = np.int64(v)
    return q - 256 if q > 127 else q


@njit(**NJIT)
def dot_q8_0_scalar(w, wo, x, xo, nb):
    """Plain-numba Q8_0 . Q8_0 over nb blocks (the fallback and the reference)."""
    acc = np.float32(0.0)
    for b in range(nb):
        pw = wo + b * 34
        px = xo + b * 34
        dw = f16_bits_to_f32(np.int64(w[pw]) | (np.int64(w[pw + 1]) << 8))
        dx = f16_bits_to_f32(np.int64(x[px]) | (np.int64(x[px + 1]) << 8))
        s = 0
        for i in range(32):
            s += _i8(w[pw + 2 + i]) * _i8(x[px + 2 + i])
        acc += np.float32(s) * (dw * dx)
    return acc


@njit(inline="always", **NJIT)
def _rowtile_avx2(w, n_out, x, n_tok, nb, out, tile):
    # rows [4*tile, 4*tile+4) of out (n_tok, n_out) flat f32; w, x flat Q8_0 bytes
    rb = nb * 34
    r0 = tile * 4
    if r0 + 4 <= n_out:
        t = 0
        while t + 2 <= n_tok:
            q8_tile_4x2(out, t * n_out + r0, n_out, w, r0 * rb, rb, x, t * rb, rb, nb)
            t += 2
        if t < n_tok:
            q8_tile_4x1(out, t * n_out + r0, n_out, w, r0 * rb, rb, x, t * rb, rb, nb)
    else:
        for r in range(r0, n_out):
            for t in range(n_tok):
                q8_tile_1x1(out, t * n_out + r, 0, w, r * rb, rb, x, t * rb, rb, nb)


@njit(inline="always", **NJIT)
def _rowtile8_gemv_avx2(w, n_out, x, nb, out, tile):
    # GEMV rows [8*tile, 8*tile+8) of out (1, n_out) flat f32; tail rows as 4 + 1s
    rb = nb * 34
    r = tile * 8
    if r + 8 <= n_out:
        q8_tile_8x1(out, r, n_out, w, r * rb, rb, x, 0, rb, nb)
        return
    if r + 4 <= n_out:
        q8_tile_4x1(out, r, n_out, w, r * rb, rb, x, 0, rb, nb)
        r += 4
    while r < n_out:
        q8_tile_1x1(out, r, 0, w, r * rb, rb, x, 0, rb, nb)
        r += 1


@njit(inline="always", **NJIT)
def _rowtile_scalar(w, n_out, x, n_tok, nb, out, tile):
    rb = nb * 34
    for r in range(tile * 4, min(tile * 4 + 4, n_out)):
        for t in range(n_tok):
            out[t * n_out + r] = dot_q8_0_scalar(w, r * rb, x, t * rb, nb)


@njit(**PARALLEL)
def _gemm_q8_0_avx2(w, n_out, x, n_tok, nb, out):
    # w: flat (n_out*nb*34) u8; x: flat (n_tok*nb*34) u8; out: flat (n_tok*n_out) f32
    if n_tok == 1:
        for tile in prange((n_out + 7) // 8):
            _rowtile8_gemv_avx2(w, n_out, x, nb, out, tile)
    else:
        for tile in prange((n_out + 3) // 4):
            _rowtile_avx2(w, n_out, x, n_tok, nb, out, tile)


@njit(**PARALLEL)
def _gemm_q8_0_scalar(w, n_out, x, n_tok, nb, out):
    for tile in prange((n_out + 3) // 4):
        _rowtile_scalar(w, n_out, x, n_tok, nb, out, tile)


# Up to three matrices that share one input (q/k/v, gate/up) in one parallel launch:
# TG runs ~8 launches per layer otherwise, and each costs tens of microseconds.
@njit(**PARALLEL)
def _gemm3_q8_0_avx2(w1, n1, o1, w2, n2, o2, w3, n3, o3, x, n_tok, nb):
    if n_tok == 1:
        g1 = (n1 + 7) // 8
        g2 = (n2 + 7) // 8
        for tile in prange(g1 + g2 + (n3 + 7) // 8):
            if tile < g1:
                _rowtile8_gemv_avx2(w1, n1, x, nb, o1, tile)
            elif tile < g1 + g2:
                _rowtile8_gemv_avx2(w2, n2, x, nb, o2, tile - g1)
            else:
                _rowtile8_gemv_avx2(w3, n3, x, nb, o3, tile - g1 - g2)
        return
    t1 = (n1 + 3) // 4
    t2 = (n2 + 3) // 4
    for tile in prange(t1 + t2 + (n3 + 3) // 4):
        if tile < t1:
            _rowtile_avx2(w1, n1, x, n_tok, nb, o1, tile)
        elif tile < t1 + t2:
            _rowtile_avx2(w2, n2, x, n_tok, nb, o2, tile - t1)
        else:
            _rowtile_avx2(w3, n3, x, n_tok, nb, o3, tile - t1 - t2)


@njit(**PARALLEL)
def _gemm3_q8_0_scalar(w1, n1, o1, w2, n2, o2, w3, n3, o3, x, n_tok, nb):
    t1 = (n1 + 3) // 4
    t2 = (n2 + 3) // 4
    for tile in prange(t1 + t2 + (n3 + 3) // 4):
        if tile < t1:
            _rowtile_scalar(w1, n1, x, n_tok, nb, o1, tile)
        elif tile < t1 + t2:
            _rowtile_scalar(w2, n2, x, n_tok, nb, o2, tile - t1)
        else:
            _rowtile_scalar(w3, n3, x, n_tok, nb, o3, tile - t1 - t2)


@njit(**FAST_PARALLEL)
def _gemm_f32(w, x, out):
    # w: (n_out, n_in) f32; x: (n_tok, n_in) f32; out: (n_tok, n_out) f32
    n_out, n_in = w.shape
    for r in prange(n_out):
        for t in range(x.shape[0]):
            s = np.float32(0.0)
            for i in range(n_in):
                s += w[r, i] * x[t, i]
            out[t, r] = s


def gemm_q8_0(w: np.ndarray, xq: np.ndarray, out: np.ndarray | None = None,
              simd: str | None = None) -> np.ndarray:
    """Y = X W^T with W (n_out, nb*34) and X (n_tok, nb*34) Q8_0 bytes -> (n_tok, n_out) f32."""
    if w.ndim != 2 or xq.ndim != 2 or w.dtype != np.uint8 or xq.dtype != np.uint8:
        raise ValueError(f"gemm_q8_0: expected 2-D uint8 W and X, got {w.dtype}{w.shape}, {xq.dtype}{xq.shape}")
    if w.shape[1] != xq.shape[1] or w.shape[1] % 34:
        raise ValueError(f"gemm_q8_0: row bytes differ or are not whole blocks: {w.shape} vs {xq.shape}")
    if not (w.flags.c_contiguous and xq.flags.c_contiguous):
        raise ValueError("gemm_q8_0: W and X must be C-contiguous")
    n_out, rb = w.shape
    n_tok = xq.shape[0]
    if out is None:
        out = np.empty((n_tok, n_out), dtype=np.float32)
    elif out.shape != (n_tok, n_out) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"gemm_q8_0: out must be contiguous f32 {(n_tok, n_out)}")
    kernel = _gemm_q8_0_avx2 if (simd or _numba.SIMD) == "avx2" else _gemm_q8_0_scalar
    kernel(w.reshape(-1), n_out, xq.reshape(-1), n_tok, rb // 34, out.reshape(-1))
    return out


_EMPTY_W = np.zeros((0,), dtype=np.uint8)
_EMPTY_O = np.zeros((0,), dtype=np.float32)


def gemm_q8_0_multi(ws, xq: np.ndarray, simd: str | None = None) -> list[np.ndarray]:
    """[X W_i^T for W_i in ws] for 1-3 Q8_0 matrices of the same row size, one launch."""
    if not 1 <= len(ws) <= 3:
        raise ValueError(f"gemm_q8_0_multi: 1 to 3 matrices, got {len(ws)}")
    for w in ws:
        if w.ndim != 2 or w.dtype != np.uint8 or w.shape[1] != xq.shape[1] or not w.flags.c_contiguous:
            raise ValueError(f"gemm_q8_0_multi: W {w.dtype}{w.shape} does not match X {xq.dtype}{xq.shape}")
    if xq.ndim != 2 or xq.dtype != np.uint8 or xq.shape[1] % 34 or not xq.flags.c_contiguous:
        raise ValueError(f"gemm_q8_0_multi: X must be contiguous Q8_0 bytes, got {xq.dtype}{xq.shape}")
    n_tok = xq.shape[0]
    outs = [np.empty((n_tok, w.shape[0]), dtype=np.float32) for w in ws]
    args = []
    for k in range(3):
        if k < len(ws):
            args += [ws[k].reshape(-1), ws[k].shape[0], outs[k].reshape(-1)]
        else:
            args += [_EMPTY_W, 0, _EMPTY_O]
    kernel = _gemm3_q8_0_avx2 if (simd or _numba.SIMD) == "avx2" else _gemm3_q8_0_scalar
    kernel(*args, xq.reshape(-1), n_tok, xq.shape[1] // 34)
    return outs


def gemm_f32(w: np.ndarray, x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """Y = X W^T in f32: W (n_out, n_in), X (n_tok, n_in) -> (n_tok, n_out)."""
    if w.ndim != 2 or x.ndim != 2 or w.shape[1] != x.shape[1]:
        raise ValueError(f"gemm_f32: shapes {w.shape} and {x.shape} do not match")
    x = np.ascontiguousarray(x, dtype=np.float32)
    if out is None:
        out = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)
    _gemm_f32(w, x, out)
    return out
