"""Whole-model prefill latency on a GPU: a t2c --target triton module vs eager PyTorch and torch.compile.

The model is the zoo's Llama (examples/zoo.py: Hugging Face LlamaForCausalLM, RMSNorm, RoPE,
grouped-query attention, SwiGLU) at a realistic width instead of the zoo's tiny config:

    TinyLlama-1.1B's layer shape: hidden 2048, 32 query heads sharing 4 KV heads (head dim 64),
    SwiGLU 5632, vocab 32000 -- but 8 layers instead of 22 (--layers), random weights, bfloat16.

The layer count is what keeps the run inside run_all.sh's 110 s on an H200: torch.compile's cold
compile and t2c's trace + passes grow with it, the measured milliseconds are cheap. Prefill is
one forward over batch 1 x seq tokens (seq 2048 and 4096, --seqs), all logits returned.

Three implementations of the same model, same inputs, same run:

    eager          the model in bfloat16 on the GPU (SDPA attention)
    torch.compile  torch.compile(model, dynamic=True): one compile serves both lengths, as t2c's
                   one compile with a dynamic seq does (the default dynamic=None would compile
                   static for the first length, then recompile dynamic for the second anyway)
    t2c            t2c.compile(model, -O1, target="triton", dtype="bfloat16"), then t2c.load(out)

t2c traces on the CPU at a short length (--trace-seq 64, a dynamic seq) and its module then
runs on the GPU at every --seqs length. At full size t2c.compile skips its own validation
unless --validate (the IR interpreter pass by pass on the CPU at the traced length, which costs
time the 8-minute script does not have; at hidden 2048 in bfloat16 it passes since half-precision
outputs are judged by FlashAttention's rule: 1 layer, seq 64, Triton interpreter, logits 0.044
from float32 against the interpreter's own 0.041). The check here is the logits' max abs diff vs
eager at each length (with eager's largest |logit| for scale). --smoke validates.

Timing: triton.testing.do_bench median (warmup, CUDA events, L2 flushed). Per row: ms of each,
t2c/eager and t2c/torch.compile (below 1: t2c is faster), max abs diff of t2c's and
torch.compile's logits vs eager's (all bfloat16), and each one's first call in seconds (t2c:
Triton JIT and autotune; torch.compile: Dynamo + Inductor compile at the first length).
Compile wall times: t2c.compile (trace, passes, [validation,] write; its stage timings too)
and t2c.load. Lengths past --budget-s (80 s) are left out and listed, so that the JSON is
written within run_all.sh's timeout.

--smoke: tiny sizes (hidden 64, 2 layers, 4 heads / 2 KV heads, vocab 128, seq 16, traced at 8),
bfloat16 on the CPU under TRITON_INTERPRET=1 (set here before triton is imported), eager and
t2c only: torch.compile is skipped there (Inductor's CPU compile takes minutes on a small
machine and says nothing about GPU speed). Wall-clock timer; it checks that the script works.
Without --smoke a CUDA device is required (exit 1).

    .venv/bin/python benchmarks/gpu/model_prefill.py [--layers 8] [--seqs 2048,4096] [--out benchmarks/results]
    .venv/bin/python benchmarks/gpu/model_prefill.py --smoke --out /tmp/prefill_smoke

Prints a table and writes <out>/gpu_model_prefill-<device>-<date>.json (default out: benchmarks/results/).
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import os
import platform
import re
import shutil
import sys
import tempfile
import time

from _bench import cuda_device, ints, make_timer, write_json  # benchmarks/gpu/_bench.py (the script's folder is on sys.path)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# TinyLlama-1.1B's layer shape; the smoke config is the zoo's own tiny Llama.
FULL_CONFIG = {"hidden_size": 2048, "num_attention_heads": 32, "num_key_value_heads": 4,
               "intermediate_size": 5632, "vocab_size": 32000, "max_position_embeddings": 8192}
SMOKE_CONFIG = {"hidden_size": 64, "num_attention_heads": 4, "num_key_value_heads": 2,
                "intermediate_size": 128, "vocab_size": 128, "max_position_embeddings": 512}


def build_llama(layers: int, config: dict, dtype, device="cpu"):
    """The zoo's Llama (LlamaForCausalLM, random weights, seed 0, no KV cache) at `config`'s sizes, in `dtype` on `device`.

    Built on the device it runs on: initialising half a billion weights takes seconds on a CPU."""
    import torch
    import transformers

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(num_hidden_layers=layers, **config)
    with torch.device(device):
        model = transformers.LlamaForCausalLM(cfg).to(dtype).eval()
    model.config.use_cache = False
    return model


def token_ids(seq: int, vocab: int, device):
    """Batch 1 x seq random token ids (seeded)."""
    import torch

    g = torch.Generator().manual_seed(1)
    return torch.randint(0, vocab, (1, seq), generator=g).to(device)


def first_call_s(fn, sync) -> tuple[float, object]:
    """(seconds, result) of fn()'s first call: JIT, autotune or compile included."""
    start = time.perf_counter()
    result = fn()
    sync()
    return time.perf_counter() - start, result


def max_abs_diff(ours, eager) -> float:
    return float((ours.float() - eager.float()).abs().max())


def compile_t2c(model, trace_seq: int, vocab: int, validate: bool, out_dir: str) -> dict:
    """t2c.compile the CPU model into out_dir at -O1 / triton / bfloat16; its wall time and report's stage timings."""
    import t2c

    start = time.perf_counter()
    compiled = t2c.compile(model, {"input_ids": token_ids(trace_seq, vocab, "cpu")}, passes="-O1", target="triton",
                           out=out_dir, dtype="bfloat16", validate=validate)
    seconds = time.perf_counter() - start
    validation = compiled.report.get("validation", {})
    return {"compile_s": seconds, "stages_s": compiled.report.get("timings", {}), "validated": validate,
            "validation_ok": validation.get("ok"), "trace_seq": trace_seq}


def logits_of(out):
    """The logits tensor of a Hugging Face output or of t2c's {name: tensor} dict."""
    if isinstance(out, dict):
        return out["logits"] if "logits" in out else next(iter(out.values()))
    return out.logits


def run_row(seq: int, impls: dict, vocab: int, device: str, timer, sync) -> dict:
    """One length: first call, median ms and the logits' max abs diff vs eager for each implementation."""
    import torch

    ids = token_ids(seq, vocab, device)
    row = {"seq": seq, "batch": 1}
    with torch.no_grad():
        eager_logits = None
        for name, call in impls.items():
            try:
                seconds, out = first_call_s(lambda: call(ids), sync)
                logits = logits_of(out)
                entry = {"first_call_s": seconds, "ms": timer(lambda: call(ids))}
                if eager_logits is None:
                    eager_logits = logits
                    row["eager_logits_absmax"] = float(logits.float().abs().max())
                else:
                    entry["max_abs_diff_vs_eager"] = max_abs_diff(logits, eager_logits)
                row[name] = entry
            except Exception as e:  # a baseline this torch/GPU cannot run is a recorded fact, not the end of the run
                if name == "eager":
                    raise
                row[name] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    for other in ("eager", "torch_compile"):
        if "ms" in row.get("t2c", {}) and "ms" in row.get(other, {}):
            row[f"t2c_over_{other}"] = row["t2c"]["ms"] / row[other]["ms"]
    return row


def _cell(row: dict, name: str, key: str, fmt: str) -> str:
    entry = row.get(name)
    if entry is None:
        return "-"
    if "error" in entry:
        return "error"
    return format(entry[key], fmt) if key in entry else "-"


def print_table(rows: list[dict]) -> None:
    print(f"{'seq':>6} | {'eager ms':>9} {'compile ms':>10} {'t2c ms':>9} | {'t2c/eager':>9} {'t2c/compile':>11} | "
          f"{'t2c diff':>9} {'compile diff':>12} | {'t2c 1st s':>9} {'compile 1st s':>13}")
    for r in rows:
        ratio = lambda k: format(r[k], ".3f") if k in r else "-"  # noqa: E731
        print(f"{r['seq']:>6} | {_cell(r, 'eager', 'ms', '.3f'):>9} {_cell(r, 'torch_compile', 'ms', '.3f'):>10} "
              f"{_cell(r, 't2c', 'ms', '.3f'):>9} | {ratio('t2c_over_eager'):>9} {ratio('t2c_over_torch_compile'):>11} | "
              f"{_cell(r, 't2c', 'max_abs_diff_vs_eager', '.3g'):>9} "
              f"{_cell(r, 'torch_compile', 'max_abs_diff_vs_eager', '.3g'):>12} | "
              f"{_cell(r, 't2c', 'first_call_s', '.1f'):>9} {_cell(r, 'torch_compile', 'first_call_s', '.1f'):>13}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--layers", type=int, default=8, help="decoder layers (default 8; smoke: 2)")
    ap.add_argument("--seqs", default="2048,4096", help="comma-separated prefill lengths (smoke: 16)")
    ap.add_argument("--trace-seq", type=int, default=64, help="the length t2c traces and validates at (smoke: 8)")
    ap.add_argument("--validate", action="store_true", help="t2c.compile validates (always on with --smoke)")
    ap.add_argument("--budget-s", type=float, default=80.0,
                    help="start no new length after this many seconds (run_all.sh allows 110)")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU under TRITON_INTERPRET=1")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"), help="folder for the JSON")
    args = ap.parse_args()
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
        layers, seqs, trace_seq, config = 2, [16], 8, SMOKE_CONFIG
    else:
        layers, seqs, trace_seq, config = args.layers, ints(args.seqs), args.trace_seq, FULL_CONFIG

    sys.path.insert(0, ROOT)
    import torch
    import transformers
    import triton

    import t2c

    if args.smoke:
        device, device_name = "cpu", "cpu (Triton interpreter)"
    else:
        device, device_name = "cuda", cuda_device("model_prefill.py")
        if device_name is None:
            return 1
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    timer = make_timer(args.smoke)
    versions = {"torch": torch.__version__, "triton": triton.__version__, "transformers": transformers.__version__,
                "t2c": t2c.__version__}
    print(f"Llama prefill on {device_name}: {layers} layers, hidden {config['hidden_size']}, "
          f"{config['num_attention_heads']}/{config['num_key_value_heads']} heads, bf16; "
          + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)

    t_run = time.perf_counter()
    model = build_llama(layers, config, torch.bfloat16, device)
    params = sum(p.numel() for p in model.parameters())
    cpu_model = copy.deepcopy(model).to("cpu")  # t2c traces and validates on the CPU (module docstring)
    out_dir = tempfile.mkdtemp(prefix="t2c-prefill-")
    try:
        t2c_compile = compile_t2c(cpu_model, trace_seq, config["vocab_size"], args.validate or args.smoke, out_dir)
        start = time.perf_counter()
        loaded = t2c.load(out_dir)
        t2c_compile["load_s"] = time.perf_counter() - start
        with open(os.path.join(out_dir, "kernels.json")) as f:
            t2c_compile["kernels"] = {k: v for k, v in json.load(f).items() if isinstance(v, dict) and "nodes" in v}
        print(f"t2c.compile {t2c_compile['compile_s']:.1f} s, t2c.load {t2c_compile['load_s']:.1f} s", flush=True)

        del cpu_model
        impls = {"eager": lambda ids: model(input_ids=ids), "t2c": lambda ids: loaded(input_ids=ids)}
        if not args.smoke:
            compiled_model = torch.compile(model, dynamic=True)
            impls["torch_compile"] = lambda ids: compiled_model(input_ids=ids)
        rows, left_out = [], []
        for seq in seqs:
            if time.perf_counter() - t_run > args.budget_s:
                left_out.append(seq)
                continue
            rows.append(run_row(seq, impls, config["vocab_size"], device, timer, sync))
            print(f"  done seq {seq} ({time.perf_counter() - t_run:.0f} s)", file=sys.stderr, flush=True)
            if device == "cuda":
                torch.cuda.empty_cache()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    print()
    print_table(rows)
    if not args.smoke and rows and "first_call_s" in rows[0].get("torch_compile", {}):
        print(f"torch.compile: {rows[0]['torch_compile']['first_call_s']:.1f} s (its first call); "
              f"t2c.compile + load: {t2c_compile['compile_s'] + t2c_compile['load_s']:.1f} s")
    if left_out:
        print(f"left out for time (--budget-s {args.budget_s:g}): seq {left_out}")

    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", "cpu-interpreter" if args.smoke else device_name)
    path = os.path.join(args.out, f"gpu_model_prefill-{slug}-{stamp}.json")
    doc = {
        "benchmark": "gpu_model_prefill", "smoke": args.smoke, "date": stamp, "device": device_name,
        "host": platform.node() or "host", "platform": platform.platform(), "versions": versions,
        "model": {"family": "llama (LlamaForCausalLM, examples/zoo.py)", "layers": layers, "params": params, **config},
        "dtype": "bfloat16", "batch": 1,
        "t2c_compile": t2c_compile,
        "torch_compile": None if args.smoke else {
            "call": "torch.compile(model, dynamic=True)",
            "compile_s": rows[0].get("torch_compile", {}).get("first_call_s") if rows else None,
            "note": "compiled lazily: compile_s is the first call at the first length (Dynamo + Inductor + its run)"},
        "timing": "wall clock, 3 runs (interpreter)" if args.smoke else "triton.testing.do_bench median (warmup 25 ms, rep 100 ms)",
        "run_s": round(time.perf_counter() - t_run, 1), "rows": rows, "left_out": left_out,
    }
    write_json(path, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
