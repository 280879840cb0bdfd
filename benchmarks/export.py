"""Export benchmark: t2c compile vs torch.onnx.export(dynamo=True), and ONNX Runtime vs eager.

For each zoo model at sequence 128 and 1024 (batch 1), in one run:
  * compile time: `t2c.compile` (trace + passes + lower + save; validation
    timed separately) against `torch.onnx.export(..., dynamo=True)` of the same
    model in the same process;
  * latency: ONNX Runtime (CPU) on t2c's model and on torch.onnx.export's, and
    eager torch, median of repeated runs after warm-up.
Failures of an exporter are recorded, not hidden: MoE models are the case
torch.onnx.export cannot handle today.

    .venv/bin/python benchmarks/export.py [--models llama,mixtral] [--seqs 128,1024] [--repeat 20]

Prints a table and writes benchmarks/results/export-<host>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import traceback

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import zoo  # noqa: E402
from anchors import torch_onnx_export  # noqa: E402

import t2c  # noqa: E402
from t2c.backends.onnx import OnnxSession  # noqa: E402


def median_seconds(fn, repeat: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def t2c_compile(model, inputs, out_dir):
    t0 = time.perf_counter()
    t2c.compile(model, inputs, passes="-O1", out=out_dir, validate=False)
    compile_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    compiled = t2c.compile(model, inputs, passes="-O1", out=out_dir + "-validated", validate=True)
    validated_s = time.perf_counter() - t0
    return compile_s, validated_s, compiled.ok


def timed_torch_onnx_export(model, inputs, path) -> float:
    t0 = time.perf_counter()
    torch_onnx_export(model, inputs, path)
    return time.perf_counter() - t0


def bench_model(name: str, seq: int, repeat: int, workdir: str) -> dict:
    model, _ = zoo.ZOO[name](max_positions=max(2048, seq)) if name != "minilm" else zoo.minilm()
    vocab = model.config.vocab_size
    if seq > getattr(model.config, "max_position_embeddings", seq):
        return {"model": name, "seq": seq, "skipped": f"{name} has only {model.config.max_position_embeddings} positions"}
    inputs = {"input_ids": torch.randint(0, vocab, (1, seq), generator=torch.Generator().manual_seed(0))}
    row: dict = {"model": name, "seq": seq, "batch": 1}
    with torch.no_grad():
        row["eager_ms"] = median_seconds(lambda: model(**inputs), repeat) * 1e3
    out = os.path.join(workdir, f"{name}-{seq}")
    try:
        row["t2c_compile_s"], row["t2c_compile_validated_s"], row["t2c_validation_ok"] = t2c_compile(model, inputs, out)
        session = OnnxSession(os.path.join(out, "model.onnx"))
        row["t2c_ort_ms"] = median_seconds(lambda: session(**inputs), repeat) * 1e3
    except Exception as e:  # noqa: BLE001 - a benchmark records failures
        row["t2c_error"] = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
    path = os.path.join(workdir, f"{name}-{seq}-torch.onnx")
    try:
        row["torch_onnx_export_s"] = timed_torch_onnx_export(model, inputs, path)
        session = OnnxSession(path)
        row["torch_onnx_ort_ms"] = median_seconds(lambda: session(**inputs), repeat) * 1e3
    except Exception as e:  # noqa: BLE001
        row["torch_onnx_error"] = exporter_error(e)
        if os.environ.get("T2C_BENCH_DEBUG"):
            traceback.print_exc()
    if "t2c_compile_s" in row and "torch_onnx_export_s" in row:
        row["compile_time_ratio_t2c_over_torch"] = row["t2c_compile_s"] / row["torch_onnx_export_s"]
    if "t2c_ort_ms" in row and "torch_onnx_ort_ms" in row:
        row["latency_ratio_t2c_over_torch_onnx"] = row["t2c_ort_ms"] / row["torch_onnx_ort_ms"]
    return row


def exporter_error(e: Exception) -> str:
    """The line of torch.onnx's error report that says what failed, without terminal colours."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    cause = next((ln for ln in lines if ln.startswith("<class")), lines[0] if lines else "")
    return f"{type(e).__name__}: {cause[:300]}"


def warm_up() -> None:
    """Pay both exporters' one-time import and tracing set-up before anything is timed."""
    model, inputs = zoo.gpt2(seq=8)
    with tempfile.TemporaryDirectory() as d:
        t2c.compile(model, inputs, passes="-O1", out=os.path.join(d, "w"), validate=False)
        torch_onnx_export(model, inputs, os.path.join(d, "w.onnx"))


def fmt(v, spec=".2f"):
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else ("-" if v is None else str(v))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="gpt2,llama,mistral,bert,mixtral,minilm")
    parser.add_argument("--seqs", default="128,1024")
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = []
    warm_up()
    with tempfile.TemporaryDirectory() as workdir:
        for seq in [int(s) for s in args.seqs.split(",")]:
            for name in args.models.split(","):
                row = bench_model(name, seq, args.repeat, workdir)
                rows.append(row)
                print(json.dumps(row), flush=True)
    header = f"{'model':<8} {'seq':>5} {'t2c compile s':>13} {'torch.onnx s':>12} {'ratio':>6} {'t2c ORT ms':>10} {'torch.onnx ORT ms':>17} {'eager ms':>9}  notes"
    print("\n" + header)
    for r in rows:
        notes = r.get("skipped") or r.get("torch_onnx_error") or r.get("t2c_error") or ""
        print(f"{r['model']:<8} {r['seq']:>5} {fmt(r.get('t2c_compile_s')):>13} {fmt(r.get('torch_onnx_export_s')):>12} "
              f"{fmt(r.get('compile_time_ratio_t2c_over_torch')):>6} {fmt(r.get('t2c_ort_ms')):>10} {fmt(r.get('torch_onnx_ort_ms')):>17} "
              f"{fmt(r.get('eager_ms')):>9}  {notes[:90]}")
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(args.out, f"export-{platform.node() or 'host'}-{stamp}.json")
    meta = {"date": stamp, "machine": platform.machine(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "t2c": t2c.__version__, "torch_threads": torch.get_num_threads()}
    try:
        import onnxruntime

        meta["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
