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

from engine import sweep_table
from engine.errors import EngineError
from engine.model import Model, rss_hwm_mib
from engine.options import OptionError, check_combination, check_value, effective_tg, option_flag

TABLE_HEADER = sweep_table.header()
TABLE_RULE = sweep_table.rule()


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
        return effective_tg(self.n_ubatch, self.n_gen)

    def settings(self) -> dict:
        """These values under their schema names (engine.options)."""
        return {"c": self.n_ctx, "ub": self.n_ubatch, "b": self.n_batch, "tg": self.n_gen, "nrep": self.nrep,
                "seed": self.seed, "sweep_stride": self.stride}

    @classmethod
    def from_settings(cls, v: dict) -> "SweepConfig":
        return cls(n_ctx=v["c"], n_ubatch=v["ub"], n_batch=v["b"], n_gen=v["tg"], nrep=v["nrep"], seed=v["seed"],
                   stride=v["sweep_stride"]).validate()

    def validate(self) -> "SweepConfig":
        values = self.settings()
        try:
            for name, value in values.items():
                check_value(name, value)
            check_combination(values)
        except OptionError as exc:
            raise EngineError(f"{option_flag(exc.setting)}: {exc.message}") from None
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
        return sweep_table.line(sweep_table.cells(self.pp, self.tg, self.n_kv, self.t_pp, self.speed_pp, self.t_tg,
                                                  self.speed_tg))


def main_line(model: Model, cfg: SweepConfig) -> str:
    """ik's 'main: n_kv_max = ...' line, which importers key on."""
    return (f"main: n_kv_max = {cfg.n_ctx}, n_batch = {cfg.n_batch}, n_ubatch = {cfg.n_ubatch}, "
            f"flash_attn = {int(model.options.flash_attn)}, n_gpu_layers = -1, "
            f"n_threads = {model.n_threads}, n_threads_batch = {model.n_threads_batch}")


def effective_settings(model: Model, cfg: SweepConfig) -> dict:
    """Every schema setting as this sweep applies it (threads resolved), for the JSONL echo."""
    return {**model.options.settings(), **cfg.settings(), "tg": cfg.tg, "threads": model.n_threads,
            "threads_batch": model.n_threads_batch}


def jsonl_record(model: Model, cfg: SweepConfig, row: SweepRow, noise: float | None = None) -> dict:
    """ik's sweep-bench JSONL keys, then ours: the row's measurements and, under their schema
    names, the effective settings (the orchestrator checks them against what it asked for);
    ``noise``: foreign CPU load during the row, when measured (bench)."""
    rec = {"n_kv_max": cfg.n_ctx, "n_batch": cfg.n_batch, "n_ubatch": cfg.n_ubatch,
           "flash_attn": int(model.options.flash_attn), "n_gpu_layers": -1, "n_threads": model.n_threads,
           "n_threads_batch": model.n_threads_batch}
    rec.update(asdict(row))
    echo = effective_settings(model, cfg)
    del echo["tg"]  # the row's own tg field
    rec.update(echo)
    rec["weight_bytes"] = model.weight_bytes_per_token
    if noise is not None:
        rec["noise"] = noise
    return rec


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def warmup(model: Model, cfg: SweepConfig, rng: np.random.Generator) -> None:
    """One ubatch and one TG step (on a non-empty cache), never timed; positions stay < ub so
    that -c == -ub works (ik runs one row there)."""
    n_vocab = model.n_vocab
    model.kv_clear()
    model.eval(rng.integers(0, n_vocab, cfg.n_ubatch), 0, all_logits=False)
    model.kv_truncate(cfg.n_ubatch - 1)
    model.eval(rng.integers(0, n_vocab, 1), cfg.n_ubatch - 1)
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
