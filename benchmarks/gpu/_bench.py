"""What every GPU benchmark shares (a helper module: run_all.sh runs no `_*.py`): the timer, the
device check, size lists and the JSON file."""

from __future__ import annotations

import datetime
import json
import os
import platform
import re
import statistics
import sys
import time


def make_timer(smoke: bool, warmup_ms: int = 25, rep_ms: int = 100):
    """fn -> median milliseconds of fn(): triton's do_bench on a GPU; in smoke mode (the CPU
    interpreter, where do_bench's CUDA events do not exist) a wall clock over 3 runs after one warm-up."""
    if not smoke:
        import triton.testing

        return lambda fn: triton.testing.do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median")

    def wall_clock(fn, runs: int = 3) -> float:
        fn()
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)

    return wall_clock


def cuda_device(script: str) -> str | None:
    """The CUDA device's name; None (after one line on stderr) without one: the caller exits 1."""
    import torch

    if not torch.cuda.is_available():
        print(f"benchmarks/gpu/{script} needs a CUDA GPU (--smoke runs tiny sizes on the CPU)", file=sys.stderr)
        return None
    return torch.cuda.get_device_name()


def ints(text: str) -> list[int]:
    """`1024,2048` -> [1024, 2048]."""
    return [int(t) for t in text.split(",") if t]


def write_json(path: str, doc: dict) -> None:
    with open(path, "w") as f:
        json.dump(doc, f, indent=2, default=str)
    print(f"\nwrote {path}" + (f"  ({doc['run_s']:.0f} s)" if "run_s" in doc else ""))


def result_doc(benchmark: str, device_name: str, smoke: bool, out: str) -> tuple[str, dict]:
    """(path, the fields every GPU result starts with): OUT/<benchmark>-<device>-<date>.json, the
    device ("cpu-interpreter" in smoke mode), host, platform and versions."""
    import torch
    import triton

    os.makedirs(out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    slug = re.sub(r"[^A-Za-z0-9_.-]", "_", "cpu-interpreter" if smoke else device_name)
    return os.path.join(out, f"{benchmark}-{slug}-{stamp}.json"), {
        "benchmark": benchmark, "device": device_name, "host": platform.node() or "host",
        "platform": platform.platform(), "torch": torch.__version__, "triton": triton.__version__, "smoke": smoke,
    }
