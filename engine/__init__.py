"""numasweep's CPU inference engine: GGUF transformer models, Q8_0 kernels in numba,
flash attention over an f32/f16/q8_0 KV cache, and the llama-sweep-bench loop.

The engine knows nothing of hosts, placement or Ray. Its public names are loaded on
first use (PEP 562), so ``import engine.shapes`` or ``engine.options`` does not import
numba.
"""
from __future__ import annotations

import importlib

_EXPORTS = {
    "EngineError": "engine.errors", "GGUFError": "engine.errors",
    "EngineOptions": "engine.options", "ModelConfig": "engine.archs",
    "Model": "engine.model", "load_model": "engine.model",
    "make_model": "engine.synth", "SHAPES": "engine.shapes",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
