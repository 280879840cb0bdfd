"""benchmarks/gpu/norm.py --smoke runs on the CPU (Triton interpreter) and writes its JSON."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OPS = {"rms_norm", "layer_norm", "add_rms_norm", "add_layer_norm"}


def test_norm_benchmark_smoke_writes_json(tmp_path):
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu", "norm.py"), "--smoke",
                           "--out", str(tmp_path)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    files = list(tmp_path.glob("gpu_norm-*.json"))
    assert len(files) == 1, proc.stdout
    doc = json.loads(files[0].read_text())
    assert doc["benchmark"] == "gpu_norm" and doc["smoke"] is True and doc["device"]
    assert doc["copy_bandwidth_gbs"] > 0
    assert {c["op"] for c in doc["cases"]} == OPS
    for case in doc["cases"]:
        for impl in ("t2c", "torch"):
            assert case[impl]["ms"] > 0 and case[impl]["gbs"] > 0 and case[impl]["of_copy"] > 0
        # same inputs, same dtype: t2c and eager agree to a bfloat16 rounding step, sums exactly
        assert case["max_abs_diff"][0] <= 0.07, case
        if case["op"].startswith("add_"):
            assert case["max_abs_diff"][1] == 0.0, case
    assert "gpu_norm" in proc.stdout and doc["cases"][0]["op"] in proc.stdout


def test_peak_table_matches_device_names(monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks", "gpu"))  # as when run as a script: its _bench helper
    spec = importlib.util.spec_from_file_location("gpu_norm_benchmark", os.path.join(ROOT, "benchmarks", "gpu", "norm.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # imports nothing heavy at module level
    peak_bandwidth = module.peak_bandwidth
    assert peak_bandwidth("NVIDIA H200")[0] == 4.8e12
    assert peak_bandwidth("NVIDIA H100 80GB HBM3")[0] == 3.35e12
    assert peak_bandwidth("NVIDIA H100 PCIe")[0] == 2.0e12
    assert peak_bandwidth("NVIDIA GH200 480GB") == (None, "GH200")
    assert peak_bandwidth("NVIDIA L40S")[0] == 0.864e12
    assert peak_bandwidth("Some Future GPU") == (None, None)
