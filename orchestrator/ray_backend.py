"""Ray at the edge: the only module that imports ray.

- ``start_local()`` starts an embedded single-node Ray on 127.0.0.1 (small object
  store, its own temp dir); ``connect(address)`` joins an existing cluster. These
  are the only places that call ``ray.init``; the caller decides which.
- ``RayExecutor`` is the coordinator's executor: one host agent actor per Ray node
  (node-affinity scheduling) reports that node's host profile, isolation facts and
  model identities; one worker actor per placement slot, requesting the slot's CPU
  count so Ray never oversubscribes a node, runs ``SlotWorker`` in a thread and hands
  rows over as the coordinator pulls them (``start`` / ``take``: works through Ray
  Client too, which has no streaming generators).
- Ray's failures become the plain faults of ``orchestrator.jobs``: a dead actor or
  engine process is ``WorkerLost`` (re-run), a node that left the cluster is
  ``HostLost`` (the run ends partial).

Simulated hosts: a node started with env ``NUMASWEEP_SIM_ROOT=<fake sysfs dir>``
or label ``numasweep-profile=<saved profile name>`` reports that profile (marked
simulated); its slots are pinned onto this machine's real CPUs.

Environment: settings made for the embedded Ray (loopback only) are applied while it
starts and to its processes alone, never to a cluster's nodes or coordinators (one of
them forbids multi-node clusters). ``connect()`` to a GCS address drops them from this
process and follows the local raylet's address instead; inside a Ray Job the node's
environment stands. A cluster address of a local fleet brings that fleet's token
(``cluster_auth``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import queue
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Iterator

os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # inherited by the raylet and workers

import ray  # noqa: E402
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy  # noqa: E402

from orchestrator import cluster_auth, isolation, reaper  # noqa: E402
from orchestrator.errors import NumasweepError  # noqa: E402


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
# With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 Ray 2.60 binds every server of a node to the IP
# it is given (127.0.0.1); without it, to 0.0.0.0 and eth0. It also makes `ray start
# --address` refuse to join a cluster: it is for the embedded single-node Ray only.
EMBEDDED_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
TAKE_S = 1.0        # a worker actor's take() waits this long for rows before answering
LIVENESS_S = 5.0    # a call unanswered this long makes the coordinator ask whether the node lives
NODE_VERDICT_S = 30.0  # Ray's default health check declares a silent node dead after ~15-20 s


class ClusterError(NumasweepError):
    """The cluster at an address cannot be used from here (not a node, refused, unreachable)."""


@contextlib.contextmanager
def _embedded_env() -> Iterator[None]:
    """EMBEDDED_ENV in force while the embedded Ray starts: its processes inherit it, nobody else.
    Ray read the variable into a constant when it was imported; this process's copy follows too."""
    from ray._private import ray_constants

    saved = {k: os.environ.get(k) for k in EMBEDDED_ENV}
    flag = ray_constants.ENABLE_RAY_CLUSTER
    os.environ.update(EMBEDDED_ENV)
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = flag
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _driver_for(node_ip: str) -> None:
    """Make this driver find the local raylet at ``node_ip``, whatever this process's environment says.

    Ray turns 127.0.0.1 into the machine's outward address unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
    was read at import: a node started on loopback (the embedded setting) needs the flag off, a node
    of a real cluster needs it on. The variable itself leaves this process's environment, so nothing
    started from here inherits it."""
    import ipaddress

    from ray._private import ray_constants

    for k in EMBEDDED_ENV:
        os.environ.pop(k, None)
    ray_constants.ENABLE_RAY_CLUSTER = not ipaddress.ip_address(node_ip).is_loopback


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
        with _embedded_env():
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


def connect(address: str | None) -> str | None:
    """Join an existing cluster (``None``: the one this process was started in, e.g. a Ray Job).

    ``ray://HOST:PORT`` is Ray Client, usable from outside the cluster; ``HOST:PORT`` (the GCS)
    only from a node of the cluster: elsewhere Ray waits for a local raylet that never comes, so
    that is refused at once, saying how to run instead. Returns a line to show (whose token), if any.
    """
    note = cluster_auth.apply(address)
    _reload_auth()
    if address and address.startswith("ray://"):
        check_client(address)
        for attempt in (1, 2):  # the head's per-client server now and then fails to start: once more
            try:
                ray.init(address=address, logging_level=logging.WARNING)
                break
            except ConnectionError as exc:
                if attempt == 2:
                    raise ClusterError(f"--address {address}: Ray Client did not connect "
                                       f"({' '.join(str(exc).split())[-300:]})") from None
    elif address and address not in ("auto", "local"):
        node_ip = check_on_node(address)
        _driver_for(node_ip)
        ray.init(address=address, _node_ip_address=node_ip, logging_level=logging.WARNING)
    else:  # inside a Ray Job or on a node: the environment the node gave us is the right one
        ray.init(address="auto", logging_level=logging.WARNING)
    return note


def _reload_auth() -> None:
    """Make Ray re-read RAY_AUTH_MODE and the token (it caches both; Ray's own token setup does this)."""
    from ray._raylet import AuthenticationTokenLoader, Config

    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ClusterError(f"--address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    return host.strip("[]"), int(port)


def _how_to(address: str) -> str:
    host = _split(address.removeprefix("ray://"))[0]
    return (f"run numasweep on a node of the cluster, submit it as a Ray Job (numasweep submit SPEC --address "
            f"http://{host}:8265), or use Ray Client (--address ray://{host}:10001)")


def check_on_node(address: str) -> str:
    """The node IP of a raylet of the cluster at GCS ``address`` running here, with an address of this
    host (network namespace); refused when there is none."""
    import psutil

    host, port = _split(address)
    try:
        gcs_ips = {a[4][0] for a in socket.getaddrinfo(host, port, socket.AF_INET)}
    except OSError as exc:
        raise ClusterError(f"--address {address}: cannot resolve {host}: {exc}") from None
    local = {a.address for addrs in psutil.net_if_addrs().values() for a in addrs if a.family == socket.AF_INET}
    for proc in psutil.process_iter(["name", "cmdline"]):
        if proc.info["name"] != "raylet":
            continue
        args = dict(a.split("=", 1) for a in proc.info["cmdline"] or () if a.startswith("--") and "=" in a)
        gcs_host, _, gcs_port = args.get("--gcs-address", "").rpartition(":")
        node_ip = args.get("--node_ip_address", args.get("--node-ip-address"))
        if gcs_port == str(port) and node_ip in local and (gcs_host in gcs_ips or gcs_ips <= local):
            return node_ip
    raise ClusterError(f"--address {address}: this machine is not a node of that Ray cluster (no raylet of it "
                       f"runs here), so a coordinator here cannot join it by its GCS address: {_how_to(address)}")


def check_client(address: str, timeout: float = 10.0) -> None:
    """Ask the Ray Client server at ``address`` whether it takes us, in one short call."""
    import grpc

    target = address.removeprefix("ray://")
    _split(target)
    token = cluster_auth.token(address)
    meta = [("authorization", f"Bearer {token}")] if token else []
    with grpc.insecure_channel(target) as channel:
        call = channel.unary_unary("/ray.rpc.RayletDriver/ClusterInfo", request_serializer=lambda b: b,
                                   response_deserializer=lambda b: b)
        try:
            call(b"", timeout=timeout, metadata=meta)
        except grpc.RpcError as exc:
            code = exc.code()
            if code == grpc.StatusCode.UNAUTHENTICATED:
                why = "the token given is wrong" if token else "no token given" + (
                    " (RAY_AUTH_MODE is 'disabled')" if os.environ.get("RAY_AUTH_MODE", "") == "disabled" else "")
                raise ClusterError(
                    f"--address {address}: refused: {why}; this cluster uses Ray token auth: set RAY_AUTH_MODE=token "
                    "and RAY_AUTH_TOKEN_PATH or RAY_AUTH_TOKEN (e.g. from `numasweep fleet token`)") from None
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                raise ClusterError(f"--address {address}: no Ray Client server answers there "
                                   f"({exc.details()})") from None
            # Any other answer came from a server that accepted us (an empty request is not a query).


def job_client(address: str):
    """A Ray Jobs client (``numasweep submit | status | logs``); PermissionError when the cluster
    refuses our token."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    try:
        return JobSubmissionClient(address)
    except AuthenticationError as exc:
        raise PermissionError(str(exc).splitlines()[0]) from None


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
                "simulated": profile.simulated, "real_cpus": list(isolation.slot_cpus()),
                "real_nodes": list(nodes), "machine": _boot_id(), "housekeeping": list(isolation.housekeeping()),
                "isolation": isolation.facts()}

    def model_identity(self, models: list) -> list[dict]:
        from orchestrator.model_identity import host_report

        return host_report(models)


def _boot_id() -> str:
    """This machine's identity: nodes that share it share the real CPUs."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return socket.gethostname()


class _SlotActor:
    """One slot's worker. Rows are pulled (``start`` then ``take`` until done) rather than
    streamed: Ray Client, the way in from outside a cluster, has no streaming generators."""

    def __init__(self, slot: SlotConfig, actor_cpus: tuple[int, ...]) -> None:
        from orchestrator.worker import SlotWorker

        isolation.move_process(actor_cpus)  # off the slot's CPUs when there is anywhere else to be
        self.worker = SlotWorker(slot)
        self.events: queue.Queue = queue.Queue()

    def start(self, job: Job) -> None:
        self.events = events = queue.Queue()

        def run() -> None:
            try:
                for ev in self.worker.run(job):
                    events.put(("row", ev))
                events.put(("end", None))
            except BaseException as exc:  # noqa: BLE001 - handed to the coordinator by take()
                events.put(("error", exc))
        threading.Thread(target=run, daemon=True, name="slot-job").start()

    def take(self, timeout: float) -> tuple[list[dict], bool]:
        """Rows measured since the last call (waiting up to ``timeout`` for the first), and whether
        the job is over; the job's fault is raised once its rows before it were taken."""
        rows: list[dict] = []
        try:
            item = self.events.get(timeout=timeout)
        except queue.Empty:
            return rows, False
        while True:
            kind, payload = item
            if kind == "row":
                rows.append(payload)
            elif kind == "end":
                return rows, True
            elif rows:  # error: deliver the rows first, the fault on the next call
                self.events.put(item)
                return rows, False
            else:
                raise payload
            try:
                item = self.events.get_nowait()
            except queue.Empty:
                return rows, False

    def pid(self) -> int:
        return os.getpid()

    def affinity(self) -> list[int]:
        return sorted(os.sched_getaffinity(0))


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
        for node, ref in zip(nodes, [a.describe.remote() for a in agents]):
            try:  # a node that dies before it answers is not a host of this run
                info = _get(ref, node["NodeID"], node["NodeManagerAddress"])
            except HostLost:
                continue
            out.append(HostInfo(key=info["node_id"], profile=HostProfile.from_json(info["profile"]),
                                labels=info["labels"], simulated=info["simulated"],
                                real_cpus=tuple(info["real_cpus"]), real_nodes=tuple(info["real_nodes"]),
                                machine=info["machine"], housekeeping=tuple(info["housekeeping"]),
                                isolation=info["isolation"]))
        self._drop(agents)
        return out

    def model_identities(self, hosts: list[HostInfo], models) -> dict[str, list[dict]]:
        """Each host's report of the models it will load (generated there first if synthetic)."""
        agents = [HostAgent.options(scheduling_strategy=_on_node(h.key)).remote() for h in hosts]
        self._actors += agents
        try:
            refs = [a.model_identity.remote([list(m) for m in models]) for a in agents]
            out = {}
            for host, ref in zip(hosts, refs):
                try:
                    out[host.key] = _get(ref, host.key, host.profile.name)
                except HostLost as exc:
                    out[host.key] = [{"model": m[1], "path": m[0], "error": str(exc)} for m in models]
            return out
        finally:
            self._drop(agents)

    def _drop(self, actors: list) -> None:
        for a in actors:
            ray.kill(a)
        self._actors = [a for a in self._actors if a not in actors]

    def open_slot(self, host: HostInfo, slot: SlotConfig) -> "_RaySlot":
        need = len(slot.placement["cpus"])  # the host's CPUs (a simulated node offers its profile's count)
        node = next((n for n in ray.nodes() if n["NodeID"] == host.key), None)
        if node is None or not node["Alive"]:
            raise HostLost(f"Ray node {host.key[:8]} ({host.profile.name}) is gone")
        have = node["Resources"].get("CPU", 0)
        if need > have:
            raise JobFailed(f"slot {slot.name} needs {need} CPUs but Ray node {host.key[:8]} "
                            f"({host.profile.name}) offers {have:g} (start Ray with --num-cpus {need})")
        allowed = tuple(int(c) for c in _cpulist(host.isolation.get("allowed_cpus")))
        actor = SlotActor.options(num_cpus=need, scheduling_strategy=_on_node(host.key),
                                  max_restarts=MAX_RESTARTS, max_task_retries=0).remote(
            slot, isolation.actor_cpus(slot.cpus, allowed, host.housekeeping))
        self._actors.append(actor)
        return _RaySlot(actor, host, slot)

    def close(self) -> None:
        for a in self._actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already dead
                pass
        self._actors = []


def _cpulist(text: str | None) -> tuple[int, ...]:
    from hostprofiles.cpulist import parse_cpulist

    return tuple(parse_cpulist(text)) if text else ()


def _get(ref, node_id: str, name: str):
    """ray.get that notices a node gone from the cluster instead of waiting for it forever."""
    while True:
        try:
            return ray.get(ref, timeout=LIVENESS_S)
        except ray.exceptions.GetTimeoutError:
            if not _alive(node_id):
                raise HostLost(f"Ray node {node_id[:8]} ({name}) left the cluster") from None


class _RaySlot:
    def __init__(self, actor, host: HostInfo, slot: SlotConfig) -> None:
        self.actor, self.host, self.slot = actor, host, slot

    def pid(self) -> int:
        return ray.get(self.actor.pid.remote())

    def run(self, job: Job) -> Iterator[dict]:
        try:
            _get(self.actor.start.remote(job), self.host.key, self.host.profile.name)
            while True:
                rows, done = _get(self.actor.take.remote(TAKE_S), self.host.key, self.host.profile.name)
                yield from rows
                if done:
                    return
        except ray.exceptions.RayTaskError as exc:  # raised inside the worker: re-raise the plain fault
            cause = exc.cause
            if isinstance(cause, (WorkerLost, JobFailed, HostLost)):
                raise type(cause)(*cause.args) from None
            raise JobFailed(f"slot {self.slot.name}: {type(cause).__name__}: {cause}") from None
        except ray.exceptions.ActorUnschedulableError as exc:
            raise HostLost(f"Ray node {self.host.key[:8]} ({self.host.profile.name}) is gone: {exc}") from None
        except ray.exceptions.RayError as exc:  # actor died / unavailable, object lost with its node
            # Unavailable (not dead): its node may be gone, which the head learns only after its health
            # check gives up; wait for that verdict rather than retrying on a dead node.
            wait = NODE_VERDICT_S if isinstance(exc, ray.exceptions.ActorUnavailableError) else 0
            if self._node_gone(wait):
                raise HostLost(f"Ray node {self.host.key[:8]} ({self.host.profile.name}) left the cluster") from None
            raise WorkerLost(f"slot {self.slot.name}: worker actor died ({type(exc).__name__})") from None

    def _node_gone(self, wait: float) -> bool:
        """True once the cluster counts the node dead; False as soon as the (restarted) actor answers,
        or if the node still counts alive after ``wait`` seconds."""
        deadline = time.monotonic() + wait
        while True:
            if not _alive(self.host.key):
                return True
            if time.monotonic() >= deadline:
                return False
            try:
                ray.get(self.actor.pid.remote(), timeout=1.0)
                return False
            except ray.exceptions.GetTimeoutError:
                pass
            except ray.exceptions.RayError:
                time.sleep(1.0)

    def close(self) -> None:
        ray.kill(self.actor)
