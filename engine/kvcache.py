"""Per-layer K/V cache in f32, f16 or q8_0, capacity n_ctx positions.

Storage per layer (one row per position, all KV heads side by side):
  f32   (n_ctx, n_kv_head*head_dim) f32
  f16   (n_ctx, n_kv_head*head_dim) uint16 fp16 bits
  q8_0  (n_ctx, n_kv_head*head_dim/32*34) uint8 Q8_0 blocks (each head's row is
        head_dim/32 whole blocks, so a head's K is a valid Q8_0 row)
Positions [0, n_used) are valid; the cache only grows at the end and only shrinks
from the end (what llama-sweep-bench's seq_rm of the TG tokens needs).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from engine.errors import EngineError
from engine.layout import QK8_0, q8_0_row_bytes
from engine.options import KV_TYPES
from engine.quant import f32_to_f16, quantize_q8_0, quantize_q8_0_pair

KV_TYPE_CODE = {"f32": 0, "f16": 1, "q8_0": 2}   # the cache type as the attention kernels take it


def kv_row_bytes(kv_type: str, n_values: int) -> int:
    if kv_type == "f32":
        return 4 * n_values
    if kv_type == "f16":
        return 2 * n_values
    return q8_0_row_bytes(n_values)


def alloc_rows(kv_type: str, n_ctx: int, n_values: int) -> np.ndarray:
    """A zeroed (n_ctx, row) cache array: f32 / f16 bits (uint16) / Q8_0 bytes (uint8)."""
    if kv_type == "f32":
        return np.zeros((n_ctx, n_values), dtype=np.float32)
    if kv_type == "f16":
        return np.zeros((n_ctx, n_values), dtype=np.uint16)
    return np.zeros((n_ctx, q8_0_row_bytes(n_values)), dtype=np.uint8)


def encode_rows(kv_type: str, x: np.ndarray) -> np.ndarray:
    """(n, n_values) f32 rows in a cache type's storage (see alloc_rows)."""
    if kv_type == "f32":
        return x
    if kv_type == "f16":
        return f32_to_f16(x)
    return quantize_q8_0(x)


class PositionBook:
    """Which positions of a cache hold data: [0, n_used). Writes extend it at the end and
    only a suffix can be removed (llama-sweep-bench's seq_rm of the TG tokens). Shared by
    KVCache and the MLA cache; the class provides ``n_ctx`` and ``n_used``."""

    def check_write(self, pos: int, n: int) -> None:
        if pos < 0 or pos + n > self.n_ctx:
            raise EngineError(f"KV cache overflow: positions {pos}..{pos + n} exceed n_ctx {self.n_ctx}")
        if pos > self.n_used:
            raise EngineError(f"KV cache hole: writing at {pos} but only {self.n_used} positions are filled")

    def commit(self, pos: int, n: int) -> None:
        self.n_used = max(self.n_used, pos + n)

    def clear(self) -> None:
        self.n_used = 0

    def remove(self, p0: int, p1: int = -1) -> None:
        """Drop positions [p0, p1) (p1 = -1: to the end). Only a suffix can go."""
        end = self.n_used if p1 < 0 else p1
        if p0 < 0 or end < p0:
            raise EngineError(f"KV remove: bad range [{p0}, {p1})")
        if end < self.n_used:
            raise EngineError(f"KV remove: [{p0}, {end}) would leave a hole before {self.n_used}")
        self.n_used = min(self.n_used, p0)


@dataclass
class KVCache(PositionBook):
    n_layer: int
    n_ctx: int
    n_kv_head: int
    head_dim_k: int
    head_dim_v: int
    type_k: str = "f16"
    type_v: str = "f16"
    k: list = field(default_factory=list)  # per layer, see module docstring
    v: list = field(default_factory=list)
    n_used: int = 0

    def __post_init__(self) -> None:
        for flag, t, hd in (("-ctk", self.type_k, self.head_dim_k), ("-ctv", self.type_v, self.head_dim_v)):
            if t not in KV_TYPES:
                raise EngineError(f"{flag}: unknown cache type {t!r} (allowed: {', '.join(KV_TYPES)})")
            if t == "q8_0" and hd % QK8_0:
                raise EngineError(f"{flag} q8_0 needs a head size that is a multiple of 32, got {hd}")
        if not self.k:
            self.k = [alloc_rows(self.type_k, self.n_ctx, self.n_kv_head * self.head_dim_k)
                      for _ in range(self.n_layer)]
            self.v = [alloc_rows(self.type_v, self.n_ctx, self.n_kv_head * self.head_dim_v)
                      for _ in range(self.n_layer)]

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self.k) + sum(a.nbytes for a in self.v)

    def store(self, layer: int, pos: int, k: np.ndarray, v: np.ndarray) -> None:
        """Write K, V (n, n_kv_head*head_dim) f32 at positions [pos, pos+n)."""
        n = k.shape[0]
        self.check_write(pos, n)
        k, v = np.ascontiguousarray(k), np.ascontiguousarray(v)
        if self.type_k == self.type_v == "q8_0":     # one launch, quantized in place
            quantize_q8_0_pair(k, self.k[layer][pos:pos + n], v, self.v[layer][pos:pos + n])
            return
        self.k[layer][pos:pos + n] = encode_rows(self.type_k, k)
        self.v[layer][pos:pos + n] = encode_rows(self.type_v, v)
