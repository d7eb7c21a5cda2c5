"""ISA leaf primitives: the int8 dot tiles and row conversions every kernel body is built from.

Each primitive takes the body's literal ``kind`` (``engine._numba.AVX2`` or ``SCALAR``)
and is resolved when numba types the call: the AVX2 form calls the intrinsics of
``engine._simd*``, the scalar form is plain numba and is the reference the intrinsics
are tested against; only the chosen form is compiled (the scalar build holds no AVX2
instruction) and it is inlined into the calling kernel (``overload(inline="always")``:
a call per tile would cost as much as a small tile). Kernel bodies (matmul, MoE, R8,
attention) are written once over these, so the two paths cannot drift apart. The
primitives run inside numba code only; ``kind`` must be a compile-time literal.

Q8_0 byte layout (engine.layout): a row is nb consecutive 34-byte blocks (fp16 d, 32 i8).
"""
from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.core.errors import TypingError
from numba.extending import overload

from engine._numba import AVX2, NJIT
from engine._simd import f16_to_f32, q8_tile_1x1, q8_tile_4x1, q8_tile_4x2, q8_tile_8x1
from engine._simd_f32 import q8_0_to_f32
from engine._simd_r8 import r8_tile_1, r8_tile_2, r8_tile_4
from engine._simd_w16 import q8_0_to_i16, w16_from_r8, w16_pack8, w16_tile_1, w16_tile_2, w16_tile_4
from engine.layout import (Q8_0_BYTES, Q8_0_SCALE_BYTES, QK8_0, R8_BLOCK_BYTES, R8_ROWS, W16_BLOCK_BYTES,
                           X16_BLOCK_BYTES)
from engine.quant import f16_bits_to_f32


@njit(inline="always", **NJIT)
def _i8(v):
    q = np.int64(v)
    return q - 256 if q > 127 else q


@njit(inline="always", **NJIT)
def _f16_at(a, o):
    # the fp16 stored little-endian at byte o of the u8 array a, as f32
    return f16_bits_to_f32(np.int64(a[o]) | (np.int64(a[o + 1]) << 8))


@njit(**NJIT)
def dot_q8_0_scalar(w, wo, x, xo, nb):
    """Plain-numba Q8_0 . Q8_0 over nb blocks at byte offsets wo of w and xo of x."""
    acc = np.float32(0.0)
    for b in range(nb):
        pw = wo + b * Q8_0_BYTES
        px = xo + b * Q8_0_BYTES
        s = 0
        for i in range(QK8_0):
            s += _i8(w[pw + Q8_0_SCALE_BYTES + i]) * _i8(x[px + Q8_0_SCALE_BYTES + i])
        acc += np.float32(s) * (_f16_at(w, pw) * _f16_at(x, px))
    return acc


@njit(**NJIT)
def dot8_r8_scalar(out, out_off, w, wo, x, xo, nb):
    """Plain numba: out[out_off+k] = row k of the Q8_0_R8 group at byte wo . the Q8_0 row at xo."""
    for k in range(R8_ROWS):
        acc = np.float32(0.0)
        for b in range(nb):
            o = wo + b * R8_BLOCK_BYTES
            px = xo + b * Q8_0_BYTES
            s = 0
            for j in range(8):
                for i in range(4):
                    s += _i8(w[o + 16 + 32 * j + 4 * k + i]) * _i8(x[px + Q8_0_SCALE_BYTES + 4 * j + i])
            acc += np.float32(s) * (_f16_at(w, o + 2 * k) * _f16_at(x, px))
        out[out_off + k] = acc


def _form(name: str, kind) -> int:
    """The ISA literal a call was typed with (engine._numba.AVX2 or SCALAR)."""
    if not isinstance(kind, types.IntegerLiteral):
        raise TypingError(f"engine.tiles.{name}: kind must be a compile-time literal, got {kind}")
    return kind.literal_value


def q8_tile(kind, out, oo, ocs, w, wo, wrs, x, xo, xcs, nb, nr, nc):
    """out[oo + c*ocs + r] = W row r . X row c (Q8_0 . Q8_0 over nb blocks) for r < nr, c < nc.

    Row r of W starts at byte wo + r*wrs of w, row c of X at xo + c*xcs of x; out is flat
    f32, w and x flat u8. AVX2 uses one register tile for (nr, nc) = (8, 1), (4, 2) or
    (4, 1) and single dots otherwise; every output is the same sum in either shape.
    """
    raise NotImplementedError("engine.tiles primitives run inside numba kernels only")


def _q8_tile_avx2(kind, out, oo, ocs, w, wo, wrs, x, xo, xcs, nb, nr, nc):
    if nr == 4 and nc == 2:
        q8_tile_4x2(out, oo, ocs, w, wo, wrs, x, xo, xcs, nb)
    elif nr == 8 and nc == 1:
        q8_tile_8x1(out, oo, ocs, w, wo, wrs, x, xo, xcs, nb)
    elif nr == 4 and nc == 1:
        q8_tile_4x1(out, oo, ocs, w, wo, wrs, x, xo, xcs, nb)
    else:
        for r in range(nr):
            for c in range(nc):
                q8_tile_1x1(out, oo + c * ocs + r, 0, w, wo + r * wrs, 0, x, xo + c * xcs, 0, nb)


def _q8_tile_scalar(kind, out, oo, ocs, w, wo, wrs, x, xo, xcs, nb, nr, nc):
    for r in range(nr):
        for c in range(nc):
            out[oo + c * ocs + r] = dot_q8_0_scalar(w, wo + r * wrs, x, xo + c * xcs, nb)


@overload(q8_tile, inline="always", prefer_literal=True)
def _q8_tile(kind, out, oo, ocs, w, wo, wrs, x, xo, xcs, nb, nr, nc):
    return _q8_tile_avx2 if _form("q8_tile", kind) == AVX2 else _q8_tile_scalar


def r8_tile(kind, out, oo, ocs, w, wo, x, x0, x1, x2, x3, nb, nc):
    """out[oo + c*ocs + k] = row k of the R8 group at byte wo of w . the Q8_0 row at byte x_c of x,
    for k < 8 and c < nc (1, 2 or 4; x_c for c >= nc is ignored)."""
    raise NotImplementedError("engine.tiles primitives run inside numba kernels only")


def _r8_tile_avx2(kind, out, oo, ocs, w, wo, x, x0, x1, x2, x3, nb, nc):
    if nc == 4:
        r8_tile_4(out, oo, ocs, w, wo, x, x0, x1, x2, x3, nb)
    elif nc == 2:
        r8_tile_2(out, oo, ocs, w, wo, x, x0, x1, 0, 0, nb)
    else:
        r8_tile_1(out, oo, ocs, w, wo, x, x0, 0, 0, 0, nb)


def _r8_tile_scalar(kind, out, oo, ocs, w, wo, x, x0, x1, x2, x3, nb, nc):
    dot8_r8_scalar(out, oo, w, wo, x, x0, nb)
    if nc > 1:
        dot8_r8_scalar(out, oo + ocs, w, wo, x, x1, nb)
    if nc > 2:
        dot8_r8_scalar(out, oo + 2 * ocs, w, wo, x, x2, nb)
        dot8_r8_scalar(out, oo + 3 * ocs, w, wo, x, x3, nb)


@overload(r8_tile, inline="always", prefer_literal=True)
def _r8_tile(kind, out, oo, ocs, w, wo, x, x0, x1, x2, x3, nb, nc):
    return _r8_tile_avx2 if _form("r8_tile", kind) == AVX2 else _r8_tile_scalar


def f16_row(kind, dst, do, src, so, n):
    """dst[do:do+n] = the n fp16 values at byte so of the u8 array src, as f32."""
    raise NotImplementedError("engine.tiles primitives run inside numba kernels only")


def _f16_row_avx2(kind, dst, do, src, so, n):
    f16_to_f32(dst, do, src, so, n)


def _f16_row_scalar(kind, dst, do, src, so, n):
    for i in range(n):
        dst[do + i] = _f16_at(src, so + 2 * i)


@overload(f16_row, inline="always", prefer_literal=True)
def _f16_row(kind, dst, do, src, so, n):
    return _f16_row_avx2 if _form("f16_row", kind) == AVX2 else _f16_row_scalar


def q8_0_row(kind, dst, do, src, so, nb):
    """dst[do + 32b + t] = d_b * q_b[t]: nb Q8_0 blocks at byte so of src, dequantized to f32."""
    raise NotImplementedError("engine.tiles primitives run inside numba kernels only")


def _q8_0_row_avx2(kind, dst, do, src, so, nb):
    q8_0_to_f32(dst, do, src, so, nb)


def _q8_0_row_scalar(kind, dst, do, src, so, nb):
    for b in range(nb):
        o = so + b * Q8_0_BYTES
        d = _f16_at(src, o)
        for t in range(QK8_0):
            dst[do + b * QK8_0 + t] = d * np.float32(_i8(src[o + Q8_0_SCALE_BYTES + t]))


@overload(q8_0_row, inline="always", prefer_literal=True)
def _q8_0_row(kind, dst, do, src, so, nb):
    return _q8_0_row_avx2 if _form("q8_0_row", kind) == AVX2 else _q8_0_row_scalar



@njit(inline="always", **NJIT)
def _i16_at(a, o):
    # the int16 stored little-endian at byte o of the u8 array a
    v = np.int64(a[o]) | (np.int64(a[o + 1]) << 8)
    return v - 65536 if v > 32767 else v


@njit(inline="always", **NJIT)
def _put_i16(a, o, v):
    a[o] = v & 0xFF
    a[o + 1] = (v >> 8) & 0xFF


@njit(**NJIT)
def w16_pack_scalar(dst, do, src, so, rs, nb):
    """Plain numba: the nb W16 blocks of the 8 Q8_0 rows at bytes so + k*rs, written at do."""
    for k in range(R8_ROWS):
        for b in range(nb):
            s = so + k * rs + b * Q8_0_BYTES
            o = do + b * W16_BLOCK_BYTES
            dst[o + 2 * k] = src[s]
            dst[o + 2 * k + 1] = src[s + 1]
            for j in range(QK8_0 // 2):
                for i in range(2):
                    _put_i16(dst, o + 2 * R8_ROWS + 32 * j + 4 * k + 2 * i,
                             _i8(src[s + Q8_0_SCALE_BYTES + 2 * j + i]))


@njit(**NJIT)
def i16_row_scalar(dst, do, dscale, dso, src, so, nb):
    """Plain numba: nb Q8_0 blocks at byte so -> int16 quants at byte do, f32 scales at dso."""
    for b in range(nb):
        s = so + b * Q8_0_BYTES
        dscale[dso + b] = _f16_at(src, s)
        for t in range(QK8_0):
            _put_i16(dst, do + b * X16_BLOCK_BYTES + 2 * t, _i8(src[s + Q8_0_SCALE_BYTES + t]))


@njit(**NJIT)
def dot8_w16_scalar(out, out_off, w, wo, x, xd, t, nb):
    """Plain numba: out[out_off+k] = row k of the W16 group at byte wo . X16 row t (x, xd)."""
    xo = t * nb * X16_BLOCK_BYTES
    for k in range(R8_ROWS):
        acc = np.float32(0.0)
        for b in range(nb):
            o = wo + b * W16_BLOCK_BYTES
            s = 0
            for j in range(QK8_0 // 2):
                for i in range(2):
                    s += (_i16_at(w, o + 2 * R8_ROWS + 32 * j + 4 * k + 2 * i)
                          * _i16_at(x, xo + b * X16_BLOCK_BYTES + 4 * j + 2 * i))
            acc += np.float32(s) * (_f16_at(w, o + 2 * k) * xd[t * nb + b])
        out[out_off + k] = acc


def w16_pack(kind, dst, do, src, so, rs, nb):
    """dst[do:do + nb*528] = the W16 blocks (engine._simd_w16) of the 8 Q8_0 rows at bytes
    so + k*rs of src (k < 8, nb blocks each): quants widened to int16, interleaved by pairs."""
    raise NotImplementedError("engine.tiles primitives run inside numba kernels only")


def _w16_pack_avx2(kind, dst, do, src, so, rs, nb):
    w16_pack8(dst, do, src, so, rs, nb)


def _w16_pack_scalar(kind, dst, do, src, so, rs, nb):
    w16_pack_scalar(dst, do, src, so, rs, nb)


@overload(w16_pack, inline="always", prefer_literal=True)
def _w16_pack(kind, dst, do, src, so, rs, nb):
    return _w16_pack_avx2 if _form("w16_pack", kind) == AVX2 else _w16_pack_scalar


@njit(**NJIT)
def w16_from_r8_scalar(dst, do, src, so, nb):
    """Plain numba: the nb Q8_0_R8 blocks at byte so widened into W16 blocks at do."""
    for b in range(nb):
        s = so + b * R8_BLOCK_BYTES
        o = do + b * W16_BLOCK_BYTES
        for i in range(2 * R8_ROWS):
            dst[o + i] = src[s + i]
        for j in range(8):                       # R8 chunk j: quants 4j..4j+3 of each row
            for k in range(R8_ROWS):
                for i in range(4):
                    jj = 2 * j + i // 2          # W16 chunk of pair (4j + i) // 2
                    _put_i16(dst, o + 2 * R8_ROWS + 32 * jj + 4 * k + 2 * (i % 2),
                             _i8(src[s + 2 * R8_ROWS + 32 * j + 4 * k + i]))


def w16_pack_r8(kind, dst, do, src, so, nb):
    """dst[do:do + nb*528] = the W16 blocks of the Q8_0_R8 group whose nb blocks start at so."""
    raise NotImplementedError("engine.tiles primitives run inside numba kernels only")


def _w16_pack_r8_avx2(kind, dst, do, src, so, nb):
    w16_from_r8(dst, do, src, so, nb)


def _w16_pack_r8_scalar(kind, dst, do, src, so, nb):
    w16_from_r8_scalar(dst, do, src, so, nb)


@overload(w16_pack_r8, inline="always", prefer_literal=True)
def _w16_pack_r8(kind, dst, do, src, so, nb):
    return _w16_pack_r8_avx2 if _form("w16_pack_r8", kind) == AVX2 else _w16_pack_r8_scalar


def i16_row(kind, dst, do, dscale, dso, src, so, nb):
    """nb Q8_0 blocks at byte so of src -> quants as int16 at byte do of dst (64 bytes a
    block), scales as f32 at dscale[dso:dso + nb] (the X16 form of engine._simd_w16)."""
    raise NotImplementedError("engine.tiles primitives run inside numba kernels only")


def _i16_row_avx2(kind, dst, do, dscale, dso, src, so, nb):
    q8_0_to_i16(dst, do, dscale, dso, src, so, nb)


def _i16_row_scalar(kind, dst, do, dscale, dso, src, so, nb):
    i16_row_scalar(dst, do, dscale, dso, src, so, nb)


@overload(i16_row, inline="always", prefer_literal=True)
def _i16_row(kind, dst, do, dscale, dso, src, so, nb):
    return _i16_row_avx2 if _form("i16_row", kind) == AVX2 else _i16_row_scalar


def w16_tile(kind, out, oo, ocs, w, wo, x, xd, t0, nb, nc):
    """out[oo + c*ocs + k] = row k of the W16 group at byte wo of w . X16 row t0 + c (x, xd),
    for k < 8 and c < nc (1, 2 or 4)."""
    raise NotImplementedError("engine.tiles primitives run inside numba kernels only")


def _w16_tile_avx2(kind, out, oo, ocs, w, wo, x, xd, t0, nb, nc):
    if nc == 4:
        w16_tile_4(out, oo, ocs, w, wo, x, xd, t0, nb)
    elif nc == 2:
        w16_tile_2(out, oo, ocs, w, wo, x, xd, t0, nb)
    else:
        w16_tile_1(out, oo, ocs, w, wo, x, xd, t0, nb)


def _w16_tile_scalar(kind, out, oo, ocs, w, wo, x, xd, t0, nb, nc):
    for c in range(nc):
        dot8_w16_scalar(out, oo + c * ocs, w, wo, x, xd, t0 + c, nb)


@overload(w16_tile, inline="always", prefer_literal=True)
def _w16_tile(kind, out, oo, ocs, w, wo, x, xd, t0, nb, nc):
    return _w16_tile_avx2 if _form("w16_tile", kind) == AVX2 else _w16_tile_scalar
