"""benchmarks/generation_coverage.py on two architectures: one that decodes as eager does, one refused."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_generation_coverage_classifies(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "generation_coverage.py"), "--only", "llama,bamba", "--tokens", "4", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = tmp_path.glob("generation_coverage-*.json")
    rows = {r["arch"]: r for r in json.loads(result.read_text())["archs"]}
    assert rows["llama"]["status"] == "ok" and len(rows["llama"]["got"]) == 3
    # bamba's Mamba layers cache a state, not keys and values: a one-line refusal, exit 2
    assert rows["bamba"]["status"] == "refused" and "per-layer keys and values" in rows["bamba"]["error"]
