"""Errors the engine raises for bad input (files, flags).

Every message is one line and names the file or flag at fault; the CLI prints it
and exits 2 without a traceback.
"""


class EngineError(ValueError):
    """Bad input to the engine: unreadable GGUF, unsupported model, bad flag."""


class GGUFError(EngineError):
    """The GGUF file is malformed, truncated or uses something we cannot run."""
