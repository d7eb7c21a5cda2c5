"""float64 numpy reference of the gemma3 forward pass (from llama.cpp's graph), exact KV cache.

Independent of engine code except that the caller may pass already-opened tensors: the
real 253 MB Gemma file takes 30 s in gguf.GGUFReader (its tokenizer arrays), so tests on it
hand in the engine's parsed tensors; the dense values still come from gguf.quants.
"""
from __future__ import annotations

import math

import numpy as np
from gguf import GGUFReader

from reference import _dense, attention, gelu_tanh, rmsnorm, rope


def _kv(reader, key, default=None):
    f = reader.fields.get(key)
    if f is None:
        return default
    return f.parts[f.data[0]].tolist()[0]


class RefGemma3:
    def __init__(self, path, tensors=None, hparams: dict | None = None):
        if tensors is None:
            r = GGUFReader(str(path))
            tensors = r.tensors
            hp = {k: _kv(r, f"gemma3.{k}") for k in (
                "embedding_length", "block_count", "attention.head_count", "attention.head_count_kv",
                "attention.key_length", "attention.layer_norm_rms_epsilon", "rope.freq_base",
                "attention.sliding_window", "attention.sliding_window_pattern", "rope.freq_base_swa")}
        else:
            hp = dict(hparams)
        self.t = {t.name: _dense(t) for t in tensors}
        self.E = int(hp["embedding_length"])
        self.L = int(hp["block_count"])
        self.H = int(hp["attention.head_count"])
        self.Hkv = int(hp["attention.head_count_kv"])
        self.hd = int(hp["attention.key_length"])
        self.eps = float(hp["attention.layer_norm_rms_epsilon"])
        self.base = float(hp["rope.freq_base"])
        self.base_swa = float(hp.get("rope.freq_base_swa") or 10000.0)
        self.window = int(hp["attention.sliding_window"])
        pattern = int(hp.get("attention.sliding_window_pattern") or 6)
        self.local = [(i + 1) % pattern != 0 for i in range(self.L)]
        self.K = [np.zeros((0, self.Hkv, self.hd)) for _ in range(self.L)]
        self.V = [np.zeros((0, self.Hkv, self.hd)) for _ in range(self.L)]

    def eval(self, tokens, pos):
        t, n, hd = self.t, len(tokens), self.hd
        positions = np.arange(pos, pos + n, dtype=np.float64)
        x = t["token_embd.weight"][np.asarray(tokens)] * math.sqrt(self.E)
        for i in range(self.L):
            p = f"blk.{i}."
            base, window = (self.base_swa, self.window) if self.local[i] else (self.base, 0)
            h = rmsnorm(x, t[p + "attn_norm.weight"], self.eps)
            q = rmsnorm((h @ t[p + "attn_q.weight"].T).reshape(n, self.H, hd), t[p + "attn_q_norm.weight"], self.eps)
            k = rmsnorm((h @ t[p + "attn_k.weight"].T).reshape(n, self.Hkv, hd), t[p + "attn_k_norm.weight"],
                        self.eps)
            v = (h @ t[p + "attn_v.weight"].T).reshape(n, self.Hkv, hd)
            q, k = rope(q, positions, hd, base, True), rope(k, positions, hd, base, True)
            assert self.K[i].shape[0] == pos
            self.K[i] = np.concatenate([self.K[i], k])
            self.V[i] = np.concatenate([self.V[i], v])
            a = attention(q, self.K[i], self.V[i], pos, window=window).reshape(n, -1)
            x = x + rmsnorm(a @ t[p + "attn_output.weight"].T, t[p + "post_attention_norm.weight"], self.eps)
            h = rmsnorm(x, t[p + "ffn_norm.weight"], self.eps)
            f = (gelu_tanh(h @ t[p + "ffn_gate.weight"].T) * (h @ t[p + "ffn_up.weight"].T))
            x = x + rmsnorm(f @ t[p + "ffn_down.weight"].T, t[p + "post_ffw_norm.weight"], self.eps)
        return rmsnorm(x, t["output_norm.weight"], self.eps) @ t["token_embd.weight"].T
