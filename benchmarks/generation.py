"""Decoding speed and cache memory by context length: t2c's with-past ONNX against eager transformers.

Two causal LMs of one size (random weights, seed 0; hidden 256, 4 heads sharing 2 KV heads, 2
layers, vocab 1000 by default): Llama (full attention) and Mistral (every layer a sliding window of
--window, so t2c's cache rolls). Each is compiled once with `t2c.compile(..., with_past=True)`.
For each context length C, in the same run (each library with its default threads):

  t2c     the ONNX artifact on ONNX Runtime (CPU): the prompt of C tokens in one call, then
          --steps single-token steps feeding back the cache it returned
  eager   the transformers model with its own DynamicCache, the same prompt and steps

It reports the median milliseconds per decoded token, tokens per second, the prefill time, and the
cache's bytes after the last step (the sum of the present tensors; for eager, its cache's
tensors), and the ratio eager / t2c of the decode time. Windowed decode should keep its cache
flat in C; full attention grows linearly. Writes benchmarks/results/generation-<host>-<date>.json.

    .venv/bin/python benchmarks/generation.py [--contexts 512,1024,2048,4096,8192] [--steps 16] [--window 256]

Not measured yet (issue 16): linear-attention decode (t2c cannot carry that rewrite into the
cache yet) and an Optimum-style with-past export by torch.onnx.
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
sys.path.insert(0, ROOT)


def build(family: str, hidden: int, layers: int, window: int, max_positions: int):
    import torch
    import transformers

    common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1),
                  num_key_value_heads=max(hidden // 128, 1), intermediate_size=hidden * 4, vocab_size=1000,
                  max_position_embeddings=max_positions)
    torch.manual_seed(0)
    if family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        model = transformers.MistralForCausalLM(transformers.MistralConfig(**common, sliding_window=window))
    return model.eval()


def t2c_decode(compiled, prompt, steps: int) -> dict:
    import torch

    interface = compiled.report["with_past"]
    batch, length = prompt.shape
    types = {v.name: v.type for v in compiled.graph.inputs}
    past = {f"past_{kv}_{i}": torch.zeros(batch, layer[kv][0], 0, layer[kv][1], dtype=types[f"past_{kv}_{i}"].dtype.torch)
            for i, layer in enumerate(interface["cache"]) for kv in ("key", "value")}
    mask = torch.ones(batch, length, dtype=torch.long)
    positions = torch.arange(length)[None].expand(batch, length)
    ids, times = prompt, []
    for step in range(steps + 1):
        start = time.perf_counter()
        out = compiled(input_ids=ids, attention_mask=mask, position_ids=positions, **past)
        times.append(time.perf_counter() - start)
        past = {f"past_{kv}_{i}": out[f"present_{kv}_{i}"] for i in range(interface["layers"]) for kv in ("key", "value")}
        cached = past["past_key_0"].shape[2]
        ids = out["logits"][:, -1].argmax(-1)[:, None]
        mask = torch.cat([torch.zeros(batch, max(0, cached - mask.shape[1]), dtype=torch.long), mask,
                          torch.ones(batch, 1, dtype=torch.long)], dim=1)[:, -(cached + 1):]
        positions = positions[:, -1:] + 1
    return {"prefill_s": times[0], "decode_ms": 1000 * statistics.median(times[1:]),
            "cache_bytes": sum(t.numel() * t.element_size() for t in past.values())}


def eager_decode(model, prompt, steps: int) -> dict:
    import torch

    times = []
    with torch.no_grad():
        start = time.perf_counter()
        out = model(input_ids=prompt, use_cache=True)
        times.append(time.perf_counter() - start)
        cache = out.past_key_values
        for _ in range(steps):
            ids = out.logits[:, -1].argmax(-1)[:, None]
            start = time.perf_counter()
            out = model(input_ids=ids, past_key_values=cache, use_cache=True)
            times.append(time.perf_counter() - start)
            cache = out.past_key_values
    tensors = [t for layer in cache.layers for t in (layer.keys, layer.values)]
    return {"prefill_s": times[0], "decode_ms": 1000 * statistics.median(times[1:]),
            "cache_bytes": sum(t.numel() * t.element_size() for t in tensors)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--contexts", default="512,1024,2048,4096,8192")
    parser.add_argument("--steps", type=int, default=16)
    parser.add_argument("--hidden", type=int, default=256)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--models", default="llama,mistral")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()

    import torch

    import t2c

    contexts = [int(c) for c in args.contexts.split(",")]
    rows: dict[str, list[dict]] = {}
    for family in args.models.split(","):
        model = build(family, args.hidden, args.layers, args.window, max(contexts) + args.steps + 8)
        ids = torch.randint(0, 1000, (1, 16), generator=torch.Generator().manual_seed(0))
        with tempfile.TemporaryDirectory() as out:
            start = time.perf_counter()
            compiled = t2c.compile(model, {"input_ids": ids}, out=out, with_past=True)
            compile_s = time.perf_counter() - start
            rows[family] = []
            warm = torch.randint(0, 1000, (1, 8), generator=torch.Generator().manual_seed(1))
            t2c_decode(compiled, warm, 2), eager_decode(model, warm, 2)  # first calls pay one-time setup
            for context in contexts:
                prompt = torch.randint(0, 1000, (1, context), generator=torch.Generator().manual_seed(context))
                ours, eager = t2c_decode(compiled, prompt, args.steps), eager_decode(model, prompt, args.steps)
                row = {"context": context, "t2c": ours, "eager": eager, "decode_speedup": eager["decode_ms"] / ours["decode_ms"],
                       "compile_s": compile_s, "rolling": compiled.report["with_past"]["rolling"]}
                rows[family].append(row)
                print(f"{family:<8} ctx {context:>5}: t2c {ours['decode_ms']:7.2f} ms/token ({1000 / ours['decode_ms']:7.1f} tok/s), "
                      f"cache {ours['cache_bytes'] / 2**20:7.2f} MiB, prefill {ours['prefill_s']:6.2f} s | eager {eager['decode_ms']:7.2f} ms/token, "
                      f"cache {eager['cache_bytes'] / 2**20:7.2f} MiB, prefill {eager['prefill_s']:6.2f} s | eager/t2c {row['decode_speedup']:.2f}x",
                      flush=True)
    doc = {
        "benchmark": "generation", "host": platform.node(), "python": platform.python_version(),
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "commit": subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip(),
        "hidden": args.hidden, "layers": args.layers, "window": args.window, "steps": args.steps, "threads": "each library's default", "models": rows,
    }
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"generation-{platform.node()}-{datetime.datetime.now():%Y%m%d-%H%M%S}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
