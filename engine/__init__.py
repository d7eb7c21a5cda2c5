"""numasweep's CPU inference engine: GGUF llama-family models, Q8_0 kernels in numba,
flash attention over an f32/f16/q8_0 KV cache, and the llama-sweep-bench loop.

The engine knows nothing of hosts, placement or Ray.
"""
from engine.errors import EngineError, GGUFError
from engine.gguf_model import ModelConfig
from engine.model import Model, load_model
from engine.synth import SHAPES, make_model

__all__ = ["EngineError", "GGUFError", "ModelConfig", "Model", "load_model", "make_model", "SHAPES"]
