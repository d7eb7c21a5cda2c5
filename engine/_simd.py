"""x86 SIMD building blocks as numba intrinsics (LLVM IR calling x86 intrinsics).

numba widens int8 arithmetic to int64 and never emits the int8 dot-product
instructions, so a plain Q8_0 dot runs ~10x below memory bandwidth. These
intrinsics build the IR by hand:

* AVX2 (Zen 1-3, Haswell+): ``vpsignb`` moves x's sign onto w so that
  ``vpmaddubsw(|x|, w*sign(x))`` (u8 x s8 -> i16 pairs) is exact for Q8_0 quants in
  [-127, 127] (max pair sum 2*127*127 = 32258 < 32767, no saturation), then
  ``vpmaddwd`` with ones widens to 8 x i32 per 32-quant block. The per-block
  int32 sums are converted to f32 and fused-multiply-added with the product of
  the two fp16 block scales (``vcvtph2ps`` via ``fpext half``).

Every intrinsic reads raw bytes through unaligned (align 1) vector loads, because
GGUF Q8_0 blocks are 34 bytes (``engine.layout``). Loops are emitted with allocas that LLVM's SROA
turns into registers. Only call these when ``engine._numba.SIMD == "avx2"``; the
plain numba kernels in the calling modules are the fallback and the reference.
"""
from __future__ import annotations

import llvmlite.ir as ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from engine.layout import Q8_0_BYTES

I1 = ir.IntType(1)
I8 = ir.IntType(8)
I16 = ir.IntType(16)
I32 = ir.IntType(32)
I64 = ir.IntType(64)
F16 = ir.HalfType()
F32 = ir.FloatType()
V32I8 = ir.VectorType(I8, 32)
V16I16 = ir.VectorType(I16, 16)
V8I32 = ir.VectorType(I32, 8)
V8F32 = ir.VectorType(F32, 8)
V8F16 = ir.VectorType(F16, 8)

# IR-building helpers, shared with _simd_r8 and _simd_f32.


def declare(builder, name, ret, args):
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(ret, args), name)


def data_ptr(context, builder, aryty, ary):
    """i8* to the first byte of an array's data."""
    ptr = cgutils.create_struct_proxy(aryty)(context, builder, value=ary).data
    return builder.bitcast(ptr, I8.as_pointer())


def as_i64(context, builder, ty, val):
    return context.cast(builder, val, ty, types.int64)


def load_vec(builder, base, off, vty):
    p = builder.gep(base, [off])
    return builder.load(builder.bitcast(p, vty.as_pointer()), align=1)


def load_f16(builder, base, off):
    """f32 value of the fp16 at byte offset off (used outside hot loops)."""
    p = builder.bitcast(builder.gep(base, [off]), F16.as_pointer())
    return builder.fpext(builder.load(p, align=1), F32)


TWO_112 = ir.Constant(F32, 2.0 ** 112)


def load_f16_raw(builder, base, off):
    """The fp16 at byte offset off as an f32 equal to its value * 2**-112.

    Shifting the fp16 exponent+mantissa into f32 position is exact for normal
    and subnormal halves (scales are never inf/nan); callers fold the 2**112
    back into the other scale. This runs on the integer ALUs: LLVM's own lowering
    of a half load (vpinsrw into an "undef" register) picked a live accumulator as
    merge source and chained every block onto the previous block's FMA.
    """
    p = builder.bitcast(builder.gep(base, [off]), I16.as_pointer())
    h = builder.zext(builder.load(p, align=1), I32)
    mag = builder.shl(builder.and_(h, ir.Constant(I32, 0x7FFF)), ir.Constant(I32, 13))
    sign = builder.shl(builder.and_(h, ir.Constant(I32, 0x8000)), ir.Constant(I32, 16))
    return builder.bitcast(builder.or_(mag, sign), F32)


def splat8(builder, s):
    v = builder.insert_element(ir.Constant(V8F32, None), s, ir.Constant(I32, 0))
    return builder.shuffle_vector(v, v, ir.Constant(V8I32, [0] * 8))


def _hsum8(builder, v):
    # (v0+v4, v1+v5, v2+v6, v3+v7) then pairwise: a fixed order, same on every run.
    lo = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, 4), [0, 1, 2, 3]))
    hi = builder.shuffle_vector(v, v, ir.Constant(ir.VectorType(I32, 4), [4, 5, 6, 7]))
    s4 = builder.fadd(lo, hi)
    a = builder.fadd(builder.extract_element(s4, ir.Constant(I32, 0)),
                     builder.extract_element(s4, ir.Constant(I32, 2)))
    b = builder.fadd(builder.extract_element(s4, ir.Constant(I32, 1)),
                     builder.extract_element(s4, ir.Constant(I32, 3)))
    return builder.fadd(a, b)


class Avx2:
    """Handles on the AVX2 intrinsics inside one function being built."""

    def __init__(self, builder):
        self.b = builder
        self.psign = declare(builder, "llvm.x86.avx2.psign.b", V32I8, [V32I8, V32I8])
        self.maddubs = declare(builder, "llvm.x86.avx2.pmadd.ub.sw", V16I16, [V32I8, V32I8])
        self.maddwd = declare(builder, "llvm.x86.avx2.pmadd.wd", V8I32, [V16I16, V16I16])
        self.fma = declare(builder, "llvm.fma.v8f32", V8F32, [V8F32, V8F32, V8F32])
        self.ones16 = ir.Constant(V16I16, [1] * 16)

    def dot_block_f32(self, absx, x, w):
        """8 x f32 partial sums of w.x for one 32-quant block (|x| precomputed)."""
        b = self.b
        sw = b.call(self.psign, [w, x])
        p16 = b.call(self.maddubs, [absx, sw])
        p32 = b.call(self.maddwd, [p16, self.ones16])
        return b.sitofp(p32, V8F32)


def is_u8_array(ty):
    return isinstance(ty, types.Array) and ty.dtype == types.uint8 and ty.ndim == 1


def is_f32_array(ty):
    return isinstance(ty, types.Array) and ty.dtype == types.float32 and ty.ndim == 1


def _make_q8_tile(R: int, C: int):
    """Intrinsic computing an R (weight rows) x C (activation rows) tile of Q8_0 dots.

    tile(out, out_off, out_cstride, w, w_off, w_rstride, x, x_off, x_cstride, nb):
        out[out_off + c*out_cstride + r] = sum_b d_w[r,b] d_x[c,b] (qw[r,b] . qx[c,b])
    where row r of w starts at byte w_off + r*w_rstride and row c of x at
    x_off + c*x_cstride; both are nb consecutive 34-byte Q8_0 blocks.
    out is 1-D float32, w and x 1-D uint8 (flat views of 2-D byte arrays).
    """

    @intrinsic
    def tile(typingctx, out, out_off, out_cstride, w, w_off, w_rstride, x, x_off, x_cstride, nb):
        if not (is_f32_array(out) and is_u8_array(w) and is_u8_array(x)):
            return None
        sig = types.void(out, out_off, out_cstride, w, w_off, w_rstride, x, x_off, x_cstride, nb)

        def codegen(context, builder, signature, args):
            (a_out, a_oo, a_ocs, a_w, a_wo, a_wrs, a_x, a_xo, a_xcs, a_nb) = args
            st = signature.args
            po = builder.bitcast(data_ptr(context, builder, st[0], a_out), F32.as_pointer())
            pw = data_ptr(context, builder, st[3], a_w)
            px = data_ptr(context, builder, st[6], a_x)
            oo = as_i64(context, builder, st[1], a_oo)
            ocs = as_i64(context, builder, st[2], a_ocs)
            wo = as_i64(context, builder, st[4], a_wo)
            wrs = as_i64(context, builder, st[5], a_wrs)
            xo = as_i64(context, builder, st[7], a_xo)
            xcs = as_i64(context, builder, st[8], a_xcs)
            nblk = as_i64(context, builder, st[9], a_nb)
            avx = Avx2(builder)
            accs = [[cgutils.alloca_once_value(builder, ir.Constant(V8F32, [0.0] * 8))
                     for _ in range(C)] for _ in range(R)]
            wrow = [builder.add(wo, builder.mul(wrs, ir.Constant(I64, r))) for r in range(R)]
            xrow = [builder.add(xo, builder.mul(xcs, ir.Constant(I64, c))) for c in range(C)]
            with cgutils.for_range(builder, nblk) as loop:
                boff = builder.mul(loop.index, ir.Constant(I64, Q8_0_BYTES))
                xs, axs, dxs = [], [], []
                for c in range(C):
                    xb = builder.add(xrow[c], boff)
                    xq = load_vec(builder, px, builder.add(xb, ir.Constant(I64, 2)), V32I8)
                    xs.append(xq)
                    axs.append(builder.call(avx.psign, [xq, xq]))
                    # d_x * 2**112, so that raw(d_w) * it == d_w * d_x
                    dxs.append(builder.fmul(builder.fmul(load_f16_raw(builder, px, xb), TWO_112), TWO_112))
                for r in range(R):
                    wb = builder.add(wrow[r], boff)
                    wq = load_vec(builder, pw, builder.add(wb, ir.Constant(I64, 2)), V32I8)
                    dw = load_f16_raw(builder, pw, wb)
                    for c in range(C):
                        pf = avx.dot_block_f32(axs[c], xs[c], wq)
                        s = splat8(builder, builder.fmul(dw, dxs[c]))
                        acc = builder.load(accs[r][c])
                        builder.store(builder.call(avx.fma, [pf, s, acc]), accs[r][c])
            for r in range(R):
                for c in range(C):
                    total = _hsum8(builder, builder.load(accs[r][c]))
                    idx = builder.add(builder.add(oo, builder.mul(ocs, ir.Constant(I64, c))),
                                      ir.Constant(I64, r))
                    builder.store(total, builder.gep(po, [idx]))
            return context.get_dummy_value()

        return sig, codegen

    return tile


# The tile shapes the matmul kernels use: 4 rows x 2 tokens keeps 8 accumulators,
# 2 x-blocks, |x| and a w block within AVX2's 16 ymm registers.
q8_tile_4x2 = _make_q8_tile(4, 2)
# GEMV (TG): 8 rows per tile amortize the activation block's load, |x| and scale over
# twice the rows; measured 1.1-1.5x over 4x1 on the small model's matrices here.
q8_tile_8x1 = _make_q8_tile(8, 1)
q8_tile_4x1 = _make_q8_tile(4, 1)
q8_tile_1x1 = _make_q8_tile(1, 1)


@intrinsic
def f16_to_f32(typingctx, dst, dst_off, src, src_off, n):
    """dst[dst_off:dst_off+n] = f32(src half bits at byte offset src_off), 8 at a time."""
    if not (is_f32_array(dst) and is_u8_array(src)):
        return None
    sig = types.void(dst, dst_off, src, src_off, n)

    def codegen(context, builder, signature, args):
        st = signature.args
        pd = builder.bitcast(data_ptr(context, builder, st[0], args[0]), F32.as_pointer())
        ps = data_ptr(context, builder, st[2], args[2])
        do = as_i64(context, builder, st[1], args[1])
        so = as_i64(context, builder, st[3], args[3])
        cnt = as_i64(context, builder, st[4], args[4])
        n8 = builder.sdiv(cnt, ir.Constant(I64, 8))
        with cgutils.for_range(builder, n8) as loop:
            i = builder.mul(loop.index, ir.Constant(I64, 8))
            h = load_vec(builder, ps, builder.add(so, builder.mul(i, ir.Constant(I64, 2))), V8F16)
            f = builder.fpext(h, V8F32)
            dp = builder.bitcast(builder.gep(pd, [builder.add(do, i)]), V8F32.as_pointer())
            builder.store(f, dp, align=1)
        with cgutils.for_range(builder, builder.sub(cnt, builder.mul(n8, ir.Constant(I64, 8)))) as loop:
            i = builder.add(builder.mul(n8, ir.Constant(I64, 8)), loop.index)
            v = load_f16(builder, ps, builder.add(so, builder.mul(i, ir.Constant(I64, 2))))
            builder.store(v, builder.gep(pd, [builder.add(do, i)]))
        return context.get_dummy_value()

    return sig, codegen


@intrinsic
def f32_bits(typingctx, x):
    """The IEEE-754 bits of a float32 as uint32 (a register bitcast)."""
    if x != types.float32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], I32)

    return types.uint32(x), codegen


@intrinsic
def f32_from_bits(typingctx, u):
    """The float32 whose IEEE-754 bits are the uint32 u."""
    if u != types.uint32:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], F32)

    return types.float32(u), codegen
