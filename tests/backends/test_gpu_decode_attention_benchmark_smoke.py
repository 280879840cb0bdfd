"""benchmarks/gpu/decode_attention.py: --smoke runs on the CPU (Triton interpreter) and writes its
JSON; without --smoke and without CUDA it exits 1 with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu", "decode_attention.py")


def test_decode_attention_benchmark_smoke_writes_json(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, SCRIPT, "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (path,) = tmp_path.glob("gpu_decode_attention-*.json")
    doc = json.loads(path.read_text())
    assert doc["benchmark"] == "gpu_decode_attention" and doc["smoke"] is True and not doc["left_out"]
    (case,) = doc["cases"]
    assert case["split_k"]["ms"] > 0 and case["flash"]["ms"] > 0 and case["sdpa"]["ms"] > 0
    assert case["split_k_max_abs_err"] <= 0.02  # bf16 outputs within a rounding step of the float32 reference


def test_decode_attention_benchmark_needs_cuda_without_smoke(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path)], capture_output=True, text=True,
                          env={k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, timeout=300, cwd=ROOT)
    assert proc.returncode == 1 and "needs a CUDA GPU" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not list(tmp_path.iterdir())
