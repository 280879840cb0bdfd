"""benchmarks/gpu/linear_attention.py: --smoke runs on the CPU (Triton interpreter) and writes its
JSON; without --smoke and without CUDA it exits 1 with one line."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "gpu", "linear_attention.py")


def test_linear_attention_benchmark_smoke_writes_json(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, SCRIPT, "--smoke", "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = list(tmp_path.glob("gpu_linear_attention-*.json"))
    assert len(files) == 1, proc.stdout
    doc = json.loads(files[0].read_text())
    assert doc["benchmark"] == "gpu_linear_attention" and doc["smoke"] is True and doc["device"]
    assert doc["dtype"] == "bfloat16" and not doc["left_out"] and doc["run_s"] > 0
    assert {c["structure"] for c in doc["cases"]} == {"causal", "full"}
    for case in doc["cases"]:
        assert case["t2c"]["ms"] > 0 and case["sdpa"]["ms"] > 0, case
        assert abs(case["speedup"] - case["sdpa"]["ms"] / case["t2c"]["ms"]) < 1e-9, case
        # bfloat16 outputs of size ~3 at most: the kernel is within a rounding step of the float32 reference
        assert 0 <= case["t2c_max_abs_err"] <= 0.02, case
    assert "wrote" in proc.stdout and "causal" in proc.stdout


def test_without_cuda_it_exits_1_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # no GPU, on a GPU machine too
    proc = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.strip().count("\n") == 0 and "needs a CUDA GPU" in proc.stderr
    assert not list(tmp_path.iterdir())
