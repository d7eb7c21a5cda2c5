"""`numasweep fleet`: a simulated multi-host Ray cluster on this machine.

Each simulated host is a real Ray node (``ray start --block``) that reports a saved
host profile through ``NUMASWEEP_SIM_ROOT`` (a ``hostprofiles.materialize`` tree) and
pins its slots onto this machine's real CPUs. Where the machine allows it (root,
iproute2) every host has its own network namespace on a private bridge
(``orchestrator.netns``), so the head is reached over a real interface and workers join
over TCP; elsewhere the nodes share loopback, distinguished by labels and ports, and
``up`` says so. The cluster uses Ray's token authentication: the token is a 0600 file
in the fleet's work directory, given to every node by path.

``up`` records everything it starts or makes in a state file (``fleet_state``);
``down`` stops exactly that (process groups, then every process left in a host's
namespace or carrying the host's environment marker), removes the namespaces, the
bridge and the work directory, and is safe to run twice.

Ray is not imported here: nodes are ``ray start`` processes, and readiness is read
from the head's HTTP API.
"""
from __future__ import annotations

import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from orchestrator import fleet_state, netns, procs
from orchestrator.fleet_state import FleetError, FleetHost, FleetState
from orchestrator.isolation import HOUSEKEEPING_ENV, SLOT_CPUS_ENV
from orchestrator.model_identity import HOME_ENV

RAY = str(Path(sys.executable).with_name("ray"))
OBJECT_STORE_BYTES = 80 * 2**20
HOST_LABEL = "numasweep-host"
FLEET_LABEL = "numasweep-fleet"
# Environment markers: every process a node starts inherits them (HOME_ENV per host), so down
# finds them all.
FLEET_ENV = "NUMASWEEP_FLEET_DIR"
# Settings made for the embedded single-node Ray only; a cluster node must never inherit them.
EMBEDDED_ONLY_ENV = ("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER",)
# Every port fixed, as the README's "Running on a real cluster" recommends (a firewall can then
# open exactly these): in its own namespace each host has them all to itself.
NODE_PORTS = {"node_manager": 6800, "object_manager": 6801, "metrics": 6802, "agent_http": 52365,
              "agent_grpc": 6803, "runtime_env": 6804}
HEAD_PORTS = {"gcs": 6379, "dashboard": 8265, "client": 10001}
WORKER_PORTS = (10002, 10999)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


# -- up ----------------------------------------------------------------------------
def up(profiles: list[str], *, name: str = "default", use_netns: bool | None = None,
       housekeeping: str = "auto", subnet: str | None = None, say: Callable[[str], None] = print,
       ready_timeout: float = 180.0) -> FleetState:
    """Start one Ray node per simulated host (the first is the head); returns the recorded state."""
    from hostprofiles import load_profile, materialize
    from hostprofiles.errors import ProfileError

    fleet_state.check_name(name)
    if not profiles:
        raise FleetError("--simulate needs at least one saved profile name (see `numasweep host list`)")
    try:
        loaded = [load_profile(p) for p in profiles]
    except ProfileError as exc:
        raise FleetError(f"--simulate: {exc}") from None
    if fleet_state.load(name) is not None:
        raise FleetError(f"fleet {name!r} is already up (numasweep fleet status --name {name}; "
                         f"numasweep fleet down --name {name})")
    net = _parse_subnet(subnet)
    hk, slot_cpus, isolation = housekeeping_plan(housekeeping)

    reason = None
    if use_netns is not False:
        reason = netns.unavailable()
        if reason and use_netns:
            raise FleetError(f"--netns: network namespaces are impossible here: {reason}")
    mode = "netns" if reason is None and use_netns is not False else "loopback"
    if use_netns is False:
        reason = "--loopback given"

    workdir = Path(tempfile.mkdtemp(prefix="nswf-"))  # short: Ray puts unix sockets under it
    token = workdir / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)
    state = FleetState(name=name, mode=mode, reason=reason, workdir=str(workdir), token_path=str(token),
                       hosts=(), isolation=isolation, housekeeping=_fmt(hk), created=_now())
    fleet_state.save(state)  # from here on, down can undo whatever was made
    try:
        if mode == "netns":
            tag = secrets.token_hex(2)
            net = net or netns.pick_subnet()
            bridge = f"nswb-{tag}"
            state = replace(state, bridge=bridge, subnet=str(net))
            fleet_state.save(state)
            state = replace(state, gateway=netns.create_bridge(bridge, net))
            fleet_state.save(state)
        names = host_names(profiles)
        for i, (prof, pname, hname) in enumerate(zip(loaded, profiles, names)):
            hdir = workdir / f"h{i}"
            link = None
            if mode == "netns":
                link = netns.create_host(tag, i, state.bridge, ipaddress.ip_network(state.subnet))
            host = FleetHost(name=hname, profile=pname, head=i == 0,
                             address=link.address if link else "127.0.0.1",
                             namespace=link.namespace if link else None, veth=link.veth if link else None,
                             temp_dir=str(hdir / "ray"), sim_root=str(materialize(prof, hdir / "sysfs")),
                             home=str(hdir / "home"), log=str(hdir / "ray.log"), num_cpus=len(prof.cpus),
                             ports=_netns_ports(i == 0) if link else _loopback_ports(i == 0))
            host = replace(host, argv=tuple(_node_argv(host, state, name)),
                           env=_node_env(host, state, slot_cpus))
            Path(host.home).mkdir(parents=True)
            state = replace(state, hosts=state.hosts + (host,))
            fleet_state.save(state)
        say(f"fleet {name}: starting {len(state.hosts)} Ray node(s) ({mode})")
        state = _start(state, state.head, hk)
        fleet_state.save(state)
        _wait_head(state, ready_timeout)
        started = []
        for h in state.hosts[1:]:  # the workers join together
            state, proc, offset = _launch(state, h, hk)
            started.append((h.name, proc, offset))
        for hname, proc, offset in started:
            _wait_started(state.host(hname), proc, offset)
        _wait_nodes(state, len(state.hosts), ready_timeout)
    except BaseException:
        say(f"fleet {name}: start failed; removing what was made")
        down(name, say=lambda _l: None)
        raise
    for line in describe(state):
        say(line)
    return state


def host_names(profiles: list[str]) -> list[str]:
    """Profile names; a repeated one gets -2, -3, ... (they are store host names)."""
    seen: dict[str, int] = {}
    out = []
    for p in profiles:
        seen[p] = seen.get(p, 0) + 1
        out.append(p if seen[p] == 1 else f"{p}-{seen[p]}")
    return out


def _parse_subnet(subnet: str | None) -> ipaddress.IPv4Network | None:
    if subnet is None:
        return None
    try:
        net = ipaddress.ip_network(subnet)
    except ValueError:
        raise FleetError(f"--subnet {subnet!r} is not an IPv4 network like 10.77.3.0/24") from None
    if not isinstance(net, ipaddress.IPv4Network) or net.prefixlen > 28:
        raise FleetError(f"--subnet {subnet!r}: give an IPv4 network of /28 or larger")
    return net


def housekeeping_plan(spec: str, allowed: set[int] | None = None) -> tuple[set[int], set[int] | None, str]:
    """(housekeeping CPUs, CPUs left for slots or None, one line saying what is done).

    ``auto`` reserves the highest allowed CPU for Ray's own processes (and the worker
    actors) when at least 4 CPUs are allowed; fewer, and reserving one would take a large
    share of what the slots measure with, so nothing is reserved and the line says so.
    """
    from hostprofiles.cpulist import format_cpulist, parse_cpulist
    from hostprofiles.errors import ProfileError

    allowed = set(os.sched_getaffinity(0)) if allowed is None else allowed
    if spec == "none":
        return set(), None, "none: Ray's processes share the slots' CPUs (--housekeeping-cpus none)"
    if spec == "auto":
        if len(allowed) < 4:
            return set(), None, (f"none: {len(allowed)} CPU(s) allowed here, too few to reserve a housekeeping "
                                 "CPU; Ray's processes share the slots' CPUs (rows' noise shows their cost)")
        hk = {max(allowed)}
    else:
        try:
            hk = set(parse_cpulist(spec))
        except ProfileError:
            raise FleetError(f"--housekeeping-cpus {spec!r}: not a CPU list (allowed: auto, none, or like 0 or 6-7)") from None
        if not hk <= allowed or not allowed - hk:
            raise FleetError(f"--housekeeping-cpus {spec!r}: must be a proper subset of the CPUs allowed here "
                             f"({format_cpulist(sorted(allowed))})")
    rest = allowed - hk
    return hk, rest, (f"housekeeping CPU(s) {format_cpulist(sorted(hk))}: Ray's processes and the worker actors "
                      f"run there; slots use {format_cpulist(sorted(rest))}")


def _fmt(cpus: set[int] | None) -> str | None:
    from hostprofiles.cpulist import format_cpulist

    return format_cpulist(sorted(cpus)) if cpus else None


def _netns_ports(head: bool) -> dict:
    return {**NODE_PORTS, **(HEAD_PORTS if head else {})}


def _loopback_ports(head: bool) -> dict:
    names = list(NODE_PORTS) + (list(HEAD_PORTS) if head else [])
    return dict(zip(names, free_ports(len(names))))


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _node_argv(host: FleetHost, state: FleetState, fleet: str) -> list[str]:
    p = host.ports
    labels = {HOST_LABEL: host.name, FLEET_LABEL: fleet}
    argv = [RAY, "start", "--block", f"--node-ip-address={host.address}", f"--num-cpus={host.num_cpus}",
            f"--object-store-memory={OBJECT_STORE_BYTES}", f"--temp-dir={host.temp_dir}", "--disable-usage-stats",
            f"--labels={json.dumps(labels)}"]
    if host.head:
        argv += ["--head", f"--port={p['gcs']}", f"--dashboard-host={host.address}",
                 f"--dashboard-port={p['dashboard']}", "--include-dashboard=true",
                 f"--ray-client-server-port={p['client']}"]
    else:
        head = state.head
        argv += [f"--address={head.address}:{head.ports['gcs']}"]
    argv += [f"--node-manager-port={p['node_manager']}", f"--object-manager-port={p['object_manager']}",
             f"--metrics-export-port={p['metrics']}", f"--dashboard-agent-listen-port={p['agent_http']}",
             f"--dashboard-agent-grpc-port={p['agent_grpc']}", f"--runtime-env-agent-port={p['runtime_env']}"]
    # One network stack shared by every node (loopback): workers take ports the kernel gives them.
    lo, hi = WORKER_PORTS if state.mode == "netns" else (0, 0)
    argv += [f"--min-worker-port={lo}", f"--max-worker-port={hi}"]
    return netns.exec_argv(host.namespace, argv) if host.namespace else argv


def _node_env(host: FleetHost, state: FleetState, slot_cpus: set[int] | None) -> dict:
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": state.token_path, "RAY_USAGE_STATS_ENABLED": "0",
           "NUMASWEEP_SIM_ROOT": host.sim_root, HOME_ENV: host.home, FLEET_ENV: state.workdir}
    if state.housekeeping:
        env[HOUSEKEEPING_ENV] = state.housekeeping
        env[SLOT_CPUS_ENV] = _fmt(slot_cpus)
    return env


def _process_env(host: FleetHost) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in EMBEDDED_ONLY_ENV and k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env.update(host.env)
    return env


def _start(state: FleetState, host: FleetHost, housekeeping: set[int] | None = None) -> FleetState:
    """Launch the host's `ray start --block` in its own process group; wait for its 'started' line."""
    state, proc, offset = _launch(state, host, housekeeping)
    _wait_started(state.host(host.name), proc, offset)
    return state


def _launch(state: FleetState, host: FleetHost,
            housekeeping: set[int] | None = None) -> tuple[FleetState, subprocess.Popen, int]:
    """Start the node; returns the state with its PID, the process and where its output starts in
    the host's log (a restart appends to it)."""
    hk = housekeeping if housekeeping is not None else _parse(state.housekeeping)
    preexec = (lambda: os.sched_setaffinity(0, hk)) if hk else None  # Ray's processes inherit it
    log = open(host.log, "ab")
    offset = log.tell()
    try:
        # cwd: the host's own directory, so that `python -m orchestrator...` in its workers finds the
        # installed package, never a checkout that happens to be the caller's current directory.
        proc = subprocess.Popen(list(host.argv), env=_process_env(host), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=preexec,
                                cwd=Path(host.home).parent)
    finally:
        log.close()
    state = state.with_host(replace(host, pid=proc.pid))
    fleet_state.save(state)
    return state, proc, offset


def _wait_started(host: FleetHost, proc: subprocess.Popen, offset: int, timeout: float = 180.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with open(host.log, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
        if "Ray runtime started" in text:
            return
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = " | ".join(text.strip().splitlines()[-3:])
            raise FleetError(f"host {host.name}: `ray start` {'exited' if proc.poll() is not None else 'timed out'}"
                             f" ({host.log}): {tail[-400:]}")
        time.sleep(0.3)


def _parse(cpus: str | None) -> set[int]:
    from hostprofiles.cpulist import parse_cpulist

    return set(parse_cpulist(cpus)) if cpus else set()


def _api(state: FleetState, path: str, timeout: float = 5.0):
    token = Path(state.token_path).read_text().strip()
    req = urllib.request.Request(state.dashboard_url + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        return json.loads(resp.read().decode())


def alive_nodes(state: FleetState) -> list[dict]:
    """The head's view of the cluster's live nodes (node IP, node id, labels)."""
    data = _api(state, "/nodes?view=summary")
    out = []
    for n in data.get("data", {}).get("summary", []):
        raylet = n.get("raylet", {})
        if raylet.get("state") == "ALIVE":
            out.append({"ip": raylet.get("nodeManagerAddress"), "node_id": raylet.get("nodeId"),
                        "labels": raylet.get("labels", {})})
    return out


def _wait_head(state: FleetState, timeout: float) -> None:
    _until(lambda: _api(state, "/api/version") is not None, timeout, f"the head's dashboard at {state.dashboard_url}")


def _wait_nodes(state: FleetState, n: int, timeout: float) -> None:
    _until(lambda: len(alive_nodes(state)) >= n, timeout, f"{n} node(s) registered with the head")


def _host_nodes(state: FleetState, host: str) -> list[str]:
    return [x["node_id"] for x in alive_nodes(state) if x["labels"].get(HOST_LABEL) == host]


def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except (OSError, urllib.error.URLError, ValueError) as exc:
            last = exc
        time.sleep(0.5)
    raise FleetError(f"timed out after {timeout:.0f} s waiting for {what}" + (f" ({last})" if last else ""))


# -- status / lines -------------------------------------------------------------------
def _mode_line(state: FleetState) -> str:
    if state.mode == "netns":
        return (f"fleet {state.name}: {len(state.hosts)} simulated host(s), each in its own network namespace "
                f"on bridge {state.bridge} ({state.subnet}; this machine is {state.gateway})")
    return (f"fleet {state.name}: loopback, no network namespaces ({state.reason}); "
            f"{len(state.hosts)} simulated host(s) share this machine's network stack, told apart by labels and "
            "ports, and Ray's servers listen on all of this machine's interfaces (the token guards them)")


def describe(state: FleetState) -> list[str]:
    lines = [_mode_line(state)]
    for h in state.hosts:
        where = f"netns {h.namespace}" if h.namespace else "loopback"
        alive = "up" if procs.pid_alive(h.pid) else "DOWN"
        lines.append(f"  {h.name:<24} {'head' if h.head else 'node':<4} {h.address:<15} {where:<16} "
                     f"{h.num_cpus:>4} CPUs  pid {h.pid}  {alive}")
    if procs.pid_alive(state.head.pid):
        try:
            seen = {n["labels"].get(HOST_LABEL) for n in alive_nodes(state)}
            lines.append(f"the head counts {len(seen & {h.name for h in state.hosts})} of {len(state.hosts)} "
                         "host(s) alive")
        except (OSError, ValueError):
            lines.append(f"the head's API at {state.dashboard_url} does not answer")
    lines += [f"isolation: {state.isolation}",
              f"token:  {state.token_path} (numasweep fleet token --name {state.name})",
              f"run:    numasweep run SPEC --address {state.run_address}",
              f"submit: numasweep submit SPEC --address {state.dashboard_url}",
              f"down:   numasweep fleet down --name {state.name}"]
    return lines


def status(name: str) -> FleetState:
    state = fleet_state.load(name)
    if state is None:
        raise FleetError(f"no fleet {name!r} is up (numasweep fleet up --simulate PROFILE,...)")
    return state


# -- stop / start one host (host loss and return) ------------------------------------
def stop_host(name: str, host_name: str, say: Callable[[str], None] = print, wait: bool = True) -> None:
    """Kill one simulated host's Ray node and everything it started (a lost host)."""
    state = status(name)
    host = state.host(host_name)
    if host.head:
        raise FleetError(f"host {host_name} is the head: stopping it ends the cluster (numasweep fleet down)")
    t0 = time.monotonic()
    n = _kill_host(host, grace=0)
    state = state.with_host(replace(host, pid=None))
    fleet_state.save(state)
    say(f"fleet {name}: host {host_name} stopped ({n} process(es) killed)")
    if wait:  # the head's health check takes its time; until then the node counts as alive
        _until(lambda: not _host_nodes(state, host_name), 120, f"the head to see host {host_name} gone")
        say(f"fleet {name}: the head marked {host_name} dead after {time.monotonic() - t0:.0f} s")


def start_host(name: str, host_name: str, say: Callable[[str], None] = print, timeout: float = 120.0) -> None:
    """Start a stopped host again (same namespace, profile and labels; a new Ray node id)."""
    state = status(name)
    host = state.host(host_name)
    if procs.pid_alive(host.pid):
        raise FleetError(f"host {host_name} is running (pid {host.pid})")
    if host.head:
        raise FleetError(f"host {host_name} is the head: bring the whole fleet down and up again")
    old = set(_host_nodes(state, host_name))
    if old:
        raise FleetError(f"host {host_name} is still alive in the head's view (node {sorted(old)[0][:8]}); "
                         "wait for the head to mark it dead")
    state = _start(state, host)
    fleet_state.save(state)
    _until(lambda: bool(_host_nodes(state, host_name)), timeout, f"host {host_name} registered with the head")
    say(f"fleet {name}: host {host_name} is back (pid {state.host(host_name).pid})")


# -- down ------------------------------------------------------------------------------
def down(name: str, say: Callable[[str], None] = print) -> bool:
    """Stop everything fleet ``name`` started and remove what it made; False if nothing was up."""
    state = fleet_state.load(name)
    if state is None:
        say(f"fleet {name}: nothing to do (no fleet of that name is up)")
        return False
    killed = 0
    for host in reversed(state.hosts):  # workers first, head last
        killed += _kill_host(host)
    killed += procs.kill_marked(FLEET_ENV, state.workdir)  # e.g. a job driver that left its host's group
    removed, problems = [], []
    for host in state.hosts:
        try:
            if host.namespace and netns.remove_namespace(host.namespace):
                removed.append(host.namespace)
            if host.veth:
                netns.remove_link(host.veth)
        except netns.NetnsError as exc:  # keep going: everything else must still go
            problems.append(str(exc))
    if state.bridge and netns.remove_link(state.bridge):
        removed.append(state.bridge)
    shutil.rmtree(state.workdir, ignore_errors=True)
    if problems:  # keep the state file: `down` again retries what is left
        raise FleetError(f"fleet {name}: down incomplete: {'; '.join(problems)}")
    fleet_state.remove(name)
    say(f"fleet {name}: down ({killed} process(es) stopped"
        + (f"; removed {', '.join(removed)}" if removed else "") + f"; removed {state.workdir})")
    return True


def _kill_host(host: FleetHost, grace: float = 2.0) -> int:
    """SIGTERM the node's process group (none with ``grace`` 0: a host that crashes), then SIGKILL what
    is left of it, of its namespace and of its environment marker."""
    n = 0
    if host.pid and procs.pid_alive(host.pid):
        try:
            os.killpg(host.pid, signal.SIGTERM if grace else signal.SIGKILL)
            n += 1
        except (ProcessLookupError, PermissionError):
            pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and procs.group_alive(host.pid):
            time.sleep(0.1)
        try:
            os.killpg(host.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    if host.namespace:
        for pid in netns.namespace_pids(host.namespace):
            n += procs.kill(pid)
    n += procs.kill_marked(HOME_ENV, host.home)
    return n
