"""qwen2moe and mixtral (llama with experts): the llama attention block + a MoE FFN.

* ``qwen2moe``: q/k/v bias, NEOX RoPE, softmax routing without renormalisation,
  one shared expert (``ffn_{gate,up,down}_shexp``, ``expert_shared_feed_forward_length``)
  scaled per token by sigmoid(``ffn_gate_inp_shexp`` . h).
* ``llama`` with ``llama.expert_count`` > 0 (Mixtral as llama.cpp converts it):
  softmax routing, the k weights renormalised, no shared expert. Only the merged
  3-D ``ffn_*_exps`` tensors are read (not the pre-2024 per-expert
  ``ffn_gate.E.weight`` layout).

The attention half is the llama one (engine.attention over a KVCache); only the
FFN differs, see engine.moe. Config = ModelConfig + MoEConfig.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from engine.attention import attention
from engine.errors import GGUFError
from engine.gguf_model import ModelConfig, Weight, _field_value, _matrix, _vector
from engine.model import EngineOptions, Model, _embed, _matmul, start_batch
from engine.no_mmap import copy_arrays
from engine.moe import GATING, MoEConfig, MoEWeights, load_moe_weights, moe_ffn
from engine.ops import rmsnorm, rope_cache, rope_inplace
from engine.quant import quantize_q8_0


def is_moe_llama(reader) -> bool:
    """True for llama/qwen2moe files whose blocks carry routed experts."""
    arch = _field_value(reader, "general.architecture")
    return arch == "qwen2moe" or (arch == "llama" and (_field_value(reader, "llama.expert_count") or 0) > 0)


def moe_config_from_gguf(reader, arch: str, path: str) -> MoEConfig:
    def get(key, default=None):
        v = _field_value(reader, f"{arch}.{key}")
        return default if v is None else v

    gating = get("expert_gating_func")
    return MoEConfig(
        n_expert=int(get("expert_count", 0)),
        n_expert_used=int(get("expert_used_count", 0)),
        n_ff_exp=int(get("expert_feed_forward_length") or get("feed_forward_length", 0)),
        n_ff_shexp=int(get("expert_shared_feed_forward_length", 0)),
        gating=GATING.get(int(gating), str(gating)) if gating is not None else "softmax",
        norm_weights=bool(get("expert_weights_norm", arch == "llama")),
        weights_scale=float(get("expert_weights_scale", 1.0) or 1.0),
        shexp_gated=arch == "qwen2moe",
    ).validate(path)


@dataclass(frozen=True)
class MoELayerWeights:
    attn_norm: np.ndarray      # (n_embd,) f32
    wq: Weight                 # (n_head*head_dim, n_embd)
    wk: Weight                 # (n_head_kv*head_dim, n_embd)
    wv: Weight
    wo: Weight                 # (n_embd, n_head*head_dim)
    bq: np.ndarray | None
    bk: np.ndarray | None
    bv: np.ndarray | None
    ffn_norm: np.ndarray       # (n_embd,) f32
    moe: MoEWeights


@dataclass(frozen=True)
class MoEModelWeights:
    token_embd: Weight
    layers: tuple[MoELayerWeights, ...]
    output_norm: np.ndarray
    output: Weight
    tied_output: bool
    repacked: dict = field(default_factory=dict)


def load_moe_llama_weights(reader, cfg: ModelConfig, mcfg: MoEConfig, path: str, log=None) -> MoEModelWeights:
    tensors = {t.name: t for t in reader.tensors}
    repacked: dict[str, int] = {}

    def need(name):
        t = tensors.get(name)
        if t is None:
            raise GGUFError(f"{path}: missing tensor {name}")
        return t

    def mat(name, n_out, n_in):
        return _matrix(need(name), path, n_out, n_in, repacked, keep_float=True)

    E, H, Hkv, D = cfg.n_embd, cfg.n_head, cfg.n_head_kv, cfg.head_dim
    emb_t = need("token_embd.weight")
    n_vocab = int(emb_t.shape[1]) if len(emb_t.shape) == 2 else 0
    token_embd = mat("token_embd.weight", n_vocab, E)
    layers = []
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        bias = {b: (_vector(tensors[p + b], path, n) if p + b in tensors else None)
                for b, n in (("attn_q.bias", H * D), ("attn_k.bias", Hkv * D), ("attn_v.bias", Hkv * D))}
        layers.append(MoELayerWeights(
            attn_norm=_vector(need(p + "attn_norm.weight"), path, E),
            wq=mat(p + "attn_q.weight", H * D, E), wk=mat(p + "attn_k.weight", Hkv * D, E),
            wv=mat(p + "attn_v.weight", Hkv * D, E), wo=mat(p + "attn_output.weight", E, H * D),
            bq=bias["attn_q.bias"], bk=bias["attn_k.bias"], bv=bias["attn_v.bias"],
            ffn_norm=_vector(need(p + "ffn_norm.weight"), path, E),
            moe=load_moe_weights(tensors, p, mcfg, E, path, repacked)))
    tied = "output.weight" not in tensors
    output = token_embd if tied else mat("output.weight", n_vocab, E)
    if repacked and log:
        log("run-time repack: converted " + ", ".join(f"{n} x {k}" for k, n in sorted(repacked.items()))
            + " tensors to Q8_0 at load")
    return MoEModelWeights(token_embd, tuple(layers), _vector(need("output_norm.weight"), path, E),
                           output, tied, repacked)


class MoEModel(Model):
    """qwen2moe / mixtral: Model's attention and cache, engine.moe's FFN (``-fmoe`` = fused)."""

    def __init__(self, path, config: ModelConfig, moe: MoEConfig, weights: MoEModelWeights,
                 options: EngineOptions, load_seconds: float):
        super().__init__(path, config, weights, options, load_seconds)
        self.moe = moe

    @property
    def n_params(self) -> int:
        w = self.weights
        n = sum(x.n_out * x.n_in for x in (w.token_embd,) + (() if w.tied_output else (w.output,)))
        for L in w.layers:
            n += sum(x.n_out * x.n_in for x in (L.wq, L.wk, L.wv, L.wo)) + L.moe.n_params
        return n

    @property
    def weight_bytes_per_token(self) -> int:
        """Attention + router + shared expert + expert_used_count routed experts, all layers, + output."""
        w = self.weights
        total = w.output.nbytes
        for L in w.layers:
            total += sum(x.nbytes for x in (L.wq, L.wk, L.wv, L.wo)) + L.moe.bytes_per_token(self.moe.n_expert_used)
        return total

    def weight_types(self) -> str:
        return "+".join(sorted({x.source_type for L in self.weights.layers
                                for x in (L.wq, L.wo, L.moe.up, L.moe.down)}))

    def eval(self, tokens, pos: int, all_logits: bool = True) -> np.ndarray:
        tokens = start_batch(self, tokens, pos)
        n = tokens.shape[0]
        c = self.config
        cos, sin = rope_cache(np.arange(pos, pos + n), c.n_rot, c.rope_freq_base, c.rope_freq_scale,
                              1.0 if self._yarn else 0.0, 1.0, c.rope_n_ctx_orig)
        fused = bool(self.options.fused_moe)
        self.repack_scratch.reset()
        x = _embed(self.weights.token_embd, tokens)                      # (n, n_embd) f32
        for li, L in enumerate(self.weights.layers):
            h = rmsnorm(x, L.attn_norm, c.rms_eps)
            hq = quantize_q8_0(h)
            q, k, v = _matmul(L.wq, h, hq), _matmul(L.wk, h, hq), _matmul(L.wv, h, hq)
            for a, b in ((q, L.bq), (k, L.bk), (v, L.bv)):
                if b is not None:
                    a += b
            q3 = q.reshape(n, c.n_head, c.head_dim)
            rope_inplace(q3, cos, sin, c.n_rot, c.rope_neox)
            rope_inplace(k.reshape(n, c.n_head_kv, c.head_dim), cos, sin, c.n_rot, c.rope_neox)
            self.cache.store(li, pos, k, v)
            a2 = attention(q3, self.cache, li, pos, flash=self.options.flash_attn,
                           k_repack=self.options.k_repack, scratch=self.repack_scratch).reshape(n, -1)
            x += _matmul(L.wo, a2, quantize_q8_0(a2) if L.wo.kind == "q8_0" else None)
            x += moe_ffn(rmsnorm(x, L.ffn_norm, c.rms_eps), L.moe, self.moe, fused=fused)
        self.cache.commit(pos, n)
        if not all_logits:
            x = x[-1:]
        h = rmsnorm(np.ascontiguousarray(x), self.weights.output_norm, c.rms_eps)
        out = self.weights.output
        return _matmul(out, h, quantize_q8_0(h) if out.kind == "q8_0" else None)


def load_moe_llama(reader, path: str, opts: EngineOptions, log=None, t0: float | None = None) -> MoEModel:
    t0 = time.perf_counter() if t0 is None else t0
    cfg = ModelConfig.from_gguf(reader, path)
    mcfg = moe_config_from_gguf(reader, cfg.arch, path)
    weights = load_moe_llama_weights(reader, cfg, mcfg, path, log=log)
    if cfg.n_vocab == 0:
        cfg = ModelConfig(**{**cfg.__dict__, "n_vocab": weights.token_embd.n_out})
    if opts.rtr and log:
        log("-rtr: not applied to MoE models (the 3-D expert tensors stay Q8_0)")
    if opts.no_mmap:
        weights = copy_arrays(weights)
    return MoEModel(path, cfg, mcfg, weights, opts, time.perf_counter() - t0)
