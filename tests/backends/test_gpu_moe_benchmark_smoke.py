"""benchmarks/gpu/moe.py --smoke runs on the CPU (Triton interpreter) and writes its JSON; without CUDA
and without --smoke it exits 1 with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu", "moe.py")


def test_moe_benchmark_smoke_writes_json(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, SCRIPT, "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = list(tmp_path.glob("gpu_moe-*.json"))
    assert len(files) == 1, proc.stdout
    doc = json.loads(files[0].read_text())
    assert doc["benchmark"] == "gpu_moe" and doc["smoke"] is True and doc["device"] and doc["dtype"] == "bfloat16"
    assert len(doc["cases"]) == 2 and {c["top_k"] for c in doc["cases"]} == {2, 3}
    for case in doc["cases"]:
        for impl in ("t2c", "hf_eager"):
            assert case[impl]["ms"] > 0 and case[impl]["tflops"] > 0, case
        assert case["speedup_vs_hf_eager"] > 0
        assert "ms" in case["hf_grouped"]  # a time, or None with the error that stopped it
        # same inputs and weights in bf16: t2c and the library's loop agree to a few bf16 roundings
        assert case["max_abs_eager"] > 0 and case["max_abs_diff"] <= 0.03 * case["max_abs_eager"], case
    assert "gpu_moe" in proc.stdout and "E  k" in proc.stdout


def test_without_cuda_it_exits_1_with_one_line(tmp_path):
    if torch.cuda.is_available():  # a GPU machine runs the full benchmark instead: check the CPU path's message only here
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    else:
        env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == ["benchmarks/gpu/moe.py needs a CUDA GPU (--smoke runs tiny sizes on the CPU)"]
    assert not list(tmp_path.iterdir())
