"""Where and how a benchmark saves its result (a helper module, not a benchmark)."""

from __future__ import annotations

import datetime
import json
import os
import platform
import subprocess

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def header(benchmark: str) -> dict:
    """What every result says about its run: the benchmark, host, Python, date and commit."""
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    return {"benchmark": benchmark, "host": platform.node(), "python": platform.python_version(),
            "date": datetime.datetime.now().isoformat(timespec="seconds"), "commit": commit}


def write(doc: dict, out: str, indent: int = 2) -> str:
    """Save `doc` as <out>/<benchmark>-<host>-<date>.json and say where; returns the path."""
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{doc['benchmark']}-{platform.node()}-{datetime.datetime.now():%Y%m%d-%H%M%S}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=indent)
    print(f"wrote {path}")
    return path
