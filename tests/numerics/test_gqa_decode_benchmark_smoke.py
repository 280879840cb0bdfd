"""benchmarks/gqa_decode.py on tiny sizes: it runs, writes its JSON, and the three decode steps agree with SDPA."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_gqa_decode_benchmark_smoke(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "gqa_decode.py"), "--pasts", "8,40", "--runs", "2", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = tmp_path.glob("gqa_decode-*.json")
    rows = json.loads(result.read_text())["rows"]
    assert [r["past"] for r in rows] == [8, 40]
    for r in rows:
        assert r["standard_ms"] > 0 and r["past_ms"] > 0 and r["gqa_ms"] > 0
        assert max(r["standard_max_abs"], r["past_max_abs"], r["gqa_max_abs"]) < 1e-5  # the left-padded row included
