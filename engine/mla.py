"""MLA (multi-head latent attention, DeepSeek-2/3) over the compressed c^KV cache.

Cache (``MLACache``): per layer and position one row [c_kv (kv_lora_rank) | k_pe
(n_rot)] in the K cache type (f32, f16 or q8_0; q8_0 needs both parts to be
whole 32-blocks, so V's view of the row is whole blocks too). There is no
separate V cache: V is the view of the first kv_lora_rank values of each row
(ik_llama.cpp's layout; ``-ctv`` is recorded but unused).

Per head h, with W_kb[h] (rank, nope) and W_vb[h] (v_dim, rank) the two halves of
``attn_kv_b`` (or ik/mainline's split ``attn_k_b`` / ``attn_v_b``):

* decompressed (``decompressed_attention``): K[h] = [c W_kb[h] | k_pe],
  V[h] = c W_vb[h]^T are materialized for a group of heads over all n_kv cached
  positions (one Q8_0 GEMM with the group's rows of attn_kv_b), then the normal
  flash/plain attention (engine.attention) runs on them. K is materialized in
  the K cache type, V in f32.
* absorbed (``absorbed_attention``): q_abs[h] = [W_kb[h]^T q_nope[h] | q_pe[h]]
  (rank + n_rot values) is dotted with the cached rows directly (MQA: one shared
  "KV head" for all heads), the softmax-weighted sum of c gives o_c[h] (rank
  values) and the output is W_vb[h] o_c[h]. Nothing per head is materialized.

Both compute softmax(kq_scale * q.k) v exactly, so they agree to rounding.
``-amb N`` caps the scratch of one head group at N MiB (``amb_bytes`` here): for the decompressed
path the materialized K + V (+ the score matrix without -fa), for the absorbed
path one work item's scores + accumulators; heads are processed in groups that
fit (0 = no cap).
"""
from __future__ import annotations

import math

import numba
import numpy as np
from numba import njit, prange

from engine import _numba
from engine._numba import NJIT, PARALLEL
from engine._simd import f16_to_f32, q8_tile_1x1, q8_tile_4x1, q8_tile_4x2
from engine.attention import attention, online_accumulate, online_rescale
from engine.errors import EngineError
from engine.kvcache import KV_TYPES, KVCache, PositionBook, _alloc, kv_row_bytes
from engine.matmul import dot_q8_0_scalar
from engine.quant import f16_bits_to_f32, quantize_q8_0

_TYPE_CODE = {"f32": 0, "f16": 1, "q8_0": 2}
FLASH_CHUNK = 64
_NOCACHE = {k: v for k, v in NJIT.items() if k != "cache"}


class MLACache(PositionBook):
    """c^KV cache: per layer (n_ctx, kv_lora_rank + n_rot) rows in f32 / f16 bits / Q8_0 bytes."""

    def __init__(self, n_layer: int, n_ctx: int, kv_lora_rank: int, n_rot: int, type_k: str):
        if type_k not in KV_TYPES:
            raise EngineError(f"-ctk: unknown cache type {type_k!r} (allowed: {', '.join(KV_TYPES)})")
        if type_k == "q8_0" and (kv_lora_rank % 32 or n_rot % 32):
            raise EngineError(f"-ctk q8_0 needs kv_lora_rank ({kv_lora_rank}) and rope dims ({n_rot}) "
                              "that are multiples of 32")
        self.n_layer, self.n_ctx, self.rank, self.n_rot, self.type_k = n_layer, n_ctx, kv_lora_rank, n_rot, type_k
        self.type_v = type_k          # V is a view of K
        self.k = [_alloc(type_k, n_ctx, kv_lora_rank + n_rot) for _ in range(n_layer)]
        self.n_used = 0

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k)

    @property
    def row_bytes(self) -> int:
        return kv_row_bytes(self.type_k, self.rank + self.n_rot)

    def store(self, layer: int, pos: int, rows: np.ndarray) -> None:
        """Write [c_kv | k_pe] rows (n, rank + n_rot) f32 at positions [pos, pos+n)."""
        n = rows.shape[0]
        self.check_write(pos, n)
        self.k[layer][pos:pos + n] = KVCache._encode(self.type_k, np.ascontiguousarray(rows, dtype=np.float32))

    def c_rows_f32(self, layer: int, n: int) -> np.ndarray:
        """Positions [0, n) as f32 (n, rank + n_rot)."""
        from engine.quant import dequantize_q8_0, f16_to_f32
        a = self.k[layer][:n]
        if self.type_k == "f32":
            return a
        if self.type_k == "f16":
            return f16_to_f32(np.ascontiguousarray(a))
        return dequantize_q8_0(np.ascontiguousarray(a))



# -- absorbed attention kernel ---------------------------------------------------------

@njit(**NJIT)
def _scores_avx2(s, CH, kb, krow, p0, cnt, qq, q0_off, qhb, ncol, g, cpair, qrow):
    # s[col*CH + p] = K[p0+p] . Q[col]; col = (query col//g, head col%g); rows of K are one shared head
    nb = qhb // 34
    p = 0
    while p < cnt:
        four = p + 4 <= cnt
        kof = (p0 + p) * krow
        col = 0
        while col < ncol:
            qi = col // g
            j = col - qi * g
            xo = q0_off + qi * qrow + j * qhb
            pair = (j + 1 < g) if g > 1 else (col + 1 < ncol)
            if four and pair:
                q8_tile_4x2(s, col * CH + p, CH, kb, kof, krow, qq, xo, cpair, nb)
                col += 2
            elif four:
                q8_tile_4x1(s, col * CH + p, CH, kb, kof, krow, qq, xo, cpair, nb)
                col += 1
            else:
                q8_tile_1x1(s, col * CH + p, 0, kb, kof, krow, qq, xo, 0, nb)
                col += 1
        p += 4 if four else 1


@njit(**NJIT)
def _scores_scalar(s, CH, kb, krow, p0, cnt, qq, q0_off, qhb, ncol, g, cpair, qrow):
    for p in range(cnt):
        for col in range(ncol):
            qi = col // g
            s[col * CH + p] = dot_q8_0_scalar(kb, (p0 + p) * krow, qq, q0_off + qi * qrow + (col - qi * g) * qhb,
                                              qhb // 34)


@njit(**NJIT)
def _rows_f32(avx2, af, ab, atype, row_bytes, width, p0, cnt, buf):
    # buf[p*width + d] = value d of cache row p0+p (d < width); buf: flat f32
    for p in range(cnt):
        pos = p0 + p
        if atype == 0:
            for d in range(width):
                buf[p * width + d] = af[pos, d]
        elif atype == 1:
            if avx2:
                f16_to_f32(buf, p * width, ab, pos * row_bytes, width)
            else:
                for d in range(width):
                    b = pos * row_bytes + 2 * d
                    buf[p * width + d] = f16_bits_to_f32(np.int64(ab[b]) | (np.int64(ab[b + 1]) << 8))
        else:
            base = pos * row_bytes
            for b in range(width // 32):
                o = base + b * 34
                dd = f16_bits_to_f32(np.int64(ab[o]) | (np.int64(ab[o + 1]) << 8))
                for t in range(32):
                    v = np.int64(ab[o + 2 + t])
                    if v > 127:
                        v -= 256
                    buf[p * width + b * 32 + t] = dd * np.float32(v)


@njit(**_NOCACHE)
def _mla_item(kind, item, q, qq, kf, kb, ktype, krow, dv, pos0, scale, chunk, gh, out):
    # One work item (block of <= 8 queries, group of <= gh heads); kind (literal): 0 AVX2, 1 scalar.
    # q: (n_q, n_head, dk) f32 absorbed queries [q_abs | q_pe]; qq: flat Q8_0 of q (ktype 2)
    # kf: (n_ctx, dk) f32 cache or dummy; kb: flat cache bytes or dummy; V = first dv values of a row
    # out: (n_q, n_head, dv) f32
    numba.literally(kind)
    avx2 = kind == 0
    n_q, n_head, dk = q.shape
    qhb = (dk // 32) * 34
    qrow = n_head * qhb
    n_groups = (n_head + gh - 1) // gh
    blk = item // n_groups
    h0 = (item - blk * n_groups) * gh
    g = min(gh, n_head - h0)
    i0 = blk * 8
    nqb = min(8, n_q - i0)
    ncol = nqb * g
    n_att_max = pos0 + i0 + nqb
    CH = chunk if chunk > 0 else n_att_max
    cpair = qhb if g > 1 else qrow
    s = np.empty(ncol * CH, dtype=np.float32)
    kbuf = np.empty(CH * dk if ktype != 2 else 1, dtype=np.float32)
    vbuf = np.empty(CH * dv, dtype=np.float32)
    m = np.full(ncol, -np.inf, dtype=np.float32)
    l = np.zeros(ncol, dtype=np.float32)
    acc = np.zeros((ncol, dv), dtype=np.float32)
    for p0 in range(0, n_att_max, CH):
        cnt = min(CH, n_att_max - p0)
        if ktype == 2:
            if kind == 0:
                _scores_avx2(s, CH, kb, krow, p0, cnt, qq, i0 * qrow + h0 * qhb, qhb, ncol, g, cpair, qrow)
            else:
                _scores_scalar(s, CH, kb, krow, p0, cnt, qq, i0 * qrow + h0 * qhb, qhb, ncol, g, cpair, qrow)
        else:
            _rows_f32(avx2, kf, kb, ktype, krow, dk, p0, cnt, kbuf)
            for col in range(ncol):
                qi = col // g
                h = h0 + col - qi * g
                for p in range(cnt):
                    a = np.float32(0.0)
                    for d in range(dk):
                        a += q[i0 + qi, h, d] * kbuf[p * dk + d]
                    s[col * CH + p] = a
        _rows_f32(avx2, kf, kb, ktype, krow, dv, p0, cnt, vbuf)
        for col in range(ncol):
            qi = col // g
            lim = min(cnt, pos0 + i0 + qi + 1 - p0)      # causal: positions <= pos0+i0+qi
            if lim <= 0:
                continue
            mx = online_rescale(s, col * CH, lim, scale, m, l, acc, col)
            online_accumulate(s, col * CH, lim, mx, l, acc, col, vbuf)
            m[col] = mx
    for col in range(ncol):
        qi = col // g
        h = h0 + col - qi * g
        inv = np.float32(1.0) / l[col]
        for d in range(dv):
            out[i0 + qi, h, d] = acc[col, d] * inv


# Cached parallel entry points, one per SIMD path: no function-typed arguments (numba's
# cache never hits those), the path is a literal, so the scalar one holds no AVX2 code.
@njit(**PARALLEL)
def _mla_avx2(q, qq, kf, kb, ktype, krow, dv, pos0, scale, chunk, gh, out):
    n_items = ((q.shape[0] + 7) // 8) * ((q.shape[1] + gh - 1) // gh)
    for item in prange(n_items):
        _mla_item(0, item, q, qq, kf, kb, ktype, krow, dv, pos0, scale, chunk, gh, out)


@njit(**PARALLEL)
def _mla_scalar(q, qq, kf, kb, ktype, krow, dv, pos0, scale, chunk, gh, out):
    n_items = ((q.shape[0] + 7) // 8) * ((q.shape[1] + gh - 1) // gh)
    for item in prange(n_items):
        _mla_item(1, item, q, qq, kf, kb, ktype, krow, dv, pos0, scale, chunk, gh, out)


_DUMMY_F = np.zeros((1, 1), dtype=np.float32)
_DUMMY_B = np.zeros(1, dtype=np.uint8)


def absorbed_group_size(n_head: int, n_q: int, n_kv: int, dv: int, flash: bool, amb_bytes: int,
                        n_threads: int) -> int:
    """Heads per work item: enough items for the threads, scratch under amb_bytes (0 = no cap)."""
    n_blocks = (n_q + 7) // 8
    gh = max(1, math.ceil(n_head / max(1, math.ceil(n_threads / n_blocks))))
    if amb_bytes > 0:
        ch = FLASH_CHUNK if flash else n_kv
        per_head = 4 * min(8, n_q) * (ch + dv)          # scores + accumulators of one head
        gh = max(1, min(gh, amb_bytes // per_head))
    return gh


def absorbed_attention(q_abs: np.ndarray, cache: MLACache, layer: int, pos0: int, *, flash: bool,
                       scale: float, amb_bytes: int = 0, n_threads: int = 1, simd: str | None = None) -> np.ndarray:
    """softmax(scale * q_abs . [c|k_pe]) c over positions [0, pos0+n_q): (n_q, n_head, rank) f32."""
    n_q, n_head, dk = q_abs.shape
    if dk != cache.rank + cache.n_rot:
        raise ValueError(f"absorbed_attention: q width {dk} != kv_lora_rank + n_rot {cache.rank + cache.n_rot}")
    q = np.ascontiguousarray(q_abs, dtype=np.float32)
    kt = _TYPE_CODE[cache.type_k]
    K = cache.k[layer]
    kf, kb = (K, _DUMMY_B) if kt == 0 else (_DUMMY_F, K.view(np.uint8).reshape(-1))
    qq = quantize_q8_0(q.reshape(n_q * n_head, dk)).reshape(-1) if kt == 2 else _DUMMY_B
    out = np.empty((n_q, n_head, cache.rank), dtype=np.float32)
    gh = absorbed_group_size(n_head, n_q, pos0 + n_q, cache.rank, flash, amb_bytes, n_threads)
    kernel = _mla_avx2 if (simd or _numba.SIMD) == "avx2" else _mla_scalar
    kernel(q, qq, kf, kb, kt, K.shape[1] * K.itemsize, cache.rank, pos0, np.float32(scale),
           FLASH_CHUNK if flash else 0, gh, out)
    return out


# -- decompressed attention ------------------------------------------------------------

def decompressed_group_size(n_head: int, n_q: int, n_kv: int, dk: int, dv: int, flash: bool,
                            amb_bytes: int) -> int:
    """Heads whose materialized K + V (f32 bound) (+ plain scores) fit in amb_bytes (0 = all heads)."""
    if amb_bytes <= 0:
        return n_head
    per_head = 4 * n_kv * (dk + dv) + (0 if flash else 4 * n_q * n_kv)
    return max(1, min(n_head, amb_bytes // per_head))


def decompressed_attention(q: np.ndarray, cache: MLACache, layer: int, pos0: int, kv_b_rows, *,
                           nope: int, dv: int, flash: bool, scale: float, amb_bytes: int = 0,
                           attention_kw: dict | None = None) -> np.ndarray:
    """Materialize per-head K/V from c^KV and run engine.attention per head group.

    q: (n_q, n_head, nope + n_rot) f32 (rope applied); kv_b_rows(h0, h1, c, cq) -> (n_kv, (h1-h0)*(nope+dv))
    f32, the GEMM of c (n_kv, rank) f32 / cq its Q8_0 rows (or None) with attn_kv_b's rows for heads
    [h0, h1). Returns (n_q, n_head, dv).
    """
    n_q, n_head, dk = q.shape
    n_kv = pos0 + n_q
    rot = cache.n_rot
    C = cache.c_rows_f32(layer, n_kv)
    c = np.ascontiguousarray(C[:, :cache.rank])
    k_pe = C[:, cache.rank:]
    # Q8_0 rows of c for the GEMMs: a q8_0 cache's own bytes (requantizing its values would give
    # the same bytes), else quantized once for all head groups
    if cache.type_k == "q8_0":
        cq = np.ascontiguousarray(cache.k[layer][:n_kv, :cache.rank // 32 * 34])
    else:
        cq = quantize_q8_0(c) if cache.rank % 32 == 0 else None
    out = np.empty((n_q, n_head, dv), dtype=np.float32)
    gh = decompressed_group_size(n_head, n_q, n_kv, dk, dv, flash, amb_bytes)
    for h0 in range(0, n_head, gh):
        h1 = min(n_head, h0 + gh)
        g = h1 - h0
        kv = kv_b_rows(h0, h1, c, cq).reshape(n_kv, g, nope + dv)
        K = np.empty((n_kv, g, nope + rot), dtype=np.float32)
        K[:, :, :nope] = kv[:, :, :nope]
        K[:, :, nope:] = k_pe[:, None, :]
        V = np.ascontiguousarray(kv[:, :, nope:]).reshape(n_kv, g * dv)
        tmp = KVCache(1, n_kv, g, nope + rot, dv, cache.type_k if (nope + rot) % 32 == 0 else "f32", "f32",
                      k=[KVCache._encode(cache.type_k if (nope + rot) % 32 == 0 else "f32",
                                         K.reshape(n_kv, g * (nope + rot)))], v=[V], n_used=n_kv)
        out[:, h0:h1, :] = attention(np.ascontiguousarray(q[:, h0:h1, :]), tmp, 0, pos0, flash=flash,
                                     scale=scale, **(attention_kw or {}))
    return out
