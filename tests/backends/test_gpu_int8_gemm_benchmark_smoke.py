"""benchmarks/gpu/int8_gemm.py --smoke runs on the CPU (Triton interpreter) and writes its JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
IMPLS = ("w8a8", "w8a8_gemm", "weight_only", "bf16")
TARGETS = {"w8a8_vs_bf16_prefill": 1.5, "w8a8_gemm_vs_bf16_prefill": 1.5, "weight_only_vs_bf16_decode": 1.6}


def test_int8_gemm_benchmark_smoke_writes_json(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu", "int8_gemm.py"), "--smoke",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = list(tmp_path.glob("gpu_int8_gemm-*.json"))
    assert len(files) == 1, proc.stdout
    doc = json.loads(files[0].read_text())
    assert doc["benchmark"] == "gpu_int8_gemm" and doc["smoke"] is True and doc["device"]
    assert {c["phase"] for c in doc["cases"]} == {"decode", "prefill"}
    assert {c["m"] for c in doc["cases"] if c["phase"] == "decode"} == {1, 3}
    for case in doc["cases"]:
        for impl in IMPLS:
            assert case[impl]["ms"] > 0 and case[impl]["tops"] > 0, (impl, case)
            assert case[impl]["graph_ms"] is None  # CUDA graphs only on a GPU
            if impl != "bf16":
                assert case["ratios"][f"{impl}_vs_bf16"] == case["bf16"]["ms"] / case[impl]["ms"]
        # torch._int_mm needs M > 16: timed at the prefill size only
        assert (case["int_mm"] is None) == (case["m"] <= 16) and ("w8a8_vs_int_mm" in case["ratios"]) == (case["m"] > 16)
        # the kernels' answers, checked by the script against the IR's references
        assert case["w8a8_bit_identical"] is True and case["quantize_bit_identical"] is True
        assert case["weight_only_max_abs_diff"] <= 0.02 * max(1.0, case["weight_only_ref_max_abs"]), case
    assert doc["all_w8a8_bit_identical"] is True
    assert {name: t["min_ratio"] for name, t in doc["targets"].items()} == TARGETS
    for t in doc["targets"].values():
        assert t["met"] == (t["worst"] >= t["min_ratio"]) and t["timing"] == "do_bench"
    assert "gpu_int8_gemm" in proc.stdout and "targets:" in proc.stdout


def test_without_cuda_and_without_smoke_it_exits_1_with_one_line():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""  # no device even on a GPU machine
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu", "int8_gemm.py")],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1 and proc.stderr.strip().count("\n") == 0
    assert "needs a CUDA GPU" in proc.stderr
