"""CPU latency benchmark: t2c -O1 (both flavors) against the ONNX anchors, in ONNX Runtime.

For each (model, batch, seq), in one run and in one process:
  * t2c standard: `t2c.compile(..., passes="-O1", flavor="standard")`;
  * t2c ort:      the same with `flavor="ort"` (ONNX Runtime contrib ops allowed);
  * (a) torch.onnx: `torch.onnx.export(..., dynamo=True)` (optimize=True);
  * (b) torch.onnx+onnxscript: (a) followed by onnxscript's
    `rewriter.ort_fusions.optimize_for_ort`;
  * (c) torch.onnx+ort-optimizer: (a) followed by ONNX Runtime's transformers
    optimizer (`onnxruntime.transformers.optimizer.optimize_model`, model_type
    "bert" for BERT-style models, "gpt2" for GPT-2, and for Llama-style models
    whichever of "gpt2" / "bert" runs first);
  * eager: the torch module under `torch.no_grad()`.
Every ONNX variant runs in ONNX Runtime's CPUExecutionProvider with the same
SessionOptions (ORT_ENABLE_ALL, default thread counts). Latency is the median
of repeated runs after warm-up; the variants are interleaved round-robin (with a
rotating start) so machine drift hits them all alike. Each ONNX variant's
outputs are compared with eager (max abs over all outputs); an anchor that does
not match within --atol is flagged and never counts as the best anchor. Each
variant's node count and fused (com.microsoft) op types are recorded. A variant
that fails to build or run is recorded with its error; the run goes on.

The headline ratio is t2c-ort / best anchor, where the best anchor is the
fastest of (a), (b), (c) that ran and matched eager; below 1 means t2c is faster.

Sizes: `--size small` (default) uses examples/zoo.py's tiny configs (hidden 64)
and MiniLM's real weights. `--size base` builds Llama-style and BERT-style
models of a more realistic width here (hidden 512, 8 heads, 4 layers; Llama: 4
KV heads, intermediate 1408; BERT: intermediate 2048; vocab 8192); other models
stay at their zoo size.

    .venv/bin/python benchmarks/cpu_latency.py                 # zoo + minilm, batch 1/8, seq 128/512
    .venv/bin/python benchmarks/cpu_latency.py --quick         # tiny zoo, batch 1, seq 128, 10 repeats
    .venv/bin/python benchmarks/cpu_latency.py --models llama,bert --size base --batches 1,8 --seqs 128,512

Prints a table and writes benchmarks/results/cpu_latency-<host>-<date>.json.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import json
import logging
import os
import platform
import re
import statistics
import sys
import tempfile
import time
import traceback
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import zoo  # noqa: E402
from anchors import torch_onnx_export  # noqa: E402

logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)  # torchvision-missing noise

import t2c  # noqa: E402
from t2c.frontends.torch_export import flatten_outputs  # noqa: E402

ZOO_MODELS = ["gpt2", "llama", "mistral", "bert", "mixtral", "minilm"]
VARIANTS = ["t2c_standard", "t2c_ort", "torch_onnx", "torch_onnx_onnxscript", "torch_onnx_ort_optimizer", "eager"]
ANCHORS = ["torch_onnx", "torch_onnx_onnxscript", "torch_onnx_ort_optimizer"]
SHORT = {"t2c_standard": "t2c std", "t2c_ort": "t2c ort", "torch_onnx": "(a) dynamo", "torch_onnx_onnxscript": "(b) +onnxscript",
         "torch_onnx_ort_optimizer": "(c) +ort-opt", "eager": "(d) eager"}
FAMILY = {"gpt2": "gpt2", "llama": "llama", "mistral": "llama", "mixtral": "llama", "bert": "bert", "minilm": "bert"}
# ORT transformers-optimizer model types to try, in order, per family.
ORT_OPT_TYPES = {"bert": ["bert"], "gpt2": ["gpt2"], "llama": ["gpt2", "bert"]}


# --------------------------------------------------------------------------- models

def base_model(name: str, hidden: int = 512):
    """Llama-style / BERT-style models of a realistic width (random weights), built from transformers configs.

    `hidden` (--hidden) scales the width: heads of 64, Llama's intermediate 2.75x (1408 at 512), BERT's 4x."""
    import transformers

    torch.manual_seed(0)
    heads = max(hidden // 64, 1)
    if name == "llama":
        cfg = transformers.LlamaConfig(num_hidden_layers=4, hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=max(heads // 2, 1),
                                       intermediate_size=hidden * 11 // 4, vocab_size=8192, max_position_embeddings=2048)
        model = transformers.LlamaForCausalLM(cfg)
    elif name == "bert":
        cfg = transformers.BertConfig(num_hidden_layers=4, hidden_size=hidden, num_attention_heads=heads, intermediate_size=4 * hidden,
                                      vocab_size=8192, max_position_embeddings=512)
        model = transformers.BertModel(cfg)
    else:
        return None
    model.eval()
    if hasattr(model.config, "use_cache"):
        model.config.use_cache = False
    return model


def load_model(name: str, size: str, hidden: int = 512):
    """(model, size actually used)."""
    if size == "base":
        model = base_model(name, hidden)
        if model is not None:
            return model, "base"
    if name == "minilm":
        return zoo.minilm()[0], "real"
    return zoo.ZOO[name](max_positions=2048)[0], "small"


def heads_and_hidden(config) -> tuple[int, int]:
    heads = getattr(config, "num_attention_heads", None) or getattr(config, "n_head", 0)
    hidden = getattr(config, "hidden_size", None) or getattr(config, "n_embd", 0)
    return int(heads), int(hidden)


# --------------------------------------------------------------------------- builders

def onnxscript_fusions(src: str, dst: str) -> tuple[str, dict]:
    import onnx_ir
    from onnxscript.rewriter.ort_fusions import optimize_for_ort

    model = onnx_ir.load(src)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model, counts = optimize_for_ort(model)
    onnx_ir.save(model, dst)
    return dst, {k: int(v) for k, v in counts.items() if v}


def ort_optimizer(src: str, dst: str, family: str, config) -> tuple[str, dict]:
    import logging

    from onnxruntime.transformers import optimizer

    logging.getLogger("onnxruntime.transformers").setLevel(logging.ERROR)
    heads, hidden = heads_and_hidden(config)
    errors = []
    for model_type in ORT_OPT_TYPES[family]:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                opt = optimizer.optimize_model(src, model_type=model_type, num_heads=heads, hidden_size=hidden)
            opt.save_model_to_file(dst)
            return dst, {"model_type": model_type, "fused": {k: int(v) for k, v in (opt.get_fused_operator_statistics() or {}).items() if v}}
        except Exception as e:  # noqa: BLE001 - try the next model type, report all failures
            errors.append(f"{model_type}: {short_error(e)}")
    raise RuntimeError("; ".join(errors))


def t2c_build(model, inputs, out: str, flavor: str, passes: str = "-O1") -> str:
    t2c.compile(model, inputs, passes=passes, flavor=flavor, out=out, validate=False)
    return os.path.join(out, "model.onnx")


# --------------------------------------------------------------------------- measuring

def short_error(e: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    cause = next((ln for ln in lines if ln.startswith("<class")), lines[0] if lines else "")
    return f"{type(e).__name__}: {cause[:300]}"


def graph_stats(path: str) -> dict:
    import onnx

    m = onnx.load(path, load_external_data=False)
    ops = collections.Counter((n.domain or "ai.onnx", n.op_type) for n in m.graph.node)
    funcs = sum(len(f.node) for f in m.functions)
    return {
        "nodes": len(m.graph.node),
        "function_nodes": funcs,
        "op_types": {f"{d}::{t}" if d != "ai.onnx" else t: c for (d, t), c in sorted(ops.items())},
        "contrib_ops": sorted({t for (d, t) in ops if d == "com.microsoft"}),
    }


def make_session(path, threads: int = 0, spin: bool = True, profile_prefix: str | None = None):
    """An ONNX Runtime CPU session (ORT_ENABLE_ALL) on a model path or serialized bytes, and its input names.
    The one place every benchmark sets its session options, so all variants run alike."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    so.intra_op_num_threads = threads  # 0: ONNX Runtime's default
    if not spin:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if profile_prefix:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return sess, names


def max_abs_vs(reference: list[torch.Tensor], got: list[np.ndarray]) -> float:
    if len(got) != len(reference):
        # e.g. an optimizer that drops/reorders outputs: compare what is comparable by shape, in order.
        n = min(len(got), len(reference))
        reference, got = reference[:n], got[:n]
    worst = 0.0
    for r, g in zip(reference, got):
        r = r.detach().float().numpy()
        if tuple(r.shape) != tuple(g.shape):
            return float("inf")
        worst = max(worst, float(np.max(np.abs(r - g.astype(np.float32)))) if r.size else 0.0)
    return worst


def bench_case(name: str, size: str, batch: int, seq: int, args, workdir: str, cache: dict) -> dict:
    row: dict = {"model": name, "batch": batch, "seq": seq, "variants": {}}
    key = (name, size)
    if key not in cache:
        cache.clear()  # keep at most one model (and its artifacts) alive
        model, used = load_model(name, size, args.hidden)
        cache[key] = {"model": model, "size": used, "artifacts": {}}
    entry = cache[key]
    model, config = entry["model"], entry["model"].config
    row["size"] = entry["size"]
    heads, hidden = heads_and_hidden(config)
    row["config"] = {"layers": getattr(config, "num_hidden_layers", None) or getattr(config, "n_layer", None),
                     "hidden": hidden, "heads": heads, "kv_heads": getattr(config, "num_key_value_heads", heads),
                     "vocab": config.vocab_size, "params_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 2)}
    max_pos = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if max_pos and seq > max_pos:
        row["skipped"] = f"{name} has only {max_pos} positions"
        return row
    g = torch.Generator().manual_seed(0)
    inputs = {"input_ids": torch.randint(0, config.vocab_size, (batch, seq), generator=g)}
    feed_np = {k: v.numpy() for k, v in inputs.items()}
    with torch.no_grad():
        reference = flatten_outputs(model(**inputs))[1]

    # Build every ONNX variant once per model (dynamic batch/seq), traced at batch 2 x 16 so no example dim is 1.
    arts = entry["artifacts"]
    if not arts:
        example = {"input_ids": torch.randint(0, config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(1))}
        base = os.path.join(workdir, f"{name}-{entry['size']}")
        build = [
            ("t2c_standard", lambda: (t2c_build(model, example, base + "-t2c-standard", "standard", args.passes), {})),
            ("t2c_ort", lambda: (t2c_build(model, example, base + "-t2c-ort", "ort", args.passes), {})),
            ("torch_onnx", lambda: (torch_onnx_export(model, example, base + "-torch.onnx"), {})),
        ]
        for variant, fn in build:
            arts[variant] = build_one(fn)
        if "path" in arts["torch_onnx"]:
            src = arts["torch_onnx"]["path"]
            arts["torch_onnx_onnxscript"] = build_one(lambda: onnxscript_fusions(src, base + "-onnxscript.onnx"))
            arts["torch_onnx_ort_optimizer"] = build_one(lambda: ort_optimizer(src, base + "-ortopt.onnx", FAMILY.get(name, "bert"), config))
        else:
            for v in ("torch_onnx_onnxscript", "torch_onnx_ort_optimizer"):
                arts[v] = {"error": "needs (a) torch.onnx, which failed"}

    runners = {}
    for variant in VARIANTS[:-1]:
        art = arts[variant]
        rec = {k: v for k, v in art.items() if k != "path"}
        row["variants"][variant] = rec
        if "path" not in art:
            continue
        try:
            sess, names = make_session(art["path"], args.threads, not args.no_spin)
            feed = {n: feed_np[n] for n in names}
            outs = sess.run(None, feed)
            rec["max_abs_vs_eager"] = max_abs_vs(reference, outs)
            rec["matches_eager"] = rec["max_abs_vs_eager"] <= args.atol
            runners[variant] = (lambda s=sess, f=feed: s.run(None, f))
        except Exception as e:  # noqa: BLE001
            rec["error"] = "run: " + short_error(e)
            if os.environ.get("T2C_BENCH_DEBUG"):
                traceback.print_exc()
    row["variants"]["eager"] = {}

    def eager():
        with torch.no_grad():
            model(**inputs)

    runners["eager"] = eager
    times = interleaved_medians(runners, args)
    for variant, (ms, n) in times.items():
        row["variants"][variant]["ms"] = ms
        row["variants"][variant]["repeats"] = n

    ok = {v: row["variants"][v]["ms"] for v in ANCHORS if "ms" in row["variants"].get(v, {}) and row["variants"][v].get("matches_eager")}
    if ok:
        best = min(ok, key=ok.get)
        row["best_anchor"], row["best_anchor_ms"] = best, ok[best]
        for v in ("t2c_ort", "t2c_standard"):
            if "ms" in row["variants"].get(v, {}):
                row[f"ratio_{v}_over_best_anchor"] = row["variants"][v]["ms"] / ok[best]
    if "ms" in row["variants"].get("t2c_ort", {}) and "ms" in row["variants"]["eager"]:
        row["ratio_t2c_ort_over_eager"] = row["variants"]["t2c_ort"]["ms"] / row["variants"]["eager"]["ms"]
    return row


def build_one(fn) -> dict:
    t0 = time.perf_counter()
    try:
        path, extra = fn()
        rec = {"path": path, "build_s": round(time.perf_counter() - t0, 2), **({"build_info": extra} if extra else {})}
        rec.update(graph_stats(path))
        return rec
    except Exception as e:  # noqa: BLE001 - a benchmark records failures
        if os.environ.get("T2C_BENCH_DEBUG"):
            traceback.print_exc()
        return {"error": "build: " + short_error(e)}


def interleaved_medians(runners: dict, args) -> dict:
    """Median ms per runner; one call of each per round, round-robin with a rotating start."""
    names = list(runners)
    for _ in range(args.warmup):
        for n in names:
            runners[n]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    t_start = time.perf_counter()
    r = 0
    while r < args.repeat:
        order = names[r % len(names):] + names[:r % len(names)]
        for n in order:
            t0 = time.perf_counter()
            runners[n]()
            samples[n].append(time.perf_counter() - t0)
        r += 1
        # A per-case time budget caps the repeats on slow cases (never below --min-repeat).
        if args.budget_s and r >= args.min_repeat and time.perf_counter() - t_start > args.budget_s:
            break
    return {n: (statistics.median(s) * 1e3, len(s)) for n, s in samples.items()}


# --------------------------------------------------------------------------- output

def fmt(v, spec=".2f"):
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else ("-" if v is None else str(v))


def cell(rec: dict) -> str:
    if "ms" not in rec:
        return "FAIL" if "error" in rec else "-"
    return fmt(rec["ms"]) + ("!" if rec.get("matches_eager") is False else "")


def print_table(rows: list[dict]) -> None:
    cols = [SHORT[v] for v in VARIANTS]
    header = f"{'model':<7} {'size':<5} {'b':>2} {'seq':>4} " + " ".join(f"{c:>15}" for c in cols) + f" {'best anchor':>15} {'ort/best':>8} {'std/best':>8}"
    print("\n" + header)
    print("-" * len(header))
    for r in rows:
        if "skipped" in r:
            print(f"{r['model']:<7} {r.get('size', ''):<5} {r['batch']:>2} {r['seq']:>4}  skipped: {r['skipped']}")
            continue
        vs = r["variants"]
        print(f"{r['model']:<7} {r['size']:<5} {r['batch']:>2} {r['seq']:>4} " + " ".join(f"{cell(vs.get(v, {})):>15}" for v in VARIANTS)
              + f" {SHORT.get(r.get('best_anchor'), '-'):>15} {fmt(r.get('ratio_t2c_ort_over_best_anchor')):>8}"
              + f" {fmt(r.get('ratio_t2c_standard_over_best_anchor')):>8}")
    print("ms = median latency; '!' = output differs from eager by more than --atol (never a best anchor); "
          "ratio < 1: t2c faster than the best anchor.")
    # Graph summary per model (built once per model).
    seen = set()
    print(f"\n{'model':<7} {'variant':<16} {'nodes':>6} {'max abs':>9}  contrib ops / error")
    for r in rows:
        if "skipped" in r or (r["model"], r["size"]) in seen:
            continue
        seen.add((r["model"], r["size"]))
        for v in VARIANTS[:-1]:
            rec = r["variants"].get(v, {})
            info = rec.get("error") or ",".join(rec.get("contrib_ops", [])) or "(none)"
            if v == "torch_onnx_ort_optimizer" and "build_info" in rec:
                info = f"[{rec['build_info'].get('model_type')}] " + info
            print(f"{r['model']:<7} {SHORT[v]:<16} {fmt(rec.get('nodes'), 'd'):>6} {fmt(rec.get('max_abs_vs_eager'), '.1e'):>9}  {info[:110]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=None, help=f"comma list from {ZOO_MODELS} (default: all; --quick: all but minilm)")
    parser.add_argument("--size", choices=["small", "base"], default="small",
                        help="small: zoo configs (hidden 64) + MiniLM; base: hidden-512 Llama/BERT built here (others stay small)")
    parser.add_argument("--hidden", type=int, default=512, help="--size base: the models' hidden size (heads of 64)")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--seqs", default="128,512")
    parser.add_argument("--repeat", type=int, default=30, help="timed rounds (each runs every variant once)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--budget-s", type=float, default=0.0, help="stop a case's rounds after this many seconds (0: no cap)")
    parser.add_argument("--min-repeat", type=int, default=5, help="rounds always run, whatever --budget-s says")
    parser.add_argument("--atol", type=float, default=1e-3, help="max abs vs eager for an anchor to count")
    parser.add_argument("--passes", default="-O1", help="t2c pipeline for both t2c variants")
    parser.add_argument("--threads", type=int, default=0,
                        help="intra-op threads for ONNX Runtime and torch (0: each library's default)")
    parser.add_argument("--no-spin", action="store_true",
                        help="turn off ONNX Runtime's intra-op spin-waiting (idle sessions then don't steal cores from the one running)")
    parser.add_argument("--quick", action="store_true", help="tiny zoo only (no minilm), batch 1, seq 128, 10 repeats")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    if args.quick:
        args.models = args.models or ",".join(m for m in ZOO_MODELS if m != "minilm")
        args.size, args.batches, args.seqs, args.repeat = "small", "1", "128", 10
    models = [m.strip() for m in (args.models or ",".join(ZOO_MODELS)).split(",") if m.strip()]
    unknown = [m for m in models if m not in ZOO_MODELS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {ZOO_MODELS}")
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    seqs = [int(s) for s in args.seqs.split(",")]

    rows = []
    t_run = time.perf_counter()
    with tempfile.TemporaryDirectory() as workdir:
        cache: dict = {}
        for name in models:
            for batch in batches:
                for seq in seqs:
                    t0 = time.perf_counter()
                    try:
                        row = bench_case(name, args.size, batch, seq, args, workdir, cache)
                    except Exception as e:  # noqa: BLE001 - one case failing does not end the run
                        if os.environ.get("T2C_BENCH_DEBUG"):
                            traceback.print_exc()
                        row = {"model": name, "batch": batch, "seq": seq, "size": args.size, "skipped": "case failed: " + short_error(e)}
                    row["case_s"] = round(time.perf_counter() - t0, 1)
                    rows.append(row)
                    vs = row.get("variants", {})
                    print(f"[{row['case_s']:6.1f}s] {name} b{batch} s{seq}: "
                          + ", ".join(f"{SHORT[v]}={cell(vs[v])}" for v in VARIANTS if v in vs)
                          + (f"  ort/best={fmt(row.get('ratio_t2c_ort_over_best_anchor'))}" if vs else f"  {row.get('skipped')}"),
                          file=sys.stderr, flush=True)
    print_table(rows)

    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(args.out, f"cpu_latency-{platform.node() or 'host'}-{stamp}.json")
    meta = {"date": stamp, "machine": platform.machine(), "processor": platform.processor(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "t2c": getattr(t2c, "__version__", None),
            "args": vars(args), "run_s": round(time.perf_counter() - t_run, 1),
            "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "note": "median latency (ms) in ONNX Runtime CPUExecutionProvider, ORT_ENABLE_ALL, default threads; "
                    "variants interleaved round-robin; best anchor = fastest of torch_onnx, torch_onnx_onnxscript, "
                    "torch_onnx_ort_optimizer that matched eager within atol"}
    for mod in ("onnxruntime", "onnx", "onnxscript", "transformers"):
        try:
            meta[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    with open(path, "w") as f:
        json.dump({"meta": meta, "rows": rows}, f, indent=2, default=str)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
