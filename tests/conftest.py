"""Shared fixtures: small generated GGUF models (random weights, real format)."""
from __future__ import annotations

import os

import pytest

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def micro_model(tmp_path_factory):
    """llama micro shape: dim 128, 2 layers, 4 heads / 2 KV heads, vocab 512 (Q8_0)."""
    from engine import make_model

    return make_model(tmp_path_factory.mktemp("models") / "micro.gguf", "micro", seed=1)


@pytest.fixture(scope="session")
def model_factory(tmp_path_factory):
    """make_model(...) into a per-session directory, cached by arguments."""
    from engine import make_model

    root = tmp_path_factory.mktemp("models-custom")
    made = {}

    def factory(shape="micro", **kw):
        key = (shape, tuple(sorted(kw.items())))
        if key not in made:
            made[key] = make_model(root / f"m{len(made)}.gguf", shape, **kw)
        return made[key]

    return factory
