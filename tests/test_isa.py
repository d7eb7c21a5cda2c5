"""Kernel path choice (engine.isa) and NUMASWEEP_SIMD: forcing a path this host or build
cannot run is one line naming the variable, exit 2, before anything runs."""
import subprocess
import sys

import pytest

from engine.errors import EngineError
from engine.isa import BUILT, PATHS, choose, host_features, host_paths

ZEN3 = {"avx2": True, "fma": True, "f16c": True}
ZEN4 = {**ZEN3, "avx512f": True, "avx512bw": True, "avx512vl": True, "avx512vnni": True}
OLD = {"sse4.2": True}


def test_best_built_path_for_the_host():
    assert host_paths(ZEN4) == ("avx512vnni", "avx2", "scalar")
    assert choose(None, ZEN4) == "avx2"          # no VNNI kernels built: the best built one
    assert choose(None, ZEN3) == "avx2"
    assert choose(None, OLD) == "scalar"
    assert choose("scalar", ZEN3) == "scalar"
    assert set(BUILT) <= set(PATHS)


@pytest.mark.parametrize("forced,features,needle", [
    ("avx512", ZEN3, "NUMASWEEP_SIMD=avx512: unknown kernel path (allowed: scalar, avx2, avx512vnni)"),
    ("avx2", OLD, "NUMASWEEP_SIMD=avx2: this CPU lacks avx2, fma, f16c (it can run: scalar)"),
    ("avx512vnni", ZEN3, "NUMASWEEP_SIMD=avx512vnni: this CPU lacks avx512f, avx512bw, avx512vl, avx512vnni"),
    ("avx512vnni", ZEN4, "NUMASWEEP_SIMD=avx512vnni: this build has no avx512vnni kernels yet"),
])
def test_forcing_what_cannot_run_is_refused(forced, features, needle):
    with pytest.raises(EngineError) as exc:
        choose(forced, features)
    assert str(exc.value).startswith(needle)


@pytest.mark.parametrize("cmd", ["bench", "run"])
def test_cli_refuses_a_bad_forced_path_before_anything_runs(tmp_path, micro_model, cmd):
    store = tmp_path / "store.sqlite"
    if cmd == "bench":
        argv = ["bench", "-m", str(micro_model), "-c", "64", "-ub", "32"]
    else:
        spec = tmp_path / "s.toml"
        spec.write_text(f'store = "{store}"\n[[model]]\npath = "{micro_model}"\n'
                        '[sweep]\nc = [64]\nub = [32]\nthreads = [1]\n')
        argv = ["run", str(spec)]
    env = {**__import__("os").environ, "NUMASWEEP_SIMD": "sse9"}
    proc = subprocess.run([sys.executable, "-m", "orchestrator", *argv], capture_output=True, text=True,
                          env=env, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert "NUMASWEEP_SIMD=sse9: unknown kernel path" in lines[0]
    assert not store.exists()


def test_this_host_runs_its_best_built_path():
    from engine import _numba

    if _numba.os.environ.get("NUMASWEEP_SIMD"):
        pytest.skip("NUMASWEEP_SIMD is set for this test run")
    assert (_numba.SIMD, _numba.SIMD_ERROR) == (choose(None, host_features()), None)
