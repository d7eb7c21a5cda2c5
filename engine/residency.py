"""Where a loaded model's weights live: the file mapping, a copy (--no-mmap), or repacked (-rtr).

Weights are normally numpy views of the mmap'd GGUF file, so the kernel may drop their
pages and read them back later. On hosts that page out cold file pages on their own
(this development VM runs DAMON with a ``pageout`` scheme; a MoE model's TG touches
only the selected experts, so the rest go cold), TG rows then measure disk refaults
instead of memory bandwidth. ``--no-mmap`` copies every array into anonymous memory at
load (ik_llama.cpp's ``--no-mmap``; the seed ran with it). ``-rtr`` repacks every Q8_0
weight matrix except token_embd (rows % 8 == 0) to Q8_0_R8 (engine.q8_0_r8) and copies
the rest, so the model is no longer mmap-backed either (what ik's -rtr does).
"""
from __future__ import annotations

import dataclasses
import mmap
import time
from typing import Callable

import numpy as np

from engine.options import EngineOptions
from engine.q8_0_r8 import pack_q8_0_r8
from engine.layout import R8_ROWS
from engine.tensors import Weight


def copy_arrays(obj, _memo: dict | None = None):
    """The same (frozen) dataclass tree with every numpy array copied into owned memory.

    Shared objects stay shared (a tied output is still token_embd, copied once).
    """
    memo = {} if _memo is None else _memo
    key = id(obj)
    if key in memo:
        return memo[key]
    if isinstance(obj, np.ndarray):
        out = np.array(obj, copy=True)
    elif isinstance(obj, tuple):
        out = tuple(copy_arrays(x, memo) for x in obj)
    elif isinstance(obj, dict):
        out = {k: copy_arrays(v, memo) for k, v in obj.items()}
    elif dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        out = dataclasses.replace(obj, **{f.name: copy_arrays(getattr(obj, f.name), memo)
                                          for f in dataclasses.fields(obj) if f.init})
    else:
        return obj
    memo[key] = out
    return out


def weights_are_owned(obj) -> bool:
    """True when no array in the tree is a view of a file mapping."""
    if isinstance(obj, np.ndarray):
        base = obj
        while isinstance(base, np.ndarray) and base.base is not None:
            base = base.base
        return not isinstance(base, (mmap.mmap, np.memmap))
    if isinstance(obj, (tuple, list)):
        return all(weights_are_owned(x) for x in obj)
    if isinstance(obj, dict):
        return all(weights_are_owned(v) for v in obj.values())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return all(weights_are_owned(getattr(obj, f.name)) for f in dataclasses.fields(obj))
    return True


def mmap_releaser(mm) -> Callable[[np.ndarray], None]:
    """A function that drops the file-mapped pages under an array viewing ``mm`` from RSS.

    mm: the ``np.memmap`` of the whole file (``GGUFFile.data``). The pages stay in the page
    cache; touching them again re-faults them. Arrays not inside mm are ignored.
    """
    raw = getattr(mm, "_mmap", None)
    if raw is None or not hasattr(raw, "madvise"):
        return lambda a: None
    base, size, page = mm.ctypes.data, mm.nbytes, mmap.PAGESIZE

    def release(a: np.ndarray) -> None:
        start = a.ctypes.data - base
        if start < 0 or start + a.nbytes > size:
            return
        lo = start // page * page
        hi = min(size, -(-(start + a.nbytes) // page) * page)
        raw.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    return release


@dataclasses.dataclass(frozen=True)
class RepackReport:
    """What ``repack_weights`` did: counts, bytes and time."""

    n_repacked: int
    n_kept: int
    mib_repacked: float
    seconds: float
    kept: tuple[str, ...]   # names of Q8_0 matrices left as Q8_0 (token_embd, rows % 8 != 0)

    def line(self) -> str:
        kept = f"; kept as Q8_0: {', '.join(self.kept)}" if self.kept else ""
        return (f"run-time repack (-rtr): {self.n_repacked} Q8_0 matrices ({self.mib_repacked:.1f} MiB) "
                f"-> Q8_0_R8 in {self.seconds:.2f} s{kept}")


def repack_weights(weights, release: Callable[[np.ndarray], None] | None = None):
    """-rtr: every Q8_0 matrix of the blocks and the output head with rows % 8 == 0 -> "q8_0_r8".

    Returns (new Weights, RepackReport). Repacked matrices live in anonymous memory;
    everything else is copied out of the file mapping too (norms, biases, token_embd), so
    no view keeps the mmap alive. ``release(array)`` (``mmap_releaser``) is called on each
    source matrix once it is copied, so peak RSS holds about one model, not the mapped file
    plus the copy.
    """
    t0 = time.perf_counter()
    counts = {"n": 0, "bytes": 0}
    kept: list[str] = []
    done = release or (lambda a: None)

    def conv(w: Weight, name: str) -> Weight:
        if w.kind != "q8_0" or w.n_out % R8_ROWS:
            if w.kind == "q8_0":
                kept.append(name)
            out = dataclasses.replace(w, data=np.array(w.data, copy=True))
        else:
            counts["n"] += 1
            counts["bytes"] += w.data.nbytes
            out = dataclasses.replace(w, kind="q8_0_r8", data=pack_q8_0_r8(np.ascontiguousarray(w.data)))
        done(w.data)
        return out

    def walk(obj, prefix: str):
        # a block's matrices are named blk.<i>.<field>; vectors are copied
        if isinstance(obj, np.ndarray):
            return np.array(obj, copy=True)
        if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
            new = {}
            for f in dataclasses.fields(obj):
                v = getattr(obj, f.name)
                new[f.name] = conv(v, f"{prefix}.{f.name}") if isinstance(v, Weight) else walk(v, prefix)
            return dataclasses.replace(obj, **new)
        return obj

    emb = weights.token_embd
    emb_new = dataclasses.replace(emb, data=np.array(emb.data, copy=True))
    done(emb.data)
    layers = tuple(walk(L, f"blk.{i}") for i, L in enumerate(weights.layers))
    if weights.tied_output:
        output = emb_new
        kept.insert(0, "token_embd (tied output)")
    else:
        output = conv(weights.output, "output")
        kept.insert(0, "token_embd")
    new = dataclasses.replace(weights, token_embd=emb_new, layers=layers,
                              output_norm=np.array(weights.output_norm, copy=True), output=output)
    rep = RepackReport(n_repacked=counts["n"], n_kept=len(kept), mib_repacked=counts["bytes"] / 2**20,
                       seconds=time.perf_counter() - t0, kept=tuple(kept))
    return new, rep


def place_weights(weights, mm, opts: EngineOptions, rtr_skip: str = "",
                  log: Callable[[str], None] | None = None):
    """(weights, RepackReport or None): -rtr (repack, releasing the file's pages) unless
    ``rtr_skip`` says why the model keeps its matrices, else --no-mmap (copy out of the
    mapping), else the mapped arrays."""
    if opts.rtr and not rtr_skip:
        weights, report = repack_weights(weights, release=mmap_releaser(mm))
        if log:
            log(report.line())
        return weights, report
    if opts.rtr and log:
        log(f"-rtr: not applied to {rtr_skip}")
    if opts.no_mmap:
        weights = copy_arrays(weights)
    return weights, None
