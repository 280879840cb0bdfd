"""Compile time as a user meets it: whole processes, t2c against torch.onnx.export, same model.

The model is a Hugging Face Llama folder (config.json + model.safetensors, random weights, seed 0;
2 layers, hidden 256 by default), as a user would have on disk. Each repetition runs, in a fresh
Python process each and in turn (so machine noise falls on all three alike):

  t2c            `t2c compile DIR -o OUT`                  (trace, passes, ONNX, validation)
  t2c-novalid    `t2c compile DIR -o OUT --no-validate`
  anchor         a script that loads the folder with transformers, builds the same example input
                 (input_ids 1 x 128) and calls torch.onnx.export(dynamo=True) (benchmarks/anchors.py)

It prints the median wall time of each and the ratios to the anchor, plus t2c's own stage timings
(report.json), and writes benchmarks/results/compile_time-<host>-<date>.json. Ratios from the same
run only: these machines are shared.

    .venv/bin/python benchmarks/compile_time.py [--repeat 3] [--hidden 256] [--layers 2]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
T2C = [PY, "-m", "t2c.cli"]

ANCHOR_SCRIPT = """
import sys, torch, transformers
sys.path.insert(0, {here!r})
from anchors import torch_onnx_export
model = transformers.AutoModelForCausalLM.from_pretrained({folder!r}).eval()
ids = torch.randint(0, model.config.vocab_size, (1, 128), generator=torch.Generator().manual_seed(0))
torch_onnx_export(model, {{"input_ids": ids}}, {out!r})
"""


def build_folder(path: str, hidden: int, layers: int) -> None:
    import torch
    import transformers

    cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 8 // 3, num_hidden_layers=layers,
                                   num_attention_heads=max(hidden // 32, 1), num_key_value_heads=max(hidden // 64, 1), vocab_size=1000)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(path)


def timed(cmd: list[str], env: dict) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ROOT}
    with tempfile.TemporaryDirectory(prefix="t2c-compile-time-") as tmp:
        folder = os.path.join(tmp, "llama")
        build_folder(folder, args.hidden, args.layers)
        anchor_py = os.path.join(tmp, "anchor.py")
        with open(anchor_py, "w") as f:
            f.write(ANCHOR_SCRIPT.format(here=HERE, folder=folder, out=os.path.join(tmp, "anchor.onnx")))
        commands = {
            "t2c": T2C + ["compile", folder, "-o", os.path.join(tmp, "t2c")],
            "t2c-novalid": T2C + ["compile", folder, "-o", os.path.join(tmp, "t2c-nv"), "--no-validate"],
            "anchor": [PY, anchor_py],
        }
        times: dict[str, list[float]] = {k: [] for k in commands}
        stages: list[dict] = []
        for r in range(args.repeat):
            for name, cmd in commands.items():
                times[name].append(timed(cmd, env))
                print(f"  run {r + 1}/{args.repeat} {name:<12} {times[name][-1]:6.2f} s", flush=True)
            with open(os.path.join(tmp, "t2c", "report.json")) as f:
                stages.append(json.load(f)["timings"])

    med = {k: statistics.median(v) for k, v in times.items()}
    stage_med = {k: round(statistics.median(s[k] for s in stages), 3) for k in stages[0]}
    print(f"\nwhole processes, median of {args.repeat} (Llama folder: {args.layers} layers, hidden {args.hidden})")
    for k, v in med.items():
        print(f"  {k:<12} {v:6.2f} s   {v / med['anchor']:.2f}x the anchor")
    print(f"  t2c's stages (report.json): {stage_med}; the rest of its process is imports, loading and eager runs")
    doc = {
        "benchmark": "compile_time", "host": platform.node(), "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip(),
        "model": {"family": "llama", "layers": args.layers, "hidden": args.hidden, "input": "input_ids 1x128"},
        "seconds": times, "median_s": med, "ratio_to_anchor": {k: round(v / med["anchor"], 3) for k, v in med.items()},
        "t2c_stages_median_s": stage_med,
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"compile_time-{platform.node()}-{datetime.datetime.now():%Y%m%d-%H%M%S}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
