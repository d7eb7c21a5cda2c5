"""Q8_0_R8: eight Q8_0 rows interleaved (ik_llama.cpp's ``block_q8_0_r8``).

Byte layout. Rows are taken in groups of 8 (row group g = rows 8g..8g+7). For
every 32-column block b of the group there is one 272-byte block (= 8 x 34):

  bytes   0..15   d[8]: d[k] = row (8g+k)'s fp16 scale of block b (little endian)
  bytes  16..271  qs[256], interleaved in 4-byte groups:
                  qs[128*h + 32*l + 4*k + i] = row_k.qs[16*h + 4*l + i]
                  for h in {0,1}, l in 0..3, k in 0..7, i in 0..3

Equivalently, with j = 4h + l: 32-byte chunk j of qs holds quants 4j..4j+3 of rows
0..7 (row k at chunk bytes 4k..4k+3), so one 32-byte load feeds 8 rows' dots.
A repacked matrix of n_rows x n_cols (n_rows % 8 == 0) is (n_rows/8, nb*272) u8,
group-major then block (group g's nb blocks are consecutive), which is what ik's
``repack_q8_0`` writes. Packing is a pure byte permutation: ``unpack(pack(w)) == w``
bit for bit. A repacked K view (``repack_k_view``) is one such matrix per KV head
(positions as rows, zero rows padding the last group), heads one after another.

Kernels here: the numpy reference pack/unpack, the numba pack (weights and K
views), the Q8_0_R8 x Q8_0 GEMM/GEMV (``gemm_q8_0_r8``; tiles of 8 rows x 4/2/1
columns, ``engine.tiles.r8_tile``: AVX2 intrinsics or plain numba; PP batches of
``matmul.W16_MIN_TOK`` or more widen 4 groups at a time to int16 and share matmul's W16
tiles, the faster AVX2 product), and the
attention score function that reads a repacked K view. ``-rtr`` (repacking the
weights at load) is ``engine.residency.repack_weights``.
"""
from __future__ import annotations

import numba
import numpy as np
from numba import njit, prange

from engine._numba import AVX2, NJIT, PARALLEL, SCALAR, isa
from engine.layout import Q8_0_BYTES, QK8_0, R8_BLOCK_BYTES, R8_ROWS, W16_BLOCK_BYTES
from engine.matmul import SLAB, W16_MIN_TOK, w16_tokens, widen_x
from engine.options import K_REPACK_MODES
from engine.tiles import r8_tile, w16_pack_r8


# -- numpy reference ---------------------------------------------------------------------

def pack_q8_0_r8_ref(w: np.ndarray) -> np.ndarray:
    """(n_rows, nb*34) u8 Q8_0 -> (n_rows/8, nb*272) u8 Q8_0_R8 (numpy reference)."""
    n_rows, rb = w.shape
    if n_rows % R8_ROWS or rb % Q8_0_BYTES:
        raise ValueError(f"pack_q8_0_r8_ref: need rows % 8 == 0 and whole blocks, got {w.shape}")
    nb = rb // Q8_0_BYTES
    blk = w.reshape(n_rows // 8, 8, nb, Q8_0_BYTES)            # (group, k, b, 34)
    d = blk[..., :2].transpose(0, 2, 1, 3).reshape(n_rows // 8, nb, 16)        # (g, b, k*2)
    qs = blk[..., 2:].reshape(n_rows // 8, 8, nb, 8, 4)         # (g, k, b, j, i)
    qs = qs.transpose(0, 2, 3, 1, 4).reshape(n_rows // 8, nb, 256)             # (g, b, j*32+k*4+i)
    return np.ascontiguousarray(np.concatenate([d, qs], axis=2).reshape(n_rows // 8, nb * R8_BLOCK_BYTES))


def unpack_q8_0_r8_ref(p: np.ndarray) -> np.ndarray:
    """(n_groups, nb*272) u8 Q8_0_R8 -> (n_groups*8, nb*34) u8 Q8_0 (numpy reference)."""
    n_groups, rb = p.shape
    if rb % R8_BLOCK_BYTES:
        raise ValueError(f"unpack_q8_0_r8_ref: rows of {rb} bytes are not whole R8 blocks")
    nb = rb // R8_BLOCK_BYTES
    blk = p.reshape(n_groups, nb, R8_BLOCK_BYTES)
    d = blk[..., :16].reshape(n_groups, nb, 8, 2).transpose(0, 2, 1, 3)         # (g, k, b, 2)
    qs = blk[..., 16:].reshape(n_groups, nb, 8, 8, 4).transpose(0, 3, 1, 2, 4)  # (g, k, b, j, i)
    qs = qs.reshape(n_groups, 8, nb, 32)
    return np.ascontiguousarray(np.concatenate([d, qs], axis=3).reshape(n_groups * 8, nb * Q8_0_BYTES))


# -- numba pack ---------------------------------------------------------------------------

@njit(**PARALLEL)
def _pack_views(src, src_rstride, src_hstride, n_head, n_rows, nb, dst):
    # src: flat u8; row r of head h = nb Q8_0 blocks at byte h*src_hstride + r*src_rstride.
    # dst: flat u8, head h's R8 matrix at byte h*n_groups*nb*272; rows >= n_rows are zeros.
    n_groups = (n_rows + 7) // 8
    gbytes = nb * R8_BLOCK_BYTES
    for item in prange(n_head * n_groups):
        h = item // n_groups
        g = item - h * n_groups
        base = item * gbytes
        for k in range(8):
            r = g * 8 + k
            if r < n_rows:
                so = h * src_hstride + r * src_rstride
                for b in range(nb):
                    s = so + b * Q8_0_BYTES
                    o = base + b * R8_BLOCK_BYTES
                    dst[o + 2 * k] = src[s]
                    dst[o + 2 * k + 1] = src[s + 1]
                    for j in range(8):
                        for i in range(4):
                            dst[o + 16 + 32 * j + 4 * k + i] = src[s + 2 + 4 * j + i]
            else:
                for b in range(nb):
                    o = base + b * R8_BLOCK_BYTES
                    dst[o + 2 * k] = 0
                    dst[o + 2 * k + 1] = 0
                    for j in range(8):
                        for i in range(4):
                            dst[o + 16 + 32 * j + 4 * k + i] = 0


def pack_q8_0_r8(w: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(n_rows, nb*34) u8 Q8_0 (n_rows % 8 == 0) -> (n_rows/8, nb*272) u8 Q8_0_R8."""
    if w.ndim != 2 or w.dtype != np.uint8 or w.shape[0] % R8_ROWS or w.shape[1] % Q8_0_BYTES:
        raise ValueError(f"pack_q8_0_r8: need 2-D uint8 Q8_0 rows with rows % 8 == 0, got {w.dtype}{w.shape}")
    w = np.ascontiguousarray(w)
    n_rows, rb = w.shape
    shape = (n_rows // 8, rb // Q8_0_BYTES * R8_BLOCK_BYTES)
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"pack_q8_0_r8: out must be contiguous uint8 {shape}")
    _pack_views(w.reshape(-1), rb, 0, 1, n_rows, rb // Q8_0_BYTES, out.reshape(-1))
    return out


def k_view_bytes(n_rows: int, n_head: int, head_dim: int) -> int:
    """Scratch bytes of a repacked K view: row_size(Q8_0, head_dim) x rows (padded to 8) x heads."""
    return ((n_rows + 7) // 8 * 8) * n_head * (head_dim // QK8_0 * Q8_0_BYTES)


def repack_k_view(k: np.ndarray, n_rows: int, n_head: int, head_dim: int, scratch: np.ndarray) -> np.ndarray:
    """Repack positions [0, n_rows) of a q8_0 K cache layer into scratch; return the used part.

    k: (n_ctx, n_head*head_dim/32*34) u8 (engine.kvcache layout); scratch: flat u8 of at
    least ``k_view_bytes`` bytes. Result: flat u8, head h's Q8_0_R8 matrix of
    ceil(n_rows/8) groups at byte h * rows_pad * head_dim/32*34.
    """
    need = k_view_bytes(n_rows, n_head, head_dim)
    if scratch.ndim != 1 or scratch.dtype != np.uint8 or scratch.shape[0] < need:
        raise ValueError(f"repack_k_view: scratch of {scratch.shape} cannot hold {need} bytes")
    if k.dtype != np.uint8 or k.ndim != 2 or not k.flags.c_contiguous or n_rows > k.shape[0]:
        raise ValueError(f"repack_k_view: expected a contiguous q8_0 K layer with >= {n_rows} rows, got {k.shape}")
    nbh = head_dim // QK8_0
    view = scratch[:need]
    _pack_views(k.reshape(-1), k.shape[1], nbh * Q8_0_BYTES, n_head, n_rows, nbh, view)
    return view


# -- GEMM / GEMV --------------------------------------------------------------------------

@njit(inline="always", **NJIT)
def _group(kind, w, n_groups, x, n_tok, nb, out, g):
    # rows [8g, 8g+8) of out (n_tok, n_groups*8) flat f32; w flat R8 bytes, x flat Q8_0 bytes;
    # tokens 4, then 2, then 1 at a time (one R8 block load serves the tile's columns)
    rb = nb * Q8_0_BYTES
    gb = nb * R8_BLOCK_BYTES
    n_out = n_groups * R8_ROWS
    t = 0
    while t + 4 <= n_tok:
        r8_tile(kind, out, t * n_out + g * 8, n_out, w, g * gb, x, t * rb, (t + 1) * rb,
                (t + 2) * rb, (t + 3) * rb, nb, 4)
        t += 4
    if t + 2 <= n_tok:
        r8_tile(kind, out, t * n_out + g * 8, n_out, w, g * gb, x, t * rb, (t + 1) * rb, 0, 0, nb, 2)
        t += 2
    if t < n_tok:
        r8_tile(kind, out, t * n_out + g * 8, n_out, w, g * gb, x, t * rb, 0, 0, 0, nb, 1)


@njit(inline="always", **NJIT)
def r8_items(n_groups, n_tok):
    """Work items of one R8 matrix: a row group each, or for PP of >= W16_MIN_TOK tokens a
    slab of SLAB rows (widened to W16, like matmul's Q8_0 slabs)."""
    return (n_groups * R8_ROWS + SLAB - 1) // SLAB if n_tok >= W16_MIN_TOK else n_groups


@njit(inline="always", **NJIT)
def _item(kind, w, n_groups, x, n_tok, nb, out, i, x16, xd):
    # work item i of r8_items: group i (through R8 tiles), or slab i (widened to W16 in buf)
    if n_tok < W16_MIN_TOK:
        _group(kind, w, n_groups, x, n_tok, nb, out, i)
        return
    g0 = i * (SLAB // R8_ROWS)
    ng = min(SLAB // R8_ROWS, n_groups - g0)
    gb = nb * W16_BLOCK_BYTES
    buf = np.empty(ng * gb, dtype=np.uint8)
    for g in range(ng):
        w16_pack_r8(kind, buf, g * gb, w, (g0 + g) * nb * R8_BLOCK_BYTES, nb)
    w16_tokens(kind, out, n_groups * R8_ROWS, g0 * R8_ROWS, buf, ng, x16, xd, 0, n_tok, nb)


@njit(**PARALLEL)
def _gemm_r8_avx2(w, n_groups, x, n_tok, nb, out, x16, xd):
    # w: flat (n_groups*nb*272) u8; x: flat (n_tok*nb*34) u8; out: flat (n_tok*n_groups*8) f32;
    # x16, xd: X widened (matmul.widen_x)
    for i in prange(r8_items(n_groups, n_tok)):
        _item(AVX2, w, n_groups, x, n_tok, nb, out, i, x16, xd)


@njit(**PARALLEL)
def _gemm_r8_scalar(w, n_groups, x, n_tok, nb, out, x16, xd):
    for i in prange(r8_items(n_groups, n_tok)):
        _item(SCALAR, w, n_groups, x, n_tok, nb, out, i, x16, xd)


@njit(inline="always", **NJIT)
def _item3(kind, w1, g1, o1, w2, g2, o2, w3, g3, o3, x, n_tok, nb, i, x16, xd):
    # work item i of three R8 matrices' items laid end to end
    i1 = r8_items(g1, n_tok)
    i2 = r8_items(g2, n_tok)
    if i < i1:
        _item(kind, w1, g1, x, n_tok, nb, o1, i, x16, xd)
    elif i < i1 + i2:
        _item(kind, w2, g2, x, n_tok, nb, o2, i - i1, x16, xd)
    else:
        _item(kind, w3, g3, x, n_tok, nb, o3, i - i1 - i2, x16, xd)


# Up to three R8 matrices sharing one input (q/k/v, gate/up) in one parallel launch,
# like matmul.gemm_q8_0_multi (each launch costs tens of microseconds in TG).
@njit(**PARALLEL)
def _gemm3_r8_avx2(w1, g1, o1, w2, g2, o2, w3, g3, o3, x, n_tok, nb, x16, xd):
    for i in prange(r8_items(g1, n_tok) + r8_items(g2, n_tok) + r8_items(g3, n_tok)):
        _item3(AVX2, w1, g1, o1, w2, g2, o2, w3, g3, o3, x, n_tok, nb, i, x16, xd)


@njit(**PARALLEL)
def _gemm3_r8_scalar(w1, g1, o1, w2, g2, o2, w3, g3, o3, x, n_tok, nb, x16, xd):
    for i in prange(r8_items(g1, n_tok) + r8_items(g2, n_tok) + r8_items(g3, n_tok)):
        _item3(SCALAR, w1, g1, o1, w2, g2, o2, w3, g3, o3, x, n_tok, nb, i, x16, xd)


def gemm_q8_0_r8(w: np.ndarray, xq: np.ndarray, out: np.ndarray | None = None,
                 simd: str | None = None) -> np.ndarray:
    """Y = X W^T with W (n_out/8, nb*272) Q8_0_R8 and X (n_tok, nb*34) Q8_0 -> (n_tok, n_out) f32.

    Same sums as ``matmul.gemm_q8_0`` on the unpacked W: each 32-block dot exact in
    int32, scaled by d_w*d_x and summed over blocks in f32 (in a different order, so
    results agree to f32 rounding, not bit for bit).
    """
    if w.ndim != 2 or xq.ndim != 2 or w.dtype != np.uint8 or xq.dtype != np.uint8:
        raise ValueError(f"gemm_q8_0_r8: expected 2-D uint8 W and X, got {w.dtype}{w.shape}, {xq.dtype}{xq.shape}")
    if w.shape[1] % R8_BLOCK_BYTES or xq.shape[1] % Q8_0_BYTES or \
            w.shape[1] // R8_BLOCK_BYTES != xq.shape[1] // Q8_0_BYTES:
        raise ValueError(f"gemm_q8_0_r8: W {w.shape} (R8) and X {xq.shape} (Q8_0) blocks do not match")
    if not (w.flags.c_contiguous and xq.flags.c_contiguous):
        raise ValueError("gemm_q8_0_r8: W and X must be C-contiguous")
    n_groups = w.shape[0]
    n_tok, rb = xq.shape
    n_out = n_groups * 8
    if out is None:
        out = np.empty((n_tok, n_out), dtype=np.float32)
    elif out.shape != (n_tok, n_out) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"gemm_q8_0_r8: out must be contiguous f32 {(n_tok, n_out)}")
    kind = isa(simd)
    kernel = _gemm_r8_avx2 if kind == AVX2 else _gemm_r8_scalar
    kernel(w.reshape(-1), n_groups, xq.reshape(-1), n_tok, rb // Q8_0_BYTES, out.reshape(-1), *widen_x(xq, kind))
    return out


# -- K-cache repack policy and scratch ---------------------------------------------------

def k_repack_applies(mode: str, n_q: int, n_kv: int, type_k: str, head_dim: int) -> bool:
    """Whether a flash-attention batch of n_q queries over n_kv positions reads K as Q8_0_R8.

    auto: ik_llama.cpp's rule: n_q >= 8 (PP, never TG), K q8_0, head_dim % 32 == 0 and
    n_kv % 8 == 0. on: every PP batch (n_q > 1) with a q8_0 K (the last group is
    zero-padded). off: never (ik PR 315).
    """
    if mode not in K_REPACK_MODES:
        raise ValueError(f"--k-repack: unknown mode {mode!r} (allowed: {', '.join(K_REPACK_MODES)})")
    if mode == "off" or type_k != "q8_0" or head_dim % QK8_0 or n_q < 2:
        return False
    if mode == "on":
        return True
    return n_q >= 8 and n_kv % R8_ROWS == 0


class RepackScratch:
    """Grow-only buffer for repacked K views, like ik's CPU work buffer (never shrunk).

    ``hwm_bytes`` is the allocation (the high-water mark); ``last_bytes`` is the most
    any layer needed since ``reset()`` (the model resets it at every eval), i.e. the
    scratch the last batch needed. Pages are touched as K is repacked into them.
    """

    def __init__(self) -> None:
        self.buf = np.empty(0, dtype=np.uint8)
        self.last_bytes = 0

    def reset(self) -> None:
        self.last_bytes = 0

    def get(self, nbytes: int) -> np.ndarray:
        if nbytes > self.buf.shape[0]:
            self.buf = np.empty(0, dtype=np.uint8)   # free the old one first, as a realloc would
            self.buf = np.empty(nbytes, dtype=np.uint8)
        self.last_bytes = max(self.last_bytes, nbytes)
        return self.buf

    @property
    def hwm_bytes(self) -> int:
        return int(self.buf.shape[0])


_EMPTY_W = np.zeros((0,), dtype=np.uint8)
_EMPTY_O = np.zeros((0,), dtype=np.float32)


def gemm_q8_0_r8_multi(ws, xq: np.ndarray, simd: str | None = None) -> list[np.ndarray]:
    """[X W_i^T for W_i in ws] for 1-3 Q8_0_R8 matrices with the same blocks per row, one launch."""
    if not 1 <= len(ws) <= 3:
        raise ValueError(f"gemm_q8_0_r8_multi: 1 to 3 matrices, got {len(ws)}")
    if xq.ndim != 2 or xq.dtype != np.uint8 or xq.shape[1] % Q8_0_BYTES or not xq.flags.c_contiguous:
        raise ValueError(f"gemm_q8_0_r8_multi: X must be contiguous Q8_0 bytes, got {xq.dtype}{xq.shape}")
    nb = xq.shape[1] // Q8_0_BYTES
    for w in ws:
        if w.ndim != 2 or w.dtype != np.uint8 or w.shape[1] != nb * R8_BLOCK_BYTES or not w.flags.c_contiguous:
            raise ValueError(f"gemm_q8_0_r8_multi: W {w.dtype}{w.shape} (R8) does not match X {xq.shape}")
    n_tok = xq.shape[0]
    outs = [np.empty((n_tok, w.shape[0] * 8), dtype=np.float32) for w in ws]
    args = []
    for k in range(3):
        args += [ws[k].reshape(-1), ws[k].shape[0], outs[k].reshape(-1)] if k < len(ws) else [_EMPTY_W, 0, _EMPTY_O]
    kind = isa(simd)
    kernel = _gemm3_r8_avx2 if kind == AVX2 else _gemm3_r8_scalar
    kernel(*args, xq.reshape(-1), n_tok, nb, *widen_x(xq, kind))
    return outs


# -- attention scores over a repacked K view ----------------------------------------------

@njit(**NJIT)
def scores_r8(kind, s, CH, kb, krow, khead_off, p0, cnt, qq, q0_off, qhb, ncol, g, cstride_pair, qrow):
    """engine.attention.scores_q8 over a repacked K view: s[col*CH + p] = K[p0+p] . Q[col].

    kb is the repacked view and krow the byte size of one head's R8 matrix (rows_pad *
    qhb). khead_off = kvh * qhb (as for the plain cache), so the head's base is
    khead_off // qhb * krow. p0 is a multiple of 8 (flash chunks are 64 positions; the
    plain path starts at 0); a partial last group is computed into a temporary (the
    padded rows exist in the view) and only cnt - p values are kept.
    """
    numba.literally(kind)
    nb = qhb // Q8_0_BYTES
    hbase = (khead_off // qhb) * krow
    tmp = np.empty(32, dtype=np.float32)
    p = 0
    while p < cnt:
        wo = hbase + ((p0 + p) // 8) * nb * R8_BLOCK_BYTES
        full = p + 8 <= cnt
        col = 0
        while col < ncol:
            nc = min(4, ncol - col)
            if nc == 3:
                nc = 2
            x0 = q0_off + (col // g) * qrow + (col % g) * qhb
            c1 = col + 1
            x1 = q0_off + (c1 // g) * qrow + (c1 % g) * qhb
            c2 = col + 2
            x2 = q0_off + (c2 // g) * qrow + (c2 % g) * qhb
            c3 = col + 3
            x3 = q0_off + (c3 // g) * qrow + (c3 % g) * qhb
            if full:
                r8_tile(kind, s, col * CH + p, CH, kb, wo, qq, x0, x1, x2, x3, nb, nc)
            else:
                r8_tile(kind, tmp, 0, 8, kb, wo, qq, x0, x1, x2, x3, nb, nc)
                for c in range(nc):
                    for k in range(cnt - p):
                        s[(col + c) * CH + p + k] = tmp[c * 8 + k]
            col += nc
        p += 8
