"""ModelConfig and the architecture registry: ``general.architecture`` -> how to read the config.

One ``ModelConfig`` describes every model the engine runs: the llama block's
hyper-parameters plus the switches of its variants (q/k norms, post-norms, GeGLU,
sliding-window layers, MoE FFN, MLA attention). Each registry entry reads them from
the file's GGUF keys with ``engine.metadata.Meta`` (typed and range-checked) and
names its gguf-py ``MODEL_ARCH`` (whose ``MODEL_TENSORS`` the tests check the loader's
tensor names against). Which blocks a layer gets follows from the config alone
(``engine.loader``): MLA attention when ``kv_lora_rank > 0``, else grouped-query
attention; a MoE FFN when ``moe`` is set (after ``n_dense_lead`` dense blocks), else
the gated FFN. Adding an architecture = one reader + one ``ARCHS`` entry (+ at most a
new block when it needs one). numba-free: reading a header imports no kernel.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from gguf import Keys
from gguf.constants import MODEL_ARCH

from engine.errors import GGUFError
from engine.gguf_file import GGUFFile
from engine.metadata import Meta

K, A, R = Keys.LLM, Keys.Attention, Keys.Rope
# Sane upper bounds: far above any published model, low enough that nothing absurd is allocated.
MAX_WIDTH = 1 << 20          # embedding / FFN lengths
MAX_LAYERS = 1 << 12
MAX_HEADS = 1 << 12
MAX_HEAD_DIM = 1 << 12
MAX_VOCAB = 1 << 24
MAX_CTX = 1 << 24            # positions
MAX_EXPERTS = 1 << 12
Q8_BLOCK = 32                # activations are quantized to Q8_0 in blocks of 32 (engine.layout)
GATING = {1: "softmax", 2: "sigmoid"}   # llama.cpp LLAMA_EXPERT_GATING_FUNC_TYPE_*
_GEMMA3_27B_LAYERS = 62      # llama.cpp scales 27B's queries by 1/sqrt(n_embd/n_head)


@dataclass(frozen=True)
class MoEConfig:
    """Routing hyper-parameters (``{arch}.expert_*`` keys)."""

    n_expert: int
    n_expert_used: int
    n_ff_exp: int            # rows of one expert's gate/up
    n_ff_shexp: int          # rows of the shared expert's gate/up (0 = none)
    gating: str              # "softmax" | "sigmoid"
    norm_weights: bool       # renormalise the k selected weights to sum 1
    weights_scale: float     # multiply the weights by this (1.0 = no-op)
    shexp_gated: bool        # qwen2moe: shared expert scaled by sigmoid(ffn_gate_inp_shexp . h)


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a model, read from GGUF metadata by its architecture's entry."""

    arch: str
    name: str
    n_vocab: int               # 0 until the loader reads token_embd when the file has no count
    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int             # MLA: = n_head (recorded; one shared latent row is cached)
    head_dim: int              # q/k width per head (MLA: key_length = nope + n_rot)
    n_ff: int                  # rows of a dense FFN's gate/up
    rms_eps: float
    rope_freq_base: float
    n_rot: int
    rope_neox: bool
    rope_scaling: str          # none | linear | yarn
    rope_freq_scale: float     # 1/factor
    rope_n_ctx_orig: int
    n_ctx_train: int
    file_type: int | None
    # -- block variants (defaults: the llama block) ----------------------------------
    v_dim: int = 0             # value width per head (0 = head_dim)
    attn_scale: float = 0.0    # multiplies q.k (0 = 1/sqrt(head_dim))
    qk_norm: bool = False      # per-head RMSNorm of q and k before RoPE (gemma3, qwen3)
    post_norms: bool = False   # RMSNorm of the attention and FFN outputs (gemma3)
    ffn_act: str = "silu"      # gated FFN: silu (SwiGLU) | gelu (GeGLU, tanh approximation)
    embd_scale: float = 1.0    # the embedding rows are multiplied by this (gemma3: sqrt(n_embd))
    final_logit_softcap: float = 0.0   # 0 = none
    sliding_window: int = 0    # span of the local layers (positions, incl. the query's own)
    swa_layers: tuple = ()     # per layer: True = local (sliding window, rope_freq_base_swa)
    rope_freq_base_swa: float = 0.0
    rope_attn_factor: float = 1.0      # RoPE magnitude factor (MLA's YaRN correction)
    yarn_log_mul: float = 0.0
    moe: MoEConfig | None = None
    n_dense_lead: int = 0      # with moe: the first blocks keep a dense FFN
    q_lora_rank: int = 0       # MLA: 0 = plain attn_q
    kv_lora_rank: int = 0      # > 0: MLA attention over a c^KV cache (engine.block_mla)

    @property
    def uses_mla(self) -> bool:
        return self.kv_lora_rank > 0

    @property
    def nope(self) -> int:
        """MLA: the non-rotated part of a q/k head."""
        return self.head_dim - self.n_rot

    @property
    def kq_scale(self) -> float:
        return self.attn_scale if self.attn_scale else 1.0 / math.sqrt(self.head_dim)

    def is_local(self, layer: int) -> bool:
        return bool(self.swa_layers) and self.swa_layers[layer]

    def moe_layer(self, layer: int) -> bool:
        return self.moe is not None and layer >= self.n_dense_lead

    @classmethod
    def from_gguf(cls, gf: GGUFFile, path: str = "") -> "ModelConfig":
        """The config of an open GGUF file, by its ``general.architecture`` entry."""
        return read_config(gf)


@dataclass(frozen=True)
class Arch:
    """A registry entry: the gguf-py architecture and the reader of its config."""

    name: str
    gguf_arch: MODEL_ARCH
    read: Callable[[Meta], ModelConfig]


# -- readers -----------------------------------------------------------------------------

def _base(m: Meta, *, neox: bool, eps_default: float = 1e-5, **over) -> dict:
    """The llama family's keys (every architecture starts here); over: already-read fields."""
    n_embd = m.int(K.EMBEDDING_LENGTH, hi=MAX_WIDTH, multiple=Q8_BLOCK, why="Q8_0 activations")
    n_head = over.pop("n_head", None) or m.int(A.HEAD_COUNT, hi=MAX_HEADS)
    if "head_dim" in over:
        head_dim = over.pop("head_dim")
    elif m.has(A.KEY_LENGTH):
        head_dim = m.int(A.KEY_LENGTH, hi=MAX_HEAD_DIM)
    else:
        if n_embd % n_head:
            raise m.fail(K.EMBEDDING_LENGTH, n_embd, f"must be a multiple of attention.head_count ({n_head}) "
                                                     "when attention.key_length is absent")
        head_dim = n_embd // n_head
    n_head_kv = over.pop("n_head_kv", None) or m.int(A.HEAD_COUNT_KV, n_head, hi=n_head)
    if n_head % n_head_kv:
        raise m.fail(A.HEAD_COUNT_KV, n_head_kv, f"must divide attention.head_count ({n_head})")
    n_rot = over.pop("n_rot", None) or m.int(R.DIMENSION_COUNT, head_dim, lo=2, hi=head_dim, multiple=2,
                                            why="RoPE rotates pairs within a head")
    if n_rot % 2:   # absent: the whole head, which must then be even
        raise GGUFError(f"{m.path}: missing key {m.key(R.DIMENSION_COUNT)}, and the head size {head_dim} "
                        "(its default) is odd: RoPE rotates pairs")
    scaling = m.str(R.SCALING_TYPE, "none", choices=over.pop("scalings", ("none", "linear", "yarn")))
    factor = m.float(R.SCALING_FACTOR, 1.0, lo=0.0, hi=1e6, lo_open=True)
    if scaling == "yarn" and factor < 1.0:
        raise m.fail(R.SCALING_FACTOR, factor, "must be >= 1 with YaRN scaling (it extends the context)")
    n_ctx_train = m.int(K.CONTEXT_LENGTH, 0, lo=0, hi=MAX_CTX)
    n_ctx_orig = m.int(R.SCALING_ORIG_CTX_LEN, 0, lo=0, hi=MAX_CTX) or n_ctx_train
    if scaling == "yarn" and n_ctx_orig == 0:
        raise GGUFError(f"{m.path}: missing key {m.key(R.SCALING_ORIG_CTX_LEN)} (or {m.key(K.CONTEXT_LENGTH)}): "
                        "YaRN scaling needs the original context length")
    n_vocab = m.int(K.VOCAB_SIZE, 0, lo=1, hi=MAX_VOCAB) or m.length(Keys.Tokenizer.LIST, hi=MAX_VOCAB) or 0
    file_type = m.int(Keys.General.FILE_TYPE, None, lo=0, hi=1 << 16)
    cfg = dict(arch=m.arch, name=m.str(Keys.General.NAME, "") or Path(m.path).stem, n_vocab=n_vocab,
               n_embd=n_embd, n_layer=m.int(K.BLOCK_COUNT, hi=MAX_LAYERS), n_head=n_head, n_head_kv=n_head_kv,
               head_dim=head_dim,
               rms_eps=m.float(A.LAYERNORM_RMS_EPS, eps_default, lo=0.0, hi=1.0, lo_open=True),
               rope_freq_base=m.float(R.FREQ_BASE, 10000.0, lo=1.0, hi=1e12, lo_open=True), n_rot=n_rot,
               rope_neox=neox, rope_scaling=scaling, rope_freq_scale=1.0 / factor if scaling != "none" else 1.0,
               rope_n_ctx_orig=n_ctx_orig, n_ctx_train=n_ctx_train, file_type=file_type)
    cfg.update(over)
    return cfg


def _dense_ff(m: Meta) -> int:
    return m.int(K.FEED_FORWARD_LENGTH, hi=MAX_WIDTH, multiple=Q8_BLOCK, why="Q8_0 activations")


def _gqa_v_dim(m: Meta, head_dim: int) -> None:
    if m.has(A.VALUE_LENGTH):
        v = m.int(A.VALUE_LENGTH, hi=MAX_HEAD_DIM)
        if v != head_dim:
            raise m.fail(A.VALUE_LENGTH, v, f"must equal the key length ({head_dim}): the attention block "
                                            "caches K and V heads of one size")


def _moe(m: Meta, *, shexp_gated: bool, norm_default: bool, n_shexp: int | None = None) -> MoEConfig:
    n_expert = m.int(K.EXPERT_COUNT, hi=MAX_EXPERTS)
    gating = m.int(K.EXPERT_GATING_FUNC, 1, hi=max(GATING), why="1 softmax, 2 sigmoid")
    if m.has(K.EXPERT_FEED_FORWARD_LENGTH):
        n_ff_exp = m.int(K.EXPERT_FEED_FORWARD_LENGTH, hi=MAX_WIDTH, multiple=Q8_BLOCK, why="Q8_0 activations")
    else:   # older MoE files give the expert width as feed_forward_length
        n_ff_exp = _dense_ff(m)
    if n_shexp is None:
        n_shexp = m.int(K.EXPERT_SHARED_FEED_FORWARD_LENGTH, 0, lo=0, hi=MAX_WIDTH, multiple=Q8_BLOCK,
                        why="Q8_0 activations")
    # llama.cpp's convention: an expert_weights_scale of 0 means no scaling
    scale = m.float(K.EXPERT_WEIGHTS_SCALE, 1.0, lo=0.0, hi=1e6) or 1.0
    return MoEConfig(n_expert=n_expert, n_expert_used=m.int(K.EXPERT_USED_COUNT, hi=n_expert),
                     n_ff_exp=n_ff_exp, n_ff_shexp=n_shexp, gating=GATING[gating],
                     norm_weights=m.bool(K.EXPERT_WEIGHTS_NORM, norm_default), weights_scale=scale,
                     shexp_gated=shexp_gated)


def _llama_like(neox: bool, qk_norm: bool = False):
    """llama / qwen2 / qwen3 (and llama with experts: mixtral as llama.cpp converts it)."""
    def read(m: Meta) -> ModelConfig:
        cfg = _base(m, neox=neox)
        _gqa_v_dim(m, cfg["head_dim"])
        if m.arch == "llama" and m.int(K.EXPERT_COUNT, 0, lo=0, hi=MAX_EXPERTS) > 0:
            moe = _moe(m, shexp_gated=False, norm_default=True)
            return ModelConfig(**cfg, n_ff=m.int(K.FEED_FORWARD_LENGTH, 0, lo=0, hi=MAX_WIDTH) or moe.n_ff_exp,
                               moe=moe)
        return ModelConfig(**cfg, n_ff=_dense_ff(m), qk_norm=qk_norm)
    return read


def _qwen2moe(m: Meta) -> ModelConfig:
    cfg = _base(m, neox=True)
    _gqa_v_dim(m, cfg["head_dim"])
    moe = _moe(m, shexp_gated=True, norm_default=False)
    return ModelConfig(**cfg, n_ff=m.int(K.FEED_FORWARD_LENGTH, 0, lo=0, hi=MAX_WIDTH) or moe.n_ff_exp, moe=moe)


def _gemma3(m: Meta) -> ModelConfig:
    cfg = _base(m, neox=True)
    _gqa_v_dim(m, cfg["head_dim"])
    n_layer, ctx = cfg["n_layer"], cfg["n_ctx_train"]
    window = m.int(A.SLIDING_WINDOW, hi=MAX_CTX, why="positions a local layer sees")
    pattern = m.int(A.SLIDING_WINDOW_PATTERN, 6, hi=MAX_LAYERS, why="every n-th layer is global")
    if m.has(A.SCALE):
        scale = m.float(A.SCALE, lo=0.0, hi=1e3, lo_open=True)
    else:
        scale = 1.0 / math.sqrt(cfg["n_embd"] // cfg["n_head"] if n_layer == _GEMMA3_27B_LAYERS else cfg["head_dim"])
    return ModelConfig(**cfg, n_ff=_dense_ff(m), qk_norm=True, post_norms=True, ffn_act="gelu",
                       embd_scale=math.sqrt(cfg["n_embd"]), attn_scale=scale,
                       final_logit_softcap=m.float(K.FINAL_LOGIT_SOFTCAPPING, 0.0, lo=0.0, hi=1e6),
                       sliding_window=window, swa_layers=tuple((il + 1) % pattern != 0 for il in range(n_layer)),
                       rope_freq_base_swa=m.float(R.FREQ_BASE_SWA, 10000.0, lo=1.0, hi=1e12, lo_open=True))


def _deepseek2(m: Meta) -> ModelConfig:
    n_head = m.int(A.HEAD_COUNT, hi=MAX_HEADS)
    # newer llama.cpp converters write the MLA cache widths as key/value_length and the
    # per-head widths as key_length_mla / value_length_mla
    dk_key = A.KEY_LENGTH_MLA if m.has(A.KEY_LENGTH_MLA) else A.KEY_LENGTH
    dv_key = A.VALUE_LENGTH_MLA if m.has(A.VALUE_LENGTH_MLA) else A.VALUE_LENGTH
    dk = m.int(dk_key, lo=3, hi=MAX_HEAD_DIM)
    dv = m.int(dv_key, hi=MAX_HEAD_DIM)
    n_rot = m.int(R.DIMENSION_COUNT, lo=2, hi=dk - 1, multiple=2,
                  why=f"RoPE pairs, below {m.key(dk_key)} = {dk} so that each head keeps a non-rotated part")
    cfg = _base(m, neox=False, eps_default=1e-6, n_head=n_head, n_head_kv=n_head, head_dim=dk, n_rot=n_rot,
                scalings=("none", "yarn"))
    n_layer = cfg["n_layer"]
    n_dense = m.int(K.LEADING_DENSE_BLOCK_COUNT, 0, lo=0, hi=n_layer)
    moe = None
    if n_dense < n_layer:
        n_ff_exp = m.int(K.EXPERT_FEED_FORWARD_LENGTH, hi=MAX_WIDTH, multiple=Q8_BLOCK, why="Q8_0 activations")
        n_shared = m.int(K.EXPERT_SHARED_COUNT, 0, lo=0, hi=MAX_EXPERTS)
        moe = _moe(m, shexp_gated=False, norm_default=False, n_shexp=n_ff_exp * n_shared)
    yarn = cfg["rope_scaling"] == "yarn"
    factor = 1.0 / cfg["rope_freq_scale"]
    log_mul = m.float(R.SCALING_YARN_LOG_MUL, 0.0, lo=0.0, hi=100.0)
    mscale = 1.0 + log_mul * math.log(factor)
    return ModelConfig(**cfg, n_ff=_dense_ff(m), v_dim=dv, moe=moe, n_dense_lead=n_dense,
                       q_lora_rank=m.int(A.Q_LORA_RANK, 0, lo=0, hi=MAX_WIDTH),
                       kv_lora_rank=m.int(A.KV_LORA_RANK, hi=MAX_WIDTH), yarn_log_mul=log_mul,
                       attn_scale=mscale * mscale / math.sqrt(dk),
                       rope_attn_factor=1.0 / (1.0 + 0.1 * math.log(factor)) if yarn else 1.0)


ARCHS: dict[str, Arch] = {a.name: a for a in (
    Arch("llama", MODEL_ARCH.LLAMA, _llama_like(neox=False)),
    Arch("qwen2", MODEL_ARCH.QWEN2, _llama_like(neox=True)),
    Arch("qwen3", MODEL_ARCH.QWEN3, _llama_like(neox=True, qk_norm=True)),
    Arch("gemma3", MODEL_ARCH.GEMMA3, _gemma3),
    Arch("qwen2moe", MODEL_ARCH.QWEN2MOE, _qwen2moe),
    Arch("deepseek2", MODEL_ARCH.DEEPSEEK2, _deepseek2),
)}


def architecture(gf: GGUFFile) -> Arch:
    """The registry entry of a file's ``general.architecture``."""
    arch = Meta(gf).str(Keys.General.ARCHITECTURE)
    entry = ARCHS.get(arch)
    if entry is None:
        raise GGUFError(f"{gf.path}: general.architecture = {arch!r}: unsupported architecture "
                        f"(supported: {', '.join(ARCHS)})")
    return entry


def read_config(gf: GGUFFile) -> ModelConfig:
    """The ModelConfig of an open GGUF file (every key typed and range-checked)."""
    entry = architecture(gf)
    cfg = entry.read(Meta(gf, entry.name))
    return cfg


def load_notes(cfg: ModelConfig) -> list[str]:
    """What the load log says about values that are valid but change how the model runs."""
    notes = []
    if cfg.sliding_window and cfg.n_ctx_train and cfg.sliding_window >= cfg.n_ctx_train:
        notes.append(f"{cfg.arch}.attention.sliding_window = {cfg.sliding_window} is not shorter than "
                     f"{cfg.arch}.context_length = {cfg.n_ctx_train}: local layers see every position "
                     "(like global ones, with the local RoPE base)")
    return notes


def rtr_skip(cfg: ModelConfig) -> str:
    """Why -rtr leaves this model's matrices as they are ("" = it repacks them)."""
    if cfg.uses_mla:
        return f"{cfg.arch} (expert and per-head tensors stay Q8_0)"
    if cfg.moe is not None:
        return "MoE models (the 3-D expert tensors stay Q8_0)"
    return ""
