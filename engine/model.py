"""The llama-family forward pass over a KV cache.

Config (ModelConfig), read-only weights (Weights, mmap'd) and run state
(KVCache + scratch) are kept apart. ``Model.eval(tokens, pos)`` runs one batch
at positions [pos, pos+n): n == 1 uses ``n_threads`` (TG), n > 1 uses
``n_threads_batch`` (PP), like llama.cpp's -t / -tb.
"""
from __future__ import annotations

import os
import resource
import sys
import time
from typing import Callable

import numpy as np

from engine import _numba
from engine.attention import attention
from engine.errors import EngineError
from engine.gguf_model import ModelConfig, Weight, Weights, load_weights, open_gguf
from engine.kvcache import KVCache
from engine.no_mmap import copy_arrays
from engine.options import EngineOptions, OptionError, option_flag
from engine.matmul import gemm_f32, gemm_q8_0, gemm_q8_0_multi
from engine.q8_0_r8 import (RepackReport, RepackScratch, gemm_q8_0_r8, gemm_q8_0_r8_multi,
                            mmap_releaser, repack_weights)
from engine.ops import rmsnorm_q8_0, rope_cache, rope_inplace, swiglu_q8_0
from engine.quant import dequantize_q8_0, quantize_q8_0


def rss_hwm_mib() -> float:
    """Peak resident set size of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _matmul(w: Weight, x: np.ndarray, xq: np.ndarray | None) -> np.ndarray:
    if w.kind == "q8_0":
        return gemm_q8_0(w.data, xq)
    if w.kind == "q8_0_r8":
        return gemm_q8_0_r8(w.data, xq)
    return gemm_f32(w.data, x)


def _matmuls(ws: tuple[Weight, ...], x: np.ndarray, xq: np.ndarray) -> list[np.ndarray]:
    """Several matrices applied to the same input; all-Q8_0 ones share one launch."""
    if all(w.kind == "q8_0" for w in ws):
        return gemm_q8_0_multi([w.data for w in ws], xq)
    if all(w.kind == "q8_0_r8" for w in ws):
        return gemm_q8_0_r8_multi([w.data for w in ws], xq)
    return [_matmul(w, x, xq) for w in ws]


def _embed(w: Weight, tokens: np.ndarray) -> np.ndarray:
    if w.kind == "q8_0":
        return dequantize_q8_0(np.ascontiguousarray(w.data[tokens]))
    return np.ascontiguousarray(w.data[tokens], dtype=np.float32)


def start_batch(model, tokens, pos: int) -> np.ndarray:
    """Check a batch against the model's vocabulary and cache, and pick the thread count
    (-t for 1-token TG batches, -tb for PP) shared by every architecture's eval."""
    tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
    n = tokens.shape[0]
    n_vocab = model.weights.token_embd.n_out
    if n == 0:
        raise EngineError("eval: empty batch")
    if tokens.min() < 0 or tokens.max() >= n_vocab:
        raise EngineError(f"eval: token id out of range [0, {n_vocab})")
    if pos != model.cache.n_used:
        raise EngineError(f"eval: batch at position {pos} but the cache holds {model.cache.n_used}")
    if pos + n > model.cache.n_ctx:
        raise EngineError(f"eval: positions up to {pos + n} exceed n_ctx {model.cache.n_ctx}")
    _numba.set_threads(model.n_threads if n == 1 else model.n_threads_batch)
    return tokens


class Model:
    """A loaded model plus its KV cache. Not thread-safe (one eval at a time)."""

    def __init__(self, path: str, config: ModelConfig, weights: Weights, options: EngineOptions,
                 load_seconds: float):
        self.path = path
        self.config = config
        self.weights = weights
        self.options = options
        self.load_seconds = load_seconds
        c = config
        self.cache = KVCache(c.n_layer, options.n_ctx, c.n_head_kv, c.head_dim, c.head_dim,
                             options.type_k, options.type_v)
        self.n_threads = options.n_threads or _numba.max_threads()
        self.n_threads_batch = options.n_threads_batch or self.n_threads
        self._yarn = c.rope_scaling == "yarn"
        self.repack_scratch = RepackScratch()       # grow-only K-repack scratch (run state)
        self.rtr_report: RepackReport | None = None  # set by load_model with -rtr

    # -- facts for headers and reports -------------------------------------------------
    @property
    def n_params(self) -> int:
        w = self.weights
        n = sum(x.n_out * x.n_in for x in (w.token_embd,) + (() if w.tied_output else (w.output,)))
        for L in w.layers:
            n += sum(x.n_out * x.n_in for x in (L.wq, L.wk, L.wv, L.wo, L.w_gate, L.w_up, L.w_down))
            n += 2 * L.attn_norm.shape[0]
        return n

    @property
    def size_bytes(self) -> int:
        return os.path.getsize(self.path)

    @property
    def weight_bytes_per_token(self) -> int:
        return self.weights.matmul_bytes_per_token

    @property
    def repack_scratch_mib(self) -> float:
        """K-repack scratch the last batch needed (0 for TG or without repack), MiB."""
        return self.repack_scratch.last_bytes / 2**20

    @property
    def repack_scratch_hwm_mib(self) -> float:
        """K-repack scratch allocated so far (grow-only high-water mark), MiB."""
        return self.repack_scratch.hwm_bytes / 2**20

    @property
    def n_vocab(self) -> int:
        return self.config.n_vocab

    # -- KV cache --------------------------------------------------------------------
    @property
    def kv_capacity(self) -> int:
        """Positions the KV cache holds (n_ctx)."""
        return self.cache.n_ctx

    @property
    def n_past(self) -> int:
        return self.cache.n_used

    def kv_clear(self) -> None:
        self.cache.clear()

    def kv_truncate(self, n: int) -> None:
        """Keep positions [0, n) of the cache."""
        self.cache.remove(n, -1)

    # -- forward ---------------------------------------------------------------------
    def eval(self, tokens, pos: int, all_logits: bool = True) -> np.ndarray:
        """Run token ids at positions [pos, pos+n); return f32 logits (n or 1, n_vocab)."""
        tokens = start_batch(self, tokens, pos)
        n = tokens.shape[0]
        c = self.config
        self.repack_scratch.reset()
        positions = np.arange(pos, pos + n)
        cos, sin = rope_cache(positions, c.n_rot, c.rope_freq_base, c.rope_freq_scale,
                              1.0 if self._yarn else 0.0, 1.0, c.rope_n_ctx_orig)
        x = _embed(self.weights.token_embd, tokens)                      # (n, n_embd) f32
        for li, L in enumerate(self.weights.layers):
            h, hq = rmsnorm_q8_0(x, L.attn_norm, c.rms_eps)
            q, k, v = _matmuls((L.wq, L.wk, L.wv), h, hq)               # (n, n_head*hd), (n, n_kv*hd) x2
            if L.bq is not None:
                q += L.bq
            if L.bk is not None:
                k += L.bk
            if L.bv is not None:
                v += L.bv
            q3 = q.reshape(n, c.n_head, c.head_dim)
            k3 = k.reshape(n, c.n_head_kv, c.head_dim)
            rope_inplace(q3, cos, sin, c.n_rot, c.rope_neox)
            rope_inplace(k3, cos, sin, c.n_rot, c.rope_neox)
            self.cache.store(li, pos, k, v)
            a = attention(q3, self.cache, li, pos, flash=self.options.flash_attn,
                          k_repack=self.options.k_repack, scratch=self.repack_scratch)
            a2 = a.reshape(n, c.n_head * c.head_dim)
            x += _matmul(L.wo, a2, quantize_q8_0(a2) if L.wo.kind != "f32" else None)
            h, hq = rmsnorm_q8_0(x, L.ffn_norm, c.rms_eps)
            g, u = _matmuls((L.w_gate, L.w_up), h, hq)                  # (n, n_ff) x2
            s, sq = swiglu_q8_0(g, u)
            x += _matmul(L.w_down, s, sq)
        self.cache.commit(pos, n)
        if not all_logits:
            x = x[-1:]
        h, hq = rmsnorm_q8_0(np.ascontiguousarray(x), self.weights.output_norm, c.rms_eps)
        return _matmul(self.weights.output, h, hq)


def place_weights(weights: Weights, reader, opts: EngineOptions,
                  log: Callable[[str], None] | None = None) -> tuple[Weights, RepackReport | None]:
    """-rtr (repack to Q8_0_R8, releasing the file pages) or --no-mmap (copy out of the
    mapping) for llama-shaped weights; else the mmap'd arrays as they are."""
    if opts.rtr:
        weights, report = repack_weights(weights, release=mmap_releaser(reader.data))
        if log:
            log(report.line())
        return weights, report
    if opts.no_mmap:                                 # -rtr already copied everything
        weights = copy_arrays(weights)
    return weights, None


def load_model(path: str | os.PathLike, *, n_ctx: int = 4096, type_k: str = "f16", type_v: str = "f16",
               flash_attn: bool = True, n_threads: int = 0, n_threads_batch: int = 0,
               fused_moe: bool = False, mla: int = 0, amb: int = 0,
               k_repack: str = "auto", rtr: bool = False, no_mmap: bool = False,
               log: Callable[[str], None] | None = None) -> Model:
    """Load a GGUF model with a KV cache of n_ctx positions.

    llama / qwen2 run here; qwen2moe and llama-with-experts (mixtral) go to
    engine.moe_model, deepseek2 to engine.deepseek2, gemma3 to engine.gemma3 (chosen by
    general.architecture).
    """
    opts = EngineOptions(n_ctx=n_ctx, type_k=type_k, type_v=type_v, flash_attn=flash_attn,
                         n_threads=n_threads, n_threads_batch=n_threads_batch,
                         fused_moe=fused_moe, mla=mla, amb=amb,
                         k_repack=k_repack, rtr=rtr, no_mmap=no_mmap)
    try:
        opts.validate(max_threads=_numba.max_threads())
    except OptionError as exc:
        raise EngineError(f"{option_flag(exc.setting)}: {exc.message}") from None
    t0 = time.perf_counter()
    path = str(path)
    reader = open_gguf(path)
    from engine import deepseek2, gemma3, moe_model  # these import this module
    if deepseek2.is_deepseek2(reader):
        return deepseek2.load_deepseek2(reader, path, opts, log=log, t0=t0)
    if moe_model.is_moe_llama(reader):
        return moe_model.load_moe_llama(reader, path, opts, log=log, t0=t0)
    if gemma3.is_gemma3(reader):
        return gemma3.load_gemma3(reader, path, opts, log=log, t0=t0)
    cfg = ModelConfig.from_gguf(reader, path)
    weights = load_weights(reader, cfg, path, log=log)
    weights, rtr_report = place_weights(weights, reader, opts, log)
    if cfg.n_vocab == 0:
        cfg = ModelConfig(**{**cfg.__dict__, "n_vocab": weights.token_embd.n_out})
    model = Model(path, cfg, weights, opts, time.perf_counter() - t0)
    model.rtr_report = rtr_report
    return model


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
