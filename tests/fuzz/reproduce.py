"""Run a saved fuzz failure again, or run a fuzzing campaign (`make fuzz`).

    .venv/bin/python tests/fuzz/reproduce.py tests/fuzz/failures/<hash>.json [...]   # rerun reproducers
    .venv/bin/python tests/fuzz/reproduce.py --fuzz [--examples 2000] [--rounds 20]  # what `make fuzz` runs

A reproducer (written by test_fuzz.py in fuzz mode, from hypothesis's shrunk example) holds the
model spec, pipeline, target and flavor, the error and its traceback. Rerunning it compiles the
same model (weights from the spec's seed) the same way and prints "ok" or the failure with its
traceback; the exit status is 1 when any reproducer still fails.

--fuzz runs tests/fuzz/test_fuzz.py with fresh randomness (T2C_FUZZ_MODE=fuzz) in rounds of
--examples examples each: a round stops at the first new failure (after shrinking it and saving
it under tests/fuzz/failures/); the next round lets the failures saved so far pass and looks for
others. It stops when a round finds nothing new, or after --rounds rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def rerun(paths: list[str]) -> int:
    os.environ.setdefault("TRITON_INTERPRET", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(HERE))
    from test_fuzz import Case, check

    failed = 0
    for path in paths:
        record = json.loads(Path(path).read_text())
        case = Case.from_json(record)
        print(f"{path}: {case}")
        if record.get("error"):
            print(f"  saved error: {record['error'].splitlines()[0][:300]}")
        try:
            print(f"  now: {check(case)}")
        except Exception:
            failed += 1
            print("  now: FAILS")
            traceback.print_exc()
    return 1 if failed else 0


def campaign(examples: int, rounds: int) -> int:
    env = dict(os.environ, T2C_FUZZ_MODE="fuzz", T2C_FUZZ_EXAMPLES=str(examples),
               HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", TRITON_INTERPRET="1")
    failures = HERE / "failures"
    before = set(failures.glob("*.json")) if failures.is_dir() else set()
    for i in range(1, rounds + 1):
        print(f"== fuzz round {i}: up to {examples} examples", flush=True)
        saved = set(failures.glob("*.json")) if failures.is_dir() else set()
        rc = subprocess.call([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--hypothesis-show-statistics",
                              str(HERE / "test_fuzz.py")], cwd=ROOT, env=env)
        new = (set(failures.glob("*.json")) if failures.is_dir() else set()) - saved
        if rc == 0 or not new:
            break
    found = sorted((set(failures.glob("*.json")) if failures.is_dir() else set()) - before)
    print(f"\n{len(found)} new reproducer(s):" if found else "\nno new failures")
    for path in found:
        record = json.loads(path.read_text())
        print(f"  {path.relative_to(ROOT)}: {record['error'].splitlines()[0][:200]}")
    return 1 if found else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="*", help="reproducer JSON files (tests/fuzz/failures/*.json)")
    parser.add_argument("--fuzz", action="store_true", help="run a fuzzing campaign instead")
    parser.add_argument("--examples", type=int, default=int(os.environ.get("T2C_FUZZ_EXAMPLES", "2000")),
                        help="examples per round (default: T2C_FUZZ_EXAMPLES or 2000)")
    parser.add_argument("--rounds", type=int, default=20, help="at most this many rounds (default 20)")
    args = parser.parse_args()
    if args.fuzz:
        return campaign(args.examples, args.rounds)
    if not args.files:
        parser.error("give reproducer files, or --fuzz")
    return rerun(args.files)


if __name__ == "__main__":
    sys.exit(main())
