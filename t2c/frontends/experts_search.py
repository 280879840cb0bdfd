"""Experts modules that transformers does not decorate, found by their call and described by search.

A few families write their experts module by hand instead of using
`use_experts_implementation` (DBRX keeps three [E*I, H] matrices in a child
module; others keep `gate_up_proj`/`down_proj` without the decorator's flags).
They share the library's call, `forward(hidden_states, top_k_index,
top_k_weights)`, and their loops over the experts that were hit cannot be traced
(the number of iterations depends on the routing).

Such a module is found by that signature, then described without reading its
source or its parameter names: the search tries every way its two or three
float parameters can be the stacked expert weights (split into E experts by
rows, either orientation, gate/up/down in any order, the gate and up halves
concatenated or interleaved) with every activation the experts op has, and
keeps the first description under which our reference reproduces the module on
a random routing (the same probe as for decorated modules). The weights of that
description, rearranged once into the op's [E, out, in] layout, are given to
the module as buffers for the duration of tracing, so the exported graph reads
them as constants. A module no description reproduces is left alone.
"""

from __future__ import annotations

import inspect
import itertools
import math
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from ..ir.opdefs.experts import ACTIVATIONS, ExpertsAttrs, expert_ffn, experts_reference

PROBE_TOKENS = 7
PROBE_TOLERANCE = 1e-4  # relative to the probe output's magnitude, as for decorated modules
MAX_EXPERT_COUNTS = 16  # expert counts tried for a module whose weights are 2-D (the divisors of their rows)

INDEX_NAMES = ("top_k_index", "router_indices")
WEIGHT_NAMES = ("top_k_weights", "routing_weights")


def has_experts_call(m: nn.Module | type) -> bool:
    """Whether the forward of module (or class) `m` takes (hidden_states, top_k_index, top_k_weights), the library's experts call."""
    try:
        params = inspect.signature(m.forward).parameters
    except (TypeError, ValueError):
        return False
    names = [n for n in params if n != "self"][:3]
    return len(names) == 3 and names[0] == "hidden_states" and names[1] in INDEX_NAMES and names[2] in WEIGHT_NAMES


@dataclass(frozen=True)
class Found:
    """A description confirmed by the probe: the op's attrs and its weights in the [E, out, in] layout."""

    attrs: ExpertsAttrs
    w_up: torch.Tensor
    w_down: torch.Tensor


def _divisors(n: int) -> list[int]:
    return [d for d in range(2, n + 1) if n % d == 0][:MAX_EXPERT_COUNTS]


def _expert_counts(weights: list[torch.Tensor]) -> list[int]:
    stacked = {w.shape[0] for w in weights if w.dim() == 3}
    if stacked:
        return sorted(stacked)
    return _divisors(math.gcd(*(w.shape[0] for w in weights)))


def _stack(w: torch.Tensor, experts: int) -> torch.Tensor | None:
    """w as [E, a, b]: a 3-D parameter as it is, a 2-D [E*a, b] one split by rows."""
    if w.dim() == 3:
        return w if w.shape[0] == experts else None
    if w.dim() == 2 and w.shape[0] % experts == 0:
        return w.reshape(experts, w.shape[0] // experts, w.shape[1])
    return None


def _forms(w: torch.Tensor, out_dim: int | None = None, in_dim: int | None = None) -> list[torch.Tensor]:
    """w [E, a, b] read as [E, out, in] both ways, kept where out and in have the sizes asked for."""
    return [f for f in (w, w.transpose(1, 2))
            if (out_dim is None or f.shape[1] == out_dim) and (in_dim is None or f.shape[2] == in_dim)]


def _candidates(stacks: list[torch.Tensor], hidden: int) -> Iterator[tuple[ExpertsAttrs, torch.Tensor, torch.Tensor]]:
    """Every (attrs without activation, w_up [E, U, H], w_down [E, H, I]) the stacked weights can form."""
    for order in itertools.permutations(stacks):
        *ups, down = order
        for d in _forms(down, out_dim=hidden):
            inner = d.shape[2]
            if len(ups) == 2:  # separate gate and up matrices: concatenated in that order
                for g, u in itertools.product(_forms(ups[0], inner, hidden), _forms(ups[1], inner, hidden)):
                    yield ExpertsAttrs(gated=True), torch.cat([g, u], dim=1), d
                continue
            for u in _forms(ups[0], in_dim=hidden):
                if u.shape[1] == inner:
                    yield ExpertsAttrs(gated=False), u, d
                if u.shape[1] == 2 * inner:
                    for split in ("concat", "interleaved"):
                        yield ExpertsAttrs(gated=True, split=split), u, d


def _run(m: nn.Module, x: torch.Tensor, index: torch.Tensor, weights: torch.Tensor) -> torch.Tensor | None:
    """The module on this routing, as [T, H]; None when it cannot run on it."""
    try:
        with torch.no_grad():
            out = m(x, index, weights)
    except Exception:  # noqa: BLE001 - a module that cannot run on this probe is not this description's
        return None
    if not isinstance(out, torch.Tensor) or out.numel() != x.numel():
        return None
    # Some modules return [T, 1, H] for [T, H] tokens (they view the result as the [B, S, H] they are
    # called with); the captured forward returns the caller's shape, and the artifact is validated anyway.
    return out.reshape(x.shape)


def _agrees(want: torch.Tensor, got: torch.Tensor) -> bool:
    scale = float(want.abs().max()) or 1.0
    return float((want.float() - got.float()).abs().max()) <= PROBE_TOLERANCE * scale


def search(m: nn.Module) -> Found | None:
    """The first description of `m` (not decorated, with the experts call) that the probe confirms, or None.

    Two probes: every token to expert 0 with weight 1 (the module is then that expert's FFN, which
    screens a candidate with two matmuls), then a random top-2 routing over all experts (what the
    decorated modules' probe checks) for the candidates that pass the screen.
    """
    weights = [p.detach() for p in m.parameters()]
    if len(weights) not in (2, 3) or any(not w.dtype.is_floating_point or w.dim() not in (2, 3) for w in weights):
        return None
    gen = torch.Generator().manual_seed(0)
    for experts in _expert_counts(weights):
        stacks = [_stack(w, experts) for w in weights]
        if any(s is None for s in stacks):
            continue
        for hidden in sorted({d for s in stacks for d in s.shape[1:]}):
            x = (torch.randn(PROBE_TOKENS, hidden, generator=gen) * 2).to(weights[0].dtype)
            first = _run(m, x, torch.zeros(PROBE_TOKENS, 1, dtype=torch.long), torch.ones(PROBE_TOKENS, 1))
            if first is None:
                continue
            k = min(2, experts)
            index = torch.stack([torch.randperm(experts, generator=gen)[:k] for _ in range(PROBE_TOKENS)])
            routing = torch.rand(PROBE_TOKENS, k, generator=gen)
            want = None
            for attrs, up, down in _candidates(stacks, hidden):
                for activation in ACTIVATIONS:
                    described = ExpertsAttrs(activation=activation, gated=attrs.gated, split=attrs.split)
                    with torch.no_grad():
                        if not _agrees(first, expert_ffn(x, up[0], down[0], None, None, described)):
                            continue
                        want = _run(m, x, index, routing) if want is None else want
                        if want is not None and _agrees(want, experts_reference(x, index, routing, up, down, None, None, described)):
                            return Found(described, up.contiguous().clone(), down.contiguous().clone())
    return None
