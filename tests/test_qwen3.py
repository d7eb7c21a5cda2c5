"""qwen3 (per-head q/k RMSNorm, no q/k/v biases, NEOX RoPE, head_dim from key_length): the
registry entry + the GQA block's q/k norms, checked against the float64 reference."""
from __future__ import annotations

import numpy as np
import pytest

import reference as ref
from engine import load_model
from engine.cli import main as engine_main

PROMPT = np.array([1, 17, 250, 3, 99, 500, 42, 7, 128, 64, 300, 11, 901, 5, 77, 640])
STEPS = [5, 400, 77]


def _engine_run(path, **kw):
    m = load_model(path, n_ctx=64, **kw)
    return [m.eval(PROMPT, 0)] + [m.eval([t], len(PROMPT) + i) for i, t in enumerate(STEPS)]


def _ref_run(path):
    r = ref.RefModel(path)
    assert r.arch == "qwen3" and r.neox and r.hd == 128
    return [r.eval(PROMPT, 0)] + [r.eval([t], len(PROMPT) + i) for i, t in enumerate(STEPS)]


def test_config_and_tensors(model_factory):
    path = model_factory("qwen3-tiny", seed=3)
    m = load_model(path, n_ctx=32)
    c = m.config
    assert (c.arch, c.rope_neox, c.qk_norm, c.head_dim, c.n_embd, c.n_head, c.n_head_kv) == \
           ("qwen3", True, True, 128, 256, 4, 2)
    attn = m.weights.layers[0].attn
    assert attn.bq is None and attn.bk is None and attn.bv is None
    assert attn.q_norm.shape == (128,) and attn.k_norm.shape == (128,) and attn.post_norm is None


@pytest.mark.parametrize("shape_kw,run_kw,tol", [
    (dict(), dict(type_k="f32", type_v="f32", flash_attn=True), 0.05),        # Q8_0 weights
    (dict(), dict(type_k="q8_0", type_v="q8_0", flash_attn=True), 0.05),
    (dict(), dict(type_k="f16", type_v="f16", flash_attn=False), 0.05),
    (dict(wtype="f16"), dict(type_k="f32", type_v="f32", flash_attn=True), 2e-3),   # no activation quantization
])
def test_logits_match_float64_reference(model_factory, shape_kw, run_kw, tol):
    path = model_factory("qwen3-tiny", seed=3, **shape_kw)
    got, expect = _engine_run(path, **run_kw), _ref_run(path)
    for g, e in zip(got, expect):
        assert g.shape == e.shape
        assert ref.rel_err(g, e) < tol
        assert (g.argmax(-1) == e.argmax(-1)).mean() >= 0.75


def test_q_k_norms_matter(model_factory):
    """Without the per-head norms the model is far from the reference: the test can fail."""
    import dataclasses
    path = model_factory("qwen3-tiny", seed=3, wtype="f16")
    m = load_model(path, n_ctx=64, type_k="f32", type_v="f32")
    layers = tuple(dataclasses.replace(L, attn=dataclasses.replace(L.attn, q_norm=None, k_norm=None))
                   for L in m.weights.layers)
    m.weights = dataclasses.replace(m.weights, layers=layers)
    assert ref.rel_err(m.eval(PROMPT, 0), _ref_run(path)[0]) > 0.05


def test_make_model_and_bench_cli(tmp_path, capsys):
    p = tmp_path / "q3.gguf"
    assert engine_main(["make-model", "--shape", "qwen3-tiny", "-o", str(p)]) == 0
    rc = engine_main(["bench", "-m", str(p), "-c", "64", "-ub", "32", "-n", "4", "-fa", "-ctk", "q8_0",
                      "-ctv", "q8_0"])
    out = capsys.readouterr().out
    assert rc == 0 and "arch=qwen3" in out and "head_dim=128" in out
    assert sum(line.startswith("|    32 |") for line in out.splitlines()) == 2
