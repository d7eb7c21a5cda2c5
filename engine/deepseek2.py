"""deepseek2 (DeepSeek-V2/V3): MLA attention over a compressed c^KV cache + MoE FFN."""
from __future__ import annotations

from engine.errors import GGUFError
from engine.gguf_model import _field_value


def is_deepseek2(reader) -> bool:
    return _field_value(reader, "general.architecture") == "deepseek2"


def load_deepseek2(reader, path, opts, log=None, t0=None):
    raise GGUFError(f"{path}: deepseek2 support is not finished yet")
