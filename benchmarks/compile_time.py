"""Compile time as a user meets it: whole processes, t2c against torch.onnx.export, same model.

The models are the zoo's families (gpt2, llama, mistral, bert, mixtral) at 2 layers, hidden 256,
saved as Hugging Face folders (config.json + model.safetensors, random weights, seed 0), as a user
would have them on disk. Each repetition runs, for each model, in a fresh Python process each and in
turn (so machine noise falls on all three alike):

  t2c            `t2c compile DIR -o OUT`                  (trace, passes, ONNX, validation)
  t2c-novalid    `t2c compile DIR -o OUT --no-validate`
  anchor         a script that loads the folder with transformers, builds the inputs t2c compiled
                 with (names and shape from t2c's report: token ids, a mask of ones, token types of
                 zeros) and calls torch.onnx.export(dynamo=True) (benchmarks/anchors.py)

  floor          a script that imports torch and transformers, loads the folder and runs the model at
                 the two shapes validation uses: what any validated compile pays before its own work

It prints the median wall time of each and the ratios to the anchor, plus t2c's own stage timings
(report.json), and writes benchmarks/results/compile_time-<host>-<date>.json. Ratios from the same
run only: these machines are shared.

    .venv/bin/python benchmarks/compile_time.py [--models llama,bert] [--repeat 3] [--hidden 256] [--layers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

from _results import header, write  # benchmarks/_results.py (the script's folder is on sys.path)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
T2C = [PY, "-m", "t2c.cli"]

ANCHOR_SCRIPT = """
import sys, torch, transformers
sys.path.insert(0, {here!r})
from anchors import torch_onnx_export
model = getattr(transformers, {model_class!r}).from_pretrained({folder!r}).eval()
gen = torch.Generator().manual_seed(0)
inputs = {{}}
for name, shape in {inputs!r}.items():
    if name == "input_ids":
        inputs[name] = torch.randint(0, model.config.vocab_size, shape, generator=gen)
    else:  # attention_mask: ones; token_type_ids: zeros
        inputs[name] = torch.ones(shape, dtype=torch.long) if name == "attention_mask" else torch.zeros(shape, dtype=torch.long)
torch_onnx_export(model, inputs, {out!r})
"""

# The floor under any validated compile: import torch and transformers, load the folder, run the
# model at the two shapes validation compares (t2c's traced shape and a second one). Both t2c and
# the anchor pay it; only what lies above it is either tool's own.
FLOOR_SCRIPT = """
import torch, transformers
model = getattr(transformers, {model_class!r}).from_pretrained({folder!r}).eval()
with torch.no_grad():
    for shape in ({shape!r}, (2, 193)):
        model(**{{name: torch.ones(shape, dtype=torch.long) for name in {names!r}}})
"""

# family -> (config class, model class, extra config fields); sizes from --hidden / --layers
FAMILIES = {
    "gpt2": ("GPT2Config", "GPT2LMHeadModel", {}),
    "llama": ("LlamaConfig", "LlamaForCausalLM", {}),
    "mistral": ("MistralConfig", "MistralForCausalLM", {"sliding_window": 64}),
    "bert": ("BertConfig", "BertModel", {}),
    "mixtral": ("MixtralConfig", "MixtralForCausalLM", {"num_local_experts": 4, "num_experts_per_tok": 2}),
}


def build_folder(path: str, family: str, hidden: int, layers: int) -> str:
    """Save the family's model as a Hugging Face folder; returns its model class name."""
    import torch
    import transformers

    config_class, model_class, extra = FAMILIES[family]
    heads = max(hidden // 32, 1)
    sizes = ({"n_embd": hidden, "n_layer": layers, "n_head": heads, "n_positions": 512} if family == "gpt2" else
             {"hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads, "intermediate_size": hidden * 4})
    if family in ("llama", "mistral", "mixtral"):
        sizes["num_key_value_heads"] = max(heads // 2, 1)
    cfg = getattr(transformers, config_class)(vocab_size=1000, **sizes, **extra)
    torch.manual_seed(0)
    getattr(transformers, model_class)(cfg).eval().save_pretrained(path)
    return model_class


def compiled_inputs(report: dict) -> dict[str, tuple[int, ...]]:
    """The traced example's input names and shapes, from report.json's first validation shape."""
    label = report["validation"]["artifact_vs_ir"][0]["shape"]  # "input_ids=1x128, attention_mask=1x128"
    return {name: tuple(int(d) for d in dims.split("x")) for name, dims in (part.split("=") for part in label.split(", "))}


def timed(cmd: list[str], env: dict, may_fail: bool = False) -> float | None:
    """Wall seconds of the process; None when it failed and `may_fail` (torch.onnx.export cannot
    export MoE experts: recorded, not hidden)."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        if may_fail:
            print(f"  failed ({proc.returncode}): {proc.stderr.strip().splitlines()[-1][:200] if proc.stderr.strip() else ''}")
            return None
        raise SystemExit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr[-2000:]}")
    return seconds


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", default=",".join(FAMILIES))
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ROOT}
    rows = {}
    with tempfile.TemporaryDirectory(prefix="t2c-compile-time-") as tmp:
        for family in args.models.split(","):
            folder = os.path.join(tmp, family)
            model_class = build_folder(folder, family, args.hidden, args.layers)
            out = os.path.join(tmp, f"{family}-t2c")
            commands = {
                "t2c": T2C + ["compile", folder, "-o", out],
                "t2c-novalid": T2C + ["compile", folder, "-o", os.path.join(tmp, f"{family}-nv"), "--no-validate"],
            }
            times: dict[str, list[float]] = {"t2c": [], "t2c-novalid": [], "anchor": [], "floor": []}
            stages: list[dict] = []
            for r in range(args.repeat):
                for name, cmd in commands.items():
                    times[name].append(timed(cmd, env))
                with open(os.path.join(out, "report.json")) as f:
                    report = json.load(f)
                stages.append(report["timings"])
                anchor_py = os.path.join(tmp, f"{family}-anchor.py")
                with open(anchor_py, "w") as f:
                    f.write(ANCHOR_SCRIPT.format(here=HERE, model_class=model_class, folder=folder, inputs=compiled_inputs(report),
                                                 out=os.path.join(tmp, f"{family}-anchor.onnx")))
                times["anchor"].append(timed([PY, anchor_py], env, may_fail=True))
                floor_py = os.path.join(tmp, f"{family}-floor.py")
                inputs = compiled_inputs(report)
                with open(floor_py, "w") as f:
                    f.write(FLOOR_SCRIPT.format(model_class=model_class, folder=folder, shape=next(iter(inputs.values())), names=list(inputs)))
                times["floor"].append(timed([PY, floor_py], env))
                print(f"  {family} run {r + 1}/{args.repeat}: " + ", ".join(
                    f"{k} {v[-1]:.2f} s" if v[-1] is not None else f"{k} failed" for k, v in times.items()), flush=True)
            med = {k: statistics.median(v) if None not in v else None for k, v in times.items()}
            ratio = {k: round(v / med["anchor"], 3) if med["anchor"] and v is not None else None for k, v in med.items()}
            rows[family] = {"seconds": times, "median_s": med, "ratio_to_anchor": ratio,
                            "t2c_stages_median_s": {k: round(statistics.median(s[k] for s in stages), 3) for k in stages[0]},
                            "inputs": compiled_inputs(report)}

    print(f"\nwhole processes, median of {args.repeat} ({args.layers} layers, hidden {args.hidden}); ratio = time / torch.onnx.export's")
    print(f"{'model':<9} {'t2c':>8} {'ratio':>6} {'no-valid':>9} {'ratio':>6} {'anchor':>8} {'floor':>7} {'ratio':>6}")
    for family, row in rows.items():
        m, r = row["median_s"], row["ratio_to_anchor"]
        anchor = f"{m['anchor']:8.2f}" if m["anchor"] is not None else "  failed"
        ratios = [f"{r[k]:6.2f}" if r[k] is not None else "     -" for k in ("t2c", "t2c-novalid", "floor")]
        print(f"{family:<9} {m['t2c']:8.2f} {ratios[0]} {m['t2c-novalid']:9.2f} {ratios[1]} {anchor} {m['floor']:7.2f} {ratios[2]}")
    print("floor: import torch + transformers, load the folder, run the model at both validation shapes (what any validated compile pays)")
    doc = {
        **header("compile_time"),
        "layers": args.layers, "hidden": args.hidden, "repeat": args.repeat, "models": rows,
    }
    write(doc, args.out)


if __name__ == "__main__":
    main()
