"""Recognise an expert's FFN by what it computes, and read its weights out in the `experts` op's terms.

An FFN is `down(gate(up(x)))`:

    up, down   a projection: `linear(x, w, b?)`, or a matmul / einsum / bmm of the tokens with
               constant weights (params behind any layout ops), plus an optional bias add
    gate(h)    act(h), or act(g) * u with g and u two projections of the same x (SwiGLU,
               GeGLU), or the two halves of one (`g, u = gate_up(x).chunk(2, -1)`, or
               `[..., 0::2]` / `[..., 1::2]`: the interleaved layout); act is silu (also `x * sigmoid(x)`, and `x * sigmoid(a * x)` as silu
               with alpha a), gelu, gelu_tanh, relu, or relu(h)^2

Values carry *tags* naming what each axis is: "t" tokens, "e" experts (stacked
weights computing all experts at once, [E, T, I] and the like), "f" features, None
for size 1. A projection's weight comes out as [E, in, out] ([in, out] for a
single expert) whatever order its source had; `out_in` records whether the source
kept nn.Linear's [out, in] order, so the lifted op can keep it too. Weights are
read from the params' data; a graph parsed from text has none, and then they are
meta tensors (types only).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ir.core import Graph, Value
from ..ir.ops import EvalContext, get_op
from .contraction import Stacked, contraction
from .patterns import cone, operands_by, producer, same_value, scalar_constant

Tags = tuple  # per axis: "t", "e", "f", "in" or None


@dataclass(frozen=True)
class Projection:
    """v = src contracted over its "in" axis with `weight` ([E, in, out] or [in, out]), plus `bias`."""

    src: Value
    src_tags: Tags
    weight: torch.Tensor
    bias: torch.Tensor | None
    out_in: bool
    params: tuple[str, ...]


@dataclass(frozen=True)
class ExpertFFN:
    """down(gate(up(x))) with the weights in the experts op's in_out order (w_up [E?, H, U], w_down [E?, I, H])."""

    x: Value
    activation: str
    alpha: float
    gated: bool
    w_up: torch.Tensor
    b_up: torch.Tensor | None
    w_down: torch.Tensor
    b_down: torch.Tensor | None
    out_in: bool
    params: tuple[str, ...]
    split: str = "concat"  # how w_up's outputs divide into gate and up (the experts op's `split`)


def const_tensor(graph: Graph, v: Value) -> torch.Tensor | None:
    """The value of `v` when it is computed from params and constants alone (meta where params have no data)."""
    nodes = cone(graph, v)
    if nodes is None or not v.type.is_static:
        return None
    env: dict[Value, torch.Tensor] = {}
    for name, p in graph.param_values.items():
        env[p] = graph.params.get(name, torch.empty(p.type.concrete_shape({}), dtype=p.type.dtype.torch, device="meta"))
    ctx = EvalContext({})
    for n in nodes:
        if any(not o.type.is_static for o in n.outputs):
            return None
        try:
            outs = get_op(n.op).run(ctx, n.attrs, [env[i] for i in n.inputs])
        except (RuntimeError, NotImplementedError):  # an op meta tensors cannot run (params without data)
            return None
        env.update(zip(n.outputs, outs))
    return env[v]


def _const(graph: Graph, src) -> torch.Tensor | None:
    """const_tensor of a contraction source; a Stacked one stacks its parts'."""
    if not isinstance(src, Stacked):
        return const_tensor(graph, src)
    parts = [const_tensor(graph, p) for p in src.parts]
    return None if any(p is None for p in parts) else torch.stack(parts)


def _params_of(graph: Graph, v) -> tuple[str, ...]:
    if isinstance(v, Stacked):
        return tuple(dict.fromkeys(n for p in v.parts for n in _params_of(graph, p)))
    nodes = cone(graph, v) or []
    found = [v] if graph.is_param(v) else []
    found += [i for n in nodes for i in n.inputs if graph.is_param(i)]
    return tuple(dict.fromkeys(p.name for p in found))


def projection(graph: Graph, v: Value, tags: Tags) -> Projection | str:
    """`v` (tagged `tags`) as tokens times constant weights plus a bias, or why not."""
    pre, bias_v = v, None
    add = producer(v, "add")
    if add is not None:
        consts = [const_tensor(graph, i) is not None for i in add.inputs]
        if consts[0] != consts[1]:
            pre, bias_v = (add.inputs[1], add.inputs[0]) if consts[0] else add.inputs
            if pre.type != v.type:
                return f"the bias add broadcasts {pre.type} to {v.type}"
    c = contraction(pre)
    if c is None:
        what = pre.producer.op if pre.producer is not None else "an input"
        return f"{what} {pre.type} is not a linear, matmul or einsum of the tokens with constant weights"
    consts = [_const(graph, s) for s in c.sources]
    if [w is not None for w in consts].count(True) != 1:
        return "a contraction of two computed tensors (or of two constants), not of tokens with weights"
    w_i = 0 if consts[0] is not None else 1
    src, w_src = c.sources[1 - w_i], c.sources[w_i]
    if isinstance(src, Stacked):
        return "the tokens' operand is a concatenation"
    src_tags: list = []
    for role, k in c.roles[1 - w_i]:
        if role == "out" and tags[k] in ("t", "e"):
            src_tags.append(tags[k])
        elif role == "sum":
            src_tags.append("in")
        elif role == "unit":
            src_tags.append(None)
        else:
            return "the tokens' operand feeds a feature axis or is read at one index"
    if src_tags.count("in") != 1 or src_tags.count("t") != 1:
        return "the tokens are not contracted over exactly one feature axis"
    weight, labels, index = consts[w_i], [], []
    for role, k in c.roles[w_i]:
        if role == "out" and tags[k] in ("e", "f"):
            labels.append(tags[k])
            index.append(slice(None))
        elif role == "sum":
            labels.append("in")
            index.append(slice(None))
        elif role in ("fixed", "unit"):
            index.append(k)
        else:
            return "the weights vary along the token axis"
    if sorted(labels) not in (["f", "in"], ["e", "f", "in"]):
        return f"the weights' axes are {labels}, not one input and one output feature (and at most one expert axis)"
    weight = weight[tuple(index)]
    out_in = labels.index("f") < labels.index("in")
    order = [labels.index(x) for x in ("e", "in", "f") if x in labels]
    weight = weight.permute(order)
    if "e" in tags and "e" not in labels:  # one weight shared by every expert
        weight = weight.expand(v.type.shape[tags.index("e")], *weight.shape)
    bias = _bias(graph, c, bias_v, v, tags)
    if isinstance(bias, str):
        return bias
    lin_bias = c.node.inputs[2] if c.node.op == "linear" and len(c.node.inputs) > 2 else None
    params = _params_of(graph, w_src) + sum((_params_of(graph, b) for b in (bias_v, lin_bias) if b is not None), ())
    return Projection(src, tuple(src_tags), weight, bias, out_in, params)


def _bias(graph: Graph, c, bias_v: Value | None, v: Value, tags: Tags) -> torch.Tensor | str | None:
    """The bias as [E, out] / [out], from the linear or from an add; None when there is none."""
    lin = c.node.inputs[2] if c.node.op == "linear" and len(c.node.inputs) > 2 else None
    if lin is not None and bias_v is not None:
        return "two biases (the linear's and an add)"
    if lin is None and bias_v is None:
        return None
    shape = [d if t in ("e", "f") else 1 for d, t in zip(v.type.shape, tags)]
    if lin is not None:
        b = const_tensor(graph, lin)
        if b is None or b.dim() != 1:
            return "the linear's bias is computed from the tokens"
        f_axis = tags.index("f")
        b = b.reshape([b.shape[0] if i == f_axis else 1 for i in range(len(tags))])
    else:
        b = const_tensor(graph, bias_v)
        if b.dim() > len(tags):
            return f"the bias {tuple(b.shape)} has more axes than {v.type}"
        b = b.reshape((1,) * (len(tags) - b.dim()) + tuple(b.shape))
    if b.dim() != len(tags) or any(s not in (1, want) for s, want in zip(b.shape, shape)):
        return f"the bias {tuple(b.shape)} varies along the tokens or does not fit {v.type}"
    b = b.expand(shape)[tuple(0 if t not in ("e", "f") else slice(None) for t in tags)]
    kept = [t for t in tags if t in ("e", "f")]
    return b.permute([kept.index(x) for x in ("e", "f") if x in kept])


def activation_of(v: Value) -> tuple[str, float, Value] | None:
    """(activation, alpha, argument) when `v` is one of the expert activations (module docstring)."""
    n = v.producer
    if n is None:
        return None
    if n.op in ("silu", "relu"):
        return n.op, 1.0, n.inputs[0]
    if n.op == "gelu":
        return ("gelu_tanh" if n.attrs.approximate == "tanh" else "gelu"), 1.0, n.inputs[0]
    if n.op == "pow" and producer(n.inputs[0], "relu") and scalar_constant(n.inputs[1]) == 2.0:
        return "relu2", 1.0, n.inputs[0].producer.inputs[0]
    if n.op != "mul":
        return None
    if n.inputs[0] is n.inputs[1] and producer(n.inputs[0], "relu"):
        return "relu2", 1.0, n.inputs[0].producer.inputs[0]
    for sig, x in operands_by(n, "sigmoid"):
        arg = sig.inputs[0]
        if arg is x:
            return "silu", 1.0, x
        scaled = producer(arg, "mul")
        if scaled is not None:
            for a, b in (scaled.inputs, scaled.inputs[::-1]):
                if a is x and scalar_constant(b) is not None:
                    return "silu", scalar_constant(b), x  # x * sigmoid(alpha * x): quick-GELU and kin
    return None


def _gates(h: Value) -> list[tuple[tuple[str, float, Value], Value | None]]:
    """Readings of `h` as act(a) (up None) or act(g) * up, most specific first."""
    act = activation_of(h)
    if act is not None:
        return [(act, None)]
    n = producer(h, "mul")
    if n is None:
        return []
    out = []
    for p, q in (n.inputs, n.inputs[::-1]):
        act = activation_of(p)
        if act is not None:
            out.append((act, q))
    return out


def expert_ffn(graph: Graph, y: Value, tags: Tags, x: Value | None = None) -> ExpertFFN | str:
    """`y` (tagged `tags`: "t", "f", and "e" for stacked experts) as down(gate(up(x))), or why not."""
    down = projection(graph, y, tags)
    if isinstance(down, str):
        return f"the expert output: {down}"
    h = down.src
    h_tags = tuple("f" if t == "in" else t for t in down.src_tags)
    if "e" in h_tags and "e" not in tags:
        return "the hidden activations have an expert axis the output lacks"
    gates = _gates(h)
    if not gates:
        what = h.producer.op if h.producer is not None else "an input"
        return f"between the projections is {what}, not an activation (silu, gelu, relu, relu^2) or a gated one"
    why = "no reading of the gate matched"
    for (act, alpha, g), up in gates:
        ffn = _with_up(graph, h, h_tags, down, (act, alpha, g), up, x)
        if not isinstance(ffn, str):
            return ffn
        why = ffn
    return why


def _reads_tokens(p: Projection) -> bool:
    """Whether the projection reads [T, H] tokens (size-1 axes aside: an einsum's [1, T, H] view)."""
    return [t for t in p.src_tags if t is not None] == ["t", "in"]


def _halves(g: Value, up: Value, axis: int) -> tuple[Value, str, bool] | None:
    """(p, split, swapped) when g and up are the two halves of one value p along `axis`."""
    sg, su = g.producer, up.producer
    if sg is None or su is None:
        return None
    if sg is su and sg.op == "split" and len(sg.outputs) == 2 and sg.attrs.dim % g.type.rank == axis and sg.attrs.sizes[0] == sg.attrs.sizes[1]:
        return sg.inputs[0], "concat", g.index == 1
    if sg.op == su.op == "slice" and sg.inputs[0] is su.inputs[0] and sg.attrs.dim % g.type.rank == axis == su.attrs.dim % g.type.rank:
        p, n = sg.inputs[0], g.type.shape[axis]
        if not isinstance(n, int) or p.type.shape[axis] != 2 * n:
            return None
        starts = (sg.attrs.start, su.attrs.start)
        if sg.attrs.step == su.attrs.step == 1 and sorted(starts) == [0, n]:
            return p, "concat", starts[0] == n
        if sg.attrs.step == su.attrs.step == 2 and sorted(starts) == [0, 1]:
            return p, "interleaved", starts[0] == 1
    return None


def _with_up(graph, h, h_tags, down, act, up, x):
    name, alpha, g = act
    if g.type != h.type or (up is not None and up.type != h.type):
        return "the gate and up projections broadcast against each other"
    halves = _halves(g, up, h_tags.index("f")) if up is not None else None
    if halves is not None:  # one projection whose output is split into gate and up
        fused, split, swapped = halves
        p = projection(graph, fused, h_tags)
        if isinstance(p, str):
            return f"the gate-up projection: {p}"
        if not _reads_tokens(p) or (x is not None and not same_value(p.src, x)):
            return "the gate-up projection does not read the [T, H] tokens"
        w_up, b_up = p.weight, p.bias
        if swapped:  # up first: reorder so that the gate comes first, as the experts op reads it
            w_up, b_up = _swap_halves(w_up, split), (None if b_up is None else _swap_halves(b_up, split))
        if w_up.shape[-1] != 2 * down.weight.shape[-2]:
            return "the gate-up projection is not twice the down projection's input"
        params = tuple(dict.fromkeys(p.params + down.params))
        return ExpertFFN(p.src, name, alpha, True, w_up, b_up, down.weight, down.bias, p.out_in and down.out_in, params, split)
    parts = []
    for v in (g, up) if up is not None else (g,):
        p = projection(graph, v, h_tags)
        if isinstance(p, str):
            return f"the {'gate' if v is g and up is not None else 'up'} projection: {p}"
        if not _reads_tokens(p):
            return f"the up projection reads {p.src.type}, not the [T, H] tokens"
        if x is not None and not same_value(p.src, x):
            return "the expert reads other tokens than the loop gives it"
        if parts and not same_value(p.src, parts[0].src):
            return "the gate and up projections read different tokens"
        parts.append(p)
    w_up = torch.cat([p.weight for p in parts], dim=-1) if len(parts) > 1 else parts[0].weight
    b_up = None
    if any(p.bias is not None for p in parts):
        b_up = torch.cat([p.bias if p.bias is not None else _zeros(p.weight.shape[:-2] + p.weight.shape[-1:], p.weight) for p in parts], dim=-1)
    if w_up.shape[-2] != down.weight.shape[-1]:
        return "the up projection's input is not the down projection's output size"
    params = tuple(dict.fromkeys(sum((p.params for p in parts), ()) + down.params))
    out_in = all(p.out_in for p in parts) and down.out_in
    return ExpertFFN(parts[0].src, name, alpha, up is not None, w_up, b_up, down.weight, down.bias, out_in, params)


def _swap_halves(t: torch.Tensor, split: str) -> torch.Tensor:
    """Exchange the two halves of the last axis (concat: first and second half; interleaved: even and odd)."""
    if split == "interleaved":
        return torch.stack([t[..., 1::2], t[..., 0::2]], dim=-1).flatten(-2)
    a, b = t.chunk(2, dim=-1)
    return torch.cat([b, a], dim=-1)


def _zeros(shape, like: torch.Tensor) -> torch.Tensor:
    return torch.zeros(shape, dtype=like.dtype, device=like.device)
