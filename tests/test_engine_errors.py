"""Bad input to `bench`: one line naming the file or flag, exit status 2, no traceback."""
import shutil
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGUFReader

from engine.cli import main as engine_main


def _damaged(tmp_path, src, name, edit):
    dst = tmp_path / name
    shutil.copy(src, dst)
    r = GGUFReader(str(dst), "r+")
    edit(r)
    r.data.flush()
    del r
    return dst


def _rename(r, old, new):
    t = next(t for t in r.tensors if t.name == old)
    t.field.parts[1][:] = np.frombuffer(new.encode(), dtype=np.uint8)


def _bad_offset(r):
    next(t for t in r.tensors if t.name == "blk.1.ffn_up.weight").field.parts[-1][0] = 1 << 40


def _bad_arch(r):
    r.fields["general.architecture"].parts[-1][:] = np.frombuffer(b"mamba", dtype=np.uint8)


def _int_type(r):
    next(t for t in r.tensors if t.name == "blk.0.attn_q.weight").field.parts[4][0] = 26  # I32


def _run(capsys, argv):
    rc = engine_main(["bench"] + argv)
    err = capsys.readouterr().err.strip().splitlines()
    return rc, err


@pytest.fixture(scope="module")
def f32_model(model_factory):
    return model_factory("micro", seed=5, wtype="f32")


def test_not_a_gguf(tmp_path, capsys):
    p = tmp_path / "notes.gguf"
    p.write_text("hello, not a model\n")
    rc, err = _run(capsys, ["-m", str(p), "-c", "64", "-ub", "32"])
    assert rc == 2 and len(err) == 1 and "not a GGUF file" in err[0] and str(p) in err[0]


def test_missing_file(tmp_path, capsys):
    rc, err = _run(capsys, ["-m", str(tmp_path / "nope.gguf"), "-c", "64", "-ub", "32"])
    assert rc == 2 and len(err) == 1 and "nope.gguf" in err[0]


def test_truncated(tmp_path, micro_model, capsys):
    p = tmp_path / "half.gguf"
    p.write_bytes(micro_model.read_bytes()[: micro_model.stat().st_size // 2])
    rc, err = _run(capsys, ["-m", str(p), "-c", "64", "-ub", "32"])
    assert rc == 2 and len(err) == 1 and str(p) in err[0]
    assert "truncated" in err[0] or "outside the file" in err[0]


@pytest.mark.parametrize("edit,needle", [
    (_bad_offset, "lies outside the file"),
    (_bad_arch, "general.architecture = 'mamba': unsupported architecture"),
    (lambda r: _rename(r, "blk.1.ffn_down.weight", "blk.1.ffn_dowX.weight"), "missing tensor blk.1.ffn_down.weight"),
])
def test_damaged_files(tmp_path, micro_model, capsys, edit, needle):
    p = _damaged(tmp_path, micro_model, "bad.gguf", edit)
    rc, err = _run(capsys, ["-m", str(p), "-c", "64", "-ub", "32"])
    assert rc == 2 and len(err) == 1, err
    assert needle in err[0] and str(p) in err[0]


def test_unsupported_tensor_type(tmp_path, f32_model, capsys):
    p = _damaged(tmp_path, f32_model, "int.gguf", _int_type)
    rc, err = _run(capsys, ["-m", str(p), "-c", "64", "-ub", "32"])
    assert rc == 2 and len(err) == 1
    assert "blk.0.attn_q.weight has unsupported type I32" in err[0]


@pytest.mark.parametrize("argv,needle", [
    (["-c", "100", "-ub", "32"], "-c: 100 is not a multiple of ub = 32"),
    (["-c", "64", "-ub", "32", "-mla", "7"], "-mla: 7 is not allowed (allowed: 0, 1, 2, 3)"),
    (["-c", "64", "-ub", "32", "-amb", "-1"], "-amb: -1 is impossible: must be >= 0"),
    (["-c", "64", "-ub", "32", "-fa", "off", "-ctv", "q8_0"], "-ctv: 'q8_0' needs flash_attn on"),
    (["-c", "64", "-ub", "32", "-t", "999"], "-t: 999 threads requested"),
    (["-c", "64", "-ub", "32", "-tb", "999"], "-tb: 999 threads requested"),
    (["-c", "64", "-ub", "32", "-ctk", "q4_9"], "-ctk: 'q4_9' is not allowed (allowed: f32, f16, q8_0)"),
    (["-c", "64", "-ub", "32", "-ctv", "bf8"], "-ctv: 'bf8' is not allowed"),
    (["-c", "64", "-ub", "32", "--output-format", "xml"], "--output-format: unknown format 'xml'"),
    (["-c", "64", "-ub", "16", "-n", "32"], "-n: 32 TG tokens exceed ub = 16"),
])
def test_bad_flags(micro_model, capsys, argv, needle):
    rc, err = _run(capsys, ["-m", str(micro_model)] + argv)
    assert rc == 2 and len(err) == 1 and needle in err[0], err


def test_console_script_exit_code_and_no_traceback(tmp_path):
    p = tmp_path / "x.gguf"
    p.write_bytes(b"GGUF\x03\x00\x00\x00" + b"\xff" * 40)
    proc = subprocess.run([sys.executable, "-m", "orchestrator", "bench", "-m", str(p), "-c", "64", "-ub", "32"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(p) in lines[0]
