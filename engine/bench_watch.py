"""What ``bench`` does around the sweep: foreign-load noise per row, progress and warnings on stderr.

``BenchWatch(cfg).rows(sweep(model, cfg))`` yields ``(row, noise)`` as the sweep yields
rows: ``noise`` is the fraction of this process's CPUs that other processes used since
the previous row (engine.noise, the same measure the orchestrator stores per point).
A row above the threshold gets a warning line; rows done / total and the ETA are shown
as they land. Everything goes to stderr: stdout keeps the table / JSONL only.
"""
from __future__ import annotations

import sys
from typing import Iterable, Iterator, TextIO

from engine.noise import NOISE_WARN, noise_warning, self_meter
from engine.progress import ProgressDisplay, isatty, row_stats
from engine.sweep import SweepConfig, SweepRow

LANE = "bench"


def timed_rows(cfg: SweepConfig) -> int:
    """Rows the sweep yields: every ``stride``-th depth, ``nrep`` times each."""
    depths = len(range(0, cfg.n_ctx, cfg.n_ubatch))
    return len(range(0, depths, cfg.stride)) * cfg.nrep


class BenchWatch:
    def __init__(self, cfg: SweepConfig, *, stream: TextIO | None = None, live: bool | None = None,
                 threshold: float = NOISE_WARN) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.threshold = threshold
        self.total = timed_rows(cfg)
        stdout_tty = isatty(sys.stdout)
        self.display = ProgressDisplay(self.total, title="bench", stream=self.stream, live=live,
                                       redirect_stdout=stdout_tty)
        self.noisy: list[float] = []
        self.max_noise = 0.0
        self._closed = False

    def rows(self, rows: Iterable[SweepRow]) -> Iterator[tuple[SweepRow, float]]:
        meter = self_meter()  # after the model load: the first lap covers warm-up + row 0
        self.display.plan_lane(LANE, self.total)
        self.display.start_job(LANE, "sweep", self.total, show=False)
        try:
            for row in rows:
                noise = meter.lap()
                self.max_noise = max(self.max_noise, noise)
                self.display.row(LANE, "", row_stats(row.speed_pp, row.speed_tg, noise, row.n_kv, row.rep))
                warning = noise_warning(noise, f"row n_kv={row.n_kv} rep={row.rep}", self.threshold)
                if warning:
                    self.noisy.append(noise)
                    self.display.note(warning)
                yield row, noise
        finally:
            self.close()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self.noisy:
            self.display.note(f"warning: {len(self.noisy)} of {self.display.done} rows were measured while other "
                              f"processes used more than {self.threshold:.0%} of this run's CPUs (max "
                              f"{self.max_noise:.0%}): rerun on a quiet machine, or pin it with `numasweep run`")
        self.display.close()

