"""AVX2 intrinsics for PP GEMM on 8 interleaved rows widened to int16 ("W16").

Why int16: AVX2 has no int8 dot instruction without saturation, so an int8 product
needs ``vpsignb`` + ``vpmaddubsw`` + ``vpmaddwd`` + ``vpaddd`` per 32 products, and on
Zen 3 the sign and the two multiplies compete for the same two pipes (measured here:
~40 GMAC/s per core for Q8_0_R8, ~77 cycles per 8x4x32 block). With both operands
widened to int16, one ``vpmaddwd`` gives 8 rows x 2 products exactly and one
``vpaddd`` accumulates: 55 GMAC/s per core on the same matrices (1.37x). The widening
is paid once per slab of weights (``w16_pack8``, or ``w16_from_r8`` for -rtr weights) and once per activation row
(``q8_0_to_i16``), then reused by every token / row of the GEMM.

Layouts (``engine.layout``):
* W16 block (528 bytes) of an 8-row group and one 32-column block: bytes 0..15 the 8
  rows' fp16 scales d[k]; bytes 16..527 sixteen 32-byte chunks, chunk j lane k (bytes
  4k..4k+3) = row k's quants 2j, 2j+1 as two int16.
* X16 row of an activation: nb * 64 bytes (the 32 quants of each block as int16), its
  nb scales as f32 in a separate f32 array (exact: fp16 -> f32).

Per chunk j and column c: ``p = vpmaddwd(chunk_j, broadcast(x_c's int16 pair j))``; the
16 chunks add up in int32 to the 8 rows' exact block dots (|sum| <= 32*127*127), then
one conversion and one FMA with d_w[0..7] * d_x per block, as in ``engine._simd_r8``.
Only call these when ``engine._numba.SIMD == "avx2"``; ``engine.tiles`` holds the plain
numba forms (the reference they are tested against).
"""
from __future__ import annotations

import llvmlite.ir as ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from engine._simd import (F16, F32, I32, I64, V8F16, V8F32, V8I32, V32I8, as_i64, data_ptr, declare,
                          is_f32_array, is_u8_array, load_vec, splat8)
from engine.layout import Q8_0_BYTES, QK8_0, R8_BLOCK_BYTES, W16_BLOCK_BYTES, X16_BLOCK_BYTES

I16 = ir.IntType(16)
V16I16 = ir.VectorType(I16, 16)
V16I32 = ir.VectorType(I32, 16)
V32I16 = ir.VectorType(I16, 32)


def _bcast_pair(builder, base, off):
    """<16 x i16>: the int16 pair (one dword) at base+off repeated 8 times (vpbroadcastd)."""
    p = builder.bitcast(builder.gep(base, [off]), I32.as_pointer())
    vec = builder.insert_element(ir.Constant(V8I32, None), builder.load(p, align=1), ir.Constant(I32, 0))
    return builder.bitcast(builder.shuffle_vector(vec, vec, ir.Constant(V8I32, [0] * 8)), V16I16)


@intrinsic
def w16_pack8(typingctx, dst, dst_off, src, src_off, src_rstride, nb):
    """Widen and interleave 8 Q8_0 rows (row k: nb blocks at byte src_off + k*src_rstride)
    into the nb W16 blocks at byte dst_off of dst."""
    if not (is_u8_array(dst) and is_u8_array(src)):
        return None
    sig = types.void(dst, dst_off, src, src_off, src_rstride, nb)

    def codegen(context, builder, signature, args):
        st = signature.args
        pd = data_ptr(context, builder, st[0], args[0])
        do = as_i64(context, builder, st[1], args[1])
        ps = data_ptr(context, builder, st[2], args[2])
        so = as_i64(context, builder, st[3], args[3])
        rs = as_i64(context, builder, st[4], args[4])
        nblk = as_i64(context, builder, st[5], args[5])
        i16p = I16.as_pointer()
        i32p = I32.as_pointer()
        with cgutils.for_range(builder, nblk) as loop:
            ob = builder.add(do, builder.mul(loop.index, ir.Constant(I64, W16_BLOCK_BYTES)))
            sb = builder.add(so, builder.mul(loop.index, ir.Constant(I64, Q8_0_BYTES)))
            for k in range(8):
                s = builder.add(sb, builder.mul(rs, ir.Constant(I64, k)))
                d = builder.load(builder.bitcast(builder.gep(ps, [s]), i16p), align=1)
                builder.store(d, builder.bitcast(builder.gep(pd, [builder.add(ob, ir.Constant(I64, 2 * k))]),
                                                 i16p), align=1)
                q = load_vec(builder, ps, builder.add(s, ir.Constant(I64, 2)), V32I8)
                pairs = builder.bitcast(builder.sext(q, V32I16), V16I32)
                for j in range(16):
                    o = builder.add(ob, ir.Constant(I64, 16 + 32 * j + 4 * k))
                    builder.store(builder.extract_element(pairs, ir.Constant(I32, j)),
                                  builder.bitcast(builder.gep(pd, [o]), i32p), align=1)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def w16_from_r8(typingctx, dst, dst_off, src, src_off, nb):
    """Widen nb Q8_0_R8 blocks (272 bytes each, at byte src_off) into nb W16 blocks at dst_off.

    R8 chunk j holds quants 4j..4j+3 of the 8 rows (row k at bytes 4k..); widened to int16
    its dword 2k is row k's pair (4j, 4j+1) and dword 2k+1 the pair (4j+2, 4j+3): the even
    dwords are W16 chunk 2j, the odd ones chunk 2j+1 (two shuffles per R8 chunk)."""
    if not (is_u8_array(dst) and is_u8_array(src)):
        return None
    sig = types.void(dst, dst_off, src, src_off, nb)

    def codegen(context, builder, signature, args):
        st = signature.args
        pd = data_ptr(context, builder, st[0], args[0])
        do = as_i64(context, builder, st[1], args[1])
        ps = data_ptr(context, builder, st[2], args[2])
        so = as_i64(context, builder, st[3], args[3])
        nblk = as_i64(context, builder, st[4], args[4])
        v16i8 = ir.VectorType(ir.IntType(8), 16)
        with cgutils.for_range(builder, nblk) as loop:
            ob = builder.add(do, builder.mul(loop.index, ir.Constant(I64, W16_BLOCK_BYTES)))
            sb = builder.add(so, builder.mul(loop.index, ir.Constant(I64, R8_BLOCK_BYTES)))
            d = load_vec(builder, ps, sb, v16i8)
            builder.store(d, builder.bitcast(builder.gep(pd, [ob]), v16i8.as_pointer()), align=1)
            for j in range(8):
                q = load_vec(builder, ps, builder.add(sb, ir.Constant(I64, 16 + 32 * j)), V32I8)
                dw = builder.bitcast(builder.sext(q, V32I16), V16I32)
                for half in range(2):
                    part = builder.shuffle_vector(dw, dw, ir.Constant(V8I32, list(range(half, 16, 2))))
                    o = builder.add(ob, ir.Constant(I64, 16 + 32 * (2 * j + half)))
                    builder.store(part, builder.bitcast(builder.gep(pd, [o]), V8I32.as_pointer()), align=1)
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def q8_0_to_i16(typingctx, dst, dst_off, dscale, ds_off, src, src_off, nb):
    """nb Q8_0 blocks at byte src_off of src -> their quants as int16 at byte dst_off of
    dst (64 bytes a block) and their scales as f32 at dscale[ds_off:ds_off + nb]."""
    if not (is_u8_array(dst) and is_f32_array(dscale) and is_u8_array(src)):
        return None
    sig = types.void(dst, dst_off, dscale, ds_off, src, src_off, nb)

    def codegen(context, builder, signature, args):
        st = signature.args
        pd = data_ptr(context, builder, st[0], args[0])
        do = as_i64(context, builder, st[1], args[1])
        pf = builder.bitcast(data_ptr(context, builder, st[2], args[2]), F32.as_pointer())
        fo = as_i64(context, builder, st[3], args[3])
        ps = data_ptr(context, builder, st[4], args[4])
        so = as_i64(context, builder, st[5], args[5])
        nblk = as_i64(context, builder, st[6], args[6])
        with cgutils.for_range(builder, nblk) as loop:
            s = builder.add(so, builder.mul(loop.index, ir.Constant(I64, Q8_0_BYTES)))
            d = builder.load(builder.bitcast(builder.gep(ps, [s]), F16.as_pointer()), align=1)
            builder.store(builder.fpext(d, F32), builder.gep(pf, [builder.add(fo, loop.index)]))
            q = builder.sext(load_vec(builder, ps, builder.add(s, ir.Constant(I64, 2)), V32I8), V32I16)
            o = builder.add(do, builder.mul(loop.index, ir.Constant(I64, X16_BLOCK_BYTES)))
            builder.store(q, builder.bitcast(builder.gep(pd, [o]), V32I16.as_pointer()), align=1)
        return context.get_dummy_value()

    return sig, codegen


def _make_w16_tile(C: int):
    """Intrinsic computing 8 rows (one W16 group) x C activation rows.

    tile(out, out_off, out_cstride, w, w_off, x, xd, t0, nb):
        out[out_off + c*out_cstride + k] = sum_b d_w[k,b] xd[(t0+c)*nb + b] (qw[k,b] . qx[t0+c,b])
    for k < 8, c < C: the group's nb W16 blocks at byte w_off of w; activation row t at byte
    t*nb*64 of x (X16), its scales at xd[t*nb:(t+1)*nb]. 8 floats stored per column.
    """

    @intrinsic
    def tile(typingctx, out, out_off, out_cstride, w, w_off, x, xd, t0, nb):
        if not (is_f32_array(out) and is_u8_array(w) and is_u8_array(x) and is_f32_array(xd)):
            return None
        sig = types.void(out, out_off, out_cstride, w, w_off, x, xd, t0, nb)

        def codegen(context, builder, signature, args):
            st = signature.args
            po = builder.bitcast(data_ptr(context, builder, st[0], args[0]), F32.as_pointer())
            oo = as_i64(context, builder, st[1], args[1])
            ocs = as_i64(context, builder, st[2], args[2])
            pw = data_ptr(context, builder, st[3], args[3])
            wo = as_i64(context, builder, st[4], args[4])
            px = data_ptr(context, builder, st[5], args[5])
            pd = builder.bitcast(data_ptr(context, builder, st[6], args[6]), F32.as_pointer())
            t0 = as_i64(context, builder, st[7], args[7])
            nblk = as_i64(context, builder, st[8], args[8])
            maddwd = declare(builder, "llvm.x86.avx2.pmadd.wd", V8I32, [V16I16, V16I16])
            fma = declare(builder, "llvm.fma.v8f32", V8F32, [V8F32, V8F32, V8F32])
            rows = [builder.add(t0, ir.Constant(I64, c)) for c in range(C)]
            xrow = [builder.mul(r, builder.mul(nblk, ir.Constant(I64, X16_BLOCK_BYTES))) for r in rows]
            drow = [builder.mul(r, nblk) for r in rows]
            accs = [cgutils.alloca_once_value(builder, ir.Constant(V8F32, [0.0] * 8)) for _ in range(C)]
            with cgutils.for_range(builder, nblk) as loop:
                wb = builder.add(wo, builder.mul(loop.index, ir.Constant(I64, W16_BLOCK_BYTES)))
                xb = [builder.add(xrow[c], builder.mul(loop.index, ir.Constant(I64, X16_BLOCK_BYTES)))
                      for c in range(C)]
                isum = [None] * C
                for j in range(QK8_0 // 2):
                    wq = load_vec(builder, pw, builder.add(wb, ir.Constant(I64, 16 + 32 * j)), V16I16)
                    for c in range(C):
                        xj = _bcast_pair(builder, px, builder.add(xb[c], ir.Constant(I64, 4 * j)))
                        p = builder.call(maddwd, [wq, xj])
                        isum[c] = p if isum[c] is None else builder.add(isum[c], p)
                dw = builder.fpext(load_vec(builder, pw, wb, V8F16), V8F32)
                for c in range(C):
                    dx = builder.load(builder.gep(pd, [builder.add(drow[c], loop.index)]))
                    s = builder.fmul(dw, splat8(builder, dx))
                    acc = builder.load(accs[c])
                    builder.store(builder.call(fma, [builder.sitofp(isum[c], V8F32), s, acc]), accs[c])
            for c in range(C):
                idx = builder.add(oo, builder.mul(ocs, ir.Constant(I64, c)))
                builder.store(builder.load(accs[c]), builder.bitcast(builder.gep(po, [idx]), V8F32.as_pointer()),
                              align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


# 8 rows x 4 columns measured best here (C = 2, 6, 8: 48, 45, 40 GMAC/s per core against 55):
# 4 int32 sums, 4 f32 accumulators, one weight chunk and the broadcasts fit 16 ymm registers.
w16_tile_4 = _make_w16_tile(4)
w16_tile_2 = _make_w16_tile(2)
w16_tile_1 = _make_w16_tile(1)
