"""deepseek2 (DeepSeek-V2/V3): MLA attention over a compressed c^KV cache + MoE FFN.

Block i (llama.cpp's deepseek2 graph):

  h      = rmsnorm(x, attn_norm)
  q      = attn_q_b . rmsnorm(attn_q_a . h, attn_q_a_norm)    (or attn_q . h without q_lora_rank)
           -> per head [q_nope (nope) | q_pe (n_rot)], nope = key_length - n_rot
  kv_a   = attn_kv_a_mqa . h -> [c (kv_lora_rank) | k_pe (n_rot)];  c = rmsnorm(c, attn_kv_a_norm)
  q_pe, k_pe = RoPE (NORM order, YaRN); k_pe is one head shared by all heads
  cache  <- [c | k_pe]                                         (engine.mla.MLACache)
  attn   = softmax(kq_scale * q.k) v with k = [c W_kb[h] | k_pe], v = c W_vb[h]^T   (engine.mla)
  x     += attn_output . attn
  x     += FFN(rmsnorm(x, ffn_norm)): dense SwiGLU for i < leading_dense_block_count, else
           MoE (engine.moe: sigmoid/softmax gating, exp_probs_b, norm, scale) + shared experts

YaRN as llama.cpp: mscale = 1 + yarn_log_multiplier * ln(factor); kq_scale =
mscale^2 / sqrt(key_length); RoPE is called with attn_factor 1/(1 + 0.1 ln(factor)),
cancelling the magnitude correction inside rope_yarn.

``-mla`` modes (see engine.mla for the two attention forms):

* 0: decompressed for every batch (TG and PP): per-head K/V materialized from c^KV.
* 1, 2: absorbed for every batch. ik_llama.cpp's 1 and 2 differ only in whether a
  transposed copy of c^KV is kept for the V product (a GPU/graph layout detail);
  here V is always read from the c^KV rows, so 1 and 2 are the same computation.
* 3: absorbed for batches of fewer than ``MLA3_DECOMPRESS_MIN`` (= 2) tokens, i.e.
  TG, and decompressed for PP batches (ik's "FlashMLA-3": cheap TG from the
  compressed cache, fewer FLOPs per head for PP).

``--k-repack`` applies to the decompressed path (its materialized K is an ordinary
q8_0 K for engine.attention, so PP batches of >= 8 tokens can read it as Q8_0_R8);
the absorbed path has its own kernel and never repacks.

The cache is the same c^KV in every mode, so modes can be compared on one file.
Attention weights: ``attn_kv_b`` ([kv_lora_rank, n_head*(nope+v)]) or the split
``attn_k_b`` ([nope, kv_lora_rank, n_head]) + ``attn_v_b`` ([kv_lora_rank, v, n_head])
that ik_llama.cpp and newer llama.cpp converters write; whichever is missing is
derived at load (W_kb transposed and re-quantized to Q8_0 for Q8_0 files; the
W_vb rows are byte-for-byte slices of attn_kv_b).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from engine import _numba
from engine.errors import EngineError, GGUFError
from engine.gguf_model import Weight, _field_value, _matrix, _vector
from engine.matmul import gemm_f32, gemm_q8_0
from engine.mla import MLACache, absorbed_attention, decompressed_attention
from engine.model import EngineOptions, Model, _embed, _matmul, start_batch
from engine.no_mmap import copy_arrays
from engine.moe import GATING, Experts, MoEConfig, MoEWeights, grouped_gemm_q8_0, load_moe_weights, moe_ffn
from engine.moe import _experts as _load_3d
from engine.ops import rmsnorm, rope_cache, rope_inplace, swiglu
from engine.q8_0_r8 import RepackScratch
from engine.quant import dequantize_q8_0, quantize_q8_0

MLA3_DECOMPRESS_MIN = 2


def is_deepseek2(reader) -> bool:
    return _field_value(reader, "general.architecture") == "deepseek2"


@dataclass(frozen=True)
class DeepSeek2Config:
    """Hyper-parameters of a deepseek2 model (``deepseek2.*`` GGUF keys)."""

    arch: str
    name: str
    n_vocab: int
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int             # = n_head (recorded; MLA caches one shared latent row)
    head_dim: int              # key_length = nope + n_rot (the q.k width of decompressed attention)
    v_dim: int                 # value_length
    n_rot: int                 # rope.dimension_count
    q_lora_rank: int           # 0 = plain attn_q
    kv_lora_rank: int
    n_ff: int                  # dense FFN rows (leading blocks)
    n_dense_lead: int          # leading_dense_block_count
    rms_eps: float
    rope_freq_base: float
    rope_scaling: str          # none | yarn
    rope_freq_scale: float     # 1/factor
    rope_n_ctx_orig: int
    yarn_log_mul: float
    n_ctx_train: int
    file_type: int | None
    moe: MoEConfig

    @property
    def nope(self) -> int:
        return self.head_dim - self.n_rot

    @property
    def kq_scale(self) -> float:
        mscale = 1.0 + self.yarn_log_mul * math.log(1.0 / self.rope_freq_scale)
        return mscale * mscale / math.sqrt(self.head_dim)

    @property
    def rope_attn_factor(self) -> float:
        return 1.0 / (1.0 + 0.1 * math.log(1.0 / self.rope_freq_scale))

    @classmethod
    def from_gguf(cls, reader, path: str = "") -> "DeepSeek2Config":
        arch = "deepseek2"

        def get(key, default=None, required=False):
            v = _field_value(reader, f"{arch}.{key}")
            if v is None:
                if required:
                    raise GGUFError(f"{path}: missing key {arch}.{key}")
                return default
            return v

        n_head = int(get("attention.head_count", required=True))
        # newer llama.cpp converters write the MLA cache widths as key/value_length and the
        # per-head widths as key_length_mla / value_length_mla
        dk = int(get("attention.key_length_mla") or get("attention.key_length", required=True))
        dv = int(get("attention.value_length_mla") or get("attention.value_length", required=True))
        n_rot = int(get("rope.dimension_count", required=True))
        scaling = get("rope.scaling.type", "none")
        if scaling not in ("none", "yarn"):
            raise GGUFError(f"{path}: unsupported {arch}.rope.scaling.type {scaling!r}")
        factor = float(get("rope.scaling.factor", 1.0) or 1.0) if scaling == "yarn" else 1.0
        gating = int(get("expert_gating_func", 1))
        n_expert = int(get("expert_count", 0))
        n_ff_exp = int(get("expert_feed_forward_length", 0))
        moe = MoEConfig(
            n_expert=n_expert, n_expert_used=int(get("expert_used_count", 0)), n_ff_exp=n_ff_exp,
            n_ff_shexp=n_ff_exp * int(get("expert_shared_count", 0)),
            gating=GATING.get(gating, str(gating)), norm_weights=bool(get("expert_weights_norm", False)),
            weights_scale=float(get("expert_weights_scale", 1.0) or 1.0), shexp_gated=False)
        cfg = cls(
            arch=arch, name=str(_field_value(reader, "general.name") or Path(path).stem),
            n_vocab=int(get("vocab_size") or _field_value(reader, "tokenizer.ggml.tokens") or 0),
            n_embd=int(get("embedding_length", required=True)), n_layer=int(get("block_count", required=True)),
            n_head=n_head, n_head_kv=n_head, head_dim=dk, v_dim=dv, n_rot=n_rot,
            q_lora_rank=int(get("attention.q_lora_rank", 0) or 0),
            kv_lora_rank=int(get("attention.kv_lora_rank", required=True)),
            n_ff=int(get("feed_forward_length", required=True)),
            n_dense_lead=int(get("leading_dense_block_count", 0)),
            rms_eps=float(get("attention.layer_norm_rms_epsilon", 1e-6)),
            rope_freq_base=float(get("rope.freq_base", 10000.0)),
            rope_scaling=scaling, rope_freq_scale=1.0 / factor,
            rope_n_ctx_orig=int(get("rope.scaling.original_context_length", 0) or get("context_length", 0) or 0),
            yarn_log_mul=float(get("rope.scaling.yarn_log_multiplier", 0.0) or 0.0),
            n_ctx_train=int(get("context_length", 0) or 0), file_type=_field_value(reader, "general.file_type"),
            moe=moe)
        if n_head <= 0 or n_rot <= 0 or n_rot % 2 or dk <= n_rot or cfg.kv_lora_rank <= 0 or dv <= 0:
            raise GGUFError(f"{path}: inconsistent MLA hyper-parameters (heads {n_head}, key_length {dk}, "
                            f"rope dims {n_rot}, kv_lora_rank {cfg.kv_lora_rank}, value_length {dv})")
        if cfg.n_dense_lead < cfg.n_layer:
            moe.validate(path)
        return cfg


@dataclass(frozen=True)
class DeepSeek2Layer:
    attn_norm: np.ndarray          # (n_embd,) f32
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
    ffn_norm: np.ndarray
    w_gate: Weight | None          # dense blocks
    w_up: Weight | None
    w_down: Weight | None
    moe: MoEWeights | None         # MoE blocks

    def attn_weights(self) -> tuple[Weight, ...]:
        return tuple(w for w in (self.wq_a, self.wq_b, self.wq, self.wkv_a, self.wo) if w is not None)


@dataclass(frozen=True)
class DeepSeek2Weights:
    token_embd: Weight
    layers: tuple[DeepSeek2Layer, ...]
    output_norm: np.ndarray
    output: Weight
    tied_output: bool
    repacked: dict = field(default_factory=dict)


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


def load_deepseek2_weights(reader, cfg: DeepSeek2Config, path: str, log=None) -> DeepSeek2Weights:
    tensors = {t.name: t for t in reader.tensors}
    repacked: dict[str, int] = {}

    def need(name):
        t = tensors.get(name)
        if t is None:
            raise GGUFError(f"{path}: missing tensor {name}")
        return t

    def mat(name, n_out, n_in):
        return _matrix(need(name), path, n_out, n_in, repacked, keep_float=True)

    E, H, dk, dv, rot = cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.v_dim, cfg.n_rot
    rank, nope, ql = cfg.kv_lora_rank, cfg.nope, cfg.q_lora_rank
    emb_t = need("token_embd.weight")
    n_vocab = int(emb_t.shape[1]) if len(emb_t.shape) == 2 else 0
    token_embd = mat("token_embd.weight", n_vocab, E)
    layers = []
    for i in range(cfg.n_layer):
        p = f"blk.{i}."
        if p + "attn_kv_b.weight" in tensors:
            wkv_b = mat(p + "attn_kv_b.weight", H * (nope + dv), rank)
            wk_b = _per_head_from_rows(wkv_b, H, nope + dv, slice(0, nope), transpose=True)
            wv_b = _per_head_from_rows(wkv_b, H, nope + dv, slice(nope, nope + dv), transpose=False)
        else:
            wk_b = _load_3d(need(p + "attn_k_b.weight"), path, H, rank, nope, repacked)
            wv_b = _load_3d(need(p + "attn_v_b.weight"), path, H, dv, rank, repacked)
            wkv_b = _kv_b_from_split(wk_b, wv_b, nope)
        dense = i < cfg.n_dense_lead
        layers.append(DeepSeek2Layer(
            attn_norm=_vector(need(p + "attn_norm.weight"), path, E),
            wq_a=mat(p + "attn_q_a.weight", ql, E) if ql else None,
            q_a_norm=_vector(need(p + "attn_q_a_norm.weight"), path, ql) if ql else None,
            wq_b=mat(p + "attn_q_b.weight", H * dk, ql) if ql else None,
            wq=None if ql else mat(p + "attn_q.weight", H * dk, E),
            wkv_a=mat(p + "attn_kv_a_mqa.weight", rank + rot, E),
            kv_a_norm=_vector(need(p + "attn_kv_a_norm.weight"), path, rank),
            wkv_b=wkv_b, wk_b=wk_b, wv_b=wv_b,
            wo=mat(p + "attn_output.weight", E, H * dv),
            ffn_norm=_vector(need(p + "ffn_norm.weight"), path, E),
            w_gate=mat(p + "ffn_gate.weight", cfg.n_ff, E) if dense else None,
            w_up=mat(p + "ffn_up.weight", cfg.n_ff, E) if dense else None,
            w_down=mat(p + "ffn_down.weight", E, cfg.n_ff) if dense else None,
            moe=None if dense else load_moe_weights(tensors, p, cfg.moe, E, path, repacked)))
    tied = "output.weight" not in tensors
    output = token_embd if tied else mat("output.weight", n_vocab, E)
    if repacked and log:
        log("run-time repack: converted " + ", ".join(f"{n} x {k}" for k, n in sorted(repacked.items()))
            + " tensors to Q8_0 at load")
    return DeepSeek2Weights(token_embd, tuple(layers), _vector(need("output_norm.weight"), path, E),
                            output, tied, repacked)


def _mm(w: Weight, x: np.ndarray) -> np.ndarray:
    return _matmul(w, x, quantize_q8_0(x) if w.kind == "q8_0" else None)


def _per_head_mm(W: Experts, x: np.ndarray) -> np.ndarray:
    """out[:, h] = x[:, h] . W[h]^T for x (n, H, n_in) -> (n, H, n_out) f32."""
    n, H, n_in = x.shape
    xt = np.ascontiguousarray(x.transpose(1, 0, 2))                       # (H, n, n_in)
    if W.kind == "q8_0":
        y = grouped_gemm_q8_0(W.data, quantize_q8_0(xt.reshape(H * n, n_in)), n).reshape(H, n, W.n_out)
    else:
        y = np.einsum("hni,hoi->hno", xt, W.data, optimize=False).astype(np.float32)
    return np.ascontiguousarray(y.transpose(1, 0, 2))


class DeepSeek2Model(Model):
    """A deepseek2 model plus its c^KV cache; the interface engine.sweep uses (see Model)."""

    def __init__(self, path: str, config: DeepSeek2Config, weights: DeepSeek2Weights, options: EngineOptions,
                 load_seconds: float):
        self.path, self.config, self.weights, self.options, self.load_seconds = (
            path, config, weights, options, load_seconds)
        c = config
        self.cache = MLACache(c.n_layer, options.n_ctx, c.kv_lora_rank, c.n_rot, options.type_k)
        self.n_threads = options.n_threads or _numba.max_threads()
        self.n_threads_batch = options.n_threads_batch or self.n_threads
        self._yarn = c.rope_scaling == "yarn"
        self.repack_scratch = RepackScratch()       # --k-repack scratch of the decompressed PP path
        self.rtr_report = None                      # -rtr is not applied to deepseek2 (see load_deepseek2)

    # -- facts for headers and reports -------------------------------------------------
    @property
    def n_params(self) -> int:
        w = self.weights
        n = sum(x.n_out * x.n_in for x in (w.token_embd,) + (() if w.tied_output else (w.output,)))
        for L in w.layers:
            n += sum(x.n_out * x.n_in for x in L.attn_weights() + (L.wkv_b,))
            n += sum(x.n_out * x.n_in for x in (L.w_gate, L.w_up, L.w_down) if x is not None)
            n += L.moe.n_params if L.moe is not None else 0
        return n

    def uses_absorbed(self, n_tokens: int) -> bool:
        """Whether a batch of n_tokens runs the absorbed (True) or decompressed (False) attention."""
        mla = self.options.mla
        return mla in (1, 2) or (mla == 3 and n_tokens < MLA3_DECOMPRESS_MIN)

    @property
    def weight_bytes_per_token(self) -> int:
        """Bytes one TG token reads: attention (W_kb + W_vb or attn_kv_b per the TG mode), dense or
        router + shared + expert_used_count experts, and the output head."""
        w = self.weights
        absorbed = self.uses_absorbed(1)
        total = w.output.nbytes
        for L in w.layers:
            total += sum(x.nbytes for x in L.attn_weights())
            total += (L.wk_b.nbytes + L.wv_b.nbytes) if absorbed else L.wkv_b.nbytes
            if L.moe is None:
                total += sum(x.nbytes for x in (L.w_gate, L.w_up, L.w_down))
            else:
                total += L.moe.bytes_per_token(self.config.moe.n_expert_used)
        return total

    def weight_types(self) -> str:
        kinds = set()
        for L in self.weights.layers:
            kinds |= {x.source_type for x in L.attn_weights()}
            if L.moe is not None:
                kinds |= {L.moe.up.source_type, L.moe.down.source_type}
        return "+".join(sorted(kinds))

    def attention_mode(self, n_tokens: int) -> str:
        return "absorbed" if self.uses_absorbed(n_tokens) else "decompressed"

    # -- forward ---------------------------------------------------------------------
    def eval(self, tokens, pos: int, all_logits: bool = True) -> np.ndarray:
        """Run token ids at positions [pos, pos+n); return f32 logits (n or 1, n_vocab)."""
        tokens = start_batch(self, tokens, pos)
        n = tokens.shape[0]
        c = self.config
        threads = self.n_threads if n == 1 else self.n_threads_batch
        self.repack_scratch.reset()
        cos, sin = rope_cache(np.arange(pos, pos + n), c.n_rot, c.rope_freq_base, c.rope_freq_scale,
                              1.0 if self._yarn else 0.0, c.rope_attn_factor, c.rope_n_ctx_orig)
        H, nope, rot, rank, dv = c.n_head, c.nope, c.n_rot, c.kv_lora_rank, c.v_dim
        absorbed = self.uses_absorbed(n)
        flash, amb = self.options.flash_attn, self.options.amb
        fused = bool(self.options.fused_moe)
        x = _embed(self.weights.token_embd, tokens)                      # (n, n_embd) f32
        for li, L in enumerate(self.weights.layers):
            h = rmsnorm(x, L.attn_norm, c.rms_eps)
            hq = quantize_q8_0(h)
            if L.wq is None:
                qa = rmsnorm(_matmul(L.wq_a, h, hq), L.q_a_norm, c.rms_eps)
                q = _mm(L.wq_b, qa).reshape(n, H, nope + rot)               # (n, H, dk)
            else:
                q = _matmul(L.wq, h, hq).reshape(n, H, nope + rot)
            kva = _matmul(L.wkv_a, h, hq)                                   # (n, rank + rot)
            row = np.empty((n, rank + rot), dtype=np.float32)               # [c | k_pe]
            row[:, :rank] = rmsnorm(np.ascontiguousarray(kva[:, :rank]), L.kv_a_norm, c.rms_eps)
            k_pe = np.ascontiguousarray(kva[:, rank:]).reshape(n, 1, rot)
            q_pe = np.ascontiguousarray(q[:, :, nope:])
            rope_inplace(q_pe, cos, sin, rot, False)
            rope_inplace(k_pe, cos, sin, rot, False)
            row[:, rank:] = k_pe[:, 0]
            self.cache.store(li, pos, row)
            if absorbed:
                qa = np.empty((n, H, rank + rot), dtype=np.float32)
                qa[:, :, :rank] = _per_head_mm(L.wk_b, np.ascontiguousarray(q[:, :, :nope]))
                qa[:, :, rank:] = q_pe
                oc = absorbed_attention(qa, self.cache, li, pos, flash=flash, scale=c.kq_scale,
                                        amb_bytes=amb << 20,
                                        n_threads=threads)                 # (n, H, rank)
                a = _per_head_mm(L.wv_b, oc)                                # (n, H, dv)
            else:
                q[:, :, nope:] = q_pe
                wkv_b = L.wkv_b
                width = nope + dv

                def kv_rows(h0, h1, cc, cq, wkv_b=wkv_b, width=width):
                    rows = wkv_b.data[h0 * width:h1 * width]
                    if wkv_b.kind == "q8_0":
                        return gemm_q8_0(rows, cq if cq is not None else quantize_q8_0(cc))
                    return gemm_f32(rows, cc)

                a = decompressed_attention(q, self.cache, li, pos, kv_rows, nope=nope, dv=dv, flash=flash,
                                           scale=c.kq_scale, amb_bytes=amb << 20, attention_kw=dict(
                                               k_repack=self.options.k_repack, scratch=self.repack_scratch))
            a2 = np.ascontiguousarray(a.reshape(n, H * dv))
            x += _mm(L.wo, a2)
            h = rmsnorm(x, L.ffn_norm, c.rms_eps)
            if L.moe is None:
                hq = quantize_q8_0(h)
                s = swiglu(_matmul(L.w_gate, h, hq), _matmul(L.w_up, h, hq))
                x += _mm(L.w_down, s)
            else:
                x += moe_ffn(h, L.moe, c.moe, fused=fused)
        self.cache.commit(pos, n)
        if not all_logits:
            x = x[-1:]
        h = rmsnorm(np.ascontiguousarray(x), self.weights.output_norm, c.rms_eps)
        return _mm(self.weights.output, h)


def load_deepseek2(reader, path: str, opts: EngineOptions, log=None, t0: float | None = None) -> DeepSeek2Model:
    t0 = time.perf_counter() if t0 is None else t0
    cfg = DeepSeek2Config.from_gguf(reader, path)
    weights = load_deepseek2_weights(reader, cfg, path, log=log)
    if cfg.n_vocab == 0:
        cfg = DeepSeek2Config(**{**cfg.__dict__, "n_vocab": weights.token_embd.n_out})
    if opts.type_k == "q8_0" and (cfg.kv_lora_rank % 32 or cfg.n_rot % 32):
        raise EngineError(f"-ctk q8_0: kv_lora_rank {cfg.kv_lora_rank} and rope dims {cfg.n_rot} must be "
                          "multiples of 32")
    if getattr(opts, "rtr", False) and log:
        log("-rtr: not applied to deepseek2 (expert and per-head tensors stay Q8_0)")
    if opts.no_mmap:
        weights = copy_arrays(weights)
    return DeepSeek2Model(path, cfg, weights, opts, time.perf_counter() - t0)
