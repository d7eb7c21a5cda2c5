"""AVX2/FMA f32 tiles for flash attention: P.V accumulation and q8_0 -> f32 rows (numba intrinsics).

``acc[c, d0:d0+8D] += sum_p P[c, p] * V[p, d0:d0+8D]`` for C query columns at once,
with the C x D accumulator vectors held in registers over the whole chunk: per
position, D loads of V (shared by the C columns), C broadcasts of P and C*D FMAs.
The plain numba loop (``acc[c, d] += e * v[p, d]`` per position) loads and stores
the accumulator row every position and ran ~3 MAC/cycle here; this is FMA-bound.
Summation order per (c, d) is the same as the plain loop (p ascending), so results
differ only by FMA's single rounding.
"""
from __future__ import annotations

import llvmlite.ir as ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from engine.layout import Q8_0_BYTES
from engine._simd import TWO_112, data_ptr, F32, declare, I64, as_i64, load_vec, load_f16_raw, splat8, V8F32


def _arr_f32c(ty):
    return isinstance(ty, types.Array) and ty.dtype == types.float32 and ty.layout == "C"


def _make_pv_tile(C: int, D: int):
    """pv(acc, acc_off, acc_cstride, p, p_off, p_cstride, v, v_off, v_rstride, cnt).

    acc, p, v: C-contiguous f32 arrays (any ndim; offsets in elements of the flat data).
    For c < C, j < 8*D: acc[acc_off + c*acc_cstride + j] +=
        sum_{i < cnt} p[p_off + c*p_cstride + i] * v[v_off + i*v_rstride + j]
    """

    @intrinsic
    def pv(typingctx, acc, acc_off, acc_cstride, p, p_off, p_cstride, v, v_off, v_rstride, cnt):
        if not (_arr_f32c(acc) and _arr_f32c(p) and _arr_f32c(v)):
            return None
        sig = types.void(acc, acc_off, acc_cstride, p, p_off, p_cstride, v, v_off, v_rstride, cnt)

        def codegen(context, builder, signature, args):
            st = signature.args
            fptr = F32.as_pointer()
            pa = builder.bitcast(data_ptr(context, builder, st[0], args[0]), fptr)
            pp = builder.bitcast(data_ptr(context, builder, st[3], args[3]), fptr)
            pv_ = builder.bitcast(data_ptr(context, builder, st[6], args[6]), fptr)
            ao, acs, po, pcs, vo, vrs, n = (as_i64(context, builder, st[i], args[i]) for i in (1, 2, 4, 5, 7, 8, 9))
            fma = declare(builder, "llvm.fma.v8f32", V8F32, [V8F32, V8F32, V8F32])

            def vptr(base, idx):
                return builder.bitcast(builder.gep(base, [idx]), V8F32.as_pointer())

            aidx = [[builder.add(builder.add(ao, builder.mul(acs, ir.Constant(I64, c))), ir.Constant(I64, 8 * d))
                     for d in range(D)] for c in range(C)]
            accs = [[cgutils.alloca_once_value(builder, builder.load(vptr(pa, aidx[c][d]), align=4))
                     for d in range(D)] for c in range(C)]
            prow = [builder.add(po, builder.mul(pcs, ir.Constant(I64, c))) for c in range(C)]
            with cgutils.for_range(builder, n) as loop:
                i = loop.index
                vb = builder.add(vo, builder.mul(i, vrs))
                vv = [builder.load(vptr(pv_, builder.add(vb, ir.Constant(I64, 8 * d))), align=4) for d in range(D)]
                for c in range(C):
                    e = splat8(builder, builder.load(builder.gep(pp, [builder.add(prow[c], i)])))
                    for d in range(D):
                        builder.store(builder.call(fma, [e, vv[d], builder.load(accs[c][d])]), accs[c][d])
            for c in range(C):
                for d in range(D):
                    builder.store(builder.load(accs[c][d]), vptr(pa, aidx[c][d]), align=4)
            return context.get_dummy_value()

        return sig, codegen

    return pv


# 4 columns x 16 floats: 8 accumulators + 2 V vectors + broadcasts fit 16 ymm registers.
pv_tile_4x2 = _make_pv_tile(4, 2)
pv_tile_1x2 = _make_pv_tile(1, 2)


@intrinsic
def q8_0_to_f32(typingctx, dst, dst_off, src, src_off, nb):
    """dst[dst_off + 32b + t] = d_b * q_b[t] for nb consecutive Q8_0 blocks at byte src_off.

    dst: C-contiguous f32 array (any ndim, flat offsets); src: 1-D uint8. Per block one
    fp16 scale (converted on the integer ALUs, see ``_simd._load_f16_raw``) and four
    vpmovsxbd + vcvtdq2ps + vmulps of 8 quants.
    """
    if not (_arr_f32c(dst) and isinstance(src, types.Array) and src.dtype == types.uint8):
        return None
    sig = types.void(dst, dst_off, src, src_off, nb)

    def codegen(context, builder, signature, args):
        st = signature.args
        pd = builder.bitcast(data_ptr(context, builder, st[0], args[0]), F32.as_pointer())
        ps = data_ptr(context, builder, st[2], args[2])
        do, so, n = (as_i64(context, builder, st[i], args[i]) for i in (1, 3, 4))
        v8i8 = ir.VectorType(ir.IntType(8), 8)
        v8i32 = ir.VectorType(ir.IntType(32), 8)
        with cgutils.for_range(builder, n) as loop:
            b = loop.index
            sb = builder.add(so, builder.mul(b, ir.Constant(I64, Q8_0_BYTES)))
            d = splat8(builder, builder.fmul(load_f16_raw(builder, ps, sb), TWO_112))
            for k in range(4):
                q = load_vec(builder, ps, builder.add(sb, ir.Constant(I64, 2 + 8 * k)), v8i8)
                f = builder.fmul(builder.sitofp(builder.sext(q, v8i32), V8F32), d)
                di = builder.add(do, builder.add(builder.mul(b, ir.Constant(I64, 32)), ir.Constant(I64, 8 * k)))
                builder.store(f, builder.bitcast(builder.gep(pd, [di]), V8F32.as_pointer()), align=4)
        return context.get_dummy_value()

    return sig, codegen
