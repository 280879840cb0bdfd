"""The GPU benchmarks' --smoke modes: tiny sizes on the CPU in the Triton interpreter, run as a user would."""

import glob
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _run_smoke(script: str, out_dir) -> dict:
    """Run benchmarks/gpu/<script> --smoke --out out_dir and return the one JSON it wrote."""
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu", script), "--smoke", "--out", str(out_dir)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-3000:]
    written = glob.glob(os.path.join(str(out_dir), "*.json"))
    assert len(written) == 1, written
    with open(written[0]) as f:
        return json.load(f)


def test_attention_benchmark_smoke(tmp_path):
    doc = _run_smoke("attention.py", tmp_path)
    assert doc["benchmark"] == "attention_gpu" and doc["mode"] == "smoke" and doc["device"]
    rows = doc["rows"]
    assert {r["structure"] for r in rows} == {"causal", f"window{doc['window']}"} and not doc["left_out"]
    for r in rows:
        assert r["t2c"]["ms"] > 0 and r["t2c"]["tflops"] > 0, r
        assert r["t2c_max_abs_err"] < 1e-4, r  # float32 in smoke mode
        if r["structure"] == "causal":
            assert r["sdpa"]["ms"] > 0, r
