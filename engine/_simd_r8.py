"""AVX2 intrinsics for Q8_0_R8 (8 interleaved rows) x Q8_0 dot products.

Layout (see ``engine.q8_0_r8``): a 272-byte block holds ``d[8]`` (fp16, bytes
0..15) then ``qs[256]`` (bytes 16..271) in eight 32-byte chunks; chunk j holds
quants 4j..4j+3 of rows 0..7 (row k at bytes 4k..4k+3 of the chunk).

Per 32-byte chunk j and activation column c:
  xb  = broadcast of x_c's dword j (quants 4j..4j+3; ``vpbroadcastd`` from memory)
  p32 = vpmaddwd(vpmaddubsw(|w_j|, vpsignb(xb, w_j)), 1)
gives, in lane k, row k's partial dot over those 4 quants (exact in int32: the
sign moves from w onto x, so u8 x s8 pair sums are at most 2*127*127 < 32767).
The eight chunks add up in int32 to the 8 rows' exact block dots; they are
converted once per block and fused-multiply-added with ``d_w[0..7] * d_x``,
where ``d_w`` is one ``vcvtph2ps`` of the 16-byte scale vector (a full vector
load, so no false dependency) and d_x is converted on the integer ALUs with the
2**112 fold of ``engine._simd._load_f16_raw``. The 8 lanes are the 8 rows'
results: no horizontal sums, one vector store. ``|w_j|`` is computed once per
chunk and shared by the C columns of a tile.

Only call these when ``engine._numba.SIMD == "avx2"``; ``engine.q8_0_r8`` has the
plain numba fallback (and reference).
"""
from __future__ import annotations

import llvmlite.ir as ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

from engine.layout import Q8_0_BYTES, R8_BLOCK_BYTES
from engine._simd import (TWO_112, Avx2, is_f32_array, is_u8_array, data_ptr, F32, I32, I64,
                          as_i64, load_vec, load_f16_raw, splat8, V8F16, V8F32, V8I32, V32I8)

_MAX_C = 4


def _bcast_dword(builder, base, off):
    """<32 x i8> holding the 4 bytes at base+off repeated 8 times (vpbroadcastd mem)."""
    p = builder.bitcast(builder.gep(base, [off]), I32.as_pointer())
    v = builder.load(p, align=1)
    vec = builder.insert_element(ir.Constant(V8I32, None), v, ir.Constant(I32, 0))
    vec = builder.shuffle_vector(vec, vec, ir.Constant(V8I32, [0] * 8))
    return builder.bitcast(vec, V32I8)


def _make_r8_tile(C: int):
    """Intrinsic computing 8 rows (one R8 row group) x C activation columns.

    tile(out, out_off, out_cstride, w, w_off, x, x0, x1, x2, x3, nb):
        out[out_off + c*out_cstride + k] = sum_b d_w[k,b] d_x[c,b] (qw[k,b] . qx[c,b])
    for k in 0..7, c in 0..C-1. The group's nb R8 blocks start at byte w_off of w
    (272 bytes each, consecutive); column c is nb consecutive 34-byte Q8_0 blocks
    at byte offset x_c of x (x_c for c >= C is ignored). out is 1-D f32 (8 floats
    stored per column, unaligned), w and x 1-D uint8.
    """

    @intrinsic
    def tile(typingctx, out, out_off, out_cstride, w, w_off, x, x0, x1, x2, x3, nb):
        if not (is_f32_array(out) and is_u8_array(w) and is_u8_array(x)):
            return None
        sig = types.void(out, out_off, out_cstride, w, w_off, x, x0, x1, x2, x3, nb)

        def codegen(context, builder, signature, args):
            st = signature.args
            po = builder.bitcast(data_ptr(context, builder, st[0], args[0]), F32.as_pointer())
            oo = as_i64(context, builder, st[1], args[1])
            ocs = as_i64(context, builder, st[2], args[2])
            pw = data_ptr(context, builder, st[3], args[3])
            wo = as_i64(context, builder, st[4], args[4])
            px = data_ptr(context, builder, st[5], args[5])
            xoffs = [as_i64(context, builder, st[6 + c], args[6 + c]) for c in range(C)]
            nblk = as_i64(context, builder, st[10], args[10])
            avx = Avx2(builder)
            accs = [cgutils.alloca_once_value(builder, ir.Constant(V8F32, [0.0] * 8)) for _ in range(C)]
            with cgutils.for_range(builder, nblk) as loop:
                wb = builder.add(wo, builder.mul(loop.index, ir.Constant(I64, R8_BLOCK_BYTES)))
                xb = [builder.add(xoffs[c], builder.mul(loop.index, ir.Constant(I64, Q8_0_BYTES)))
                      for c in range(C)]
                isum = [None] * C
                for half in range(2):  # 4 chunks at a time: 4 w + 4 |w| live, not 16
                    ws = []
                    for j in range(4 * half, 4 * half + 4):
                        wq = load_vec(builder, pw, builder.add(wb, ir.Constant(I64, 16 + 32 * j)), V32I8)
                        ws.append((j, wq, builder.call(avx.psign, [wq, wq])))
                    for c in range(C):
                        for j, wq, aw in ws:
                            xj = _bcast_dword(builder, px, builder.add(xb[c], ir.Constant(I64, 2 + 4 * j)))
                            sx = builder.call(avx.psign, [xj, wq])
                            p16 = builder.call(avx.maddubs, [aw, sx])
                            p32 = builder.call(avx.maddwd, [p16, avx.ones16])
                            isum[c] = p32 if isum[c] is None else builder.add(isum[c], p32)
                dw = builder.fpext(load_vec(builder, pw, wb, V8F16), V8F32)
                for c in range(C):
                    dx = builder.fmul(load_f16_raw(builder, px, xb[c]), TWO_112)  # exact d_x
                    s = builder.fmul(dw, splat8(builder, dx))
                    acc = builder.load(accs[c])
                    builder.store(builder.call(avx.fma, [builder.sitofp(isum[c], V8F32), s, acc]), accs[c])
            for c in range(C):
                idx = builder.add(oo, builder.mul(ocs, ir.Constant(I64, c)))
                dst = builder.bitcast(builder.gep(po, [idx]), V8F32.as_pointer())
                builder.store(builder.load(accs[c]), dst, align=4)
            return context.get_dummy_value()

        return sig, codegen

    return tile


# 8 rows x 4 columns: 4 f32 + 4 i32 accumulators, w, |w|, ones and temporaries fit
# AVX2's 16 ymm registers; 2 and 1 serve the tails and TG.
r8_tile_4 = _make_r8_tile(4)
r8_tile_2 = _make_r8_tile(2)
r8_tile_1 = _make_r8_tile(1)
