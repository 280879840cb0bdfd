"""Peak memory of compiling a model whose float32 weights exceed 2 GiB (ONNX's protobuf limit).

A Hugging Face Llama folder (config.json + model.safetensors, random weights, seed 0; hidden
2048, 9 layers, vocab 32000 by default: 2.2 GiB of float32 weights) is built in a child process
of its own, then `t2c compile FOLDER -o OUT` runs as another child (PYTHONPATH=repo root,
HF_HUB_OFFLINE=1), so neither building the model nor this script counts. Its peak RSS is the
kernel's own figure (ru_maxrss from wait4); its RSS is also sampled every 0.1 s and each sample
tagged with the stage t2c was in (its progress lines, read from a pseudo-terminal), so a peak can
be traced to a stage. It prints and writes to benchmarks/results/large_model-<host>-<date>.json:
the weights' bytes, the peak RSS and its ratio to the weights (goal: <= 1.5), the wall time,
report.json's stage timings, whether validation passed and the files written (model.onnx must be
small: the weights belong in model.onnx.data).

    .venv/bin/python benchmarks/large_model.py [--hidden 2048] [--layers 9] [--rss-limit-gib 11.5]

A compile whose RSS passes --rss-limit-gib is killed (a shared machine) and reported as such.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import pty
import re
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _proc import rss_bytes  # noqa: E402  (benchmarks/_proc.py)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
PY = sys.executable
GIB = 1 << 30

BUILD_SCRIPT = """
import json, sys, torch, transformers
hidden, layers, vocab, path = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
cfg = transformers.LlamaConfig(hidden_size=hidden, intermediate_size=hidden * 11 // 4, num_hidden_layers=layers,
                               num_attention_heads=hidden // 64, num_key_value_heads=hidden // 64, vocab_size=vocab,
                               tie_word_embeddings=False)
torch.manual_seed(0)
model = transformers.LlamaForCausalLM(cfg).eval()
n = sum(p.numel() for p in model.parameters())
b = sum(p.numel() * p.element_size() for p in model.parameters())
model.save_pretrained(path)
print(json.dumps({"parameters": n, "bytes": b}))
"""


def build_folder(path: str, hidden: int, layers: int, vocab: int, env: dict) -> dict:
    proc = subprocess.run([PY, "-c", BUILD_SCRIPT, str(hidden), str(layers), str(vocab), path], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(f"building the model failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_measured(cmd: list[str], env: dict, limit: int) -> dict:
    """Run `cmd`; its exit code, wall time, ru_maxrss, RSS samples tagged by stage, and output."""
    master, slave = pty.openpty()  # t2c prints its stages only to a terminal
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=slave, env=env, cwd=ROOT, text=True)
    os.close(slave)
    stage = ["load"]
    stage_log: list[tuple[float, str]] = [(0.0, "load")]
    err_chunks: list[str] = []

    def read_stages() -> None:
        buf = ""
        while True:
            try:
                data = os.read(master, 4096).decode(errors="replace")
            except OSError:
                return
            if not data:
                return
            err_chunks.append(data)
            buf += data
            *lines, buf = re.split(r"[\r\n]", buf)
            for line in lines:
                m = re.match(r"\[(\w+)\]", line.strip())
                if m and m.group(1) != stage[0]:
                    stage[0] = m.group(1)
                    stage_log.append((round(time.perf_counter() - start, 2), stage[0]))

    reader = threading.Thread(target=read_stages, daemon=True)
    reader.start()
    out_chunks: list[str] = []
    threading.Thread(target=lambda: out_chunks.append(proc.stdout.read()), daemon=True).start()
    samples: list[tuple[float, int, str]] = []
    killed = False
    peak_by_stage: dict[str, int] = {}
    result = None
    while result is None:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            result = (status, usage)
            break
        rss = rss_bytes(proc.pid)
        samples.append((round(time.perf_counter() - start, 2), rss, stage[0]))
        peak_by_stage[stage[0]] = max(peak_by_stage.get(stage[0], 0), rss)
        if rss > limit and not killed:
            proc.kill()
            killed = True
        time.sleep(0.1)
    wall = time.perf_counter() - start
    status, usage = result
    proc.returncode = os.waitstatus_to_exitcode(status)
    reader.join(timeout=2)
    os.close(master)
    time.sleep(0.2)
    return {"returncode": proc.returncode, "wall_s": round(wall, 2), "peak_rss": usage.ru_maxrss * 1024, "killed_over_limit": killed,
            "peak_rss_by_stage": peak_by_stage, "stages_at_s": stage_log, "samples": samples[::5],
            "stdout": "".join(out_chunks)[-2000:], "stderr": "".join(err_chunks)[-3000:]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hidden", type=int, default=2048)
    ap.add_argument("--layers", type=int, default=9)
    ap.add_argument("--vocab", type=int, default=32000)
    ap.add_argument("--rss-limit-gib", type=float, default=11.5, help="kill the compile past this RSS (a shared machine)")
    ap.add_argument("--label", default="", help="a note stored with the result (e.g. baseline)")
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "PYTHONPATH": ROOT}
    with tempfile.TemporaryDirectory(prefix="t2c-large-model-") as tmp:
        folder, out = os.path.join(tmp, "llama"), os.path.join(tmp, "out")
        t0 = time.perf_counter()
        built = build_folder(folder, args.hidden, args.layers, args.vocab, env)
        weights = built["bytes"]
        print(f"Llama folder: hidden {args.hidden}, {args.layers} layers, vocab {args.vocab}: {built['parameters']:,} parameters, "
              f"{weights:,} bytes = {weights / GIB:.3f} GiB of float32 weights (built in {time.perf_counter() - t0:.0f} s)", flush=True)
        if weights <= 2 * GIB:
            print("  note: not over 2 GiB; ONNX's protobuf limit is not exercised")
        run = run_measured([PY, "-m", "t2c.cli", "compile", folder, "-o", out], env, int(args.rss_limit_gib * GIB))
        files = {name: os.path.getsize(os.path.join(out, name)) for name in sorted(os.listdir(out))} if os.path.isdir(out) else {}
        report = {}
        if os.path.isfile(os.path.join(out, "report.json")):
            with open(os.path.join(out, "report.json")) as f:
                report = json.load(f)
    validation = report.get("validation", {})
    ratio = run["peak_rss"] / weights
    print(f"t2c compile: exit {run['returncode']}{' (killed: RSS over the limit)' if run['killed_over_limit'] else ''}, wall {run['wall_s']:.1f} s")
    print(f"  peak RSS {run['peak_rss'] / GIB:.2f} GiB = {ratio:.2f}x the weights (goal <= 1.5x)")
    print("  peak RSS by stage (sampled): " + ", ".join(f"{k} {v / GIB:.2f} GiB" for k, v in run["peak_rss_by_stage"].items()))
    print(f"  stage timings (report.json): {report.get('timings')}")
    print(f"  validation ok: {validation.get('ok')}  {validation.get('summary') or ''}")
    print(f"  files: {files}")
    if run["returncode"] != 0:
        print(run["stderr"][-1500:])
    doc = {
        "benchmark": "large_model", "label": args.label, "host": platform.node(), "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip(),
        "model": {"family": "llama", "hidden": args.hidden, "layers": args.layers, "vocab": args.vocab, **built},
        "weights_gib": round(weights / GIB, 3), "peak_rss_bytes": run["peak_rss"], "peak_rss_gib": round(run["peak_rss"] / GIB, 3),
        "peak_rss_over_weights": round(ratio, 3), "wall_s": run["wall_s"], "returncode": run["returncode"],
        "killed_over_limit": run["killed_over_limit"], "rss_limit_gib": args.rss_limit_gib,
        "peak_rss_gib_by_stage": {k: round(v / GIB, 3) for k, v in run["peak_rss_by_stage"].items()},
        "stages_at_s": run["stages_at_s"], "rss_samples_s_bytes_stage": run["samples"],
        "timings": report.get("timings"), "validation_ok": validation.get("ok"), "validation_summary": validation.get("summary"),
        "files": files,
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"large_model-{platform.node()}-{datetime.datetime.now():%Y%m%d-%H%M%S}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
