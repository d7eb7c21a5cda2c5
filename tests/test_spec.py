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
    assert {(s.threads, s.k_repack) for s in spec.matrix} == {(1, "on"), (1, "off"), (2, "on"), (2, "off")}
    s = spec.matrix[0]
    assert (s.n_ctx, s.ubatch, s.tg, s.type_k, s.type_v, s.flash_attn) == (2048, 512, 128, "q8_0", "f16", True)
    assert spec.models[0].shape == "tiny" and spec.repetitions == 1
    assert spec.placement.policy == "per-node" and spec.backend.kind == "builtin"


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
    assert {s.type_k for s in spec.matrix} == {"q8_0"}
    assert {s.ubatch for s in spec.matrix} == {512}
    assert all(s.flash_attn for s in spec.matrix)
    assert {s.k_repack for s in spec.matrix} == {"on", "off"}
    assert len({(s.threads, s.threads_batch) for s in spec.matrix}) >= 2


@pytest.mark.parametrize("text, needles", [
    ("[sweep]\nthreadz = 4\n", ["sweep.threadz", "allowed:", "threads_batch"]),
    ("colour = 1\n", ["'colour'", "allowed:", "sweep"]),
    ("[placement]\npolicy = 'per-numa'\n", ["placement.policy", "per-node", "whole-host"]),
    ("[sweep]\nc = 'big'\n", ["sweep.c", "integer", "'big'"]),
    ("[sweep]\nflash_attn = 1\n", ["sweep.flash_attn", "boolean"]),
    ("[sweep]\nthreads = true\n", ["sweep.threads", "integer"]),
    ("[sweep]\nub = 0\n", ["sweep.ub", ">= 1"]),
    ("[sweep]\nc = 256\nub = 512\n", ["sweep.ub", "sweep.c", "<= c"]),
    ("[sweep]\ntype_k = 'q9_9'\n", ["sweep.type_k", "f16", "q8_0"]),
    ("[sweep]\nk_repack = ['on', 'maybe']\n", ["sweep.k_repack", "auto", "on", "off"]),
    ("[sweep]\nthreads = []\n", ["sweep.threads", "empty"]),
    ("[sweep]\nrepetitions = 0\n", ["sweep.repetitions", ">= 1"]),
    ("[model]\nshape = 'huge'\n", ["model.shape", "tiny"]),
    ("[model]\npath = 'nope.gguf'\n", ["model.path", "no such file"]),
    ("[model]\nseed = 1\n", ["model", "path", "shape"]),
    ("[backend]\nkind = 'slurm'\n", ["backend.kind", "builtin", "external", "replay"]),
    ("[backend]\nkind = 'external'\n", ["backend.argv", "required"]),
    ("[backend]\nkind = 'external'\nargv = ['x', '{modle}']\n", ["backend.argv", "{modle}", "{model}"]),
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
