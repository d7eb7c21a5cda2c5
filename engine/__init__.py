"""numasweep's CPU inference engine: GGUF llama-family models, Q8_0 kernels in numba,
flash attention over an f32/f16/q8_0 KV cache, and the llama-sweep-bench loop.

The engine knows nothing of hosts, placement or Ray. The names below are imported on
first use, so that numba-free modules (``engine.noise``, ``engine.progress``) can be
imported by the orchestrator without loading numba.
"""
from __future__ import annotations

import importlib

_LAZY = {
    "EngineError": "engine.errors", "GGUFError": "engine.errors", "ModelConfig": "engine.gguf_model",
    "Model": "engine.model", "load_model": "engine.model", "SHAPES": "engine.synth", "make_model": "engine.synth",
}

__all__ = ["EngineError", "GGUFError", "ModelConfig", "Model", "load_model", "make_model", "SHAPES"]


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
