"""Facts around a llama.cpp / ik_llama.cpp run that its log prints before the results.

Everything here is optional: a log without a line simply lacks that fact. Values
are kept as the log spells them (strings) except where a number is obvious.
"""
from __future__ import annotations

import re
import shlex

from engine.options import SETTINGS

# `llm_load_print_meta:` (ik, older mainline) and `print_info:` (newer mainline).
_PRINT_META = re.compile(r"^(?:llm_load_print_meta|print_info):\s+(.+?)\s+=\s+(.*?)\s*$")
_LOADER_KV = re.compile(r"^llama_model_loader: - kv\s+\d+:\s+(\S+)\s+\S+\s+=\s+(.*?)\s*$")
_CONTEXT = re.compile(r"^(?:llama_new_context_with_model|llama_context|llama_init_from_model):\s+(\w+)\s+=\s+(.*?)\s*$")
_MAIN = re.compile(r"^main:\s+(n_kv_max\s*=.*)$")
_KV_TYPES = re.compile(r"\b(K|V|c\^KV|kv\^T)\s+\((\w+)\)")
_BRACKETED = re.compile(r"\[(\S+?)\]")

MODEL_KEYS = {
    "arch": "arch", "model type": "model_type", "model ftype": "ftype", "model params": "params",
    "model size": "size", "n_ctx_train": "n_ctx_train", "general.name": "name", "n_layer": "n_layer",
    "n_embd": "n_embd", "n_head": "n_head", "n_head_kv": "n_head_kv", "n_expert": "n_expert",
    "n_expert_used": "n_expert_used", "file type": "ftype",
}
CONTEXT_KEYS = ("n_ctx", "n_batch", "n_ubatch", "flash_attn", "mla_attn", "attn_max_b", "fused_moe", "ser")

# sweep-bench / llama-bench flags worth turning into settings (engine.options spells the
# engine's); value-less flags map to True.
FLAG_SETTINGS = {
    **{f: s.name for s in SETTINGS if s.kind is not bool for f in s.flags},
    "-m": "model", "--model": "model", "--numa": "numa", "-ngl": "n_gpu_layers", "--n-gpu-layers": "n_gpu_layers",
    "-ser": "ser",
}
BOOL_FLAGS = {f: s.name for s in SETTINGS if s.kind is bool for f in s.flags}


def _number(text: str):
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def command_settings(argv: list[str]) -> dict:
    """Settings named on a llama-sweep-bench / numactl command line."""
    out: dict = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in BOOL_FLAGS:
            # `-fa` alone is a switch; newer mainline also takes `-fa on|off|auto`.
            nxt = argv[i + 1] if i + 1 < len(argv) else ""
            if nxt in ("on", "off", "auto", "0", "1"):
                out[BOOL_FLAGS[arg]] = nxt in ("on", "1") if nxt != "auto" else "auto"
                i += 1
            else:
                out[BOOL_FLAGS[arg]] = True
        elif arg in FLAG_SETTINGS and i + 1 < len(argv):
            out[FLAG_SETTINGS[arg]] = _number(argv[i + 1])
            i += 1
        i += 1
    return out


def _numactl(argv: list[str]) -> dict:
    out = {}
    for flag, name in (("-N", "cpunodebind"), ("--cpunodebind", "cpunodebind"), ("-m", "membind"),
                       ("--membind", "membind"), ("-C", "physcpubind"), ("--physcpubind", "physcpubind"),
                       ("-i", "interleave"), ("--interleave", "interleave")):
        if flag in argv[:-1]:
            out[name] = argv[argv.index(flag) + 1]
    return out


def extract(lines: list[str]) -> tuple[dict, dict]:
    """(meta, settings) from a log's lines. ``settings`` use numasweep setting names."""
    meta: dict = {}
    model: dict = {}
    loader: dict = {}
    context: dict = {}
    host: dict = {}
    settings: dict = {}
    command = _command(lines)
    if command:
        meta["command"] = command
        try:
            argv = shlex.split(command)
        except ValueError:
            argv = command.split()
        settings.update(command_settings(argv))
        if argv and argv[0].endswith("numactl"):
            meta["numactl"] = _numactl(argv[: next((i for i, a in enumerate(argv) if "llama" in a), len(argv))])
    for i, line in enumerate(lines):
        if m := _PRINT_META.match(line):
            key = m.group(1).strip()
            if key in MODEL_KEYS:
                model[MODEL_KEYS[key]] = _number(m.group(2))
        elif m := _LOADER_KV.match(line):
            if m.group(1).startswith("general.") or m.group(1).endswith(".context_length"):
                loader[m.group(1)] = _number(m.group(2))
        elif m := _CONTEXT.match(line):
            if m.group(1) in CONTEXT_KEYS:
                context[m.group(1)] = _number(m.group(2))
        elif ("KV" in line or "kv_cache" in line) and (kv := dict(_KV_TYPES.findall(line))):
            if "K" in kv:
                settings.setdefault("type_k", kv["K"])
            if "V" in kv:
                settings.setdefault("type_v", kv["V"])
            if "c^KV" in kv:  # MLA: one compressed cache, its type is the -ctk type
                settings.setdefault("type_k", kv["c^KV"])
        elif line.startswith("Current power profile is:"):
            host["power_profile"] = line.split(":", 1)[1].strip()
        elif line.startswith("Current THP enabled and defrag configs are"):
            for name, nxt in zip(("thp_enabled", "thp_defrag"), lines[i + 1 : i + 3]):
                if b := _BRACKETED.search(nxt):
                    host[name] = b.group(1)
        elif line.startswith("Set numa balancing to be"):
            rest = line.split(":", 1)[1].strip() if ":" in line else ""
            value = rest or (lines[i + 1].strip() if i + 1 < len(lines) else "")
            host["numa_balancing"] = _number(value)
    if model:
        meta["model"] = model
    if loader:
        meta["gguf"] = loader
    if context:
        meta["context"] = context
    if host:
        meta["host_state"] = host
    return meta, settings


def _command(lines: list[str]) -> str | None:
    """The command line when the log starts with one (`$ numactl ... \\` continued)."""
    for i, line in enumerate(lines[:50]):
        text = line.strip()
        if text.startswith("$ ") or ("llama-" in text and "bench" in text and not text.startswith(("llama_", "llm_", "main:"))):
            parts = []
            j = i
            while j < len(lines):
                piece = lines[j].strip()
                if piece.startswith("$ "):
                    piece = piece[2:]
                cont = piece.endswith("\\")
                parts.append(piece.rstrip("\\").strip())
                if not cont:
                    break
                j += 1
            return " ".join(p for p in parts if p)
    return None


def main_line_settings(line: str) -> dict | None:
    """ik sweep-bench's `main: n_kv_max = 32768, n_batch = 2048, ...` as engine JSONL keys."""
    m = _MAIN.match(line.strip())
    if not m:
        return None
    out = {}
    for part in m.group(1).split(","):
        if "=" in part:
            key, value = part.split("=", 1)
            out[key.strip()] = _number(value.strip())
    return out
