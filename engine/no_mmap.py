"""``--no-mmap``: copy a loaded model's weights out of the GGUF file mapping.

Weights are normally numpy views of the mmap'd file, so the kernel may drop their
pages and read them back later. On hosts that page out cold file pages on their
own (this development VM runs DAMON with a ``pageout`` scheme; a MoE model's TG
touches only the selected experts, so the rest go cold), TG rows then measure
disk refaults instead of memory bandwidth. With ``no_mmap`` every array is copied
into anonymous memory at load (ik_llama.cpp's ``--no-mmap``; the seed ran with it).
"""
from __future__ import annotations

import dataclasses
import mmap

import numpy as np


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
