"""benchmarks/generation.py on tiny sizes: it runs, writes its JSON, and the windowed and linear caches stay flat."""

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_generation_benchmark_smoke(tmp_path):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "generation.py"), "--contexts", "12,40", "--steps", "2",
           "--hidden", "64", "--window", "8", "--no-anchor", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = tmp_path.glob("generation-*.json")
    doc = json.loads(result.read_text())
    llama, mistral, linear = doc["models"]["llama"], doc["models"]["mistral"], doc["models"]["linear"]
    for rows in (llama, mistral, linear):
        assert [r["context"] for r in rows] == [12, 40]
        for r in rows:
            assert r["t2c"]["decode_ms"] > 0 and r["eager"]["decode_ms"] > 0 and r["torch_onnx"] is None
    # full attention's cache grows with the context; the window's rolls at 7 positions in both
    assert llama[1]["t2c"]["cache_bytes"] > llama[0]["t2c"]["cache_bytes"] == llama[0]["eager"]["cache_bytes"]
    assert mistral[0]["rolling"] == 7 and mistral[0]["t2c"]["cache_bytes"] == mistral[1]["t2c"]["cache_bytes"]
    assert mistral[1]["t2c"]["cache_bytes"] <= mistral[1]["eager"]["cache_bytes"]
    # linear attention decodes from a state of one size at every context: [batch, kv_heads, D, Dv+1] per layer
    assert linear[0]["t2c"]["cache_bytes"] == linear[1]["t2c"]["cache_bytes"] == 2 * 1 * 1 * 64 * 65 * 4
