"""Which ONNX form should a decode step's attention take? Concat + Attention, Attention's past inputs, GroupQueryAttention.

The question of issue 16: ONNX Runtime's com.microsoft GroupQueryAttention takes the KV cache itself
(`past_key`/`past_value` [B, Hkv, P, D], `seqlens_k`, `total_sequence_length`) and returns the
present cache. A with-past graph's attention (frontends/hf_past.py) is `cat(past, new)` keys and
values and a boolean mask that is causal in the cache's frame and 0 on left padding. Three lowerings
of that step, in one run, on ONNX Runtime's CPU provider:

  standard  Concat(past, new) for keys and values + the opset-23 Attention op with the bool mask
            (what both flavors emit today)
  past      the opset-23 Attention op with its own past_key/past_value inputs and present outputs
  gqa       GroupQueryAttention with past_key/past_value, seqlens_k = P + S - 1 for every row,
            causal, and the mask as `attention_bias` (0 / finfo.min)

Both outputs are compared with torch's scaled_dot_product_attention over the same mask (one
sequence left-padded by 5), so the table says whether each is exact as well as its speed. Medians
of --runs calls after warm-up, each library's default threads; ratios = time / standard's.

    .venv/bin/python benchmarks/gqa_decode.py [--pasts 512,2048,4096] [--batch 2] [--heads 8 --kv-heads 2 --head-dim 64]

Writes benchmarks/results/gqa_decode-<host>-<date>.json.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from _results import header, write  # noqa: E402  (benchmarks/_results.py)

IR_VERSION = 10  # what ONNX Runtime 1.2x reads


def _model(nodes, inputs, outputs, contrib: bool) -> bytes:
    ins = [helper.make_tensor_value_info(n, t, None) for n, t in inputs]
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs]
    opsets = [helper.make_opsetid("", 23)] + ([helper.make_opsetid("com.microsoft", 1)] if contrib else [])
    model = helper.make_model(helper.make_graph(nodes, "step", ins, outs), opset_imports=opsets)
    model.ir_version = IR_VERSION
    return model.SerializeToString()


def standard_step(scale: float) -> bytes:
    f = TensorProto.FLOAT
    nodes = [helper.make_node("Concat", ["past_key", "key"], ["present_key"], axis=2),
             helper.make_node("Concat", ["past_value", "value"], ["present_value"], axis=2),
             helper.make_node("Attention", ["query", "present_key", "present_value", "mask"], ["out"], scale=scale)]
    inputs = [("query", f), ("key", f), ("value", f), ("past_key", f), ("past_value", f), ("mask", TensorProto.BOOL)]
    return _model(nodes, inputs, ["out", "present_key", "present_value"], contrib=False)


def past_step(scale: float) -> bytes:
    f = TensorProto.FLOAT
    node = helper.make_node("Attention", ["query", "key", "value", "mask", "past_key", "past_value"],
                            ["out", "present_key", "present_value"], scale=scale)
    inputs = [("query", f), ("key", f), ("value", f), ("past_key", f), ("past_value", f), ("mask", TensorProto.BOOL)]
    return _model([node], inputs, ["out", "present_key", "present_value"], contrib=False)


def gqa_step(scale: float, heads: int, kv_heads: int) -> bytes:
    f = TensorProto.FLOAT
    node = helper.make_node("GroupQueryAttention", ["query", "key", "value", "past_key", "past_value", "seqlens_k", "total", "", "", "", "bias"],
                            ["out", "present_key", "present_value"], domain="com.microsoft", num_heads=heads, kv_num_heads=kv_heads, scale=scale)
    inputs = [("query", f), ("key", f), ("value", f), ("past_key", f), ("past_value", f), ("bias", f),
              ("seqlens_k", TensorProto.INT32), ("total", TensorProto.INT32)]
    return _model([node], inputs, ["out", "present_key", "present_value"], contrib=True)


def median_ms(session, feeds: dict, runs: int) -> float:
    for _ in range(3):
        session.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feeds)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(batch: int, heads: int, kv_heads: int, dim: int, past: int, runs: int) -> dict:
    gen = torch.Generator().manual_seed(past)
    q = torch.randn(batch, heads, 1, dim, generator=gen)
    k, v = (torch.randn(batch, kv_heads, 1, dim, generator=gen) for _ in range(2))
    pk, pv = (torch.randn(batch, kv_heads, past, dim, generator=gen) for _ in range(2))
    keep = torch.ones(batch, past + 1, dtype=torch.bool)
    keep[-1, :5] = False  # the last sequence left-padded, as generate pads a batch
    mask = keep[:, None, None, :]  # one new token: causal in the cache's frame sees every key
    group = heads // kv_heads
    want = torch.nn.functional.scaled_dot_product_attention(
        q, torch.cat([pk, k], 2).repeat_interleave(group, 1), torch.cat([pv, v], 2).repeat_interleave(group, 1), attn_mask=mask)
    scale = dim ** -0.5
    standard = ort.InferenceSession(standard_step(scale), providers=["CPUExecutionProvider"])
    with_past = ort.InferenceSession(past_step(scale), providers=["CPUExecutionProvider"])
    gqa = ort.InferenceSession(gqa_step(scale, heads, kv_heads), providers=["CPUExecutionProvider"])
    std_feeds = {"query": q.numpy(), "key": k.numpy(), "value": v.numpy(), "past_key": pk.numpy(), "past_value": pv.numpy(), "mask": mask.numpy()}

    def merged(x):  # [B, H, S, D] -> [B, S, H*D], GroupQueryAttention's layout
        return x.transpose(1, 2).reshape(batch, x.shape[2], -1).numpy()

    gqa_feeds = {"query": merged(q), "key": merged(k), "value": merged(v), "past_key": pk.numpy(), "past_value": pv.numpy(),
                 "bias": torch.where(mask, 0.0, torch.finfo(torch.float32).min).numpy(),
                 "seqlens_k": np.full((batch,), past, np.int32), "total": np.array(past + 1, np.int32)}
    std_out = torch.from_numpy(standard.run(None, std_feeds)[0])
    past_out = torch.from_numpy(with_past.run(None, std_feeds)[0])
    gqa_out = torch.from_numpy(gqa.run(None, gqa_feeds)[0]).reshape(batch, 1, heads, dim).transpose(1, 2)
    row = {"past": past, "standard_ms": median_ms(standard, std_feeds, runs), "past_ms": median_ms(with_past, std_feeds, runs),
           "gqa_ms": median_ms(gqa, gqa_feeds, runs), "standard_max_abs": float((std_out - want).abs().max()),
           "past_max_abs": float((past_out - want).abs().max()), "gqa_max_abs": float((gqa_out - want).abs().max())}
    row["past_over_standard"] = row["past_ms"] / row["standard_ms"]
    row["gqa_over_standard"] = row["gqa_ms"] / row["standard_ms"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pasts", default="512,2048,4096")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=2)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    rows = []
    for past in (int(p) for p in args.pasts.split(",")):
        row = measure(args.batch, args.heads, args.kv_heads, args.head_dim, past, args.runs)
        rows.append(row)
        print(f"past {past:>6}: standard {row['standard_ms']:7.3f} ms | past {row['past_ms']:7.3f} ms ({row['past_over_standard']:.2f}x) | "
              f"gqa {row['gqa_ms']:7.3f} ms ({row['gqa_over_standard']:.2f}x) | max abs vs sdpa: standard {row['standard_max_abs']:.2g}, "
              f"past {row['past_max_abs']:.2g}, gqa {row['gqa_max_abs']:.2g}", flush=True)
    write({**header("gqa_decode"), "batch": args.batch, "heads": args.heads, "kv_heads": args.kv_heads,
           "head_dim": args.head_dim, "runs": args.runs, "onnxruntime": ort.__version__, "rows": rows}, args.out)


if __name__ == "__main__":
    main()
