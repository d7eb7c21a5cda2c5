"""deepseek2 (MLA + MoE) against the float64 reference (tests/reference_moe.RefDeepSeek2).

* f16 weights + f32 cache: no activation quantization, so every -mla mode x -fa
  agrees with the reference to ~1e-5 (the strict check of the MLA math: absorbed
  and decompressed attention, YaRN, kq_scale, routing, shared experts).
* Q8_0 weights (fused and unfused expert kernels) x f16/q8_0 c^KV cache: a few
  percent, as for llama. Seed 5 is used because its top-k routing decisions all
  have a margin well above the Q8_0 noise; with other seeds one token's expert
  choice can flip between engine and reference (seeds 3 and 4 do), which is a
  property of the random router, not an error.
"""
import math

import numpy as np
import pytest
from gguf import GGUFWriter, RopeScalingType

import reference as ref
import reference_moe as rm
from engine import _numba, load_model
from engine.archs import read_config
from engine.block_ffn import MoEFFN
from engine.errors import EngineError
from engine.gguf_file import open_gguf
from engine.mla import MLACache, absorbed_attention, decompressed_attention

PROMPT = np.array([1, 17, 250, 3, 99, 500, 42, 7, 128, 64, 300, 11])
STEPS = [5, 400, 77]


def _runs(path, **kw):
    m = load_model(path, n_ctx=64, **kw)
    return [m.eval(PROMPT, 0)] + [m.eval([t], len(PROMPT) + i) for i, t in enumerate(STEPS)]


def _ref_runs(path):
    r = rm.RefDeepSeek2(path)
    return [r.eval(PROMPT, 0)] + [r.eval([t], len(PROMPT) + i) for i, t in enumerate(STEPS)]


@pytest.mark.parametrize("split", [False, True])
def test_every_mla_mode_matches_float64_reference(model_factory, split):
    path = model_factory("deepseek2-tiny", seed=3, wtype="f16", split_kv_b=split)
    expect = _ref_runs(path)
    for mla in (0, 1, 2, 3):
        for fa in (False, True):
            got = _runs(path, type_k="f32", mla=mla, flash_attn=fa, amb=1)
            for g, e in zip(got, expect):
                assert g.shape == e.shape
                assert ref.rel_err(g, e) < 2e-3, (mla, fa)


@pytest.mark.parametrize("type_k,modes,fas", [
    ("q8_0", (0, 1, 2, 3), (False, True)),       # the seed's cache type: every combination
    ("f16", (0, 3), (True,)),
])
def test_q8_0_weights_every_combination(model_factory, type_k, modes, fas):
    path = model_factory("deepseek2-tiny", seed=5)
    expect = _ref_runs(path)
    for mla in modes:
        for fa in fas:
            runs = {fmoe: _runs(path, type_k=type_k, mla=mla, flash_attn=fa, fused_moe=fmoe)
                    for fmoe in (False, True)}
            for g, u, e in zip(runs[True], runs[False], expect):
                assert ref.rel_err(g, u) < 1e-5, (mla, fa)      # fused == unfused experts
                assert ref.rel_err(g, e) < 0.06, (mla, fa)
                assert (g.argmax(-1) == e.argmax(-1)).mean() >= 0.75


def _random_cache(rng, n_kv, rank=64, rot=32, type_k="f32"):
    c = MLACache(1, n_kv, rank, rot, type_k)
    c.store(0, 0, rng.standard_normal((n_kv, rank + rot)).astype(np.float32))
    c.commit(0, n_kv)
    return c


SIMD_CASES = [("f32", "scalar"), ("f16", "scalar"), ("q8_0", "scalar")]
if _numba.SIMD == "avx2":
    SIMD_CASES += [("f16", "avx2"), ("q8_0", "avx2")]


@pytest.mark.parametrize("type_k,simd", SIMD_CASES)
@pytest.mark.parametrize("flash", [False, True])
def test_absorbed_attention_head_groups_and_reference(type_k, simd, flash):
    rng = np.random.default_rng(1)
    n_q, H, n_kv = 3, 6, 70
    cache = _random_cache(rng, n_kv, type_k=type_k)
    q = rng.standard_normal((n_q, H, 96)).astype(np.float32)
    pos0 = n_kv - n_q
    whole = absorbed_attention(q, cache, 0, pos0, flash=flash, scale=0.1, simd=simd)
    one = absorbed_attention(q, cache, 0, pos0, flash=flash, scale=0.1, amb_bytes=1, simd=simd)  # 1 head/item
    assert ref.rel_err(one, whole) < 1e-6
    C = cache.c_rows_f32(0, n_kv).astype(np.float64)
    for i in range(n_q):
        for h in range(H):
            s = C[:pos0 + i + 1] @ q[i, h].astype(np.float64) * 0.1
            e = ref.softmax(s) @ C[:pos0 + i + 1, :64]
            tol = 2e-2 if type_k == "q8_0" else 1e-4      # q8_0 also quantizes q
            assert ref.rel_err(whole[i, h], e) < tol


def test_decompressed_head_groups_equal_all_heads():
    rng = np.random.default_rng(2)
    H, nope, dv, n_q, n_kv = 5, 32, 32, 4, 40
    cache = _random_cache(rng, n_kv)
    W = rng.standard_normal((H * (nope + dv), 64)).astype(np.float32) * 0.1

    def rows(h0, h1, c, cq):
        return c @ W[h0 * (nope + dv):h1 * (nope + dv)].T

    q = rng.standard_normal((n_q, H, nope + 32)).astype(np.float32)
    kw = dict(nope=nope, dv=dv, flash=True, scale=0.2)
    a = decompressed_attention(q, cache, 0, n_kv - n_q, rows, **kw)
    b = decompressed_attention(q, cache, 0, n_kv - n_q, rows, amb_bytes=1, **kw)
    assert ref.rel_err(b, a) < 1e-6


def test_cache_is_one_latent_row_per_token_and_layer(model_factory):
    m = load_model(model_factory("deepseek2-tiny", seed=5), n_ctx=64, type_k="q8_0", mla=3)
    c = m.config
    assert m.cache.nbytes == c.n_layer * 64 * (c.kv_lora_rank + c.n_rot) // 32 * 34
    with pytest.raises(EngineError, match="multiples of 32"):
        MLACache(1, 8, 48, 32, "q8_0")


def test_mode_3_switches_between_tg_and_pp(model_factory):
    m = load_model(model_factory("deepseek2-tiny", seed=5), n_ctx=32, mla=3)
    assert m.attention_mode(1) == "absorbed" and m.attention_mode(512) == "decompressed"
    m0 = load_model(model_factory("deepseek2-tiny", seed=5), n_ctx=32, mla=0)
    assert m0.attention_mode(1) == "decompressed"
    # TG reads W_kb + W_vb instead of attn_kv_b; both count n_used experts, not all
    L = m.weights.layers[-1]
    assert m.weight_bytes_per_token - m0.weight_bytes_per_token == c_diff(m)
    assert m.weight_bytes_per_token < m.size_bytes
    assert isinstance(L.ffn, MoEFFN)


def c_diff(m):
    return sum(L.attn.wk_b.nbytes + L.attn.wv_b.nbytes - L.attn.wkv_b.nbytes for L in m.weights.layers)


def test_seed_log_hyper_parameters(tmp_path):
    """DeepSeek-V3's metadata as in the seed log -> the derived constants llama.cpp uses."""
    p = tmp_path / "v3-meta.gguf"
    w = GGUFWriter(str(p), "deepseek2")
    for k, v in dict(block_count=61, context_length=163840, embedding_length=7168, feed_forward_length=18432,
                     expert_used_count=8, leading_dense_block_count=3, vocab_size=129280,
                     expert_feed_forward_length=2048, expert_count=256, expert_shared_count=1).items():
        w.add_uint32(f"deepseek2.{k}", v)
    for k, v in {"attention.head_count": 128, "attention.head_count_kv": 128, "attention.q_lora_rank": 1536,
                 "attention.kv_lora_rank": 512, "attention.key_length": 192, "attention.value_length": 128,
                 "expert_gating_func": 2, "rope.dimension_count": 64,
                 "rope.scaling.original_context_length": 4096}.items():
        w.add_uint32(f"deepseek2.{k}", v)
    w.add_float32("deepseek2.rope.freq_base", 10000.0)
    w.add_float32("deepseek2.attention.layer_norm_rms_epsilon", 1e-6)
    w.add_float32("deepseek2.expert_weights_scale", 2.5)
    w.add_bool("deepseek2.expert_weights_norm", True)
    w.add_rope_scaling_type(RopeScalingType.YARN)
    w.add_rope_scaling_factor(40.0)
    w.add_rope_scaling_yarn_log_mul(0.1)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    c = read_config(open_gguf(p))
    assert (c.n_head, c.head_dim, c.nope, c.v_dim, c.kv_lora_rank, c.q_lora_rank) == (128, 192, 128, 128, 512, 1536)
    assert (c.moe.n_expert, c.moe.n_expert_used, c.moe.n_ff_shexp, c.moe.gating) == (256, 8, 2048, "sigmoid")
    assert c.moe.norm_weights and c.moe.weights_scale == 2.5 and c.n_dense_lead == 3
    assert c.rope_freq_scale == pytest.approx(0.025) and c.rope_n_ctx_orig == 4096
    assert c.kq_scale == pytest.approx((1 + 0.1 * math.log(40)) ** 2 / math.sqrt(192))
    # c^KV per token per layer in q8_0: (512 + 64)/32 * 34 bytes; the seed's 32k cache = 1166.6 MiB
    assert 61 * 32768 * (512 + 64) // 32 * 34 / 2**20 == pytest.approx(1166.62, abs=0.01)


def test_bench_cli_deepseek2_flags(model_factory, capsys):
    from engine.cli import main
    path = model_factory("deepseek2-tiny", seed=5)
    rc = main(["bench", "-m", str(path), "-c", "32", "-ub", "16", "-n", "2", "-ctk", "q8_0", "-mla", "3", "-fa",
               "-fmoe", "-amb", "64"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "arch=deepseek2" in out and "fmoe=1 mla=3 amb=64" in out
    assert sum(line.startswith("|    16 |") for line in out.splitlines()) == 2


def test_llama_accepts_moe_flags_without_effect(micro_model):
    a = load_model(micro_model, n_ctx=16).eval([1, 2, 3], 0)
    m = load_model(micro_model, n_ctx=16, fused_moe=True, mla=3, amb=16)
    assert (m.options.fused_moe, m.options.mla, m.options.amb) == (True, 3, 16)
    np.testing.assert_array_equal(m.eval([1, 2, 3], 0), a)
    with pytest.raises(EngineError, match="-mla"):
        load_model(micro_model, n_ctx=16, mla=4)


def test_k_repack_on_the_decompressed_path(model_factory):
    """-mla 3 PP materializes a q8_0 K per head group: --k-repack reads it as Q8_0_R8, same logits."""
    path = model_factory("deepseek2-tiny", seed=5)
    out = {}
    for mode in ("on", "off"):
        m = load_model(path, n_ctx=64, type_k="q8_0", mla=3, flash_attn=True, k_repack=mode)
        out[mode] = [m.eval(np.arange(16), 0), m.eval(np.arange(16, 32), 16), m.eval([3], 32)]
        if mode == "on":
            assert m.repack_scratch_hwm_mib > 0
    # equal to f32 rounding, except that a top-k routing tie inside that rounding may pick the
    # other expert for a token (token 11 here: 0.6% of the largest logit)
    e = np.concatenate([np.abs(a - b).max(1) / np.abs(b).max(1) for a, b in zip(out["on"], out["off"])])
    assert (e < 1e-4).mean() >= 0.9 and e.max() < 0.02


@pytest.mark.parametrize("shape", ["deepseek2-tiny", "moe-tiny", "micro"])
def test_no_mmap_copies_every_weight(model_factory, shape):
    from engine.residency import weights_are_owned
    path = model_factory(shape, seed=5)
    a = load_model(path, n_ctx=16)
    b = load_model(path, n_ctx=16, no_mmap=True)
    assert not weights_are_owned(a.weights) and weights_are_owned(b.weights)
    np.testing.assert_array_equal(a.eval([1, 2, 3], 0), b.eval([1, 2, 3], 0))


def test_v2_lite_style_variant(model_factory):
    """No q_lora_rank (plain attn_q), softmax gating, no exp_probs_b, no YaRN, 2 shared experts."""
    path = model_factory("deepseek2-tiny", seed=3, wtype="f16", q_lora=0, gating="softmax", probs_bias=False,
                         yarn_factor=1.0, weights_scale=1.0, shared=2)
    m = load_model(path, n_ctx=64, type_k="f32", mla=3)
    assert m.config.q_lora_rank == 0 and m.config.moe.gating == "softmax" and m.config.rope_scaling == "none"
    assert m.config.moe.n_ff_shexp == 2 * m.config.moe.n_ff_exp
    expect = _ref_runs(path)
    for mla in (0, 1):
        for g, e in zip(_runs(path, type_k="f32", mla=mla), expect):
            assert ref.rel_err(g, e) < 2e-3
