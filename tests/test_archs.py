"""The architecture registry (engine.archs), the one loader and the numba-free modules."""
from __future__ import annotations

import subprocess
import sys

import pytest
from gguf.constants import MODEL_TENSORS, TENSOR_NAMES

from engine.archs import ARCHS, read_config
from engine.gguf_file import open_gguf
from engine.shapes import ALL_SHAPES

# one synthetic file per registry entry (plus mixtral-style llama with experts)
CASES = [("micro", {}), ("micro", dict(arch="qwen2")), ("qwen3-tiny", {}), ("gemma3-tiny", {}),
         ("moe-tiny", {}), ("moe-tiny", dict(arch="llama")), ("deepseek2-tiny", {}),
         ("deepseek2-tiny", dict(split_kv_b=True))]


def test_every_entry_has_a_synthetic_case():
    assert set(ARCHS) == {"llama", "qwen2", "qwen3", "gemma3", "qwen2moe", "deepseek2"}


@pytest.mark.parametrize("shape,kw", CASES)
def test_tensor_names_come_from_gguf_tables(model_factory, shape, kw):
    """Every tensor the writer and the loader name is one of gguf-py's for that architecture."""
    gf = open_gguf(model_factory(shape, seed=2, **kw))
    entry = ARCHS[read_config(gf).arch]
    known = set()
    for kind in MODEL_TENSORS[entry.gguf_arch]:
        base = TENSOR_NAMES[kind]
        known |= {base.format(bid=i) for i in range(8)} if "{bid}" in base else {base}
    for t in gf.tensors:
        stem = t.name.rsplit(".", 1)[0]
        assert stem in known, f"{t.name} is not a gguf-py {entry.gguf_arch.name} tensor"


def test_shapes_and_options_import_without_numba():
    code = ("import sys, engine.shapes, engine.options, engine.archs\n"
            "print(len(engine.shapes.ALL_SHAPES), 'numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == [str(len(ALL_SHAPES)), "False"]


def test_shapes_module_needs_no_numpy_or_gguf():
    code = "import sys, engine.shapes\nprint(sorted(m for m in ('numpy', 'gguf', 'numba') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stdout + out.stderr


def test_no_private_cross_module_imports_and_one_forward():
    import pathlib
    import re
    root = pathlib.Path(__file__).resolve().parents[1] / "engine"
    evals = []
    for f in sorted(root.glob("*.py")):
        text = f.read_text()
        bad = re.findall(r"^from engine\.\w+ import .*\b_[a-z]\w*", text, flags=re.M)
        bad += re.findall(r"^from engine\.\w+ import \([^)]*\b_[a-z]\w*", text, flags=re.M)
        assert not bad, f"{f.name}: {bad}"
        evals += [f.name for line in text.splitlines() if re.match(r"\s*def eval\b", line)]
        assert len(text.splitlines()) <= 500, f"{f.name} has more than 500 lines"
    assert set(evals) == {"ik_peer.py", "model.py"} and evals.count("model.py") == 1   # ik_peer: the peer driver
