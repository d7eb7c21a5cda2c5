"""Matrix products: Q8_0 weights x Q8_0 activations, and f32 weights x f32.

Layouts (row-major, like ggml's ``mul_mat(W, X)``):
  W  (n_out, nb*34) u8   Q8_0 rows of n_in = nb*32 values (the GGUF tensor bytes)
  X  (n_tok, nb*34) u8   activations quantized with ``quant.quantize_q8_0``
  Y  (n_tok, n_out) f32  Y[t, r] = sum_b dW[r,b] dX[t,b] * (qW[r,b] . qX[t,b])
The int8 dot per 32-block is exact in int32; only the per-block scaling and the
sum over blocks are float. TG (n_tok = 1) is a GEMV over 8-row tiles
(``engine.tiles.q8_tile``). PP with at least ``W16_MIN_TOK`` tokens first widens X to
int16 (``widen_x``, one parallel pass), then works on slabs of ``SLAB`` rows: each slab is widened and
interleaved 8 rows at a time into a per-item buffer (the W16 layout of
``engine._simd_w16``; ik_llama.cpp likewise converts Q8_0 to an interleaved form for
batches of >= 32) and multiplied 8 rows x 4 tokens at a time (``engine.tiles.w16_tile``):
one int32->f32 conversion per block serves 8 rows, and each 4-token tile of X is
reused by the slab's groups while it is in L1. Smaller batches tile 4 rows x 2 tokens.
One body for the AVX2 and scalar paths; prange runs over disjoint output tiles.
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

from engine._numba import AVX2, FAST_PARALLEL, NJIT, PARALLEL, SCALAR, isa
from engine.layout import Q8_0_BYTES, R8_ROWS, W16_BLOCK_BYTES, X16_BLOCK_BYTES
from engine.tiles import i16_row, q8_tile, w16_pack, w16_tile

SLAB = 32          # rows per PP work item (4 groups share each X tile)
W16_MIN_TOK = 8    # PP batches from this size take the widened (W16) path


@njit(inline="always", **NJIT)
def n_tiles(n_out, n_tok):
    """Work items of one matrix: 8-row tiles for a GEMV (n_tok == 1), SLAB-row slabs for
    PP of at least W16_MIN_TOK tokens, else 4-row tiles."""
    if n_tok == 1:
        return (n_out + 7) // 8
    if n_tok >= W16_MIN_TOK:
        return (n_out + SLAB - 1) // SLAB
    return (n_out + 3) // 4


@njit(inline="always", **NJIT)
def _rows_x_tokens(kind, w, wo, n_out, x, t0, t1, nb, out, r0, nr):
    # out rows [r0, r0 + nr) x tokens [t0, t1) with Q8_0 tiles: 8 rows x 1 token for a
    # single token (a GEMV), else 4 rows x 2 tokens; W's row r0 + i starts at byte wo + i*rb
    rb = nb * Q8_0_BYTES
    tall = 8 if t1 - t0 == 1 else 4
    r = 0
    while r < nr:
        mr = min(tall, nr - r)
        if mr > 4:
            mr = 4 if mr < 8 else 8
        t = t0
        while t < t1:
            nc = min(2, t1 - t)
            q8_tile(kind, out, t * n_out + r0 + r, n_out, w, wo + r * rb, rb, x, t * rb, rb, nb, mr, nc)
            t += nc
        r += mr


@njit(**PARALLEL)
def _widen_x_avx2(x, nb, x16, xd):
    for t in prange(xd.shape[0] // nb):
        i16_row(AVX2, x16, t * nb * X16_BLOCK_BYTES, xd, t * nb, x, t * nb * Q8_0_BYTES, nb)


@njit(**PARALLEL)
def _widen_x_scalar(x, nb, x16, xd):
    for t in prange(xd.shape[0] // nb):
        i16_row(SCALAR, x16, t * nb * X16_BLOCK_BYTES, xd, t * nb, x, t * nb * Q8_0_BYTES, nb)


_EMPTY_U8 = np.zeros((0,), dtype=np.uint8)
_EMPTY_F32 = np.zeros((0,), dtype=np.float32)


def widen_x(xq: np.ndarray, kind: int) -> tuple[np.ndarray, np.ndarray]:
    """X's int16 form for the W16 path: ((n_tok*nb*64) u8 int16 quants, (n_tok*nb) f32 scales),
    one parallel pass shared by every matrix of a launch; empty below W16_MIN_TOK tokens
    (GEMV and small batches read the Q8_0 bytes)."""
    n_tok, nb = xq.shape[0], xq.shape[1] // Q8_0_BYTES
    if n_tok < W16_MIN_TOK:
        return _EMPTY_U8, _EMPTY_F32
    x16 = np.empty(n_tok * nb * X16_BLOCK_BYTES, dtype=np.uint8)
    xd = np.empty(n_tok * nb, dtype=np.float32)
    (_widen_x_avx2 if kind == AVX2 else _widen_x_scalar)(xq.reshape(-1), nb, x16, xd)
    return x16, xd


@njit(inline="always", **NJIT)
def w16_tokens(kind, out, n_out, r0, buf, ng, x16, xd, t0, t1, nb):
    """out rows [r0, r0 + 8 ng) x tokens [t0, t1), from ng W16 groups in buf (ng*nb*528 u8) and
    X16 (x16, xd): per 4-token tile (2- and 1-token tails) every group, so the tile stays in L1."""
    gb = nb * W16_BLOCK_BYTES
    t = t0
    while t < t1:
        nc = min(4, t1 - t)
        if nc == 3:
            nc = 2
        for g in range(ng):
            w16_tile(kind, out, t * n_out + r0 + g * R8_ROWS, n_out, buf, g * gb, x16, xd, t, nb, nc)
        t += nc


@njit(inline="always", **NJIT)
def slab_rows(kind, w, wo, nr, x, t0, t1, nb, out, n_out, r0, x16, xd, buf):
    """out[t*n_out + r0 + i] = W row i . X row t for i < nr (<= SLAB) and t in [t0, t1).

    W's row i starts at byte wo + i*nb*34 of w (flat u8 Q8_0), X row t at t*nb*34 of x;
    x16/xd is X's int16 form (widen_x) and buf a scratch of >= SLAB/8*nb*528 bytes. With at
    least W16_MIN_TOK tokens the whole 8-row groups are widened into buf and multiplied as
    W16 tiles; the rows past them, and smaller token ranges, take Q8_0 tiles.
    """
    rb = nb * Q8_0_BYTES
    gb = nb * W16_BLOCK_BYTES
    ng = nr // R8_ROWS if t1 - t0 >= W16_MIN_TOK else 0
    for g in range(ng):
        w16_pack(kind, buf, g * gb, w, wo + g * R8_ROWS * rb, rb, nb)
    if ng > 0:
        w16_tokens(kind, out, n_out, r0, buf, ng, x16, xd, t0, t1, nb)
    done = ng * R8_ROWS
    if nr > done:
        _rows_x_tokens(kind, w, wo + done * rb, n_out, x, t0, t1, nb, out, r0 + done, nr - done)


@njit(inline="always", **NJIT)
def _gemm_tile(kind, w, n_out, x, n_tok, nb, out, tile, x16, xd):
    # One work item of Y = X W^T: w flat (n_out*nb*34) u8, x flat (n_tok*nb*34) u8, out flat
    # (n_tok*n_out) f32, x16/xd X's int16 form (filled when n_tok >= W16_MIN_TOK).
    # GEMV: rows [8 tile, 8 tile + 8) (8x1 tiles, a 4-row and single-row tail);
    # PP: a SLAB-row slab (or 4 rows for a small batch) x every token.
    rb = nb * Q8_0_BYTES
    if n_tok == 1:
        r0 = tile * 8
        _rows_x_tokens(kind, w, r0 * rb, n_out, x, 0, 1, nb, out, r0, min(8, n_out - r0))
        return
    if n_tok >= W16_MIN_TOK:
        r0 = tile * SLAB
        buf = np.empty(SLAB // R8_ROWS * nb * W16_BLOCK_BYTES, dtype=np.uint8)
        slab_rows(kind, w, r0 * rb, min(SLAB, n_out - r0), x, 0, n_tok, nb, out, n_out, r0, x16, xd, buf)
    else:
        r0 = tile * 4
        _rows_x_tokens(kind, w, r0 * rb, n_out, x, 0, n_tok, nb, out, r0, min(4, n_out - r0))


@njit(**PARALLEL)
def _gemm_q8_0_avx2(w, n_out, x, n_tok, nb, out, x16, xd):
    for tile in prange(n_tiles(n_out, n_tok)):
        _gemm_tile(AVX2, w, n_out, x, n_tok, nb, out, tile, x16, xd)


@njit(**PARALLEL)
def _gemm_q8_0_scalar(w, n_out, x, n_tok, nb, out, x16, xd):
    for tile in prange(n_tiles(n_out, n_tok)):
        _gemm_tile(SCALAR, w, n_out, x, n_tok, nb, out, tile, x16, xd)


@njit(inline="always", **NJIT)
def _gemm3_tile(kind, w1, n1, o1, w2, n2, o2, w3, n3, o3, x, n_tok, nb, tile, x16, xd):
    # work item `tile` of three matrices' tiles laid end to end
    t1 = n_tiles(n1, n_tok)
    t2 = n_tiles(n2, n_tok)
    if tile < t1:
        _gemm_tile(kind, w1, n1, x, n_tok, nb, o1, tile, x16, xd)
    elif tile < t1 + t2:
        _gemm_tile(kind, w2, n2, x, n_tok, nb, o2, tile - t1, x16, xd)
    else:
        _gemm_tile(kind, w3, n3, x, n_tok, nb, o3, tile - t1 - t2, x16, xd)


# Up to three matrices that share one input (q/k/v, gate/up) in one parallel launch:
# TG runs ~8 launches per layer otherwise, and each costs tens of microseconds.
@njit(**PARALLEL)
def _gemm3_q8_0_avx2(w1, n1, o1, w2, n2, o2, w3, n3, o3, x, n_tok, nb, x16, xd):
    for tile in prange(n_tiles(n1, n_tok) + n_tiles(n2, n_tok) + n_tiles(n3, n_tok)):
        _gemm3_tile(AVX2, w1, n1, o1, w2, n2, o2, w3, n3, o3, x, n_tok, nb, tile, x16, xd)


@njit(**PARALLEL)
def _gemm3_q8_0_scalar(w1, n1, o1, w2, n2, o2, w3, n3, o3, x, n_tok, nb, x16, xd):
    for tile in prange(n_tiles(n1, n_tok) + n_tiles(n2, n_tok) + n_tiles(n3, n_tok)):
        _gemm3_tile(SCALAR, w1, n1, o1, w2, n2, o2, w3, n3, o3, x, n_tok, nb, tile, x16, xd)


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
    kind = isa(simd)
    kernel = _gemm_q8_0_avx2 if kind == AVX2 else _gemm_q8_0_scalar
    kernel(w.reshape(-1), n_out, xq.reshape(-1), n_tok, rb // Q8_0_BYTES, out.reshape(-1), *widen_x(xq, kind))
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
    kind = isa(simd)
    kernel = _gemm3_q8_0_avx2 if kind == AVX2 else _gemm3_q8_0_scalar
    kernel(*args, xq.reshape(-1), n_tok, xq.shape[1] // Q8_0_BYTES, *widen_x(xq, kind))
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
