"""Attention scaling benchmark: ONNX Runtime latency and peak memory vs sequence length.

One small Llama-style model (hidden 256, 4 heads, 2 kv heads, 2 layers, vocab 256,
sdpa attention, batch 1; `--family qwen2` adds Qwen2's q/k/v biases) compiled four
ways with t2c's pipeline strings (W = `--window`, 512 unless given):

    full      lift-attention                              (opset-23 Attention, causal)
    window    lift-attention,window{size=W}               (blocked sliding window)
    window+g  lift-attention,window{size=W,global=16}     (+ 16 global tokens / sinks)
    linear    lift-attention,linear-attention             (chunked causal linear attention)

Each (variant, seq) runs in a fresh subprocess, so the peak RSS (ru_maxrss) is its
own: the reported memory is the peak minus the RSS after the session and inputs
exist (i.e. what running the model adds). The peak is ru_maxrss, except on Linux,
where ru_maxrss carries the parent's high-water mark across fork+exec: there the
worker resets the mark (/proc/self/clear_refs) and reads VmHWM. Latency is the median over repeated runs
after a warm-up. The time exponent is a least-squares fit of log(time) on log(seq).

    .venv/bin/python benchmarks/attention_scaling.py [--quick] [--max-seq 16384] [--repeat 5]

Prints a table and writes benchmarks/results/attention_scaling-<host>-<date>.json
and a log-log latency plot (.png) next to it.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

VARIANTS = {
    "full": "lift-attention",
    "window": "lift-attention,window{size=512}",
    "window+global": "lift-attention,window{size=512,global=16}",
    "linear": "lift-attention,linear-attention",
}
SEQS = [1024, 2048, 4096, 8192, 16384]
ATTENTION_OPS = ("sdpa", "attention", "linear_attention")


def build_model(family: str = "llama"):
    import torch
    import transformers

    config, model = {"llama": ("LlamaConfig", "LlamaForCausalLM"), "qwen2": ("Qwen2Config", "Qwen2ForCausalLM")}[family]
    cfg = getattr(transformers, config)(
        hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=2,
        num_hidden_layers=2, vocab_size=256, max_position_embeddings=32768, attn_implementation="sdpa",
    )
    torch.manual_seed(0)
    return getattr(transformers, model)(cfg).eval()


def export_variants(out_dir: str, names: list[str], family: str = "llama", window: int = 512) -> dict[str, dict]:
    """Trace, run each pipeline and lower; returns {variant: {path, pipeline, attention attrs}}."""
    import torch

    from t2c.backends.onnx import lower, save
    from t2c.frontends.torch_export import trace
    from t2c.passes.manager import Pipeline

    model = build_model(family)
    ids = torch.randint(0, 256, (1, 64))
    out = {}
    for name in names:
        g = trace(model, {"input_ids": ids})  # a fresh graph: passes rewrite in place
        pipeline = VARIANTS[name].replace("size=512", f"size={window}")
        g, records = Pipeline.parse(pipeline).run(g)
        attn = [f"{n.op}{_attrs(n.attrs)}" for n in g.nodes if n.op in ATTENTION_OPS]
        path = save(lower(g), os.path.join(out_dir, re.sub(r"\W", "_", name)))
        out[name] = {"path": path, "pipeline": pipeline, "attention": sorted(set(attn)),
                     "pass_stats": {r.name: r.stats for r in records}}
        print(f"  {name:14s} {pipeline:44s} {', '.join(sorted(set(attn)))}", flush=True)
    return out


def _attrs(a) -> str:
    if a is None:
        return ""
    keep = {k: v for k, v in vars(a).items() if k in ("causal", "window", "block", "global_tokens", "feature")}
    return "{" + ",".join(f"{k}={v}" for k, v in keep.items()) + "}"


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


def peak_kib(resettable: bool) -> int:
    """Peak RSS so far. ru_maxrss survives fork+exec (a worker would report its parent's peak,
    here the traced torch model's), so where it can be reset VmHWM is read instead."""
    hwm = _status_kib("VmHWM") if resettable else None
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def worker(path: str, seq: int, repeat: int, budget_s: float) -> dict:
    """One (model, seq) in this process: latency median and the peak RSS the runs add."""
    import numpy as np
    import onnxruntime as ort

    so = ort.SessionOptions()
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    feed = {"input_ids": np.random.default_rng(0).integers(0, 256, (1, seq), dtype=np.int64)}
    resettable = reset_peak()
    rss0 = _status_kib("VmRSS") if resettable else peak_kib(False)
    t0 = time.perf_counter()
    sess.run(None, feed)  # warm-up
    first = time.perf_counter() - t0
    times = []
    deadline = time.perf_counter() + budget_s
    while len(times) < repeat and (len(times) < 3 or time.perf_counter() < deadline):
        t0 = time.perf_counter()
        sess.run(None, feed)
        times.append(time.perf_counter() - t0)
    return {
        "latency_s": statistics.median(times),
        "runs": len(times),
        "first_run_s": first,
        "rss_before_mib": rss0 / 1024,
        "peak_rss_mib": peak_kib(resettable) / 1024,
        "peak_added_mib": (peak_kib(resettable) - rss0) / 1024,
        "peak_source": "VmHWM" if resettable else "ru_maxrss",
    }


def measure(path: str, seq: int, repeat: int, budget_s: float, timeout_s: float) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", path, str(seq), str(repeat), str(budget_s)]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout_s:.0f} s"}
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-1:] or [""]
        return {"error": f"exit {p.returncode}: {tail[0][:300]}"}
    return json.loads(p.stdout.strip().splitlines()[-1])


def fit_exponent(points: list[tuple[int, float]]) -> float | None:
    """Least-squares slope of log(time) on log(seq)."""
    if len(points) < 2:
        return None
    xs = [math.log(s) for s, _ in points]
    ys = [math.log(t) for _, t in points]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def plot(results: dict, path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, r in results.items():
        pts = [(p["seq"], p["latency_s"] * 1e3) for p in r["points"] if "latency_s" in p]
        if pts:
            exp = r.get("time_exponent")
            label = f"{name} (slope {exp:.2f})" if exp is not None else name
            ax.plot(*zip(*pts), marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("sequence length")
    ax.set_ylabel("latency (ms, median)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="sequences 1k-4k only")
    ap.add_argument("--max-seq", type=int, default=SEQS[-1])
    ap.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated subset of {', '.join(VARIANTS)}")
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per config (at least 3; fewer past --budget)")
    ap.add_argument("--budget", type=float, default=30.0, help="seconds of timed runs per config before stopping at 3")
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per config subprocess")
    ap.add_argument("--family", choices=("llama", "qwen2"), default="llama", help="llama, or qwen2 (q/k/v biases)")
    ap.add_argument("--window", type=int, default=512, help="the window size W of the window variants")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()

    names = [n for n in args.variants.split(",") if n]
    unknown = set(names) - set(VARIANTS)
    if unknown:
        ap.error(f"unknown variants {sorted(unknown)}; choose from {', '.join(VARIANTS)}")
    max_seq = min(args.max_seq, 4096) if args.quick else args.max_seq
    seqs = [s for s in SEQS if s <= max_seq]

    import onnxruntime as ort

    host = platform.node() or "host"
    print(f"attention scaling on {host}: {os.cpu_count()} CPUs, onnxruntime {ort.__version__}, seqs {seqs}", flush=True)
    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        print("exporting:", flush=True)
        exported = export_variants(tmp, names, args.family, args.window)
        for name in names:
            info = exported[name]
            points = []
            for seq in seqs:
                r = measure(info["path"], seq, args.repeat, args.budget, args.timeout)
                r["seq"] = seq
                points.append(r)
                if "error" in r:
                    print(f"  {name:14s} seq {seq:6d}  FAILED {r['error']}", flush=True)
                    break  # longer sequences would fail too
                print(f"  {name:14s} seq {seq:6d}  {r['latency_s'] * 1e3:10.1f} ms  +{r['peak_added_mib']:8.1f} MiB "
                      f"(peak RSS {r['peak_rss_mib']:.0f} MiB, {r['runs']} runs)", flush=True)
            ok = [(p["seq"], p["latency_s"]) for p in points if "latency_s" in p]
            results[name] = {k: v for k, v in info.items() if k != "path"}
            results[name]["points"] = points
            results[name]["time_exponent"] = fit_exponent(ok)
            ok_mem = [(p["seq"], max(p["peak_added_mib"], 1e-3)) for p in points if "peak_added_mib" in p]
            results[name]["memory_exponent"] = fit_exponent(ok_mem)

    def at(name, seq, key):
        for p in results.get(name, {}).get("points", []):
            if p["seq"] == seq and key in p:
                return p[key]
        return None

    print()
    header = f"{'variant':14s} " + " ".join(f"{s:>9d}" for s in seqs) + "   exponent"
    for title, key, exp_key, unit in (("latency (ms)", "latency_s", "time_exponent", 1e3),
                                      ("peak memory added (MiB)", "peak_added_mib", "memory_exponent", 1.0)):
        print(title + "\n" + header)
        for name, r in results.items():
            cells = [at(name, s, key) for s in seqs]
            exp = r[exp_key]
            print(f"{name:14s} " + " ".join(f"{c * unit:9.1f}" if c is not None else f"{'-':>9s}" for c in cells)
                  + (f"   {exp:.2f}" if exp is not None else ""))
    speedups = {}
    for s in seqs:
        full, win = at("full", s, "latency_s"), at("window", s, "latency_s")
        if full and win:
            speedups[str(s)] = full / win
    if speedups:
        print("window vs full speedup: " + ", ".join(f"{s}: {v:.2f}x" for s, v in speedups.items()))

    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = os.path.join(args.out, f"attention_scaling-{re.sub(r'[^A-Za-z0-9_.-]', '_', host)}-{stamp}")
    doc = {
        "benchmark": "attention_scaling",
        "host": host,
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "onnxruntime": ort.__version__,
        "model": f"{args.family} hidden 256, 4 heads, 2 kv heads, 2 layers, vocab 256, batch 1",
        "window": args.window,
        "seqs": seqs,
        "repeat": args.repeat,
        "window_vs_full_speedup": speedups,
        "variants": results,
    }
    with open(base + ".json", "w") as f:
        json.dump(doc, f, indent=2)
    try:
        plot(results, base + ".png", f"t2c attention variants, ONNX Runtime CPU ({host}, {os.cpu_count()} CPUs)")
        print(f"wrote {base}.json and {base}.png")
    except ImportError:
        print(f"wrote {base}.json (no plot: matplotlib is not installed)")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        print(json.dumps(worker(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))))
    else:
        main()
