"""GPU benchmark: t2c's chunked linear attention (t2c/kernels/linear_attention.py) against flash attention.

Cases, bfloat16, B = 1, H = 16 heads, D = Dv = 64 (--heads, --head-dim), S in 2k..32k (--seqs):

  causal   t2c linear_attention {causal=true}    vs F.scaled_dot_product_attention(is_causal=True)
  full     t2c linear_attention {causal=false}   vs F.scaled_dot_product_attention()

SDPA runs on its flash backend (sdpa_kernel(FLASH_ATTENTION)). The two compute different
functions (phi(Q)(phi(K)^T V) normalised, against softmax attention): the comparison is the cost of
a layer's token mixing at each length, O(S D^2) against O(S^2 D), and speedup = SDPA ms / t2c ms.
Timing is triton.testing.do_bench (CUDA events), median of short windows; the first call of each
case compiles and autotunes the kernels, outside the timing. For S <= 2048 the kernel's result is
also checked against the IR op's reference in float32 (t2c_max_abs_err). Cases that would start
after --budget-s seconds are left out and listed (run_all.sh gives the script 55 s).

--smoke runs tiny sizes on the CPU under TRITON_INTERPRET=1 (set here before triton is imported)
against SDPA's default CPU backend, with a wall-clock timer: it checks that the script runs and
writes its JSON (the numbers mean nothing there). Without --smoke a CUDA device is required.

    .venv/bin/python benchmarks/gpu/linear_attention.py [--seqs 2048,4096,8192,16384,32768] [--budget-s 45]
    .venv/bin/python benchmarks/gpu/linear_attention.py --smoke --out /tmp/la_smoke

Prints a table and writes <out>/gpu_linear_attention-<device>-<date>.json (default out: benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from _bench import cuda_device, ints, make_timer, result_doc, write_json  # benchmarks/gpu/_bench.py (the script's folder is on sys.path)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

STRUCTURES = ("causal", "full")
CHECK_UP_TO = 2048  # longest S checked against the reference (causal: a [B, H, S, D, Dv] float32 prefix sum)


def build_case(structure: str, s: int, heads: int, d: int, dtype, device, smoke: bool):
    """(t2c callable, SDPA callable, the inputs, the attrs) for one case."""
    import torch
    import torch.nn.functional as F

    from t2c.ir.opdefs.attention import LinearAttentionAttrs
    from t2c.kernels.linear_attention import linear_attention

    causal = structure == "causal"
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(1, heads, s, d, generator=g, device=device, dtype=dtype) for _ in range(3))
    attrs = LinearAttentionAttrs(feature="elu1", causal=causal, kv_heads=heads)

    def ours():
        return linear_attention(q, k, v, attrs=attrs)

    if smoke:  # the CPU has no flash backend: SDPA's own choice
        def sdpa():
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)
    else:
        from torch.nn.attention import SDPBackend, sdpa_kernel

        def sdpa():
            with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    return ours, sdpa, (q, k, v), attrs


def max_abs_err(ours, inputs, attrs) -> float:
    """The kernel's result against the IR op's reference on the inputs widened to float32."""
    from t2c.ir.opdefs.attention import linear_attention_reference

    q, k, v = inputs
    ref = linear_attention_reference(q.float(), k.float(), v.float(), attrs)
    return float((ours().float() - ref).abs().max())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seqs", default="2048,4096,8192,16384,32768", help="comma-separated sequence lengths")
    ap.add_argument("--heads", type=int, default=16, help="heads (batch 1)")
    ap.add_argument("--head-dim", type=int, default=64, help="head dim of q, k and v")
    ap.add_argument("--structures", default=",".join(STRUCTURES), help=f"comma-separated subset of {', '.join(STRUCTURES)}")
    ap.add_argument("--budget-s", type=float, default=45.0, help="start no case after this many seconds")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU under TRITON_INTERPRET=1")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"), help="folder for the JSON")
    args = ap.parse_args()
    structures = [x for x in args.structures.split(",") if x]
    if set(structures) - set(STRUCTURES):
        ap.error(f"unknown structures {sorted(set(structures) - set(STRUCTURES))}; choose from {', '.join(STRUCTURES)}")
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
        seqs, heads, head_dim = [40], 2, 16
    else:
        seqs, heads, head_dim = ints(args.seqs), args.heads, args.head_dim

    sys.path.insert(0, ROOT)
    import torch
    import triton

    if args.smoke:
        device, device_name = "cpu", "cpu (Triton interpreter)"
    else:
        device, device_name = "cuda", cuda_device("linear_attention.py")
        if device_name is None:
            return 1
    from t2c.kernels.linear_attention import _chunk_outputs

    dtype = torch.bfloat16
    timer = make_timer(args.smoke, warmup_ms=10, rep_ms=40)
    baseline = "SDPA (CPU default backend)" if args.smoke else "SDPA flash backend"
    print(f"linear attention on {device_name}: bf16, B=1, H={heads}, D={head_dim}, vs {baseline}; "
          f"torch {torch.__version__}, triton {triton.__version__}", flush=True)

    t_run = time.perf_counter()
    cases, left_out = [], []
    print(f"{'structure':9s} {'S':>6s} | {'t2c ms':>8s} {'sdpa ms':>8s} {'speedup':>8s} | {'t2c err':>9s}")
    for structure in structures:
        for s in seqs:
            if time.perf_counter() - t_run > args.budget_s:
                left_out.append({"structure": structure, "seq": s})
                continue
            ours, sdpa, inputs, attrs = build_case(structure, s, heads, head_dim, dtype, device, args.smoke)
            ours(), sdpa()  # compile and autotune outside the timing
            case = {"structure": structure, "seq": s, "batch": 1, "heads": heads, "head_dim": head_dim,
                    "t2c": {"ms": timer(ours)}, "sdpa": {"ms": timer(sdpa)}}
            case["speedup"] = case["sdpa"]["ms"] / case["t2c"]["ms"]
            best = getattr(_chunk_outputs, "best_config", None)
            if best is not None:
                case["t2c"]["output_config"] = str(best)
            case["t2c_max_abs_err"] = max_abs_err(ours, inputs, attrs) if s <= CHECK_UP_TO else None
            cases.append(case)
            err = case["t2c_max_abs_err"]
            print(f"{structure:9s} {s:6d} | {case['t2c']['ms']:8.3f} {case['sdpa']['ms']:8.3f} "
                  f"{case['speedup']:7.2f}x | {'-' if err is None else format(err, '.2e'):>9s}", flush=True)
            del ours, sdpa, inputs
            if device == "cuda":
                torch.cuda.empty_cache()
    if left_out:
        print(f"left out for time (--budget-s {args.budget_s:g}): "
              + ", ".join(f"{c['structure']} S={c['seq']}" for c in left_out))

    path, doc = result_doc("gpu_linear_attention", device_name, args.smoke, args.out)
    doc.update({
        "dtype": "bfloat16",
        "baseline": baseline,
        "note": "forward only; t2c computes linear attention (phi = elu + 1), SDPA softmax attention: "
                "the cost of token mixing at each length; speedup = sdpa ms / t2c ms",
        "timing": "wall clock, 3 runs (interpreter)" if args.smoke else "triton.testing.do_bench median",
        "run_s": round(time.perf_counter() - t_run, 1),
        "cases": cases,
        "left_out": left_out,
    })
    write_json(path, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
