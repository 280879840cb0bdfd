"""What the benchmarks that watch a child process share (a helper module, not a benchmark)."""

from __future__ import annotations


def rss_bytes(pid: int) -> int:
    """The resident set size of process `pid` now (VmRSS), 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0
