"""Live progress of sweeps on stderr: rows done / total with an ETA, and what each lane is doing.

A *lane* is one sequence of rows measured one after another: bench's single sweep, or
one pinned slot of an orchestrated run (its jobs run in turn). The ETA comes from
measured times, per lane: the mean wall time between two rows of a job, and the mean
time from a job's start to its first row (model load + warm-up); the run ends when its
slowest lane does.

On a terminal the display is ``rich`` (an overall bar plus one line per running lane),
redrawn only when something happens: no refresh thread runs while a row is timed.
Elsewhere (a pipe, a log file, CI) it prints one plain line per row. It never writes
to stdout, where bench's table and JSONL go.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, TextIO


def format_duration(seconds: float | None) -> str:
    """``1:02:03`` / ``2:03``; ``?`` when unknown."""
    if seconds is None or not math.isfinite(seconds):
        return "?"
    s = max(0, int(round(seconds)))
    h, rem = divmod(s, 3600)
    m, s = divmod(rem, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


def _mean(values: list[float]) -> float | None:
    return math.fsum(values) / len(values) if values else None


@dataclass
class _Lane:
    rows_left: int = 0           # planned rows not measured yet
    jobs_left: int = 0           # planned jobs not started yet
    job_start: float | None = None
    last_row: float | None = None
    intervals: list[float] = field(default_factory=list)  # s between two rows of one job
    startups: list[float] = field(default_factory=list)   # s from a job's start to its first row


class EtaModel:
    """Remaining time from measured row times, per lane; the estimate is the slowest lane's."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.lanes: dict[str, _Lane] = {}

    def plan(self, lane: str, rows: int, jobs: int = 1) -> None:
        ln = self.lanes.setdefault(lane, _Lane())
        ln.rows_left += rows
        ln.jobs_left += jobs

    def job_start(self, lane: str) -> None:
        ln = self.lanes.setdefault(lane, _Lane())
        ln.jobs_left = max(0, ln.jobs_left - 1)
        ln.job_start, ln.last_row = self.clock(), None

    def row(self, lane: str) -> None:
        ln = self.lanes.setdefault(lane, _Lane())
        now = self.clock()
        if ln.last_row is not None:
            ln.intervals.append(now - ln.last_row)
        elif ln.job_start is not None:
            ln.startups.append(now - ln.job_start)
        ln.last_row = now
        ln.rows_left = max(0, ln.rows_left - 1)

    def lane_eta(self, lane: str) -> float | None:
        ln = self.lanes[lane]
        if ln.rows_left == 0:
            return 0.0
        every_interval = [v for x in self.lanes.values() for v in x.intervals]
        every_startup = [v for x in self.lanes.values() for v in x.startups]
        per_row = _mean(ln.intervals) or _mean(every_interval)
        startup = _mean(ln.startups) or _mean(every_startup)
        if per_row is None or (ln.jobs_left and startup is None):
            return None
        rest = ln.rows_left * per_row + ln.jobs_left * (startup or 0.0)
        if ln.job_start is not None and ln.last_row is None and startup is not None:
            rest += max(0.0, startup - (self.clock() - ln.job_start))  # a job still loading
        return rest

    def eta(self) -> float | None:
        """Seconds until every lane is done; None until a row time has been measured."""
        etas = [self.lane_eta(name) for name in self.lanes]
        if not etas:
            return None
        if any(e is None for e in etas):
            return None
        return max(etas)


class ProgressDisplay:
    """Overall bar + per-lane lines (terminal) or one line per row (otherwise), on ``stream``.

    ``live``: None = decide by ``stream.isatty()``. ``redirect_stdout``: with a live
    display, route this process's stdout through it (only when stdout is the same
    terminal, so table lines appear above the bar instead of being overdrawn).
    """

    def __init__(self, total: int, *, title: str = "rows", stream: TextIO | None = None,
                 live: bool | None = None, redirect_stdout: bool = False, width: int | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.total, self.done, self.title = total, 0, title
        self.eta_model = EtaModel(clock)
        self.live = isatty(self.stream) if live is None else live
        self._progress = None
        self._overall = None
        self._lane_tasks: dict[str, int] = {}
        self._lane_text: dict[str, str] = {}
        if self.live:
            self._start_rich(redirect_stdout, width)

    # -- events -------------------------------------------------------------------
    def plan_lane(self, lane: str, rows: int, jobs: int = 1) -> None:
        self.eta_model.plan(lane, rows, jobs)

    def start_job(self, lane: str, text: str, rows: int, show: bool = True) -> None:
        """A job begins on ``lane``: ``text`` says what runs (host/slot, build, settings in words).

        ``show=False``: no line of its own (a single lane: the overall bar says it all)."""
        self.eta_model.job_start(lane)
        if self._progress is not None and show:
            task = self._lane_tasks.get(lane)
            if task is None:
                self._lane_tasks[lane] = self._progress.add_task(text, total=rows, eta="?")
            else:
                self._progress.reset(task, total=rows, description=text, eta="?", visible=True)
            self._lane_text[lane] = text
            self._refresh()

    def row(self, lane: str, text: str, stats: str) -> None:
        """One row measured (and kept) on ``lane``; ``stats`` is its S_PP/S_TG/noise in words."""
        self.done += 1
        self.eta_model.row(lane)
        eta = format_duration(self.eta_model.eta())
        if self._progress is None:
            where = " ".join(x for x in (text, stats) if x)
            self._print(f"[{self.done}/{self.total}] {where} ETA {eta}")
            return
        self._progress.update(self._overall, completed=self.done, eta=eta)
        task = self._lane_tasks.get(lane)
        if task is not None:
            self._progress.update(task, advance=1, description=f"{self._lane_text[lane]}\n  {stats}",
                                  eta=format_duration(self.eta_model.lane_eta(lane)))
        else:  # no line of its own: the last row goes under the overall bar
            self._progress.update(self._overall, description=f"{self.title}\n  {stats}")
        self._refresh()

    def end_job(self, lane: str) -> None:
        task = self._lane_tasks.get(lane)
        if self._progress is not None and task is not None:
            self._progress.update(task, visible=False)
            self._refresh()

    def note(self, line: str) -> None:
        """A line that stays (warnings, failures, the run's start and end)."""
        if self._progress is None:
            self._print(line)
        else:
            self._progress.console.print(line, markup=False, highlight=False)
            self._refresh()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __enter__(self) -> "ProgressDisplay":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # -- output -------------------------------------------------------------------
    def _print(self, line: str) -> None:
        print(line, file=self.stream, flush=True)

    def _refresh(self) -> None:
        self._progress.refresh()

    def _start_rich(self, redirect_stdout: bool, width: int | None) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
        from rich.table import Column

        console = Console(file=self.stream, force_terminal=True, width=width)
        # One row per task: what runs (and, under it, its last row), bar, done/total, elapsed, ETA.
        self._progress = Progress(
            TextColumn("{task.description}", table_column=Column(ratio=1, overflow="fold")),
            BarColumn(bar_width=20), MofNCompleteColumn(), TimeElapsedColumn(), TextColumn("ETA {task.fields[eta]}"),
            console=console, auto_refresh=False, redirect_stdout=redirect_stdout, redirect_stderr=False,
            transient=False, expand=True)
        self._overall = self._progress.add_task(self.title, total=self.total, eta="?")
        self._progress.start()
        self._refresh()


def isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def row_stats(speed_pp: float, speed_tg: float, noise: float | None, n_kv: int | None = None,
              rep: int | None = None) -> str:
    """A row in words: ``n_kv=512 rep=0 S_PP=123.45 S_TG=45.67 t/s noise=3%``."""
    parts = []
    if n_kv is not None:
        parts.append(f"n_kv={n_kv}")
    if rep is not None:
        parts.append(f"rep={rep}")
    parts.append(f"S_PP={speed_pp:.2f} S_TG={speed_tg:.2f} t/s")
    if noise is not None:
        parts.append(f"noise={noise:.0%}")
    return " ".join(parts)
