"""Sweep spec validation: good specs parse into the matrix; bad ones name the key and what is allowed."""
from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from orchestrator.spec import SpecError, SweepSpec

EXAMPLES = sorted((Path(__file__).parent.parent / "examples").glob("*.toml"))


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "spec.toml"
    p.write_text(text)
    return p


def test_defaults_and_matrix_product(tmp_path):
    spec = SweepSpec.from_toml(write(tmp_path, """
[sweep]
c = 2048
ub = 512
threads = [1, 2]
k_repack = ["on", "off"]
type_k = "q8_0"
"""))
    assert len(spec.matrix) == 4
    assert {(s["threads"], s["k_repack"]) for s in spec.matrix} == {(1, "on"), (1, "off"), (2, "on"), (2, "off")}
    s = spec.matrix[0]
    assert (s["c"], s["ub"], s["tg"], s["type_k"], s["type_v"], s["flash_attn"]) == (2048, 512, 128, "q8_0", "f16", True)
    assert spec.models[0].shape == "tiny" and spec.repetitions == 1
    assert spec.placement.policy == "per-node" and [(b.name, b.kind) for b in spec.builds] == [("builtin", "builtin")]


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_parse(path, tmp_path):
    data = tomllib.loads(path.read_text())
    if "path" in data.get("model", {}):  # a model on the user's machine: stand one in
        (tmp_path / "m.gguf").write_bytes(b"GGUF")
        data["model"]["path"] = str(tmp_path / "m.gguf")
    spec = SweepSpec.from_dict(data, base=path.parent)
    assert spec.matrix


def test_seed_example_shape():
    spec = SweepSpec.from_toml(Path(__file__).parent.parent / "examples" / "seed-k-repack.toml")
    assert {s["type_k"] for s in spec.matrix} == {"q8_0"}
    assert {s["ub"] for s in spec.matrix} == {512}
    assert all(s["flash_attn"] for s in spec.matrix)
    assert {s["k_repack"] for s in spec.matrix} == {"on", "off"}
    assert len({(s["threads"], s["threads_batch"]) for s in spec.matrix}) >= 2


@pytest.mark.parametrize("text, needles", [
    ("[sweep]\nthreadz = 4\n", ["sweep.threadz", "allowed:", "threads_batch"]),
    ("colour = 1\n", ["'colour'", "allowed:", "sweep"]),
    ("[placement]\npolicy = 'per-numa'\n", ["placement.policy", "per-node", "whole-host"]),
    ("[sweep]\nc = 'big'\n", ["sweep.c", "integer", "'big'"]),
    ("[sweep]\nflash_attn = 1\n", ["sweep.flash_attn", "boolean"]),
    ("[sweep]\nthreads = true\n", ["sweep.threads", "integer"]),
    ("[sweep]\nub = 0\n", ["sweep.ub", ">= 1"]),
    ("[sweep]\nc = 256\nub = 512\n", ["sweep.ub", "ub must be <= c"]),
    ("[sweep]\nc = 1000\nub = 512\n", ["sweep.c = 1000", "multiple of ub = 512"]),
    ("[sweep]\nub = 64\ntg = 65\n", ["sweep.tg", "tg must be <= ub"]),
    ("[sweep]\nc = nan\n", ["sweep.c", "finite"]),
    ("[sweep]\nthreads = inf\n", ["sweep.threads", "finite"]),
    ("[sweep]\nthreads = 0\n", ["sweep.threads", "thread count"]),
    ("[sweep]\nmla = 4\n", ["sweep.mla", "0, 1, 2, 3"]),
    ("[sweep]\namb = -1\n", ["sweep.amb", ">= 0"]),
    ("[sweep]\nfmoe = 'yes'\n", ["sweep.fmoe", "boolean"]),
    ("[sweep]\nrepetitions = [1, 2]\n", ["sweep.repetitions", "one value"]),
    ("[sweep]\nthreads = [1, 1]\n", ["sweep.threads", "twice"]),
    ("[sweep]\ntype_v = 'q8_0'\nflash_attn = false\n", ["sweep.type_v", "flash_attn"]),
    ("[backend]\ndelay_s = nan\n", ["backend.delay_s", "finite"]),
    ("[sweep]\ntype_k = 'q9_9'\n", ["sweep.type_k", "f16", "q8_0"]),
    ("[sweep]\nk_repack = ['on', 'maybe']\n", ["sweep.k_repack", "auto", "on", "off"]),
    ("[sweep]\nthreads = []\n", ["sweep.threads", "empty"]),
    ("[sweep]\nrepetitions = 0\n", ["sweep.repetitions", ">= 1"]),
    ("[model]\nshape = 'huge'\n", ["model.shape", "tiny", "deepseek2-tiny", "gemma3-tiny", "moe-tiny"]),
    ("[model]\npath = 'nope.gguf'\n", ["model.path", "no such file"]),
    ("[model]\nseed = 1\n", ["model", "path", "shape"]),
    ("[backend]\nkind = 'slurm'\n", ["backend.kind", "builtin", "external", "replay"]),
    ("[backend]\nkind = 'external'\n", ["backend.argv", "required"]),
    ("[backend]\nkind = 'external'\nargv = ['x', '{modle}']\n", ["backend.argv", "{modle}", "{model}"]),
    ("[backend]\nkind = 'external'\nargv = ['x', '-m{fa}']\n", ["backend.argv", "{fa}", "of its own"]),
    ("[backend]\nkind = 'external'\nargv = ['x', '{c}']\n", ["build 'external'", "{model}"]),
    ("[backend]\nkind = 'external'\nargv = ['x', '-m', '{model}', '-c', '{c}', '-ub', '{ub}', '-n', '{tg}',"
     " '-t', '{threads}']\n[sweep]\nk_repack = ['on', 'off']\n", ["build 'external'", "'k_repack'", "{k_repack}",
                                                                   "fixed"]),
    ("[backend]\nkind = 'external'\nargv = ['x', '-m', '{model}']\n", ["build 'external'", "'c'", "{c}"]),
    ("[backend]\nkind = 'external'\nfa_syntax = 'bare'\nargv = ['x', '{model}']\n", ["fa_syntax", "value", "flag"]),
    ("[backend]\nkind = 'builtin'\nfixed = { k_repack = 'on' }\n", ["backend.fixed", "external"]),
    ("[[backend.builds]]\nkind = 'builtin'\n", ["backend.builds[0].name", "required"]),
    ("[[backend.builds]]\nname = 'a'\n[[backend.builds]]\nname = 'a'\n", ["backend.builds", "differ"]),
    ("[backend]\nkind = 'replay'\n[[backend.builds]]\nname = 'a'\n", ["backend", "not both"]),
    ("[backend]\ndelay_s = -1\n", ["backend.delay_s", ">= 0"]),
    ("[placement]\npolicy = 'cpus'\n", ["placement.cpus", "required"]),
    ("[placement]\npolicy = 'cpus'\ncpus = '0-x'\n", ["placement.cpus", "CPU list"]),
    ("[hosts]\nlabels = { zone = 3 }\n", ["hosts.labels.zone", "string"]),
    ("[sweep\n", ["not valid TOML"]),
])
def test_bad_spec_names_key_and_allowed(tmp_path, text, needles):
    with pytest.raises(SpecError) as err:
        SweepSpec.from_toml(write(tmp_path, text))
    msg = str(err.value)
    assert "spec.toml" in msg and "\n" not in msg
    for needle in needles:
        assert needle in msg, msg


def test_relative_paths_resolve_against_spec_dir(tmp_path):
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    spec = SweepSpec.from_toml(write(tmp_path, "[model]\npath = 'm.gguf'\n"))
    assert spec.models[0].path == str(tmp_path / "m.gguf")
    assert spec.base == str(tmp_path)


def test_every_schema_setting_is_a_sweep_key_and_every_shape_allowed(tmp_path):
    from engine.options import SETTINGS
    from engine.synth import ALL_SHAPES

    for shape in ALL_SHAPES:
        assert SweepSpec.from_dict({"model": {"shape": shape}}).models[0].shape == shape
    spec = SweepSpec.from_dict({"model": {"shape": "deepseek2-tiny"},
                                "sweep": {"mla": [0, 3], "fmoe": [False, True], "amb": 1024, "no_mmap": True,
                                          "sweep_stride": 2, "b": 1024, "ub": 256, "c": 1024, "seed": 7}})
    assert len(spec.matrix) == 4
    assert {(s["mla"], s["fmoe"]) for s in spec.matrix} == {(0, False), (0, True), (3, False), (3, True)}
    assert spec.matrix[0].n_kv_grid() == [0, 512]  # every 2nd row of 0, 256, 512, 768
    keys = {s.key for s in SETTINGS if s.key}
    assert {"c", "ub", "tg", "threads", "threads_batch", "type_k", "type_v", "flash_attn", "k_repack", "rtr",
            "fmoe", "mla", "amb", "no_mmap", "sweep_stride", "repetitions", "seed", "b"} <= keys


def test_builds_fixed_settings_and_states(tmp_path):
    argv = ["ik", "-m", "{model}", "-c", "{c}", "-ub", "{ub}", "-n", "{tg}", "-t", "{threads}", "{fa}"]
    spec = SweepSpec.from_dict({"sweep": {"k_repack": ["on", "off"], "flash_attn": True},
                                "backend": {"builds": [
                                    {"name": "ik-main", "kind": "external", "argv": argv,
                                     "fixed": {"k_repack": "auto"}},
                                    {"name": "ours", "kind": "builtin"}]}})
    ik, ours = spec.builds
    assert (ik.state("c"), ik.state("k_repack"), ik.state("type_v"), ik.state("flash_attn")) == (
        "passed", "fixed", "unknown", "passed")
    applied = ik.applied(spec.matrix[0].with_values(threads=2, threads_batch=2).as_dict())
    assert applied["k_repack"] == "auto" and applied["type_v"] is None and applied["threads_batch"] is None
    assert applied["c"] == 4096 and applied["flash_attn"] is True
    assert ours.applied(spec.matrix[0].as_dict())["type_v"] == "f16"
