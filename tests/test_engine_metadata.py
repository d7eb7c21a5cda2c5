"""GGUF metadata checks (engine.metadata / engine.archs): every bad key is one line
``<file>: <key> = <value>: <what is allowed>``, exit 2, no traceback; non-regular files
are refused before open() can block."""
from __future__ import annotations

import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest
from gguf import GGUFReader, GGUFValueType as V

from engine.cli import main as engine_main

_FMT = {V.UINT8: "<B", V.INT8: "<b", V.UINT16: "<H", V.INT16: "<h", V.UINT32: "<I", V.INT32: "<i",
        V.FLOAT32: "<f", V.BOOL: "<?", V.UINT64: "<Q", V.INT64: "<q", V.FLOAT64: "<d"}


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def _value(vtype: V, value) -> bytes:
    if vtype == V.STRING:
        return _str(value)
    if vtype == V.ARRAY:
        item, items = value
        return struct.pack("<IQ", item, len(items)) + b"".join(_value(item, x) for x in items)
    return struct.pack(_FMT[vtype], value)


def write_meta(path, kv: dict) -> str:
    """A GGUF v3 file with only metadata: kv maps key -> (GGUFValueType, value) in order."""
    body = b"".join(_str(k) + struct.pack("<I", t) + _value(t, v) for k, (t, v) in kv.items())
    path.write_bytes(b"GGUF" + struct.pack("<IQQ", 3, 0, len(kv)) + body)
    return str(path)


def llama_meta(**over) -> dict:
    kv = {"general.architecture": (V.STRING, "llama"),
          "llama.block_count": (V.UINT32, 2), "llama.context_length": (V.UINT32, 2048),
          "llama.embedding_length": (V.UINT32, 128), "llama.feed_forward_length": (V.UINT32, 256),
          "llama.attention.head_count": (V.UINT32, 4), "llama.attention.head_count_kv": (V.UINT32, 2),
          "llama.rope.dimension_count": (V.UINT32, 32),
          "llama.attention.layer_norm_rms_epsilon": (V.FLOAT32, 1e-5)}
    for k, v in over.items():
        if v is None:
            kv.pop(k, None)
        else:
            kv[k] = v
    return kv


def _bench(path) -> tuple[int, list[str]]:
    import io
    from contextlib import redirect_stderr
    err = io.StringIO()
    with redirect_stderr(err):
        rc = engine_main(["bench", "-m", str(path), "-c", "64", "-ub", "32"])
    return rc, err.getvalue().strip().splitlines()


def test_the_base_file_passes_the_config(tmp_path):
    rc, err = _bench(write_meta(tmp_path / "ok.gguf", llama_meta()))
    assert rc == 2 and err == [f"python -m engine bench: error: {tmp_path / 'ok.gguf'}: missing tensor "
                               "token_embd.weight"]


NaN = float("nan")


@pytest.mark.parametrize("over,needle", [
    ({"llama.embedding_length": (V.STRING, "128")},
     "llama.embedding_length = '128' (string): must be an integer in [1, 1048576], a multiple of 32"),
    ({"llama.block_count": (V.FLOAT32, NaN)}, "llama.block_count = nan (float32): must be an integer in [1, 4096]"),
    ({"llama.block_count": (V.UINT32, 0)}, "llama.block_count = 0: must be an integer in [1, 4096]"),
    ({"llama.rope.dimension_count": (V.UINT32, 0)},
     "llama.rope.dimension_count = 0: must be an integer in [2, 32], a multiple of 2"),
    ({"llama.rope.dimension_count": (V.UINT32, 31)}, "llama.rope.dimension_count = 31: must be an integer in [2, 32]"),
    ({"llama.rope.scaling.type": (V.STRING, "linear"), "llama.rope.scaling.factor": (V.FLOAT32, 0.0)},
     "llama.rope.scaling.factor = 0.0 (float32): must be a finite number in (0, 1e+06]"),
    ({"llama.rope.scaling.factor": (V.FLOAT32, -2.0)}, "llama.rope.scaling.factor = -2.0 (float32)"),
    ({"llama.rope.scaling.type": (V.STRING, "ntk")},
     "llama.rope.scaling.type = 'ntk': must be one of: none, linear, yarn"),
    ({"llama.rope.scaling.type": (V.STRING, "yarn"), "llama.rope.scaling.factor": (V.FLOAT32, 4.0),
      "llama.context_length": None}, "YaRN scaling needs the original context length"),
    ({"llama.attention.head_count_kv": (V.UINT32, 5)},
     "llama.attention.head_count_kv = 5: must be an integer in [1, 4]"),
    ({"llama.attention.head_count_kv": (V.UINT32, 3)},
     "llama.attention.head_count_kv = 3: must divide attention.head_count (4)"),
    ({"llama.attention.head_count_kv": (V.ARRAY, (V.UINT32, [2, 2]))},
     "llama.attention.head_count_kv = array of 2 uint32: must be an integer"),
    ({"llama.attention.head_count": (V.UINT32, 3)},
     "llama.embedding_length = 128: must be a multiple of attention.head_count (3)"),
    ({"llama.embedding_length": (V.UINT64, 1 << 40)}, "llama.embedding_length = 1099511627776: must be an integer"),
    ({"llama.embedding_length": (V.UINT32, 100)}, "llama.embedding_length = 100: must be an integer in [1, 1048576], "
                                                 "a multiple of 32 (Q8_0 activations)"),
    ({"llama.feed_forward_length": (V.INT32, -256)}, "llama.feed_forward_length = -256: must be an integer"),
    ({"llama.attention.layer_norm_rms_epsilon": (V.FLOAT32, 0.0)},
     "llama.attention.layer_norm_rms_epsilon = 0.0 (float32): must be a finite number in (0, 1]"),
    ({"llama.rope.freq_base": (V.FLOAT64, float("inf"))}, "llama.rope.freq_base = inf (float64)"),
    ({"llama.rope.freq_base": (V.FLOAT32, 1.0)},
     "llama.rope.freq_base = 1.0 (float32): must be a finite number in (1, 1e+12]"),
    ({"llama.rope.scaling.type": (V.STRING, "yarn"), "llama.rope.scaling.factor": (V.FLOAT32, 0.5)},
     "llama.rope.scaling.factor = 0.5: must be >= 1 with YaRN scaling"),
    ({"llama.vocab_size": (V.UINT32, 0)}, "llama.vocab_size = 0: must be an integer in [1, 16777216]"),
    ({"llama.attention.key_length": (V.UINT32, 32), "llama.attention.value_length": (V.UINT32, 64)},
     "llama.attention.value_length = 64: must equal the key length (32)"),
    ({"general.architecture": (V.UINT32, 7)}, "general.architecture = 7: must be a string"),
    ({"general.name": (V.BOOL, True)}, "general.name = true (bool): must be a string"),
    ({"llama.block_count": None}, "missing key llama.block_count"),
])
def test_bad_llama_keys(tmp_path, over, needle):
    p = write_meta(tmp_path / "bad.gguf", llama_meta(**over))
    rc, err = _bench(p)
    assert rc == 2 and len(err) == 1, err
    assert f"{p}: " in err[0] and needle in err[0], err[0]


def _gemma3_meta(**over) -> dict:
    kv = {"general.architecture": (V.STRING, "gemma3"), "gemma3.block_count": (V.UINT32, 6),
          "gemma3.context_length": (V.UINT32, 32768), "gemma3.embedding_length": (V.UINT32, 256),
          "gemma3.feed_forward_length": (V.UINT32, 512), "gemma3.attention.head_count": (V.UINT32, 4),
          "gemma3.attention.head_count_kv": (V.UINT32, 1), "gemma3.attention.key_length": (V.UINT32, 128),
          "gemma3.attention.sliding_window": (V.UINT32, 512)}
    kv.update(over)
    return kv


def _moe_meta(**over) -> dict:
    kv = llama_meta(**{"general.architecture": (V.STRING, "qwen2moe")})
    kv = {k.replace("llama.", "qwen2moe."): v for k, v in kv.items()}
    kv.update({"qwen2moe.expert_count": (V.UINT32, 8), "qwen2moe.expert_used_count": (V.UINT32, 2),
               "qwen2moe.expert_feed_forward_length": (V.UINT32, 128)})
    kv.update(over)
    return kv


@pytest.mark.parametrize("kv,needle", [
    (_gemma3_meta(**{"gemma3.attention.sliding_window": (V.UINT32, 0)}),
     "gemma3.attention.sliding_window = 0: must be an integer in [1, 16777216] (positions a local layer sees)"),
    (_gemma3_meta(**{"gemma3.attention.sliding_window": (V.UINT32, 0xFFFFFFFF)}),
     "gemma3.attention.sliding_window = 4294967295: must be an integer in [1, 16777216]"),
    (_gemma3_meta(**{"gemma3.attention.sliding_window": (V.STRING, "512")}),
     "gemma3.attention.sliding_window = '512' (string)"),
    (_gemma3_meta(**{"gemma3.attention.sliding_window_pattern": (V.UINT32, 0)}),
     "gemma3.attention.sliding_window_pattern = 0: must be an integer in [1, 4096]"),
    (_gemma3_meta(**{"gemma3.final_logit_softcapping": (V.FLOAT32, -1.0)}),
     "gemma3.final_logit_softcapping = -1.0 (float32): must be a finite number in [0, 1e+06]"),
    (_moe_meta(**{"qwen2moe.expert_used_count": (V.UINT32, 9)}),
     "qwen2moe.expert_used_count = 9: must be an integer in [1, 8]"),
    (_moe_meta(**{"qwen2moe.expert_count": (V.UINT32, 0)}), "qwen2moe.expert_count = 0: must be an integer"),
    (_moe_meta(**{"qwen2moe.expert_gating_func": (V.UINT32, 3)}),
     "qwen2moe.expert_gating_func = 3: must be an integer in [1, 2] (1 softmax, 2 sigmoid)"),
    (_moe_meta(**{"qwen2moe.expert_weights_norm": (V.UINT32, 1)}),
     "qwen2moe.expert_weights_norm = 1: must be a bool"),
    (_moe_meta(**{"qwen2moe.expert_weights_scale": (V.FLOAT32, -1.0)}),
     "qwen2moe.expert_weights_scale = -1.0 (float32)"),
])
def test_bad_gemma3_and_moe_keys(tmp_path, kv, needle):
    p = write_meta(tmp_path / "bad.gguf", kv)
    rc, err = _bench(p)
    assert rc == 2 and len(err) == 1, err
    assert f"{p}: " in err[0] and needle in err[0], err[0]


def test_bad_deepseek2_keys(tmp_path):
    kv = {"general.architecture": (V.STRING, "deepseek2"), "deepseek2.block_count": (V.UINT32, 2),
          "deepseek2.embedding_length": (V.UINT32, 256), "deepseek2.feed_forward_length": (V.UINT32, 512),
          "deepseek2.attention.head_count": (V.UINT32, 4), "deepseek2.attention.key_length": (V.UINT32, 64),
          "deepseek2.attention.value_length": (V.UINT32, 32), "deepseek2.attention.kv_lora_rank": (V.UINT32, 128),
          "deepseek2.rope.dimension_count": (V.UINT32, 64), "deepseek2.leading_dense_block_count": (V.UINT32, 2)}
    rc, err = _bench(write_meta(tmp_path / "ds.gguf", kv))
    assert rc == 2 and "deepseek2.rope.dimension_count = 64: must be an integer in [2, 63]" in err[0], err
    kv["deepseek2.rope.dimension_count"] = (V.UINT32, 32)
    kv["deepseek2.leading_dense_block_count"] = (V.UINT32, 3)
    rc, err = _bench(write_meta(tmp_path / "ds.gguf", kv))
    assert rc == 2 and "deepseek2.leading_dense_block_count = 3: must be an integer in [0, 2]" in err[0], err
    kv["deepseek2.leading_dense_block_count"] = (V.UINT32, 1)      # a MoE block: expert keys are required
    rc, err = _bench(write_meta(tmp_path / "ds.gguf", kv))
    assert rc == 2 and "missing key deepseek2.expert_feed_forward_length" in err[0], err


def test_zero_tensor_dimension_prints_plain_ints(tmp_path, micro_model):
    p = tmp_path / "zero.gguf"
    shutil.copy(micro_model, p)
    r = GGUFReader(str(p), "r+")
    t = next(t for t in r.tensors if t.name == "blk.0.attn_q.weight")
    t.field.parts[3][1] = 0                 # dims [128, 128] -> [128, 0]
    r.data.flush()
    del r
    rc, err = _bench(p)
    assert rc == 2 and err[0].endswith("tensor blk.0.attn_q.weight has an empty dimension [128, 0]"), err


def test_long_sliding_window_is_explained(model_factory):
    from engine import load_model
    logs = []
    p = model_factory("gemma3-tiny", seed=3, sliding_window=40000)          # context_length 32768
    m = load_model(p, n_ctx=32, log=logs.append)
    assert m.config.sliding_window == 40000
    assert any("gemma3.attention.sliding_window = 40000 is not shorter than gemma3.context_length = 32768"
               in line for line in logs), logs


def test_directory_is_not_a_missing_file(tmp_path):
    rc, err = _bench(tmp_path)
    assert rc == 2 and err[0].endswith(f"{tmp_path}: is a directory, not a GGUF file (a regular file is needed)")


def test_character_device_refused(tmp_path):
    rc, err = _bench("/dev/zero")
    assert rc == 2 and err[0].endswith("/dev/zero: is a character device, not a GGUF file (a regular file is needed)")


def test_fifo_refused_without_blocking(tmp_path):
    fifo = tmp_path / "model.gguf"
    os.mkfifo(fifo)
    proc = subprocess.run([sys.executable, "-m", "engine", "bench", "-m", str(fifo), "-c", "64", "-ub", "32"],
                          capture_output=True, text=True, timeout=120)   # blocking in open() would time out
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"python -m engine bench: error: {fifo}: is a FIFO, not a GGUF file (a regular file is needed)"]
