"""Causal attention over the KV cache: flash (online softmax) and plain.

Query i of a batch sits at absolute position pos0+i and attends to cache
positions [0, pos0+i], or with a sliding window of w (Gemma's local layers) to
[pos0+i-w+1, pos0+i]: llama.cpp masks kv position p for query position t when
t - p >= w. Chunks wholly before a block's window are never read. Work items are
(block of up to 8 queries, KV head, group of its query heads): the queries of a block
and the query heads of a GQA group share every K/V chunk that is loaded (and
dequantized) once per item. Normally a group is all g = n_head/n_kv_head heads of a
KV head; MLA's absorbed attention (engine.mla: one latent KV head shared by every
head, V = the first values of each K row) splits them into smaller groups.

* flash: positions in chunks of 64; per chunk compute scores, update the running
  max m, the running sum l and the accumulator acc (rescaled by exp(m_old-m_new));
  never materializes an n_q x n_kv matrix.
* plain (no -fa): one chunk covering every position: the full score row, a
  softmax, then the weighted sum of V (ggml's soft_max(KQ) V).

K in q8_0 is dotted with Q quantized to Q8_0 (what ggml's CPU path does for a
q8_0 cache) with ``engine.tiles.q8_tile``; f16/f32 K and every V type are
converted to f32 per chunk. One body serves the AVX2 and the scalar path (the
literal ``kind``, see engine._numba). With ``k_repack`` the q8_0 K view is first repacked to
Q8_0_R8 (engine.q8_0_r8) and scored 8 positions per vector (flash path only).
On AVX2 (head_dim_v % 16 == 0) the probabilities of a chunk are written back into
the score rows (a polynomial exp that vectorizes) and P.V runs in register tiles of
4 query columns x 16 values (engine._simd_f32); q8_0 V rows convert with an intrinsic.
(The MLA caller keeps the plain exp and P.V loop: ``pv_tiles=False``.)
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from engine._numba import AVX2, NJIT, PARALLEL, SCALAR, isa
from engine._simd import f32_from_bits
from engine._simd_f32 import pv_tile_1x2, pv_tile_4x2
from engine.kvcache import KV_TYPE_CODE, KVCache
from engine.layout import Q8_0_BYTES, QK8_0
from engine.q8_0_r8 import RepackScratch, k_repack_applies, k_view_bytes, repack_k_view, scores_r8
from engine.quant import quantize_q8_0
from engine.tiles import f16_row, q8_0_row, q8_tile

QUERY_BLOCK = 8    # queries per work item (16 when an item holds one query head: see _query_block)
FLASH_CHUNK = 64


@njit(inline="always", **NJIT)
def _exp_f32(x):
    # exp(x) for x <= 0 in f32 without a libm call (so loops over it vectorize): Cephes
    # expf's range reduction and polynomial, max relative error ~1e-7 vs exp; x < -87
    # (where exp underflows anyway) is clamped to -87.
    x = max(x, np.float32(-87.0))
    n = np.floor(x * np.float32(1.44269504088896341) + np.float32(0.5))
    r = x - n * np.float32(0.693359375) - n * np.float32(-2.12194440e-4)
    p = np.float32(1.9875691500e-4)
    p = p * r + np.float32(1.3981999507e-3)
    p = p * r + np.float32(8.3334519073e-3)
    p = p * r + np.float32(4.1665795894e-2)
    p = p * r + np.float32(1.6666665459e-1)
    p = p * r + np.float32(5.0000001201e-1)
    return (p * r * r + r + np.float32(1.0)) * f32_from_bits(np.uint32((np.int32(n) + 127) << 23))


@njit(inline="always", **NJIT)
def online_rescale(s, base, lim, scale, m, l, acc, col):
    """Online softmax, step 1 for one column: scale its scores s[base:base+lim] in place,
    return the new running max, and rescale l[col] and acc[col] by exp(m_old - m_new)."""
    mx = m[col]
    for p in range(lim):
        v = s[base + p] * scale
        s[base + p] = v
        if v > mx:
            mx = v
    corr = np.float32(0.0) if m[col] == -np.inf else np.exp(m[col] - mx)
    if corr != 1.0:
        l[col] *= corr
        for d in range(acc.shape[1]):
            acc[col, d] *= corr
    return mx


@njit(inline="always", **NJIT)
def online_accumulate(s, base, lim, mx, l, acc, col, vbuf):
    """Online softmax, step 2 (plain loops): add exp(s - mx) to l[col] and P.V to acc[col]."""
    hdv = acc.shape[1]
    for p in range(lim):
        e = np.exp(s[base + p] - mx)
        l[col] += e
        for d in range(hdv):
            acc[col, d] += e * vbuf[p * hdv + d]


@njit(**NJIT)
def scores_q8(kind, s, CH, kb, krow, khead_off, p0, cnt, qq, q0_off, qhb, ncol, g, cstride_pair, qrow):
    """s[col*CH + p] = K[p0+p] . Q[col] for p < cnt, col < ncol: column col = (query col//g,
    head col%g of the item). K rows (flat Q8_0 bytes kb, krow bytes per position) start at
    khead_off; Q rows (flat qq) at q0_off + query*qrow + head*qhb; qhb bytes per head."""
    numba.literally(kind)
    nb = qhb // Q8_0_BYTES
    p = 0
    while p < cnt:
        four = p + 4 <= cnt
        kof = (p0 + p) * krow + khead_off
        col = 0
        while col < ncol:
            qi = col // g
            j = col - qi * g
            xo = q0_off + qi * qrow + j * qhb
            pair = (j + 1 < g) if g > 1 else (col + 1 < ncol)
            if four:
                nc = 2 if pair else 1
                q8_tile(kind, s, col * CH + p, CH, kb, kof, krow, qq, xo, cstride_pair, nb, 4, nc)
                col += nc
            else:
                q8_tile(kind, s, col * CH + p, 0, kb, kof, krow, qq, xo, 0, nb, 1, 1)
                col += 1
        p += 4 if four else 1


@njit(**NJIT)
def _rows_to_f32(kind, af, ab, atype, row_bytes, head, hd, p0, cnt, buf):
    # buf[p*hd + d] = value d of head `head` at position p0+p; buf: flat f32
    numba.literally(kind)
    for p in range(cnt):
        pos = p0 + p
        if atype == 0:
            for d in range(hd):
                buf[p * hd + d] = af[pos, head * hd + d]
        elif atype == 1:
            f16_row(kind, buf, p * hd, ab, pos * row_bytes + head * hd * 2, hd)
        else:
            q8_0_row(kind, buf, p * hd, ab, pos * row_bytes + head * (hd // QK8_0) * Q8_0_BYTES, hd // QK8_0)


@njit(inline="always", **NJIT)
def _query_block(gh):
    # Queries per work item. Each loaded K/V chunk serves (queries x heads) columns; with one
    # head per item (MHA, MLA's decompressed heads) 8 columns leave the item load-bound:
    # 16 queries measured 1.2x on 16 heads x 192/128 dims at depth 1536 (32: 1.13x);
    # GQA items (>= 2 heads) already share each chunk, and 16 gained nothing there.
    return 2 * QUERY_BLOCK if gh == 1 else QUERY_BLOCK


@njit(inline="always", **NJIT)
def _n_items(n_q, n_head, n_kv_head, gh):
    # work items: query blocks x KV heads x groups of gh of the KV head's query heads
    g = n_head // n_kv_head
    qb = _query_block(gh)
    return ((n_q + qb - 1) // qb) * n_kv_head * ((g + gh - 1) // gh)


@njit(**NJIT)
def _attention_item(kind, r8, item, q, qq, kf, kb, ktype, krow, vf, vb, vtype, vrow,
                    n_kv_head, gh, pos0, scale, chunk, window, pv_tiles, out):
    # One work item (block of <= 8 or 16 queries, KV head, group of <= gh of its query heads).
    # kind: the ISA literal; r8: K is a repacked Q8_0_R8 view (krow = one head's R8 bytes).
    # q: (n_q, n_head, hd) f32; qq: flat Q8_0 of q (when ktype == 2)
    # kf/vf: (n_ctx, n_kv_head*hd) f32 or dummy; kb/vb: flat cache bytes or dummy
    # out: (n_q, n_head, hdv) f32; window: sliding-window length (0 = none)
    numba.literally(kind)
    n_q, n_head, hd = q.shape
    hdv = out.shape[2]
    g = n_head // n_kv_head
    ngr = (g + gh - 1) // gh
    qhb = (hd // QK8_0) * Q8_0_BYTES
    qrow = n_head * qhb
    per_blk = n_kv_head * ngr
    blk = item // per_blk
    rem = item - blk * per_blk
    kvh = rem // ngr
    h0 = kvh * g + (rem - kvh * ngr) * gh
    gi = min(gh, kvh * g + g - h0)             # query heads in this item
    cstride_pair = qhb if gi > 1 else qrow
    qb = _query_block(gh)
    i0 = blk * qb
    nqb = min(qb, n_q - i0)
    ncol = nqb * gi
    n_att_max = pos0 + i0 + nqb
    # first position any query of the block may see, rounded down to 64 so the Q8_0_R8
    # view (8-position groups) and the flash chunks stay aligned
    start = 0
    if window > 0:
        start = max(0, pos0 + i0 - window + 1) // 64 * 64
    CH = chunk if chunk > 0 else n_att_max - start
    s = np.empty(ncol * CH, dtype=np.float32)
    kbuf = np.empty(CH * hd if ktype != 2 else 1, dtype=np.float32)
    vbuf = np.empty(CH * hdv, dtype=np.float32)
    m = np.full(ncol, -np.inf, dtype=np.float32)
    l = np.zeros(ncol, dtype=np.float32)
    acc = np.zeros((ncol, hdv), dtype=np.float32)
    tiled = kind == AVX2 and pv_tiles and hdv % 16 == 0   # P.V with register tiles (engine._simd_f32)
    for p0 in range(start, n_att_max, CH):
        cnt = min(CH, n_att_max - p0)
        if ktype == 2:
            q0_off = i0 * qrow + h0 * qhb
            if r8:
                scores_r8(kind, s, CH, kb, krow, kvh * qhb, p0, cnt, qq, q0_off, qhb, ncol, gi, cstride_pair, qrow)
            else:
                scores_q8(kind, s, CH, kb, krow, kvh * qhb, p0, cnt, qq, q0_off, qhb, ncol, gi, cstride_pair, qrow)
        else:
            _rows_to_f32(kind, kf, kb, ktype, krow, kvh, hd, p0, cnt, kbuf)
            for col in range(ncol):
                qi = col // gi
                h = h0 + (col - qi * gi)
                for p in range(cnt):
                    a = np.float32(0.0)
                    for d in range(hd):
                        a += q[i0 + qi, h, d] * kbuf[p * hd + d]
                    s[col * CH + p] = a
        _rows_to_f32(kind, vf, vb, vtype, vrow, kvh, hdv, p0, cnt, vbuf)
        for col in range(ncol):
            qi = col // gi
            lim = min(cnt, pos0 + i0 + qi + 1 - p0)  # causal: positions <= pos0+i0+qi
            lo = 0                                   # window: positions > pos0+i0+qi-window
            if window > 0:
                lo = max(0, pos0 + i0 + qi - window + 1 - p0)
            if lim <= lo:
                if tiled:
                    for p in range(cnt):
                        s[col * CH + p] = 0.0
                continue
            for p in range(lo):
                s[col * CH + p] = -np.inf
            mx = online_rescale(s, col * CH, lim, scale, m, l, acc, col)
            if tiled:   # probabilities into s (0 past the causal limit); P.V below
                sv = s[col * CH:col * CH + lim]   # a view: LLVM vectorizes sv[p] (not s[base+p])
                for p in range(lim):
                    sv[p] = _exp_f32(sv[p] - mx)
                for p in range(lo):                  # _exp_f32 clamps: make masked ones exact 0
                    sv[p] = 0.0
                ls = l[col]
                for p in range(lim):
                    ls += sv[p]
                l[col] = ls
                for p in range(lim, cnt):
                    s[col * CH + p] = 0.0
            else:
                online_accumulate(s, col * CH, lim, mx, l, acc, col, vbuf)
            m[col] = mx
        if tiled:
            col = 0
            while col < ncol:
                four = col + 4 <= ncol
                for d0 in range(0, hdv, 16):
                    if four:
                        pv_tile_4x2(acc, col * hdv + d0, hdv, s, col * CH, CH, vbuf, d0, hdv, cnt)
                    else:
                        pv_tile_1x2(acc, col * hdv + d0, hdv, s, col * CH, CH, vbuf, d0, hdv, cnt)
                col += 4 if four else 1
    for col in range(ncol):
        qi = col // gi
        h = h0 + (col - qi * gi)
        inv = np.float32(1.0) / l[col]
        for d in range(hdv):
            out[i0 + qi, h, d] = acc[col, d] * inv


# Cached entry points, one per ISA (see engine._numba): they differ only in the literal kind.
# (Passing the scorer or the ISA as an argument made the kernel uncacheable: every process
# recompiled it, ~10-30 s.)
@njit(**PARALLEL)
def _attention_avx2(r8, q, qq, kf, kb, ktype, krow, vf, vb, vtype, vrow, n_kv_head, gh, pos0, scale, chunk,
                    window, pv_tiles, out):
    for item in prange(_n_items(q.shape[0], q.shape[1], n_kv_head, gh)):
        _attention_item(AVX2, r8, item, q, qq, kf, kb, ktype, krow, vf, vb, vtype, vrow,
                        n_kv_head, gh, pos0, scale, chunk, window, pv_tiles, out)


@njit(**PARALLEL)
def _attention_scalar(r8, q, qq, kf, kb, ktype, krow, vf, vb, vtype, vrow, n_kv_head, gh, pos0, scale, chunk,
                      window, pv_tiles, out):
    for item in prange(_n_items(q.shape[0], q.shape[1], n_kv_head, gh)):
        _attention_item(SCALAR, r8, item, q, qq, kf, kb, ktype, krow, vf, vb, vtype, vrow,
                        n_kv_head, gh, pos0, scale, chunk, window, pv_tiles, out)


_DUMMY_F = np.zeros((1, 1), dtype=np.float32)
_DUMMY_B = np.zeros(1, dtype=np.uint8)


def attend(q: np.ndarray, K: np.ndarray, type_k: str, V: np.ndarray, type_v: str, head_dim_v: int,
           n_kv_head: int, pos0: int, *, flash: bool, scale: float, window: int = 0, heads_per_item: int = 0,
           pv_tiles: bool = True, k_r8: tuple[np.ndarray, int] | None = None, simd: str | None = None,
           out: np.ndarray | None = None) -> np.ndarray:
    """The kernel launch behind ``attention`` (and engine.mla's absorbed attention).

    q: (n_q, n_head, hd) f32 at positions [pos0, pos0+n_q); K, V: cache arrays (n_ctx, row) in
    their types (engine.kvcache layout; head h's values at [h*hd, (h+1)*hd) of a row, V's at
    [h*head_dim_v, ...)); heads_per_item: split each KV head's query heads into work items
    of this many (0 = all); k_r8: (repacked K view, bytes of one head's R8 matrix) to score
    from instead of K. Returns (n_q, n_head, head_dim_v) f32.
    """
    n_q, n_head, hd = q.shape
    q = np.ascontiguousarray(q, dtype=np.float32)
    kt, vt = KV_TYPE_CODE[type_k], KV_TYPE_CODE[type_v]
    kf, kb = (K, _DUMMY_B) if kt == 0 else (_DUMMY_F, K.view(np.uint8).reshape(-1))
    vf, vb = (V, _DUMMY_B) if vt == 0 else (_DUMMY_F, V.view(np.uint8).reshape(-1))
    qq = quantize_q8_0(q.reshape(n_q * n_head, hd)).reshape(-1) if kt == 2 else _DUMMY_B
    if out is None:
        out = np.empty((n_q, n_head, head_dim_v), dtype=np.float32)
    r8, krow = False, K.shape[1] * K.itemsize
    if k_r8 is not None:
        (kb, krow), r8 = k_r8, True
    gh = heads_per_item if heads_per_item > 0 else n_head // n_kv_head
    (_attention_avx2 if isa(simd) == AVX2 else _attention_scalar)(
        r8, q, qq, kf, kb, kt, krow, vf, vb, vt, V.shape[1] * V.itemsize, n_kv_head, gh, pos0,
        np.float32(scale), FLASH_CHUNK if flash else 0, int(window), bool(pv_tiles), out)
    return out


def attention(q: np.ndarray, cache: KVCache, layer: int, pos0: int, *, flash: bool,
              scale: float | None = None, simd: str | None = None,
              out: np.ndarray | None = None, k_repack: str = "off",
              scratch: RepackScratch | None = None, window: int = 0) -> np.ndarray:
    """Causal attention of q (n_q, n_head, hd) f32 over cache positions [0, pos0+n_q).

    window > 0: query at position t sees only [t-window+1, t] (sliding-window layers).

    k_repack (auto|on|off, flash only, needs a scratch): when ``k_repack_applies``, the
    layer's K view [0, pos0+n_q) x n_kv_head is first repacked to Q8_0_R8 into the
    grow-only scratch, then scored with the interleaved kernel (ik's CPU FA path).
    """
    n_q, n_head, hd = q.shape
    if n_head % cache.n_kv_head or hd != cache.head_dim_k:
        raise ValueError(f"attention: q {q.shape} does not fit cache heads {cache.n_kv_head}x{cache.head_dim_k}")
    if pos0 + n_q > cache.n_ctx:
        raise ValueError(f"attention: positions up to {pos0 + n_q} exceed n_ctx {cache.n_ctx}")
    if window < 0:
        raise ValueError(f"attention: window must be >= 0, got {window}")
    K = cache.k[layer]
    n_kv = pos0 + n_q
    k_r8 = None
    if flash and scratch is not None and k_repack_applies(k_repack, n_q, n_kv, cache.type_k, hd):
        need = k_view_bytes(n_kv, cache.n_kv_head, hd)
        k_r8 = (repack_k_view(K, n_kv, cache.n_kv_head, hd, scratch.get(need)), need // cache.n_kv_head)
    return attend(q, K, cache.type_k, cache.v[layer], cache.type_v, cache.head_dim_v, cache.n_kv_head, pos0,
                  flash=flash, scale=scale if scale is not None else 1.0 / math.sqrt(hd), window=window,
                  k_r8=k_r8, simd=simd, out=out)
