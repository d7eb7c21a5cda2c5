"""Every bad input in the corpus, through the real CLI in a subprocess: exit 2, a last stderr
line ``numasweep CMD: error: ...`` naming the file or key, no traceback, done in bounded time
and memory, and the store (every file in the case's directory) unchanged.

The whole corpus runs once, concurrently, in a module fixture; each case is then one test,
so a case that waits for another part of issue 15 is marked xfail(strict) on its own.
"""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import fuzz_gguf
import fuzz_imports
import fuzz_specs
from fuzz_corpus import RSS_LIMIT_KIB, TIME_BOUND_S, Case, Ctx, run_case

FIX = Path(__file__).parent / "fixtures"
ALL: list[Case] = fuzz_gguf.CASES + fuzz_specs.CASES + fuzz_imports.CASES
WORKERS = max(2, min(4, (os.cpu_count() or 2) + 1))  # subprocess start-up waits on I/O too


def _param(case: Case):
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=case.id, marks=marks)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict:
    from orchestrator.importers.ingest import import_file
    from orchestrator.store import Store

    root = tmp_path_factory.mktemp("corpus")
    seed = root / "seed.db"
    with Store.open(seed) as store:
        import_file(store, FIX / "llama-bench-cpu.json")
    ctx = Ctx(fuzz_gguf.make_models(root / "models"), seed, FIX)
    built = {}
    for case in ALL:  # building is cheap and touches shared inputs: one at a time
        d = root / "cases" / case.id
        d.mkdir(parents=True)
        (root / "tmp" / case.id).mkdir(parents=True)
        built[case.id] = case.build(ctx, d)
    order = sorted(ALL, key=lambda c: not built[c.id].ray)  # the slow Ray cases first
    with ThreadPoolExecutor(max_workers=WORKERS) as pool:
        outcomes = dict(zip([c.id for c in order], pool.map(
            lambda c: run_case(c, built[c.id], root / "cases" / c.id, root / "tmp" / c.id), order)))
    if os.environ.get("NUMASWEEP_CORPUS_DUMP"):  # per-case outcomes as JSON, for a report
        _dump(Path(os.environ["NUMASWEEP_CORPUS_DUMP"]), built, outcomes)
    return {cid: (built[cid], outcomes[cid]) for cid in built}


def _dump(path: Path, built: dict, outcomes: dict) -> None:
    import json

    rows = {cid: {"rc": o.rc, "wall_s": round(o.wall_s, 2), "maxrss_mib": o.maxrss_kib // 1024,
                  "last_line": o.last_line[:300], "traceback": "Traceback" in o.stderr,
                  "changed": sorted(k for k in set(o.before) | set(o.after) if o.before.get(k) != o.after.get(k)),
                  "needles_missing": [n for n in built[cid].needles if n not in o.last_line]}
            for cid, o in outcomes.items()}
    path.write_text(json.dumps(rows, indent=1))


@pytest.mark.parametrize("case", [_param(c) for c in ALL])
def test_bad_input_is_one_clean_line(corpus, case):
    built, out = corpus[case.id]
    line = out.last_line
    where = f"rc={out.rc} {out.wall_s:.1f}s rss={out.maxrss_kib // 1024}MiB\nstderr tail:\n{out.stderr[-1500:]}"
    assert out.rc == 2, where
    assert "Traceback" not in out.stderr, where
    assert line.startswith(f"numasweep {built.argv[0]}: error: "), where
    missing = [n for n in built.needles if n not in line]
    assert not missing, f"last line does not name {missing}: {line}"
    assert out.wall_s < TIME_BOUND_S, where
    assert out.maxrss_kib < RSS_LIMIT_KIB, where
    changed = sorted(k for k in set(out.before) | set(out.after) if out.before.get(k) != out.after.get(k))
    assert not changed, f"files created or changed: {changed}"


def test_corpus_covers_the_issue():
    kinds = {k: [c for c in ALL if c.kind == k] for k in ("gguf", "spec", "import")}
    assert len(kinds["gguf"]) >= 60 and len(kinds["spec"]) >= 30 and len(kinds["import"]) >= 20
    for arch in fuzz_gguf.ARCHS:
        assert sum(c.name.startswith(arch) for c in kinds["gguf"]) >= 3 or arch == "llama", arch
    assert len({c.id for c in ALL}) == len(ALL)


def test_reencoder_is_byte_exact(tmp_path):
    """The corruptions re-encode valid files: unchanged, the encoder gives back the very same bytes."""
    for arch, path in fuzz_gguf.make_models(tmp_path).items():
        assert fuzz_gguf.GGUFModel.load(path).encode() == path.read_bytes(), arch
