"""Which ONNX Runtime contrib kernels the `ort` flavor should use: each one against the standard ops.

One IR op per graph (attention between the head split and merge a traced model has), lowered by t2c in both flavors (`attention`, `bias_act`), or, for
add_norm, t2c's standard lowering (Add + LayerNormalization / RMSNormalization) against a
hand-built com.microsoft SkipLayerNormalization / SkipSimplifiedLayerNormalization node
(what the ort flavor emitted before this measurement; it now keeps them for float16 only).
Each pair runs in ONNX Runtime's CPUExecutionProvider with the same SessionOptions
(ORT_ENABLE_ALL, --threads intra-op threads), interleaved round-robin; medians in ms.
Outputs of the two are compared (max abs).

    .venv/bin/python benchmarks/ort_kernels.py            # seq 512, 1 thread
    .venv/bin/python benchmarks/ort_kernels.py --seq 128 --threads 2

Prints a table and writes benchmarks/results/ort_kernels-<host>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import statistics
import time

import numpy as np
import onnxruntime as ort
import torch
from onnx import helper

from cpu_latency import make_session
from t2c.backends.onnx import lower
from t2c.ir import DType, Graph, TensorType
from t2c.ir.core import SymDim
from t2c.ir.opdefs.shape import PermuteAttrs, ShapeAttrs
from t2c.ir.opdefs.activation import ActivationAttrs
from t2c.ir.opdefs.add_norm import AddNormAttrs
from t2c.ir.opdefs.attention import AttentionAttrs

HERE = os.path.dirname(os.path.abspath(__file__))
F32 = DType.F32


def attention_graph(heads: int, kv_heads: int, head_dim: int, causal: bool, padding: bool = False) -> Graph:
    """As in a traced model: q, k, v projections [B, S, H*D] split into heads, attention, heads merged;
    with `padding`, a bool key-padding row [B, 1, 1, S] as the mask operand."""
    g = Graph()
    batch, seq = SymDim("batch"), SymDim("seq")
    heads_first = []
    for name, h in (("q", heads), ("k", kv_heads), ("v", kv_heads)):
        x = g.add_input(name, TensorType(F32, (batch, seq, h * head_dim)))
        x = g.add_node("reshape", [x], ShapeAttrs((batch, seq, h, head_dim))).output
        heads_first.append(g.add_node("permute", [x], PermuteAttrs((0, 2, 1, 3))).output)
    if padding:
        heads_first.append(g.add_input("padding", TensorType(DType.BOOL, (batch, 1, 1, seq))))
    attrs = AttentionAttrs(scale=1 / math.sqrt(head_dim), causal=causal, kv_heads=kv_heads)
    y = g.add_node("attention", heads_first, attrs).output
    y = g.add_node("permute", [y], PermuteAttrs((0, 2, 1, 3))).output
    g.set_output("y", g.add_node("reshape", [y], ShapeAttrs((batch, seq, heads * head_dim))).output)
    return g


def bias_gelu_graph(hidden: int) -> Graph:
    g = Graph()
    x = g.add_input("x", TensorType(F32, ("batch", "seq", hidden)))
    b = g.add_param("bias", torch.randn(hidden))
    g.set_output("y", g.add_node("bias_act", [x, b], ActivationAttrs("gelu")).output)
    return g


def add_norm_graph(kind: str, hidden: int) -> Graph:
    g = Graph()
    ins = [g.add_input(n, TensorType(F32, ("batch", "seq", hidden))) for n in ("x", "r")]
    ins.append(g.add_param("w", torch.randn(hidden)))
    if kind == "layer":
        ins.append(g.add_param("b", torch.randn(hidden)))
    node = g.add_node("add_norm", ins, AddNormAttrs(kind, (hidden,), 1e-5))
    g.set_output("y", node.outputs[0])
    g.set_output("sum", node.outputs[1])
    return g


def skip_norm_model(graph: Graph, kind: str):
    """The standard lowering of an add_norm graph with its Add + norm replaced by one Skip* node."""
    model = lower(graph, flavor="standard")
    g = model.graph
    weights = [i.name for i in g.initializer]
    op = "SkipLayerNormalization" if kind == "layer" else "SkipSimplifiedLayerNormalization"
    del g.node[:]
    g.node.append(helper.make_node(op, ["x", "r", *weights], [g.output[0].name, "", "", g.output[1].name],
                                   domain="com.microsoft", epsilon=1e-5))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


def feeds_for(graph: Graph, batch: int, seq: int) -> dict:
    rng = np.random.default_rng(0)
    out = {}
    for v in graph.inputs:
        shape = [{"batch": batch, "seq": seq}.get(str(d), d) if not isinstance(d, int) else d for d in v.type.shape]
        if v.type.dtype == DType.BOOL:  # a padding row: the last quarter of every sequence is padding
            keep = np.ones(shape, dtype=bool)
            keep[..., seq - seq // 4:] = False
            out[v.name] = keep
        else:
            out[v.name] = rng.standard_normal(shape, dtype=np.float32)
    return out


def compare(models: dict, feeds: dict, threads: int, repeat: int) -> dict:
    sessions = {k: make_session(m.SerializeToString(), threads)[0] for k, m in models.items()}
    outs = {k: s.run(None, feeds) for k, s in sessions.items()}
    names = list(sessions)
    for _ in range(3):
        for k in names:
            sessions[k].run(None, feeds)
    samples = {k: [] for k in names}
    for r in range(repeat):
        for k in names[r % 2:] + names[:r % 2]:
            t0 = time.perf_counter()
            sessions[k].run(None, feeds)
            samples[k].append(time.perf_counter() - t0)
    ms = {k: statistics.median(v) * 1e3 for k, v in samples.items()}
    a, b = names
    diff = max(float(np.abs(x - y).max()) for x, y in zip(outs[a], outs[b]))
    contrib = sorted({n.op_type for n in models[b].graph.node if n.domain == "com.microsoft"})
    return {"standard_ms": ms[a], "contrib_ms": ms[b], "ratio_contrib_over_standard": ms[b] / ms[a],
            "max_abs_diff": diff, "contrib_ops": contrib}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeat", type=int, default=40)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    torch.manual_seed(0)

    cases = {
        "attention causal H8/KV4 D64 (Llama-style)": attention_graph(8, 4, 64, True),
        "attention causal H4/KV2 D16 (zoo Llama)": attention_graph(4, 2, 16, True),
        "attention H12 D32 (MiniLM)": attention_graph(12, 12, 32, False),
        "attention H8 D64 (BERT-style)": attention_graph(8, 8, 64, False),
        "attention H12 D32 + padding row (MiniLM)": attention_graph(12, 12, 32, False, padding=True),
        "bias+gelu 1536": bias_gelu_graph(1536),
    }
    rows = []
    for name, g in cases.items():
        rows.append({"case": name, **compare({"standard": lower(g, flavor="standard"), "ort": lower(g, flavor="ort")},
                                             feeds_for(g, args.batch, args.seq), args.threads, args.repeat)})
    for kind, hidden in (("layer", 384), ("layer", 512), ("rms", 512)):
        g = add_norm_graph(kind, hidden)
        rows.append({"case": f"add_norm {kind} {hidden}", **compare({"standard": lower(g, flavor="standard"), "skip": skip_norm_model(g, kind)},
                                                                    feeds_for(g, args.batch, args.seq), args.threads, args.repeat)})

    print(f"\nbatch {args.batch}, seq {args.seq}, {args.threads} thread(s); median ms")
    print(f"{'case':<44} {'standard':>9} {'contrib':>9} {'ratio':>6} {'max abs':>8}  contrib op")
    for r in rows:
        print(f"{r['case']:<44} {r['standard_ms']:>9.3f} {r['contrib_ms']:>9.3f} {r['ratio_contrib_over_standard']:>6.2f}"
              f" {r['max_abs_diff']:>8.1e}  {','.join(r['contrib_ops']) or '(none: standard in both)'}")
    print("ratio < 1: the contrib kernel is faster")

    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(args.out, f"ort_kernels-{platform.node() or 'host'}-{stamp}.json")
    meta = {"date": stamp, "machine": platform.machine(), "cpu_count": os.cpu_count(), "onnxruntime": ort.__version__, "args": vars(args)}
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
