"""Gemma 3: the llama block with Gemma's extra norms, GeGLU and interleaved local/global attention.

Per layer (llama.cpp's / ik_llama.cpp's gemma3 graph):
  h = RMSNorm(x) * attn_norm;  q, k, v = h Wq, h Wk, h Wv
  q, k = per-head RMSNorm * attn_{q,k}_norm, then NEOX RoPE with the layer's base
  a = softmax(q k^T * attn_scale) v over the layer's span; x += RMSNorm(a Wo) * post_attention_norm
  h = RMSNorm(x) * ffn_norm;  x += RMSNorm((gelu_tanh(h Wg) * h Wu) Wd) * post_ffw_norm
The input is the embedding row times sqrt(n_embd); the output head is token_embd (tied).
The GGUF converter stores Gemma's norm weights as (1 + w), so they multiply as they are.

Local ("sliding window") layers see the last ``sliding_window`` positions and use
RoPE base ``rope_freq_base_swa`` without scaling; every ``swa_pattern``-th layer is
global (full causal span, ``rope.freq_base`` and the file's RoPE scaling). The cache
keeps every position for every layer (sweep-bench removes TG tokens by position);
only the span read is limited.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np

from engine.attention import attention
from engine.errors import GGUFError
from engine.gguf_model import ModelConfig, _field_value, _vector, load_weights
from engine.model import EngineOptions, Model, _embed, _matmul, _matmuls, place_weights, start_batch
from engine.ops import geglu_q8_0, rmsnorm, rmsnorm_q8_0, rope_cache, rope_inplace
from engine.quant import quantize_q8_0

# Defaults where a GGUF has no key, as llama.cpp's gemma3 loader sets them.
SWA_PATTERN = 6              # layers il with (il + 1) % 6 != 0 are local
ROPE_BASE_SWA = 10000.0
_GEMMA3_27B_LAYERS = 62      # llama.cpp scales 27B's queries by 1/sqrt(n_embd/n_head)


def is_gemma3(reader) -> bool:
    return _field_value(reader, "general.architecture") == "gemma3"


@dataclass(frozen=True)
class Gemma3Config(ModelConfig):
    sliding_window: int          # span of the local layers (positions, incl. the query's own)
    swa_layers: tuple            # per layer: True = local (sliding window)
    rope_freq_base_swa: float
    attn_scale: float            # multiplies q.k (1/sqrt(query_pre_attn_scalar))
    embd_scale: float            # sqrt(n_embd)
    final_logit_softcap: float   # 0 = none

    @classmethod
    def from_gguf(cls, reader, path: str = "") -> "Gemma3Config":
        base = ModelConfig.from_gguf(reader, path)

        def get(key, default=None):
            v = _field_value(reader, f"gemma3.{key}")
            return default if v is None else v

        window = int(get("attention.sliding_window", 0))
        if window <= 0:
            raise GGUFError(f"{path}: gemma3.attention.sliding_window must be > 0, got {window}")
        pattern = int(get("attention.sliding_window_pattern", SWA_PATTERN))
        if pattern <= 0:
            raise GGUFError(f"{path}: gemma3.attention.sliding_window_pattern must be > 0, got {pattern}")
        scale = get("attention.scale")
        if scale is None:
            scalar = (base.n_embd // base.n_head if base.n_layer == _GEMMA3_27B_LAYERS else base.head_dim)
            scale = 1.0 / math.sqrt(scalar)
        return cls(**base.__dict__,
                   sliding_window=window,
                   swa_layers=tuple((il + 1) % pattern != 0 for il in range(base.n_layer)),
                   rope_freq_base_swa=float(get("rope.freq_base_swa", ROPE_BASE_SWA)),
                   attn_scale=float(scale),
                   embd_scale=math.sqrt(base.n_embd),
                   final_logit_softcap=float(get("final_logit_softcapping", 0.0) or 0.0))


@dataclass(frozen=True)
class Gemma3Norms:
    """The per-layer norms Gemma adds to the llama block (LayerWeights holds the rest)."""

    q_norm: np.ndarray           # (head_dim,) f32
    k_norm: np.ndarray           # (head_dim,) f32
    post_attn_norm: np.ndarray   # (n_embd,) f32
    post_ffw_norm: np.ndarray    # (n_embd,) f32


def load_gemma3_norms(reader, cfg: Gemma3Config, path: str) -> tuple[Gemma3Norms, ...]:
    tensors = {t.name: t for t in reader.tensors}

    def vec(name, n):
        t = tensors.get(name)
        if t is None:
            raise GGUFError(f"{path}: missing tensor {name}")
        return np.array(_vector(t, path, n))     # an owned copy: tiny, and safe with --no-mmap

    D, E = cfg.head_dim, cfg.n_embd
    return tuple(Gemma3Norms(vec(f"blk.{i}.attn_q_norm.weight", D), vec(f"blk.{i}.attn_k_norm.weight", D),
                             vec(f"blk.{i}.post_attention_norm.weight", E),
                             vec(f"blk.{i}.post_ffw_norm.weight", E))
                 for i in range(cfg.n_layer))


class Gemma3Model(Model):
    """Gemma 3 over Model's KV cache; ``weights`` are the llama-shaped ones (-rtr applies)."""

    def __init__(self, path, config: Gemma3Config, weights, norms: tuple[Gemma3Norms, ...],
                 options: EngineOptions, load_seconds: float):
        super().__init__(path, config, weights, options, load_seconds)
        self.norms = norms

    @property
    def n_params(self) -> int:
        return super().n_params + sum(sum(a.shape[0] for a in (N.q_norm, N.k_norm, N.post_attn_norm,
                                                                 N.post_ffw_norm)) for N in self.norms)

    def attention_span(self, layer: int) -> int:
        """Positions a query of this layer can see (0 = all: a global layer)."""
        return self.config.sliding_window if self.config.swa_layers[layer] else 0

    def eval(self, tokens, pos: int, all_logits: bool = True) -> np.ndarray:
        tokens = start_batch(self, tokens, pos)
        n = tokens.shape[0]
        c = self.config
        H, Hkv, D = c.n_head, c.n_head_kv, c.head_dim
        self.repack_scratch.reset()
        positions = np.arange(pos, pos + n)
        rope_global = rope_cache(positions, c.n_rot, c.rope_freq_base, c.rope_freq_scale,
                                 1.0 if self._yarn else 0.0, 1.0, c.rope_n_ctx_orig)
        rope_local = rope_cache(positions, c.n_rot, c.rope_freq_base_swa)
        x = _embed(self.weights.token_embd, tokens) * np.float32(c.embd_scale)   # (n, n_embd) f32
        for li, (L, N) in enumerate(zip(self.weights.layers, self.norms)):
            cos, sin = rope_local if c.swa_layers[li] else rope_global
            h, hq = rmsnorm_q8_0(x, L.attn_norm, c.rms_eps)
            q, k, v = _matmuls((L.wq, L.wk, L.wv), h, hq)               # (n, H*D), (n, Hkv*D) x2
            q3 = rmsnorm(q.reshape(n * H, D), N.q_norm, c.rms_eps).reshape(n, H, D)
            k3 = rmsnorm(k.reshape(n * Hkv, D), N.k_norm, c.rms_eps).reshape(n, Hkv, D)
            rope_inplace(q3, cos, sin, c.n_rot, True)
            rope_inplace(k3, cos, sin, c.n_rot, True)
            self.cache.store(li, pos, k3.reshape(n, Hkv * D), v)
            a = attention(q3, self.cache, li, pos, flash=self.options.flash_attn, scale=c.attn_scale,
                          window=self.attention_span(li), k_repack=self.options.k_repack,
                          scratch=self.repack_scratch)
            a2 = a.reshape(n, H * D)
            o = _matmul(L.wo, a2, quantize_q8_0(a2) if L.wo.kind != "f32" else None)
            x += rmsnorm(o, N.post_attn_norm, c.rms_eps)
            h, hq = rmsnorm_q8_0(x, L.ffn_norm, c.rms_eps)
            g, u = _matmuls((L.w_gate, L.w_up), h, hq)                  # (n, n_ff) x2
            s, sq = geglu_q8_0(g, u)
            x += rmsnorm(_matmul(L.w_down, s, sq), N.post_ffw_norm, c.rms_eps)
        self.cache.commit(pos, n)
        if not all_logits:
            x = x[-1:]
        h, hq = rmsnorm_q8_0(np.ascontiguousarray(x), self.weights.output_norm, c.rms_eps)
        logits = _matmul(self.weights.output, h, hq)
        if c.final_logit_softcap > 0:
            cap = np.float32(c.final_logit_softcap)
            logits = np.tanh(logits / cap) * cap
        return logits


def load_gemma3(reader, path: str, opts: EngineOptions, log=None, t0: float | None = None) -> Gemma3Model:
    t0 = time.perf_counter() if t0 is None else t0
    cfg = Gemma3Config.from_gguf(reader, path)
    weights = load_weights(reader, cfg, path, log=log)
    norms = load_gemma3_norms(reader, cfg, path)
    weights, rtr_report = place_weights(weights, reader, opts, log)
    if cfg.n_vocab == 0:
        cfg = Gemma3Config(**{**cfg.__dict__, "n_vocab": weights.token_embd.n_out})
    model = Gemma3Model(path, cfg, weights, norms, opts, time.perf_counter() - t0)
    model.rtr_report = rtr_report
    return model
