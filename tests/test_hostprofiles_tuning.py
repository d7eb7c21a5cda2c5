"""check(): the warnings a benchmarker must see before a run; it never changes anything."""
from __future__ import annotations

import dataclasses

from hostprofiles import check, load_profile
from hostprofiles.profile import GIB
from hostprofiles.saved import SHIPPED_DIR


@dataclasses.dataclass(frozen=True)
class Slot:  # check() takes any object with these attributes (orchestrator's Placement)
    name: str
    cpus: tuple
    mem_nodes: tuple
    mem_policy: str = "bind"


def codes(findings):
    return {f.code for f in findings}


XEON = load_profile("xeon-6980p-2s-snc3", [SHIPPED_DIR])


def test_tuning_warnings():
    bad = dataclasses.replace(XEON, numa_balancing=1, governor="powersave", epp="balance_power",
                              platform_profile="balanced", boost=True)
    found = check(bad)
    assert {"numa-balancing-on", "governor-not-performance", "epp-not-performance",
            "platform-profile", "thp-mode", "simulated"} <= codes(found)
    assert all(f.message and "\n" not in f.message for f in found)
    good = dataclasses.replace(XEON, governor="performance", epp="performance", boost=True, simulated=False)
    assert not [f for f in check(good) if f.severity == "warning"]


def test_unknown_state_is_info_not_warning():
    found = check(dataclasses.replace(XEON, thp_enabled=None, governor=None, nodes=()))
    assert {"tuning-unknown", "numa-unknown"} <= codes(found)
    assert all(f.severity == "info" for f in found)


def test_placement_checks():
    assert "smt-siblings" in codes(check(XEON, Slot("s", (0, 256), (0,))))
    assert "smt-siblings" not in codes(check(XEON, Slot("s", (0, 1), (0,))))
    assert "remote-memory" in codes(check(XEON, Slot("s", (0, 1), (3,))))
    assert "spans-nodes" in codes(check(XEON, Slot("s", (0, 43), (0, 1))))
    assert "cpu-not-on-host" in codes(check(XEON, Slot("s", (0, 9999), (0,))))


def test_model_memory_checks():
    per_node = check(XEON, None, model_bytes=300 * GIB)  # nodes hold 256 GiB
    assert "model-exceeds-node-memory" in codes(per_node)
    assert "model-exceeds-host-memory" not in codes(per_node)
    assert "model-exceeds-node-memory" not in codes(check(XEON, Slot("s", (0,), (0, 1), "interleave"),
                                                          model_bytes=300 * GIB))
    assert "model-exceeds-host-memory" in codes(check(XEON, None, model_bytes=2000 * GIB))
    assert "model-exceeds-node-memory" not in codes(check(XEON, None, model_bytes=100 * GIB))
