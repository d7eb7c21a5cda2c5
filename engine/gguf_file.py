"""GGUF v2/v3 header parser over a read-only memory map, every read bounds-checked.

Why not ``gguf.GGUFReader``: it builds numpy parts for every array element, so a
262144-token vocabulary takes ~30 s to open. Here scalars and strings become
Python values, arrays of numbers become views into the map, and arrays of
strings are walked once (lengths only) and decoded on demand. A damaged header
is one ``GGUFError`` line naming the file and what runs past its end. Type ids,
block sizes, the magic and the default alignment come from the gguf package;
tensors look like ``ReaderTensor`` (same shapes and data views).
"""
from __future__ import annotations

import math
import os
import stat
import struct
from dataclasses import dataclass, field
from functools import cached_property

import numpy as np
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, GGUFReader, GGUFValueType
from gguf.constants import GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC
from gguf.gguf_reader import READER_SUPPORTED_VERSIONS
from gguf.quants import quant_shape_to_byte_shape

from engine.errors import GGUFError

_SCALARS = {t: np.dtype(d).newbyteorder("<") for t, d in GGUFReader.gguf_scalar_to_np.items()}
_T = GGMLQuantizationType
# Tensor types GGUFReader views as typed arrays (its _build_tensors); the others as bytes.
_TYPED = {_T.F16: np.float16, _T.F32: np.float32, _T.F64: np.float64,
          _T.I8: np.int8, _T.I16: np.int16, _T.I32: np.int32, _T.I64: np.int64}
_MAX_DIMS = 4                       # GGML_MAX_DIMS (gguf-py does not export it)
_MIN_KEY, _MIN_TENSOR = 13, 32      # smallest key (empty name, u8) / tensor info (empty name, 1 dim)
_U32, _U64 = struct.Struct("<I"), struct.Struct("<Q")
_MAGIC = _U32.pack(GGUF_MAGIC)      # b"GGUF"


def _walk_strings(buf, pos: int, count: int) -> int | None:
    """Offset just past ``count`` length-prefixed strings at pos; None if they overrun buf."""
    unpack = _U64.unpack_from
    try:
        for _ in range(count):          # the hot loop of a big vocabulary: keep it bare
            pos += 8 + unpack(buf, pos)[0]
    except (struct.error, OverflowError):
        return None
    return pos if pos <= len(buf) else None


@dataclass(frozen=True, eq=False)
class StringArray:
    """A GGUF array of strings left in the file: its length now, its items on demand."""

    mm: np.memmap = field(repr=False)   # (file size,) u8, the whole file
    offset: int                         # file offset of the first item's u64 length
    count: int

    def __len__(self) -> int:
        return self.count

    @cached_property
    def _buf(self) -> memoryview:       # slicing a memmap per item costs ~10 us; a memoryview, ~0.1
        return memoryview(self.mm)

    @cached_property
    def _starts(self) -> np.ndarray:    # (count,) i64 file offset of each item's u64 length
        pos, unpack = self.offset, _U64.unpack_from
        starts = [0] * self.count
        for j in range(self.count):     # already bounds-checked by _walk_strings
            starts[j] = pos
            pos += 8 + unpack(self._buf, pos)[0]
        return np.array(starts, dtype=np.int64)

    def _item(self, pos: int) -> tuple[str, int]:
        n = _U64.unpack_from(self._buf, pos)[0]
        return str(self._buf[pos + 8:pos + 8 + n], "utf-8", "replace"), pos + 8 + n

    def __getitem__(self, i: int) -> str:
        if not -self.count <= i < self.count:
            raise IndexError(f"string array index {i} out of range ({self.count} items)")
        return self._item(int(self._starts[i]))[0]

    def tolist(self) -> list[str]:
        out, pos = [""] * self.count, self.offset
        for j in range(self.count):
            out[j], pos = self._item(pos)
        return out


@dataclass(frozen=True)
class Field:
    """One metadata key. value: int/float/bool, str, np.ndarray view (array of numbers),
    StringArray, or a list of those (array of arrays)."""

    name: str
    type: GGUFValueType
    item_type: GGUFValueType | None     # element type of an array, else None
    value: object


@dataclass(frozen=True, eq=False)
class TensorInfo:
    """The attributes of gguf's ``ReaderTensor`` the engine uses."""

    name: str
    tensor_type: GGMLQuantizationType
    shape: np.ndarray                   # (n_dims,) u64, ne0 first
    n_elements: int
    n_bytes: int
    data_offset: int                    # absolute file offset
    data: np.ndarray = field(repr=False)  # view into the map: typed, dims reversed; quant types u8 (..., row bytes)


class _Cursor:
    """Reads little-endian values from the map; every read checks it stays inside the file."""

    def __init__(self, path: str, mm: np.memmap):
        self.path, self.mm, self.buf = path, mm, memoryview(mm)
        self.size, self.pos, self.where = int(mm.shape[0]), 0, ""

    def damaged(self, what: str) -> GGUFError:
        return GGUFError(f"{self.path}: damaged or truncated GGUF ({self.where}{what})")

    def take(self, n: int, what: str) -> int:
        """Claims n bytes at the cursor and returns their offset."""
        if n > self.size - self.pos:
            raise self.damaged(f"{what} runs past the end of the file")
        at, self.pos = self.pos, self.pos + n
        return at

    def u32(self, what: str) -> int:
        return _U32.unpack_from(self.buf, self.take(4, what))[0]

    def u64(self, what: str) -> int:
        return _U64.unpack_from(self.buf, self.take(8, what))[0]

    def text(self, what: str, strict: bool = False) -> str:
        n = self.u64(f"{what} length")
        at = self.take(n, f"{what} length {n}")
        try:
            return bytes(self.buf[at:at + n]).decode("utf-8", errors="strict" if strict else "replace")
        except UnicodeDecodeError:
            raise self.damaged(f"{what} is not valid UTF-8") from None

    def vtype(self, what: str) -> GGUFValueType:
        raw = self.u32(what)
        try:
            return GGUFValueType(raw)
        except ValueError:
            raise self.damaged(f"{what} {raw} is not a GGUF value type") from None

    def value(self, vtype: GGUFValueType) -> tuple[object, GGUFValueType | None]:
        """(value, array item type) of a value of type vtype at the cursor."""
        if vtype == GGUFValueType.STRING:
            return self.text("string"), None
        dt = _SCALARS.get(vtype)
        if dt is not None:
            at = self.take(dt.itemsize, vtype.name.lower())
            return self.mm[at:at + dt.itemsize].view(dt)[0].item(), None
        itype = self.vtype("array item type")
        return self.array(itype, self.u64("array length")), itype

    def array(self, itype: GGUFValueType, n: int):
        dt = _SCALARS.get(itype)
        if dt is not None:
            at = self.take(n * dt.itemsize, f"array of {n} {itype.name.lower()}")
            return self.mm[at:at + n * dt.itemsize].view(dt)
        if itype == GGUFValueType.STRING:
            if n * 8 > self.size - self.pos:
                raise self.damaged(f"array of {n} strings runs past the end of the file")
            end = _walk_strings(self.buf, self.pos, n)
            if end is None:             # walk again, checked, to name the item that overruns
                for j in range(n):
                    m = self.u64(f"item #{j} string length")
                    self.take(m, f"item #{j} string length {m}")
            out, self.pos = StringArray(self.mm, self.pos, n), end
            return out
        if n * 12 > self.size - self.pos:   # array of arrays: each item has a type and a length
            raise self.damaged(f"array of {n} arrays runs past the end of the file")
        items = []
        for _ in range(n):
            sub = self.vtype("array item type")
            items.append(self.array(sub, self.u64("array length")))
        return items


@dataclass(frozen=True, eq=False)
class GGUFFile:
    """A GGUF file's metadata and tensor infos, over a read-only map of the file."""

    path: str
    data: np.memmap = field(repr=False)  # (file size,) u8, the whole file
    version: int
    alignment: int
    data_offset: int                    # start of the tensor data section
    fields: dict[str, Field] = field(repr=False)
    tensors: list[TensorInfo] = field(repr=False)

    def value(self, key: str):
        """The key's value (see Field.value), or None if the file lacks it."""
        f = self.fields.get(key)
        return None if f is None else f.value

    @classmethod
    def open(cls, path: str | os.PathLike) -> "GGUFFile":
        path = str(path)
        mm, magic = _map_regular_file(path)
        if mm is None:
            raise GGUFError(f"{path}: not a GGUF file (magic {magic!r}, expected {_MAGIC!r})")
        cur = _Cursor(path, mm)
        cur.pos = 4
        version = cur.u32("version")
        if version & 0xFFFF == 0:
            raise GGUFError(f"{path}: GGUF version {version:#x} looks byte-swapped (big-endian files are not supported)")
        if version not in READER_SUPPORTED_VERSIONS:
            raise GGUFError(f"{path}: unsupported GGUF version {version} "
                            f"(supported: {', '.join(map(str, READER_SUPPORTED_VERSIONS))})")
        n_tensors, n_kv = cur.u64("tensor count"), cur.u64("key count")
        if n_kv * _MIN_KEY + n_tensors * _MIN_TENSOR > cur.size - cur.pos:
            raise cur.damaged(f"header claims {n_kv} keys and {n_tensors} tensors, more than fit in the file")
        fields = _read_fields(cur, n_kv)
        infos = _read_tensor_infos(cur, n_tensors)
        alignment = GGUF_DEFAULT_ALIGNMENT
        if "general.alignment" in fields:
            f = fields["general.alignment"]
            alignment = f.value
            if f.type != GGUFValueType.UINT32 or alignment == 0 or alignment & (alignment - 1):
                raise GGUFError(f"{path}: general.alignment = {alignment!r} ({f.type.name.lower()}): "
                                "must be a power-of-two uint32")
        data_offset = -(-cur.pos // alignment) * alignment
        if data_offset > cur.size and infos:
            raise GGUFError(f"{path}: truncated or damaged: the tensor data starts at byte {data_offset} "
                            f"(general.alignment = {alignment}), past the end of the file ({cur.size} bytes)")
        tensors = [_tensor(path, mm, data_offset, *info) for info in infos]
        return cls(path, mm, version, alignment, data_offset, fields, tensors)


_NOT_REGULAR = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO"), (stat.S_ISCHR, "a character device"),
                (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"))


def _not_regular(path: str, mode: int) -> GGUFError:
    kind = next((name for test, name in _NOT_REGULAR if test(mode)), "not a regular file")
    return GGUFError(f"{path}: is {kind}, not a GGUF file (a regular file is needed)")


def _map_regular_file(path: str) -> tuple[np.memmap | None, bytes]:
    """(read-only map of the file or None when its magic is wrong, its first 4 bytes).

    Only regular files: a FIFO would block in open(), a device could be endless. The type is
    checked before opening and again on the open descriptor (opened non-blocking).
    """
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise GGUFError(f"{path}: cannot read ({exc.strerror or exc})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _not_regular(path, st.st_mode)
        with os.fdopen(fd, "rb") as fh:
            fd = -1                     # the file object owns it now
            magic = fh.read(4)
            return (np.memmap(fh, mode="r") if magic == _MAGIC else None), magic
    except OSError as exc:
        raise GGUFError(f"{path}: cannot read ({exc.strerror or exc})") from None
    finally:
        if fd >= 0:
            os.close(fd)


def open_gguf(path: str | os.PathLike) -> GGUFFile:
    """Open and bounds-check a GGUF file for loading; every failure is a one-line GGUFError.

    GGUFFile.open checks the file type, the magic, the header and that every tensor lies
    inside the file; here also: alignment and empty dimensions.
    """
    gf = GGUFFile.open(path)
    for t in gf.tensors:
        if t.data_offset % gf.alignment:
            raise GGUFError(f"{gf.path}: tensor {t.name} offset {t.data_offset} is not {gf.alignment}-byte aligned")
        if any(int(d) <= 0 for d in t.shape):
            raise GGUFError(f"{gf.path}: tensor {t.name} has an empty dimension {[int(d) for d in t.shape]}")
    return gf


def _read_fields(cur: _Cursor, n_kv: int) -> dict[str, Field]:
    fields: dict[str, Field] = {}
    for i in range(n_kv):
        cur.where = f"key #{i} "
        name = cur.text("name", strict=True)
        cur.where = f"key #{i} ({name}) "
        if name in fields:
            raise cur.damaged("appears twice")
        vtype = cur.vtype("value type")
        value, itype = cur.value(vtype)
        fields[name] = Field(name, vtype, itype, value)
    cur.where = ""
    return fields


def _read_tensor_infos(cur: _Cursor, n_tensors: int) -> list[tuple]:
    infos, names = [], set()
    for i in range(n_tensors):
        cur.where = f"tensor info #{i} "
        name = cur.text("name", strict=True)
        cur.where = f"tensor info #{i} ({name}) "
        if name in names:
            raise cur.damaged("appears twice")
        names.add(name)
        n_dims = cur.u32("dimension count")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise cur.damaged(f"has {n_dims} dimensions (1 to {_MAX_DIMS} allowed)")
        at = cur.take(8 * n_dims, f"{n_dims} x u64 dimensions")
        dims = np.array(cur.mm[at:at + 8 * n_dims].view("<u8"))
        raw = cur.u32("type")
        try:
            ttype = GGMLQuantizationType(raw)
        except ValueError:
            raise cur.damaged(f"type {raw} is not a GGML type") from None
        infos.append((name, dims, ttype, cur.u64("data offset")))
    cur.where = ""
    return infos


def _tensor(path: str, mm: np.memmap, data_start: int, name: str, dims: np.ndarray,
            ttype: GGMLQuantizationType, offset: int) -> TensorInfo:
    if ttype not in GGML_QUANT_SIZES:
        raise GGUFError(f"{path}: tensor {name} has type {ttype.name} with no known block size")
    block, type_size = GGML_QUANT_SIZES[ttype]
    ne = [int(d) for d in dims]
    if ne[0] % block:
        raise GGUFError(f"{path}: tensor {name} row length {ne[0]} is not a multiple of the "
                        f"{ttype.name} block size {block}")
    if math.prod(max(d, 1) for d in ne) >= 1 << 63:   # ggml's int64 element count
        raise GGUFError(f"{path}: tensor {name} shape {ne} has more than 2^63 elements")
    n_elements = math.prod(ne)
    n_bytes = n_elements // block * type_size
    start = data_start + offset
    end, size = start + n_bytes, int(mm.shape[0])
    if end > size:
        raise GGUFError(f"{path}: tensor {name} data [{start}, {end}) lies outside the file ({size} bytes)")
    np_dims = tuple(reversed(ne))
    raw = mm[start:end]
    try:
        if ttype in _TYPED:
            data = raw.view(_TYPED[ttype]).reshape(np_dims)
        else:
            data = raw.reshape(quant_shape_to_byte_shape(np_dims, ttype))
    except ValueError as exc:            # e.g. a zero-size tensor with absurd other dimensions
        raise GGUFError(f"{path}: tensor {name} shape {ne} cannot be viewed ({exc})") from None
    return TensorInfo(name, ttype, dims, n_elements, n_bytes, start, data)
