"""Feed-forward blocks: the gated FFN (SwiGLU / GeGLU) and the MoE FFN.

  GatedFFN:  out = (act(h Wg) * (h Wu)) Wd, then RMSNorm * post_ffw_norm (post_norms: gemma3)
             act = silu (SwiGLU) or gelu_tanh (GeGLU, gemma3); gate and up in one launch,
             the activation and its Q8_0 rows in one pass (engine.ops)
  MoEFFN:    routed experts + optional shared expert (engine.moe: routing variants, fused
             ``-fmoe`` and unfused expert kernels)

h is the block's normed input (n, n_embd) f32 and hq its Q8_0 rows.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gguf.constants import MODEL_TENSOR as T

from engine.archs import MoEConfig
from engine.metadata import tensor_name
from engine.moe import MoEWeights, moe_ffn
from engine.ops import geglu_q8_0, rmsnorm, swiglu_q8_0
from engine.tensors import Weight, matmul, matmuls


@dataclass(frozen=True)
class GatedFFN:
    gate: Weight                     # (n_ff, n_embd)
    up: Weight                       # (n_ff, n_embd)
    down: Weight                     # (n_embd, n_ff)
    gelu: bool = False               # GeGLU (gemma3) instead of SwiGLU
    post_norm: np.ndarray | None = None   # (n_embd,) f32 (post_norms)

    @classmethod
    def load(cls, ld, cfg, i: int) -> "GatedFFN":
        E, F = cfg.n_embd, cfg.n_ff
        return cls(gate=ld.matrix(tensor_name(T.FFN_GATE, i), F, E), up=ld.matrix(tensor_name(T.FFN_UP, i), F, E),
                   down=ld.matrix(tensor_name(T.FFN_DOWN, i), E, F), gelu=cfg.ffn_act == "gelu",
                   post_norm=ld.vector(tensor_name(T.FFN_POST_NORM, i), E) if cfg.post_norms else None)

    def matrices(self) -> tuple[Weight, ...]:
        return self.gate, self.up, self.down

    @property
    def n_params(self) -> int:
        return sum(w.n_params for w in self.matrices()) + (0 if self.post_norm is None else self.post_norm.shape[0])

    @property
    def bytes_per_token(self) -> int:
        return sum(w.nbytes for w in self.matrices())

    def source_types(self) -> set[str]:
        return {self.up.source_type, self.down.source_type}

    def __call__(self, h: np.ndarray, hq: np.ndarray, run) -> np.ndarray:
        g, u = matmuls((self.gate, self.up), h, hq)                # (n, n_ff) x2
        s, sq = (geglu_q8_0 if self.gelu else swiglu_q8_0)(g, u)
        out = matmul(self.down, s, sq)
        return out if self.post_norm is None else rmsnorm(out, self.post_norm, run.config.rms_eps)


@dataclass(frozen=True)
class MoEFFN:
    w: MoEWeights
    cfg: MoEConfig

    @classmethod
    def load(cls, ld, cfg, i: int) -> "MoEFFN":
        m = cfg.moe
        E, X, F = cfg.n_embd, m.n_expert, m.n_ff_exp

        def name(kind, suffix="weight"):
            return tensor_name(kind, i, suffix)

        shared = m.n_ff_shexp > 0 and ld.has(name(T.FFN_UP_SHEXP))
        return cls(MoEWeights(
            gate_inp=ld.matrix(name(T.FFN_GATE_INP), X, E),
            probs_bias=ld.optional_vector(name(T.FFN_EXP_PROBS_B, "bias"), X),
            gate=ld.experts(name(T.FFN_GATE_EXP), X, F, E), up=ld.experts(name(T.FFN_UP_EXP), X, F, E),
            down=ld.experts(name(T.FFN_DOWN_EXP), X, E, F),
            sh_gate=ld.matrix(name(T.FFN_GATE_SHEXP), m.n_ff_shexp, E) if shared else None,
            sh_up=ld.matrix(name(T.FFN_UP_SHEXP), m.n_ff_shexp, E) if shared else None,
            sh_down=ld.matrix(name(T.FFN_DOWN_SHEXP), E, m.n_ff_shexp) if shared else None,
            sh_gate_inp=(ld.optional_vector(name(T.FFN_GATE_INP_SHEXP), E) if m.shexp_gated else None)), m)

    def matrices(self) -> tuple[Weight, ...]:
        """The 2-D matrices every token reads (router, shared expert); the experts are 3-D."""
        return tuple(x for x in (self.w.gate_inp, self.w.sh_gate, self.w.sh_up, self.w.sh_down) if x is not None)

    @property
    def n_params(self) -> int:
        vecs = (self.w.probs_bias, self.w.sh_gate_inp)
        return self.w.n_params + sum(v.shape[0] for v in vecs if v is not None)

    @property
    def bytes_per_token(self) -> int:
        return self.w.bytes_per_token(self.cfg.n_expert_used)

    def source_types(self) -> set[str]:
        return self.w.source_types()

    def __call__(self, h: np.ndarray, hq: np.ndarray, run) -> np.ndarray:
        return moe_ffn(h, self.w, self.cfg, fused=bool(run.options.fused_moe), hq=hq)
