"""GPU benchmark: t2c's Triton INT8 GEMM (t2c/kernels/int8_gemm.py, the IR op `qlinear`) against
torch's bf16 matmul and torch._int_mm.

Shapes y [M, N] = x [M, K] @ W^T: decode M in {1, 16} (--decode-m) and prefill M = 4096
(--prefill-m), at (N, K) = 4096 x 4096 and 11008 x 4096 (--shapes; an MLP's up projection) for
decode and 4096 x 4096 for prefill (--prefill-shapes). Per shape:

  w8a8          t2c qlinear {mode=w8a8}: float32 x -> per-token int8 quantization kernel, then
                the int8 GEMM with the scales and bias in its epilogue (what a compiled model runs)
  w8a8_gemm     the int8 GEMM alone, on x already quantized (the kernel against the matmuls below)
  weight_only   t2c qlinear {mode=weight_only}, bf16 x, int8 weight per output channel
  bf16          torch.matmul(x, W^T) in bfloat16 (cuBLAS)
  int_mm        torch._int_mm(xq, Wq^T), int8 -> int32 (cuBLASLt; it needs M > 16: null below)

TOPS = 2 M N K / median time (all five count the same operations). Ratios over bf16 and over
_int_mm are in each case's `ratios`; the issue's targets (on H100/H200) are in `targets` with
whether this run met them: W8A8 >= 1.5x bf16 at the prefill shape (w8a8 end to end and the GEMM
alone), weight-only >= 1.6x bf16 at every decode M. Each case also checks the results: W8A8
against the IR reference (`w8a8_bit_identical`, torch.equal) and weight-only against the
reference in bf16 (`weight_only_max_abs_diff`). Timing is triton.testing.do_bench (CUDA events,
L2 flushed before each run), median; the first call of each kernel compiles and autotunes it.
Decode cases are also timed as CUDA graphs (triton.testing.do_bench_cudagraph, `graph_ms`): a
decode GEMM takes microseconds, about what a Python launch costs, and serving replays graphs; the
decode target is judged on those times (`targets[...]["timing"]` says which were used).

--smoke runs tiny sizes on the CPU under TRITON_INTERPRET=1 (set here before triton is
imported) with a wall-clock timer: it checks that the script runs and writes its JSON (the
numbers mean nothing there). Without --smoke a CUDA device is required.

    .venv/bin/python benchmarks/gpu/int8_gemm.py [--decode-m 1,16] [--prefill-m 4096]
    .venv/bin/python benchmarks/gpu/int8_gemm.py --smoke --out /tmp/int8_smoke

Prints a table and writes <out>/gpu_int8_gemm-<device>-<date>.json (default out: benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from _bench import cuda_device, ints, make_timer, result_doc, write_json  # benchmarks/gpu/_bench.py (the script's folder is on sys.path)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

IMPLS = ("w8a8", "w8a8_gemm", "weight_only", "bf16", "int_mm")
# (ratio name, numerator, denominator, which cases, minimum): the targets on H100/H200
TARGETS = (
    ("w8a8_vs_bf16_prefill", "w8a8", "bf16", "prefill", 1.5),
    ("w8a8_gemm_vs_bf16_prefill", "w8a8_gemm", "bf16", "prefill", 1.5),
    ("weight_only_vs_bf16_decode", "weight_only", "bf16", "decode", 1.6),
)


def shape_list(text: str) -> list[tuple[int, int]]:
    """`4096x4096,11008x4096` -> [(4096, 4096), (11008, 4096)] as (N, K)."""
    out = []
    for item in text.split(","):
        if item:
            n, k = item.lower().split("x")
            out.append((int(n), int(k)))
    return out


def build_case(m: int, n: int, k: int, device):
    """{impl: callable} for one shape, and a check of the results."""
    import torch

    from t2c.ir.opdefs.quant import QLinearAttrs, qlinear as reference, quantize_tokens, quantize_weight
    from t2c.kernels import int8_gemm

    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(m, k, generator=g, device=device)
    w = torch.randn(n, k, generator=g, device=device) * 0.02
    bias = torch.randn(n, generator=g, device=device) * 0.1
    q, s = quantize_weight(w)
    x16, w16, bias16 = x.to(torch.bfloat16), w.to(torch.bfloat16), bias.to(torch.bfloat16)
    xq, sx = int8_gemm.quantize_tokens(x)
    w8a8, weight_only = QLinearAttrs("w8a8", 0), QLinearAttrs("weight_only", 0)

    def w8a8_gemm():  # the GEMM on the already quantized x
        return int8_gemm.w8a8_gemm(xq, sx, q, s, bias)

    int_mm = None
    if m > 16 and k % 8 == 0 and n % 8 == 0:
        qt = q.t()

        def int_mm():
            return torch._int_mm(xq, qt)

    fns = {
        "w8a8": lambda: int8_gemm.qlinear(x, q, s, bias, attrs=w8a8),
        "w8a8_gemm": w8a8_gemm,
        "weight_only": lambda: int8_gemm.qlinear(x16, q, s, bias16, attrs=weight_only),
        "bf16": lambda: torch.nn.functional.linear(x16, w16, bias16),
        "int_mm": int_mm,
    }

    def check() -> dict:
        want = reference(x, q, s, bias, "w8a8", 0)
        ours = fns["w8a8"]()
        gemm_only = w8a8_gemm().clone()
        wo, wo_ref = fns["weight_only"](), reference(x16, q, s, bias16, "weight_only", 0)
        rq, rs = quantize_tokens(x)
        return {
            "w8a8_bit_identical": bool(torch.equal(ours, want)) and bool(torch.equal(gemm_only, want)),
            "w8a8_max_abs_diff": float((ours - want).abs().max()),
            "quantize_bit_identical": bool(torch.equal(xq.float(), rq)) and bool(torch.equal(sx, rs[:, 0])),
            "weight_only_max_abs_diff": float((wo.float() - wo_ref.float()).abs().max()),
            "weight_only_ref_max_abs": float(wo_ref.float().abs().max()),
        }

    return fns, check


def graph_time(fn) -> float | None:
    """Median ms of fn replayed in a CUDA graph (no launch overhead); None where capture fails."""
    import torch
    import triton.testing

    try:
        return triton.testing.do_bench_cudagraph(fn, rep=50, return_mode="median")
    except Exception as e:  # noqa: BLE001 - a kernel that cannot be captured is reported, not fatal
        print(f"  (no CUDA-graph time: {type(e).__name__}: {str(e).splitlines()[0][:120]})", flush=True)
        torch.cuda.synchronize()
        return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--decode-m", default="1,16", help="comma-separated decode token counts")
    ap.add_argument("--shapes", default="4096x4096,11008x4096", help="decode (N x K) shapes, comma-separated")
    ap.add_argument("--prefill-m", default="4096", help="comma-separated prefill token counts")
    ap.add_argument("--prefill-shapes", default="4096x4096", help="prefill (N x K) shapes, comma-separated")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU under TRITON_INTERPRET=1")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"), help="folder for the JSON")
    args = ap.parse_args()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
        plan = [("decode", m, n, k) for m in (1, 3) for n, k in [(48, 64)]] + [("prefill", 40, 48, 64)]
    else:
        plan = [("decode", m, n, k) for m in ints(args.decode_m) for n, k in shape_list(args.shapes)]
        plan += [("prefill", m, n, k) for m in ints(args.prefill_m) for n, k in shape_list(args.prefill_shapes)]

    started = time.perf_counter()
    sys.path.insert(0, ROOT)
    import torch
    import triton

    if args.smoke:
        device, device_name = "cpu", "cpu (Triton interpreter)"
    else:
        device, device_name = "cuda", cuda_device("int8_gemm.py")
        if device_name is None:
            return 1
    timer = make_timer(args.smoke)
    print(f"int8 GEMM on {device_name}: torch {torch.__version__}, triton {triton.__version__}; TOPS = 2MNK / time",
          flush=True)
    print(f"{'phase':7s} {'M':>5s} {'N':>6s} {'K':>6s} | " + " ".join(f"{i:>11s}" for i in IMPLS)
          + f" | {'w8a8/bf16':>9s} {'wo/bf16':>8s} {'exact':>5s}")

    cases = []
    for phase, m, n, k in plan:
        fns, check = build_case(m, n, k, device)
        checks = check()  # also the first calls: compile and autotune
        ops = 2 * m * n * k
        impls = {}
        for name in IMPLS:
            fn = fns[name]
            if fn is None:
                impls[name] = None
                continue
            ms = timer(fn)
            impls[name] = {"ms": ms, "tops": ops / (ms * 1e-3) / 1e12, "graph_ms": None, "graph_tops": None}
            if device == "cuda" and phase == "decode":
                graph_ms = graph_time(fn)
                if graph_ms:
                    impls[name].update(graph_ms=graph_ms, graph_tops=ops / (graph_ms * 1e-3) / 1e12)
        ratios, graph_ratios = {}, {}
        for num in ("w8a8", "w8a8_gemm", "weight_only"):
            for den in ("bf16", "int_mm"):
                if impls[num] and impls[den]:
                    ratios[f"{num}_vs_{den}"] = impls[den]["ms"] / impls[num]["ms"]
                    if impls[num]["graph_ms"] and impls[den]["graph_ms"]:
                        graph_ratios[f"{num}_vs_{den}"] = impls[den]["graph_ms"] / impls[num]["graph_ms"]
        case = {"phase": phase, "m": m, "n": n, "k": k, "ops": ops, **impls, "ratios": ratios,
                "graph_ratios": graph_ratios, **checks}
        cases.append(case)
        cells = " ".join(f"{impls[i]['tops']:11.2f}" if impls[i] else f"{'-':>11s}" for i in IMPLS)
        print(f"{phase:7s} {m:5d} {n:6d} {k:6d} | {cells} | {ratios['w8a8_vs_bf16']:8.2f}x "
              f"{ratios['weight_only_vs_bf16']:7.2f}x {'yes' if checks['w8a8_bit_identical'] else 'NO':>5s}"
              + (f"  graphs: w8a8 {graph_ratios['w8a8_vs_bf16']:.2f}x, weight-only {graph_ratios['weight_only_vs_bf16']:.2f}x"
                 if {"w8a8_vs_bf16", "weight_only_vs_bf16"} <= set(graph_ratios) else ""), flush=True)
        del fns, check
        if device == "cuda":
            torch.cuda.empty_cache()

    targets = {}
    for name, num, den, phase, minimum in TARGETS:
        chosen = [c for c in cases if c["phase"] == phase]
        graphs = bool(chosen) and all(f"{num}_vs_{den}" in c["graph_ratios"] for c in chosen)
        got = [c["graph_ratios" if graphs else "ratios"].get(f"{num}_vs_{den}") for c in chosen]
        worst = min((r for r in got if r is not None), default=None)
        targets[name] = {"min_ratio": minimum, "worst": worst, "met": worst is not None and worst >= minimum,
                         "timing": "cuda_graph" if graphs else "do_bench"}

    path, doc = result_doc("gpu_int8_gemm", device_name, args.smoke, args.out)
    doc.update({
        "impls": {
            "w8a8": "t2c qlinear w8a8: float32 x, per-token quantize kernel + int8 GEMM (scales, bias in the epilogue)",
            "w8a8_gemm": "t2c int8 GEMM alone on quantized x",
            "weight_only": "t2c qlinear weight_only: bf16 x, int8 weight per channel",
            "bf16": "torch.nn.functional.linear in bfloat16",
            "int_mm": "torch._int_mm int8 -> int32 (M > 16 only)",
        },
        "tops": "2 M N K / median time / 1e12",
        "timing": "wall clock, 3 runs (interpreter)" if args.smoke else "triton.testing.do_bench median",
        "targets": targets,
        "cases": cases,
        "all_w8a8_bit_identical": all(c["w8a8_bit_identical"] for c in cases),
        "run_s": time.perf_counter() - started,
    })
    write_json(path, doc)
    print("targets: " + ", ".join(f"{n} {t['worst']:.2f}x (>= {t['min_ratio']}: {'met' if t['met'] else 'NOT met'})"
                                  if t["worst"] is not None else f"{n} -" for n, t in targets.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
