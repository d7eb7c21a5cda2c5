"""Plain numpy float64 references for the engine's kernels and forward pass.

Written from the definitions (ggml semantics), independent of engine code:
weights are dequantized with gguf.quants, attention is exact softmax(QK^T)V.
"""
from __future__ import annotations

import math

import numpy as np
from gguf import GGMLQuantizationType, GGUFReader
from gguf import quants as gq


def rmsnorm(x, w, eps):
    x = np.asarray(x, np.float64)
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope(x, positions, n_rot, base, neox, freq_scale=1.0):
    # x: (n, heads, hd) float64
    x = np.array(x, np.float64)
    half = n_rot // 2
    inv = base ** (-2.0 * np.arange(half) / n_rot)
    th = freq_scale * positions[:, None] * inv[None, :]          # (n, half)
    c, s = np.cos(th)[:, None, :], np.sin(th)[:, None, :]
    if neox:
        a, b = x[..., :half].copy(), x[..., half:n_rot].copy()
        x[..., :half], x[..., half:n_rot] = a * c - b * s, a * s + b * c
    else:
        a, b = x[..., 0:n_rot:2].copy(), x[..., 1:n_rot:2].copy()
        x[..., 0:n_rot:2], x[..., 1:n_rot:2] = a * c - b * s, a * s + b * c
    return x


def softmax(x):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def attention(q, K, V, pos0, window=0, scale=None):
    # q: (n, H, hd); K, V: (n_kv_total, Hkv, hd); causal from absolute pos0; window > 0:
    # the query at position t sees [t-window+1, t] only
    n, H, hd = q.shape
    g = H // K.shape[1]
    scale = 1.0 / math.sqrt(hd) if scale is None else scale
    out = np.zeros((n, H, V.shape[2]))
    for i in range(n):
        na = pos0 + i + 1
        lo = max(0, na - window) if window > 0 else 0
        for h in range(H):
            s = K[lo:na, h // g] @ q[i, h] * scale
            out[i, h] = softmax(s) @ V[lo:na, h // g]
    return out


def gelu_tanh(x):
    x = np.asarray(x, np.float64)
    return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def _dense(t) -> np.ndarray:
    tt = GGMLQuantizationType(t.tensor_type)
    data = np.asarray(t.data)
    if tt == GGMLQuantizationType.F32:
        a = data.astype(np.float64)
    elif tt == GGMLQuantizationType.F16:
        a = data.astype(np.float64)
    else:
        a = gq.dequantize(data, tt).astype(np.float64)
    return a.reshape(tuple(reversed([int(d) for d in t.shape])))


class RefModel:
    """float64 llama/qwen2/qwen3 forward with an exact (uncompressed) KV cache.

    qwen3 (llama.cpp's graph): no q/k/v biases; q and k RMSNorm'd per head with
    attn_{q,k}_norm before NEOX RoPE; head size from attention.key_length.
    """

    def __init__(self, path):
        r = GGUFReader(str(path))
        self.t = {t.name: _dense(t) for t in r.tensors}

        def kv(key, default=None):
            f = r.fields.get(key)
            return default if f is None else f.parts[f.data[0]].tolist()[0]

        arch = bytes(r.fields["general.architecture"].parts[-1]).decode()
        self.arch = arch
        self.E = int(kv(f"{arch}.embedding_length"))
        self.L = int(kv(f"{arch}.block_count"))
        self.H = int(kv(f"{arch}.attention.head_count"))
        self.Hkv = int(kv(f"{arch}.attention.head_count_kv", self.H))
        self.hd = int(kv(f"{arch}.attention.key_length", self.E // self.H))
        self.eps = float(kv(f"{arch}.attention.layer_norm_rms_epsilon", 1e-5))
        self.base = float(kv(f"{arch}.rope.freq_base", 10000.0))
        self.n_rot = int(kv(f"{arch}.rope.dimension_count", self.hd))
        self.neox = arch in ("qwen2", "qwen3")
        self.K = [np.zeros((0, self.Hkv, self.hd)) for _ in range(self.L)]
        self.V = [np.zeros((0, self.Hkv, self.hd)) for _ in range(self.L)]

    def truncate(self, n):
        self.K = [k[:n] for k in self.K]
        self.V = [v[:n] for v in self.V]

    def eval(self, tokens, pos):
        t = self.t
        tokens = np.asarray(tokens)
        n = len(tokens)
        positions = np.arange(pos, pos + n, dtype=np.float64)
        x = t["token_embd.weight"][tokens]
        for i in range(self.L):
            p = f"blk.{i}."
            h = rmsnorm(x, t[p + "attn_norm.weight"], self.eps)
            q = h @ t[p + "attn_q.weight"].T + t.get(p + "attn_q.bias", 0.0)
            k = h @ t[p + "attn_k.weight"].T + t.get(p + "attn_k.bias", 0.0)
            v = h @ t[p + "attn_v.weight"].T + t.get(p + "attn_v.bias", 0.0)
            q, k = q.reshape(n, self.H, self.hd), k.reshape(n, self.Hkv, self.hd)
            if p + "attn_q_norm.weight" in t:        # qwen3: per-head norms before RoPE
                q = rmsnorm(q, t[p + "attn_q_norm.weight"], self.eps)
                k = rmsnorm(k, t[p + "attn_k_norm.weight"], self.eps)
            q = rope(q, positions, self.n_rot, self.base, self.neox)
            k = rope(k, positions, self.n_rot, self.base, self.neox)
            assert self.K[i].shape[0] == pos
            self.K[i] = np.concatenate([self.K[i], k])
            self.V[i] = np.concatenate([self.V[i], v.reshape(n, self.Hkv, self.hd)])
            a = attention(q, self.K[i], self.V[i], pos).reshape(n, -1)
            x = x + a @ t[p + "attn_output.weight"].T
            h = rmsnorm(x, t[p + "ffn_norm.weight"], self.eps)
            g = h @ t[p + "ffn_gate.weight"].T
            u = h @ t[p + "ffn_up.weight"].T
            x = x + ((g / (1 + np.exp(-g))) * u) @ t[p + "ffn_down.weight"].T
        h = rmsnorm(x, t["output_norm.weight"], self.eps)
        out = t.get("output.weight", t["token_embd.weight"])
        return h @ out.T


def rel_err(a, b) -> float:
    """max |a-b| relative to max |b|: the tolerance measure used in the tests."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))
