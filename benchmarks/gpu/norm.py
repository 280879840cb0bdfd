"""GPU benchmark: t2c's Triton norm kernels (t2c/kernels/norm.py) against eager PyTorch.

Cases, bfloat16, hidden in {4096, 8192} (--hidden), tokens in {4096, 8192, 16384, 32768} (--tokens):

  rms_norm        t2c rms_norm(x, w)             vs F.rms_norm(x, (H,), w, 1e-6)
  layer_norm      t2c layer_norm(x, w, b)        vs F.layer_norm(x, (H,), w, b, 1e-5)
  add_rms_norm    t2c add_norm(x, r, w) {rms}    vs s = x + r; F.rms_norm(s, ...)   (two kernels)
  add_layer_norm  t2c add_norm(x, r, w, b) {layer} vs s = x + r; F.layer_norm(s, ...)

Bandwidth is effective: the bytes a fused kernel must move (read x [and r], write y [and s],
read the weight and bias once) over the median time, for both implementations, so eager
add + norm (which also writes s and reads it back) shows what fusing the add saves. Two
ceilings, both reported as fractions: the device's peak from a small table of known devices
(H100 SXM 3.35 TB/s, H200 4.8 TB/s, ...; none for an unknown device) and the measured
bandwidth of a plain device copy (dst.copy_(src), 512 MiB each way), a practical ceiling.
Timing is triton.testing.do_bench (CUDA events, L2 flushed before each run), median. Each case
also records the largest difference between t2c's and eager's results (max_abs_diff).

--smoke runs tiny sizes on the CPU under TRITON_INTERPRET=1 (set here before triton is
imported) with a wall-clock timer: it checks that the script runs and writes its JSON (the
numbers mean nothing there). Without --smoke a CUDA device is required.

    .venv/bin/python benchmarks/gpu/norm.py [--hidden 4096,8192] [--tokens 4096,8192,16384,32768]
    .venv/bin/python benchmarks/gpu/norm.py --smoke --out /tmp/norm_smoke

Prints a table and writes <out>/gpu_norm-<device>-<date>.json (default out: benchmarks/results/).
"""

from __future__ import annotations

import argparse
import os
import sys

from _bench import cuda_device, ints, make_timer, result_doc, write_json  # benchmarks/gpu/_bench.py (the script's folder is on sys.path)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))

# (substring of torch.cuda.get_device_name(), peak DRAM bytes/s); the first match wins, so
# longer names come before their prefixes. GH200 is listed as unknown: its two memory
# configurations differ (4.0 and 4.9 TB/s) and its name contains "H200".
PEAK_BANDWIDTH = (
    ("GH200", None),
    ("H200", 4.8e12),
    ("H100 NVL", 3.9e12),
    ("H100 PCIe", 2.0e12),
    ("H100", 3.35e12),  # SXM5: "NVIDIA H100 80GB HBM3"
    ("A100-SXM4-80GB", 2.039e12),
    ("A100 80GB PCIe", 1.935e12),
    ("A100", 1.555e12),  # the 40 GB parts
    ("L40S", 0.864e12),
    ("L4", 0.3e12),
)
OPS = ("rms_norm", "layer_norm", "add_rms_norm", "add_layer_norm")


def peak_bandwidth(device_name: str):
    """(bytes/s, table entry) for a known device, (None, None) otherwise."""
    for key, peak in PEAK_BANDWIDTH:
        if key in device_name:
            return peak, key
    return None, None


def build_case(op: str, tokens: int, hidden: int, dtype, device):
    """(t2c callable, eager callable, bytes a fused kernel moves) for one op and size."""
    import torch
    import torch.nn.functional as F

    from t2c.ir.opdefs.add_norm import AddNormAttrs
    from t2c.ir.opdefs.nn import NormAttrs, RMSNormAttrs
    from t2c.kernels import norm

    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(tokens, hidden, generator=g, device=device, dtype=dtype)
    r = torch.randn(tokens, hidden, generator=g, device=device, dtype=dtype)
    w = torch.randn(hidden, generator=g, device=device, dtype=dtype)
    b = torch.randn(hidden, generator=g, device=device, dtype=dtype)
    row_bytes, param_bytes = tokens * hidden * x.element_size(), hidden * x.element_size()
    shape = (hidden,)
    if op == "rms_norm":
        attrs = RMSNormAttrs(shape, 1e-6)
        return (lambda: norm.rms_norm(x, w, attrs=attrs), lambda: F.rms_norm(x, shape, w, 1e-6),
                2 * row_bytes + param_bytes)
    if op == "layer_norm":
        attrs = NormAttrs(shape, 1e-5)
        return (lambda: norm.layer_norm(x, w, b, attrs=attrs), lambda: F.layer_norm(x, shape, w, b, 1e-5),
                2 * row_bytes + 2 * param_bytes)
    if op == "add_rms_norm":
        attrs = AddNormAttrs("rms", shape, 1e-6)

        def eager_add_rms():
            s = x + r
            return F.rms_norm(s, shape, w, 1e-6), s

        return lambda: norm.add_norm(x, r, w, attrs=attrs), eager_add_rms, 4 * row_bytes + param_bytes
    if op == "add_layer_norm":
        attrs = AddNormAttrs("layer", shape, 1e-5)

        def eager_add_layer():
            s = x + r
            return F.layer_norm(s, shape, w, b, 1e-5), s

        return lambda: norm.add_norm(x, r, w, b, attrs=attrs), eager_add_layer, 4 * row_bytes + 2 * param_bytes
    raise ValueError(f"unknown op {op!r}; choose from {', '.join(OPS)}")


def max_abs_diff(ours, theirs) -> list[float]:
    ours = ours if isinstance(ours, tuple) else (ours,)
    theirs = theirs if isinstance(theirs, tuple) else (theirs,)
    return [float((a.float() - b.float()).abs().max()) for a, b in zip(ours, theirs)]


def rates(ms: float, nbytes: int, peak, copy_bps: float) -> dict:
    bps = nbytes / (ms * 1e-3)
    return {"ms": ms, "gbs": bps / 1e9, "of_peak": bps / peak if peak else None, "of_copy": bps / copy_bps}


def copy_bandwidth(timer, device, elements: int) -> float:
    """Bytes/s of dst.copy_(src) in bfloat16 (reads and writes counted)."""
    import torch

    src = torch.randn(elements, device=device).to(torch.bfloat16)
    dst = torch.empty_like(src)
    ms = timer(lambda: dst.copy_(src))
    return 2 * src.numel() * src.element_size() / (ms * 1e-3)


def _pct(v) -> str:
    return f"{100 * v:5.1f}%" if v is not None else f"{'-':>6s}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--hidden", default="4096,8192", help="comma-separated hidden sizes")
    ap.add_argument("--tokens", default="4096,8192,16384,32768", help="comma-separated token counts")
    ap.add_argument("--ops", default=",".join(OPS), help=f"comma-separated subset of {', '.join(OPS)}")
    ap.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU under TRITON_INTERPRET=1")
    ap.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"), help="folder for the JSON")
    args = ap.parse_args()
    ops = [o for o in args.ops.split(",") if o]
    if set(ops) - set(OPS):
        ap.error(f"unknown ops {sorted(set(ops) - set(OPS))}; choose from {', '.join(OPS)}")
    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"  # before triton is imported
        hiddens, token_counts = [48, 100], [7]
    else:
        hiddens, token_counts = ints(args.hidden), ints(args.tokens)

    sys.path.insert(0, ROOT)
    import torch
    import triton

    if args.smoke:
        device, device_name = "cpu", "cpu (Triton interpreter)"
    else:
        device, device_name = "cuda", cuda_device("norm.py")
        if device_name is None:
            return 1
    timer = make_timer(args.smoke)
    peak, peak_entry = peak_bandwidth(device_name)
    copy_bps = copy_bandwidth(timer, device, 1 << 14 if args.smoke else 1 << 28)
    peak_text = f"{peak / 1e9:.0f} GB/s ({peak_entry})" if peak else "unknown"
    print(f"norm kernels on {device_name}: peak {peak_text}, copy {copy_bps / 1e9:.0f} GB/s; bf16, "
          f"torch {torch.__version__}, triton {triton.__version__}", flush=True)

    cases = []
    print(f"{'op':15s} {'hidden':>6s} {'tokens':>6s} | {'t2c GB/s':>9s} {'peak':>6s} {'copy':>6s} | "
          f"{'torch GB/s':>10s} {'peak':>6s} {'copy':>6s} | {'speedup':>7s} {'max diff':>9s}")
    for op in ops:
        for hidden in hiddens:
            for tokens in token_counts:
                ours, eager, nbytes = build_case(op, tokens, hidden, torch.bfloat16, device)
                diff = max_abs_diff(ours(), eager())  # also the first call: compile and autotune
                t2c = rates(timer(ours), nbytes, peak, copy_bps)
                ref = rates(timer(eager), nbytes, peak, copy_bps)
                case = {"op": op, "hidden": hidden, "tokens": tokens, "bytes": nbytes, "t2c": t2c, "torch": ref,
                        "speedup": ref["ms"] / t2c["ms"], "max_abs_diff": diff}
                cases.append(case)
                print(f"{op:15s} {hidden:6d} {tokens:6d} | {t2c['gbs']:9.1f} {_pct(t2c['of_peak'])} "
                      f"{_pct(t2c['of_copy'])} | {ref['gbs']:10.1f} {_pct(ref['of_peak'])} {_pct(ref['of_copy'])} | "
                      f"{case['speedup']:6.2f}x {max(diff):9.3g}", flush=True)
                del ours, eager
                if device == "cuda":
                    torch.cuda.empty_cache()

    path, doc = result_doc("gpu_norm", device_name, args.smoke, args.out)
    doc.update({
        "dtype": "bfloat16",
        "peak_bandwidth_gbs": peak / 1e9 if peak else None,
        "peak_table_entry": peak_entry,
        "copy_bandwidth_gbs": copy_bps / 1e9,
        "bytes": "fused traffic: x (and residual) read, y (and the sum) written, weight/bias read once",
        "timing": "wall clock, 3 runs (interpreter)" if args.smoke else "triton.testing.do_bench median",
        "cases": cases,
    })
    write_json(path, doc)
    return 0


if __name__ == "__main__":
    sys.exit(main())
