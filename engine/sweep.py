"""The llama-sweep-bench loop (ik_llama.cpp semantics) and its output formats.

For n_kv = 0, ub, 2ub, ... < n_ctx:
  1. TG: generate tg tokens one at a time at depth n_kv (logits every step), T_TG;
  2. remove those tg tokens from the cache;
  3. PP: one ubatch of pp = ub random token ids at depth n_kv (logits for the
     last token only), T_PP; they stay as cache entries n_kv .. n_kv+ub.
S_PP = pp/T_PP, S_TG = tg/T_TG. A warm-up (one ubatch + one token, cache
cleared after) runs first and is never timed, so numba compilation is never
inside a measurement. Token ids come from a generator with a fixed seed (ik
uses an unseeded glibc rand(): the same stream every run).

-nrep N repeats every row N times (ik repeats only the first row); every
repetition re-runs TG and PP from the same depth. --sweep-stride N times every
Nth row only; skipped rows still run their PP (untimed) to fill the cache.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterator

import numpy as np

from engine.errors import EngineError
from engine.model import Model, rss_hwm_mib

TABLE_HEADER = ("|%6s | %6s | %6s | %8s | %8s | %8s | %8s |"
                % ("PP", "TG", "N_KV", "T_PP s", "S_PP t/s", "T_TG s", "S_TG t/s"))
TABLE_RULE = "|%6s-|-%6s-|-%6s-|-%8s-|-%8s-|-%8s-|-%8s-|" % (("------",) * 3 + ("--------",) * 4)


@dataclass(frozen=True)
class SweepConfig:
    n_ctx: int
    n_ubatch: int = 512
    n_batch: int = 2048
    n_gen: int = 0          # 0 = n_ubatch // 4
    nrep: int = 1
    seed: int = 42
    stride: int = 1

    @property
    def tg(self) -> int:
        return self.n_gen if self.n_gen > 0 else max(1, self.n_ubatch // 4)

    def validate(self) -> "SweepConfig":
        if self.n_ubatch <= 0:
            raise EngineError(f"-ub: ubatch size must be positive, got {self.n_ubatch}")
        if self.n_ctx <= 0 or self.n_ctx % self.n_ubatch:
            raise EngineError(f"-c: context {self.n_ctx} is not a positive multiple of -ub {self.n_ubatch}")
        if self.n_batch < self.n_ubatch:
            raise EngineError(f"-b: batch size {self.n_batch} is smaller than -ub {self.n_ubatch}")
        if self.tg > self.n_ubatch:
            raise EngineError(f"-n: {self.tg} TG tokens exceed the ubatch {self.n_ubatch} (the cache "
                              "would overflow at the last row)")
        if self.nrep < 1:
            raise EngineError(f"-nrep: must be at least 1, got {self.nrep}")
        if self.stride < 1:
            raise EngineError(f"--sweep-stride: must be at least 1, got {self.stride}")
        return self


@dataclass(frozen=True)
class SweepRow:
    """One measured row; times in seconds, speeds in tokens/s."""

    pp: int
    tg: int
    n_kv: int
    t_pp: float
    speed_pp: float
    t_tg: float
    speed_tg: float
    rss_hwm_mib: float
    rep: int = 0
    repack_scratch_mib: float = 0.0       # K-repack scratch this row's PP needed
    repack_scratch_hwm_mib: float = 0.0   # K-repack scratch allocated so far (grow-only)

    def __post_init__(self) -> None:
        if self.t_pp <= 0 or self.t_tg <= 0 or self.pp <= 0 or self.tg <= 0 or self.n_kv < 0:
            raise ValueError(f"invalid sweep row {self}")

    def table_line(self) -> str:
        return "|%6d | %6d | %6d | %8.3f | %8.2f | %8.3f | %8.2f |" % (
            self.pp, self.tg, self.n_kv, self.t_pp, self.speed_pp, self.t_tg, self.speed_tg)


def main_line(model: Model, cfg: SweepConfig) -> str:
    """ik's 'main: n_kv_max = ...' line, which importers key on."""
    return (f"main: n_kv_max = {cfg.n_ctx}, n_batch = {cfg.n_batch}, n_ubatch = {cfg.n_ubatch}, "
            f"flash_attn = {int(model.options.flash_attn)}, n_gpu_layers = -1, "
            f"n_threads = {model.n_threads}, n_threads_batch = {model.n_threads_batch}")


def jsonl_record(model: Model, cfg: SweepConfig, row: SweepRow, noise: float | None = None) -> dict:
    """ik's sweep-bench JSONL keys, then ours (``noise``: foreign CPU load during the row, when measured)."""
    o = model.options
    rec = {"n_kv_max": cfg.n_ctx, "n_batch": cfg.n_batch, "n_ubatch": cfg.n_ubatch,
           "flash_attn": int(o.flash_attn), "n_gpu_layers": -1, "n_threads": model.n_threads,
           "n_threads_batch": model.n_threads_batch}
    rec.update(asdict(row))
    rec.update({"type_k": o.type_k, "type_v": o.type_v,
                "k_repack": o.k_repack, "rtr": bool(o.rtr), "fmoe": bool(o.fused_moe), "mla": int(o.mla),
                "amb": int(o.amb), "no_mmap": bool(o.no_mmap), "weight_bytes": model.weight_bytes_per_token})
    if noise is not None:
        rec["noise"] = noise
    return rec


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def warmup(model: Model, cfg: SweepConfig, rng: np.random.Generator) -> None:
    n_vocab = model.n_vocab
    model.kv_clear()
    model.eval(rng.integers(0, n_vocab, cfg.n_ubatch), 0, all_logits=False)
    model.eval(rng.integers(0, n_vocab, 1), cfg.n_ubatch)
    model.kv_clear()


def sweep(model: Model, cfg: SweepConfig,
          scratch_mib: Callable[[], float] | None = None) -> Iterator[SweepRow]:
    """Run the sweep and yield each row as soon as it is measured.

    ``model`` is anything with Model's eval / kv_clear / kv_truncate / n_vocab / kv_capacity
    (engine.ik_peer.IkPeer runs the same loop through ik_llama.cpp)."""
    cfg.validate()
    if cfg.n_ctx > model.kv_capacity:
        raise EngineError(f"-c: sweep context {cfg.n_ctx} exceeds the model's KV cache ({model.kv_capacity})")
    rng = np.random.default_rng(cfg.seed)
    n_vocab = model.n_vocab
    ub, tg = cfg.n_ubatch, cfg.tg
    warmup(model, cfg, rng)
    for row_i, n_kv in enumerate(range(0, cfg.n_ctx, ub)):
        if row_i % cfg.stride:
            model.eval(rng.integers(0, n_vocab, ub), n_kv, all_logits=False)  # fill, untimed
            continue
        for rep in range(cfg.nrep):
            model.kv_truncate(n_kv)
            toks = rng.integers(0, n_vocab, tg)

            def run_tg():
                for i in range(tg):
                    model.eval(toks[i:i + 1], n_kv + i)

            t_tg = _timed(run_tg)
            model.kv_truncate(n_kv)
            batch = rng.integers(0, n_vocab, ub)
            t_pp = _timed(lambda: model.eval(batch, n_kv, all_logits=False))
            scratch = scratch_mib() if scratch_mib else float(getattr(model, "repack_scratch_mib", 0.0))
            yield SweepRow(pp=ub, tg=tg, n_kv=n_kv, t_pp=t_pp, speed_pp=ub / t_pp, t_tg=t_tg,
                           speed_tg=tg / t_tg, rss_hwm_mib=round(rss_hwm_mib(), 2), rep=rep,
                           repack_scratch_mib=round(scratch, 4),
                           repack_scratch_hwm_mib=round(float(getattr(model, "repack_scratch_hwm_mib", 0.0)), 4))


def format_jsonl(model: Model, cfg: SweepConfig, row: SweepRow, noise: float | None = None) -> str:
    return json.dumps(jsonl_record(model, cfg, row, noise))
