"""Each numba kernel against its plain numpy reference (tests/reference.py)."""
import math

import numpy as np
import pytest
from gguf import GGMLQuantizationType as T
from gguf import quants

import reference as ref
from engine import _numba
from engine.attention import attention
from engine.kvcache import KVCache
from engine.matmul import gemm_f32, gemm_q8_0
from engine.ops import geglu_q8_0, rmsnorm, rmsnorm_q8_0, rope_cache, rope_inplace, softmax, swiglu, swiglu_q8_0
from engine.quant import quantize_q8_0

AVX2, SCALAR = _numba.AVX2, _numba.SCALAR   # globals: numba reads them as literals
SIMDS = ["scalar"] + (["avx2"] if _numba.SIMD == "avx2" else [])
rng = np.random.default_rng(7)


@pytest.mark.parametrize("simd", SIMDS)
@pytest.mark.parametrize("n_out,n_in,n_tok", [(67, 256, 5), (8, 32, 1), (130, 96, 2), (4, 64, 3),
                                               (77, 64, 1), (13, 32, 1), (3, 96, 1),  # GEMV 8-row tiles + tails
                                               # PP >= W16_MIN_TOK: 32-row slabs, partial slab / group,
                                               # 4-token tiles with 2- and 1-token tails
                                               (67, 256, 9), (40, 64, 14), (3, 32, 8), (96, 128, 11)])
def test_gemm_q8_0_against_float64(simd, n_out, n_in, n_tok):
    w = rng.standard_normal((n_out, n_in)).astype(np.float32)
    x = rng.standard_normal((n_tok, n_in)).astype(np.float32)
    wq, xq = quantize_q8_0(w), quantize_q8_0(x)
    expect = (quants.dequantize(xq, T.Q8_0).astype(np.float64)
              @ quants.dequantize(wq, T.Q8_0).astype(np.float64).T)
    got = gemm_q8_0(wq, xq, simd=simd)
    # int32 block sums are exact; only f32 scaling/accumulation differs
    assert got.shape == (n_tok, n_out)
    assert ref.rel_err(got, expect) < 2e-6


def test_gemm_q8_0_avx2_equals_scalar_closely():
    if "avx2" not in SIMDS:
        pytest.skip("host has no AVX2: only the scalar path exists here")
    wq = quantize_q8_0(rng.standard_normal((40, 512)).astype(np.float32))
    xq = quantize_q8_0(rng.standard_normal((9, 512)).astype(np.float32))
    assert ref.rel_err(gemm_q8_0(wq, xq, simd="avx2"), gemm_q8_0(wq, xq, simd="scalar")) < 1e-6


def test_gemm_checks_inputs():
    with pytest.raises(ValueError, match="row bytes"):
        gemm_q8_0(np.zeros((4, 34), np.uint8), np.zeros((1, 68), np.uint8))


def test_gemm_f32():
    w = rng.standard_normal((33, 70)).astype(np.float32)
    x = rng.standard_normal((3, 70)).astype(np.float32)
    assert ref.rel_err(gemm_f32(w, x), x.astype(np.float64) @ w.T) < 1e-5


# sizes on both sides of ops.SERIAL_ELEMENTS: the serial and the prange kernels
@pytest.mark.parametrize("n", [5, 700])
def test_rmsnorm_and_fused_quantize(n):
    x = rng.standard_normal((n, 128)).astype(np.float32) * 3
    w = rng.standard_normal(128).astype(np.float32)
    assert ref.rel_err(rmsnorm(x, w, 1e-5), ref.rmsnorm(x, w, 1e-5)) < 1e-6
    h, hq = rmsnorm_q8_0(x, w, 1e-5)
    assert np.array_equal(h, rmsnorm(x, w, 1e-5))
    assert np.array_equal(hq, quants.quantize(h, T.Q8_0))


@pytest.mark.parametrize("n", [6, 400])
@pytest.mark.parametrize("neox", [False, True])
@pytest.mark.parametrize("n_rot,freq_scale", [(64, 1.0), (32, 0.25)])
def test_rope_norm_and_neox(n, neox, n_rot, freq_scale):
    x = rng.standard_normal((n, 3, 64)).astype(np.float32)
    pos = np.arange(100, 100 + n)
    cos, sin = rope_cache(pos, n_rot, 10000.0, freq_scale)
    got = x.copy()
    rope_inplace(got, cos, sin, n_rot, neox)
    expect = ref.rope(x, pos.astype(np.float64), n_rot, 10000.0, neox, freq_scale)
    assert ref.rel_err(got, expect) < 1e-5
    assert np.array_equal(got[..., n_rot:], x[..., n_rot:])  # partial rotary leaves the rest


def test_rope_yarn_ramp_limits():
    # YaRN with ext_factor 1: the highest-frequency pairs extrapolate (unscaled theta),
    # the lowest-frequency pairs interpolate (theta * freq_scale); mscale multiplies both.
    pos = np.array([1000.0])
    n_rot, base, fs = 64, 10000.0, 1 / 40
    cos_y, sin_y = rope_cache(pos, n_rot, base, fs, ext_factor=1.0, n_ctx_orig=4096)
    mscale = 1 + 0.1 * math.log(40)
    theta0 = 1000.0  # pair 0: base**0
    assert cos_y[0, 0] == pytest.approx(math.cos(theta0) * mscale, rel=1e-4)
    last = 1000.0 * base ** (-2 * 31 / n_rot) * fs
    assert cos_y[0, 31] == pytest.approx(math.cos(last) * mscale, rel=1e-4)
    cos_l, _ = rope_cache(pos, n_rot, base, fs)  # linear scaling: everything interpolated
    assert cos_l[0, 0] == pytest.approx(math.cos(1000.0 * fs), rel=1e-5)


@pytest.mark.parametrize("n", [4, 1100])
def test_swiglu_and_softmax(n):
    g = rng.standard_normal((n, 64)).astype(np.float32) * 4
    u = rng.standard_normal((n, 64)).astype(np.float32)
    g64 = g.astype(np.float64)
    assert ref.rel_err(swiglu(g, u), g64 / (1 + np.exp(-g64)) * u) < 1e-5
    s_, sq = swiglu_q8_0(g, u)
    assert np.array_equal(sq, quants.quantize(s_, T.Q8_0))
    s = rng.standard_normal((3, 200)).astype(np.float32) * 10
    assert ref.rel_err(softmax(s), ref.softmax(s.astype(np.float64))) < 1e-5


@pytest.mark.parametrize("n", [4, 1100])
def test_geglu_against_gelu_tanh(n):
    g = rng.standard_normal((n, 64)).astype(np.float32) * 4
    u = rng.standard_normal((n, 64)).astype(np.float32)
    out, outq = geglu_q8_0(g, u)
    assert ref.rel_err(out, ref.gelu_tanh(g) * u) < 1e-5
    assert np.array_equal(outq, quants.quantize(out, T.Q8_0))
    with pytest.raises(ValueError, match="geglu"):
        geglu_q8_0(g[:, :48], u[:, :48])


# Tolerances: f32 cache ~1e-6; f16 rounds K/V to 11 bits (~5e-4); q8_0 quantizes K, V
# and Q to 8 bits per 32-block (~1% of the largest output).
_TOL = {"f32": 2e-6, "f16": 2e-3, "q8_0": 2.5e-2}


@pytest.mark.parametrize("simd", SIMDS)
@pytest.mark.parametrize("flash", [True, False])
@pytest.mark.parametrize("tk,tv", [("f32", "f32"), ("f16", "f16"), ("q8_0", "q8_0"), ("q8_0", "f16"), ("f16", "q8_0")])
@pytest.mark.parametrize("n_head,n_kv", [(4, 2), (2, 2)])
def test_attention_against_exact_softmax(simd, flash, tk, tv, n_head, n_kv):
    hd, n_ctx, filled, n_q = 64, 256, 150, 19
    cache = KVCache(1, n_ctx, n_kv, hd, hd, tk, tv)
    K = rng.standard_normal((filled + n_q, n_kv, hd)).astype(np.float32)
    V = rng.standard_normal((filled + n_q, n_kv, hd)).astype(np.float32)
    cache.store(0, 0, K.reshape(len(K), -1), V.reshape(len(V), -1))
    cache.commit(0, len(K))
    q = rng.standard_normal((n_q, n_head, hd)).astype(np.float32)
    got = attention(q, cache, 0, filled, flash=flash, simd=simd)
    expect = ref.attention(q.astype(np.float64), K.astype(np.float64), V.astype(np.float64), filled)
    tol = max(_TOL[tk], _TOL[tv])
    assert ref.rel_err(got, expect) < tol


@pytest.mark.parametrize("simd", SIMDS)
@pytest.mark.parametrize("flash", [True, False])
@pytest.mark.parametrize("tk", ["f32", "q8_0"])
@pytest.mark.parametrize("window,filled,n_q", [(100, 300, 19), (64, 130, 1), (512, 40, 19), (7, 0, 24)])
@pytest.mark.parametrize("n_kv", [1, 4])     # GQA (8-query items) and MHA (16-query items)
def test_sliding_window_attention(simd, flash, tk, window, filled, n_q, n_kv):
    """Gemma's local layers: query at t sees [t-window+1, t]; windows that start mid-chunk,
    windows longer than the context, and a window shorter than the batch."""
    hd, n_head = 64, 4
    cache = KVCache(1, 512, n_kv, hd, hd, tk, "f16")
    K = rng.standard_normal((filled + n_q, n_kv, hd)).astype(np.float32)
    V = rng.standard_normal((filled + n_q, n_kv, hd)).astype(np.float32)
    cache.store(0, 0, K.reshape(len(K), -1), V.reshape(len(V), -1))
    cache.commit(0, len(K))
    q = rng.standard_normal((n_q, n_head, hd)).astype(np.float32) * 2
    got = attention(q, cache, 0, filled, flash=flash, simd=simd, window=window, scale=0.1)
    expect = ref.attention(q.astype(np.float64), K.astype(np.float64), V.astype(np.float64), filled,
                           window=window, scale=0.1)
    assert ref.rel_err(got, expect) < max(_TOL[tk], _TOL["f16"])
    if window < filled + n_q:   # the window really cuts: full attention differs
        full = ref.attention(q.astype(np.float64), K.astype(np.float64), V.astype(np.float64), filled, scale=0.1)
        assert ref.rel_err(got, full) > 10 * _TOL[tk]


def test_sliding_window_with_k_repack():
    """A PP batch whose window starts inside the repacked Q8_0_R8 view."""
    from engine.q8_0_r8 import RepackScratch
    hd, n_q, filled, window = 64, 64, 200, 100
    cache = KVCache(1, 512, 1, hd, hd, "q8_0", "q8_0")
    K = rng.standard_normal((filled + n_q, hd)).astype(np.float32)
    cache.store(0, 0, K, K[::-1].copy())
    cache.commit(0, len(K))
    q = rng.standard_normal((n_q, 2, hd)).astype(np.float32)
    plain = attention(q, cache, 0, filled, flash=True, window=window, k_repack="off")
    r8 = attention(q, cache, 0, filled, flash=True, window=window, k_repack="on", scratch=RepackScratch())
    assert ref.rel_err(r8, plain) < 1e-3


def test_flash_and_plain_agree_at_long_context():
    hd, n = 64, 700   # > 10 flash chunks
    cache = KVCache(1, 1024, 1, hd, hd, "f32", "f32")
    K = rng.standard_normal((n, hd)).astype(np.float32)
    cache.store(0, 0, K, K[::-1].copy())
    cache.commit(0, n)
    q = rng.standard_normal((1, 2, hd)).astype(np.float32) * 3
    a = attention(q, cache, 0, n - 1, flash=True)
    b = attention(q, cache, 0, n - 1, flash=False)
    assert ref.rel_err(a, b) < 1e-5


def test_avx2_tile_emits_int8_dot_instructions(tmp_path):
    """The intrinsic path must really vectorize: look for the instructions in the asm."""
    if "avx2" not in SIMDS:
        pytest.skip("host has no AVX2: only the scalar path exists here")
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from numba import njit\n"
        "from engine._simd import q8_tile_4x2\n"
        "@njit\n"
        "def f(out, w, x, nb):\n"
        "    q8_tile_4x2(out, 0, 4, w, 0, nb * 34, x, 0, nb * 34, nb)\n"
        "f(np.zeros(8, np.float32), np.zeros(4 * 34 * 2, np.uint8), np.zeros(2 * 34 * 2, np.uint8), 2)\n"
        "print(f.inspect_asm(f.signatures[0]))\n"
    )
    env = dict(__import__("os").environ, NUMBA_CACHE_DIR=str(tmp_path))  # cached code shows no asm
    asm = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120).stdout
    for insn in ("vpsignb", "vpmaddubsw", "vpmaddwd", "vfmadd"):
        assert insn in asm, insn
    assert "vpinsrw" not in asm  # the false-dependency scale load must stay gone


@pytest.mark.parametrize("simd", SIMDS)
@pytest.mark.parametrize("n_mats,n_tok", [(3, 1), (2, 5), (1, 2), (2, 1), (3, 9)])
def test_gemm_q8_0_multi_equals_separate_calls(simd, n_mats, n_tok):
    from engine.matmul import gemm_q8_0_multi

    xq = quantize_q8_0(rng.standard_normal((n_tok, 128)).astype(np.float32))
    ws = [quantize_q8_0(rng.standard_normal((n, 128)).astype(np.float32)) for n in (64, 19, 33)[:n_mats]]
    outs = gemm_q8_0_multi(ws, xq, simd=simd)
    for w, o in zip(ws, outs):
        assert np.array_equal(o, gemm_q8_0(w, xq, simd=simd))


def test_scalar_entry_points_hold_no_avx2_code(tmp_path):
    """One body per kernel: the ISA is a literal, and the scalar build must not contain the
    AVX2 int8 instructions (they would not even assemble on a host without AVX2)."""
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from engine import matmul, q8_0_r8\n"
        "from engine.quant import quantize_q8_0\n"
        "w = quantize_q8_0(np.ones((16, 64), np.float32)); x = quantize_q8_0(np.ones((3, 64), np.float32))\n"
        "matmul.gemm_q8_0(w, x, simd='scalar'); q8_0_r8.gemm_q8_0_r8(q8_0_r8.pack_q8_0_r8(w), x, simd='scalar')\n"
        "for f in (matmul._gemm_q8_0_scalar, q8_0_r8._gemm_r8_scalar):\n"
        "    print(f.__name__, 'vpmaddubsw' in f.inspect_asm(f.signatures[0]))\n"
    )
    env = dict(__import__("os").environ, NUMBA_CACHE_DIR=str(tmp_path))  # cached code shows no asm
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["_gemm_q8_0_scalar", "False", "_gemm_r8_scalar", "False"]


def _w16_pack_ref(wq: np.ndarray) -> np.ndarray:
    """numpy: (8, nb*34) Q8_0 rows -> nb W16 blocks of 528 bytes (engine._simd_w16's layout)."""
    nb = wq.shape[1] // 34
    blk = wq.reshape(8, nb, 34)
    d = blk[:, :, :2].transpose(1, 0, 2).reshape(nb, 16)                      # (b, k*2)
    q = blk[:, :, 2:].view(np.int8).astype("<i2").reshape(8, nb, 16, 2)        # (k, b, j, pair)
    q = q.transpose(1, 2, 0, 3).reshape(nb, 256).view(np.uint8).reshape(nb, 512)
    return np.concatenate([d, q], axis=1).reshape(-1)


@pytest.mark.parametrize("simd", SIMDS)
def test_w16_pack_and_x16_rows_match_numpy(simd):
    """The widened PP layouts byte for byte: weights interleaved by int16 pairs, X as int16 + f32 scales."""
    from numba import njit

    from engine.tiles import i16_row, w16_pack

    @njit
    def pack_avx2(dst, src, rs, nb):
        w16_pack(AVX2, dst, 528, src, rs, rs, nb)      # rows 1..8, written after one block

    @njit
    def pack_scalar(dst, src, rs, nb):
        w16_pack(SCALAR, dst, 528, src, rs, rs, nb)

    @njit
    def rows_avx2(dst, ds, src, nb):
        i16_row(AVX2, dst, 64, ds, 1, src, 34, nb)

    @njit
    def rows_scalar(dst, ds, src, nb):
        i16_row(SCALAR, dst, 64, ds, 1, src, 34, nb)

    nb = 3
    wq = quantize_q8_0(rng.standard_normal((9, nb * 32)).astype(np.float32))
    dst = np.zeros(528 * (nb + 1), np.uint8)
    (pack_avx2 if simd == "avx2" else pack_scalar)(dst, wq.reshape(-1), nb * 34, nb)
    assert not dst[:528].any()
    assert np.array_equal(dst[528:], _w16_pack_ref(wq[1:]))
    xq = quantize_q8_0(rng.standard_normal((1, nb * 32)).astype(np.float32))
    flat = np.concatenate([np.zeros(34, np.uint8), xq.reshape(-1)])       # the row at byte 34
    x16, xd = np.zeros(64 * (nb + 1), np.uint8), np.zeros(nb + 1, np.float32)
    (rows_avx2 if simd == "avx2" else rows_scalar)(x16, xd, flat, nb)
    blk = xq.reshape(nb, 34)
    assert np.array_equal(x16[64:].view("<i2"), blk[:, 2:].view(np.int8).astype(np.int16).reshape(-1))
    assert np.array_equal(xd[1:], blk[:, :2].copy().view("<f2").astype(np.float32).reshape(-1))
    assert xd[0] == 0 and not x16[:64].any()


@pytest.mark.parametrize("simd", SIMDS)
def test_w16_from_r8_equals_w16_of_the_rows(simd):
    """-rtr weights widen from their R8 groups to the same W16 bytes as the plain rows."""
    from numba import njit

    from engine.q8_0_r8 import pack_q8_0_r8
    from engine.tiles import w16_pack_r8

    @njit
    def widen_avx2(dst, src, nb):
        w16_pack_r8(AVX2, dst, 0, src, nb * 272, nb)          # the second group

    @njit
    def widen_scalar(dst, src, nb):
        w16_pack_r8(SCALAR, dst, 0, src, nb * 272, nb)

    nb = 4
    wq = quantize_q8_0(rng.standard_normal((16, nb * 32)).astype(np.float32))
    dst = np.zeros(528 * nb, np.uint8)
    (widen_avx2 if simd == "avx2" else widen_scalar)(dst, pack_q8_0_r8(wq).reshape(-1), nb)
    assert np.array_equal(dst, _w16_pack_ref(wq[8:]))


def test_avx2_w16_tile_uses_int16_dot(tmp_path):
    """The PP tile must really be one vpmaddwd per 8 rows x 2 products, with no int8 detour."""
    if "avx2" not in SIMDS:
        pytest.skip("host has no AVX2: only the scalar path exists here")
    import subprocess
    import sys

    code = (
        "import numpy as np\n"
        "from numba import njit\n"
        "from engine._simd_w16 import w16_tile_4\n"
        "@njit\n"
        "def f(out, w, x, xd, nb):\n"
        "    w16_tile_4(out, 0, 8, w, 0, x, xd, 0, nb)\n"
        "f(np.zeros(32, np.float32), np.zeros(528 * 2, np.uint8), np.zeros(4 * 64 * 2, np.uint8),\n"
        "  np.zeros(8, np.float32), 2)\n"
        "print(f.inspect_asm(f.signatures[0]))\n"
    )
    env = dict(__import__("os").environ, NUMBA_CACHE_DIR=str(tmp_path))  # cached code shows no asm
    asm = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                         timeout=120).stdout
    assert asm.count("vpmaddwd") == 64   # 16 chunks x 4 columns, unrolled
    assert "vpmaddubsw" not in asm and "vpsignb" not in asm


@pytest.mark.parametrize("n", [1, 300])          # serial (TG) and parallel (PP) kernels
@pytest.mark.parametrize("norm", [False, True])
def test_qk_norm_rope_is_norm_then_rope_in_one_launch(n, norm):
    from engine.ops import qk_norm_rope

    H, Hkv, D, n_rot = 4, 2, 64, 64
    q = rng.standard_normal((n, H, D)).astype(np.float32)
    k = rng.standard_normal((n, Hkv, D)).astype(np.float32)
    qn = rng.standard_normal(D).astype(np.float32) if norm else None
    kn = rng.standard_normal(D).astype(np.float32) if norm else None
    cos, sin = rope_cache(np.arange(n) + 5, n_rot, 10000.0)
    q_ref, k_ref = q.copy(), k.copy()
    if norm:
        q_ref = rmsnorm(q_ref.reshape(n * H, D), qn, 1e-6).reshape(n, H, D)
        k_ref = rmsnorm(k_ref.reshape(n * Hkv, D), kn, 1e-6).reshape(n, Hkv, D)
    rope_inplace(q_ref, cos, sin, n_rot, True)
    rope_inplace(k_ref, cos, sin, n_rot, True)
    qk_norm_rope(q, k, qn, kn, 1e-6, cos, sin, n_rot, True)
    assert np.array_equal(q, q_ref) and np.array_equal(k, k_ref)


@pytest.mark.parametrize("n", [1, 600])
def test_quantize_pair_writes_what_two_quantizes_write(n):
    from engine.quant import quantize_q8_0_pair

    a = rng.standard_normal((n, 128)).astype(np.float32)
    b = rng.standard_normal((n, 64)).astype(np.float32)
    cache_a, cache_b = np.zeros((n + 3, 136), np.uint8), np.zeros((n + 3, 68), np.uint8)
    quantize_q8_0_pair(a, cache_a[2:2 + n], b, cache_b[2:2 + n])
    assert np.array_equal(cache_a[2:2 + n], quantize_q8_0(a)) and np.array_equal(cache_b[2:2 + n], quantize_q8_0(b))
    assert not cache_a[:2].any() and not cache_a[2 + n:].any() and not cache_b[2 + n:].any()
