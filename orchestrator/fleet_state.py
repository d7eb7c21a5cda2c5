"""The state file of a simulated fleet: what `fleet up` started, so `down` stops exactly that.

One JSON file per fleet name under ``state_root()/fleets/`` (stamped with a version;
unknown versions are refused). It lists every host with its PID, namespace, veth,
address, ports and directories, the bridge, the work directory and the token file.
Plain data: reading it imports neither Ray nor iproute2.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

from orchestrator.errors import NumasweepError

VERSION = 1
_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


class FleetError(NumasweepError):
    """A fleet command cannot do what was asked (bad name, no such fleet, nothing to start)."""


def state_root() -> Path:
    env = os.environ.get("NUMASWEEP_STATE_DIR")
    return Path(env) if env else Path.home() / ".local/state/numasweep"


def check_name(name: str) -> str:
    if not _NAME.match(name):
        raise FleetError(f"--name {name!r}: use 1-32 lowercase letters, digits, '-', '_'")
    return name


@dataclass(frozen=True)
class FleetHost:
    name: str                  # store host name (label numasweep-host)
    profile: str               # saved profile it simulates
    head: bool
    address: str               # node IP (namespace address, or 127.0.0.1)
    namespace: str | None      # None on loopback
    veth: str | None
    temp_dir: str              # Ray's --temp-dir for this node
    sim_root: str              # materialized fake sysfs (NUMASWEEP_SIM_ROOT)
    home: str                  # per-host models and hash cache
    log: str
    num_cpus: int
    ports: dict = field(default_factory=dict)  # name -> port (loopback: all explicit)
    pid: int | None = None     # `ray start --block`, leader of its own process group
    argv: tuple[str, ...] = ()
    env: dict = field(default_factory=dict)    # what this node's processes were given on top of ours


@dataclass(frozen=True)
class FleetState:
    name: str
    mode: str                  # netns | loopback
    reason: str | None         # why loopback (None with netns)
    workdir: str               # everything on disk the fleet made (removed by down)
    token_path: str
    hosts: tuple[FleetHost, ...]
    bridge: str | None = None
    subnet: str | None = None
    gateway: str | None = None  # this machine's address on the bridge
    isolation: str = ""         # what was done to keep Ray off the slots' CPUs
    housekeeping: str | None = None  # CPU list reserved for Ray's processes, if any
    created: str = ""

    @property
    def head(self) -> FleetHost:
        return next(h for h in self.hosts if h.head)

    @property
    def gcs_address(self) -> str:
        return f"{self.head.address}:{self.head.ports['gcs']}"

    @property
    def client_address(self) -> str:
        return f"ray://{self.head.address}:{self.head.ports['client']}"

    @property
    def dashboard_url(self) -> str:
        return f"http://{self.head.address}:{self.head.ports['dashboard']}"

    @property
    def run_address(self) -> str:
        """What `numasweep run --address` takes from this machine's own namespace."""
        # Outside the namespaces no raylet shares the driver's address: Ray Client it is.
        return self.client_address if self.mode == "netns" else self.gcs_address

    def addresses(self) -> set[str]:
        return {self.gcs_address, self.client_address, self.dashboard_url}

    def host(self, name: str) -> FleetHost:
        for h in self.hosts:
            if h.name == name:
                return h
        raise FleetError(f"fleet {self.name!r} has no host {name!r} (hosts: {', '.join(h.name for h in self.hosts)})")

    def with_host(self, host: FleetHost) -> "FleetState":
        return replace(self, hosts=tuple(host if h.name == host.name else h for h in self.hosts))

    def to_json(self) -> dict:
        d = asdict(self)
        d["version"] = VERSION
        return d

    @classmethod
    def from_json(cls, d: dict, where: str) -> "FleetState":
        if d.get("version") != VERSION:
            raise FleetError(f"{where}: fleet state version {d.get('version')!r} is not supported (allowed: {VERSION})")
        d = {k: v for k, v in d.items() if k != "version"}
        hosts = tuple(FleetHost(**{**h, "argv": tuple(h.get("argv", ()))}) for h in d.pop("hosts"))
        return cls(hosts=hosts, **d)


def state_path(name: str) -> Path:
    return state_root() / "fleets" / f"{check_name(name)}.json"


def load(name: str) -> FleetState | None:
    path = state_path(name)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        return FleetState.from_json(json.loads(text), str(path))
    except (ValueError, TypeError, KeyError) as exc:
        raise FleetError(f"{path}: not a fleet state file ({exc})") from None


def save(state: FleetState) -> Path:
    path = state_path(state.name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state.to_json(), indent=1))
    os.replace(tmp, path)
    return path


def remove(name: str) -> None:
    state_path(name).unlink(missing_ok=True)


def all_fleets() -> list[FleetState]:
    out = []
    for path in sorted((state_root() / "fleets").glob("*.json")):
        try:
            state = load(path.stem)
        except FleetError:
            continue
        if state is not None:
            out.append(state)
    return out


def fleet_for_address(address: str) -> FleetState | None:
    """The local fleet whose head serves ``address`` (ray://, host:port or the dashboard URL)."""
    want = address.rstrip("/")
    for state in all_fleets():
        if want in state.addresses():
            return state
    return None
