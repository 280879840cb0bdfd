"""MoE benchmark: t2c's dense and sparse experts lowerings against Hugging Face's implementations.

Two parts, in one run, every variant on the same inputs and the same thread count
(ONNX Runtime intra_op_num_threads and torch.set_num_threads both = --threads, 1 by default):

  layer  one MoE layer alone: transformers' Qwen3MoeSparseMoeBlock (softmax router, top-k,
         weights renormalised; SwiGLU experts, no shared expert) with hidden 256 and expert
         intermediate 256 (--hidden, --intermediate), built from a Qwen3MoeConfig and
         compiled as the model itself (input hidden_states [1, tokens, hidden]; t2c captures
         its decorated experts module as one `experts` op, the router traces as ordinary ops),
         for E experts in {8, 32, 64}, top-k in {1, 2, 8} (k <= E) and tokens in
         {512, 2048, 8192}, batch 1.
  model  one whole small model: a 2-layer slice (--model-layers) of Granite-3.0-1B-A400M
         (transformers' GraniteMoeModel with that checkpoint's published config: hidden 1024,
         16 heads / 8 KV heads, 32 experts, top-8, expert intermediate 512, vocabulary 49155;
         random weights), the decoder stack without the LM head (a 49k-vocabulary head on a
         2-of-24-layer slice would outweigh the layers), input_ids [1, tokens] at 512 and 2048.

Variants (t2c ones compiled once per model with dynamic batch/seq, validate=False):
  dense       t2c -O1 less sparsify-moe   flavor standard: every expert on every token (batched MatMuls)
  sparse      t2c -O1 (ends with sparsify-moe)  flavor standard: routes sorted by expert, each expert on its slice
  sparse-ort  t2c -O1                 flavor ort: com.microsoft MoE where the ort overlay takes it (the
              number of com.microsoft MoE/QMoE nodes in the graph is recorded as `contrib_moe_nodes`)
  eager       the module in PyTorch, config._experts_implementation = "eager" (loop over hit experts)
  grouped_mm  the same with "grouped_mm" (the library's default; torch's grouped GEMM)
  batched_mm  the same with "batched_mm" (gathers a weight copy per (token, slot): memory T*k*3*H*I)

For each (model, tokens): fresh ONNX Runtime sessions (cpu_latency.make_session: CPU EP,
ORT_ENABLE_ALL), a first run of each variant alone that measures the memory it adds (the
process's VmHWM after resetting it, minus VmRSS before; the session's weights are loaded
before) and its max abs difference from the eager output; then --warmup rounds (none for
the model: its first run is its warm-up) and up to --repeat timed rounds, the variants
interleaved round-robin with a rotating start (cpu_latency.interleaved_medians; --budget-s
caps a case's rounds, never below --min-repeat). Latency is the median. A Hugging Face
variant whose first run takes over 10x eager's (batched_mm) is reported by that run alone,
marked "~". A variant whose estimated peak activation memory exceeds --max-gib is skipped
with that estimate as the reason: by default dense at E=64 with 8192 tokens (estimated
4 GiB; the estimate is deliberately high, measured dense peaks are about half of it) and
batched_mm wherever T*k*3*H*I floats exceed it. Each (part, E, k) runs in a subprocess of
its own, so memory and a crash stay there.

Unless --no-profile, ONNX Runtime's profiler (SessionOptions.enable_profiling) also runs on
the t2c graphs at the issue's target cases (layer E=8,k=2 and E=64,k=8, and the model's two
sparse graphs, at 2048 tokens): kernel time per operator type, per IR op (t2c names each
ONNX node after the IR op it lowers) and the slowest nodes; for the model, forward hooks
split eager PyTorch's time into attention modules and experts modules.

    .venv/bin/python benchmarks/moe.py [--quick] [--threads 1] [--no-model] [--no-profile]

The issue's targets (issue 10) are checked and printed: sparse >= 2.5x faster than dense
at E=8, k=2, 2048 tokens; >= 5x at E=64, k=8, 2048 tokens; sparse faster than Hugging Face
eager at 2048 tokens (every layer case and the model). Prints tables and writes
benchmarks/results/moe-<host>-<date>.json.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import gc
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
import traceback
from types import SimpleNamespace

HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def _o1_without(name: str) -> str:
    """-O1's pass list less one pass (the dense variant: -O1 itself ends with sparsify-moe)."""
    sys.path.insert(0, os.path.dirname(HERE))
    from t2c.passes.manager import PRESETS

    return ",".join(p for p in PRESETS["O1"] if p != name)


T2C_VARIANTS = {  # name: (passes, flavor)
    "dense": (_o1_without("sparsify-moe"), "standard"),
    "sparse": ("-O1", "standard"),
    "sparse-ort": ("-O1", "ort"),
}
HF_VARIANTS = {"eager": "eager", "grouped_mm": "grouped_mm", "batched_mm": "batched_mm"}
VARIANTS = list(T2C_VARIANTS) + list(HF_VARIANTS)
EXPERTS, TOPK, TOKENS = [8, 32, 64], [1, 2, 8], [512, 2048, 8192]
QUICK_EXPERTS, QUICK_TOPK, QUICK_TOKENS = [8, 64], [2, 8], [512, 2048]
MODEL_TOKENS = [512, 2048]
TARGETS = [  # (what, E, k, tokens, min dense/sparse)
    ("sparse >= 2.5x dense", 8, 2, 2048, 2.5),
    ("sparse >= 5x dense", 64, 8, 2048, 5.0),
]
EAGER_TARGET_TOKENS = 2048
GIB = 1 << 30
SLOW_FACTOR = 10  # a Hugging Face variant whose first run takes this many times eager's is reported by that run alone
REL_TOL = 1e-4  # max |variant - eager| / max |eager| above which the table notes the difference

# Granite-3.0-1B-A400M (ibm-granite/granite-3.0-1b-a400m-base config.json), cut to --model-layers layers.
GRANITE_1B_A400M = dict(
    hidden_size=1024, intermediate_size=512, num_attention_heads=16, num_key_value_heads=8, num_local_experts=32,
    num_experts_per_tok=8, vocab_size=49155, max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-6,
    hidden_act="silu", embedding_multiplier=12.0, residual_multiplier=0.22, attention_multiplier=0.015625,
    logits_scaling=6.0, tie_word_embeddings=True, initializer_range=0.02,
)


# --------------------------------------------------------------------------- models

def build_layer(n_experts: int, k: int, hidden: int, inter: int):
    """A Qwen3-MoE sparse MoE block (router + experts), weights N(0, 0.02) as the library initialises them."""
    import torch
    import transformers
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeSparseMoeBlock

    cfg = transformers.Qwen3MoeConfig(hidden_size=hidden, moe_intermediate_size=inter, num_experts=n_experts,
                                      num_experts_per_tok=k, norm_topk_prob=True)
    cfg._experts_implementation = "eager"
    torch.manual_seed(0)
    block = Qwen3MoeSparseMoeBlock(cfg).eval()
    with torch.no_grad():
        for p in block.parameters():  # the block alone gets no post_init: its parameters are torch.empty
            p.normal_(0.0, cfg.initializer_range)
    return block


def build_model(layers: int):
    import torch
    import transformers

    cfg = transformers.GraniteMoeConfig(num_hidden_layers=layers, **GRANITE_1B_A400M)
    cfg.use_cache = False
    torch.manual_seed(0)
    return transformers.GraniteMoeModel(cfg).eval()


def experts_modules(module):
    from t2c.frontends.hf_experts import is_experts_module

    return [m for m in module.modules() if is_experts_module(m)]


def set_experts_implementation(module, impl: str) -> None:
    """Every experts module reads `self.config._experts_implementation` at call time."""
    for cfg in {id(m.config): m.config for m in experts_modules(module)}.values():
        cfg._experts_implementation = impl


def estimate_bytes(variant: str, n_experts: int, k: int, tokens: int, hidden: int, inter: int) -> int:
    """Peak activation memory of one experts layer, fp32, a rough upper bound used to skip variants."""
    routes = tokens * k
    per = {
        # up [E,T,2I], gate/up halves, act, product, y [E,T,H] and its weighted copy
        "dense": n_experts * tokens * (6 * inter + 2 * hidden),
        "sparse": routes * (6 * inter + 4 * hidden),
        "sparse-ort": routes * (6 * inter + 4 * hidden),
        "eager": routes * (3 * inter + 2 * hidden),
        "grouped_mm": routes * (4 * inter + 3 * hidden),
        # a [2I, H] and an [H, I] weight copy per route, alive together, plus activations
        "batched_mm": routes * (3 * inter * hidden + 3 * inter + 2 * hidden),
    }[variant]
    return 4 * per


# --------------------------------------------------------------------------- memory (as in attention_scaling.py)

def _status_kib(field: str) -> int | None:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> bool:
    """Reset the kernel's RSS high-water mark (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


# --------------------------------------------------------------------------- worker

def contrib_moe_nodes(path: str) -> int:
    import onnx

    m = onnx.load(path, load_external_data=False)
    return sum(1 for n in m.graph.node if n.domain == "com.microsoft" and n.op_type in ("MoE", "QMoE"))


def compile_variants(module, example: dict, workdir: str, names: list[str]) -> dict:
    """t2c variants of `module`: {name: {path, build_s, nodes, op_types, contrib_ops, contrib_moe_nodes} or {error}}."""
    import cpu_latency as cl

    built = {}
    for name in names:
        passes, flavor = T2C_VARIANTS[name]
        out = os.path.join(workdir, name)
        rec = cl.build_one(lambda: (cl.t2c_build(module, example, out, flavor, passes), {}))
        rec.update(pipeline=passes, flavor=flavor)
        if "path" in rec:
            rec["contrib_moe_nodes"] = contrib_moe_nodes(rec["path"])
            report = os.path.join(out, "report.json")
            if os.path.exists(report):
                with open(report) as f:
                    counts = json.load(f).get("op_counts", {}).get("final", {})
                rec["ir_experts_ops"] = counts.get("experts", 0)
        built[name] = rec
        print(f"    built {name:10s} {rec.get('build_s', '-')} s  "
              + (rec["error"] if "error" in rec else f"{rec['nodes']} nodes, com.microsoft MoE nodes: {rec['contrib_moe_nodes']}, "
                 f"IR experts ops: {rec.get('ir_experts_ops')}"), file=sys.stderr, flush=True)
    return built


def profile_session(path: str, feed: dict, threads: int, runs: int, prefix: str) -> dict:
    """Kernel time per operator type (ms per run) and the slowest nodes, from ONNX Runtime's profiler."""
    import cpu_latency as cl

    sess, names = cl.make_session(path, threads, profile_prefix=prefix)
    feed = {n: feed[n] for n in names}
    sess.run(None, feed)  # warm-up, dropped below
    for _ in range(runs):
        sess.run(None, feed)
    prof = sess.end_profiling()
    with open(prof) as f:
        events = json.load(f)
    os.remove(prof)
    run_events = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"][-runs:]
    start = run_events[0]["ts"] if run_events else 0
    wall = sum(e["dur"] for e in run_events) / max(len(run_events), 1) / 1e3
    by_op: collections.Counter = collections.Counter()
    count: collections.Counter = collections.Counter()
    by_node: collections.Counter = collections.Counter()
    by_ir_op: collections.Counter = collections.Counter()
    shapes = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= start:
            op = e["args"]["op_name"]
            by_op[op] += e["dur"] / runs / 1e3
            count[op] += 1 / runs
            node = e["name"][: -len("_kernel_time")]
            by_node[(op, node)] += e["dur"] / runs / 1e3
            # t2c names each ONNX node after the IR op it lowers ("experts/MatMul_131"); ORT's fusions keep the prefix.
            by_ir_op[node.split("/", 1)[0] if "/" in node else "(other)"] += e["dur"] / runs / 1e3
            shapes[(op, node)] = e["args"].get("output_type_shape")
    total = sum(by_op.values())
    return {
        "run_wall_ms": wall,
        "kernel_total_ms": total,
        "by_op": {op: {"ms": ms, "share": ms / total if total else 0.0, "nodes_run": round(count[op])}
                  for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])},
        "by_ir_op": {op: ms for op, ms in by_ir_op.most_common()},
        "top_nodes": [{"op": op, "node": node, "ms": ms, "output": shapes[(op, node)]}
                      for (op, node), ms in by_node.most_common(12)],
    }


def measure_tokens(module, built: dict, hf_names: list[str], inputs: dict, spec: SimpleNamespace, dims: dict) -> dict:
    """One (module, token count): memory and correctness per variant, then interleaved timing."""
    import numpy as np
    import torch

    import cpu_latency as cl

    tokens = dims["tokens"]
    row: dict = {"tokens": tokens, "variants": {}}
    with torch.no_grad():
        set_experts_implementation(module, "eager")
        reference = module(**inputs)
        reference = reference.last_hidden_state if hasattr(reference, "last_hidden_state") else reference
    feed_np = {k: v.numpy() for k, v in inputs.items()}
    runners = {}
    for name in spec.variants:
        rec: dict = {}
        row["variants"][name] = rec
        # Layers run one after the other: one layer's experts activations are alive at a time.
        est = estimate_bytes(name, dims["experts"], dims["k"], tokens, dims["hidden"], dims["inter"])
        rec["estimated_gib"] = round(est / GIB, 3)
        if est > spec.max_gib * GIB:
            rec["skipped"] = f"estimated {est / GIB:.1f} GiB of activations > --max-gib {spec.max_gib:g}"
            continue
        try:
            if name in T2C_VARIANTS:
                if "path" not in built.get(name, {}):
                    rec["error"] = built.get(name, {}).get("error", "not built")
                    continue
                sess, names = cl.make_session(built[name]["path"], spec.threads)
                feed = {n: feed_np[n] for n in names}
                run = (lambda s=sess, f=feed: s.run(None, f)[0])
            else:
                def run(impl=HF_VARIANTS[name]):
                    set_experts_implementation(module, impl)
                    with torch.no_grad():
                        out = module(**inputs)
                    return out.last_hidden_state if hasattr(out, "last_hidden_state") else out
            gc.collect()
            resettable = reset_peak()
            rss0 = _status_kib("VmRSS")
            t0 = time.perf_counter()
            out = run()
            rec["first_run_ms"] = (time.perf_counter() - t0) * 1e3
            hwm = _status_kib("VmHWM")
            if resettable and rss0 is not None and hwm is not None:
                rec["first_run_added_mib"] = round((hwm - rss0) / 1024, 1)
            got = np.asarray(out) if not isinstance(out, torch.Tensor) else out.detach().numpy()
            ref = reference.detach().numpy()
            rec["max_abs_vs_eager"] = float(np.max(np.abs(got - ref)))
            rec["max_rel_vs_eager"] = rec["max_abs_vs_eager"] / max(float(np.max(np.abs(ref))), 1e-30)
            del out, got
            runners[name] = run
        except Exception as e:  # noqa: BLE001 - a benchmark records failures
            if os.environ.get("T2C_BENCH_DEBUG"):
                traceback.print_exc()
            rec["error"] = cl.short_error(e)
    eager_first = row["variants"].get("eager", {}).get("first_run_ms")
    for name in [n for n in runners if n in HF_VARIANTS and n != "eager"]:
        first = row["variants"][name]["first_run_ms"]
        if eager_first and first > max(SLOW_FACTOR * eager_first, 500.0):
            row["variants"][name].update(ms=first, repeats=1, first_run_only=f"first run {first / eager_first:.0f}x eager's: not timed further")
            del runners[name]
    if runners:
        for name, (ms, n) in cl.interleaved_medians(runners, spec).items():
            row["variants"][name]["ms"] = ms
            row["variants"][name]["repeats"] = n
    v = row["variants"]
    for num, den in (("dense", "sparse"), ("eager", "sparse"), ("dense", "sparse-ort"), ("eager", "sparse-ort"),
                     ("grouped_mm", "sparse")):
        if "ms" in v.get(num, {}) and "ms" in v.get(den, {}):
            row[f"{num}/{den}"] = v[num]["ms"] / v[den]["ms"]
    runners.clear()
    set_experts_implementation(module, "eager")
    gc.collect()
    return row


def eager_breakdown(module, inputs: dict, runs: int = 1) -> dict:
    """ms per run spent in the model's experts modules and attention modules, in PyTorch (forward hooks)."""
    import torch

    from t2c.frontends.hf_experts import is_experts_module

    spent: collections.Counter = collections.Counter()
    handles = []
    for m in module.modules():
        kind = "experts" if is_experts_module(m) else ("attention" if type(m).__name__.endswith("Attention") else None)
        if kind is None:
            continue

        def pre(mod, *_):
            mod._t2c_t0 = time.perf_counter()

        def post(mod, *_, kind=kind):
            spent[kind] += time.perf_counter() - mod._t2c_t0

        handles += [m.register_forward_pre_hook(pre), m.register_forward_hook(post)]
    try:
        set_experts_implementation(module, "eager")
        t0 = time.perf_counter()
        with torch.no_grad():
            for _ in range(runs):
                module(**inputs)
        total = time.perf_counter() - t0
    finally:
        for h in handles:
            h.remove()
    out = {k: v / runs * 1e3 for k, v in spent.items()}
    out["total"] = total / runs * 1e3
    return out


def routing_stats(block, x) -> dict:
    """How evenly the router spreads the routes: max and min tokens of an expert over the mean."""
    import torch

    with torch.no_grad():
        _, _, idx = block.gate(x.reshape(-1, x.shape[-1]))
    counts = torch.bincount(idx.reshape(-1), minlength=block.gate.num_experts).float()
    mean = counts.mean().item()
    return {"max_over_mean": counts.max().item() / mean, "min_over_mean": counts.min().item() / mean,
            "experts_unused": int((counts == 0).sum())}


def worker(spec: SimpleNamespace) -> dict:
    import torch

    torch.set_num_threads(spec.threads)
    sys.path.insert(0, HERE)
    t2c_names = [v for v in spec.variants if v in T2C_VARIANTS]
    hf_names = [v for v in spec.variants if v in HF_VARIANTS]
    result: dict = {"part": spec.part, "rows": []}
    with tempfile.TemporaryDirectory(prefix="t2c-moe-") as wd:
        if spec.part == "layer":
            module = build_layer(spec.experts, spec.k, spec.hidden, spec.inter)
            example = {"hidden_states": torch.randn(2, 32, spec.hidden, generator=torch.Generator().manual_seed(1))}
            dims = {"experts": spec.experts, "k": spec.k, "hidden": spec.hidden, "inter": spec.inter}
            result.update(experts=spec.experts, k=spec.k)
        else:
            module = build_model(spec.layers)
            c = module.config
            example = {"input_ids": torch.randint(0, c.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))}
            dims = {"experts": c.num_local_experts, "k": c.num_experts_per_tok, "hidden": c.hidden_size,
                    "inter": c.intermediate_size, "layers": c.num_hidden_layers}
            result.update(experts=dims["experts"], k=dims["k"], layers=dims["layers"],
                          params_M=round(sum(p.numel() for p in module.parameters()) / 1e6, 1))
        result["experts_modules"] = len(experts_modules(module))
        built = compile_variants(module, example, wd, t2c_names)
        result["graphs"] = {n: {k: v for k, v in r.items() if k != "path"} for n, r in built.items()}
        for tokens in spec.tokens:
            t0 = time.perf_counter()
            gen = torch.Generator().manual_seed(tokens)
            if spec.part == "layer":
                inputs = {"hidden_states": torch.randn(1, tokens, spec.hidden, generator=gen)}
            else:
                inputs = {"input_ids": torch.randint(0, module.config.vocab_size, (1, tokens), generator=gen)}
            row = measure_tokens(module, built, hf_names, inputs, spec, {**dims, "tokens": tokens})
            if spec.part == "layer":
                row["routing"] = routing_stats(module, inputs["hidden_states"])
            row["case_s"] = round(time.perf_counter() - t0, 1)
            result["rows"].append(row)
            print(f"  [{row['case_s']:6.1f}s] {spec.part} E={dims['experts']} k={dims['k']} T={tokens}: "
                  + ", ".join(f"{n}={cell(row['variants'][n])}" for n in spec.variants)
                  + f"  dense/sparse={fmt(row.get('dense/sparse'))} eager/sparse={fmt(row.get('eager/sparse'))}",
                  file=sys.stderr, flush=True)
            if tokens in spec.profile_tokens:
                if spec.part == "model":
                    row["eager_breakdown_ms"] = eager_breakdown(module, inputs)
                row["profile"] = {}
                for name in t2c_names:
                    if "path" in built.get(name, {}) and name in spec.profile_variants:
                        try:
                            row["profile"][name] = profile_session(built[name]["path"], {k: v.numpy() for k, v in inputs.items()},
                                                                   spec.threads, spec.profile_runs, os.path.join(wd, f"prof-{name}"))
                        except Exception as e:  # noqa: BLE001
                            row["profile"][name] = {"error": repr(e)[:300]}
    return result


def run_worker(spec: dict, timeout_s: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=None, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    lines = p.stdout.strip().splitlines()
    if p.returncode != 0 or not lines:
        return {"error": f"worker exit {p.returncode}" + (" (killed: out of memory?)" if p.returncode in (-9, 137) else "")}
    return json.loads(lines[-1])


# --------------------------------------------------------------------------- output

def fmt(v, spec=".2f"):
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else "-"


def cell(rec: dict) -> str:
    if "ms" in rec:
        return ("~" if rec.get("first_run_only") else "") + f"{rec['ms']:.1f}"
    if "skipped" in rec:
        return "skip"
    return "FAIL" if "error" in rec else "-"


def table(title: str, rows: list[tuple[str, dict]], variants: list[str]) -> list[str]:
    ratios = ["dense/sparse", "eager/sparse", "eager/sparse-ort"]
    head = f"{'':18s}" + "".join(f"{v:>11s}" for v in variants) + "".join(f"{r:>17s}" for r in ratios)
    out = [title, head, "-" * len(head)]
    for label, row in rows:
        out.append(f"{label:18s}" + "".join(f"{cell(row['variants'].get(v, {})):>11s}" for v in variants)
                   + "".join(f"{fmt(row.get(r)):>17s}" for r in ratios))
    return out


def notes(rows: list[tuple[str, dict]], variants: list[str]) -> list[str]:
    """Skips, failures and outputs that differ from eager, once per distinct reason."""
    seen: dict[str, list[str]] = collections.defaultdict(list)
    for label, row in rows:
        for v in variants:
            rec = row["variants"].get(v, {})
            if "skipped" in rec or "error" in rec:
                seen[f"{v}: {rec.get('skipped') or rec.get('error')}"].append(label.strip())
            elif rec.get("first_run_only"):
                seen[f"{v}: ~ = one run only, its first took over {SLOW_FACTOR}x eager's"].append(label.strip())
            elif rec.get("max_rel_vs_eager", 0.0) > REL_TOL:
                seen[f"{v}: output differs from eager by {rec['max_rel_vs_eager']:.1e} of its largest value"].append(label.strip())
    return [f"  {why}  [{'; '.join(where)}]" for why, where in seen.items()]


def check_targets(layer: list[dict], model: list[dict]) -> list[dict]:
    def find(e, k, t):
        for w in layer:
            if w.get("experts") == e and w.get("k") == k:
                for r in w.get("rows", []):
                    if r["tokens"] == t:
                        return r
        return None

    out = []
    for what, e, k, t, need in TARGETS:
        r = find(e, k, t)
        for flavor in ("sparse", "sparse-ort"):
            got = r.get(f"dense/{flavor}") if r else None
            out.append({"target": f"{what} (E={e}, k={k}, {t} tokens)", "variant": flavor, "ratio": got, "need": need,
                        "met": None if got is None else got >= need})
    cases = [(f"layer E={w['experts']} k={w['k']}", r) for w in layer for r in w.get("rows", []) if r["tokens"] == EAGER_TARGET_TOKENS]
    cases += [(f"model ({w.get('layers')} layers)", r) for w in model for r in w.get("rows", []) if r["tokens"] == EAGER_TARGET_TOKENS]
    for flavor in ("sparse", "sparse-ort"):
        ratios = {label: r.get(f"eager/{flavor}") for label, r in cases}
        known = {lb: v for lb, v in ratios.items() if v is not None}
        worst = min(known, key=known.get) if known else None
        out.append({"target": f"sparse faster than HF eager at {EAGER_TARGET_TOKENS} tokens (every case)", "variant": flavor,
                    "ratio": known.get(worst) if worst else None, "worst_case": worst, "need": 1.0, "per_case": ratios,
                    "met": None if not known else (min(known.values()) > 1.0 and len(known) == len(ratios))})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help=f"E {QUICK_EXPERTS}, k {QUICK_TOPK}, tokens {QUICK_TOKENS}; model at 2048 only; 5 repeats")
    ap.add_argument("--experts", default=None, help=f"comma list (default {EXPERTS})")
    ap.add_argument("--topk", default=None, help=f"comma list (default {TOPK}); pairs with k > E are left out")
    ap.add_argument("--tokens", default=None, help=f"comma list (default {TOKENS})")
    ap.add_argument("--hidden", type=int, default=256, help="layer part: hidden size")
    ap.add_argument("--intermediate", type=int, default=256, help="layer part: expert intermediate size")
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma subset of {', '.join(VARIANTS)}")
    ap.add_argument("--no-model", action="store_true", help="skip the whole-model part")
    ap.add_argument("--no-layer", action="store_true", help="skip the one-layer part")
    ap.add_argument("--model-layers", type=int, default=2)
    ap.add_argument("--model-tokens", default=None, help=f"comma list (default {MODEL_TOKENS})")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads and torch threads")
    ap.add_argument("--repeat", type=int, default=15, help="timed rounds per case (each runs every variant once)")
    ap.add_argument("--warmup", type=int, default=1,
                    help="untimed rounds after the first (checked) run; the model part's first run is its only warm-up")
    ap.add_argument("--budget-s", type=float, default=8.0, help="stop a case's rounds after this many seconds")
    ap.add_argument("--min-repeat", type=int, default=3, help="rounds always run, whatever --budget-s says")
    ap.add_argument("--max-gib", type=float, default=3.0, help="skip a variant whose estimated activations exceed this")
    ap.add_argument("--no-profile", action="store_true", help="no ONNX Runtime profile of the target cases")
    ap.add_argument("--profile-runs", type=int, default=5)
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds per worker subprocess")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()

    ints = lambda s: [int(x) for x in s.split(",") if x.strip()]  # noqa: E731
    experts = ints(args.experts) if args.experts else (QUICK_EXPERTS if args.quick else EXPERTS)
    topk = ints(args.topk) if args.topk else (QUICK_TOPK if args.quick else TOPK)
    tokens = ints(args.tokens) if args.tokens else (QUICK_TOKENS if args.quick else TOKENS)
    model_tokens = ints(args.model_tokens) if args.model_tokens else ([2048] if args.quick else MODEL_TOKENS)
    if args.quick:
        args.repeat = min(args.repeat, 5)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    profile_cases = set() if args.no_profile else {(e, k) for _, e, k, _, _ in TARGETS}

    from importlib import metadata

    versions = {}
    for pkg in ("onnxruntime", "onnx", "torch", "transformers", "numpy"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = None
    sys.path.insert(0, os.path.join(HERE, ".."))
    import t2c

    versions["t2c"] = t2c.__version__
    host = platform.node() or "host"
    print(f"MoE benchmark on {host}: {os.cpu_count()} CPUs, {args.threads} thread(s), "
          + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)

    common = {"threads": args.threads, "variants": variants, "max_gib": args.max_gib, "repeat": args.repeat,
              "warmup": args.warmup, "budget_s": args.budget_s, "min_repeat": args.min_repeat,
              "profile_runs": args.profile_runs}
    t_run = time.perf_counter()
    loadavg_start = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    layer, model = [], []
    if not args.no_layer:
        for e in experts:
            for k in topk:
                if k > e:
                    continue
                print(f"layer E={e} k={k}:", file=sys.stderr, flush=True)
                prof = [t for t in tokens if t == 2048] if (e, k) in profile_cases else []
                spec = {**common, "part": "layer", "experts": e, "k": k, "tokens": tokens, "hidden": args.hidden,
                        "inter": args.intermediate, "profile_tokens": prof, "profile_variants": list(T2C_VARIANTS)}
                res = run_worker(spec, args.timeout)
                res.setdefault("experts", e)
                res.setdefault("k", k)
                layer.append(res)
                if "error" in res:
                    print(f"  FAILED: {res['error']}", file=sys.stderr, flush=True)
    if not args.no_model:
        print(f"model (Granite-3.0-1B-A400M, {args.model_layers} layers):", file=sys.stderr, flush=True)
        prof = [] if args.no_profile else [t for t in model_tokens if t == EAGER_TARGET_TOKENS]
        spec = {**common, "part": "model", "layers": args.model_layers, "tokens": model_tokens, "profile_tokens": prof,
                "profile_variants": ["sparse", "sparse-ort"], "warmup": 0, "profile_runs": min(args.profile_runs, 2)}
        res = run_worker(spec, args.timeout)
        model.append(res)
        if "error" in res:
            print(f"  FAILED: {res['error']}", file=sys.stderr, flush=True)

    lines = []
    layer_rows = [(f"E={w['experts']:<3d}k={w['k']:<2d}T={r['tokens']}", r) for w in layer for r in w.get("rows", [])]
    if layer_rows:
        lines += table(f"one MoE layer (Qwen3-MoE block, hidden {args.hidden}, expert intermediate {args.intermediate}, "
                       f"batch 1; median ms, {args.threads} thread(s))", layer_rows, variants)
        lines += notes(layer_rows, variants)
        for w in layer:
            if "error" in w:
                lines.append(f"  E={w['experts']} k={w['k']}: worker failed: {w['error']}")
        lines.append("")
    model_rows = [(f"{w.get('layers')} layers T={r['tokens']}", r) for w in model for r in w.get("rows", [])]
    if model_rows or model:
        lines += table(f"whole model (Granite-3.0-1B-A400M decoder, {args.model_layers} layers, 32 experts, top-8, "
                       f"hidden 1024; median ms)", model_rows, variants)
        lines += notes(model_rows, variants)
        lines += [f"  worker failed: {w['error']}" for w in model if "error" in w]
        lines.append("")
    graphs = [(f"layer E={w['experts']} k={w['k']}", w.get("graphs", {})) for w in (layer[:1] + layer[-1:] if len(layer) > 1 else layer)]
    graphs += [("model", w.get("graphs", {})) for w in model]
    lines.append("graphs (nodes; com.microsoft MoE nodes; contrib ops):")
    for label, g in graphs:
        for name, rec in g.items():
            lines.append(f"  {label:16s} {name:11s} " + (rec["error"] if "error" in rec else
                         f"{rec['nodes']:5d} nodes; MoE {rec.get('contrib_moe_nodes')}; {','.join(rec.get('contrib_ops', [])) or '(none)'}"))
    targets = check_targets(layer, model)
    lines.append("\ntargets (issue 10):")
    for t in targets:
        met = {True: "met", False: "NOT met", None: "not measured"}[t["met"]]
        where = f" (worst: {t['worst_case']})" if t.get("worst_case") else ""
        ratio = f"{t['ratio']:.2f}x" if t["ratio"] is not None else "-"
        lines.append(f"  {t['target']:62s} {t['variant']:11s} {ratio:>7s}  {met}{where}")
    slower = [lb.strip() for lb, r in layer_rows + model_rows if r.get("dense/sparse") is not None and r["dense/sparse"] < 1.0]
    lines.append("  sparse faster than dense at every measured size: " + ("yes" if not slower else "no: " + "; ".join(slower)))
    lines.append("\nONNX Runtime profile (kernel ms per run by operator type, share of kernel time):")
    for label, w in [("layer", w) for w in layer] + [("model", w) for w in model]:
        for r in w.get("rows", []):
            for name, p in r.get("profile", {}).items():
                if "by_op" not in p:
                    lines.append(f"  {label} E={w['experts']} k={w['k']} T={r['tokens']} {name}: {p.get('error')}")
                    continue
                ops = ", ".join(f"{op} {v['ms']:.1f} ({v['share'] * 100:.0f}%)" for op, v in list(p["by_op"].items())[:9])
                lines.append(f"  {label} E={w['experts']} k={w['k']} T={r['tokens']} {name}: {p['kernel_total_ms']:.1f} ms: {ops}")
                if label == "model":
                    irs = ", ".join(f"{op} {ms:.0f}" for op, ms in list(p["by_ir_op"].items())[:5])
                    lines.append(f"      by IR op (ms): {irs}")
            if "eager_breakdown_ms" in r:
                lines.append("  model T={} eager (PyTorch, forward hooks, ms): ".format(r["tokens"])
                             + ", ".join(f"{k} {v:.0f}" for k, v in r["eager_breakdown_ms"].items()))
    print("\n" + "\n".join(lines))

    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(args.out, f"moe-{re.sub(r'[^A-Za-z0-9_.-]', '_', host)}-{stamp}.json")
    doc = {
        "benchmark": "moe", "date": stamp, "host": host, "platform": platform.platform(), "cpus": os.cpu_count(),
        "versions": versions, "threads": args.threads, "args": vars(args), "run_s": round(time.perf_counter() - t_run, 1),
        "loadavg_start": loadavg_start, "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "layer_config": {"block": "transformers Qwen3MoeSparseMoeBlock (softmax router, top-k renormalised, SwiGLU experts)",
                         "hidden": args.hidden, "expert_intermediate": args.intermediate, "batch": 1, "init": "N(0, 0.02)",
                         "experts": experts, "topk": topk, "tokens": tokens},
        "model_config": {"model": "GraniteMoeModel (decoder stack, no LM head), Granite-3.0-1B-A400M config",
                         "layers": args.model_layers, **GRANITE_1B_A400M, "tokens": model_tokens},
        "note": "median ms; variants interleaved round-robin in one process per (part, E, k); fresh ORT sessions per token "
                "count; first_run_added_mib = VmHWM after the first run minus VmRSS before; dense/sparse etc. are latency "
                "ratios within one case (> 1: sparse faster)",
        "targets": targets, "layer": layer, "model": model,
    }
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, default=str)
    print(f"\nwrote {path}  ({doc['run_s']:.0f} s)")


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "--worker":
        sys.path.insert(0, HERE)
        sys.path.insert(0, os.path.join(HERE, ".."))
        out = worker(SimpleNamespace(**json.loads(sys.argv[2])))
        print(json.dumps(out, default=str))
    else:
        main()
