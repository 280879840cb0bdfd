"""Attention kernel benchmark on a GPU: t2c's Triton kernel vs torch SDPA (flash) and FlexAttention.

Forward TFLOP/s at bf16 for S = 1k..32k, head dims 64 and 128, two structures:

    causal      causal=true                         vs SDPA's flash backend (is_causal=True)
    window512   causal=true, window=(511, -1)       vs FlexAttention with a sliding-window block mask
                                                    (SDPA's flash backend has no window)

Batch x heads keep the work comparable across lengths: batch = max(1, 16384 // S),
heads = 2048 // D. FLOPs count only visible (query, key) pairs, 4 * B * H * D * pairs,
so a window's TFLOP/s are the useful work it did. Times are triton.testing.do_bench
medians. For S <= 2048 the kernel's output on one batch element is also checked
against the IR reference (max abs error, recorded). A baseline that fails records
its error instead of a time; cases past --budget-s are left out and listed.

    .venv/bin/python benchmarks/gpu/attention.py [--budget-s 110] [--out benchmarks/results]
    .venv/bin/python benchmarks/gpu/attention.py --smoke      # tiny sizes, CPU, TRITON_INTERPRET=1

Prints a table and writes <out>/attention_gpu-<host>-<date>.json (with the device name).
--smoke runs our kernel and torch SDPA only, in the Triton interpreter on the CPU,
timed with perf_counter: it checks that the script works, not speed.
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import re
import sys
import time

from _bench import cuda_device, make_timer, write_json  # benchmarks/gpu/_bench.py (the script's folder is on sys.path)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

FULL_SEQS = [1024, 2048, 4096, 8192, 16384, 32768]
FULL_HEAD_DIMS = [64, 128]
SMOKE_SEQS = [40]
SMOKE_HEAD_DIMS = [16, 32]
WINDOW = 512
SMOKE_WINDOW = 8


def visible_pairs(s: int, window: int | None) -> int:
    """(i, j) pairs a causal attention (with a window of `window` keys, if given) computes over length s."""
    if window is None or window >= s:
        return s * (s + 1) // 2
    return window * (window + 1) // 2 + (s - window) * window


def structures(window: int) -> dict:
    """name -> (t2c attrs without kv_heads/scale, the window or None)."""
    return {"causal": ({"causal": True}, None), f"window{window}": ({"causal": True, "window": (window - 1, -1)}, window)}


def time_ms(fn, smoke: bool) -> float:
    """Median milliseconds of fn() (_bench.make_timer; short do_bench windows: many cases share the budget)."""
    return make_timer(smoke, warmup_ms=10, rep_ms=40)(fn)


_COMPILED_FLEX = []  # one torch.compile'd flex_attention for the whole run: after the second length it
# recompiles with dynamic shapes once instead of once per length (each compile costs many seconds)


def flex_runner(s: int, window: int, device: str):
    """A compiled FlexAttention call with a causal sliding-window block mask over length s."""
    import torch
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    def sliding_window(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

    if not _COMPILED_FLEX:
        _COMPILED_FLEX.append(torch.compile(flex_attention))
    block_mask = create_block_mask(sliding_window, B=None, H=None, Q_LEN=s, KV_LEN=s, device=device)
    return lambda q, k, v: _COMPILED_FLEX[0](q, k, v, block_mask=block_mask)


def run_case(s: int, d: int, name: str, attrs_kw: dict, window: int | None, smoke: bool, device: str, dtype) -> dict:
    """One row: our kernel and the baselines that support this structure."""
    import torch
    import torch.nn.functional as F

    from t2c.ir.opdefs.attention import AttentionAttrs, attention_reference
    from t2c.kernels.attention import _attention_fwd, attention

    batch, heads = (1, 2) if smoke else (max(1, 16384 // s), 2048 // d)
    g = torch.Generator(device=device).manual_seed(0)
    q, k, v = (torch.randn(batch, heads, s, d, generator=g, device=device, dtype=dtype) for _ in range(3))
    attrs = AttentionAttrs(scale=d ** -0.5, kv_heads=heads, **attrs_kw)
    flops = 4 * batch * heads * d * visible_pairs(s, window)
    row = {"seq": s, "head_dim": d, "structure": name, "batch": batch, "heads": heads, "gflop": flops / 1e9}

    def record(label, make_fn):
        try:
            fn = make_fn()
            ms = time_ms(fn, smoke)
            row[label] = {"ms": ms, "tflops": flops / (ms * 1e-3) / 1e12}
        except Exception as e:  # a baseline this torch/GPU cannot run is a recorded fact, not the end of the run
            row[label] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}

    record("t2c", lambda: (lambda: attention(q, k, v, attrs=attrs)))
    best = getattr(_attention_fwd, "best_config", None)  # the autotuner's pick for this case
    if best is not None and "t2c" in row and "ms" in row["t2c"]:
        row["t2c"]["config"] = str(best)
    if window is None:
        def sdpa():
            if smoke:  # the CPU has no flash backend: the default choice
                return lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)
            from torch.nn.attention import SDPBackend, sdpa_kernel

            def flash():
                with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
                    return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return flash
        record("sdpa_flash" if not smoke else "sdpa", sdpa)
    elif not smoke:
        record("flex", lambda: (lambda f: (lambda: f(q, k, v)))(flex_runner(s, window, device)))
    if s <= 2048:
        ref = attention_reference(q[:1].float(), k[:1].float(), v[:1].float(), None, attrs)
        row["t2c_max_abs_err"] = (attention(q[:1], k[:1], v[:1], attrs=attrs).float() - ref).abs().max().item()
    return row


def print_table(rows: list[dict]) -> None:
    labels = [lab for lab in ("t2c", "sdpa_flash", "sdpa", "flex") if any(lab in r for r in rows)]
    head = f"{'S':>6} {'D':>4} {'structure':>10} " + " ".join(f"{lab + ' TFLOP/s':>17}" for lab in labels) + f" {'t2c err':>9}"
    print(head)
    for r in rows:
        cells = []
        for lab in labels:
            c = r.get(lab)
            cells.append(f"{'-' if c is None else ('error' if 'error' in c else format(c['tflops'], '.3g')):>17}")
        err = r.get("t2c_max_abs_err")
        print(f"{r['seq']:>6} {r['head_dim']:>4} {r['structure']:>10} " + " ".join(cells)
              + f" {'-' if err is None else format(err, '.2e'):>9}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU in the Triton interpreter")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"), help="folder for the JSON")
    ap.add_argument("--seqs", type=int, nargs="*", help="sequence lengths (default 1k..32k; smoke: 40)")
    ap.add_argument("--head-dims", type=int, nargs="*", help="head dims (default 64 128; smoke: 16 32)")
    ap.add_argument("--budget-s", type=float, default=110.0, help="stop starting new cases after this many seconds")
    args = ap.parse_args()
    if args.smoke:  # must precede the first import of triton
        os.environ["TRITON_INTERPRET"] = "1"
    sys.path.insert(0, ROOT)
    import torch
    import triton

    import t2c

    if args.smoke:
        device, dtype, device_name = "cpu", torch.float32, f"cpu ({platform.processor() or platform.machine()}), TRITON_INTERPRET=1"
    else:
        device_name = cuda_device("attention.py")
        if device_name is None:
            return 1
        device, dtype = "cuda", torch.bfloat16
    seqs = args.seqs or (SMOKE_SEQS if args.smoke else FULL_SEQS)
    head_dims = args.head_dims or (SMOKE_HEAD_DIMS if args.smoke else FULL_HEAD_DIMS)
    window = SMOKE_WINDOW if args.smoke else WINDOW
    versions = {"torch": torch.__version__, "triton": triton.__version__, "t2c": t2c.__version__}
    host = platform.node() or "host"
    print(f"attention benchmark on {device_name}: {dtype}, " + ", ".join(f"{k} {v}" for k, v in versions.items()), flush=True)

    t_run = time.perf_counter()
    rows, left_out = [], []
    for s in seqs:
        for d in head_dims:
            for name, (attrs_kw, win) in structures(window).items():
                if time.perf_counter() - t_run > args.budget_s:
                    left_out.append({"seq": s, "head_dim": d, "structure": name})
                    continue
                rows.append(run_case(s, d, name, attrs_kw, win, args.smoke, device, dtype))
                print(f"  done S={s} D={d} {name}", file=sys.stderr, flush=True)
    print()
    print_table(rows)
    if left_out:
        print(f"left out for time (--budget-s {args.budget_s:g}): {len(left_out)} cases")

    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(args.out, f"attention_gpu-{re.sub(r'[^A-Za-z0-9_.-]', '_', host)}-{stamp}.json")
    doc = {
        "benchmark": "attention_gpu", "mode": "smoke" if args.smoke else "full", "date": stamp, "host": host,
        "platform": platform.platform(), "device": device_name, "dtype": str(dtype).replace("torch.", ""),
        "versions": versions, "args": vars(args), "run_s": round(time.perf_counter() - t_run, 1),
        "note": "forward only; TFLOP/s = 4 * B * H * D * visible (query, key) pairs / median time; "
                "window = causal sliding window of `window` keys (query i sees i-window+1..i)",
        "window": window, "rows": rows, "left_out": left_out,
    }
    write_json(path, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
