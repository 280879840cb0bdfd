"""Hugging Face experts modules captured at the library's boundary, as one `t2c::experts` call each.

In transformers 5.x every experts module of a mixture-of-experts family is
decorated with `use_experts_implementation`: the decorator records its layout on
the instance (`has_gate`, `has_bias`, `is_transposed`, `is_concatenated`,
`has_post_expert_norm`) and every family calls it the same way,
`experts(hidden_states [T, H], top_k_index [T, K], top_k_weights [T, K])`. The
router before it stays ordinary code and traces as ordinary ops.

For each such module we read the flags, the weights (`gate_up_proj` or
`up_proj`, `down_proj`, their biases) and the activation (by the *type* of its
`act_fn`; a family that overrides `_apply_gate` is read from the attributes its
override uses: `alpha`/`swiglu_alpha`, `limit`/`swiglu_limit`), then run the
module as the library would (its eager implementation) and our reference on a
probe: only when they agree is its forward swapped, for the duration of tracing,
for a call of `t2c::experts`. A module we cannot describe (a new activation, a
post-expert norm, quantized weights) is left alone and traced through the
library's batched_mm implementation, which exports. Nothing here looks at
source text, so a family added next month that uses the decorator is captured
unchanged. Experts modules written without the decorator but called the same way
are described by a search over their weights (experts_search.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import replace
from typing import Iterator

import torch
from torch import nn

from ..ir.opdefs.experts import ExpertsAttrs, experts_reference
from .custom_ops import experts_op
from .experts_search import has_experts_call, search

PROBE_TOKENS = 7
PROBE_TOLERANCE = 1e-4  # relative to the probe output's magnitude: a description must compute the same function


def is_experts_module(m: nn.Module) -> bool:
    """Whether `m` is decorated with transformers' `use_experts_implementation` (it sets these on the instance)."""
    return hasattr(m, "has_gate") and hasattr(m, "is_transposed") and hasattr(m, "down_proj")


def _activation(act) -> tuple[str, float] | None:
    """(activation, alpha) of an experts module's act_fn, by its type; None when t2c has no such activation."""
    try:
        from transformers import activations as hf
    except ImportError:  # pragma: no cover - transformers is how we got here
        return None
    def kinds(*names: str) -> tuple[type, ...]:  # the classes this transformers release has
        return tuple(getattr(hf, n) for n in names if isinstance(getattr(hf, n, None), type))

    table = [
        ((nn.SiLU,) + kinds("SiLUActivation"), ("silu", 1.0)),
        ((nn.GELU,) + kinds("GELUActivation"), ("gelu", 1.0)),
        (kinds("GELUTanh", "NewGELUActivation", "FastGELUActivation", "AccurateGELUActivation", "PytorchGELUTanh"), ("gelu_tanh", 1.0)),
        (kinds("QuickGELUActivation"), ("silu", 1.702)),
        (kinds("ReLUSquaredActivation"), ("relu2", 1.0)),
        ((nn.ReLU,), ("relu", 1.0)),
        ((nn.Identity,) + kinds("LinearActivation"), ("identity", 1.0)),
    ]
    if act is torch.nn.functional.silu:
        return "silu", 1.0
    if isinstance(act, nn.GELU) and act.approximate == "tanh":
        return "gelu_tanh", 1.0
    for kinds, found in table:
        if kinds and isinstance(act, kinds):
            return found
    return None


def describe(m: nn.Module) -> ExpertsAttrs | None:
    """The `experts` attrs that describe module `m` (not yet confirmed by the probe), or None."""
    if getattr(m, "has_post_expert_norm", False) or getattr(m, "_is_expert_parallel", False):
        return None
    up, down = _weights(m)[:2]
    if up is None or not up.dtype.is_floating_point or up.dim() != 3 or down.dim() != 3:
        return None  # quantized or unexpected weights: leave the module to the library
    attrs = ExpertsAttrs(gated=bool(m.has_gate), layout="in_out" if m.is_transposed else "out_in",
                         split="concat" if getattr(m, "is_concatenated", True) else "interleaved")
    act = _activation(getattr(m, "act_fn", None))
    alpha = getattr(m, "alpha", getattr(m, "swiglu_alpha", None))
    limit = getattr(m, "limit", getattr(m, "swiglu_limit", None))
    if alpha is not None and limit is not None and m.has_gate:  # gpt-oss style: (up + 1) * g * sigmoid(alpha * g), clamped
        return replace(attrs, activation="silu", alpha=float(alpha), limit=float(limit), up_offset=1.0)
    if act is None and limit is not None and m.has_gate:  # a clamped SwiGLU with F.silu written in
        act = ("silu", 1.0)
    if act is None:
        return None
    return replace(attrs, activation=act[0], alpha=act[1], limit=float(limit) if limit is not None and m.has_gate else 0.0)


def _weights(m: nn.Module) -> tuple:
    up = getattr(m, "gate_up_proj" if m.has_gate else "up_proj", None)
    bias = getattr(m, "has_bias", False)
    up_b = getattr(m, "gate_up_proj_bias" if m.has_gate else "up_proj_bias", None) if bias else None
    down_b = getattr(m, "down_proj_bias", None) if bias else None
    return up, m.down_proj, up_b, down_b


def _experts_call(module: nn.Module, *args, **kwargs) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(hidden_states, top_k_index, top_k_weights) from the call, whatever a family names them."""
    names = (("hidden_states",), ("top_k_index", "router_indices", "selected_experts"), ("top_k_weights", "routing_weights"))
    values = list(args)
    for alternatives in names[len(values):]:
        found = next((kwargs[n] for n in alternatives if n in kwargs), None)
        if found is None:
            raise TypeError(f"{type(module).__name__} was called without {alternatives[0]}")
        values.append(found)
    return values[0], values[1], values[2]


def _captured_forward(module: nn.Module, attrs: ExpertsAttrs, weights_of=_weights):
    def forward(*args, **kwargs):
        hidden, index, weights = _experts_call(module, *args, **kwargs)
        up, down, up_b, down_b = weights_of(module)
        flat = hidden.dim() != 2  # every family passes [T, H] today; anything else is flattened for the op
        x = hidden.reshape(-1, hidden.shape[-1]) if flat else hidden
        if flat:
            index, weights = index.reshape(x.shape[0], -1), weights.reshape(x.shape[0], -1)
        out = experts_op(x, index, weights, up, down, up_b, down_b,
                         attrs.activation, attrs.alpha, attrs.gated, attrs.layout, attrs.split, attrs.limit, attrs.up_offset)
        return out.reshape(hidden.shape) if flat else out

    return forward


# The weights a search found, rearranged into the op's layout, live on the module as these buffers while it is traced.
SEARCHED_UP, SEARCHED_DOWN = "_t2c_experts_w_up", "_t2c_experts_w_down"


def _searched_weights(m: nn.Module) -> tuple:
    return getattr(m, SEARCHED_UP), getattr(m, SEARCHED_DOWN), None, None


def _probe_agrees(m: nn.Module, attrs: ExpertsAttrs) -> bool:
    """Run the module as the library does and our reference on random routing; True when they agree."""
    up, down, up_b, down_b = _weights(m)
    hidden = down.shape[1] if attrs.layout == "out_in" else down.shape[2]
    n_experts = up.shape[0]
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(PROBE_TOKENS, hidden, generator=gen) * 2).to(up.dtype)
    k = min(2, n_experts)
    index = torch.stack([torch.randperm(n_experts, generator=gen)[:k] for _ in range(PROBE_TOKENS)])
    weights = torch.rand(PROBE_TOKENS, k, generator=gen)
    with torch.no_grad():
        try:
            want = m(x, index, weights)
        except Exception:  # noqa: BLE001 - a module that cannot run on the probe is not ours to describe
            return False
        got = experts_reference(x, index, weights, up, down, up_b, down_b, attrs)
    if want.shape != got.shape:
        return False
    scale = float(want.abs().max()) or 1.0
    return float((want.float() - got.float()).abs().max()) <= PROBE_TOLERANCE * scale


@contextlib.contextmanager
def _experts_implementation(modules: list[nn.Module], name: str | None) -> Iterator[None]:
    """Run these experts modules under the library's implementation `name` inside the block (None: leave it).

    The choice lives on each module's config (`_experts_implementation`, which the
    decorator's forward reads), so a block compiled without its model is covered too.
    """
    configs = {id(c): c for c in (getattr(m, "config", None) for m in modules) if c is not None}
    before = {k: getattr(c, "_experts_implementation", None) for k, c in configs.items()}
    try:
        if name is not None:
            for c in configs.values():
                c._experts_implementation = name
        yield
    finally:
        if name is not None:
            for k, c in configs.items():
                c._experts_implementation = before[k]


@contextlib.contextmanager
def captured_experts(model: nn.Module) -> Iterator[dict[str, str]]:
    """Swap every describable experts module's forward for `t2c::experts` inside the block.

    Yields {module path: "captured" | why it was left to the library}. Modules
    left alone are traced with the library's batched_mm implementation (its
    default, grouped_mm, calls ops torch.export cannot give us: histc and an
    opaque fallback op).
    """
    status: dict[str, str] = {}
    swapped: list[nn.Module] = []
    found = [(path, m) for path, m in model.named_modules() if is_experts_module(m)]
    undecorated = [(path, m) for path, m in model.named_modules() if not is_experts_module(m) and has_experts_call(m)]
    try:
        for path, m in undecorated:
            described = search(m)
            if described is None:
                status[path] = "no reading of its weights reproduces it (experts_search.py)"
                continue
            m.register_buffer(SEARCHED_UP, described.w_up, persistent=False)
            m.register_buffer(SEARCHED_DOWN, described.w_down, persistent=False)
            m.forward = _captured_forward(m, described.attrs, _searched_weights)
            swapped.append(m)
            status[path] = "captured"
        with _experts_implementation([m for _, m in found], "eager"):  # the probe compares with the library's reference loop
            for path, m in found:
                attrs = describe(m)
                if attrs is None:
                    status[path] = "not described (activation, gate, norm or weights t2c does not know)"
                elif not _probe_agrees(m, attrs):
                    status[path] = "the probe disagreed with the description"
                else:
                    m.forward = _captured_forward(m, attrs)
                    swapped.append(m)
                    status[path] = "captured"
        leftover = [m for path, m in found if status[path] != "captured"]
        with _experts_implementation(leftover, "batched_mm" if leftover else None):
            yield status
    finally:
        for m in swapped:
            del m.forward
            for name in (SEARCHED_UP, SEARCHED_DOWN):
                m._buffers.pop(name, None)
