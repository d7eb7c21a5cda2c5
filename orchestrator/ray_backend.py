"""Ray at the edge: the only module that imports ray.

- ``start_local()`` starts an embedded single-node Ray on 127.0.0.1 (small object
  store, its own temp dir); ``connect(address)`` joins an existing cluster. These
  are the only places that call ``ray.init``; the caller decides which.
- ``RayExecutor`` is the coordinator's executor: one host agent actor per Ray node
  (node-affinity scheduling) reports that node's host profile; one worker actor per
  placement slot, requesting the slot's CPU count so Ray never oversubscribes a
  node, streams rows back from ``SlotWorker`` (a Ray streaming generator).
- Ray's failures become the plain faults of ``orchestrator.jobs``: a dead actor or
  engine process is ``WorkerLost`` (re-run), a node that left the cluster is
  ``HostLost`` (the run ends partial).

Simulated hosts: a node started with env ``NUMASWEEP_SIM_ROOT=<fake sysfs dir>``
or label ``numasweep-profile=<saved profile name>`` reports that profile (marked
simulated); its slots are pinned onto this machine's real CPUs.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterator

# Read by Ray when it is imported: with RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 Ray 2.60 binds
# every server to the node IP we give (127.0.0.1); without it, to 0.0.0.0 and eth0.
_QUIET_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
for _k, _v in _QUIET_ENV.items():
    os.environ.setdefault(_k, _v)  # inherited by the raylet and workers

import ray  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from orchestrator import reaper  # noqa: E402

class _AuthReminderFilter(logging.Filter):
    """Drops Ray 2.60's token-auth reminder, printed on every ray.init / job client when
    RAY_AUTH_MODE is unset. Ray's choice stands (token auth for a new local cluster, a
    token generated in ~/.ray/auth_token; a token when joining if one is available); the
    README says so once instead of every command."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(("Token authentication is enabled for this Ray cluster",
                                                   "Token authentication is disabled for this Ray cluster"))


logging.getLogger("ray._private.authentication.authentication_token_setup").addFilter(_AuthReminderFilter())

from orchestrator.jobs import HostInfo, HostLost, Job, JobFailed, SlotConfig, WorkerLost  # noqa: E402

SIM_ROOT_ENV = "NUMASWEEP_SIM_ROOT"
PROFILE_LABEL = "numasweep-profile"
# A restarted actor takes the job again from the coordinator, which knows what is
# stored; Ray's own task retry would replay a half-consumed stream, so it stays 0.
MAX_RESTARTS = 3


def start_local(*, num_cpus: int | None = None, temp_dir: str | None = None, object_store_mb: int = 96,
                dashboard: bool = False, dashboard_port: int | None = None) -> LocalRay:
    """Start an embedded Ray on loopback, guarded so that none of it outlives this process."""
    reaper.clean_stale()  # dirs of embedded Rays whose coordinator was killed
    own = None if temp_dir else tempfile.mkdtemp(prefix=reaper.PREFIX)  # short: Ray puts sockets in it
    temp_dir = temp_dir or own
    guard = reaper.guard(temp_dir, remove=own is not None)
    kwargs = {}
    if dashboard_port is not None:
        kwargs["dashboard_port"] = dashboard_port
    try:
        ctx = ray.init(address="local", num_cpus=num_cpus or os.cpu_count(),
                       object_store_memory=object_store_mb * 2**20, _temp_dir=temp_dir,
                       include_dashboard=dashboard, dashboard_host="127.0.0.1", _node_ip_address="127.0.0.1",
                       logging_level=logging.WARNING, log_to_driver=True, **kwargs)
    except BaseException:
        if guard is not None:
            guard.close()  # kills whatever started
        raise
    if guard is not None:
        guard.scan()  # the raylet's agents exist now: record them
    url = ctx.dashboard_url
    return LocalRay(ctx.address_info["gcs_address"], f"http://{url}" if url else None, own, guard)


@dataclasses.dataclass(frozen=True)
class LocalRay:
    gcs_address: str
    dashboard_url: str | None  # None without the dashboard
    temp_dir: str | None       # ours to remove at shutdown (None: the caller's)
    guard: reaper.Guard | None = dataclasses.field(default=None, repr=False, compare=False)


def connect(address: str | None) -> None:
    """Join an existing cluster (``None``: the one this process was started in, e.g. a Ray Job)."""
    ray.init(address=address or "auto", logging_level=logging.WARNING)


def job_client(address: str):
    """A Ray Jobs client (``numasweep submit | status | logs``)."""
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address)


def shutdown(local: LocalRay | None = None) -> None:
    ray.shutdown()
    if local is not None and local.guard is not None:
        local.guard.close()  # kills what ray.shutdown left (the raylet's agents linger for minutes)
    if local is not None and local.temp_dir:
        shutil.rmtree(local.temp_dir, ignore_errors=True)


# -- actors (plain classes, wrapped below) -------------------------------------
class _HostAgent:
    def describe(self) -> dict:
        from hostprofiles import detect, load_profile
        from hostprofiles.cpulist import parse_cpulist

        ctx = ray.get_runtime_context()
        labels = {k: v for k, v in ctx.get_node_labels().items() if not k.startswith("ray.io/")}
        root = os.environ.get(SIM_ROOT_ENV)
        if root:
            profile = detect(root)
        elif labels.get(PROFILE_LABEL):
            profile = dataclasses.replace(load_profile(labels[PROFILE_LABEL]), simulated=True)
        else:
            profile = detect("/")
        try:
            nodes = parse_cpulist(Path("/sys/devices/system/node/online").read_text()) or (0,)
        except OSError:
            nodes = (0,)
        return {"node_id": ctx.get_node_id(), "labels": labels, "profile": profile.to_json(),
                "simulated": profile.simulated, "real_cpus": sorted(os.sched_getaffinity(0)),
                "real_nodes": list(nodes)}


class _SlotActor:
    def __init__(self, slot: SlotConfig) -> None:
        from orchestrator.worker import SlotWorker

        self.worker = SlotWorker(slot)

    def run(self, job: Job) -> Iterator[dict]:
        yield from self.worker.run(job)

    def pid(self) -> int:
        return os.getpid()


HostAgent = ray.remote(num_cpus=0)(_HostAgent)
SlotActor = ray.remote(_SlotActor)


def _on_node(node_id: str) -> NodeAffinitySchedulingStrategy:
    return NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)


def _alive(node_id: str) -> bool:
    return any(n["NodeID"] == node_id and n["Alive"] for n in ray.nodes())


class RayExecutor:
    """The coordinator's executor on a Ray cluster this process is connected to."""

    def __init__(self) -> None:
        self._actors: list = []

    def hosts(self) -> list[HostInfo]:
        from hostprofiles import HostProfile

        nodes = [n for n in ray.nodes() if n["Alive"]]
        agents = [HostAgent.options(scheduling_strategy=_on_node(n["NodeID"])).remote() for n in nodes]
        self._actors += agents
        out = []
        for info in ray.get([a.describe.remote() for a in agents]):
            out.append(HostInfo(key=info["node_id"], profile=HostProfile.from_json(info["profile"]),
                                labels=info["labels"], simulated=info["simulated"],
                                real_cpus=tuple(info["real_cpus"]), real_nodes=tuple(info["real_nodes"])))
        for a in agents:
            ray.kill(a)
        self._actors = [a for a in self._actors if a not in agents]
        return out

    def open_slot(self, host: HostInfo, slot: SlotConfig) -> "_RaySlot":
        need = len(slot.placement["cpus"])  # the host's CPUs (a simulated node offers its profile's count)
        node = next((n for n in ray.nodes() if n["NodeID"] == host.key), None)
        if node is None or not node["Alive"]:
            raise HostLost(f"Ray node {host.key[:8]} ({host.profile.name}) is gone")
        have = node["Resources"].get("CPU", 0)
        if need > have:
            raise JobFailed(f"slot {slot.name} needs {need} CPUs but Ray node {host.key[:8]} "
                            f"({host.profile.name}) offers {have:g} (start Ray with --num-cpus {need})")
        actor = SlotActor.options(num_cpus=need, scheduling_strategy=_on_node(host.key),
                                  max_restarts=MAX_RESTARTS, max_task_retries=0).remote(slot)
        self._actors.append(actor)
        return _RaySlot(actor, host, slot)

    def close(self) -> None:
        for a in self._actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already dead
                pass
        self._actors = []


class _RaySlot:
    def __init__(self, actor, host: HostInfo, slot: SlotConfig) -> None:
        self.actor, self.host, self.slot = actor, host, slot

    def pid(self) -> int:
        return ray.get(self.actor.pid.remote())

    def run(self, job: Job) -> Iterator[dict]:
        try:
            for ref in self.actor.run.remote(job):
                yield ray.get(ref)
        except ray.exceptions.RayTaskError as exc:  # raised inside the worker: re-raise the plain fault
            cause = exc.cause
            if isinstance(cause, (WorkerLost, JobFailed, HostLost)):
                raise type(cause)(*cause.args) from None
            raise JobFailed(f"slot {self.slot.name}: {type(cause).__name__}: {cause}") from None
        except ray.exceptions.ActorUnschedulableError as exc:
            raise HostLost(f"Ray node {self.host.key[:8]} ({self.host.profile.name}) is gone: {exc}") from None
        except ray.exceptions.RayError as exc:  # actor died / unavailable, object lost with its node
            if not _alive(self.host.key):
                raise HostLost(f"Ray node {self.host.key[:8]} ({self.host.profile.name}) left the cluster") from None
            raise WorkerLost(f"slot {self.slot.name}: worker actor died ({type(exc).__name__})") from None

    def close(self) -> None:
        ray.kill(self.actor)
