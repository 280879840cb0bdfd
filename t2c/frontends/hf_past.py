"""Causal language models with their KV cache as graph inputs and outputs (`t2c compile --with-past`).

One graph serves prefill and decode (past length 0 for the prompt, then the cache it returned):
the weights exist once in the file, and every dim that differs between the two (batch, new
tokens, past length) is dynamic anyway. Its interface, Optimum's with-past convention in
t2c's names:

    inputs   input_ids       [batch, seq]          the new tokens
             attention_mask  [batch, past + seq]   1 = a real token, 0 = padding, over cache + new
             position_ids    [batch, seq]          each new token's position in its own sequence
             past_key_<i>    [batch, kv_heads, past, head_dim]   per layer i (any head dims)
             past_value_<i>  [batch, kv_heads, past, v_head_dim]
    outputs  logits          [batch, seq, vocab]
             present_key_<i>, present_value_<i>   the cache after these tokens (past + seq long)

Per-sequence lengths come from attention_mask and position_ids, so prompts of different lengths
decode together left-padded (t2c/generate.py does so). The model is traced through transformers'
own cache boundary: its forward gets a `DynamicCache` filled from the past tensors and returns the
cache it updated, so positions, masks and the cache update are the model's own code. Every layer
caches through a plain `DynamicLayer` (a growing concatenation the graph can express); when
every layer of the model's own cache is a sliding window of one width W (Mistral), the presents
keep only the last W - 1 positions, as transformers' sliding layers do (zeros in front while fewer
were seen): a rolling cache, O(W) memory per layer however long the generation. The next step's
attention_mask then spans those W - 1 positions (0 on the zeros) and the new tokens (generate.py
rolls it along), positions go on in position_ids, and
the model's window mask, computed in the cache's own frame, sees what it saw before (relative
distances are unchanged). t2c's `window{size=W,global=G}` rolls the cache the same way after
keeping its first G positions for good (`cache_window`): the global keys of the frame.

Models whose cache is not per-layer keys and values (state-space and hybrid layers, encoder-
decoders' cross-attention caches) are refused with a one-line error.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from ..errors import UserError
from .loaders import LoadedModel

# Example sizes of the trace; both >= 2 so torch.export keeps them dynamic.
EXAMPLE_PAST = 7
EXAMPLE_SEQ = 5
WITH_PAST_HINT = "--with-past needs a Hugging Face causal language model whose cache is per-layer keys and values"


def past_names(layers: int) -> list[str]:
    return [n for i in range(layers) for n in (f"past_key_{i}", f"past_value_{i}")]


def present_names(layers: int) -> list[str]:
    return [n for i in range(layers) for n in (f"present_key_{i}", f"present_value_{i}")]


class WithPast(torch.nn.Module):
    """`model` called with a cache made of tensors; returns logits and the updated cache as tensors."""

    def __init__(self, model: torch.nn.Module, layers: int, keep: int = 0, sinks: int = 0):
        super().__init__()
        self.model = model
        self.layers = layers
        self.keep = keep  # > 0: the cache rolls, the present keeps the last `keep` positions
        self.sinks = sinks  # ... after the first `sinks` positions, which it keeps for good (global tokens)

    def forward(self, input_ids, attention_mask, position_ids, **past: torch.Tensor) -> dict[str, torch.Tensor]:
        from transformers import DynamicCache

        cache = DynamicCache()  # no config: every layer a plain DynamicLayer (see the module docstring)
        for i in range(self.layers):
            cache.update(past[f"past_key_{i}"], past[f"past_value_{i}"], i)
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=cache, use_cache=True, return_dict=True)
        result = {"logits": out.logits}
        for i, layer in enumerate(out.past_key_values.layers):
            # a rolling cache: the last window - 1 positions, as transformers' DynamicSlidingWindowLayer keeps
            result[f"present_key_{i}"] = cache_window(layer.keys, 2, self.keep, self.sinks)
            result[f"present_value_{i}"] = cache_window(layer.values, 2, self.keep, self.sinks)
        return result


def cache_window(x: torch.Tensor, dim: int, keep: int, sinks: int = 0) -> torch.Tensor:
    """What a rolling cache keeps of x along `dim` (the frame: cache, then new tokens): the first
    `sinks` positions, then the last `keep` of the others, zeros where fewer were seen; always
    `sinks + keep` long (x itself when keep is 0). t2c/generate.py rolls attention_mask with it.

    Fixed length, built from concatenations with zeros: `x[:, :, -keep:]` or `x[:, :, sinks:]` would
    trace as slices under guards (S >= keep, S >= sinks) that torch.export takes from its example,
    wrong for the shorter caches of the first steps. A position both among the first `sinks` and the
    last `keep` (a short frame) is kept once, as a sink: zeroed in the recent part, where
    attention_mask is zeroed alike."""
    if not keep:
        return x

    def zeros(n: int) -> torch.Tensor:
        shape = list(x.shape)
        shape[dim] = n
        return x.new_zeros(shape)

    length = x.shape[dim]
    recent = x
    if sinks:
        view = [1] * x.dim()
        view[dim] = length
        recent = x * (torch.arange(length, device=x.device) >= sinks).view(view).to(x.dtype)
    last = torch.cat([zeros(keep), recent], dim).narrow(dim, length, keep)
    if not sinks:
        return last
    return torch.cat([torch.cat([x, zeros(sinks)], dim).narrow(dim, 0, sinks), last], dim)


def rolling_keep(model: torch.nn.Module) -> int:
    """Positions a rolling cache keeps (window - 1) when every layer of the model's own cache is a
    sliding window of one width (Mistral), else 0: the cache keeps every position.

    A model mixing sliding and full layers keeps every position in all of them: one attention_mask
    spans the cache and the new tokens, so every layer's cache must be as long."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicSlidingWindowLayer

    try:
        layers = DynamicCache(config=model.config).layers
    except Exception:  # noqa: BLE001 - a config transformers' cache cannot read: no rolling
        return 0
    windows = {getattr(layer, "sliding_window", None) if isinstance(layer, DynamicSlidingWindowLayer) else None for layer in layers}
    if len(windows) != 1 or None in windows:
        return 0
    (window,) = windows
    return int(window) - 1 if isinstance(window, int) and window > 1 else 0


def cache_shapes(model: torch.nn.Module) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Per layer, the (keys, values) shapes after two tokens of batch 1; refuses other caches."""
    from transformers import Cache

    ids = torch.zeros(1, 2, dtype=torch.long)
    try:
        with torch.no_grad():
            out = model(input_ids=ids, use_cache=True, return_dict=True)
    except Exception as e:  # noqa: BLE001 - the model's own error, in one line
        raise UserError(f"{WITH_PAST_HINT}; running it with use_cache=True failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from e
    cache = getattr(out, "past_key_values", None)
    if not isinstance(cache, Cache) or getattr(out, "logits", None) is None:
        raise UserError(f"{WITH_PAST_HINT}; {type(model).__name__} returned no logits and Cache")
    shapes = []
    for i, layer in enumerate(getattr(cache, "layers", [])):
        keys, values = getattr(layer, "keys", None), getattr(layer, "values", None)
        if not (isinstance(keys, torch.Tensor) and isinstance(values, torch.Tensor) and keys.dim() == values.dim() == 4
                and keys.shape[2] == values.shape[2] == 2):
            raise UserError(f"{WITH_PAST_HINT}; layer {i} caches {type(layer).__name__}, not keys and values per position")
        shapes.append((tuple(keys.shape), tuple(values.shape)))
    if not shapes:
        raise UserError(f"{WITH_PAST_HINT}; {type(model).__name__} cached nothing")
    return shapes


def with_past(model: torch.nn.Module, batch: int = 2, window: int = 0, sinks: int = 0) -> tuple[WithPast, dict[str, torch.Tensor], dict[str, dict[int, str]], dict[str, Any]]:
    """(module, example inputs, dynamic dims, interface description for report.json); `window` > 1:
    t2c's window pass will restrict attention to W keys, so the cache keeps W - 1 as well, after
    the first `sinks` positions (the pass's global tokens)."""
    shapes = cache_shapes(model)
    layers = len(shapes)
    keeps = [k for k in (rolling_keep(model), window - 1) if k > 0]  # the model's window and t2c's: the narrower
    keep = min(keeps) if keeps else 0
    sinks = sinks if keep else 0
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 2) or 2)
    gen = torch.Generator().manual_seed(0)
    past, seq = EXAMPLE_PAST, EXAMPLE_SEQ
    mask = torch.ones(batch, past + seq, dtype=torch.long)
    mask[-1, :2] = 0  # the last sequence left-padded by two, so validation exercises padding
    positions = (mask.cumsum(-1) - 1).clamp(min=0)[:, past:].clone()  # not a view: torch.export guards on a view's base
    examples: dict[str, torch.Tensor] = {
        "input_ids": torch.randint(0, vocab, (batch, seq), generator=gen),
        "attention_mask": mask,
        "position_ids": positions,
    }
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    for i, (k, v) in enumerate(shapes):
        examples[f"past_key_{i}"] = torch.randn(batch, k[1], past, k[3], generator=gen).to(dtype)
        examples[f"past_value_{i}"] = torch.randn(batch, v[1], past, v[3], generator=gen).to(dtype)
    dims = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "past+seq"},
            "position_ids": {0: "batch", 1: "seq"}}
    dims.update({name: {0: "batch", 2: "past"} for name in past_names(layers)})
    config = getattr(model, "config", None)
    interface = {
        "layers": layers,
        "cache": [{"key": [k[1], k[3]], "value": [v[1], v[3]]} for k, v in shapes],  # [heads, head_dim] per layer
        "rolling": keep,  # > 0: present_* keep the last `rolling` positions (a sliding window's cache)
        "sinks": sinks,  # ... after the first `sinks` positions (global tokens), kept for good
        "eos_token_id": getattr(getattr(model, "generation_config", None), "eos_token_id", getattr(config, "eos_token_id", None)),
        "pad_token_id": getattr(getattr(model, "generation_config", None), "pad_token_id", getattr(config, "pad_token_id", None)),
    }
    return WithPast(model, layers, keep, sinks).eval(), examples, dims, interface


def pipeline_window(pipeline: Any) -> tuple[int, int]:
    """(W, G) of the `window{size=W,global=G}` passes (sliding) in the pipeline, else (0, 0): such a
    window rolls the cache as a model's own would, keeping the first G positions for good (the pass
    puts the window and the global keys into the cache's mask). Several: the narrowest window and
    the fewest global tokens (a key is then global to every one of them)."""
    windows = [p for p in getattr(pipeline, "passes", ()) if getattr(p, "name", "") == "window" and getattr(p, "kind", "") == "sliding"]
    if not windows:
        return 0, 0
    return min(p.size for p in windows), min(p.global_tokens for p in windows)


def loaded_with_past(loaded: LoadedModel, pipeline: Any = None) -> LoadedModel:
    """The loaded model as its with-past graph's module, examples and dims (`--with-past`);
    a sliding `window{size=W,global=G}` in `pipeline` rolls the cache at W - 1 positions after G."""
    from .hf import is_hf_model

    if not is_hf_model(loaded.module):
        raise UserError(f"{WITH_PAST_HINT}; {loaded.source} is a {type(loaded.module).__name__}")
    batch = next((int(t.shape[0]) for t in loaded.example_inputs.values() if isinstance(t, torch.Tensor) and t.dim() >= 1), 2)
    module, examples, dims, interface = with_past(loaded.module.eval(), max(batch, 2), *pipeline_window(pipeline))
    return dataclasses.replace(loaded, module=module, example_inputs=examples, dynamic_dims=dims, with_past=interface)
