"""Greedy generation from a `--with-past` artifact (`t2c generate`, `CompiledModel.generate`).

The loop is Hugging Face `generate`'s greedy search over the artifact's cache interface
(t2c/frontends/hf_past.py): prompts left-padded to one length, `attention_mask` 0 on the
padding, each token's position counted within its own sequence (the mask's running sum), the
prompt run once with an empty cache (past length 0), then one token per step with the cache
the previous step returned. A sequence that emits an end-of-sequence id is done; its later
steps still run (the batch decodes together) and are dropped.
"""

from __future__ import annotations

from typing import Any

import torch

from .errors import UserError

COMPILE_HINT = "compile it with `t2c compile MODEL --with-past -o OUT`"
PREFILL_CHUNK = 256  # prompt tokens per call for a decode-state artifact


def _prompts(prompts: Any) -> tuple[list[list[int]], bool]:
    """(sequences, whether one sequence was given) from ids, a list of id lists or a 2-D tensor."""
    if isinstance(prompts, torch.Tensor):
        prompts = prompts.tolist()
    prompts = list(prompts)
    single = bool(prompts) and not isinstance(prompts[0], (list, tuple, torch.Tensor))
    sequences = [prompts] if single else [list(p.tolist() if isinstance(p, torch.Tensor) else p) for p in prompts]
    if not sequences or any(not s for s in sequences):
        raise UserError("every prompt needs at least one token id")
    for s in sequences:
        if any(not isinstance(t, int) or isinstance(t, bool) or t < 0 for t in s):
            raise UserError(f"prompt ids must be non-negative integers, got {s}")
    return sequences, single


def _eos_ids(value: Any) -> set[int]:
    if value is None:
        return set()
    return {int(value)} if isinstance(value, int) else {int(v) for v in value}


def generate(compiled: Any, prompts: Any, max_new_tokens: int, *, eos_token_id: Any = "config") -> list:
    """Greedy ids after each prompt from `compiled` (a `CompiledModel` of a with-past compile)."""
    interface = compiled.report.get("with_past")
    if not interface:
        raise UserError(f"{compiled.out_dir} was compiled without a KV cache; {COMPILE_HINT}")
    if max_new_tokens < 0:
        raise UserError(f"--max-new-tokens must be >= 0, got {max_new_tokens}")
    sequences, single = _prompts(prompts)
    eos = _eos_ids(interface.get("eos_token_id") if eos_token_id == "config" else eos_token_id)
    vocab = _vocab(compiled)
    too_big = [t for s in sequences for t in s if vocab is not None and t >= vocab]
    if too_big:
        raise UserError(f"prompt id {too_big[0]} is outside the model's vocabulary of {vocab}")
    pad = interface.get("pad_token_id")
    pad = int(pad if isinstance(pad, int) else next(iter(eos), 0))
    batch, longest = len(sequences), max(len(s) for s in sequences)
    sinks = interface.get("sinks", 0)
    if longest < sinks:  # the cache keeps the prompt's first positions as the global tokens
        raise UserError(f"this artifact keeps the first {sinks} positions as global tokens; give a prompt of at least {sinks} tokens")
    ids = torch.tensor([[pad] * (longest - len(s)) + s for s in sequences], dtype=torch.long)
    mask = torch.tensor([[0] * (longest - len(s)) + [1] * len(s) for s in sequences], dtype=torch.long)
    positions = (mask.cumsum(-1) - 1).clamp(min=0)
    past = empty_cache(compiled.graph, batch)

    out: list[list[int]] = [[] for _ in sequences]
    done = [False] * batch
    # A decode state (linear attention) takes the prompt in chunks: its step is quadratic in the
    # tokens of one call and linear in the state, so the prompt costs O(n * chunk), not O(n^2).
    chunk = PREFILL_CHUNK if compiled.graph.states else longest
    for step in range(max_new_tokens):
        if step == 0:
            result, past = prefill(compiled, ids, mask, positions, past, chunk)
        else:
            result = compiled(input_ids=ids, attention_mask=mask, position_ids=positions, **past)
            past = next_past(result, past)
        chosen = result["logits"][:, -1].float().argmax(-1)
        for b, token in enumerate(chosen.tolist()):
            if not done[b]:
                out[b].append(token)
                done[b] = token in eos
        if all(done):
            break
        ids = torch.where(torch.tensor(done), pad, chosen)[:, None]
        mask = next_mask(mask, interface.get("rolling", 0), interface.get("sinks", 0))
        positions = positions[:, -1:] + 1
    return out[0] if single else out


def prefill(compiled: Any, ids, mask, positions, past: dict, chunk: int) -> tuple[dict, dict]:
    """(the last call's outputs, the cache after the prompt): the prompt `chunk` tokens a call, each
    call's attention_mask spanning the cache so far and its own tokens."""
    for start in range(0, ids.shape[1], chunk):
        stop = start + chunk
        result = compiled(input_ids=ids[:, start:stop], attention_mask=mask[:, :stop], position_ids=positions[:, start:stop], **past)
        past = next_past(result, past)
    return result, past


def next_past(result: dict, past: dict) -> dict:
    """The next call's past_* inputs: the present_* outputs of this one."""
    return {name: result["present" + name[len("past"):]] for name in past}


def _vocab(compiled: Any) -> int | None:
    """The logits' last dim when the graph fixes it (ids past it would index out of the embedding)."""
    logits = dict(compiled.graph.outputs).get("logits")
    size = logits.type.shape[-1] if logits is not None else None
    return size if isinstance(size, int) else None


def empty_cache(graph: Any, batch: int) -> dict[str, torch.Tensor]:
    """The `past_*` inputs of the prompt's step: KV caches of length 0, decode states of zeros
    (passes/linear_state.py), in the dtypes the graph takes."""
    past = {}
    for v in graph.inputs:
        if v.name.startswith("past_"):
            shape = [batch if str(d) == "batch" else 0 if str(d) == "past" else d for d in v.type.shape]
            if not all(isinstance(d, int) for d in shape):
                raise UserError(f"cannot size the empty cache input {v.name} {v.type}; {COMPILE_HINT}")
            past[v.name] = torch.zeros(shape, dtype=v.type.dtype.torch)
    return past


def next_mask(mask: torch.Tensor, rolling: int = 0, sinks: int = 0) -> torch.Tensor:
    """The attention_mask of the next single-token step: over the cache the last step returned (the
    last step's mask, rolled as its cache was: frontends/hf_past.cache_window) and the new token.

    A rolling cache (a sliding window's) keeps the first `sinks` positions and the last `rolling`
    others, zeros where fewer were seen: the mask rolls alike, 0 on those zeros."""
    from .frontends.hf_past import cache_window

    return torch.cat([cache_window(mask, 1, rolling, sinks), torch.ones(mask.shape[0], 1, dtype=mask.dtype)], dim=1)
