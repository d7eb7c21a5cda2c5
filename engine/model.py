"""The transformer: one forward pass over blocks, for every architecture.

Config (``engine.archs.ModelConfig``), read-only weights (``engine.loader.Weights``,
mmap'd) and run state (``RunState``: the KV or c^KV cache, the K-repack scratch and
the batch's RoPE tables) are kept apart, as in llama2.c. ``Model.eval(tokens, pos)``
runs one batch at positions [pos, pos+n):

  x = token_embd[tokens] (* embd_scale)
  for each block:  x += attn(rmsnorm(x) * attn_norm);  x += ffn(rmsnorm(x) * ffn_norm)
  logits = output . (rmsnorm(x) * output_norm)         (tanh soft-cap when the model has one)

Each normed input is quantized to Q8_0 once and shared by the block's products. The
blocks: ``engine.block_gqa`` (grouped-query attention), ``engine.block_mla`` (MLA),
``engine.block_ffn`` (gated FFN, MoE FFN). n == 1 uses ``n_threads`` (TG), n > 1
``n_threads_batch`` (PP), like llama.cpp's -t / -tb.
"""
from __future__ import annotations

import dataclasses
import os
import resource
import sys
import time
from typing import Callable

import numpy as np

from engine import _numba
from engine.archs import ModelConfig, load_notes, read_config, rtr_skip
from engine.block_mla import uses_absorbed
from engine.errors import EngineError
from engine.gguf_file import open_gguf
from engine.kvcache import KVCache
from engine.loader import Weights, load_weights
from engine.mla import MLACache
from engine.ops import rmsnorm_q8_0, rope_cache
from engine.options import EngineOptions, OptionError, option_flag
from engine.q8_0_r8 import RepackScratch
from engine.residency import RepackReport, place_weights
from engine.tensors import embed, matmul


def rss_hwm_mib() -> float:
    """Peak resident set size of this process so far, in MiB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


class RunState:
    """The mutable side of a model: its cache, the K-repack scratch, and the current batch
    (position, thread count, RoPE tables) that the blocks read."""

    def __init__(self, config: ModelConfig, options: EngineOptions):
        c = config
        self.config, self.options = config, options
        if c.uses_mla:
            self.cache = MLACache(c.n_layer, options.n_ctx, c.kv_lora_rank, c.n_rot, options.type_k)
        else:
            self.cache = KVCache(c.n_layer, options.n_ctx, c.n_head_kv, c.head_dim, c.head_dim,
                                 options.type_k, options.type_v)
        self.scratch = RepackScratch()        # grow-only, like ik's CPU work buffer
        self.pos, self.threads = 0, 1
        self._rope = self._rope_local = None  # (cos, sin) (n, n_rot/2) f32 each

    def begin(self, config: ModelConfig, pos: int, n: int, threads: int) -> None:
        """Set up a batch of n tokens at [pos, pos+n)."""
        c = self.config = config
        self.pos, self.threads = pos, threads
        self.scratch.reset()
        positions = np.arange(pos, pos + n)
        yarn = 1.0 if c.rope_scaling == "yarn" else 0.0
        self._rope = rope_cache(positions, c.n_rot, c.rope_freq_base, c.rope_freq_scale, yarn,
                                c.rope_attn_factor, c.rope_n_ctx_orig)
        # local (sliding-window) layers: their own base, no scaling
        self._rope_local = rope_cache(positions, c.n_rot, c.rope_freq_base_swa) if any(c.swa_layers) else None

    def rope(self, layer: int) -> tuple[np.ndarray, np.ndarray]:
        return self._rope_local if self.config.is_local(layer) else self._rope

    def window(self, layer: int) -> int:
        """Positions a query of this layer can see (0 = all: a global layer)."""
        return self.config.sliding_window if self.config.is_local(layer) else 0


class Model:
    """A loaded model plus its run state. Not thread-safe (one eval at a time)."""

    def __init__(self, path: str, config: ModelConfig, weights: Weights, options: EngineOptions,
                 load_seconds: float, rtr_report: RepackReport | None = None):
        self.path = path
        self.config = config
        self.weights = weights
        self.options = options
        self.load_seconds = load_seconds
        self.rtr_report = rtr_report        # what -rtr did (None without -rtr or where it does not apply)
        self.n_threads = options.n_threads or _numba.max_threads()
        self.n_threads_batch = options.n_threads_batch or self.n_threads
        self.state = RunState(config, options)

    # -- facts for headers and reports -------------------------------------------------
    @property
    def n_params(self) -> int:
        return self.weights.n_params

    @property
    def size_bytes(self) -> int:
        return os.path.getsize(self.path)

    @property
    def weight_bytes_per_token(self) -> int:
        """Weight bytes one TG token reads (MoE: router, shared and used experts; MLA: TG-mode matrices)."""
        return self.weights.bytes_per_token(uses_absorbed(self.options.mla, 1))

    def weight_types(self) -> str:
        """The GGML types of the blocks' main matrices, e.g. ``Q8_0`` or ``Q4_K+Q6_K``."""
        return self.weights.source_types()

    def attention_mode(self, n_tokens: int) -> str:
        """MLA: "absorbed" or "decompressed" for a batch of n_tokens (-mla); else "standard"."""
        if not self.config.uses_mla:
            return "standard"
        return "absorbed" if uses_absorbed(self.options.mla, n_tokens) else "decompressed"

    def attention_span(self, layer: int) -> int:
        """Positions a query of this layer can see (0 = all: a global layer)."""
        return self.config.sliding_window if self.config.is_local(layer) else 0

    @property
    def repack_scratch(self) -> RepackScratch:
        return self.state.scratch

    @property
    def repack_scratch_mib(self) -> float:
        """K-repack scratch the last batch needed (0 for TG or without repack), MiB."""
        return self.state.scratch.last_bytes / 2**20

    @property
    def repack_scratch_hwm_mib(self) -> float:
        """K-repack scratch allocated so far (grow-only high-water mark), MiB."""
        return self.state.scratch.hwm_bytes / 2**20

    @property
    def n_vocab(self) -> int:
        return self.config.n_vocab

    # -- KV cache --------------------------------------------------------------------
    @property
    def cache(self) -> KVCache | MLACache:
        return self.state.cache

    @property
    def kv_capacity(self) -> int:
        """Positions the KV cache holds (n_ctx)."""
        return self.state.cache.n_ctx

    @property
    def n_past(self) -> int:
        return self.state.cache.n_used

    def kv_clear(self) -> None:
        self.state.cache.clear()

    def kv_truncate(self, n: int) -> None:
        """Keep positions [0, n) of the cache."""
        self.state.cache.remove(n, -1)

    # -- forward ---------------------------------------------------------------------
    def _check_batch(self, tokens, pos: int) -> np.ndarray:
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        n = tokens.shape[0]
        n_vocab = self.weights.token_embd.n_out
        cache = self.state.cache
        if n == 0:
            raise EngineError("eval: empty batch")
        if tokens.min() < 0 or tokens.max() >= n_vocab:
            raise EngineError(f"eval: token id out of range [0, {n_vocab})")
        if pos != cache.n_used:
            raise EngineError(f"eval: batch at position {pos} but the cache holds {cache.n_used}")
        if pos + n > cache.n_ctx:
            raise EngineError(f"eval: positions up to {pos + n} exceed n_ctx {cache.n_ctx}")
        return tokens

    def eval(self, tokens, pos: int, all_logits: bool = True) -> np.ndarray:
        """Run token ids at positions [pos, pos+n); return f32 logits (n or 1, n_vocab)."""
        tokens = self._check_batch(tokens, pos)
        n = tokens.shape[0]
        c, w, run = self.config, self.weights, self.state
        threads = self.n_threads if n == 1 else self.n_threads_batch
        _numba.set_threads(threads)
        run.begin(c, pos, n, threads)
        x = embed(w.token_embd, tokens)                                    # (n, n_embd) f32
        if c.embd_scale != 1.0:
            x *= np.float32(c.embd_scale)
        for li, L in enumerate(w.layers):
            h, hq = rmsnorm_q8_0(x, L.attn_norm, c.rms_eps)                 # (n, n_embd) f32, its Q8_0
            x += L.attn(h, hq, li, run)
            h, hq = rmsnorm_q8_0(x, L.ffn_norm, c.rms_eps)
            x += L.ffn(h, hq, run)
        run.cache.commit(pos, n)
        if not all_logits:
            x = x[-1:]
        h, hq = rmsnorm_q8_0(np.ascontiguousarray(x), w.output_norm, c.rms_eps)
        logits = matmul(w.output, h, hq)                                   # (n, n_vocab) f32
        if c.final_logit_softcap > 0:
            cap = np.float32(c.final_logit_softcap)
            logits = np.tanh(logits / cap) * cap
        return logits


def load_model(path: str | os.PathLike, *, n_ctx: int = 4096, type_k: str = "f16", type_v: str = "f16",
               flash_attn: bool = True, n_threads: int = 0, n_threads_batch: int = 0,
               fused_moe: bool = False, mla: int = 0, amb: int = 0,
               k_repack: str = "auto", rtr: bool = False, no_mmap: bool = False,
               log: Callable[[str], None] | None = None) -> Model:
    """Load a GGUF model (any architecture of engine.archs.ARCHS) with a cache of n_ctx positions."""
    opts = EngineOptions(n_ctx=n_ctx, type_k=type_k, type_v=type_v, flash_attn=flash_attn,
                         n_threads=n_threads, n_threads_batch=n_threads_batch,
                         fused_moe=fused_moe, mla=mla, amb=amb,
                         k_repack=k_repack, rtr=rtr, no_mmap=no_mmap)
    try:
        opts.validate(max_threads=_numba.max_threads())
    except OptionError as exc:
        raise EngineError(f"{option_flag(exc.setting)}: {exc.message}") from None
    if _numba.SIMD_ERROR:
        raise EngineError(_numba.SIMD_ERROR)
    t0 = time.perf_counter()
    gf = open_gguf(path)
    cfg = read_config(gf)
    for note in load_notes(cfg):
        if log:
            log(note)
    weights = load_weights(gf, cfg, log=log)
    weights, rtr_report = place_weights(weights, gf.data, opts, rtr_skip(cfg), log)
    if cfg.n_vocab == 0:
        cfg = dataclasses.replace(cfg, n_vocab=weights.token_embd.n_out)
    return Model(str(path), cfg, weights, opts, time.perf_counter() - t0, rtr_report)


def stderr_log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)
