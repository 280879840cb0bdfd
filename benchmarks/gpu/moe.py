"""GPU benchmark: t2c's Triton MoE kernel (t2c/kernels/moe.py `experts`) against Hugging Face's experts.

One MoE layer's expert computation (routing given), bfloat16, Mixtral's experts module
(transformers' MixtralExperts: SwiGLU, gate_up_proj [E, 2I, H], down_proj [E, H, I]) at
hidden H = 2048 (--hidden), intermediate I = 1024 (--inter), for every combination of
experts E in {8, 64} (--experts), top-k in {2, 8} (--topk), tokens T in {512, 8192} (--tokens):

  t2c          moe.experts(x, idx, w, gate_up_proj, down_proj) {silu, gated, out_in}
  hf_eager     the module with config._experts_implementation = "eager": the library's
               per-expert loop (one_hot mask, nonzero, index_add_)
  hf_grouped   "grouped_mm" (torch's grouped GEMM), where the installed transformers and
               torch run it on this device; else the case records why not

Routing: softmax over random router logits, top-k, renormalised (Mixtral's). Each case
reports median ms per implementation, the speedup of t2c over each, TFLOP/s counted as the
expert GEMMs' 2 * T * k * 3HI flops, and the largest difference between t2c's
and HF eager's outputs (max_abs_diff; max_abs_eager is the
largest output, for scale). The issue's target: >= 5x hf_eager at E=64, k=8, T=8192.
Timing is triton.testing.do_bench (CUDA events, L2 flushed before each run), median.

--smoke runs tiny sizes on the CPU under TRITON_INTERPRET=1 (set here before triton is
imported) with a wall-clock timer: it checks that the script runs and writes its JSON (the
numbers mean nothing there). Without --smoke a CUDA device is required.

    .venv/bin/python benchmarks/gpu/moe.py [--experts 8,64] [--topk 2,8] [--tokens 512,8192]
    .venv/bin/python benchmarks/gpu/moe.py --smoke --out /tmp/moe_smoke

Prints a table and writes <out>/gpu_moe-<device>-<date>.json (default out: benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from _bench import cuda_device, ints, make_timer, result_doc, write_json  # benchmarks/gpu/_bench.py (the script's folder is on sys.path)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
IMPLS = ("t2c", "hf_eager", "hf_grouped")


def hf_experts(num_experts: int, top_k: int, hidden: int, inter: int, dtype, device):
    """transformers' MixtralExperts with random weights (std 0.02), and its config."""
    import torch
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralExperts

    config = MixtralConfig(hidden_size=hidden, intermediate_size=inter, num_local_experts=num_experts,
                           num_experts_per_tok=top_k, hidden_act="silu")
    config._experts_implementation = "eager"
    module = MixtralExperts(config).to(device=device, dtype=dtype).eval()
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=g, device=device, dtype=torch.float32).to(dtype) * 0.02)
    return module, config


def routing(tokens: int, num_experts: int, top_k: int, device):
    """Mixtral's routing of random logits: softmax, top-k, renormalised (weights in float32 -> bf16 later)."""
    import torch

    g = torch.Generator(device=device).manual_seed(1)
    logits = torch.randn(tokens, num_experts, generator=g, device=device)
    weights, index = torch.topk(torch.softmax(logits, dim=-1), top_k, dim=-1)
    return index, weights / weights.sum(dim=-1, keepdim=True)


def build_case(num_experts: int, top_k: int, tokens: int, hidden: int, inter: int, dtype, device):
    """{impl: callable or reason it cannot run}, and the eager callable's output for the diff."""
    import torch

    from t2c.ir.opdefs.experts import ExpertsAttrs
    from t2c.kernels import moe

    module, config = hf_experts(num_experts, top_k, hidden, inter, dtype, device)
    x = torch.randn(tokens, hidden, generator=torch.Generator(device=device).manual_seed(2), device=device).to(dtype)
    index, weights = routing(tokens, num_experts, top_k, device)
    weights = weights.to(dtype)  # Mixtral's router casts them to the hidden states' dtype
    attrs = ExpertsAttrs(activation="silu", gated=True, layout="out_in", dispatch="sparse")

    def run_with(impl):
        def fn():
            config._experts_implementation = impl
            with torch.no_grad():
                return module(x, index, weights)
        return fn

    calls = {
        "t2c": lambda: moe.experts(x, index, weights, module.gate_up_proj, module.down_proj, attrs=attrs),
        "hf_eager": run_with("eager"),
        "hf_grouped": run_with("grouped_mm"),
    }
    return calls


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--experts", default="8,64", help="comma-separated expert counts")
    ap.add_argument("--topk", default="2,8", help="comma-separated top-k values")
    ap.add_argument("--tokens", default="512,8192", help="comma-separated token counts")
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--inter", type=int, default=1024)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU under TRITON_INTERPRET=1")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"), help="folder for the JSON")
    args = ap.parse_args()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
        experts, topks, token_counts, hidden, inter = [4], [2, 3], [7], 40, 24
    else:
        experts, topks, token_counts, hidden, inter = ints(args.experts), ints(args.topk), ints(args.tokens), args.hidden, args.inter

    sys.path.insert(0, ROOT)
    import torch
    import transformers
    import triton

    if args.smoke:
        device, device_name = "cpu", "cpu (Triton interpreter)"
    else:
        device, device_name = "cuda", cuda_device("moe.py")
        if device_name is None:
            return 1
    timer = make_timer(args.smoke)
    start = time.perf_counter()
    print(f"MoE experts on {device_name}: bf16, H={hidden}, I={inter}, torch {torch.__version__}, "
          f"triton {triton.__version__}, transformers {transformers.__version__}", flush=True)
    print(f"{'E':>3s} {'k':>2s} {'T':>5s} | {'t2c ms':>8s} {'TFLOP/s':>7s} | {'eager ms':>8s} {'x':>6s} | "
          f"{'grouped ms':>10s} {'x':>6s} | {'max diff':>9s}")
    cases = []
    for num_experts in experts:
        for top_k in topks:
            for tokens in token_counts:
                calls = build_case(num_experts, top_k, tokens, hidden, inter, torch.bfloat16, device)
                flops = 2 * tokens * top_k * (hidden * 2 * inter + inter * hidden)
                ours = calls["t2c"]()  # also compiles and autotunes
                want = calls["hf_eager"]()
                case = {"experts": num_experts, "top_k": top_k, "tokens": tokens, "hidden": hidden, "inter": inter,
                        "flops": flops, "max_abs_diff": float((ours.float() - want.float()).abs().max()),
                        "max_abs_eager": float(want.float().abs().max())}
                for impl in IMPLS:
                    try:
                        calls[impl]()
                        ms = timer(calls[impl])
                        case[impl] = {"ms": ms, "tflops": flops / (ms * 1e-3) / 1e12}
                    except Exception as e:  # noqa: BLE001 - grouped_mm where the device or torch lacks it
                        case[impl] = {"ms": None, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
                for impl in IMPLS[1:]:
                    other = case[impl]["ms"]
                    case[f"speedup_vs_{impl}"] = other / case["t2c"]["ms"] if other else None
                cases.append(case)

                def _ms(impl):
                    return f"{case[impl]['ms']:.3f}" if case[impl]["ms"] else "-"

                def _x(impl):
                    s = case[f"speedup_vs_{impl}"]
                    return f"{s:5.2f}x" if s else "-"

                print(f"{num_experts:3d} {top_k:2d} {tokens:5d} | {_ms('t2c'):>8s} {case['t2c']['tflops']:7.1f} | "
                      f"{_ms('hf_eager'):>8s} {_x('hf_eager'):>6s} | {_ms('hf_grouped'):>10s} {_x('hf_grouped'):>6s} | "
                      f"{case['max_abs_diff']:9.3g}", flush=True)
                del calls, ours, want
                if device == "cuda":
                    torch.cuda.empty_cache()

    path, doc = result_doc("gpu_moe", device_name, args.smoke, args.out)
    doc.update({
        "transformers": transformers.__version__,
        "dtype": "bfloat16",
        "module": "transformers MixtralExperts (SwiGLU, out_in)",
        "flops": "2 * T * k * (H * 2I + I * H): the expert GEMMs",
        "timing": "wall clock, 3 runs (interpreter)" if args.smoke else "triton.testing.do_bench median",
        "target": ">= 5x hf_eager at E=64, k=8, T=8192",
        "run_s": time.perf_counter() - start,
        "cases": cases,
    })
    write_json(path, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
