"""Engine options (the bench flags a model is loaded with), numba-free.

``EngineOptions`` is what ``engine.load_model`` takes apart from the path; the
allowed values live here so that flag parsers and spec validation can check them
without importing the kernels.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.errors import EngineError

KV_TYPES = ("f32", "f16", "q8_0")          # -ctk / -ctv (engine.kvcache)
K_REPACK_MODES = ("auto", "on", "off")     # --k-repack (engine.q8_0_r8)
MLA_MODES = (0, 1, 2, 3)                   # -mla (engine.block_mla)


@dataclass(frozen=True)
class EngineOptions:
    n_ctx: int = 4096
    type_k: str = "f16"
    type_v: str = "f16"
    flash_attn: bool = True
    n_threads: int = 0          # 0 = all CPUs numba may use
    n_threads_batch: int = 0
    # MoE / DeepSeek-2 (engine.block_ffn, engine.block_mla); recorded but without effect on dense models:
    fused_moe: bool = False     # -fmoe: fused expert up/gate/SwiGLU + down kernels
    mla: int = 0                # -mla 0..3: MLA attention mode
    amb: int = 0                # -amb MiB: attention scratch cap per head group (0 = no cap)
    no_mmap: bool = False       # --no-mmap: copy the weights out of the file mapping (engine.residency)
    # engine.q8_0_r8: flash attention reads a q8_0 K as Q8_0_R8 for PP (auto = ik's rule);
    # -rtr repacks the Q8_0 weight matrices (not token_embd) to Q8_0_R8 at load.
    k_repack: str = "auto"      # --k-repack auto|on|off
    rtr: bool = False           # -rtr

    def validate(self, max_threads: int | None = None) -> "EngineOptions":
        """Check every option; -t / -tb against max_threads when given. Returns self."""
        if self.mla not in MLA_MODES:
            raise EngineError(f"-mla: mode must be 0, 1, 2 or 3, got {self.mla}")
        if self.k_repack not in K_REPACK_MODES:
            raise EngineError(f"--k-repack: unknown mode {self.k_repack!r} (allowed: {', '.join(K_REPACK_MODES)})")
        if self.amb < 0:
            raise EngineError(f"-amb: must be >= 0 MiB, got {self.amb}")
        for flag, t in (("-ctk", self.type_k), ("-ctv", self.type_v)):
            if t not in KV_TYPES:
                raise EngineError(f"{flag}: unknown cache type {t!r} (allowed: {', '.join(KV_TYPES)})")
        if self.n_ctx <= 0:
            raise EngineError(f"-c: context size must be positive, got {self.n_ctx}")
        for flag, n in (("-t", self.n_threads), ("-tb", self.n_threads_batch)):
            if n < 0 or (max_threads is not None and n > max_threads):
                raise EngineError(f"{flag}: {n} threads requested but only {max_threads} CPUs are available")
        return self
