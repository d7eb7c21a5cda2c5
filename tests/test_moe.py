"""MoE (qwen2moe, mixtral-style llama) against the float64 reference, fused vs unfused experts.

Tolerances as in test_engine_model: Q8_0 weights quantize activations (a few
percent of the largest logit), f16 weights agree to ~1e-5 here.
"""
import numpy as np
import pytest

import reference as ref
import reference_moe as rm
from engine import _numba, load_model
from engine.archs import MoEConfig
from engine.moe import MoEWeights, grouped_gemm_q8_0, moe_ffn, route
from engine.tensors import Experts, Weight
from engine.quant import quantize_q8_0

PROMPT = np.array([1, 17, 250, 3, 99, 500, 42, 7, 128, 64, 300, 11])
STEPS = [5, 400, 77]
SIMDS = ["scalar"] + (["avx2"] if _numba.SIMD == "avx2" else [])


def _runs(path, **kw):
    m = load_model(path, n_ctx=64, type_k="f32", type_v="f32", **kw)
    return [m.eval(PROMPT, 0)] + [m.eval([t], len(PROMPT) + i) for i, t in enumerate(STEPS)]


def _ref_runs(r):
    return [r.eval(PROMPT, 0)] + [r.eval([t], len(PROMPT) + i) for i, t in enumerate(STEPS)]


@pytest.mark.parametrize("shape_kw,tol", [
    (dict(), 0.05),                          # qwen2moe: shared expert with sigmoid gate, biases, NEOX
    (dict(arch="llama"), 0.05),              # mixtral-style: renormalised top-k, no shared expert
    (dict(wtype="f16"), 2e-3),               # float experts (unfused path only)
])
def test_logits_match_float64_reference(model_factory, shape_kw, tol):
    path = model_factory("moe-tiny", seed=3, **shape_kw)
    expect = _ref_runs(rm.RefMoEModel(path))
    combos = [(False, False), (False, True), (True, False), (True, True)]
    for fmoe, fa in combos:
        got = _runs(path, fused_moe=fmoe, flash_attn=fa)
        for g, e in zip(got, expect):
            assert g.shape == e.shape
            assert ref.rel_err(g, e) < tol, (fmoe, fa)
            assert (g.argmax(-1) == e.argmax(-1)).mean() >= 0.75


def _random_moe(rng, E=128, F=96, X=5, shared=True):
    def q(n_out, n_in):
        return quantize_q8_0((rng.standard_normal((n_out, n_in)) * n_in ** -0.5).astype(np.float32))

    def ex(n_out, n_in):
        d = np.stack([q(n_out, n_in) for _ in range(X)])
        return Experts("q8_0", d, X, n_out, n_in, "Q8_0")

    def w(n_out, n_in):
        return Weight("q8_0", q(n_out, n_in), n_out, n_in, "Q8_0")

    gi = Weight("f32", rng.standard_normal((X, E)).astype(np.float32), X, E, "F32")
    return MoEWeights(gi, (0.1 * rng.standard_normal(X)).astype(np.float32), ex(F, E), ex(F, E), ex(E, F),
                      w(64, E) if shared else None, w(64, E) if shared else None, w(E, 64) if shared else None,
                      None)


@pytest.mark.parametrize("simd", SIMDS)
@pytest.mark.parametrize("n_tok", [1, 3, 16, 64])
def test_fused_equals_unfused(simd, n_tok):
    # k = 3 slots per token give odd slot counts per expert (the 4x1 tile path); from 16
    # tokens some experts get >= 8 slots (W16 slabs) and others fewer (Q8_0 tiles), at 64 all
    rng = np.random.default_rng(n_tok)
    W = _random_moe(rng)
    cfg = MoEConfig(5, 3, 96, 64, "sigmoid", True, 2.5, False)
    h = rng.standard_normal((n_tok, 128)).astype(np.float32)
    a = moe_ffn(h, W, cfg, fused=True, simd=simd)
    b = moe_ffn(h, W, cfg, fused=False, simd=simd)
    assert ref.rel_err(a, b) < 1e-5


def test_fused_against_float64_experts():
    rng = np.random.default_rng(11)
    W = _random_moe(rng, shared=False)
    cfg = MoEConfig(5, 2, 96, 0, "softmax", False, 1.0, False)
    h = rng.standard_normal((7, 128)).astype(np.float32)
    t = {"p.ffn_gate_inp.weight": W.gate_inp.data.astype(np.float64),
         "p.exp_probs_b.bias": W.probs_bias.astype(np.float64)}
    from gguf import GGMLQuantizationType as T, quants
    for name, x in (("gate", W.gate), ("up", W.up), ("down", W.down)):
        t[f"p.ffn_{name}_exps.weight"] = np.stack([quants.dequantize(x.data[e], T.Q8_0) for e in range(5)])
    expect = rm.moe_ffn(h.astype(np.float64), t, "p.", n_used=2, gating="softmax", norm_w=False, scale=1.0,
                        shexp_gated=False)
    assert ref.rel_err(moe_ffn(h, W, cfg, fused=True), expect) < 0.02


@pytest.mark.parametrize("simd", SIMDS)
@pytest.mark.parametrize("n_per", [1, 5, 8, 19])
def test_grouped_gemm_against_float64(simd, n_per):
    # 1 and 5 rows per group: 4-row Q8_0 tiles; 8 and 19: W16 slabs (4-token tiles and 2/1 tails)
    from gguf import GGMLQuantizationType as T, quants
    rng = np.random.default_rng(n_per)
    G, n_out, n_in = 3, 72, 96                      # 72 rows: two 32-row slabs and an 8-row one
    w3 = np.stack([quantize_q8_0(rng.standard_normal((n_out, n_in)).astype(np.float32)) for _ in range(G)])
    xq = quantize_q8_0(rng.standard_normal((G * n_per, n_in)).astype(np.float32))
    got = grouped_gemm_q8_0(w3, xq, n_per, simd=simd)
    wf = np.stack([quants.dequantize(w3[g], T.Q8_0) for g in range(G)]).astype(np.float64)
    xf = quants.dequantize(xq, T.Q8_0).astype(np.float64).reshape(G, n_per, n_in)
    expect = np.einsum("gti,goi->gto", xf, wf).reshape(G * n_per, n_out)
    assert ref.rel_err(got, expect) < 2e-6


def test_route_sigmoid_bias_norm_scale():
    logits = np.array([[0.0, 2.0, -1.0, 1.0], [3.0, -2.0, 0.5, 0.4]], np.float32)
    bias = np.array([0.0, -0.5, 0.0, 0.3], np.float32)
    ids, w = route(logits, MoEConfig(4, 2, 32, 0, "sigmoid", True, 2.5, False), bias)
    p = 1 / (1 + np.exp(-logits.astype(np.float64)))
    # selection uses p + bias, weights use p
    assert ids.tolist() == [[3, 0], [0, 3]]   # without the bias: [[1, 3], [0, 2]]
    for r in range(2):
        sel = p[r, ids[r]]
        np.testing.assert_allclose(w[r], 2.5 * sel / sel.sum(), rtol=1e-6)


def test_weight_bytes_count_only_used_experts(model_factory):
    m = load_model(model_factory("moe-tiny", seed=3), n_ctx=32)
    L = m.weights.layers[0]
    moe = L.ffn.w
    per_expert = sum(x.bytes_per_expert for x in (moe.gate, moe.up, moe.down))
    attn = sum(x.nbytes for x in (L.attn.wq, L.attn.wk, L.attn.wv, L.attn.wo))
    shared = sum(x.nbytes for x in (moe.sh_gate, moe.sh_up, moe.sh_down))
    layer = attn + moe.gate_inp.nbytes + shared + m.config.moe.n_expert_used * per_expert
    assert m.weight_bytes_per_token == m.weights.output.nbytes + layer * m.config.n_layer
    assert m.weight_bytes_per_token < m.size_bytes
