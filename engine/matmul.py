"""Matrix products: Q8_0 weights x Q8_0 activations, and f32 weights x f32.

Layouts (row-major, like ggml's ``mul_mat(W, X)``):
  W  (n_out, nb*34) u8   Q8_0 rows of n_in = nb*32 values (the GGUF tensor bytes)
  X  (n_tok, nb*34) u8   activations quantized with ``quant.quantize_q8_0``
  Y  (n_tok, n_out) f32  Y[t, r] = sum_b dW[r,b] dX[t,b] * (qW[r,b] . qX[t,b])
The int8 dot per 32-block is exact in int32; only the per-block scaling and the
sum over blocks are float. TG (n_tok = 1) is a GEMV over 8-row tiles; PP tiles
4 rows x 2 tokens (``engine.tiles.q8_tile``, one body for the AVX2 and scalar
paths). prange runs over disjoint output tiles.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from engine._numba import AVX2, FAST_PARALLEL, NJIT, PARALLEL, SCALAR, isa
from engine.layout import Q8_0_BYTES
from engine.tiles import q8_tile


@njit(inline="always", **NJIT)
def n_tiles(n_out, n_tok):
    """Work items of one matrix: 8-row tiles for a GEMV (n_tok == 1), else 4-row tiles."""
    return (n_out + 7) // 8 if n_tok == 1 else (n_out + 3) // 4


@njit(inline="always", **NJIT)
def _gemm_tile(kind, w, n_out, x, n_tok, nb, out, tile):
    # One work item of Y = X W^T: w flat (n_out*nb*34) u8, x flat (n_tok*nb*34) u8, out flat
    # (n_tok*n_out) f32. GEMV: rows [8 tile, 8 tile + 8) (a 4-row and single-row tail);
    # PP: rows [4 tile, 4 tile + 4) x every token, two tokens per register tile.
    rb = nb * Q8_0_BYTES
    if n_tok == 1:
        r = tile * 8
        if r + 8 <= n_out:
            q8_tile(kind, out, r, n_out, w, r * rb, rb, x, 0, rb, nb, 8, 1)
            return
        if r + 4 <= n_out:
            q8_tile(kind, out, r, n_out, w, r * rb, rb, x, 0, rb, nb, 4, 1)
            r += 4
        while r < n_out:
            q8_tile(kind, out, r, 0, w, r * rb, rb, x, 0, rb, nb, 1, 1)
            r += 1
        return
    r0 = tile * 4
    nr = min(4, n_out - r0)
    t = 0
    while t < n_tok:
        nc = min(2, n_tok - t)
        q8_tile(kind, out, t * n_out + r0, n_out, w, r0 * rb, rb, x, t * rb, rb, nb, nr, nc)
        t += nc


@njit(**PARALLEL)
def _gemm_q8_0_avx2(w, n_out, x, n_tok, nb, out):
    for tile in prange(n_tiles(n_out, n_tok)):
        _gemm_tile(AVX2, w, n_out, x, n_tok, nb, out, tile)


@njit(**PARALLEL)
def _gemm_q8_0_scalar(w, n_out, x, n_tok, nb, out):
    for tile in prange(n_tiles(n_out, n_tok)):
        _gemm_tile(SCALAR, w, n_out, x, n_tok, nb, out, tile)


@njit(inline="always", **NJIT)
def _gemm3_tile(kind, w1, n1, o1, w2, n2, o2, w3, n3, o3, x, n_tok, nb, tile):
    # work item `tile` of three matrices' tiles laid end to end
    t1 = n_tiles(n1, n_tok)
    t2 = n_tiles(n2, n_tok)
    if tile < t1:
        _gemm_tile(kind, w1, n1, x, n_tok, nb, o1, tile)
    elif tile < t1 + t2:
        _gemm_tile(kind, w2, n2, x, n_tok, nb, o2, tile - t1)
    else:
        _gemm_tile(kind, w3, n3, x, n_tok, nb, o3, tile - t1 - t2)


# Up to three matrices that share one input (q/k/v, gate/up) in one parallel launch:
# TG runs ~8 launches per layer otherwise, and each costs tens of microseconds.
@njit(**PARALLEL)
def _gemm3_q8_0_avx2(w1, n1, o1, w2, n2, o2, w3, n3, o3, x, n_tok, nb):
    for tile in prange(n_tiles(n1, n_tok) + n_tiles(n2, n_tok) + n_tiles(n3, n_tok)):
        _gemm3_tile(AVX2, w1, n1, o1, w2, n2, o2, w3, n3, o3, x, n_tok, nb, tile)


@njit(**PARALLEL)
def _gemm3_q8_0_scalar(w1, n1, o1, w2, n2, o2, w3, n3, o3, x, n_tok, nb):
    for tile in prange(n_tiles(n1, n_tok) + n_tiles(n2, n_tok) + n_tiles(n3, n_tok)):
        _gemm3_tile(SCALAR, w1, n1, o1, w2, n2, o2, w3, n3, o3, x, n_tok, nb, tile)


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
    if w.shape[1] != xq.shape[1] or w.shape[1] % Q8_0_BYTES:
        raise ValueError(f"gemm_q8_0: row bytes differ or are not whole blocks: {w.shape} vs {xq.shape}")
    if not (w.flags.c_contiguous and xq.flags.c_contiguous):
        raise ValueError("gemm_q8_0: W and X must be C-contiguous")
    n_out, rb = w.shape
    n_tok = xq.shape[0]
    if out is None:
        out = np.empty((n_tok, n_out), dtype=np.float32)
    elif out.shape != (n_tok, n_out) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"gemm_q8_0: out must be contiguous f32 {(n_tok, n_out)}")
    kernel = _gemm_q8_0_avx2 if isa(simd) == AVX2 else _gemm_q8_0_scalar
    kernel(w.reshape(-1), n_out, xq.reshape(-1), n_tok, rb // Q8_0_BYTES, out.reshape(-1))
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
    if xq.ndim != 2 or xq.dtype != np.uint8 or xq.shape[1] % Q8_0_BYTES or not xq.flags.c_contiguous:
        raise ValueError(f"gemm_q8_0_multi: X must be contiguous Q8_0 bytes, got {xq.dtype}{xq.shape}")
    n_tok = xq.shape[0]
    outs = [np.empty((n_tok, w.shape[0]), dtype=np.float32) for w in ws]
    args = []
    for k in range(3):
        if k < len(ws):
            args += [ws[k].reshape(-1), ws[k].shape[0], outs[k].reshape(-1)]
        else:
            args += [_EMPTY_W, 0, _EMPTY_O]
    kernel = _gemm3_q8_0_avx2 if isa(simd) == AVX2 else _gemm3_q8_0_scalar
    kernel(*args, xq.reshape(-1), n_tok, xq.shape[1] // Q8_0_BYTES)
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
