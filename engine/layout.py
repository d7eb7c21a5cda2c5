"""Block layouts of the quantized formats the kernels read, in one place.

Q8_0 (ggml / gguf): an fp16 scale ``d`` then 32 int8 quants, value = d*q. Its
block size and byte size come from ``gguf.GGML_QUANT_SIZES`` (the only source;
copies drift). Q8_0_R8 (ik_llama.cpp's ``block_q8_0_r8``, engine.q8_0_r8): 8 rows
of one 32-column block interleaved, ``d[8]`` then ``qs[256]``. numba reads these
module globals as compile-time constants.
"""
from __future__ import annotations

from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

QK8_0, Q8_0_BYTES = GGML_QUANT_SIZES[GGMLQuantizationType.Q8_0]   # 32 values, 34 bytes
Q8_0_SCALE_BYTES = Q8_0_BYTES - QK8_0                              # the fp16 d before the quants
R8_ROWS = 8                                                        # rows per Q8_0_R8 group
R8_BLOCK_BYTES = R8_ROWS * Q8_0_BYTES                              # 272: d[8] fp16 + qs[256]
# PP GEMM scratch (engine._simd_w16): 8 rows of one block widened to int16, and an
# activation block's quants as int16 (its scale kept apart as f32).
W16_BLOCK_BYTES = 2 * R8_ROWS + 2 * R8_ROWS * QK8_0                # 528: d[8] fp16 + 256 int16
X16_BLOCK_BYTES = 2 * QK8_0                                        # 64
assert (QK8_0, Q8_0_BYTES, Q8_0_SCALE_BYTES) == (32, 34, 2), "Q8_0 layout changed in gguf"


def q8_0_row_bytes(n_values: int) -> int:
    """Bytes of one Q8_0 row of n_values (a multiple of QK8_0)."""
    return n_values // QK8_0 * Q8_0_BYTES
