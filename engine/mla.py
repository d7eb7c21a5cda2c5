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

import numpy as np

from engine.attention import FLASH_CHUNK, attend, attention
from engine.errors import EngineError
from engine.kvcache import KVCache, PositionBook, alloc_rows, encode_rows, kv_row_bytes
from engine.layout import Q8_0_BYTES, QK8_0
from engine.options import KV_TYPES
from engine.quant import dequantize_q8_0, f16_to_f32, quantize_q8_0


class MLACache(PositionBook):
    """c^KV cache: per layer (n_ctx, kv_lora_rank + n_rot) rows in f32 / f16 bits / Q8_0 bytes."""

    def __init__(self, n_layer: int, n_ctx: int, kv_lora_rank: int, n_rot: int, type_k: str):
        if type_k not in KV_TYPES:
            raise EngineError(f"-ctk: unknown cache type {type_k!r} (allowed: {', '.join(KV_TYPES)})")
        if type_k == "q8_0" and (kv_lora_rank % QK8_0 or n_rot % QK8_0):
            raise EngineError(f"-ctk q8_0 needs kv_lora_rank ({kv_lora_rank}) and rope dims ({n_rot}) "
                              "that are multiples of 32")
        self.n_layer, self.n_ctx, self.rank, self.n_rot, self.type_k = n_layer, n_ctx, kv_lora_rank, n_rot, type_k
        self.type_v = type_k          # V is a view of K
        self.k = [alloc_rows(type_k, n_ctx, kv_lora_rank + n_rot) for _ in range(n_layer)]
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
        self.k[layer][pos:pos + n] = encode_rows(self.type_k, np.ascontiguousarray(rows, dtype=np.float32))

    def c_rows_f32(self, layer: int, n: int) -> np.ndarray:
        """Positions [0, n) as f32 (n, rank + n_rot)."""
        a = self.k[layer][:n]
        if self.type_k == "f32":
            return a
        if self.type_k == "f16":
            return f16_to_f32(np.ascontiguousarray(a))
        return dequantize_q8_0(np.ascontiguousarray(a))



# -- absorbed attention ----------------------------------------------------------------

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
    """softmax(scale * q_abs . [c|k_pe]) c over positions [0, pos0+n_q): (n_q, n_head, rank) f32.

    engine.attention's kernel with one KV head shared by every query head (the cached rows),
    V = the first kv_lora_rank values of each row, heads split into items of
    ``absorbed_group_size``; the plain exp / P.V loop (``pv_tiles=False``).
    """
    n_q, n_head, dk = q_abs.shape
    if dk != cache.rank + cache.n_rot:
        raise ValueError(f"absorbed_attention: q width {dk} != kv_lora_rank + n_rot {cache.rank + cache.n_rot}")
    K = cache.k[layer]
    gh = absorbed_group_size(n_head, n_q, pos0 + n_q, cache.rank, flash, amb_bytes, n_threads)
    return attend(q_abs, K, cache.type_k, K, cache.type_k, cache.rank, 1, pos0, flash=flash, scale=scale,
                  heads_per_item=gh, pv_tiles=False, simd=simd)


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
        cq = np.ascontiguousarray(cache.k[layer][:n_kv, :cache.rank // QK8_0 * Q8_0_BYTES])
    else:
        cq = quantize_q8_0(c) if cache.rank % QK8_0 == 0 else None
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
        type_k = cache.type_k if (nope + rot) % QK8_0 == 0 else "f32"
        tmp = KVCache(1, n_kv, g, nope + rot, dv, type_k, "f32",
                      k=[encode_rows(type_k, K.reshape(n_kv, g * (nope + rot)))], v=[V], n_used=n_kv)
        out[:, h0:h1, :] = attention(np.ascontiguousarray(q[:, h0:h1, :]), tmp, 0, pos0, flash=flash,
                                     scale=scale, **(attention_kw or {}))
    return out
