"""benchmarks/gpu/model_prefill.py --smoke: a tiny Llama compiled to Triton, run on the CPU in the interpreter, JSON written."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_model_prefill_benchmark_smoke_writes_json(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu", "model_prefill.py"), "--smoke",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list(tmp_path.glob("gpu_model_prefill-*.json"))
    assert len(files) == 1, proc.stdout
    doc = json.loads(files[0].read_text())
    assert doc["benchmark"] == "gpu_model_prefill" and doc["smoke"] is True and doc["device"]
    assert doc["dtype"] == "bfloat16" and doc["model"]["layers"] == 2 and doc["model"]["hidden_size"] == 64
    compile_info = doc["t2c_compile"]
    assert compile_info["compile_s"] > 0 and compile_info["validation_ok"] is True
    assert compile_info["kernels"]["handwritten"]["ops"]["attention"] == 2  # one attention kernel per layer
    assert doc["torch_compile"] is None and not doc["left_out"]  # smoke skips torch.compile
    (row,) = doc["rows"]
    assert row["seq"] == 16 and row["seq"] != compile_info["trace_seq"]  # run at a length other than the traced one
    assert row["eager"]["ms"] > 0 and row["t2c"]["ms"] > 0 and row["t2c"]["first_call_s"] > 0
    assert row["t2c_over_eager"] == row["t2c"]["ms"] / row["eager"]["ms"]
    # bf16 logits of |x| < 1: t2c and eager round differently in places, by a few bf16 steps at most
    assert 0 <= row["t2c"]["max_abs_diff_vs_eager"] <= 0.03, row
    assert "torch_compile" not in row
    assert "t2c/eager" in proc.stdout and "wrote" in proc.stdout


def test_without_cuda_it_fails_in_one_line(tmp_path):
    """Not --smoke on a machine without CUDA: exit 1 and one line saying so, nothing written."""
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu", "model_prefill.py"), "--out", str(tmp_path)],
                          capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "needs a CUDA GPU" in proc.stderr and not list(tmp_path.iterdir())
