"""Progress of an orchestrated run: the events the coordinator emits and the display that shows them.

``run_sweep(..., progress=callback)`` calls ``callback`` with ``ProgressEvent``s: a
``str`` (the plain line, so a callback that prints or collects lines keeps working)
that also carries its facts (``kind`` and ``facts``). ``RunProgress`` turns them into
``engine.progress.ProgressDisplay``: on a terminal an overall bar (points done / total,
ETA from measured row times) and one line per running slot (host/slot, build, the
settings in words, the last row's S_PP / S_TG and noise); otherwise one plain line
per point. It writes to stderr; stdout keeps the tables and the report path.
"""
from __future__ import annotations

import sys
from typing import TextIO

from engine.progress import ProgressDisplay

# Always named for a job, varying or not: what a sweep-bench user reads first.
ALWAYS_SHOWN = ("threads", "threads_batch", "type_k")


class ProgressEvent(str):
    """A progress line that also carries its facts.

    kinds: ``plan`` (total, lanes: {lane: (rows, jobs)}), ``job`` (lane, text, rows),
    ``row`` (lane, text, stats, done, total), ``problem``, ``done``.
    """

    kind: str
    facts: dict

    def __new__(cls, line: str, kind: str, /, **facts) -> "ProgressEvent":
        obj = super().__new__(cls, line)
        obj.kind, obj.facts = kind, facts
        return obj


def settings_in_words(settings: dict, varying=()) -> str:
    """``t=88 tb=128 ctk=q8_0 k_repack=off``: the always-shown settings, then those that vary."""
    from engine.options import describe

    keys = [k for k in ALWAYS_SHOWN if k in settings]
    keys += [k for k in varying if k in settings and k not in keys]
    return describe(settings, keys)


def varying_keys(settings_list: list[dict]) -> list[str]:
    keys = sorted({k for s in settings_list for k in s})
    return [k for k in keys if len({repr(s.get(k)) for s in settings_list}) > 1]


class RunProgress:
    """The callback ``numasweep run`` hands to ``run_sweep``."""

    def __init__(self, stream: TextIO | None = None, live: bool | None = None) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.live = live
        self.display: ProgressDisplay | None = None

    def __call__(self, event: str) -> None:
        kind = getattr(event, "kind", None)
        facts = getattr(event, "facts", {})
        if kind == "plan":
            self.close()
            self.display = ProgressDisplay(facts["total"], title=f"run {facts.get('run_id', '')}".strip(),
                                           stream=self.stream, live=self.live)
            for lane, (rows, jobs) in facts["lanes"].items():
                self.display.plan_lane(lane, rows, jobs)
            self.display.note(str(event))
        elif self.display is None:
            print(event, file=self.stream, flush=True)
        elif kind == "job":
            self.display.start_job(facts["lane"], facts["text"], facts["rows"])
        elif kind == "row":
            self.display.row(facts["lane"], facts["text"], facts["stats"])
        else:
            self.display.note(str(event))
            if kind == "done":
                self.close()

    def close(self) -> None:
        if self.display is not None:
            self.display.close()
            self.display = None
