"""Decoding speed and cache memory by context length: t2c's with-past ONNX against eager transformers.

Causal LMs of one size (random weights, seed 0; hidden 256, 4 heads sharing 2 KV heads, 2
layers, vocab 1000 by default): Llama (full attention), Mistral (every layer a sliding window of
--window, so t2c's cache rolls) and `linear`, the same Llama compiled with
`-O1,linear-attention`, which decodes from a state of constant size (passes/linear_state.py).
Each is compiled once with `t2c.compile(..., with_past=True)`.
For each context length C, in the same run (each library with its default threads):

  t2c     the ONNX artifact on ONNX Runtime (CPU): the prompt of C tokens in one call, then
          --steps single-token steps feeding back the cache it returned
  torch.onnx  torch.onnx.export(dynamo=True) of the same with-past module (the cache as inputs and
          outputs, as Optimum's with-past exports), the same loop on ONNX Runtime
  eager   the transformers model with its own DynamicCache, the same prompt and steps

It reports the median milliseconds per decoded token, tokens per second, the prefill time (the
prompt as `t2c generate` feeds it: in one call, or PREFILL_CHUNK tokens a call for a decode state), and the
cache's bytes after the last step (the sum of the present tensors; for eager, its cache's
tensors), and the ratios torch.onnx / t2c and eager / t2c of the decode time. Windowed decode should keep its cache
flat in C; linear attention its cache and its time per token; full attention grows linearly in
both. `linear` has no torch.onnx column (the exporter has no linear attention: it would export
softmax attention, another function) and its eager column is the softmax Llama it came from.
Writes benchmarks/results/generation-<host>-<date>.json.

    .venv/bin/python benchmarks/generation.py [--contexts 512,1024,2048,4096,8192] [--steps 16] [--window 256] [--models llama,mistral,linear]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)
sys.path.insert(0, HERE)
from _results import header, write  # noqa: E402  (benchmarks/_results.py)


def build(family: str, hidden: int, layers: int, window: int, max_positions: int):
    import torch
    import transformers

    common = dict(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=max(hidden // 64, 1),
                  num_key_value_heads=max(hidden // 128, 1), intermediate_size=hidden * 4, vocab_size=1000,
                  max_position_embeddings=max_positions)
    torch.manual_seed(0)
    if family in ("llama", "linear"):
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    else:
        model = transformers.MistralForCausalLM(transformers.MistralConfig(**common, sliding_window=window))
    return model.eval()


def onnx_anchor(model, out: str):
    """torch.onnx.export(dynamo=True) of the same with-past module t2c compiles (Optimum's with-past
    interface: the cache as inputs and outputs), as `run(**inputs) -> {name: tensor}` on ONNX Runtime;
    None when it does not export."""
    import onnxruntime as ort
    import torch

    from anchors import torch_onnx_export
    from t2c.frontends.hf_past import present_names, with_past

    module, examples, dims, interface = with_past(model)
    path = os.path.join(out, "anchor.onnx")
    try:
        torch_onnx_export(module, examples, path, {n: list(d) for n, d in dims.items()})
    except Exception as e:  # noqa: BLE001 - the anchor failing is a result, not a crash
        print(f"  torch.onnx.export failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}")
        return None
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = ["logits", *present_names(interface["layers"])]

    def run(**inputs):
        outs = session.run(None, {k: v.numpy() for k, v in inputs.items()})
        return {n: torch.from_numpy(o) for n, o in zip(names, outs)}

    return run


def onnx_decode(run, graph, interface: dict, prompt, steps: int) -> dict:
    """The prompt as `generate` feeds it (one call; a decode state PREFILL_CHUNK tokens a call), then
    `steps` single tokens through `run` (an artifact with the cache interface of `graph`)."""
    import torch

    from t2c.generate import PREFILL_CHUNK, prefill, next_past, empty_cache, next_mask

    batch, length = prompt.shape
    past = empty_cache(graph, batch)
    mask = torch.ones(batch, length, dtype=torch.long)
    positions = torch.arange(length)[None].expand(batch, length)
    start = time.perf_counter()
    out, past = prefill(run, prompt, mask, positions, past, PREFILL_CHUNK if graph.states else length)
    times = [time.perf_counter() - start]
    for step in range(steps):
        ids = out["logits"][:, -1].argmax(-1)[:, None]
        mask = next_mask(mask, interface["rolling"], interface.get("sinks", 0))
        positions = positions[:, -1:] + 1
        start = time.perf_counter()
        out = run(input_ids=ids, attention_mask=mask, position_ids=positions, **past)
        times.append(time.perf_counter() - start)
        past = next_past(out, past)
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
    parser.add_argument("--models", default="llama,mistral,linear")
    parser.add_argument("--no-anchor", action="store_true", help="skip torch.onnx.export's with-past export")
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
            passes = "-O1,linear-attention" if family == "linear" else "-O1"
            compiled = t2c.compile(model, {"input_ids": ids}, passes=passes, out=out, with_past=True)
            compile_s = time.perf_counter() - start
            interface = compiled.report["with_past"]
            anchor = None if args.no_anchor or family == "linear" else onnx_anchor(model, out)
            rows[family] = []
            warm = torch.randint(0, 1000, (1, 8), generator=torch.Generator().manual_seed(1))
            for run in (compiled, anchor):  # first calls pay one-time setup
                if run is not None:
                    onnx_decode(run, compiled.graph, interface, warm, 2)
            eager_decode(model, warm, 2)
            for context in contexts:
                prompt = torch.randint(0, 1000, (1, context), generator=torch.Generator().manual_seed(context))
                ours, eager = onnx_decode(compiled, compiled.graph, interface, prompt, args.steps), eager_decode(model, prompt, args.steps)
                theirs = onnx_decode(anchor, compiled.graph, interface, prompt, args.steps) if anchor is not None else None
                row = {"context": context, "t2c": ours, "eager": eager, "torch_onnx": theirs,
                       "eager_over_t2c": eager["decode_ms"] / ours["decode_ms"],
                       "torch_onnx_over_t2c": theirs["decode_ms"] / ours["decode_ms"] if theirs else None,
                       "compile_s": compile_s, "rolling": interface["rolling"]}
                rows[family].append(row)
                anchor_text = (f"torch.onnx {theirs['decode_ms']:7.2f} ms, cache {theirs['cache_bytes'] / 2**20:6.2f} MiB ({row['torch_onnx_over_t2c']:.2f}x)"
                               if theirs else "torch.onnx -")
                print(f"{family:<8} ctx {context:>5}: t2c {ours['decode_ms']:7.2f} ms/token ({1000 / ours['decode_ms']:6.0f} tok/s), "
                      f"cache {ours['cache_bytes'] / 2**20:6.2f} MiB, prefill {ours['prefill_s']:5.2f} s | {anchor_text} | "
                      f"eager {eager['decode_ms']:7.2f} ms, cache {eager['cache_bytes'] / 2**20:6.2f} MiB ({row['eager_over_t2c']:.2f}x)",
                      flush=True)
    doc = {
        **header("generation"),
        "hidden": args.hidden, "layers": args.layers, "window": args.window, "steps": args.steps, "threads": "each library's default", "models": rows,
    }
    write(doc, args.out)


if __name__ == "__main__":
    main()
