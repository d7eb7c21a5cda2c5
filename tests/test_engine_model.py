"""Whole-model logits against the float64 numpy reference (tests/reference.py).

Tolerance: the engine quantizes activations to Q8_0 before every Q8_0 matmul
(as ggml does), so logits differ from the float64 reference by up to a few
percent of the largest logit; with f16 weights (no activation quantization)
agreement is ~1e-3. Cache types are compared against the f32 cache.
"""
import numpy as np
import pytest

import reference as ref
from engine import load_model

PROMPT = np.array([1, 17, 250, 3, 99, 500, 42, 7, 128, 64, 300, 11])
STEPS = [5, 400, 77]


def _engine_run(path, **kw):
    m = load_model(path, n_ctx=64, **kw)
    out = [m.eval(PROMPT, 0)]
    for i, t in enumerate(STEPS):
        out.append(m.eval([t], len(PROMPT) + i))
    return out


def _ref_run(path):
    r = ref.RefModel(path)
    out = [r.eval(PROMPT, 0)]
    for i, t in enumerate(STEPS):
        out.append(r.eval([t], len(PROMPT) + i))
    return out


@pytest.mark.parametrize("shape_kw,tol", [
    (dict(), 0.05),                                   # llama, Q8_0 weights
    (dict(arch="qwen2"), 0.05),                       # q/k/v biases, NEOX rope
    (dict(wtype="f16"), 2e-3),                        # float weights: no activation quantization
    (dict(tied_output=True), 0.05),                   # output tied to token_embd
])
def test_logits_match_float64_reference(model_factory, shape_kw, tol):
    path = model_factory("micro", seed=3, **shape_kw)
    got = _engine_run(path, type_k="f32", type_v="f32", flash_attn=True)
    expect = _ref_run(path)
    for g, e in zip(got, expect):
        assert g.shape == e.shape
        assert ref.rel_err(g, e) < tol
        assert (g.argmax(-1) == e.argmax(-1)).mean() >= 0.75


def test_flash_and_plain_attention_agree(micro_model):
    a = _engine_run(micro_model, type_k="f32", type_v="f32", flash_attn=True)
    b = _engine_run(micro_model, type_k="f32", type_v="f32", flash_attn=False)
    for x, y in zip(a, b):
        assert ref.rel_err(x, y) < 1e-5


# An f16 cache perturbs attention by ~5e-4; the next layer's Q8_0 activation rounding
# turns that into flips of single quants (1/127 of a block's max), hence ~1-3%.
@pytest.mark.parametrize("tk,tv,tol", [("f16", "f16", 0.03), ("q8_0", "q8_0", 0.05), ("q8_0", "f16", 0.05)])
def test_cache_types_agree_with_f32(micro_model, tk, tv, tol):
    base = _engine_run(micro_model, type_k="f32", type_v="f32")
    other = _engine_run(micro_model, type_k=tk, type_v=tv)
    for x, y in zip(other, base):
        assert ref.rel_err(x, y) < tol


def test_remove_restores_the_cache(micro_model):
    # sweep-bench: TG tokens are removed after each row; the cache must then give
    # exactly the logits it gave before those tokens were added.
    m = load_model(micro_model, n_ctx=64, type_k="q8_0", type_v="q8_0")
    m.eval(PROMPT, 0)
    before = m.eval([9], len(PROMPT))
    m.kv_truncate(len(PROMPT))
    for i, t in enumerate(STEPS):
        m.eval([t], len(PROMPT) + i)
    m.kv_truncate(len(PROMPT))
    after = m.eval([9], len(PROMPT))
    assert np.array_equal(before, after)
    m.kv_clear()
    assert m.n_past == 0


def test_last_logits_only(micro_model):
    m = load_model(micro_model, n_ctx=64)
    full = m.eval(PROMPT, 0)
    m.kv_clear()
    last = m.eval(PROMPT, 0, all_logits=False)
    assert last.shape == (1, full.shape[1])
    # the head runs as a GEMV for one token and as the widened PP GEMM for the batch: the
    # same exact int32 block dots, summed over blocks in another f32 order
    np.testing.assert_allclose(last[0], full[-1], rtol=0, atol=1e-5 * np.abs(full[-1]).max())


def test_eval_rejects_positions_and_tokens(micro_model):
    from engine import EngineError

    m = load_model(micro_model, n_ctx=16)
    with pytest.raises(EngineError, match="position"):
        m.eval([1, 2], 3)
    with pytest.raises(EngineError, match="token id"):
        m.eval([100000], 0)
    with pytest.raises(EngineError, match="exceed n_ctx"):
        m.eval(np.arange(17), 0)
