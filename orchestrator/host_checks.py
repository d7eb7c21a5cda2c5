"""Checks on the discovered hosts before a run exists; what they find goes into the run's settings.

- ``verify_models``: every host reports size and sha256 of each model it will load
  (``orchestrator.model_identity``); a host with other bytes, or none, is excluded with
  one line per problem, the others run. Replay loads no model and checks nothing.
- ``isolation_record``: per host, what keeps Ray's processes and the worker actors off
  the slots' CPUs (``orchestrator.isolation``).

Both are recorded inside the run's settings JSON (``model_identity``, ``isolation``):
the store's schema is unchanged.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

from orchestrator import isolation, model_identity
from orchestrator.jobs import HostInfo, JobFailed
from orchestrator.spec import SpecError


def verify_models(executor, hosts: list[HostInfo], names: list[str], models, needs_models: bool,
                  say: Callable[[str], None]) -> tuple[list[HostInfo], list[str], dict]:
    """(hosts kept, their names, record) after comparing every host's model bytes.
    ``models``: orchestrator.plan.ModelRef tuples (path, name, shape, seed)."""
    if not needs_models or not hosts:
        return hosts, names, {}
    from orchestrator.worker import ensure_model

    own = {}
    for path, name, shape, seed in models:
        try:
            ensure_model(path, shape, seed)  # synthetic: the coordinator's copy is the reference
        except JobFailed as exc:
            raise SpecError(f"model shape {shape!r}: {exc}") from None
        if Path(path).is_file():
            own[name] = model_identity.file_identity(path)
    ask = getattr(executor, "model_identities", None)
    by_key = ask(hosts, models) if ask else {h.key: model_identity.host_report(models) for h in hosts}
    verdict = model_identity.compare(models, own, {n: by_key[h.key] for h, n in zip(hosts, names)})
    for lines in verdict.excluded.values():
        for line in lines:
            say(line)
    keep = [(h, n) for h, n in zip(hosts, names) if n not in verdict.excluded]
    if not keep:
        first = next(iter(verdict.excluded.values()))[0]
        raise SpecError(f"every host was excluded for its model bytes ({first})")
    return [h for h, _ in keep], [n for _, n in keep], {"model_identity": verdict.record()}


def isolation_record(plan) -> dict:
    """Per host name: the node's isolation facts and where each slot's worker actor runs."""
    out: dict[str, dict] = {}
    for host, name, slot in plan:
        if not host.isolation:  # no Ray here (local executor): nothing of Ray's to keep away
            continue
        rec = out.setdefault(name, {**host.isolation, "worker_actor": {}})
        allowed = _cpus(host.isolation.get("allowed_cpus"))
        rec["worker_actor"][slot.name] = isolation.describe(isolation.actor_cpus(slot.cpus, allowed,
                                                                                 host.housekeeping))
    return {"isolation": out} if out else {}


def _cpus(text: str | None) -> tuple[int, ...]:
    from hostprofiles.cpulist import parse_cpulist

    return tuple(parse_cpulist(text)) if text else ()
