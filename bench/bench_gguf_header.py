"""What reading a GGUF header costs the daemon: import time, read time, memory.

Not a test: prints figures. Run from the repo root:

    .venv/bin/python bench/bench_gguf_header.py
    .venv/bin/python bench/bench_gguf_header.py --gguf-python /tmp/gguf-venv/bin/python

It writes a synthetic GGUF shaped like a real Qwen3 8B header (151 936 tokens,
151 387 merges, token types, a chat template, 399 tensor infos and a few bytes of tensor data),
then measures each reader in a fresh interpreter so imports are cold:
- import: wall time of importing the reader (and what it drags in),
- read: wall time of reading the header (best of 5),
- RSS: resident set after import and peak (ru_maxrss) after reading.
The second form also measures the `gguf` package (llama.cpp's own reader, which
needs numpy) with an interpreter where it is installed; lmkeeperd's venv does not
have it.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from gguf_synth import ARCHITECTURES, StringArray, Tensor, write_gguf  # noqa: E402

_RSS = """
import sys

def _rss_kib(field):
    # /proc/self/status, because ru_maxrss survives exec and would report the
    # parent's (bigger) peak; macOS has no /proc, so fall back to ru_maxrss there.
    try:
        for line in open("/proc/self/status"):
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    import resource
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak // 1024 if sys.platform == "darwin" else peak
"""

_OURS = (
    _RSS
    + """
import json, sys, time
t0 = time.perf_counter()
from lmkeeperd.memory.gguf import read_gguf_header
from lmkeeperd.memory.kv import geometry_from_gguf
import_s = time.perf_counter() - t0
rss_import = _rss_kib("VmHWM")
best = 1e9
for _ in range(5):
    t0 = time.perf_counter()
    header = read_gguf_header(__import__("pathlib").Path(sys.argv[1]))
    geometry = geometry_from_gguf(header.metadata)
    best = min(best, time.perf_counter() - t0)
print(json.dumps({"import_s": import_s, "read_s": best,
                  "rss_import_kib": rss_import,
                  "rss_peak_kib": _rss_kib("VmHWM"),
                  "bytes_read": header.metadata_end,
                  "kv_bytes_per_token": geometry.bytes_per_token()}))
"""
)

_GGUF_PACKAGE = (
    _RSS
    + """
import json, sys, time
t0 = time.perf_counter()
from gguf import GGUFReader
import_s = time.perf_counter() - t0
rss_import = _rss_kib("VmHWM")
best = 1e9
for _ in range(5):
    t0 = time.perf_counter()
    reader = GGUFReader(sys.argv[1])
    arch = bytes(reader.fields["general.architecture"].parts[-1]).decode()
    layers = int(reader.fields[arch + ".block_count"].parts[-1][0])
    best = min(best, time.perf_counter() - t0)
print(json.dumps({"import_s": import_s, "read_s": best,
                  "rss_import_kib": rss_import,
                  "rss_peak_kib": _rss_kib("VmHWM"),
                  "bytes_read": None, "kv_bytes_per_token": None}))
"""
)

_BASELINE = (
    _RSS
    + """
import json
print(json.dumps({"rss_kib": _rss_kib("VmHWM")}))
"""
)


def write_sample(directory: Path) -> Path:
    arch = ARCHITECTURES["qwen3-8b"]
    metadata = arch.metadata()
    metadata.update(
        {
            "general.file_type": 15,
            "tokenizer.ggml.model": "gpt2",
            "tokenizer.ggml.pre": "qwen2",
            "tokenizer.ggml.tokens": StringArray(151936, lambda i: f"tok{i:06d}"),
            "tokenizer.ggml.token_type": [1] * 151936,
            "tokenizer.ggml.merges": StringArray(151387, lambda i: f"a{i} b{i}"),
            "tokenizer.chat_template": "{% for m in messages %}{{ m.content }}{% endfor %}" * 100,
        }
    )
    tensors = [Tensor("token_embd.weight", (8, 4))]
    names = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_up", "ffn_gate", "ffn_down")
    for block in range(36):
        tensors += [Tensor(f"blk.{block}.{n}.weight", (4, 4)) for n in names]
        tensors += [Tensor(f"blk.{block}.{n}.weight", (4,)) for n in ("attn_norm", "ffn_norm")]
        tensors += [Tensor(f"blk.{block}.{n}.weight", (4,)) for n in ("attn_q_norm", "attn_k_norm")]
    return write_gguf(
        directory / "Qwen3-8B-Q4_K_M.gguf", metadata, tensors=tensors, tensor_data=True
    )


def measure(python: str, script: str, path: Path, env_path: Path | None) -> dict[str, float]:
    env = None
    if env_path is not None:
        import os

        env = {**os.environ, "PYTHONPATH": str(env_path)}
    out = subprocess.run(
        [python, "-c", script, str(path)], capture_output=True, text=True, check=True, env=env
    )
    result: dict[str, float] = json.loads(out.stdout)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--gguf-python", help="an interpreter with the `gguf` package installed")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = write_sample(Path(tmp))
        print(f"sample: {path.stat().st_size / 1e6:.1f} MB synthetic header (Qwen3 8B shape)")
        base = measure(sys.executable, _BASELINE, path, None)["rss_kib"]
        rows = [("lmkeeperd reader", sys.executable, _OURS, None, base)]
        if args.gguf_python:
            other_base = measure(args.gguf_python, _BASELINE, path, None)["rss_kib"]
            rows.append(("gguf package", args.gguf_python, _GGUF_PACKAGE, None, other_base))
        print(
            f"{'reader':<18}{'import ms':>10}{'read ms':>10}{'RSS+import MiB':>16}"
            f"{'RSS+read MiB':>14}{'bytes read':>12}"
        )
        for label, python, script, env_path, baseline in rows:
            r = measure(python, script, path, env_path)
            bytes_read = f"{int(r['bytes_read']):,}" if r["bytes_read"] else "whole map"
            print(
                f"{label:<18}{r['import_s'] * 1000:>10.1f}{r['read_s'] * 1000:>10.1f}"
                f"{(r['rss_import_kib'] - baseline) / 1024:>16.1f}"
                f"{(r['rss_peak_kib'] - r['rss_import_kib']) / 1024:>14.1f}{bytes_read:>12}"
            )


if __name__ == "__main__":
    main()
