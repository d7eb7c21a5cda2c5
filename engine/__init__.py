"""numasweep's CPU inference engine: GGUF llama-family models, Q8_0 kernels in numba,
flash attention over an f32/f16/q8_0 KV cache, and the llama-sweep-bench loop.

The engine knows nothing of hosts, placement or Ray. Names are imported on first use
(PEP 562), so ``engine.options`` and ``engine.shapes`` load without numba.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "EngineError": "engine.errors", "GGUFError": "engine.errors", "ModelConfig": "engine.gguf_model",
    "Model": "engine.model", "load_model": "engine.model", "make_model": "engine.synth",
    "SHAPES": "engine.synth", "EngineOptions": "engine.options",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'engine' has no attribute {name!r}")
