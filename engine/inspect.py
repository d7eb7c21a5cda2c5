"""A model file checked from its header alone: what the orchestrator runs before anything starts.

No numba and no tensor data: the header parse (engine.gguf_file) and the architecture's
metadata checks, so a bad ``model.path`` is one line before Ray or the store is touched.
"""
from __future__ import annotations

import os

from engine.errors import GGUFError
from engine.gguf_file import GGUFFile

ARCHS = ("llama", "qwen2", "qwen2moe", "deepseek2", "gemma3")


def check_model_file(path: str | os.PathLike) -> str:
    """Parse the header and check the architecture; returns it. GGUFError naming the file."""
    reader = GGUFFile.open(path)
    arch = reader.value("general.architecture") if "general.architecture" in reader.fields else None
    if not isinstance(arch, str) or arch not in ARCHS:
        raise GGUFError(f"{path}: general.architecture = {arch!r} is not supported (allowed: {', '.join(ARCHS)})")
    return arch
