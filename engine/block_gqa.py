"""Grouped-query attention block (llama, qwen2, qwen3, gemma3, qwen2moe, mixtral).

  q, k, v = h Wq (+bq), h Wk (+bk), h Wv (+bv)          one kernel launch for Q8_0 weights
  q, k    = per-head RMSNorm * attn_{q,k}_norm          (qk_norm: gemma3, qwen3)
  q, k    = RoPE (NORM or NEOX pairs; the layer's table: local layers use their own base)
  cache  <- k, v;  a = softmax(q k^T * kq_scale) v over the layer's span (engine.attention)
  out     = a Wo, then RMSNorm * post_attention_norm    (post_norms: gemma3)

h is the block's normed input and hq its Q8_0 rows. Sliding-window (local) layers see
the last ``sliding_window`` positions; the cache keeps every position for every layer
(sweep-bench removes TG tokens by position), only the span read is limited.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf.constants import MODEL_TENSOR as T

from engine.attention import attention
from engine.metadata import tensor_name
from engine.ops import qk_norm_rope, rmsnorm
from engine.tensors import Weight, matmul, matmuls


@dataclass(frozen=True)
class GQAAttention:
    wq: Weight                       # (n_head*head_dim, n_embd)
    wk: Weight                       # (n_head_kv*head_dim, n_embd)
    wv: Weight                       # (n_head_kv*head_dim, n_embd)
    wo: Weight                       # (n_embd, n_head*head_dim)
    bq: np.ndarray | None = None     # (n_head*head_dim,) f32 (qwen2)
    bk: np.ndarray | None = None     # (n_head_kv*head_dim,) f32
    bv: np.ndarray | None = None
    q_norm: np.ndarray | None = None      # (head_dim,) f32 (qk_norm)
    k_norm: np.ndarray | None = None
    post_norm: np.ndarray | None = None   # (n_embd,) f32 (post_norms)

    @classmethod
    def load(cls, ld, cfg, i: int) -> "GQAAttention":
        E, H, Hkv, D = cfg.n_embd, cfg.n_head, cfg.n_head_kv, cfg.head_dim

        def name(kind, suffix="weight"):
            return tensor_name(kind, i, suffix)

        return cls(wq=ld.matrix(name(T.ATTN_Q), H * D, E), wk=ld.matrix(name(T.ATTN_K), Hkv * D, E),
                   wv=ld.matrix(name(T.ATTN_V), Hkv * D, E), wo=ld.matrix(name(T.ATTN_OUT), E, H * D),
                   bq=ld.optional_vector(name(T.ATTN_Q, "bias"), H * D),
                   bk=ld.optional_vector(name(T.ATTN_K, "bias"), Hkv * D),
                   bv=ld.optional_vector(name(T.ATTN_V, "bias"), Hkv * D),
                   q_norm=ld.vector(name(T.ATTN_Q_NORM), D) if cfg.qk_norm else None,
                   k_norm=ld.vector(name(T.ATTN_K_NORM), D) if cfg.qk_norm else None,
                   post_norm=ld.vector(name(T.ATTN_POST_NORM), E) if cfg.post_norms else None)

    def matrices(self) -> tuple[Weight, ...]:
        return self.wq, self.wk, self.wv, self.wo

    def vectors(self) -> tuple[np.ndarray, ...]:
        return tuple(v for v in (self.bq, self.bk, self.bv, self.q_norm, self.k_norm, self.post_norm)
                     if v is not None)

    @property
    def n_params(self) -> int:
        return sum(w.n_params for w in self.matrices()) + sum(v.shape[0] for v in self.vectors())

    def bytes_per_token(self, mla_absorbed: bool = False) -> int:
        return sum(w.nbytes for w in self.matrices())

    def source_types(self) -> set[str]:
        return {self.wq.source_type, self.wo.source_type}

    def __call__(self, h: np.ndarray, hq: np.ndarray, layer: int, run) -> np.ndarray:
        """h (n, n_embd) f32 normed input, hq its Q8_0 rows -> (n, n_embd) f32 to add to x."""
        c = run.config
        n, H, Hkv, D = h.shape[0], c.n_head, c.n_head_kv, c.head_dim
        q, k, v = matmuls((self.wq, self.wk, self.wv), h, hq)       # (n, H*D), (n, Hkv*D) x2
        for a, b in ((q, self.bq), (k, self.bk), (v, self.bv)):
            if b is not None:
                a += b
        q3, k3 = q.reshape(n, H, D), k.reshape(n, Hkv, D)
        cos, sin = run.rope(layer)
        qk_norm_rope(q3, k3, self.q_norm, self.k_norm, c.rms_eps, cos, sin, c.n_rot, c.rope_neox)  # one launch
        run.cache.store(layer, run.pos, k3.reshape(n, Hkv * D), v)
        a = attention(q3, run.cache, layer, run.pos, flash=run.options.flash_attn, scale=c.kq_scale,
                      window=run.window(layer), k_repack=run.options.k_repack, scratch=run.scratch)
        o = matmul(self.wo, a.reshape(n, H * D))
        return o if self.post_norm is None else rmsnorm(o, self.post_norm, c.rms_eps)
