"""Folding of shape-only code: identities, chains of shape ops, and constant subgraphs.

Traced models are full of these: `view` to the shape a tensor already has,
`permute` pairs from transposes that cancel, `.to(dtype)` of a tensor already in
that dtype, masks built from `arange` and comparisons. Removing them makes the
graph smaller and the lifting passes' patterns shorter.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ir.core import DType, Graph, Node, TensorType, Value, dim_prod, dims_equal
from ..ir.opdefs._infer import norm_axis
from ..ir.opdefs.creation import FullAttrs
from ..ir.opdefs.shape import PermuteAttrs, ShapeAttrs
from ..ir.ops import EvalContext, get_op
from ..ir.verifier import types_match
from .manager import Pass, PassResult, register_pass
from .patterns import full_value
from .rewrite import Match, RewriteContext, Rewriter, RewriteRule, apply_rules


@register_pass("fold-shapes")
@dataclass(frozen=True)
class FoldShapes(Pass):
    """Remove identity shape ops, collapse chains of shape ops, and evaluate small constant subgraphs.

    Identities (replaced by their input when the result type equals the input's):
    reshape/expand to the input's shape, permute by the identity, slice of a
    whole dim with step 1, cast to the same dtype, squeeze that drops nothing,
    cat of one operand, add/sub of a zero `full`, mul/div by a one `full`.
    Chains: reshape/squeeze/unsqueeze of one another become one reshape, permute
    of permute one permute (or nothing), cast of a lossless cast one cast.
    Constants: a node computed from `full`/`arange` alone whose results have
    static shapes of at most `max_elements` elements is evaluated with the IR
    reference; where its value leaves the constant subgraph it becomes a `full`
    (all elements equal) or a new param `@constN`. Results with symbolic shapes
    stay: they depend on the dims bound at run time.

    Exact, except that `x + 0.0` folds to `x` although it turns `-0.0` into
    `+0.0` (the two compare equal). Stats: identities_removed,
    chains_collapsed, constants_folded. Options: max_elements (int, 4096), the
    largest constant folded.
    """

    exact = True
    max_elements: int = 4096

    def run(self, graph: Graph) -> PassResult:
        rw = Rewriter(graph)
        stats = {"identities_removed": 0, "chains_collapsed": 0, "constants_folded": 0}
        # Constants first (they can turn operands into `full`s that identities
        # recognise), then rules; repeat while either finds work, bounded.
        for _ in range(8):
            folded = fold_constants(graph, rw, self.max_elements)
            ruled = apply_rules(graph, RULES, rewriter=rw)
            stats["constants_folded"] += folded
            stats["identities_removed"] += ruled["identities_removed"]
            stats["chains_collapsed"] += ruled["chains_collapsed"]
            if not folded and not ruled["identities_removed"] and not ruled["chains_collapsed"]:
                break
        return PassResult(graph, any(stats.values()), stats)


# -- identities ----------------------------------------------------------------------


def _is(v: Value, number: int) -> bool:
    value = full_value(v)
    return value is not None and not isinstance(value, bool) and value == number


def _identity_source(node: Node) -> Value | None:
    """The operand `node` would pass through unchanged, judging by op and attrs alone."""
    op, a = node.op, node.attrs
    if not node.inputs:
        return None
    x = node.inputs[0]
    t = x.type
    if op in ("reshape", "expand"):
        same = len(a.shape) == t.rank and all(dims_equal(d, e) for d, e in zip(a.shape, t.shape))
        return x if same else None
    if op == "permute":
        return x if tuple(a.perm) == tuple(range(t.rank)) else None
    if op == "slice":
        size = t.shape[norm_axis(a.dim, t.rank)]
        whole_end = dims_equal(a.end, size) or (isinstance(a.end, int) and isinstance(size, int) and a.end >= size)
        return x if a.step == 1 and a.start == 0 and whole_end else None
    if op == "cast":
        return x if a.dtype == t.dtype else None
    if op == "squeeze":
        return x if node.output.type.rank == t.rank else None
    if op == "cat":
        return x if len(node.inputs) == 1 else None
    if op == "add":
        return node.inputs[1] if _is(node.inputs[0], 0) else x if _is(node.inputs[1], 0) else None
    if op == "sub":
        return x if _is(node.inputs[1], 0) else None
    if op == "mul":
        return node.inputs[1] if _is(node.inputs[0], 1) else x if _is(node.inputs[1], 1) else None
    if op == "div":
        # floor/trunc rounding of x / 1 is not x for fractional floats
        return x if _is(node.inputs[1], 1) and (a.rounding_mode is None or not t.dtype.is_float) else None
    return None


class RemoveIdentity(RewriteRule):
    """An op that passes one operand through unchanged is replaced by that operand."""

    name = "remove-identity"
    stat = "identities_removed"

    def match(self, node: Node, ctx: RewriteContext) -> Match | None:
        src = _identity_source(node)
        return None if src is None else Match(node, {"source": src})

    def check(self, match: Match, ctx: RewriteContext) -> str | None:
        src, out = match["source"], match.root.outputs[0]
        if not types_match(src.type, out.type):
            return f"result type {out.type} differs from the operand's {src.type} (broadcast or promotion)"
        return None

    def rewrite(self, match: Match, ctx: RewriteContext) -> None:
        ctx.rewriter.replace_node(match.root, [match["source"]])


# -- chains ---------------------------------------------------------------------------

_RESHAPES = ("reshape", "squeeze", "unsqueeze")


def _replace_with(rewriter: Rewriter, node: Node, src: Value, op: str, attrs: object) -> None:
    """Replace `node` by `op(src)`, or by `src` itself when that already has the result's type."""
    out = node.outputs[0]
    if types_match(src.type, out.type):
        rewriter.replace_node(node, [src])
        return
    new = rewriter.insert(op, [src], attrs, before=node)
    rewriter.replace_node(node, [new.outputs[0]])


class CollapseReshapes(RewriteRule):
    """reshape/squeeze/unsqueeze of reshape/squeeze/unsqueeze: one reshape of the first input.

    All three keep the elements in order and only relabel the shape, so any
    chain of them is one reshape to the last result's shape.
    """

    name = "collapse-reshapes"
    stat = "chains_collapsed"

    def match(self, node: Node, ctx: RewriteContext) -> Match | None:
        inner = node.inputs[0].producer if node.op in _RESHAPES else None
        if inner is None or inner.op not in _RESHAPES:
            return None
        return Match(node, {"source": inner.inputs[0]})

    def check(self, match: Match, ctx: RewriteContext) -> str | None:
        src, out = match["source"], match.root.outputs[0]
        if not dims_equal(dim_prod(src.type.shape), dim_prod(out.type.shape)):
            return f"element counts of {src.type} and {out.type} differ"
        return None

    def rewrite(self, match: Match, ctx: RewriteContext) -> None:
        out = match.root.outputs[0]
        _replace_with(ctx.rewriter, match.root, match["source"], "reshape", ShapeAttrs(tuple(out.type.shape)))


class CollapsePermutes(RewriteRule):
    """permute of permute: one permute by the composed order, or nothing when it is the identity."""

    name = "collapse-permutes"
    stat = "chains_collapsed"

    def match(self, node: Node, ctx: RewriteContext) -> Match | None:
        inner = node.inputs[0].producer if node.op == "permute" else None
        if inner is None or inner.op != "permute":
            return None
        # x.permute(p).permute(q) has dim i = x's dim p[q[i]]
        perm = tuple(inner.attrs.perm[i] for i in node.attrs.perm)
        return Match(node, {"source": inner.inputs[0], "perm": perm})

    def rewrite(self, match: Match, ctx: RewriteContext) -> None:
        perm = match["perm"]
        if perm == tuple(range(len(perm))):
            ctx.rewriter.replace_node(match.root, [match["source"]])
            return
        # Not `_replace_with`: a permute that swaps dims of equal size (the transpose of a square
        # [.., seq, seq]) has the source's type but not its values.
        new = ctx.rewriter.insert("permute", [match["source"]], PermuteAttrs(perm), before=match.root)
        ctx.rewriter.replace_node(match.root, [new.outputs[0]])


# Conversions that keep every value exactly: converting through them and on
# to any dtype gives what converting directly gives (checked exhaustively on
# the 8/16-bit types and by sampling on the wider ones).
_LOSSLESS: dict[DType, frozenset[DType]] = {
    DType.BOOL: frozenset(DType) - {DType.BOOL},
    DType.U8: frozenset({DType.I16, DType.I32, DType.I64, DType.F16, DType.BF16, DType.F32, DType.F64}),
    DType.I8: frozenset({DType.I16, DType.I32, DType.I64, DType.F16, DType.BF16, DType.F32, DType.F64}),
    DType.I16: frozenset({DType.I32, DType.I64, DType.F32, DType.F64}),
    DType.I32: frozenset({DType.I64, DType.F64}),
    DType.F16: frozenset({DType.F32, DType.F64}),
    DType.BF16: frozenset({DType.F32, DType.F64}),
    DType.F32: frozenset({DType.F64}),
}


class CollapseCasts(RewriteRule):
    """cast(cast(x, B), C) with x -> B lossless: cast(x, C), or x when C is x's dtype."""

    name = "collapse-casts"
    stat = "chains_collapsed"

    def match(self, node: Node, ctx: RewriteContext) -> Match | None:
        inner = node.inputs[0].producer if node.op == "cast" else None
        if inner is None or inner.op != "cast":
            return None
        return Match(node, {"source": inner.inputs[0], "via": inner.attrs.dtype})

    def check(self, match: Match, ctx: RewriteContext) -> str | None:
        a, b, c = match["source"].type.dtype, match["via"], match.root.attrs.dtype
        if b not in _LOSSLESS.get(a, frozenset()):
            return f"the inner cast {a} -> {b} can change values"
        if a.is_float and not c.is_float and c != DType.BOOL:
            # out-of-range float -> int conversion is implementation-defined; keep the
            # traced path rather than bet two paths agree on it
            return f"float -> {c} conversion of out-of-range values is implementation-defined"
        return None

    def rewrite(self, match: Match, ctx: RewriteContext) -> None:
        _replace_with(ctx.rewriter, match.root, match["source"], "cast", match.root.attrs)


RULES: tuple[RewriteRule, ...] = (RemoveIdentity(), CollapseReshapes(), CollapsePermutes(), CollapseCasts())


# -- constants ------------------------------------------------------------------------


def fold_constants(graph: Graph, rw: Rewriter, max_elements: int) -> int:
    """Evaluate nodes computed from `full`/`arange` alone; returns how many nodes were folded away.

    The whole constant subgraph is evaluated in one forward sweep, and only the
    values that leave it (used by a non-constant node or a graph output) are
    materialised, so a chain of constant ops becomes one `full` or param rather
    than one param per step.
    """
    ctx = EvalContext({})  # no dims are bound: only static shapes are evaluated
    consts: dict[Value, torch.Tensor] = {}
    evaluated: list[Node] = []
    for node in graph.nodes:
        if not all(v in consts for v in node.inputs):
            continue
        if not all(_small_static(o.type, max_elements) for o in node.outputs):
            continue
        try:
            outs = get_op(node.op).run(ctx, node.attrs, [consts[v] for v in node.inputs])
        except Exception:  # noqa: BLE001  (a reference that fails here will fail at run time too; leave it there)
            continue
        if len(outs) != len(node.outputs) or not all(_has_type(t, o.type) for t, o in zip(outs, node.outputs)):
            continue
        for o, t in zip(node.outputs, outs):
            consts[o] = t
        if node.inputs:  # `full` and `arange` are the constants' sources, already minimal
            evaluated.append(node)
    if not evaluated:
        return 0
    folded = set(evaluated)
    outputs = set(graph.output_values())
    for node in evaluated:
        for o in node.outputs:
            escapes = o in outputs or any(user not in folded for user, _ in o.uses)
            if escapes:
                rw.replace_all_uses(o, _materialise(rw, node, consts[o], o.type))
    for node in reversed(evaluated):
        rw.erase_dead(node)
    return sum(1 for n in evaluated if rw.was_erased(n))


def _small_static(t: TensorType, max_elements: int) -> bool:
    return t.is_static and dim_prod(t.shape) <= max_elements  # type: ignore[operator]


def _has_type(t: torch.Tensor, want: TensorType) -> bool:
    return tuple(t.shape) == want.shape and t.dtype == want.dtype.torch


def _materialise(rw: Rewriter, anchor: Node, t: torch.Tensor, type: TensorType) -> Value:
    value = _uniform_value(t)
    if value is not None:
        full = FullAttrs(tuple(type.shape), value, type.dtype)
        return rw.insert("full", [], full, before=anchor).outputs[0]
    return rw.add_param("const", t.clone(memory_format=torch.contiguous_format))


def _uniform_value(t: torch.Tensor) -> bool | int | float | None:
    """The one value every element holds, as a Python scalar of the dtype's kind; None if they differ."""
    if t.numel() == 0:
        return False if t.dtype == torch.bool else 0.0 if t.is_floating_point() else 0
    flat = t.reshape(-1)
    first = flat[0]
    if t.is_floating_point():
        if torch.isnan(first):
            return float("nan") if bool(torch.isnan(flat).all()) else None
        # `==` calls -0.0 and 0.0 equal; the sign matters to 1/x, so compare it too
        same = (flat == first) & (torch.signbit(flat) == torch.signbit(first))
        return float(first.item()) if bool(same.all()) else None
    if not bool((flat == first).all()):
        return None
    return bool(first.item()) if t.dtype == torch.bool else int(first.item())
