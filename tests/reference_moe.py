"""float64 numpy references for the MoE (qwen2moe / mixtral) and deepseek2 forward passes.

Written from llama.cpp's graph definitions (build_moe_ffn, the deepseek2 block),
independent of engine code: weights dequantized with gguf.quants, exact softmax
attention, the deepseek2 attention in its *decompressed* form (per-head K/V from
c^KV via attn_kv_b), the form every engine MLA mode must agree with.
"""
from __future__ import annotations

import math

import numpy as np
from gguf import GGUFReader

import reference as ref

ROUTING_MARGIN = 1e-4   # a top-k decision closer than this is ambiguous at Q8_0 precision


def _kv(r, key, default=None):
    f = r.fields.get(key)
    if f is None:
        return default
    v = f.parts[f.data[0]]
    if f.types and f.types[0].name == "STRING":
        return bytes(v).decode()
    return v.tolist()[0]


def moe_ffn(h, t, p, *, n_used, gating, norm_w, scale, shexp_gated):
    """llama.cpp build_moe_ffn (SiLU experts) + shared expert; h (n, E) float64."""
    logits = h @ t[p + "ffn_gate_inp.weight"].T
    if gating == "softmax":
        probs = ref.softmax(logits)
    else:
        probs = 1.0 / (1.0 + np.exp(-logits))
    sel = probs + t.get(p + "exp_probs_b.bias", 0.0)
    order = np.argsort(-sel, axis=1, kind="stable")
    srt = np.take_along_axis(sel, order, axis=1)
    if order.shape[1] > n_used:
        gap = (srt[:, n_used - 1] - srt[:, n_used]).min()
        assert gap > ROUTING_MARGIN, f"test data has an ambiguous top-k routing (gap {gap:.2e})"
    ids = order[:, :n_used]
    w = np.take_along_axis(probs, ids, axis=1)
    if norm_w:
        w = w / w.sum(axis=1, keepdims=True)
    w = w * scale
    G, U, D = (t[p + f"ffn_{x}_exps.weight"] for x in ("gate", "up", "down"))   # (X, out, in)
    out = np.zeros_like(h)
    for i in range(h.shape[0]):
        for j, e in enumerate(ids[i]):
            g, u = G[e] @ h[i], U[e] @ h[i]
            out[i] += w[i, j] * (D[e] @ (g / (1 + np.exp(-g)) * u))
    if p + "ffn_up_shexp.weight" in t:
        g, u = h @ t[p + "ffn_gate_shexp.weight"].T, h @ t[p + "ffn_up_shexp.weight"].T
        s = (g / (1 + np.exp(-g)) * u) @ t[p + "ffn_down_shexp.weight"].T
        if shexp_gated:
            s = s * (1.0 / (1.0 + np.exp(-(h @ t[p + "ffn_gate_inp_shexp.weight"]))))[:, None]
        out += s
    return out


class RefMoEModel(ref.RefModel):
    """qwen2moe / mixtral: the llama reference with the FFN replaced by moe_ffn."""

    def __init__(self, path):
        super().__init__(path)
        r = GGUFReader(str(path))
        a = self.arch
        self.neox = a in ("qwen2", "qwen2moe")
        self.n_used = int(_kv(r, f"{a}.expert_used_count"))
        self.norm_w = a == "llama"
        self.shexp_gated = a == "qwen2moe"

    def eval(self, tokens, pos):
        t = self.t
        tokens = np.asarray(tokens)
        n = len(tokens)
        positions = np.arange(pos, pos + n, dtype=np.float64)
        x = t["token_embd.weight"][tokens]
        for i in range(self.L):
            p = f"blk.{i}."
            h = ref.rmsnorm(x, t[p + "attn_norm.weight"], self.eps)
            q = h @ t[p + "attn_q.weight"].T + t.get(p + "attn_q.bias", 0.0)
            k = h @ t[p + "attn_k.weight"].T + t.get(p + "attn_k.bias", 0.0)
            v = h @ t[p + "attn_v.weight"].T + t.get(p + "attn_v.bias", 0.0)
            q = ref.rope(q.reshape(n, self.H, self.hd), positions, self.n_rot, self.base, self.neox)
            k = ref.rope(k.reshape(n, self.Hkv, self.hd), positions, self.n_rot, self.base, self.neox)
            self.K[i] = np.concatenate([self.K[i], k])
            self.V[i] = np.concatenate([self.V[i], v.reshape(n, self.Hkv, self.hd)])
            x = x + ref.attention(q, self.K[i], self.V[i], pos).reshape(n, -1) @ t[p + "attn_output.weight"].T
            h = ref.rmsnorm(x, t[p + "ffn_norm.weight"], self.eps)
            x = x + moe_ffn(h, t, p, n_used=self.n_used, gating="softmax", norm_w=self.norm_w, scale=1.0,
                            shexp_gated=self.shexp_gated)
        h = ref.rmsnorm(x, t["output_norm.weight"], self.eps)
        return h @ t.get("output.weight", t["token_embd.weight"]).T


def yarn_rope(x, positions, n_rot, base, freq_scale, n_ctx_orig, ext_factor, attn_factor,
              beta_fast=32.0, beta_slow=1.0):
    """ggml rope_yarn, NORM (adjacent pairs) order; x (n, heads, n_rot) float64."""
    half = n_rot // 2
    i0 = np.arange(half, dtype=np.float64)
    theta_extrap = positions[:, None] * base ** (-2.0 * i0 / n_rot)[None, :]
    theta_interp = freq_scale * theta_extrap
    mscale = attn_factor
    if ext_factor:
        def corr(nr):
            return n_rot * math.log(n_ctx_orig / (nr * 2 * math.pi)) / (2 * math.log(base))
        lo, hi = max(0.0, math.floor(corr(beta_fast))), min(n_rot - 1.0, math.ceil(corr(beta_slow)))
        mix = (1 - np.clip((i0 - lo) / max(0.001, hi - lo), 0, 1)) * ext_factor
        theta = theta_interp * (1 - mix) + theta_extrap * mix
        mscale *= 1.0 + 0.1 * math.log(1.0 / freq_scale)
    else:
        theta = theta_interp
    c, s = (np.cos(theta) * mscale)[:, None, :], (np.sin(theta) * mscale)[:, None, :]
    x = np.array(x, np.float64)
    a, b = x[..., 0::2].copy(), x[..., 1::2].copy()
    x[..., 0::2], x[..., 1::2] = a * c - b * s, a * s + b * c
    return x


class RefDeepSeek2:
    """float64 deepseek2 (llama.cpp's graph, decompressed MLA) with an exact c^KV history."""

    def __init__(self, path):
        r = GGUFReader(str(path))
        self.t = t = {x.name: ref._dense(x) for x in r.tensors}
        a = "deepseek2"

        def kv(key, default=None):
            return _kv(r, f"{a}.{key}", default)

        self.E, self.L, self.H = int(kv("embedding_length")), int(kv("block_count")), int(kv("attention.head_count"))
        self.eps = float(kv("attention.layer_norm_rms_epsilon"))
        self.rank = int(kv("attention.kv_lora_rank"))
        self.dk, self.dv = int(kv("attention.key_length")), int(kv("attention.value_length"))
        self.rot = int(kv("rope.dimension_count"))
        self.nope = self.dk - self.rot
        self.base = float(kv("rope.freq_base", 10000.0))
        self.dense = int(kv("leading_dense_block_count", 0))
        self.n_used = int(kv("expert_used_count"))
        self.gating = {1: "softmax", 2: "sigmoid"}[int(kv("expert_gating_func", 1))]
        self.norm_w = bool(kv("expert_weights_norm", False))
        self.scale = float(kv("expert_weights_scale", 1.0))
        yarn = kv("rope.scaling.type") == "yarn"
        factor = float(kv("rope.scaling.factor", 1.0)) if yarn else 1.0
        self.freq_scale = 1.0 / factor
        self.orig = int(kv("rope.scaling.original_context_length", 0) or 0)
        self.ext = 1.0 if yarn else 0.0
        log_mul = float(kv("rope.scaling.yarn_log_multiplier", 0.0) or 0.0)
        mscale = 1.0 + log_mul * math.log(1.0 / self.freq_scale)
        self.kq_scale = mscale * mscale / math.sqrt(self.dk)
        self.attn_factor = 1.0 / (1.0 + 0.1 * math.log(1.0 / self.freq_scale))
        self.C = [np.zeros((0, self.rank + self.rot)) for _ in range(self.L)]   # [c_kv, k_pe] per position
        if "blk.0.attn_kv_b.weight" not in t:   # split k_b (H, rank, nope) / v_b (H, dv, rank) -> kv_b
            for i in range(self.L):
                kb, vb = t[f"blk.{i}.attn_k_b.weight"], t[f"blk.{i}.attn_v_b.weight"]
                t[f"blk.{i}.attn_kv_b.weight"] = np.concatenate(
                    [kb.transpose(0, 2, 1), vb], axis=1).reshape(-1, self.rank)

    def truncate(self, n):
        self.C = [c[:n] for c in self.C]

    def eval(self, tokens, pos):
        t, H, nope, rot, rank = self.t, self.H, self.nope, self.rot, self.rank
        tokens = np.asarray(tokens)
        n = len(tokens)
        positions = np.arange(pos, pos + n, dtype=np.float64)
        x = t["token_embd.weight"][tokens]
        for i in range(self.L):
            p = f"blk.{i}."
            h = ref.rmsnorm(x, t[p + "attn_norm.weight"], self.eps)
            if p + "attn_q_a.weight" in t:
                q = ref.rmsnorm(h @ t[p + "attn_q_a.weight"].T, t[p + "attn_q_a_norm.weight"], self.eps)
                q = q @ t[p + "attn_q_b.weight"].T
            else:
                q = h @ t[p + "attn_q.weight"].T
            q = q.reshape(n, H, nope + rot)
            kva = h @ t[p + "attn_kv_a_mqa.weight"].T
            c = ref.rmsnorm(kva[:, :rank], t[p + "attn_kv_a_norm.weight"], self.eps)
            rp = dict(positions=positions, n_rot=rot, base=self.base, freq_scale=self.freq_scale,
                      n_ctx_orig=self.orig, ext_factor=self.ext, attn_factor=self.attn_factor)
            q_pe = yarn_rope(q[:, :, nope:], **rp)
            k_pe = yarn_rope(kva[:, None, rank:], **rp)[:, 0]
            self.C[i] = np.concatenate([self.C[i], np.concatenate([c, k_pe], axis=1)])
            C = self.C[i]
            kv = (C[:, :rank] @ t[p + "attn_kv_b.weight"].T).reshape(-1, H, nope + self.dv)
            K = np.concatenate([kv[:, :, :nope], np.broadcast_to(C[:, None, rank:], (C.shape[0], H, rot))], axis=2)
            V = kv[:, :, nope:]
            Q = np.concatenate([q[:, :, :nope], q_pe], axis=2)
            a = np.zeros((n, H, self.dv))
            for j in range(n):
                na = pos + j + 1
                for hh in range(H):
                    a[j, hh] = ref.softmax(K[:na, hh] @ Q[j, hh] * self.kq_scale) @ V[:na, hh]
            x = x + a.reshape(n, -1) @ t[p + "attn_output.weight"].T
            h = ref.rmsnorm(x, t[p + "ffn_norm.weight"], self.eps)
            if i < self.dense:
                g, u = h @ t[p + "ffn_gate.weight"].T, h @ t[p + "ffn_up.weight"].T
                x = x + (g / (1 + np.exp(-g)) * u) @ t[p + "ffn_down.weight"].T
            else:
                x = x + moe_ffn(h, t, p, n_used=self.n_used, gating=self.gating, norm_w=self.norm_w,
                                scale=self.scale, shexp_gated=False)
        h = ref.rmsnorm(x, t["output_norm.weight"], self.eps)
        return h @ t.get("output.weight", t["token_embd.weight"]).T
