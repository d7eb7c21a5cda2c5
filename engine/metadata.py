"""Typed, range-checked reads of GGUF metadata keys, and the GGUF names of tensors.

Every key the engine reads goes through ``Meta``: the value must have the right GGUF
type (an integer key stored as a string, a float or an array is refused, NaN and
infinities everywhere) and lie in the range the kernels can run. A bad value is one
``GGUFError`` line of the form

    <file>: <key> = <value>: <what is allowed>

and a missing required key ``<file>: missing key <key>``. Keys are gguf-py's ``Keys``
templates (``"{arch}.embedding_length"``), formatted with the file's architecture.
Tensor names come from gguf-py's ``TENSOR_NAMES`` (``tensor_name``).
"""
from __future__ import annotations

import math

from gguf import GGUFValueType
from gguf.constants import TENSOR_NAMES, MODEL_TENSOR

from engine.errors import GGUFError
from engine.gguf_file import Field, GGUFFile

REQUIRED = object()          # default of a key that must be present
_T = GGUFValueType
INT_TYPES = {_T.UINT8, _T.INT8, _T.UINT16, _T.INT16, _T.UINT32, _T.INT32, _T.UINT64, _T.INT64}
FLOAT_TYPES = {_T.FLOAT32, _T.FLOAT64}


def tensor_name(kind: MODEL_TENSOR, bid: int | None = None, suffix: str = "weight") -> str:
    """gguf-py's name of a tensor kind (block bid), e.g. ``blk.3.attn_q.weight``."""
    base = TENSOR_NAMES[kind]
    return (base.format(bid=bid) if bid is not None else base) + (f".{suffix}" if suffix else "")


def show(f: Field) -> str:
    """A metadata value as an error message prints it, with its type when that is the fault."""
    if f.type == _T.ARRAY:
        item = f.item_type.name.lower() if f.item_type is not None else "?"
        return f"array of {len(f.value)} {item}"
    if f.type == _T.STRING:
        text = f.value if len(f.value) <= 40 else f.value[:37] + "..."
        return f"{text!r} (string)"
    if f.type == _T.BOOL:
        return f"{'true' if f.value else 'false'} (bool)"
    if f.type in FLOAT_TYPES:
        return f"{f.value!r} ({f.type.name.lower()})"
    return str(f.value)


def _interval(lo, hi, lo_open: bool = False) -> str:
    def fmt(v):
        return str(v) if isinstance(v, int) else f"{v:g}"
    return f"{'(' if lo_open else '['}{fmt(lo)}, {fmt(hi)}]"


class Meta:
    """The metadata of one GGUF file, read with type and range checks (see the module docstring)."""

    def __init__(self, gf: GGUFFile, arch: str = ""):
        self.gf, self.path, self.arch = gf, gf.path, arch

    def key(self, key: str) -> str:
        return key.format(arch=self.arch)

    def has(self, key: str) -> bool:
        return self.key(key) in self.gf.fields

    def fail(self, key: str, shown, allowed: str) -> GGUFError:
        """The one-line error for a key: ``<file>: <key> = <shown>: <allowed>``."""
        return GGUFError(f"{self.path}: {self.key(key)} = {shown}: {allowed}")

    def _field(self, key: str, default) -> Field | None:
        f = self.gf.fields.get(self.key(key))
        if f is None and default is REQUIRED:
            raise GGUFError(f"{self.path}: missing key {self.key(key)}")
        return f

    def int(self, key: str, default=REQUIRED, *, lo: int = 1, hi: int, multiple: int = 1,
            why: str = "") -> int:
        """An integer key in [lo, hi] (and a multiple of ``multiple``); ``why`` explains a bound."""
        f = self._field(key, default)
        if f is None:
            return default
        allowed = f"must be an integer in {_interval(lo, hi)}" + (f", a multiple of {multiple}" if multiple > 1 else "")
        allowed += f" ({why})" if why else ""
        if f.type not in INT_TYPES:
            raise self.fail(key, show(f), allowed)
        v = int(f.value)
        if not lo <= v <= hi or v % multiple:
            raise self.fail(key, v, allowed)
        return v

    def float(self, key: str, default=REQUIRED, *, lo: float, hi: float, lo_open: bool = False,
              why: str = "") -> float:
        """A finite number in [lo, hi] ((lo, hi] with lo_open); integer types are accepted."""
        f = self._field(key, default)
        if f is None:
            return default
        allowed = f"must be a finite number in {_interval(lo, hi, lo_open)}" + (f" ({why})" if why else "")
        if f.type not in FLOAT_TYPES and f.type not in INT_TYPES:
            raise self.fail(key, show(f), allowed)
        v = float(f.value)
        if not math.isfinite(v) or v > hi or v < lo or (lo_open and v == lo):
            raise self.fail(key, show(f), allowed)
        return v

    def str(self, key: str, default=REQUIRED, *, choices: tuple[str, ...] | None = None) -> str:
        """A string key (one of ``choices`` when given)."""
        f = self._field(key, default)
        if f is None:
            return default
        allowed = f"must be one of: {', '.join(choices)}" if choices else "must be a string"
        if f.type != _T.STRING:
            raise self.fail(key, show(f), allowed)
        if choices and f.value not in choices:
            raise self.fail(key, repr(f.value), allowed)
        return f.value

    def bool(self, key: str, default=REQUIRED) -> bool:
        f = self._field(key, default)
        if f is None:
            return default
        if f.type != _T.BOOL:
            raise self.fail(key, show(f), "must be a bool")
        return bool(f.value)

    def length(self, key: str, *, hi: int) -> int | None:
        """The number of items of an array key (None when absent), at most hi."""
        f = self._field(key, None)
        if f is None:
            return None
        if f.type != _T.ARRAY:
            raise self.fail(key, show(f), "must be an array")
        if len(f.value) > hi:
            raise self.fail(key, show(f), f"must have at most {hi} items")
        return len(f.value)
