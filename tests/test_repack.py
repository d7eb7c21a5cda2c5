"""Q8_0_R8 (engine.q8_0_r8): layout, R8 GEMM/GEMV, K-repack attention, -rtr, -t vs -tb.

Tolerances. Every 32-block dot is exact in int32 on every path; R8 and plain Q8_0 differ
only in the f32 order of "scale x block sum, add over blocks" (R8 converts the whole
block sum per row, the plain tiles FMA 8 lanes and sum them at the end), so kernel
outputs agree to a few f32 ulps of the row's magnitude: asserted at 1e-5 x max|y|.
Through a model, such ulp differences can move an activation across a Q8_0 rounding
boundary before the next matmul (one quant step, 1/254 of a block's range), so logits
with repack on/off and -rtr on/off are asserted at 1e-3 x max|logit| (measured: <= 2e-7).
"""
from __future__ import annotations

import numba
import numpy as np
import pytest

from engine import load_model
from engine.attention import attention
from engine.kvcache import KVCache
from engine.matmul import gemm_q8_0
from engine.q8_0_r8 import (RepackScratch, gemm_q8_0_r8, gemm_q8_0_r8_multi, k_repack_applies, k_view_bytes,
                            pack_q8_0_r8, pack_q8_0_r8_ref, repack_k_view, unpack_q8_0_r8_ref)
from engine.quant import dequantize_q8_0, quantize_q8_0

SIMDS = ["avx2", "scalar"]


def _rq(rng, n, k, scale=1.0):
    return quantize_q8_0((rng.standard_normal((n, k)) * scale).astype(np.float32))


def _random_blocks(rng, n_rows, nb):
    # arbitrary bytes: a permutation must round-trip any content (d bits included)
    return rng.integers(0, 256, size=(n_rows, nb * 34), dtype=np.uint8)


# -- layout -----------------------------------------------------------------------------------

def test_reference_pack_matches_design_formula():
    rng = np.random.default_rng(0)
    w = _random_blocks(rng, 16, 3)
    p = pack_q8_0_r8_ref(w)
    assert p.shape == (2, 3 * 272)
    for g in range(2):
        for b in range(3):
            blk = p[g, b * 272:(b + 1) * 272]
            for k in range(8):
                row = w[8 * g + k, b * 34:(b + 1) * 34]
                assert bytes(blk[2 * k:2 * k + 2]) == bytes(row[:2])          # d[k]
                for h in range(2):
                    for lo in range(4):
                        for i in range(4):
                            assert blk[16 + 128 * h + 32 * lo + 4 * k + i] == row[2 + 16 * h + 4 * lo + i]


@pytest.mark.parametrize("n_rows,nb", [(8, 1), (24, 4), (64, 7)])
def test_pack_round_trip_bit_exact(n_rows, nb):
    rng = np.random.default_rng(n_rows + nb)
    w = _random_blocks(rng, n_rows, nb)
    p = pack_q8_0_r8_ref(w)
    assert np.array_equal(unpack_q8_0_r8_ref(p), w)
    assert np.array_equal(pack_q8_0_r8(w), p)                 # numba pack == numpy reference


def test_pack_rejects_rows_not_multiple_of_8():
    with pytest.raises(ValueError, match="rows % 8"):
        pack_q8_0_r8(np.zeros((12, 34), dtype=np.uint8))


def test_repack_k_view_pads_and_matches_reference():
    rng = np.random.default_rng(3)
    n_head, hd, n_ctx, n_rows = 3, 64, 40, 21
    k = _random_blocks(rng, n_ctx, n_head * hd // 32)
    scratch = np.full(1000 * 64, 0xAB, dtype=np.uint8)
    view = repack_k_view(k, n_rows, n_head, hd, scratch)
    assert view.shape[0] == k_view_bytes(n_rows, n_head, hd) == 24 * n_head * 68
    rb = hd // 32 * 34
    for h in range(n_head):
        rows = np.zeros((24, rb), dtype=np.uint8)
        rows[:n_rows] = k[:n_rows, h * rb:(h + 1) * rb]
        got = view[h * 24 * rb:(h + 1) * 24 * rb].reshape(3, -1)
        assert np.array_equal(got, pack_q8_0_r8_ref(rows))


# -- GEMM / GEMV --------------------------------------------------------------------------------

@pytest.mark.parametrize("simd", SIMDS)
@pytest.mark.parametrize("n_out,n_in,n_tok", [(8, 32, 1), (40, 128, 1), (24, 96, 3), (16, 64, 8), (32, 256, 13),
                                               (40, 128, 9)])  # PP: W16 slabs of 4 + 1 groups
def test_gemm_r8_matches_reference_and_plain(simd, n_out, n_in, n_tok):
    rng = np.random.default_rng(n_out * n_tok + n_in)
    w = _rq(rng, n_out, n_in, 0.05)
    x = _rq(rng, n_tok, n_in)
    ref = dequantize_q8_0(x).astype(np.float64) @ dequantize_q8_0(w).astype(np.float64).T
    y = gemm_q8_0_r8(pack_q8_0_r8(w), x, simd=simd)
    plain = gemm_q8_0(w, x, simd=simd)
    tol = 1e-5 * np.abs(ref).max()
    assert y.shape == (n_tok, n_out) and y.dtype == np.float32
    assert np.abs(y - ref).max() <= tol
    assert np.abs(y - plain).max() <= tol


@pytest.mark.parametrize("simd", SIMDS)
@pytest.mark.parametrize("n_tok", [1, 5, 9])
def test_gemm_r8_multi_matches_single(simd, n_tok):
    rng = np.random.default_rng(n_tok)
    ws = [_rq(rng, n, 64, 0.05) for n in (16, 8, 24)]
    x = _rq(rng, n_tok, 64)
    for k in (1, 2, 3):
        outs = gemm_q8_0_r8_multi([pack_q8_0_r8(w) for w in ws[:k]], x, simd=simd)
        for w, y in zip(ws[:k], outs):
            np.testing.assert_array_equal(y, gemm_q8_0_r8(pack_q8_0_r8(w), x, simd=simd))


def test_gemm_r8_extreme_quants_and_scales():
    # +-127 everywhere (max pair sums, no vpmaddubsw saturation) and tiny/subnormal fp16 scales
    n_out, nb = 16, 4
    w = np.zeros((n_out, nb * 34), dtype=np.uint8).reshape(n_out, nb, 34)
    x = np.zeros((2, nb, 34), dtype=np.uint8)
    w[..., 2:] = np.where(np.arange(32) % 3 == 0, 127, -127).astype(np.int8).view(np.uint8)
    x[..., 2:] = np.where(np.arange(32) % 2 == 0, -127, 127).astype(np.int8).view(np.uint8)
    w[..., :2] = np.array([1.5e-7, -3.0, 2e-5, 0.25] * 4, dtype=np.float16).view(np.uint8).reshape(16, 1, 2)
    x[..., :2] = np.array([[6e-8], [1.0]], dtype=np.float16).view(np.uint8).reshape(2, 1, 2)
    w, x = w.reshape(n_out, -1), x.reshape(2, -1)
    ref = dequantize_q8_0(x).astype(np.float64) @ dequantize_q8_0(w).astype(np.float64).T
    for simd in SIMDS:
        y = gemm_q8_0_r8(pack_q8_0_r8(w), x, simd=simd)
        np.testing.assert_allclose(y, ref, rtol=1e-6, atol=0)


# -- attention ----------------------------------------------------------------------------------

def _cache(rng, n_kv_head, hd, n_kv, type_v="q8_0"):
    c = KVCache(1, 256, n_kv_head, hd, hd, "q8_0", type_v)
    c.store(0, 0, rng.standard_normal((n_kv, n_kv_head * hd)).astype(np.float32),
            rng.standard_normal((n_kv, n_kv_head * hd)).astype(np.float32))
    c.commit(0, n_kv)
    return c


@pytest.mark.parametrize("simd", SIMDS)
@pytest.mark.parametrize("n_kv_head,n_head,hd,pos0,n_q", [
    (2, 4, 64, 0, 16),       # GQA 2, K rows % 8 == 0
    (2, 8, 64, 37, 13),      # GQA 4, odd depth: n_kv = 50 (on pads the last group)
    (1, 3, 32, 5, 9),        # GQA 3 (tiles of 2 + 1 columns)
    (4, 16, 128, 64, 72),    # the small model's heads, > one 64-position chunk
    (4, 4, 64, 37, 21),      # MHA: 16-query items and a 5-query tail
])
def test_flash_attention_repack_on_equals_off(simd, n_kv_head, n_head, hd, pos0, n_q):
    rng = np.random.default_rng(pos0 + n_q)
    c = _cache(rng, n_kv_head, hd, pos0 + n_q)
    q = rng.standard_normal((n_q, n_head, hd)).astype(np.float32)
    off = attention(q, c, 0, pos0, flash=True, simd=simd)
    sc = RepackScratch()
    on = attention(q, c, 0, pos0, flash=True, simd=simd, k_repack="on", scratch=sc)
    assert sc.last_bytes == sc.hwm_bytes == k_view_bytes(pos0 + n_q, n_kv_head, hd)
    np.testing.assert_allclose(on, off, rtol=0, atol=1e-5)


@pytest.mark.parametrize("type_v", ["q8_0", "f16", "f32"])
def test_flash_attention_avx2_tiles_match_scalar(type_v):
    # the AVX2 flash path (R8 scores, P.V register tiles, polynomial exp, q8_0 V rows via
    # an intrinsic) against the plain-numba path without repack
    rng = np.random.default_rng(11)
    c = _cache(rng, 2, 64, 77, type_v=type_v)
    q = rng.standard_normal((13, 8, 64)).astype(np.float32)
    ref = attention(q, c, 0, 64, flash=True, simd="scalar")
    for mode in ("on", "off"):
        got = attention(q, c, 0, 64, flash=True, simd="avx2", k_repack=mode, scratch=RepackScratch())
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5)


def test_k_repack_policy():
    assert k_repack_applies("auto", 8, 512, "q8_0", 128)
    assert not k_repack_applies("auto", 7, 512, "q8_0", 128)      # < 8 queries
    assert not k_repack_applies("auto", 1, 512, "q8_0", 128)      # TG never
    assert not k_repack_applies("auto", 16, 515, "q8_0", 128)     # K rows % 8 != 0
    assert not k_repack_applies("auto", 16, 512, "f16", 128)      # needs q8_0 K
    assert k_repack_applies("on", 2, 515, "q8_0", 128)
    assert not k_repack_applies("on", 1, 512, "q8_0", 128)
    assert not k_repack_applies("on", 16, 512, "f32", 128)
    assert not k_repack_applies("off", 512, 512, "q8_0", 128)
    with pytest.raises(ValueError, match="--k-repack"):
        k_repack_applies("always", 8, 8, "q8_0", 32)


def test_scratch_is_grow_only():
    rng = np.random.default_rng(5)
    c = _cache(rng, 2, 64, 64)
    sc = RepackScratch()
    q = rng.standard_normal((16, 4, 64)).astype(np.float32)
    attention(q, c, 0, 48, flash=True, k_repack="auto", scratch=sc)
    big = sc.hwm_bytes
    assert big == k_view_bytes(64, 2, 64)
    sc.reset()
    attention(q[:8], c, 0, 8, flash=True, k_repack="auto", scratch=sc)
    assert sc.last_bytes == k_view_bytes(16, 2, 64) and sc.hwm_bytes == big
    sc.reset()
    attention(q[:1], c, 0, 20, flash=True, k_repack="auto", scratch=sc)   # TG: no repack
    assert sc.last_bytes == 0 and sc.hwm_bytes == big
    sc.reset()
    attention(q, c, 0, 48, flash=False, k_repack="on", scratch=sc)        # plain path: never
    assert sc.last_bytes == 0


# -- model ---------------------------------------------------------------------------------------

PROMPT = np.array([1, 17, 250, 3, 99, 500, 42, 7, 128, 64, 300, 11, 5, 6, 7, 8])  # 16: K rows % 8 == 0
STEPS = [5, 400, 77]


def _run(path, **kw):
    m = load_model(path, n_ctx=64, type_k="q8_0", type_v="q8_0", flash_attn=True, **kw)
    out = [m.eval(PROMPT, 0)]
    scratch = m.repack_scratch_mib
    for i, t in enumerate(STEPS):
        out.append(m.eval([t], len(PROMPT) + i))
    out.append(m.eval(PROMPT[:8], len(PROMPT) + len(STEPS)))   # PP at depth 19: n_kv = 27
    return m, out, scratch


def test_model_logits_repack_and_rtr_on_off(micro_model):
    base_m, base, base_scratch = _run(micro_model, k_repack="off", rtr=False)
    assert base_scratch == 0 and base_m.repack_scratch_hwm_mib == 0 and base_m.rtr_report is None
    hd, n_kv_head, n_layer = base_m.config.head_dim, base_m.config.n_head_kv, base_m.config.n_layer
    for kw in (dict(k_repack="on"), dict(k_repack="auto"), dict(k_repack="off", rtr=True),
               dict(k_repack="on", rtr=True)):
        m, out, scratch = _run(micro_model, **kw)
        if kw["k_repack"] != "off":
            assert scratch == pytest.approx(k_view_bytes(16, n_kv_head, hd) / 2**20)
            expect_hwm = k_view_bytes(16 if kw["k_repack"] == "auto" else 27, n_kv_head, hd)
            assert m.repack_scratch_hwm_mib == pytest.approx(expect_hwm / 2**20)
        if kw.get("rtr"):
            rep = m.rtr_report
            assert rep.n_repacked == 7 * n_layer + 1 and rep.kept == ("token_embd",)
            assert m.weights.layers[0].attn.wq.kind == "q8_0_r8" and m.weights.token_embd.kind == "q8_0"
        for a, b in zip(out, base):
            assert np.abs(a - b).max() <= 1e-3 * np.abs(b).max(), kw


def test_rtr_log_line_and_no_mmap(micro_model):
    from engine.residency import weights_are_owned

    lines = []
    m = load_model(micro_model, n_ctx=32, rtr=True, log=lines.append)
    assert weights_are_owned(m.weights)
    assert any(s.startswith("run-time repack (-rtr): 15 Q8_0 matrices") and "Q8_0_R8 in" in s for s in lines)


# -- -t vs -tb -------------------------------------------------------------------------------------

@numba.njit(parallel=True, cache=True)
def _thread_ids(n):
    out = np.empty(n, dtype=np.int64)
    for i in numba.prange(n):
        out[i] = numba.get_thread_id()
    return out


@pytest.mark.skipif(numba.config.NUMBA_NUM_THREADS < 2, reason="needs 2 CPUs")
@pytest.mark.parametrize("t,tb", [(1, 2), (2, 1)])
def test_threads_tg_and_pp_take_effect(micro_model, monkeypatch, t, tb):
    import engine.tensors as et

    seen = []

    def spy(real):
        def kernel(ws, xq, *a, **kw):
            seen.append((xq.shape[0], numba.get_num_threads(), set(_thread_ids(256).tolist())))
            return real(ws, xq, *a, **kw)
        return kernel

    monkeypatch.setattr(et, "gemm_q8_0", spy(et.gemm_q8_0))
    monkeypatch.setattr(et, "gemm_q8_0_multi", spy(et.gemm_q8_0_multi))
    m = load_model(micro_model, n_ctx=32, n_threads=t, n_threads_batch=tb)
    m.eval(PROMPT[:8], 0)
    m.eval([3], 8)
    pp = [(n, ids) for n_tok, n, ids in seen if n_tok == 8]
    tg = [(n, ids) for n_tok, n, ids in seen if n_tok == 1]
    assert pp and tg
    assert all(n == tb and ids == set(range(tb)) for n, ids in pp)
    assert all(n == t and ids == set(range(t)) for n, ids in tg)
