"""Mixture-of-experts FFN: routing and the expert kernels (qwen2moe, mixtral, deepseek2).

Routing follows llama.cpp's ``build_moe_ffn``:

  logits = ffn_gate_inp . h                                   (n, n_expert)
  probs  = softmax(logits) | sigmoid(logits)                  (gating function)
  select = probs + exp_probs_b (deepseek-V3's bias, selection only)
  ids    = top-k(select), k = expert_used_count               (n, k)
  w      = probs[ids]; w /= sum(w) if expert_weights_norm; w *= expert_weights_scale
  out    = sum_j w[:, j] * down_e(silu(gate_e . h) * (up_e . h)),  e = ids[:, j]

Expert tensors are 3-D in GGUF (``blk.N.ffn_{gate,up,down}_exps.weight``, ggml
shape [n_in, n_out, n_expert]); in numpy a Q8_0 one is (n_expert, n_out,
n_in/32*34) bytes, so expert e's matrix is the contiguous slice [e] and every
matmul reuses the Q8_0 tiles of ``engine.tiles`` (one body for AVX2 and scalar).

Two execution modes (``-fmoe``):

* unfused (default): ggml's op-by-op graph: per selected expert, a gate GEMM, an
  up GEMM (``matmul.gemm_q8_0`` on the expert's slice, over the tokens routed
  to it), then SwiGLU over all slots, one quantization, a down GEMM per expert,
  and the weighted sum. 3 x (active experts) kernel launches per layer.
* fused (``-fmoe``, ik_llama.cpp's fused_moe): one parallel kernel computes gate
  and up for every (selected expert, row tile) work item and applies
  silu(gate)*up in the same pass (no separate gate/up/SwiGLU buffers walked
  again), then one parallel kernel does every expert's down projection. Two
  kernel launches per layer, work balanced across all selected experts. A PP batch
  takes ``matmul``'s W16 slabs (32-row items; an expert's rows widened to int16 once per
  item and reused by every token routed to it), TG 8-row Q8_0 tiles.

Both give the same numbers up to float summation order. f32 experts (f16/f32
files) always take the unfused path (the fused kernels are Q8_0 only).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numba import njit, prange

from engine._numba import AVX2, NJIT, PARALLEL, SCALAR, isa
from engine.archs import MoEConfig
from engine.layout import Q8_0_BYTES, R8_ROWS, W16_BLOCK_BYTES
from engine.matmul import SLAB, W16_MIN_TOK, slab_rows, widen_x
from engine.ops import swiglu
from engine.quant import quantize_q8_0
from engine.tensors import Experts, Weight, matmul, matmuls


@dataclass(frozen=True)
class MoEWeights:
    """One block's router, routed experts and optional shared expert (``engine.block_ffn.MoEFFN``)."""

    gate_inp: Weight                  # (n_expert, n_embd) router
    probs_bias: np.ndarray | None     # (n_expert,) f32 exp_probs_b (selection only)
    gate: Experts                     # (n_expert, n_ff_exp, n_embd)
    up: Experts                       # (n_expert, n_ff_exp, n_embd)
    down: Experts                     # (n_expert, n_embd, n_ff_exp)
    sh_gate: Weight | None            # (n_ff_shexp, n_embd) shared expert
    sh_up: Weight | None
    sh_down: Weight | None            # (n_embd, n_ff_shexp)
    sh_gate_inp: np.ndarray | None    # (n_embd,) f32 qwen2moe shared-expert gate

    def bytes_per_token(self, n_used: int) -> int:
        """Weight bytes one token reads: router + shared expert + n_used routed experts."""
        n = self.gate_inp.nbytes + n_used * sum(x.bytes_per_expert for x in (self.gate, self.up, self.down))
        n += sum(w.nbytes for w in (self.sh_gate, self.sh_up, self.sh_down) if w is not None)
        return n

    @property
    def n_params(self) -> int:
        n = self.gate_inp.n_params + sum(x.n_params for x in (self.gate, self.up, self.down))
        return n + sum(w.n_params for w in (self.sh_gate, self.sh_up, self.sh_down) if w is not None)

    def source_types(self) -> set[str]:
        return {self.up.source_type, self.down.source_type}


# -- routing ---------------------------------------------------------------------------

def route(logits: np.ndarray, cfg: MoEConfig, bias: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Top-k experts per token: ids (n, k) int64 and weights (n, k) f32 (see module docstring)."""
    z = logits.astype(np.float32)
    if cfg.gating == "softmax":
        e = np.exp(z - z.max(axis=1, keepdims=True))
        probs = e / e.sum(axis=1, keepdims=True)
    else:
        probs = 1.0 / (1.0 + np.exp(-z))
    sel = probs + bias if bias is not None else probs
    k = cfg.n_expert_used
    ids = np.argsort(-sel, axis=1, kind="stable")[:, :k]
    w = np.take_along_axis(probs, ids, axis=1)
    if cfg.norm_weights:
        w = w / np.maximum(w.sum(axis=1, keepdims=True), np.float32(6.103515625e-5))
    if cfg.weights_scale != 1.0:
        w = w * np.float32(cfg.weights_scale)
    return ids.astype(np.int64), w.astype(np.float32)


# -- kernels -----------------------------------------------------------------------------

@njit(inline="always", **NJIT)
def _item_rows(item, rows, n_out, ex, rb):
    # work item -> (active expert a, first row r0, rows nr, W byte offset of row r0)
    n_t = (n_out + rows - 1) // rows
    a = item // n_t
    r0 = (item - a * n_t) * rows
    return a, r0, min(rows, n_out - r0), (ex[a] * n_out + r0) * rb


@njit(inline="always", **NJIT)
def _up_gate_item(kind, item, rows, xg, wg, wu, rb, n_ff, ex, offs, g, u, x16, xd):
    # Work item (active expert a, `rows`-row tile) of the fused gate/up/SwiGLU:
    # xg: flat (n_slots*rb) u8 Q8_0 rows, slots grouped by expert; wg, wu: flat
    # (n_expert*n_ff*rb) u8; ex: (n_act,) expert ids; offs: (n_act+1,) slot ranges;
    # x16/xd: xg's int16 form when rows == SLAB (an expert with >= W16_MIN_TOK slots then
    # takes W16 tiles). g, u: flat (n_slots*n_ff) f32; on return g[s, r] = silu(gate) * up.
    nb = rb // Q8_0_BYTES
    a, r0, nr, wo = _item_rows(item, rows, n_ff, ex, rb)
    s0, s1 = offs[a], offs[a + 1]
    buf = np.empty((SLAB // R8_ROWS * nb * W16_BLOCK_BYTES) if rows == SLAB else 0, dtype=np.uint8)
    slab_rows(kind, wg, wo, nr, xg, s0, s1, nb, g, n_ff, r0, x16, xd, buf)
    slab_rows(kind, wu, wo, nr, xg, s0, s1, nb, u, n_ff, r0, x16, xd, buf)
    for s in range(s0, s1):
        for r in range(nr):
            i = s * n_ff + r0 + r
            v = g[i]
            g[i] = v / (np.float32(1.0) + np.exp(-v)) * u[i]


@njit(inline="always", **NJIT)
def _down_item(kind, item, rows, aq, wd, rb, n_embd, ex, offs, out, x16, xd):
    # Work item (active expert a, `rows`-row tile) of every expert's down projection:
    # aq: flat (n_slots*rb) u8 Q8_0 activations; wd: flat (n_expert*n_embd*rb) u8;
    # out: flat (n_slots*n_embd) f32; x16/xd as in _up_gate_item
    nb = rb // Q8_0_BYTES
    a, r0, nr, wo = _item_rows(item, rows, n_embd, ex, rb)
    buf = np.empty((SLAB // R8_ROWS * nb * W16_BLOCK_BYTES) if rows == SLAB else 0, dtype=np.uint8)
    slab_rows(kind, wd, wo, nr, aq, offs[a], offs[a + 1], nb, out, n_embd, r0, x16, xd, buf)


# Entry points, one per ISA (see engine._numba): they differ only in the literal kind.
# rows: 8 (TG and small batches: Q8_0 tiles) or SLAB (PP: W16 tiles), see _launch.
@njit(**PARALLEL)
def _moe_up_gate_avx2(rows, xg, wg, wu, rb, n_ff, ex, offs, g, u, x16, xd):
    for item in prange(ex.shape[0] * ((n_ff + rows - 1) // rows)):
        _up_gate_item(AVX2, item, rows, xg, wg, wu, rb, n_ff, ex, offs, g, u, x16, xd)


@njit(**PARALLEL)
def _moe_up_gate_scalar(rows, xg, wg, wu, rb, n_ff, ex, offs, g, u, x16, xd):
    for item in prange(ex.shape[0] * ((n_ff + rows - 1) // rows)):
        _up_gate_item(SCALAR, item, rows, xg, wg, wu, rb, n_ff, ex, offs, g, u, x16, xd)


@njit(**PARALLEL)
def _moe_down_avx2(rows, aq, wd, rb, n_embd, ex, offs, out, x16, xd):
    for item in prange(ex.shape[0] * ((n_embd + rows - 1) // rows)):
        _down_item(AVX2, item, rows, aq, wd, rb, n_embd, ex, offs, out, x16, xd)


@njit(**PARALLEL)
def _moe_down_scalar(rows, aq, wd, rb, n_embd, ex, offs, out, x16, xd):
    for item in prange(ex.shape[0] * ((n_embd + rows - 1) // rows)):
        _down_item(SCALAR, item, rows, aq, wd, rb, n_embd, ex, offs, out, x16, xd)


def _launch(xq: np.ndarray, offs: np.ndarray, kind: int) -> tuple[int, np.ndarray, np.ndarray]:
    """(rows per work item, x16, xd) of a grouped launch over the Q8_0 rows xq (n_slots, rb):
    SLAB-row items and xq's int16 form when some group has at least W16_MIN_TOK rows (PP),
    else 8-row items on the Q8_0 bytes (TG: every group has a row or a few)."""
    if offs.shape[0] > 1 and int(np.diff(offs).max()) >= W16_MIN_TOK:
        return (SLAB, *widen_x(xq, kind))
    return 8, _EMPTY_U8, _EMPTY_F32


_EMPTY_U8 = np.zeros((0,), dtype=np.uint8)
_EMPTY_F32 = np.zeros((0,), dtype=np.float32)


def _slots(ids: np.ndarray):
    """Group the n*k (token, choice) pairs by expert: slot order, experts, offsets."""
    flat = ids.reshape(-1)
    order = np.argsort(flat, kind="stable")          # slot -> flat (token*k + j)
    ex, counts = np.unique(flat[order], return_counts=True)
    offs = np.zeros(ex.shape[0] + 1, dtype=np.int64)
    np.cumsum(counts, out=offs[1:])
    return order, ex.astype(np.int64), offs


def moe_ffn(h: np.ndarray, W: MoEWeights, cfg: MoEConfig, *, fused: bool,
            simd: str | None = None, hq: np.ndarray | None = None) -> np.ndarray:
    """The routed + shared expert FFN of h (n, n_embd) f32 (normed input) -> (n, n_embd) f32.

    hq: h's Q8_0 rows when the caller has them (else quantized here).
    """
    n, E = h.shape
    k = cfg.n_expert_used
    hq = quantize_q8_0(h) if hq is None else hq
    logits = matmul(W.gate_inp, h, hq)
    ids, wts = route(logits, cfg, W.probs_bias)
    order, ex, offs = _slots(ids)
    tok = order // k                                  # slot -> token
    F = cfg.n_ff_exp
    q8 = W.gate.kind == W.up.kind == W.down.kind == "q8_0"
    if fused and q8:
        kind = isa(simd)
        up_gate = _moe_up_gate_avx2 if kind == AVX2 else _moe_up_gate_scalar
        down = _moe_down_avx2 if kind == AVX2 else _moe_down_scalar
        xg = np.ascontiguousarray(hq[tok])
        g = np.empty((order.shape[0], F), dtype=np.float32)
        u = np.empty_like(g)
        rows, x16, xd = _launch(xg, offs, kind)
        up_gate(rows, xg.reshape(-1), W.gate.data.reshape(-1), W.up.data.reshape(-1), hq.shape[1],
                F, ex, offs, g.reshape(-1), u.reshape(-1), x16, xd)
        aq = quantize_q8_0(g)
        d = np.empty((order.shape[0], E), dtype=np.float32)
        rows, x16, xd = _launch(aq, offs, kind)
        down(rows, aq.reshape(-1), W.down.data.reshape(-1), aq.shape[1], E, ex, offs, d.reshape(-1), x16, xd)
    else:
        # slots' inputs: Q8_0 rows for Q8_0 experts, f32 rows for float ones
        xs = np.ascontiguousarray(hq[tok]) if q8 else np.ascontiguousarray(h[tok])
        g = np.empty((order.shape[0], F), dtype=np.float32)
        u = np.empty_like(g)
        for a, e in enumerate(ex):
            s0, s1 = offs[a], offs[a + 1]
            x = xs[s0:s1]
            g[s0:s1] = matmul(W.gate.expert(e), None, x) if q8 else matmul(W.gate.expert(e), x)
            u[s0:s1] = matmul(W.up.expert(e), None, x) if q8 else matmul(W.up.expert(e), x)
        s = swiglu(g, u)
        sq = quantize_q8_0(s) if W.down.quantized else None
        d = np.empty((order.shape[0], E), dtype=np.float32)
        for a, e in enumerate(ex):
            s0, s1 = offs[a], offs[a + 1]
            d[s0:s1] = matmul(W.down.expert(e), s[s0:s1], None if sq is None else sq[s0:s1])
    inv = np.empty_like(order)
    inv[order] = np.arange(order.shape[0])
    out = np.einsum("nk,nke->ne", wts, d[inv].reshape(n, k, E), optimize=False).astype(np.float32)
    if W.sh_up is not None:
        sg, su = matmuls((W.sh_gate, W.sh_up), h, hq)
        sd = matmul(W.sh_down, swiglu(sg, su))
        if W.sh_gate_inp is not None:
            sd *= (1.0 / (1.0 + np.exp(-(h @ W.sh_gate_inp)))).astype(np.float32)[:, None]
        out += sd
    return out


def grouped_gemm_q8_0(w3: np.ndarray, xq: np.ndarray, n_per_group: int, simd: str | None = None) -> np.ndarray:
    """Per-group GEMM in one parallel kernel: out[g*n + t] = W[g] . X[g*n + t].

    w3 (G, n_out, rb) u8 Q8_0 rows; xq (G*n, rb) u8 Q8_0 rows -> (G*n, n_out) f32. Used for
    MLA's per-head W_kb^T q and W_vb o products (a group = a head).
    """
    G, n_out, rb = w3.shape
    if xq.shape != (G * n_per_group, rb) or xq.dtype != np.uint8 or w3.dtype != np.uint8:
        raise ValueError(f"grouped_gemm_q8_0: W {w3.shape} and X {xq.shape} do not fit {n_per_group} rows/group")
    ex = np.arange(G, dtype=np.int64)
    offs = np.arange(G + 1, dtype=np.int64) * n_per_group
    out = np.empty((G * n_per_group, n_out), dtype=np.float32)
    kind = isa(simd)
    kernel = _moe_down_avx2 if kind == AVX2 else _moe_down_scalar
    xq = np.ascontiguousarray(xq)
    rows, x16, xd = _launch(xq, offs, kind)
    kernel(rows, xq.reshape(-1), np.ascontiguousarray(w3).reshape(-1), rb, n_out, ex, offs, out.reshape(-1),
           x16, xd)
    return out
