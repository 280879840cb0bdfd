"""GPU benchmark: one decode step of attention over a KV cache, t2c's split-K kernel against its flash kernel and SDPA.

Cases, bfloat16, Hq = 32 query heads sharing Hkv = 8 KV heads, D = 128 (--heads, --kv-heads,
--head-dim), one new token (Sq = 1) per sequence, batch in {1, 8} (--batches), cache length in
1k..128k (--contexts), a bool mask over the cache (all keys visible: what a with-past graph passes
without padding):

  split-K  t2c/kernels/decode_attention.py: one program per (sequence, KV head, key chunk), then a combine
  flash    t2c/kernels/attention.py's flash kernel on the same call (one program per query head)
  sdpa     F.scaled_dot_product_attention(enable_gqa=True) with the mask, PyTorch's own choice of backend

A decode step reads the whole cache once: GB/s = the bytes of K and V / time, against the device's
memory bandwidth; speedups = flash ms / split-K ms and sdpa ms / split-K ms. Timing is
triton.testing.do_bench (median); the first call of each case compiles outside the timing. The
split-K result is checked against the IR op's reference in float32 at every case (max abs error).
Cases that would start after --budget-s seconds are left out and listed.

--smoke runs tiny sizes on the CPU under TRITON_INTERPRET=1 (set before triton is imported) with
a wall-clock timer: it checks that the script runs and writes its JSON.

    .venv/bin/python benchmarks/gpu/decode_attention.py [--contexts 1024,8192,32768,131072] [--batches 1,8]
    .venv/bin/python benchmarks/gpu/decode_attention.py --smoke --out /tmp/decode_smoke

Writes <out>/gpu_decode_attention-<device>-<date>.json (default out: benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from _bench import cuda_device, ints, make_timer, result_doc, write_json  # benchmarks/gpu/_bench.py

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def build_case(batch: int, context: int, heads: int, kv_heads: int, d: int, dtype, device):
    """(split-K, flash, sdpa callables, operands, attrs) of one decode step."""
    import torch
    import torch.nn.functional as F

    from t2c.ir.opdefs.attention import AttentionAttrs
    from t2c.kernels.attention import _launch
    from t2c.kernels.decode_attention import decode_attention

    g = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(batch, heads, 1, d, generator=g, device=device, dtype=dtype)
    k, v = (torch.randn(batch, kv_heads, context, d, generator=g, device=device, dtype=dtype) for _ in range(2))
    mask = torch.ones(batch, 1, 1, context, dtype=torch.bool, device=device)
    attrs = AttentionAttrs(scale=d ** -0.5, kv_heads=kv_heads)

    def split_k():
        return decode_attention(q, k, v, mask, attrs)

    def flash():
        return _launch(q, k, v, mask, None, None, attrs)

    def sdpa():
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=attrs.scale, enable_gqa=True)

    return split_k, flash, sdpa, (q, k, v, mask), attrs


def max_abs_err(fn, operands, attrs) -> float:
    from t2c.ir.opdefs.attention import attention_reference

    q, k, v, mask = operands
    return float((fn().float() - attention_reference(q.float(), k.float(), v.float(), mask, attrs)).abs().max())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--contexts", default="1024,8192,32768,131072", help="comma-separated cache lengths")
    ap.add_argument("--batches", default="1,8", help="comma-separated batch sizes")
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--head-dim", type=int, default=128)
    ap.add_argument("--budget-s", type=float, default=18.0, help="start no case after this many seconds")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU under TRITON_INTERPRET=1")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"), help="folder for the JSON")
    args = ap.parse_args()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
        contexts, batches, heads, kv_heads, d = [40], [2], 4, 2, 16
    else:
        contexts, batches, heads, kv_heads, d = ints(args.contexts), ints(args.batches), args.heads, args.kv_heads, args.head_dim

    sys.path.insert(0, ROOT)
    import torch
    import triton

    if args.smoke:
        device, device_name = "cpu", "cpu (Triton interpreter)"
    else:
        device, device_name = "cuda", cuda_device("decode_attention.py")
        if device_name is None:
            return 1
    dtype = torch.bfloat16
    timer = make_timer(args.smoke, warmup_ms=10, rep_ms=40)
    print(f"decode attention on {device_name}: bf16, Hq={heads}, Hkv={kv_heads}, D={d}, one new token; "
          f"torch {torch.__version__}, triton {triton.__version__}", flush=True)
    print(f"{'B':>3s} {'context':>8s} | {'split-K ms':>10s} {'GB/s':>7s} | {'flash ms':>9s} {'sdpa ms':>8s} | {'vs flash':>8s} {'vs sdpa':>8s} | {'err':>8s}")
    t_run = time.perf_counter()
    cases, left_out = [], []
    for batch in batches:
        for context in contexts:
            if time.perf_counter() - t_run > args.budget_s:
                left_out.append({"batch": batch, "context": context})
                continue
            split_k, flash, sdpa, operands, attrs = build_case(batch, context, heads, kv_heads, d, dtype, device)
            split_k(), flash(), sdpa()  # compile and autotune outside the timing
            cache_bytes = 2 * batch * kv_heads * context * d * operands[1].element_size()
            case = {"batch": batch, "context": context, "split_k": {"ms": timer(split_k)}, "flash": {"ms": timer(flash)},
                    "sdpa": {"ms": timer(sdpa)}, "cache_bytes": cache_bytes}
            case["split_k"]["gb_per_s"] = cache_bytes / case["split_k"]["ms"] / 1e6
            case["speedup_vs_flash"] = case["flash"]["ms"] / case["split_k"]["ms"]
            case["speedup_vs_sdpa"] = case["sdpa"]["ms"] / case["split_k"]["ms"]
            case["split_k_max_abs_err"] = max_abs_err(split_k, operands, attrs)
            cases.append(case)
            print(f"{batch:3d} {context:8d} | {case['split_k']['ms']:10.4f} {case['split_k']['gb_per_s']:7.0f} | "
                  f"{case['flash']['ms']:9.4f} {case['sdpa']['ms']:8.4f} | {case['speedup_vs_flash']:7.2f}x "
                  f"{case['speedup_vs_sdpa']:7.2f}x | {case['split_k_max_abs_err']:8.1e}", flush=True)
            del split_k, flash, sdpa, operands
            if device == "cuda":
                torch.cuda.empty_cache()
    if left_out:
        print(f"left out for time (--budget-s {args.budget_s:g}): " + ", ".join(f"B={c['batch']} context={c['context']}" for c in left_out))
    path, doc = result_doc("gpu_decode_attention", device_name, args.smoke, args.out)
    doc.update({
        "dtype": "bfloat16", "heads": heads, "kv_heads": kv_heads, "head_dim": d,
        "timing": "wall clock, 3 runs (interpreter)" if args.smoke else "triton.testing.do_bench median",
        "run_s": round(time.perf_counter() - t_run, 1), "cases": cases, "left_out": left_out,
    })
    write_json(path, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
