"""Swappable engine backends behind one small interface, registered by name.

A backend turns a Job into the argv of a child process (run pinned by the
worker) and turns that child's output lines into sweep rows as they appear:

- ``builtin``: ``python -m engine bench ... --output-format jsonl``
- ``external``: an argv template (llama-sweep-bench, llama-bench) parsed with the
  importers' parser, the same one ``numasweep import`` uses
- ``replay``: a child that re-emits recorded (or synthetic) rows; for tests and
  for measuring the orchestrator itself
"""
from __future__ import annotations

from typing import Callable, Protocol

from orchestrator.jobs import Job


class Backend(Protocol):
    name: str
    merge_stderr: bool  # rows may be printed on stderr (ik prints its table there)

    def argv(self, job: Job) -> list[str]: ...

    def row_parser(self) -> Callable[[str], list[dict]]:
        """A stateful function: one output line in, the rows completed by it out."""
        ...


def get(kind: str) -> Backend:
    from orchestrator.backends import builtin, external, replay

    registry = {"builtin": builtin.BuiltinBackend, "external": external.ExternalBackend,
                "replay": replay.ReplayBackend}
    return registry[kind]()
