"""MLA attention block (deepseek2: DeepSeek-V2/V3) over the compressed c^KV cache.

Block (llama.cpp's deepseek2 graph), h the normed input:

  q      = attn_q_b . rmsnorm(attn_q_a . h, attn_q_a_norm)    (or attn_q . h without q_lora_rank)
           -> per head [q_nope (nope) | q_pe (n_rot)], nope = key_length - n_rot
  kv_a   = attn_kv_a_mqa . h -> [c (kv_lora_rank) | k_pe (n_rot)];  c = rmsnorm(c, attn_kv_a_norm)
  q_pe, k_pe = RoPE (NORM order, YaRN); k_pe is one head shared by all heads
  cache  <- [c | k_pe]                                         (engine.mla.MLACache)
  attn   = softmax(kq_scale * q.k) v with k = [c W_kb[h] | k_pe], v = c W_vb[h]^T   (engine.mla)
  out    = attn_output . attn

YaRN as llama.cpp: mscale = 1 + yarn_log_multiplier * ln(factor); kq_scale = mscale^2 /
sqrt(key_length); RoPE's attn_factor 1/(1 + 0.1 ln(factor)) cancels the magnitude
correction inside rope_yarn (engine.archs computes both).

``-mla`` modes: 0 decompressed for every batch (per-head K/V materialized from c^KV);
1, 2 absorbed for every batch (ik_llama.cpp's 1 and 2 differ only in a transposed c^KV
copy for the V product, which this engine never needs: the same computation here);
3 absorbed for batches of fewer than ``MLA3_DECOMPRESS_MIN`` (= 2) tokens, i.e. TG, and
decompressed for PP (ik's "FlashMLA-3"). ``--k-repack`` applies to the decompressed path
(its materialized q8_0 K is an ordinary K for engine.attention); the absorbed path never
repacks. The cache is the same c^KV in every mode, so modes can be compared on one file.

Weights: ``attn_kv_b`` ([kv_lora_rank, n_head*(nope+v)]) or the split ``attn_k_b``
([nope, kv_lora_rank, n_head]) + ``attn_v_b`` ([kv_lora_rank, v, n_head]) that ik_llama.cpp
and newer llama.cpp converters write; whichever is missing is derived at load (W_kb
transposed and re-quantized to Q8_0 for Q8_0 files; the W_vb rows are byte-for-byte
slices of attn_kv_b).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf.constants import MODEL_TENSOR as T

from engine.matmul import gemm_f32, gemm_q8_0
from engine.metadata import tensor_name
from engine.mla import absorbed_attention, decompressed_attention
from engine.moe import grouped_gemm_q8_0
from engine.ops import rmsnorm, rope_inplace
from engine.quant import dequantize_q8_0, quantize_q8_0
from engine.tensors import Experts, Weight, matmul, matmuls

MLA3_DECOMPRESS_MIN = 2


def uses_absorbed(mla: int, n_tokens: int) -> bool:
    """Whether a batch of n_tokens runs the absorbed (True) or decompressed (False) attention."""
    return mla in (1, 2) or (mla == 3 and n_tokens < MLA3_DECOMPRESS_MIN)


def _per_head_from_rows(rows: Weight, n_head: int, width: int, sel: slice, transpose: bool) -> Experts:
    """Per-head matrices out of attn_kv_b rows: rows[h*width + sel] (optionally transposed)."""
    if rows.kind == "q8_0" and not transpose:
        d = np.ascontiguousarray(rows.data.reshape(n_head, width, -1)[:, sel, :])   # exact byte slices
        return Experts("q8_0", d, n_head, d.shape[1], rows.n_in, rows.source_type)
    dense = dequantize_q8_0(np.ascontiguousarray(rows.data)) if rows.kind == "q8_0" else rows.data
    blk = dense.reshape(n_head, width, rows.n_in)[:, sel, :]
    if transpose:
        blk = blk.transpose(0, 2, 1)
    blk = np.ascontiguousarray(blk, dtype=np.float32)
    G, n_out, n_in = blk.shape
    if rows.kind == "q8_0":
        return Experts("q8_0", quantize_q8_0(blk.reshape(G * n_out, n_in)).reshape(G, n_out, -1),
                       G, n_out, n_in, rows.source_type)
    return Experts("f32", blk, G, n_out, n_in, rows.source_type)


def _kv_b_from_split(k_b: Experts, v_b: Experts, nope: int) -> Weight:
    """attn_kv_b rows (n_head*(nope+v), rank) from split k_b (H, rank, nope) and v_b (H, v, rank)."""
    H, rank = k_b.n_expert, k_b.n_out

    def dense(x: Experts):
        if x.kind == "f32":
            return x.data
        return dequantize_q8_0(x.data.reshape(x.n_expert * x.n_out, -1)).reshape(x.n_expert, x.n_out, x.n_in)

    k = dense(k_b).transpose(0, 2, 1)                      # (H, nope, rank)
    if k_b.kind == "q8_0" and v_b.kind == "q8_0":
        kq = quantize_q8_0(np.ascontiguousarray(k).reshape(H * nope, rank)).reshape(H, nope, -1)
        data = np.concatenate([kq, v_b.data], axis=1).reshape(H * (nope + v_b.n_out), -1)
        return Weight("q8_0", np.ascontiguousarray(data), H * (nope + v_b.n_out), rank, k_b.source_type)
    data = np.concatenate([k, dense(v_b)], axis=1).reshape(-1, rank)
    return Weight("f32", np.ascontiguousarray(data, dtype=np.float32), data.shape[0], rank, k_b.source_type)


def per_head_matmul(W: Experts, x: np.ndarray) -> np.ndarray:
    """out[:, h] = x[:, h] . W[h]^T for x (n, H, n_in) f32 -> (n, H, n_out) f32."""
    n, H, n_in = x.shape
    xt = np.ascontiguousarray(x.transpose(1, 0, 2))                       # (H, n, n_in)
    if W.kind == "q8_0":
        y = grouped_gemm_q8_0(W.data, quantize_q8_0(xt.reshape(H * n, n_in)), n).reshape(H, n, W.n_out)
    else:
        y = np.einsum("hni,hoi->hno", xt, W.data, optimize=False).astype(np.float32)
    return np.ascontiguousarray(y.transpose(1, 0, 2))


@dataclass(frozen=True)
class MLAAttention:
    wq_a: Weight | None            # (q_lora_rank, n_embd)
    q_a_norm: np.ndarray | None    # (q_lora_rank,)
    wq_b: Weight | None            # (n_head*head_dim, q_lora_rank)
    wq: Weight | None              # (n_head*head_dim, n_embd) without q_lora_rank
    wkv_a: Weight                  # (kv_lora_rank + n_rot, n_embd)
    kv_a_norm: np.ndarray          # (kv_lora_rank,)
    wkv_b: Weight                  # (n_head*(nope+v_dim), kv_lora_rank): decompression
    wk_b: Experts                  # per head (n_head, kv_lora_rank, nope): absorption into q
    wv_b: Experts                  # per head (n_head, v_dim, kv_lora_rank): absorption into the output
    wo: Weight                     # (n_embd, n_head*v_dim)

    @classmethod
    def load(cls, ld, cfg, i: int) -> "MLAAttention":
        E, H, dk, dv, rot = cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.v_dim, cfg.n_rot
        rank, nope, ql = cfg.kv_lora_rank, cfg.nope, cfg.q_lora_rank

        def name(kind):
            return tensor_name(kind, i)

        if ld.has(name(T.ATTN_KV_B)):
            wkv_b = ld.matrix(name(T.ATTN_KV_B), H * (nope + dv), rank)
            wk_b = _per_head_from_rows(wkv_b, H, nope + dv, slice(0, nope), transpose=True)
            wv_b = _per_head_from_rows(wkv_b, H, nope + dv, slice(nope, nope + dv), transpose=False)
        else:
            wk_b = ld.experts(name(T.ATTN_K_B), H, rank, nope)
            wv_b = ld.experts(name(T.ATTN_V_B), H, dv, rank)
            wkv_b = _kv_b_from_split(wk_b, wv_b, nope)
        return cls(wq_a=ld.matrix(name(T.ATTN_Q_A), ql, E) if ql else None,
                   q_a_norm=ld.vector(name(T.ATTN_Q_A_NORM), ql) if ql else None,
                   wq_b=ld.matrix(name(T.ATTN_Q_B), H * dk, ql) if ql else None,
                   wq=None if ql else ld.matrix(name(T.ATTN_Q), H * dk, E),
                   wkv_a=ld.matrix(name(T.ATTN_KV_A_MQA), rank + rot, E),
                   kv_a_norm=ld.vector(name(T.ATTN_KV_A_NORM), rank),
                   wkv_b=wkv_b, wk_b=wk_b, wv_b=wv_b, wo=ld.matrix(name(T.ATTN_OUT), E, H * dv))

    def matrices(self) -> tuple[Weight, ...]:
        """The matrices every batch reads (the K/V up-projection form depends on the mode)."""
        return tuple(w for w in (self.wq_a, self.wq_b, self.wq, self.wkv_a, self.wo) if w is not None)

    @property
    def n_params(self) -> int:
        vecs = sum(v.shape[0] for v in (self.q_a_norm, self.kv_a_norm) if v is not None)
        return sum(w.n_params for w in self.matrices()) + self.wkv_b.n_params + vecs

    def bytes_per_token(self, mla_absorbed: bool) -> int:
        """Attention bytes one TG token reads: W_kb + W_vb absorbed, attn_kv_b decompressed."""
        kv = (self.wk_b.nbytes + self.wv_b.nbytes) if mla_absorbed else self.wkv_b.nbytes
        return sum(w.nbytes for w in self.matrices()) + kv

    def source_types(self) -> set[str]:
        return {w.source_type for w in self.matrices()}

    def __call__(self, h: np.ndarray, hq: np.ndarray, layer: int, run) -> np.ndarray:
        c = run.config
        n = h.shape[0]
        H, nope, rot, rank, dv = c.n_head, c.nope, c.n_rot, c.kv_lora_rank, c.v_dim
        opts = run.options
        # the q (or q LoRA) and kv_a products share h: one launch
        qx, kva = matmuls((self.wq if self.wq_a is None else self.wq_a, self.wkv_a), h, hq)  # kva (n, rank + rot)
        if self.wq is None:
            q = matmul(self.wq_b, rmsnorm(qx, self.q_a_norm, c.rms_eps)).reshape(n, H, nope + rot)   # (n, H, dk)
        else:
            q = qx.reshape(n, H, nope + rot)
        row = np.empty((n, rank + rot), dtype=np.float32)                   # [c | k_pe]
        row[:, :rank] = rmsnorm(np.ascontiguousarray(kva[:, :rank]), self.kv_a_norm, c.rms_eps)
        k_pe = np.ascontiguousarray(kva[:, rank:]).reshape(n, 1, rot)
        q_pe = np.ascontiguousarray(q[:, :, nope:])
        cos, sin = run.rope(layer)
        rope_inplace(q_pe, cos, sin, rot, False)
        rope_inplace(k_pe, cos, sin, rot, False)
        row[:, rank:] = k_pe[:, 0]
        run.cache.store(layer, run.pos, row)
        if uses_absorbed(opts.mla, n):
            qa = np.empty((n, H, rank + rot), dtype=np.float32)
            qa[:, :, :rank] = per_head_matmul(self.wk_b, np.ascontiguousarray(q[:, :, :nope]))
            qa[:, :, rank:] = q_pe
            oc = absorbed_attention(qa, run.cache, layer, run.pos, flash=opts.flash_attn, scale=c.kq_scale,
                                    amb_bytes=opts.amb << 20, n_threads=run.threads)   # (n, H, rank)
            a = per_head_matmul(self.wv_b, oc)                                  # (n, H, dv)
        else:
            q[:, :, nope:] = q_pe
            a = decompressed_attention(q, run.cache, layer, run.pos, self._kv_rows, nope=nope, dv=dv,
                                       flash=opts.flash_attn, scale=c.kq_scale, amb_bytes=opts.amb << 20,
                                       attention_kw=dict(k_repack=opts.k_repack, scratch=run.scratch))
        return matmul(self.wo, np.ascontiguousarray(a.reshape(n, H * dv)))

    def _kv_rows(self, h0: int, h1: int, cc: np.ndarray, cq: np.ndarray | None) -> np.ndarray:
        """c (n_kv, rank) times attn_kv_b's rows of heads [h0, h1) -> (n_kv, (h1-h0)*(nope+dv)) f32."""
        width = self.wkv_b.n_out // self.wk_b.n_expert
        rows = self.wkv_b.data[h0 * width:h1 * width]
        if self.wkv_b.kind == "q8_0":
            return gemm_q8_0(rows, cq if cq is not None else quantize_q8_0(cc))
        return gemm_f32(rows, cc)
