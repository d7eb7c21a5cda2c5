"""Causal attention over the KV cache: flash (online softmax) and plain.

Query i of a batch sits at absolute position pos0+i and attends to cache
positions [0, pos0+i], or with a sliding window of w (Gemma's local layers) to
[pos0+i-w+1, pos0+i]: llama.cpp masks kv position p for query position t when
t - p >= w. Chunks wholly before a block's window are never read. Work items are (block of up to 8 queries, KV head): the
queries of a block and the g = n_head/n_kv_head query heads of a GQA group share
every K/V chunk that is loaded (and dequantized) once per item.

* flash: positions in chunks of 64; per chunk compute scores, update the running
  max m, the running sum l and the accumulator acc (rescaled by exp(m_old-m_new));
  never materializes an n_q x n_kv matrix.
* plain (no -fa): one chunk covering every position: the full score row, a
  softmax, then the weighted sum of V (ggml's soft_max(KQ) V).

K in q8_0 is dotted with Q quantized to Q8_0 (what ggml's CPU path does for a
q8_0 cache) using the int8 tiles of ``_simd``; f16/f32 K and every V type are
converted to f32 per chunk. With ``k_repack`` the q8_0 K view is first repacked to
Q8_0_R8 (engine.q8_0_r8) and scored 8 positions per vector (flash path only).
On AVX2 (head_dim_v % 16 == 0) the probabilities of a chunk are written back into
the score rows (a polynomial exp that vectorizes) and P.V runs in register tiles of
4 query columns x 16 values (engine._simd_f32); q8_0 V rows convert with an intrinsic.
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from engine import _numba
from engine._numba import NJIT, PARALLEL
from engine._simd import f16_to_f32, f32_from_bits, q8_tile_1x1, q8_tile_4x1, q8_tile_4x2
from engine._simd_f32 import pv_tile_1x2, pv_tile_4x2, q8_0_to_f32
from engine.kvcache import KVCache
from engine.matmul import dot_q8_0_scalar
from engine.q8_0_r8 import (RepackScratch, _scores_r8_avx2, _scores_r8_scalar, k_repack_applies,
                             k_view_bytes, repack_k_view)
from engine.quant import f16_bits_to_f32, quantize_q8_0

QUERY_BLOCK = 8
FLASH_CHUNK = 64
_TYPE_CODE = {"f32": 0, "f16": 1, "q8_0": 2}


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
def _scores_q8_avx2(s, CH, kb, krow, khead_off, p0, cnt, qq, q0_off, qhb, ncol, g, cstride_pair, qrow):
    # s[col*CH + p] = K[p0+p] . Q[col]; column col = (query col//g, group head col%g)
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
            if four and pair:
                q8_tile_4x2(s, col * CH + p, CH, kb, kof, krow, qq, xo, cstride_pair, qhb // 34)
                col += 2
            elif four:
                q8_tile_4x1(s, col * CH + p, CH, kb, kof, krow, qq, xo, cstride_pair, qhb // 34)
                col += 1
            else:
                q8_tile_1x1(s, col * CH + p, 0, kb, kof, krow, qq, xo, 0, qhb // 34)
                col += 1
        p += 4 if four else 1


@njit(**NJIT)
def _scores_q8_scalar(s, CH, kb, krow, khead_off, p0, cnt, qq, q0_off, qhb, ncol, g, cstride_pair, qrow):
    for p in range(cnt):
        kof = (p0 + p) * krow + khead_off
        for col in range(ncol):
            qi = col // g
            j = col - qi * g
            s[col * CH + p] = dot_q8_0_scalar(kb, kof, qq, q0_off + qi * qrow + j * qhb, qhb // 34)


@njit(**NJIT)
def _f16_run_avx2(dst, dst_off, src, src_off, n):
    f16_to_f32(dst, dst_off, src, src_off, n)


@njit(**NJIT)
def _f16_run_scalar(dst, dst_off, src, src_off, n):
    for i in range(n):
        b = src_off + 2 * i
        dst[dst_off + i] = f16_bits_to_f32(np.int64(src[b]) | (np.int64(src[b + 1]) << 8))


@njit(**NJIT)
def _rows_to_f32(avx2, af, ab, atype, row_bytes, head, hd, p0, cnt, buf):
    # buf[p*hd + d] = value d of head `head` at position p0+p; buf: flat f32
    for p in range(cnt):
        pos = p0 + p
        if atype == 0:
            for d in range(hd):
                buf[p * hd + d] = af[pos, head * hd + d]
        elif atype == 1:
            if avx2:
                _f16_run_avx2(buf, p * hd, ab, pos * row_bytes + head * hd * 2, hd)
            else:
                _f16_run_scalar(buf, p * hd, ab, pos * row_bytes + head * hd * 2, hd)
        elif avx2:
            q8_0_to_f32(buf, p * hd, ab, pos * row_bytes + head * (hd // 32) * 34, hd // 32)
        else:
            base = pos * row_bytes + head * (hd // 32) * 34
            for b in range(hd // 32):
                o = base + b * 34
                dd = f16_bits_to_f32(np.int64(ab[o]) | (np.int64(ab[o + 1]) << 8))
                for t in range(32):
                    v = np.int64(ab[o + 2 + t])
                    if v > 127:
                        v -= 256
                    buf[p * hd + b * 32 + t] = dd * np.float32(v)


@njit(**NJIT)
def _attention_item(kind, item, q, qq, kf, kb, ktype, krow, vf, vb, vtype, vrow,
                    n_kv_head, pos0, scale, chunk, window, out):
    # One work item (block of <= 8 queries, KV head) of the attention below. kind (a
    # compile-time literal): 0 q8_0 K AVX2, 1 q8_0 K scalar, 2 Q8_0_R8 K AVX2, 3 R8 scalar.
    numba.literally(kind)
    avx2 = kind == 0 or kind == 2
    # q: (n_q, n_head, hd) f32; qq: flat Q8_0 of q (when ktype == 2)
    # kf/vf: (n_ctx, n_kv_head*hd) f32 or dummy; kb/vb: flat cache bytes or dummy
    # out: (n_q, n_head, hdv) f32; window: sliding-window length (0 = none)
    n_q, n_head, hd = q.shape
    hdv = out.shape[2]
    g = n_head // n_kv_head
    qhb = (hd // 32) * 34
    qrow = n_head * qhb
    cstride_pair = qhb if g > 1 else qrow
    blk = item // n_kv_head
    kvh = item - blk * n_kv_head
    i0 = blk * 8
    nqb = min(8, n_q - i0)
    ncol = nqb * g
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
    for p0 in range(start, n_att_max, CH):
        cnt = min(CH, n_att_max - p0)
        if ktype == 2:
            q0_off = i0 * qrow + kvh * g * qhb
            if kind == 0:
                _scores_q8_avx2(s, CH, kb, krow, kvh * qhb, p0, cnt, qq, q0_off, qhb, ncol, g, cstride_pair, qrow)
            elif kind == 1:
                _scores_q8_scalar(s, CH, kb, krow, kvh * qhb, p0, cnt, qq, q0_off, qhb, ncol, g, cstride_pair, qrow)
            elif kind == 2:
                _scores_r8_avx2(s, CH, kb, krow, kvh * qhb, p0, cnt, qq, q0_off, qhb, ncol, g, cstride_pair, qrow)
            else:
                _scores_r8_scalar(s, CH, kb, krow, kvh * qhb, p0, cnt, qq, q0_off, qhb, ncol, g, cstride_pair, qrow)
        else:
            _rows_to_f32(avx2, kf, kb, ktype, krow, kvh, hd, p0, cnt, kbuf)
            for col in range(ncol):
                qi = col // g
                h = kvh * g + (col - qi * g)
                for p in range(cnt):
                    a = np.float32(0.0)
                    for d in range(hd):
                        a += q[i0 + qi, h, d] * kbuf[p * hd + d]
                    s[col * CH + p] = a
        _rows_to_f32(avx2, vf, vb, vtype, vrow, kvh, hdv, p0, cnt, vbuf)
        tiled = avx2 and hdv % 16 == 0   # P.V with register tiles (engine._simd_f32)
        for col in range(ncol):
            qi = col // g
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
        qi = col // g
        h = kvh * g + (col - qi * g)
        inv = np.float32(1.0) / l[col]
        for d in range(hdv):
            out[i0 + qi, h, d] = acc[col, d] * inv


# Cached entry points. Passing dispatchers as arguments made the kernel uncacheable
# (a dispatcher argument is a Python-object constant: every process recompiled it,
# ~10-30 s, and appended another cache entry); the scorer is now chosen by a literal
# int, so each entry point compiles only its own branch (no AVX2 code in the scalar one).
@njit(**PARALLEL)
def _attention_avx2(r8, q, qq, kf, kb, ktype, krow, vf, vb, vtype, vrow, n_kv_head, pos0, scale, chunk, window,
                    out):
    # q: (n_q, n_head, hd) f32; qq: flat Q8_0 of q (when ktype == 2), krow: K row bytes
    # (or one head's R8 matrix bytes when r8); kf/vf: (n_ctx, n_kv_head*hd) f32 or dummy;
    # kb/vb: flat cache bytes (kb: the repacked view when r8) or dummy; out: (n_q, n_head, hdv) f32
    for item in prange(((q.shape[0] + 7) // 8) * n_kv_head):
        if r8:
            _attention_item(2, item, q, qq, kf, kb, ktype, krow, vf, vb,
                            vtype, vrow, n_kv_head, pos0, scale, chunk, window, out)
        else:
            _attention_item(0, item, q, qq, kf, kb, ktype, krow, vf, vb,
                            vtype, vrow, n_kv_head, pos0, scale, chunk, window, out)


@njit(**PARALLEL)
def _attention_scalar(r8, q, qq, kf, kb, ktype, krow, vf, vb, vtype, vrow, n_kv_head, pos0, scale, chunk, window,
                      out):
    for item in prange(((q.shape[0] + 7) // 8) * n_kv_head):
        if r8:
            _attention_item(3, item, q, qq, kf, kb, ktype, krow, vf, vb,
                            vtype, vrow, n_kv_head, pos0, scale, chunk, window, out)
        else:
            _attention_item(1, item, q, qq, kf, kb, ktype, krow, vf, vb,
                            vtype, vrow, n_kv_head, pos0, scale, chunk, window, out)


_DUMMY_F = np.zeros((1, 1), dtype=np.float32)
_DUMMY_B = np.zeros(1, dtype=np.uint8)


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
    q = np.ascontiguousarray(q, dtype=np.float32)
    avx2 = (simd or _numba.SIMD) == "avx2"
    kt, vt = _TYPE_CODE[cache.type_k], _TYPE_CODE[cache.type_v]
    K, V = cache.k[layer], cache.v[layer]
    kf, kb = (K, _DUMMY_B) if kt == 0 else (_DUMMY_F, K.view(np.uint8).reshape(-1))
    vf, vb = (V, _DUMMY_B) if vt == 0 else (_DUMMY_F, V.view(np.uint8).reshape(-1))
    qq = quantize_q8_0(q.reshape(n_q * n_head, hd)).reshape(-1) if kt == 2 else _DUMMY_B
    if out is None:
        out = np.empty((n_q, n_head, cache.head_dim_v), dtype=np.float32)
    r8, krow = False, K.shape[1] * K.itemsize
    n_kv = pos0 + n_q
    if flash and scratch is not None and k_repack_applies(k_repack, n_q, n_kv, cache.type_k, hd):
        need = k_view_bytes(n_kv, cache.n_kv_head, hd)
        kb = repack_k_view(K, n_kv, cache.n_kv_head, hd, scratch.get(need))
        r8, krow = True, need // cache.n_kv_head   # krow: bytes of one head's R8 matrix
    (_attention_avx2 if avx2 else _attention_scalar)(
               r8, q, qq, kf, kb, kt, krow, vf, vb, vt, V.shape[1] * V.itemsize,
               cache.n_kv_head, pos0, np.float32(scale if scale is not None else 1.0 / math.sqrt(hd)),
               FLASH_CHUNK if flash else 0, int(window), out)
    return out
