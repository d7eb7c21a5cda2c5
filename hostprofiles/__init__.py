"""Host topology and tuning state: detection, saved profiles, fake-sysfs simulation.

Never imports orchestrator or engine (see DESIGN.md, import direction).
"""
from .cpulist import format_cpulist, parse_cpulist
from .detection import detect
from .errors import PlacementError, ProfileError, SchemaError
from .fakesysfs import materialize
from .profile import SCHEMA_VERSION, Cpu, HostProfile, MemBandwidth, Node
from .saved import list_profiles, load_profile, save_profile
from .tuning import Finding, check

__all__ = [
    "SCHEMA_VERSION", "Cpu", "Finding", "HostProfile", "MemBandwidth", "Node",
    "PlacementError", "ProfileError", "SchemaError", "check", "detect", "format_cpulist",
    "list_profiles", "load_profile", "materialize", "parse_cpulist", "save_profile",
]
