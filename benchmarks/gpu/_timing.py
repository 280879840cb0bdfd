"""The timer every GPU benchmark uses (a helper module: run_all.sh runs no `_*.py`)."""

from __future__ import annotations

import statistics
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
