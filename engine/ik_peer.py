"""ik_llama.cpp as a correctness and speed peer, driven through its C API (ctypes).

The ``ik-llama-cpp-python`` wheel ships libllama.so and ctypes bindings; its
``IkLlama`` wrapper turns flash attention off on CPUs without AVX-VNNI, so we
call the C API directly and choose (``flash_attn``, ``type_k``/``type_v``).
The wheel is optional: it is imported inside functions, so the engine runs
without it, and a missing wheel is a one-line EngineError. Struct layouts
(model/context params, batch) are the wheel's own, as they change between ik
versions. ik's log is silenced (quiet=True); its last error line goes into
the EngineError when a load fails.

    with IkPeer(path, n_ctx=512, type_k="q8_0", type_v="q8_0", flash_attn=True) as ik:
        logits = ik.eval(ids, 0)          # (n, n_vocab) f32, like Model.eval
    greedy(model_or_peer, ids, 16)        # 16 greedy continuation ids

``ik_sweep(peer, cfg)`` is engine.sweep's loop (same SweepConfig, same token
stream, same SweepRow records) through ik.
"""
from __future__ import annotations

import ctypes
import functools
import os
from collections import deque
from typing import Iterator, Protocol, Sequence

import numpy as np

from engine.errors import EngineError
from engine.sweep import SweepConfig, SweepRow, sweep

# ggml_type ids of the cache types we compare (ggml.h: GGML_TYPE_F32/F16/Q8_0)
GGML_TYPES = {"f32": 0, "f16": 1, "q8_0": 8}
_LOG_ERROR = 4   # ggml_log_level: DEBUG=1, INFO=2, WARN=3, ERROR=4 (as ik's libllama reports them)


def _api():
    """(ctypes API module, libllama CDLL), imported on first use."""
    try:
        from ik_llama_cpp import _ctypes_api as C
    except (ImportError, OSError) as e:
        raise EngineError(f"ik_llama.cpp peer: the ik-llama-cpp-python wheel is not usable ({e}); "
                          "pip install ik-llama-cpp-python") from None
    return C, C._lib


@functools.lru_cache(maxsize=None)
def _bound(name: str, argtypes: tuple, restype):
    """A libllama symbol the wheel's bindings leave out (seq_rm, log_set), typed once."""
    f = getattr(_api()[1], name)
    f.argtypes, f.restype = list(argtypes), restype
    return f


_LOG_CB = ctypes.CFUNCTYPE(None, ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p)


@functools.lru_cache(maxsize=None)
def _quiet_log() -> tuple:
    """(callback, deque of the last error lines): ik's log goes there instead of stderr.

    The callback object must outlive every ik call, hence cached for the process.
    """
    lines: deque[str] = deque(maxlen=4)

    def cb(level, text, _user):
        if level == _LOG_ERROR and text:
            lines.append(text.decode(errors="replace").strip())

    return _LOG_CB(cb), lines


def _set_log(quiet: bool) -> deque:
    cb, errors = _quiet_log()
    _bound("llama_log_set", (_LOG_CB, ctypes.c_void_p), None)(cb if quiet else _LOG_CB(), None)
    return errors


class IkPeer:
    """One ik_llama.cpp model + context + batch, single sequence; mirrors Model's eval/kv API.

    n_threads is used for single-token batches (TG), n_threads_batch for the rest
    (ik decides per batch, like our engine). n_batch defaults to n_ctx so one
    eval may hold any prompt that fits; ik splits it into n_ubatch pieces.
    """

    def __init__(self, path: str | os.PathLike, *, n_ctx: int = 4096, n_threads: int = 0,
                 n_threads_batch: int = 0, flash_attn: bool = False, type_k: str = "f16",
                 type_v: str = "f16", n_ubatch: int = 512, n_batch: int = 0, use_mmap: bool = False,
                 quiet: bool = True):
        self._model = self._ctx = self._batch = None   # close() frees what exists
        for flag, t in (("type_k", type_k), ("type_v", type_v)):
            if t not in GGML_TYPES:
                raise EngineError(f"ik peer: {flag} {t!r} is not one of {', '.join(GGML_TYPES)}")
        self.path = str(path)
        if not os.path.isfile(self.path):
            raise EngineError(f"{self.path}: no such model file")
        C, _ = _api()
        self.n_ctx = n_ctx
        self.n_batch = n_batch or n_ctx
        self.flash_attn, self.type_k, self.type_v = flash_attn, type_k, type_v
        errors = _set_log(quiet)
        errors.clear()
        C.llama_backend_init()
        mp = C.llama_model_default_params()
        mp.n_gpu_layers = 0
        mp.use_mmap = use_mmap
        self._model = C.llama_model_load_from_file(self.path.encode(), mp)
        if not self._model:
            raise EngineError(f"{self.path}: ik_llama.cpp could not load the model"
                              + (f" ({errors[0]})" if errors else ""))
        cp = C.llama_context_default_params()
        cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max = n_ctx, self.n_batch, min(n_ubatch, self.n_batch), 1
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        cp.n_threads = n_threads or cpus
        cp.n_threads_batch = n_threads_batch or cp.n_threads
        cp.flash_attn = flash_attn
        cp.type_k, cp.type_v = GGML_TYPES[type_k], GGML_TYPES[type_v]
        self._ctx = C.llama_init_from_model(self._model, cp)
        if not self._ctx:
            self.close()
            raise EngineError(f"{self.path}: ik_llama.cpp could not create a context (n_ctx {n_ctx}, "
                              f"-fa {int(flash_attn)}, K {type_k}, V {type_v})"
                              + (f": {errors[0]}" if errors else ""))
        self.n_threads, self.n_threads_batch = cp.n_threads, cp.n_threads_batch
        self.n_vocab = C.llama_vocab_n_tokens(C.llama_model_get_vocab(self._model))
        self._batch = C.llama_batch_init(self.n_batch, 0, 1)
        self._n_past = 0

    # -- KV cache (Model's names, so engine code can take either) --------------------
    @property
    def kv_capacity(self) -> int:
        return self.n_ctx

    @property
    def n_past(self) -> int:
        return self._n_past

    def kv_clear(self) -> None:
        self._C.llama_kv_cache_clear(self._live())
        self._n_past = 0

    def kv_remove(self, p0: int) -> None:
        """Drop positions [p0, end) of the sequence (llama_kv_cache_seq_rm(ctx, 0, p0, -1))."""
        rm = _bound("llama_kv_cache_seq_rm", (ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_int32),
                    ctypes.c_bool)
        if not rm(self._live(), 0, p0, -1):
            raise EngineError(f"ik peer: could not remove KV positions from {p0}")
        self._n_past = min(self._n_past, p0)

    kv_truncate = kv_remove     # Model.kv_truncate(n) keeps [0, n): the same thing

    # -- forward ---------------------------------------------------------------------
    def eval(self, tokens, pos: int, all_logits: bool = True) -> np.ndarray:
        """Run token ids at positions [pos, pos+n); return f32 logits (n or 1, n_vocab), copied."""
        ctx = self._live()
        toks = np.asarray(tokens, dtype=np.int64).reshape(-1)
        n = toks.shape[0]
        if n == 0 or n > self.n_batch:
            raise EngineError(f"ik peer: batch of {n} tokens (allowed 1..{self.n_batch})")
        if pos < 0 or pos + n > self.n_ctx:
            raise EngineError(f"ik peer: positions up to {pos + n} exceed n_ctx {self.n_ctx}")
        if toks.min() < 0 or toks.max() >= self.n_vocab:
            raise EngineError(f"ik peer: token id out of range 0..{self.n_vocab - 1}")
        b = self._batch
        b.n_tokens = n
        for i in range(n):
            b.token[i] = int(toks[i])
            b.pos[i] = pos + i
            b.n_seq_id[i] = 1
            b.seq_id[i][0] = 0
            b.logits[i] = 1 if all_logits or i == n - 1 else 0
        rc = self._C.llama_decode(ctx, b)
        if rc != 0:
            raise EngineError(f"ik peer: llama_decode returned {rc} ({n} tokens at pos {pos})")
        self._n_past = pos + n
        rows = range(n) if all_logits else (n - 1,)
        out = np.empty((len(rows), self.n_vocab), dtype=np.float32)
        for j, i in enumerate(rows):
            out[j] = np.ctypeslib.as_array(self._C.llama_get_logits_ith(ctx, i), shape=(self.n_vocab,))
        return out

    def tokenize(self, text: str, add_bos: bool = True) -> list[int]:
        C = self._C
        raw = text.encode()
        n = abs(C.llama_tokenize(self._model, raw, len(raw), None, 0, add_bos, False))  # ik takes model*
        buf = (C.llama_token * max(n, 1))()
        n = C.llama_tokenize(self._model, raw, len(raw), buf, n, add_bos, False)
        return list(buf[:n])

    # -- lifetime --------------------------------------------------------------------
    @property
    def _C(self):
        return _api()[0]

    def _live(self):
        if not self._ctx:
            raise EngineError("ik peer: used after close()")
        return self._ctx

    def close(self) -> None:
        C = self._C
        if self._batch is not None:
            C.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx:
            C.llama_free(self._ctx)
            self._ctx = None
        if self._model:
            C.llama_free_model(self._model)
            self._model = None

    def __enter__(self) -> "IkPeer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown: the module may be gone already
            pass


class Evaluator(Protocol):
    """What greedy() needs: engine.Model and IkPeer both have it."""

    def eval(self, tokens, pos: int, all_logits: bool = True) -> np.ndarray: ...

    def kv_clear(self) -> None: ...


def greedy_with_margins(m: Evaluator, prompt_ids: Sequence[int], n: int) -> tuple[list[int], list[float]]:
    """n greedy ids after the prompt, and each step's top-1 minus top-2 logit (near-ties show)."""
    m.kv_clear()
    logits = m.eval(np.asarray(prompt_ids), 0, all_logits=False)[-1]
    ids, margins = [], []
    pos = len(prompt_ids)
    for _ in range(n):
        top2 = np.partition(logits, -2)[-2:]
        ids.append(int(np.argmax(logits)))
        margins.append(float(top2[1] - top2[0]))
        if len(ids) == n:
            break
        logits = m.eval(np.asarray(ids[-1:]), pos, all_logits=False)[-1]
        pos += 1
    return ids, margins


def greedy(m: Evaluator, prompt_ids: Sequence[int], n: int) -> list[int]:
    """n greedy (argmax) continuation ids after prompt_ids, starting from an empty cache."""
    return greedy_with_margins(m, prompt_ids, n)[0]


def ik_sweep(peer: IkPeer, cfg: SweepConfig) -> Iterator[SweepRow]:
    """engine.sweep.sweep through ik: the same loop, warm-up, seeded token stream and rows."""
    if cfg.n_ubatch > peer.n_batch:
        raise EngineError(f"-ub: {cfg.n_ubatch} exceeds the ik batch ({peer.n_batch})")
    return sweep(peer, cfg, scratch_mib=lambda: 0.0)
