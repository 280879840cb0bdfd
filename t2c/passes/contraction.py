"""Read a contraction back as an einsum over its sources, through the layout ops around it.

Traced `einsum`/`bmm`/`matmul` code hides a simple contraction behind reshapes,
permutes and unsqueezes: `einsum('th,ehi->eti', x, w)` arrives as a 2-D matmul
between `x.reshape(1, T, H)` and `w.unsqueeze(3).permute(...).reshape(1, H, E*I)`
whose result is reshaped and permuted back to [E, T, I]. `contraction(v)`
answers "v[...] = sum_k A[...] * B[...], and how do the axes of A and B relate
to those of v?" for

    v = layout(matmul(layout(A), layout(B)))
    v = layout(linear(layout(A), layout(B)))          (the bias, if any, is the caller's)
    v = layout(sum(mul(layout(A), layout(B)), dims))

where layout is any chain of reshape, permute, (un)squeeze, expand, select and
slice, and A, B (the sources) are the first values that are not. A `cat` of
equally shaped parts reached by equal layout chains is read as a source of its
own, `Stacked`, shaped [parts, *part] (`torch.stack` of per-expert outputs traces
to a cat along a feature axis, reshaped). Each source axis
gets a role: ("out", i) it is v's axis i; ("sum", j) it is summed, paired with the
other source's axis of the same j; ("fixed", c) only its index c is read (a select);
("unit", 0) size 1.

How: the layout chains are run, with their own IR references, on index tensors
(`arange`) instead of data, so every element of the contraction is traced to the
source elements it multiplies. Every role is checked for every element (not
sampled), at two sets of sizes for the dynamic dims, so the answer is exact.
Cost: the index tensors are the size of the sources and of v at small sizes
(3 to 10 per dynamic dim); a source reached with no layout op costs nothing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..ir.core import Node, SymDim, TensorType, Value
from ..ir.ops import EvalContext, get_op

LAYOUT_OPS = ("reshape", "permute", "unsqueeze", "squeeze", "expand", "select", "slice")
# Two sets of sizes for the dynamic dims: distinct, >= 3, so that no dim looks like a broadcast 1.
_SIZES = ((3, 5, 7, 11, 13, 17), (4, 6, 9, 10, 14, 15))

Role = tuple[str, int]


@dataclass(frozen=True)
class Stacked:
    """The parts a cat joins, read as one source [len(parts), *part] (parts[i] is its index i)."""

    parts: tuple[Value, ...]
    inner: tuple[Node, ...]  # layout ops from parts[0] to the cat's first operand; each part has the same
    cat: Node

    @property
    def type(self) -> TensorType:
        t = self.parts[0].type
        return t.with_shape((len(self.parts), *t.shape))


@dataclass(frozen=True)
class Contraction:
    """v = sum over the paired "sum" axes of sources[0] * sources[1], axes related by `roles`."""

    node: Node  # the matmul / linear / sum
    out: Value  # v
    sources: tuple  # two Sources: Value or Stacked
    roles: tuple[tuple[Role, ...], tuple[Role, ...]]

    def role_of(self, source: int, axis: int) -> Role:
        return self.roles[source][axis]


def layout_source(v: Value) -> tuple[Value, list[Node]]:
    """The first non-layout value behind `v` and the layout nodes from it to `v`, in order."""
    chain = []
    while v.producer is not None and v.producer.op in LAYOUT_OPS:
        chain.append(v.producer)
        v = v.producer.inputs[0]
    return v, chain[::-1]


def _source(v: Value) -> tuple:
    """(source, layout chain to v), the source a Value or, through a cat of like parts, a Stacked."""
    src, chain = layout_source(v)
    cat = src.producer
    if cat is None or cat.op != "cat" or len(cat.inputs) < 2:
        return src, chain
    parts = [layout_source(p) for p in cat.inputs]
    first_src, first_chain = parts[0]
    for p_src, p_chain in parts[1:]:
        if p_src.type != first_src.type or [(n.op, n.attrs) for n in p_chain] != [(n.op, n.attrs) for n in first_chain]:
            return src, chain
    return Stacked(tuple(p for p, _ in parts), tuple(first_chain), cat), chain


def contraction(v: Value) -> Contraction | None:
    """`v` read as an einsum over two sources (module docstring), or None when it is not one."""
    root, out_chain = layout_source(v)
    node = root.producer
    if node is None or node.op not in ("matmul", "linear", "sum"):
        return None
    if node.op == "sum":
        mul = node.inputs[0].producer
        if mul is None or mul.op != "mul" or not node.attrs.dims:
            return None
        operands = mul.inputs
    else:
        operands = node.inputs[:2]
        if any(o.type.rank < 2 for o in operands) and node.op == "matmul":
            return None
    chains = [_source(o) for o in operands]
    involved = [v, *operands, node.outputs[0], *(n.outputs[0] for c in chains for n in c[1]), *(n.outputs[0] for n in out_chain)]
    for src, _ in chains:
        involved += [src.parts[0], src.cat.outputs[0], *(n.outputs[0] for n in src.inner)] if isinstance(src, Stacked) else [src]
    found = None
    for k in range(len(_SIZES)):
        bindings = _bindings(involved, k)
        try:
            roles = _roles(node, operands, chains, out_chain, v, bindings)
        except (RuntimeError, ValueError, IndexError, KeyError):
            return None  # sizes the layout ops refuse at these bindings: not something to read
        if roles is None or (found is not None and (roles[1] != found[1] or any(a is not b for a, b in zip(roles[0], found[0])))):
            return None
        found = roles
    return Contraction(node, v, found[0], found[1])


def _bindings(values: list[Value], k: int) -> dict[str, int]:
    syms = sorted({s for x in values for d in x.type.shape if isinstance(d, SymDim) for s in d.symbols})
    sizes = _SIZES[k]
    return {s: sizes[i % len(sizes)] + len(sizes) * (i // len(sizes)) for i, s in enumerate(syms)}


def _coords(src, chain: list[Node], bindings: dict[str, int]) -> list[torch.Tensor]:
    """For each axis of `src`, its coordinate at every element of the chain's result (broadcastable tensors)."""
    shape = src.type.concrete_shape(bindings)
    if not chain and not isinstance(src, Stacked):
        r = len(shape)
        return [torch.arange(s).reshape([s if i == j else 1 for i in range(r)]) for j, s in enumerate(shape)]
    idx = torch.arange(math.prod(shape)).reshape(shape)
    ctx = EvalContext(dict(bindings))
    if isinstance(src, Stacked):  # each part through its layout ops, then the cat
        parts = []
        for part in idx:
            for n in src.inner:
                (part,) = get_op(n.op).run(ctx, n.attrs, [part])
            parts.append(part)
        (idx,) = get_op("cat").run(ctx, src.cat.attrs, parts)
    for n in chain:
        (idx,) = get_op(n.op).run(ctx, n.attrs, [idx])
    return list(torch.unravel_index(idx, shape)) if shape else []


def _to_joint(node: Node, which: int, c: torch.Tensor, joint_rank: int, n_sum: int) -> torch.Tensor:
    """Operand `which`'s coordinate tensor laid out on the joint space [free..., summed...]."""
    if node.op == "matmul":
        c = c.unsqueeze(-2) if which == 0 else c.transpose(-1, -2).unsqueeze(-3)  # [*b, m, 1, K] / [*b, 1, n, K]
    elif node.op == "linear":
        c = c.unsqueeze(-2) if which == 0 else c  # [*lead, 1, K] / [n, K]
    else:
        r = node.inputs[0].type.rank
        c = c.reshape((1,) * (r - c.dim()) + tuple(c.shape))
        dims = sorted(d % r for d in node.attrs.dims)
        c = c.permute([d for d in range(r) if d not in dims] + dims)
        return c
    return c.reshape((1,) * (joint_rank - c.dim()) + tuple(c.shape))


def _roles(node, operands, chains, out_chain, v, bindings):
    out_shape = node.outputs[0].type.concrete_shape(bindings)
    if node.op == "sum":
        r = node.inputs[0].type.rank
        dims = sorted(d % r for d in node.attrs.dims)
        full = node.inputs[0].type.concrete_shape(bindings)
        free_shape = [s for d, s in enumerate(full) if d not in dims]
        sum_shape = [full[d] for d in dims]
    else:
        free_shape = list(out_shape)
        sum_shape = [operands[0].type.concrete_shape(bindings)[-1]]
    n_free, n_sum = len(free_shape), len(sum_shape)
    joint_rank = n_free + n_sum
    # v's elements -> flat position among the contraction's free positions
    iv = torch.arange(math.prod(out_shape)).reshape(out_shape)
    ctx = EvalContext(dict(bindings))
    for n in out_chain:
        (iv,) = get_op(n.op).run(ctx, n.attrs, [iv])
    v_shape = list(iv.shape)
    space = (joint_rank, n_free, n_sum, free_shape, sum_shape, iv)

    per_source, chosen = [], []
    for which, (src, chain) in enumerate(chains):
        # The farthest source first (a param behind a reshape keeps its axes apart), then nearer
        # ones (tokens reshaped from [B, S, H] to [T, H] are read as [T, H]).
        for k in range(len(chain) + 1):
            cand = src if k == 0 else chain[k - 1].outputs[0]
            roles = _axis_roles(node, which, cand, chain[k:], bindings, space)
            if roles is not None:
                break
        if roles is None:
            return None
        per_source.append(roles)
        chosen.append(cand)
    paired = _pair_sums(per_source, v_shape, math.prod(sum_shape))
    return None if paired is None else (tuple(chosen), paired)


def _axis_roles(node, which, src, chain, bindings, space):
    """The role of each axis of `src` (summed axes still as coordinate vectors), or None if one has none.

    `space` is the contraction's joint index space [free..., summed...] (free = its result's
    positions) and `iv`, v's elements as positions of that result.
    """
    joint_rank, n_free, n_sum, free_shape, sum_shape, iv = space
    v_shape = list(iv.shape)
    src_shape = src.type.concrete_shape(bindings)
    v_coords = [torch.arange(s).reshape([s if i == j else 1 for i in range(len(v_shape))]) for j, s in enumerate(v_shape)]
    roles: list = []
    for axis, c in enumerate(_coords(src, chain, bindings)):
        if src_shape[axis] == 1:
            roles.append(("unit", 0))
            continue
        c = _to_joint(node, which, c, joint_rank, n_sum)
        at_sum0 = c[(...,) + (slice(0, 1),) * n_sum]
        at_free0 = c[(slice(0, 1),) * n_free + (...,)]
        free_only = torch.equal(c, at_sum0.expand_as(c))
        sum_only = torch.equal(c, at_free0.expand_as(c))
        if free_only and sum_only:
            roles.append(("fixed", int(c.flatten()[0])))
        elif free_only:
            g = at_sum0.reshape(at_sum0.shape[:n_free]).expand(free_shape).reshape(-1)[iv]
            hits = [i for i, vc in enumerate(v_coords) if v_shape[i] > 1 and torch.equal(g, vc.expand_as(g))]
            if len(hits) == 1:
                roles.append(("out", hits[0]))
            elif bool((g == g.flatten()[0]).all()):
                roles.append(("fixed", int(g.flatten()[0])))  # v reads one index of it
            else:
                return None
        elif sum_only:
            roles.append(("sum_vector", at_free0.reshape(at_free0.shape[n_free:]).expand(sum_shape).reshape(-1)))
        else:
            return None  # one axis follows both an output axis and the summed one: not an einsum
    return roles


def _pair_sums(per_source, v_shape, sum_count):
    """Replace the summed axes' coordinate vectors by pair ids; None unless they pair up and cover the sum."""
    a, b = per_source
    b_free = {i: r[1] for i, r in enumerate(b) if r[0] == "sum_vector"}
    vectors, out_a, out_b = [], list(a), list(b)
    for i, r in enumerate(a):
        if r[0] != "sum_vector":
            continue
        match = [j for j, vec in b_free.items() if torch.equal(vec, r[1])]
        if not match:
            return None
        j = match[0]
        del b_free[j]
        out_a[i] = out_b[j] = ("sum", len(vectors))
        vectors.append(r[1])
    if b_free or not vectors:
        return None  # an axis summed in one source alone, or nothing summed
    if torch.unique(torch.stack(vectors), dim=1).shape[1] != sum_count:
        return None  # the summed positions do not visit each index combination once
    for roles in (out_a, out_b):
        outs = [r[1] for r in roles if r[0] == "out"]
        if len(outs) != len(set(outs)):
            return None  # a diagonal
    covered = {r[1] for roles in (out_a, out_b) for r in roles if r[0] == "out"}
    if any(s > 1 and i not in covered for i, s in enumerate(v_shape)):
        return None  # v repeats along an axis neither source has
    return tuple(out_a), tuple(out_b)
