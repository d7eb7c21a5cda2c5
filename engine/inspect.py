"""A model file checked from its header alone: what the orchestrator runs before anything starts.

No numba and no tensor data: the header parse (engine.gguf_file) and the architecture's typed
metadata checks (engine.archs), so a bad ``model.path`` is one line before Ray or the store is
touched.
"""
from __future__ import annotations

import os

from engine.archs import read_config
from engine.gguf_file import open_gguf


def check_model_file(path: str | os.PathLike) -> str:
    """Parse the header and check every key the engine reads; returns the architecture.
    EngineError / GGUFError naming the file, the key and what is allowed."""
    return read_config(open_gguf(path)).arch
