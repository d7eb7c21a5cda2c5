"""Saved profiles: facts of each machine, JSON and materialize -> detect round trips."""
from __future__ import annotations

import dataclasses
import json

import pytest

from hostprofiles import (SCHEMA_VERSION, HostProfile, ProfileError, SchemaError, detect, list_profiles,
                          load_profile, materialize, save_profile)
from hostprofiles.saved import SHIPPED_DIR
from hostprofiles.synth import MODELS

SHIPPED = ["dev-vm", "epyc-9654-2s-nps1", "epyc-9654-2s-nps4", "ryzen9-7950x", "threadripper-pro-5975wx",
           "xeon-6980p-2s-snc-off", "xeon-6980p-2s-snc3"]


def shipped(name: str) -> HostProfile:
    return load_profile(name, [SHIPPED_DIR])


def test_shipped_profiles_are_listed():
    assert list_profiles([SHIPPED_DIR]) == SHIPPED


@pytest.mark.parametrize("name", SHIPPED)
def test_materialize_then_detect_round_trips(name, tmp_path):
    profile = shipped(name)
    assert profile.simulated  # a loaded profile is a description, not this run's host
    assert detect(materialize(profile, tmp_path)) == profile


def test_materialize_refuses_a_used_directory(tmp_path):
    materialize(shipped("dev-vm"), tmp_path / "a")
    with pytest.raises(ProfileError, match="not an empty directory"):
        materialize(shipped("ryzen9-7950x"), tmp_path / "a")


def test_live_detection_round_trips_except_simulated(tmp_path):
    live = detect("/")
    again = detect(materialize(live, tmp_path))
    assert again == dataclasses.replace(live, simulated=True)
    assert again.fingerprint == live.fingerprint


@pytest.mark.parametrize("name", SHIPPED)
def test_json_round_trip_and_schema_stamp(name):
    profile = shipped(name)
    data = json.loads(profile.dumps())
    assert data["schema_version"] == SCHEMA_VERSION and data["fingerprint"] == profile.fingerprint
    assert HostProfile.from_json(data) == profile


def test_shipped_synthesized_files_match_their_models():
    for m in MODELS:
        assert shipped(m.name) == m.build(), f"{m.name}.json is stale: python -m hostprofiles.synth --write"


def test_every_saved_number_says_where_it_comes_from():
    for name in SHIPPED:
        p = shipped(name)
        assert p.notes, name
        if p.mem_bandwidth_gbs is not None:
            assert p.mem_bandwidth_gbs.source and p.mem_bandwidth_gbs.kind in ("measured", "theoretical")


def test_unknown_schema_version_and_keys_are_refused():
    data = shipped("ryzen9-7950x").to_json()
    with pytest.raises(SchemaError, match="schema_version 99 is not supported"):
        HostProfile.from_json(dict(data, schema_version=99))
    with pytest.raises(SchemaError, match="schema_version None"):
        HostProfile.from_json({k: v for k, v in data.items() if k != "schema_version"})
    with pytest.raises(SchemaError, match="unknown key 'colour'"):
        HostProfile.from_json(dict(data, colour="red"))
    with pytest.raises(SchemaError, match="not valid JSON"):
        HostProfile.loads("{")


def test_xeon_6980p_facts():
    off, snc3 = shipped("xeon-6980p-2s-snc-off"), shipped("xeon-6980p-2s-snc3")
    for p in (off, snc3):
        assert (p.sockets, p.cores, len(p.cpus), p.threads_per_core) == (2, 256, 512, 2)
        # Linux numbering on 2S Xeon: 0..255 first threads (socket 0 then 1), 256..511 siblings.
        assert p.cpu_by_id[0].core_cpus == (0, 256) and p.cpu_by_id[128].socket == 1
        assert p.cpu_by_id[383].socket == 0 and p.cpu_by_id[384].socket == 1
        assert [len({p.cpu_by_id[c].core for c in g}) for g in p.die_groups] == [43, 43, 42] * 2
        assert p.isa["amx"] and p.isa["avx512_vnni"] and p.cpu_vendor == "GenuineIntel"
    assert (len(off.nodes), off.nodes_per_socket, off.numa_mode) == (2, 1, "SNC off")
    assert (len(snc3.nodes), snc3.nodes_per_socket, snc3.numa_mode) == (6, 3, "SNC3")
    assert off.mem_bandwidth_gbs.local == 554.0 and off.mem_bandwidth_gbs.remote == 247.0
    assert off.mem_bandwidth_gbs.kind == "measured" and "MLC" in off.mem_bandwidth_gbs.source
    assert snc3.nodes[0].distances == (10, 12, 12, 21, 21, 21)
    assert off.thp_enabled == "always" and off.numa_balancing == 0 and off.platform_profile == "performance"
    assert off.fingerprint != snc3.fingerprint


def test_amd_profiles_facts():
    tr = shipped("threadripper-pro-5975wx")
    assert (tr.cores, tr.smt, len(tr.nodes), len(tr.die_groups)) == (32, True, 1, 8)
    assert not tr.isa["avx512f"] and tr.isa["avx2"]
    ryzen = shipped("ryzen9-7950x")
    assert (ryzen.cores, len(ryzen.cpus), len(ryzen.die_groups)) == (16, 32, 2)
    assert ryzen.isa["avx512_vnni"]
    for name, nodes in (("epyc-9654-2s-nps1", 2), ("epyc-9654-2s-nps4", 8)):
        p = shipped(name)
        assert (p.sockets, p.cores, len(p.nodes), len(p.die_groups)) == (2, 192, nodes, 24)
        assert p.numa_mode == f"NPS{nodes // 2}"
        # Interleaved numbering: consecutive ids sit on different CCDs.
        assert p.cpu_by_id[0].l3 != p.cpu_by_id[1].l3
        assert p.cpu_by_id[0].l3 == p.cpu_by_id[12].l3
        assert p.cpu_by_id[0].core_cpus == (0, 192)
    nps4 = shipped("epyc-9654-2s-nps4")
    assert nps4.cpu_by_id[0].node == 0 and nps4.cpu_by_id[3].node == 1 and nps4.cpu_by_id[96].node == 4


def test_dev_vm_profile_is_this_kind_of_host():
    p = shipped("dev-vm")
    assert (len(p.cpus), len(p.nodes), p.cpu_vendor) == (2, 1, "AuthenticAMD")
    assert p.isa["avx2"] and not p.isa["avx512f"]


def test_fingerprint_tracks_facts_not_labels():
    p = shipped("ryzen9-7950x")
    assert p.fingerprint == shipped("ryzen9-7950x").fingerprint and len(p.fingerprint) == 16
    assert dataclasses.replace(p, name="x", simulated=False, notes=()).fingerprint == p.fingerprint
    assert dataclasses.replace(p, thp_enabled="never").fingerprint != p.fingerprint
    assert dataclasses.replace(p, kernel="6.9").fingerprint != p.fingerprint
    assert dataclasses.replace(p, mem_total_bytes=p.mem_total_bytes + 4096).fingerprint == p.fingerprint


def test_save_load_list_in_injected_dirs(tmp_path):
    p = shipped("ryzen9-7950x")
    path = save_profile(p, "my-box", tmp_path)
    assert path == tmp_path / "my-box.json"
    assert list_profiles([tmp_path]) == ["my-box"]
    loaded = load_profile("my-box", [tmp_path])
    assert loaded == dataclasses.replace(p, name="my-box")
    with pytest.raises(ProfileError, match="exists"):
        save_profile(p, "my-box", tmp_path)
    save_profile(p, "my-box", tmp_path, overwrite=True)
    with pytest.raises(ProfileError, match="bad profile name"):
        save_profile(p, "../evil", tmp_path)
    with pytest.raises(ProfileError, match=r"no saved host profile 'nope' \(known: my-box\)"):
        load_profile("nope", [tmp_path])
    (tmp_path / "broken.json").write_text('{"schema_version": 0}')
    with pytest.raises(ProfileError, match="broken.json: host profile schema_version 0"):
        load_profile("broken", [tmp_path])


def test_user_dir_shadows_shipped(tmp_path, monkeypatch):
    monkeypatch.setenv("NUMASWEEP_PROFILES", str(tmp_path))
    save_profile(shipped("dev-vm"), "ryzen9-7950x", tmp_path)
    assert load_profile("ryzen9-7950x").cpu_model == "AMD EPYC"
    assert "xeon-6980p-2s-snc3" in list_profiles()
