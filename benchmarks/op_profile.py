"""Where the time goes: ONNX Runtime's per-operator profile of t2c -O1 (both flavors) and the best anchor.

For one model / batch / seq (models and builders as in cpu_latency.py), each variant runs
--runs times in ONNX Runtime (CPUExecutionProvider, ORT_ENABLE_ALL, --threads intra-op
threads) with profiling on; kernel time is summed per operator type. The line to read is
the floor: t2c's own MatMul time (the weight products every pipeline computes, the same
FLOPs; in t2c they are all plain MatMul, while an anchor's com.microsoft Attention hides
its QKV projection inside) over the best anchor's total. That is the ratio t2c would
reach if everything but those products took no time, so no exact rewrite of the rest can
go below it.

    .venv/bin/python benchmarks/op_profile.py --model llama --size base --seq 512

Prints a table and writes benchmarks/results/op_profile-<host>-<date>.json.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import os
import platform
import tempfile

import onnxruntime as ort
import torch

import cpu_latency as cl

MATMUL_OPS = {"MatMul", "Gemm", "FusedMatMul", "FusedGemm"}


def profile(path: str, feeds: dict, runs: int, threads: int, prefix: str) -> dict:
    sess, names = cl.make_session(path, threads, profile_prefix=prefix)
    feeds = {n: feeds[n] for n in names}
    sess.run(None, feeds)  # warm-up, also profiled; dropped below by taking the last `runs` only
    for _ in range(runs):
        sess.run(None, feeds)
    with open(sess.end_profiling()) as f:
        events = json.load(f)
    per_run = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"][-runs:]
    start = per_run[0]["ts"] if per_run else 0
    by_op: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            by_op[e["args"]["op_name"]] += e["dur"] / runs / 1e3
    total = sum(by_op.values())
    matmul = sum(v for k, v in by_op.items() if k in MATMUL_OPS)
    return {"total_ms": total, "matmul_ms": matmul, "matmul_share": matmul / total,
            "by_op_ms": dict(sorted(by_op.items(), key=lambda kv: -kv[1]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="llama", choices=cl.ZOO_MODELS)
    parser.add_argument("--size", default="base", choices=["small", "base"])
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--runs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--top", type=int, default=6, help="operator types shown per variant")
    parser.add_argument("--out", default=os.path.join(cl.HERE, "results"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    model, size = cl.load_model(args.model, args.size)
    ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids}
    feeds = {"input_ids": ids.numpy()}
    results = {}
    with tempfile.TemporaryDirectory() as wd:
        paths = {
            "t2c_standard": cl.t2c_build(model, inputs, os.path.join(wd, "std"), "standard"),
            "t2c_ort": cl.t2c_build(model, inputs, os.path.join(wd, "ort"), "ort"),
        }
        exported = cl.torch_onnx_export(model, inputs, os.path.join(wd, "a.onnx"))
        paths["torch_onnx"] = exported
        paths["torch_onnx_onnxscript"] = cl.onnxscript_fusions(exported, os.path.join(wd, "b.onnx"))[0]
        for name, path in paths.items():
            results[name] = profile(path, feeds, args.runs, args.threads, os.path.join(wd, name))

    print(f"\n{args.model} ({size}) batch {args.batch} seq {args.seq}, {args.threads} thread(s): kernel ms per run")
    for name, r in results.items():
        top = ", ".join(f"{op} {ms:.1f}" for op, ms in list(r["by_op_ms"].items())[: args.top])
        print(f"{cl.SHORT[name]:<16} total {r['total_ms']:8.1f}  matmul {r['matmul_ms']:8.1f} ({100 * r['matmul_share']:.0f}%)  {top}")
    anchor = min(("torch_onnx", "torch_onnx_onnxscript"), key=lambda k: results[k]["total_ms"])
    floor = results["t2c_ort"]["matmul_ms"] / results[anchor]["total_ms"]
    print(f"floor: t2c ort's MatMul time alone is {floor:.2f}x the best anchor ({cl.SHORT[anchor]}); "
          f"t2c ort in all is {results['t2c_ort']['total_ms'] / results[anchor]['total_ms']:.2f}x")

    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(args.out, f"op_profile-{platform.node() or 'host'}-{stamp}.json")
    meta = {"date": stamp, "machine": platform.machine(), "cpu_count": os.cpu_count(), "onnxruntime": ort.__version__,
            "args": vars(args), "size": size, "best_anchor": anchor, "t2c_ort_matmul_over_best_anchor": floor}
    with open(path, "w") as f:
        json.dump({"meta": meta, "variants": results}, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
