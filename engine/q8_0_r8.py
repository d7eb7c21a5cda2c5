"""Q8_0_R8: eight Q8_0 rows interleaved (ik_llama.cpp's ``block_q8_0_r8``).

Byte layout. Rows are taken in groups of 8 (row group g = rows 8g..8g+7). For
every 32-column block b of the group there is one 272-byte block (= 8 x 34):

  bytes   0..15   d[8]: d[k] = row (8g+k)'s fp16 scale of block b (little endian)
  bytes  16..271  qs[256], interleaved in 4-byte groups:
                  qs[128*h + 32*l + 4*k + i] = row_k.qs[16*h + 4*l + i]
                  for h in {0,1}, l in 0..3, k in 0..7, i in 0..3

Equivalently, with j = 4h + l: 32-byte chunk j of qs holds quants 4j..4j+3 of rows
0..7 (row k at chunk bytes 4k..4k+3), so one 32-byte load feeds 8 rows' dots.
A repacked matrix of n_rows x n_cols (n_rows % 8 == 0) is (n_rows/8, nb*272) u8,
group-major then block (group g's nb blocks are consecutive), which is what ik's
``repack_q8_0`` writes. Packing is a pure byte permutation: ``unpack(pack(w)) == w``
bit for bit. A repacked K view (``repack_k_view``) is one such matrix per KV head
(positions as rows, zero rows padding the last group), heads one after another.

Kernels here: the numpy reference pack/unpack, the numba pack (weights and K
views), the Q8_0_R8 x Q8_0 GEMM/GEMV (``gemm_q8_0_r8``; AVX2 tiles of 8 rows x
4/2/1 columns from ``_simd_r8``, or plain numba), the attention score functions
that read a repacked K view, and ``repack_weights`` (``-rtr``).
"""
from __future__ import annotations

import dataclasses
import mmap
import time

import numpy as np
from numba import njit, prange

from engine import _numba
from engine._numba import NJIT, PARALLEL
from engine.options import K_REPACK_MODES
from engine._simd_r8 import R8_BLOCK_BYTES, r8_tile_1, r8_tile_2, r8_tile_4
from engine.quant import Q8_0_BYTES, QK8_0, f16_bits_to_f32

assert R8_BLOCK_BYTES == 8 * Q8_0_BYTES
R8_ROWS = 8


# -- numpy reference ---------------------------------------------------------------------

def pack_q8_0_r8_ref(w: np.ndarray) -> np.ndarray:
    """(n_rows, nb*34) u8 Q8_0 -> (n_rows/8, nb*272) u8 Q8_0_R8 (numpy reference)."""
    n_rows, rb = w.shape
    if n_rows % R8_ROWS or rb % Q8_0_BYTES:
        raise ValueError(f"pack_q8_0_r8_ref: need rows % 8 == 0 and whole blocks, got {w.shape}")
    nb = rb // Q8_0_BYTES
    blk = w.reshape(n_rows // 8, 8, nb, Q8_0_BYTES)            # (group, k, b, 34)
    d = blk[..., :2].transpose(0, 2, 1, 3).reshape(n_rows // 8, nb, 16)        # (g, b, k*2)
    qs = blk[..., 2:].reshape(n_rows // 8, 8, nb, 8, 4)         # (g, k, b, j, i)
    qs = qs.transpose(0, 2, 3, 1, 4).reshape(n_rows // 8, nb, 256)             # (g, b, j*32+k*4+i)
    return np.ascontiguousarray(np.concatenate([d, qs], axis=2).reshape(n_rows // 8, nb * R8_BLOCK_BYTES))


def unpack_q8_0_r8_ref(p: np.ndarray) -> np.ndarray:
    """(n_groups, nb*272) u8 Q8_0_R8 -> (n_groups*8, nb*34) u8 Q8_0 (numpy reference)."""
    n_groups, rb = p.shape
    if rb % R8_BLOCK_BYTES:
        raise ValueError(f"unpack_q8_0_r8_ref: rows of {rb} bytes are not whole R8 blocks")
    nb = rb // R8_BLOCK_BYTES
    blk = p.reshape(n_groups, nb, R8_BLOCK_BYTES)
    d = blk[..., :16].reshape(n_groups, nb, 8, 2).transpose(0, 2, 1, 3)         # (g, k, b, 2)
    qs = blk[..., 16:].reshape(n_groups, nb, 8, 8, 4).transpose(0, 3, 1, 2, 4)  # (g, k, b, j, i)
    qs = qs.reshape(n_groups, 8, nb, 32)
    return np.ascontiguousarray(np.concatenate([d, qs], axis=3).reshape(n_groups * 8, nb * Q8_0_BYTES))


# -- numba pack ---------------------------------------------------------------------------

@njit(**PARALLEL)
def _pack_views(src, src_rstride, src_hstride, n_head, n_rows, nb, dst):
    # src: flat u8; row r of head h = nb Q8_0 blocks at byte h*src_hstride + r*src_rstride.
    # dst: flat u8, head h's R8 matrix at byte h*n_groups*nb*272; rows >= n_rows are zeros.
    n_groups = (n_rows + 7) // 8
    gbytes = nb * 272
    for item in prange(n_head * n_groups):
        h = item // n_groups
        g = item - h * n_groups
        base = item * gbytes
        for k in range(8):
            r = g * 8 + k
            if r < n_rows:
                so = h * src_hstride + r * src_rstride
                for b in range(nb):
                    s = so + b * 34
                    o = base + b * 272
                    dst[o + 2 * k] = src[s]
                    dst[o + 2 * k + 1] = src[s + 1]
                    for j in range(8):
                        for i in range(4):
                            dst[o + 16 + 32 * j + 4 * k + i] = src[s + 2 + 4 * j + i]
            else:
                for b in range(nb):
                    o = base + b * 272
                    dst[o + 2 * k] = 0
                    dst[o + 2 * k + 1] = 0
                    for j in range(8):
                        for i in range(4):
                            dst[o + 16 + 32 * j + 4 * k + i] = 0


def pack_q8_0_r8(w: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """(n_rows, nb*34) u8 Q8_0 (n_rows % 8 == 0) -> (n_rows/8, nb*272) u8 Q8_0_R8."""
    if w.ndim != 2 or w.dtype != np.uint8 or w.shape[0] % R8_ROWS or w.shape[1] % Q8_0_BYTES:
        raise ValueError(f"pack_q8_0_r8: need 2-D uint8 Q8_0 rows with rows % 8 == 0, got {w.dtype}{w.shape}")
    w = np.ascontiguousarray(w)
    n_rows, rb = w.shape
    shape = (n_rows // 8, rb // Q8_0_BYTES * R8_BLOCK_BYTES)
    if out is None:
        out = np.empty(shape, dtype=np.uint8)
    elif out.shape != shape or out.dtype != np.uint8 or not out.flags.c_contiguous:
        raise ValueError(f"pack_q8_0_r8: out must be contiguous uint8 {shape}")
    _pack_views(w.reshape(-1), rb, 0, 1, n_rows, rb // Q8_0_BYTES, out.reshape(-1))
    return out


def k_view_bytes(n_rows: int, n_head: int, head_dim: int) -> int:
    """Scratch bytes of a repacked K view: row_size(Q8_0, head_dim) x rows (padded to 8) x heads."""
    return ((n_rows + 7) // 8 * 8) * n_head * (head_dim // QK8_0 * Q8_0_BYTES)


def repack_k_view(k: np.ndarray, n_rows: int, n_head: int, head_dim: int, scratch: np.ndarray) -> np.ndarray:
    """Repack positions [0, n_rows) of a q8_0 K cache layer into scratch; return the used part.

    k: (n_ctx, n_head*head_dim/32*34) u8 (engine.kvcache layout); scratch: flat u8 of at
    least ``k_view_bytes`` bytes. Result: flat u8, head h's Q8_0_R8 matrix of
    ceil(n_rows/8) groups at byte h * rows_pad * head_dim/32*34.
    """
    need = k_view_bytes(n_rows, n_head, head_dim)
    if scratch.ndim != 1 or scratch.dtype != np.uint8 or scratch.shape[0] < need:
        raise ValueError(f"repack_k_view: scratch of {scratch.shape} cannot hold {need} bytes")
    if k.dtype != np.uint8 or k.ndim != 2 or not k.flags.c_contiguous or n_rows > k.shape[0]:
        raise ValueError(f"repack_k_view: expected a contiguous q8_0 K layer with >= {n_rows} rows, got {k.shape}")
    nbh = head_dim // QK8_0
    view = scratch[:need]
    _pack_views(k.reshape(-1), k.shape[1], nbh * Q8_0_BYTES, n_head, n_rows, nbh, view)
    return view


# -- GEMM / GEMV --------------------------------------------------------------------------

@njit(inline="always", **NJIT)
def _group_avx2(w, n_groups, x, n_tok, nb, out, g):
    # rows [8g, 8g+8) of out (n_tok, n_groups*8) flat f32; w flat R8 bytes, x flat Q8_0 bytes
    rb = nb * 34
    gb = nb * 272
    n_out = n_groups * 8
    t = 0
    while t + 4 <= n_tok:
        r8_tile_4(out, t * n_out + g * 8, n_out, w, g * gb, x, t * rb, (t + 1) * rb,
                  (t + 2) * rb, (t + 3) * rb, nb)
        t += 4
    if t + 2 <= n_tok:
        r8_tile_2(out, t * n_out + g * 8, n_out, w, g * gb, x, t * rb, (t + 1) * rb, 0, 0, nb)
        t += 2
    if t < n_tok:
        r8_tile_1(out, t * n_out + g * 8, n_out, w, g * gb, x, t * rb, 0, 0, 0, nb)


@njit(**PARALLEL)
def _gemm_r8_avx2(w, n_groups, x, n_tok, nb, out):
    # w: flat (n_groups*nb*272) u8; x: flat (n_tok*nb*34) u8; out: flat (n_tok*n_groups*8) f32
    for g in prange(n_groups):
        _group_avx2(w, n_groups, x, n_tok, nb, out, g)


@njit(inline="always", **NJIT)
def _i8(v):
    q = np.int64(v)
    return q - 256 if q > 127 else q


@njit(**NJIT)
def dot8_r8_scalar(out, out_off, w, wo, x, xo, nb):
    """Plain numba: out[out_off+k] = row k of the R8 group at byte wo . Q8_0 row at xo."""
    for k in range(8):
        acc = np.float32(0.0)
        for b in range(nb):
            o = wo + b * 272
            px = xo + b * 34
            dw = f16_bits_to_f32(np.int64(w[o + 2 * k]) | (np.int64(w[o + 2 * k + 1]) << 8))
            dx = f16_bits_to_f32(np.int64(x[px]) | (np.int64(x[px + 1]) << 8))
            s = 0
            for j in range(8):
                for i in range(4):
                    s += _i8(w[o + 16 + 32 * j + 4 * k + i]) * _i8(x[px + 2 + 4 * j + i])
            acc += np.float32(s) * (dw * dx)
        out[out_off + k] = acc


@njit(inline="always", **NJIT)
def _group_scalar(w, n_groups, x, n_tok, nb, out, g):
    for t in range(n_tok):
        dot8_r8_scalar(out, t * n_groups * 8 + g * 8, w, g * nb * 272, x, t * nb * 34, nb)


@njit(**PARALLEL)
def _gemm_r8_scalar(w, n_groups, x, n_tok, nb, out):
    for g in prange(n_groups):
        _group_scalar(w, n_groups, x, n_tok, nb, out, g)


# Up to three R8 matrices sharing one input (q/k/v, gate/up) in one parallel launch,
# like matmul.gemm_q8_0_multi (each launch costs tens of microseconds in TG).
@njit(**PARALLEL)
def _gemm3_r8_avx2(w1, g1, o1, w2, g2, o2, w3, g3, o3, x, n_tok, nb):
    for g in prange(g1 + g2 + g3):
        if g < g1:
            _group_avx2(w1, g1, x, n_tok, nb, o1, g)
        elif g < g1 + g2:
            _group_avx2(w2, g2, x, n_tok, nb, o2, g - g1)
        else:
            _group_avx2(w3, g3, x, n_tok, nb, o3, g - g1 - g2)


@njit(**PARALLEL)
def _gemm3_r8_scalar(w1, g1, o1, w2, g2, o2, w3, g3, o3, x, n_tok, nb):
    for g in prange(g1 + g2 + g3):
        if g < g1:
            _group_scalar(w1, g1, x, n_tok, nb, o1, g)
        elif g < g1 + g2:
            _group_scalar(w2, g2, x, n_tok, nb, o2, g - g1)
        else:
            _group_scalar(w3, g3, x, n_tok, nb, o3, g - g1 - g2)


def gemm_q8_0_r8(w: np.ndarray, xq: np.ndarray, out: np.ndarray | None = None,
                 simd: str | None = None) -> np.ndarray:
    """Y = X W^T with W (n_out/8, nb*272) Q8_0_R8 and X (n_tok, nb*34) Q8_0 -> (n_tok, n_out) f32.

    Same sums as ``matmul.gemm_q8_0`` on the unpacked W: each 32-block dot exact in
    int32, scaled by d_w*d_x and summed over blocks in f32 (in a different order, so
    results agree to f32 rounding, not bit for bit).
    """
    if w.ndim != 2 or xq.ndim != 2 or w.dtype != np.uint8 or xq.dtype != np.uint8:
        raise ValueError(f"gemm_q8_0_r8: expected 2-D uint8 W and X, got {w.dtype}{w.shape}, {xq.dtype}{xq.shape}")
    if w.shape[1] % R8_BLOCK_BYTES or xq.shape[1] % Q8_0_BYTES or \
            w.shape[1] // R8_BLOCK_BYTES != xq.shape[1] // Q8_0_BYTES:
        raise ValueError(f"gemm_q8_0_r8: W {w.shape} (R8) and X {xq.shape} (Q8_0) blocks do not match")
    if not (w.flags.c_contiguous and xq.flags.c_contiguous):
        raise ValueError("gemm_q8_0_r8: W and X must be C-contiguous")
    n_groups = w.shape[0]
    n_tok, rb = xq.shape
    n_out = n_groups * 8
    if out is None:
        out = np.empty((n_tok, n_out), dtype=np.float32)
    elif out.shape != (n_tok, n_out) or out.dtype != np.float32 or not out.flags.c_contiguous:
        raise ValueError(f"gemm_q8_0_r8: out must be contiguous f32 {(n_tok, n_out)}")
    kernel = _gemm_r8_avx2 if (simd or _numba.SIMD) == "avx2" else _gemm_r8_scalar
    kernel(w.reshape(-1), n_groups, xq.reshape(-1), n_tok, rb // Q8_0_BYTES, out.reshape(-1))
    return out


# -- K-cache repack policy and scratch ---------------------------------------------------



def k_repack_applies(mode: str, n_q: int, n_kv: int, type_k: str, head_dim: int) -> bool:
    """Whether a flash-attention batch of n_q queries over n_kv positions reads K as Q8_0_R8.

    auto: ik_llama.cpp's rule: n_q >= 8 (PP, never TG), K q8_0, head_dim % 32 == 0 and
    n_kv % 8 == 0. on: every PP batch (n_q > 1) with a q8_0 K (the last group is
    zero-padded). off: never (ik PR 315).
    """
    if mode not in K_REPACK_MODES:
        raise ValueError(f"--k-repack: unknown mode {mode!r} (allowed: {', '.join(K_REPACK_MODES)})")
    if mode == "off" or type_k != "q8_0" or head_dim % QK8_0 or n_q < 2:
        return False
    if mode == "on":
        return True
    return n_q >= 8 and n_kv % R8_ROWS == 0


class RepackScratch:
    """Grow-only buffer for repacked K views, like ik's CPU work buffer (never shrunk).

    ``hwm_bytes`` is the allocation (the high-water mark); ``last_bytes`` is the most
    any layer needed since ``reset()`` (the model resets it at every eval), i.e. the
    scratch the last batch needed. Pages are touched as K is repacked into them.
    """

    def __init__(self) -> None:
        self.buf = np.empty(0, dtype=np.uint8)
        self.last_bytes = 0

    def reset(self) -> None:
        self.last_bytes = 0

    def get(self, nbytes: int) -> np.ndarray:
        if nbytes > self.buf.shape[0]:
            self.buf = np.empty(0, dtype=np.uint8)   # free the old one first, as a realloc would
            self.buf = np.empty(nbytes, dtype=np.uint8)
        self.last_bytes = max(self.last_bytes, nbytes)
        return self.buf

    @property
    def hwm_bytes(self) -> int:
        return int(self.buf.shape[0])


_EMPTY_W = np.zeros((0,), dtype=np.uint8)
_EMPTY_O = np.zeros((0,), dtype=np.float32)


def gemm_q8_0_r8_multi(ws, xq: np.ndarray, simd: str | None = None) -> list[np.ndarray]:
    """[X W_i^T for W_i in ws] for 1-3 Q8_0_R8 matrices with the same blocks per row, one launch."""
    if not 1 <= len(ws) <= 3:
        raise ValueError(f"gemm_q8_0_r8_multi: 1 to 3 matrices, got {len(ws)}")
    if xq.ndim != 2 or xq.dtype != np.uint8 or xq.shape[1] % Q8_0_BYTES or not xq.flags.c_contiguous:
        raise ValueError(f"gemm_q8_0_r8_multi: X must be contiguous Q8_0 bytes, got {xq.dtype}{xq.shape}")
    nb = xq.shape[1] // Q8_0_BYTES
    for w in ws:
        if w.ndim != 2 or w.dtype != np.uint8 or w.shape[1] != nb * R8_BLOCK_BYTES or not w.flags.c_contiguous:
            raise ValueError(f"gemm_q8_0_r8_multi: W {w.dtype}{w.shape} (R8) does not match X {xq.shape}")
    n_tok = xq.shape[0]
    outs = [np.empty((n_tok, w.shape[0] * 8), dtype=np.float32) for w in ws]
    args = []
    for k in range(3):
        args += [ws[k].reshape(-1), ws[k].shape[0], outs[k].reshape(-1)] if k < len(ws) else [_EMPTY_W, 0, _EMPTY_O]
    kernel = _gemm3_r8_avx2 if (simd or _numba.SIMD) == "avx2" else _gemm3_r8_scalar
    kernel(*args, xq.reshape(-1), n_tok, nb)
    return outs


# -- attention scores over a repacked K view ----------------------------------------------
# Same signature as attention._scores_q8_*; kb is the repacked view and krow is the byte
# size of one head's R8 matrix (rows_pad * qhb). khead_off = kvh * qhb (as for the plain
# cache), so the head's base is khead_off // qhb * krow. p0 is a multiple of 8 (flash
# chunks are 64 positions; the plain path starts at 0); a partial last group is computed
# into a temporary (the padded rows exist in the view) and only cnt - p values are kept.

@njit(**NJIT)
def _scores_r8_avx2(s, CH, kb, krow, khead_off, p0, cnt, qq, q0_off, qhb, ncol, g, cstride_pair, qrow):
    nb = qhb // 34
    hbase = (khead_off // qhb) * krow
    tmp = np.empty(32, dtype=np.float32)
    p = 0
    while p < cnt:
        wo = hbase + ((p0 + p) // 8) * nb * 272
        full = p + 8 <= cnt
        col = 0
        while col < ncol:
            nc = min(4, ncol - col)
            if nc == 3:
                nc = 2
            x0 = q0_off + (col // g) * qrow + (col % g) * qhb
            c1 = col + 1
            x1 = q0_off + (c1 // g) * qrow + (c1 % g) * qhb
            c2 = col + 2
            x2 = q0_off + (c2 // g) * qrow + (c2 % g) * qhb
            c3 = col + 3
            x3 = q0_off + (c3 // g) * qrow + (c3 % g) * qhb
            if full:
                if nc == 4:
                    r8_tile_4(s, col * CH + p, CH, kb, wo, qq, x0, x1, x2, x3, nb)
                elif nc == 2:
                    r8_tile_2(s, col * CH + p, CH, kb, wo, qq, x0, x1, 0, 0, nb)
                else:
                    r8_tile_1(s, col * CH + p, CH, kb, wo, qq, x0, 0, 0, 0, nb)
            else:
                if nc == 4:
                    r8_tile_4(tmp, 0, 8, kb, wo, qq, x0, x1, x2, x3, nb)
                elif nc == 2:
                    r8_tile_2(tmp, 0, 8, kb, wo, qq, x0, x1, 0, 0, nb)
                else:
                    r8_tile_1(tmp, 0, 8, kb, wo, qq, x0, 0, 0, 0, nb)
                for c in range(nc):
                    for k in range(cnt - p):
                        s[(col + c) * CH + p + k] = tmp[c * 8 + k]
            col += nc
        p += 8


@njit(**NJIT)
def _scores_r8_scalar(s, CH, kb, krow, khead_off, p0, cnt, qq, q0_off, qhb, ncol, g, cstride_pair, qrow):
    nb = qhb // 34
    hbase = (khead_off // qhb) * krow
    tmp = np.empty(8, dtype=np.float32)
    p = 0
    while p < cnt:
        wo = hbase + ((p0 + p) // 8) * nb * 272
        n = min(8, cnt - p)
        for col in range(ncol):
            dot8_r8_scalar(tmp, 0, kb, wo, qq, q0_off + (col // g) * qrow + (col % g) * qhb, nb)
            for k in range(n):
                s[col * CH + p + k] = tmp[k]
        p += 8


# -- -rtr: repack weights at load ------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class RepackReport:
    """What ``repack_weights`` did: counts, bytes and time."""

    n_repacked: int
    n_kept: int
    mib_repacked: float
    seconds: float
    kept: tuple[str, ...]   # names of Q8_0 matrices left as Q8_0 (token_embd, rows % 8 != 0)

    def line(self) -> str:
        kept = f"; kept as Q8_0: {', '.join(self.kept)}" if self.kept else ""
        return (f"run-time repack (-rtr): {self.n_repacked} Q8_0 matrices ({self.mib_repacked:.1f} MiB) "
                f"-> Q8_0_R8 in {self.seconds:.2f} s{kept}")


def _own(a):
    return None if a is None else np.array(a, copy=True)


def mmap_releaser(mm):
    """A function that drops the file-mapped pages under an array viewing ``mm`` from RSS.

    mm: the ``np.memmap`` a GGUFReader maps (``reader.data``). The pages stay in the
    page cache; touching them again re-faults them. Arrays not inside mm are ignored.
    """
    raw = getattr(mm, "_mmap", None)
    if raw is None or not hasattr(raw, "madvise"):
        return lambda a: None
    base, size, page = mm.ctypes.data, mm.nbytes, mmap.PAGESIZE

    def release(a: np.ndarray) -> None:
        start = a.ctypes.data - base
        if start < 0 or start + a.nbytes > size:
            return
        lo = start // page * page
        hi = min(size, -(-(start + a.nbytes) // page) * page)
        raw.madvise(mmap.MADV_DONTNEED, lo, hi - lo)

    return release


def repack_weights(weights, release=None):
    """-rtr: every Q8_0 matrix except token_embd with rows % 8 == 0 -> kind "q8_0_r8".

    Returns (new Weights, RepackReport). Repacked matrices live in anonymous memory;
    everything else is copied out of the file mapping too (norms, biases,
    token_embd), so no view keeps the mmap alive: with -rtr the model is no longer
    mmap-backed (what ik's -rtr does). ``release(array)`` (``mmap_releaser``) is called
    on each source matrix once it is copied, so peak RSS holds about one model, not
    the mapped file plus the copy.
    """
    t0 = time.perf_counter()
    counts = {"n": 0, "bytes": 0}
    kept: list[str] = []
    done = release or (lambda a: None)
    emb = weights.token_embd
    emb_new = dataclasses.replace(emb, data=np.array(emb.data, copy=True))
    done(emb.data)

    def conv(wt, name):
        if wt.kind != "q8_0" or wt.n_out % R8_ROWS:
            if wt.kind == "q8_0":
                kept.append(name)
            out = dataclasses.replace(wt, data=np.array(wt.data, copy=True))
        else:
            counts["n"] += 1
            counts["bytes"] += wt.data.nbytes
            out = dataclasses.replace(wt, kind="q8_0_r8", data=pack_q8_0_r8(np.ascontiguousarray(wt.data)))
        done(wt.data)
        return out

    layers = []
    for i, L in enumerate(weights.layers):
        mats = {f: conv(getattr(L, f), f"blk.{i}.{f}")
                for f in ("wq", "wk", "wv", "wo", "w_gate", "w_up", "w_down")}
        layers.append(dataclasses.replace(L, attn_norm=_own(L.attn_norm), ffn_norm=_own(L.ffn_norm),
                                          bq=_own(L.bq), bk=_own(L.bk), bv=_own(L.bv), **mats))
    if weights.tied_output:
        output = emb_new
        kept.insert(0, "token_embd (tied output)")
    else:
        output = conv(weights.output, "output")
        kept.insert(0, "token_embd")
    new = dataclasses.replace(weights, token_embd=emb_new, layers=tuple(layers),
                              output_norm=_own(weights.output_norm), output=output)
    rep = RepackReport(n_repacked=counts["n"], n_kept=len(kept), mib_repacked=counts["bytes"] / 2**20,
                       seconds=time.perf_counter() - t0, kept=tuple(kept))
    return new, rep
