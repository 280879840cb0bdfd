"""lift-moe: mixtures of experts written in plain PyTorch become one `experts` op.

Three spellings, one rule each; x is the tokens [T, H], ids and weights the
router's top-k [T, K], FFN_e expert e's feed-forward network (expert_ffn.py):

1. expert-loop (DeepSeekMoE, most tutorials): a loop over experts that finds each
   expert's (token, slot) pairs with `torch.where(ids == e)` / `nonzero`, runs the
   expert on `x[token]`, scales by `weights[token, slot, None]` and puts the rows
   back with `index_add_` into zeros. This is the `experts` reference itself, so
   the lift is exact (the experts add in ascending order; the loop's order may
   differ: float rounding).
2. dense-combine (examples/tiny_moe_transformer.py): every expert on every token,
   the top-k weights scattered into a [T, E] combine (`zeros.scatter(-1, ids,
   weights)`), the outputs stacked ([T, E, H] by torch.stack of per-expert
   modules) or computed at once from stacked weights (einsum, bmm, matmul;
   contraction.py reads them through their reshapes), multiplied by the combine
   and summed over E (a mul and a sum, or an einsum/matmul).
3. mask-loop: `out += expert(x) * combine[:, e:e+1]` for every expert, the
   combine as in 2; other terms of the same sum (a residual) stay added.

2 and 3 are exact as long as each expert's output is finite: an expert a token did
not choose contributes 0 * FFN_e(x) = 0 there, which the experts op skips. They
need distinct ids per token (a scatter keeps one weight of a repeated id): so for
every form the ids must be the indices of a top-k over [T, E] router scores and
the weights computed from that top-k (moe_routing.py); softmax without a top-k
(a soft mixture) and weights from elsewhere are near-misses that say so.

The expert weights are stacked into new params, `layout` kept as the sources had
it ("out_in" when every projection was nn.Linear-shaped, else "in_out"); the
params the experts used are removed. The op is "dense" dispatch; `sparsify-moe`
makes it follow the routing.

Preconditions: `fold-shapes,cse` first helps (the presets run them). No options.
Stats: expert_loop, dense_combine, mask_loop.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import torch

from ..ir.core import Graph, Node, Value, dims_equal
from ..ir.opdefs.experts import ExpertsAttrs
from ..ir.opdefs.shape import ShapeAttrs
from ..ir.verifier import types_match
from .contraction import LAYOUT_OPS, Stacked, contraction
from .expert_ffn import ExpertFFN, expert_ffn
from .manager import Pass, PassResult, register_pass
from .moe_routing import dense_combine, ids_reason, topk_of, weights_reason
from .patterns import full_value, only_use, producer, same_value, scalar_constant
from .rewrite import Match, RewriteContext, Rewriter, RewriteRule, apply_rules


# -- what the rules share: one experts op from per-expert or stacked FFNs ------------------------------


@dataclass(frozen=True)
class Lifted:
    """Everything the rewrite needs, found by a rule's check."""

    out: Value  # the value the experts op replaces
    x: Value
    ids: Value
    weights: Value
    attrs: ExpertsAttrs
    tensors: tuple[torch.Tensor, ...]  # w_up, w_down[, b_up, b_down] in the layout of attrs
    stem: str
    old_params: tuple[str, ...]
    rest: tuple[Value, ...] = ()  # other terms of the sum the experts were part of


def _lifted(out: Value, x: Value, ids: Value, weights: Value, ffns: list[ExpertFFN] | ExpertFFN, n_experts: int, rest=()) -> Lifted | str:
    """Stack per-expert FFNs (or take a stacked one) into the experts op's operands, or say why not."""
    stacked = isinstance(ffns, ExpertFFN)
    group = [ffns] if stacked else ffns
    first = group[0]
    for f in group[1:]:
        if (f.activation, f.alpha, f.gated, f.split) != (first.activation, first.alpha, first.gated, first.split):
            return f"the experts differ in activation ({first.activation} vs {f.activation}) or gating"
        if f.w_up.shape != first.w_up.shape or f.w_down.shape != first.w_down.shape:
            return "the experts differ in size"
        if not same_value(f.x, first.x):
            return "the experts read different tokens"
    if not same_value(first.x, x):
        return "the experts read other tokens than the router scores"
    tokens = [d for d in x.type.shape if d != 1]
    if len(tokens) != 2 or out.type.dtype != x.type.dtype or [d for d in out.type.shape if d != 1] != tokens:
        return f"the mixture's result {out.type} is not [T, H] like its tokens {x.type}"
    if not dims_equal(ids.type.shape[0], tokens[0]):
        return "the router's tokens are not the experts' tokens"
    w_up = first.w_up if stacked else torch.stack([f.w_up for f in group])
    w_down = first.w_down if stacked else torch.stack([f.w_down for f in group])
    if w_up.shape[0] != n_experts:
        return f"{w_up.shape[0]} experts for a router over {n_experts}"
    tensors = [w_up, w_down]
    if any(f.b_up is not None or f.b_down is not None for f in group):
        def bias(b, w):
            return b if b is not None else torch.zeros(w.shape[:-2] + w.shape[-1:], dtype=w.dtype, device=w.device)

        b_up = bias(first.b_up, first.w_up) if stacked else torch.stack([bias(f.b_up, f.w_up) for f in group])
        b_down = bias(first.b_down, first.w_down) if stacked else torch.stack([bias(f.b_down, f.w_down) for f in group])
        tensors += [b_up, b_down]
    if any(t.dtype != x.type.dtype.torch for t in tensors):
        return f"the expert weights are not in the tokens' dtype {x.type.dtype}"
    out_in = all(f.out_in for f in group)
    if out_in:  # keep nn.Linear's [out, in]: the lifted op then computes F.linear like the model did
        tensors[0], tensors[1] = tensors[0].transpose(-1, -2), tensors[1].transpose(-1, -2)
    tensors = tuple(t if t.is_meta else t.contiguous() for t in tensors)
    attrs = ExpertsAttrs(activation=first.activation, alpha=float(first.alpha), gated=first.gated, layout="out_in" if out_in else "in_out", split=first.split)
    params = tuple(dict.fromkeys(p for f in group for p in f.params))
    return Lifted(out, x, ids, weights, attrs, tensors, _stem(params), params, tuple(rest))


def _stem(params: tuple[str, ...]) -> str:
    """`layers.1.mlp.experts.` from `layers.1.mlp.experts.0.up.weight`, ...: where the experts lived."""
    prefix = os.path.commonprefix(list(params)) if params else ""
    prefix = prefix[: prefix.rfind(".") + 1] if "." in prefix else ""
    return prefix or "experts."


def _emit(ctx: RewriteContext, lifted: Lifted) -> None:
    rw: Rewriter = ctx.rewriter
    names = ("w_up", "w_down", "b_up", "b_down")
    params = [rw.add_param(lifted.stem + n, t) for n, t in zip(names, lifted.tensors)]
    at = lifted.out.producer
    x = lifted.x
    if x.type.rank != 2:  # the tokens as an einsum viewed them, [1, T, H]: the op takes [T, H]
        x = rw.insert("reshape", [x], ShapeAttrs(tuple(d for d in x.type.shape if d != 1)), before=at).outputs[0]
    new = rw.insert("experts", [x, lifted.ids, lifted.weights, *params], lifted.attrs, before=at).outputs[0]
    if not types_match(new.type, lifted.out.type):  # [T, H] where the result had size-1 axes too
        new = rw.insert("reshape", [new], ShapeAttrs(lifted.out.type.shape), before=at).outputs[0]
    for term in lifted.rest:
        new = rw.insert("add", [new, term], before=at).outputs[0]
    rw.replace_all_uses(lifted.out, new)
    rw.erase_dead(at)
    for name in lifted.old_params:
        v = ctx.graph.param_values.get(name)
        if v is not None and not v.uses and not any(v is o for o in ctx.graph.output_values()):
            rw.erase_param(name)


class _LiftRule(RewriteRule):
    """A rule whose check reads the whole mixture (`_read`) and whose rewrite emits the experts op."""

    def _read(self, match: Match, ctx: RewriteContext) -> Lifted | str:
        raise NotImplementedError

    def check(self, match: Match, ctx: RewriteContext) -> str | None:
        try:
            lifted = self._read(match, ctx)
        except (RuntimeError, ValueError, IndexError) as e:  # a shape no reader foresaw: refuse, never break the compile
            return f"the experts could not be read ({type(e).__name__}: {e})"
        if isinstance(lifted, str):
            return lifted
        match.captures["lifted"] = lifted
        return None

    def rewrite(self, match: Match, ctx: RewriteContext) -> None:
        _emit(ctx, match["lifted"])


def _routing(graph: Graph, ids: Value, weights: Value) -> tuple[Node, int] | str:
    why = ids_reason(ids)
    if why is not None:
        return why
    topk = topk_of(ids)
    why = weights_reason(graph, weights, topk)
    return why if why is not None else (topk, topk.inputs[0].type.shape[1])


# -- 1. the expert loop: torch.where(ids == e) and index_add_ --------------------------------------------


def _nonzero_column(v: Value) -> tuple[Node, int] | None:
    """(nonzero node, column) when `v` is one column of a nonzero's result, e.g. `torch.where(m)[c]`."""
    n = v.producer
    if n is not None and n.op == "select" and n.attrs.dim % 2 == 1:
        nz = producer(n.inputs[0], "nonzero")
        return (nz, n.attrs.index) if nz is not None and isinstance(n.attrs.index, int) else None
    if n is not None and n.op in ("squeeze", "reshape") and v.type.rank == 1:
        s = producer(n.inputs[0], "slice")
        if s is not None and s.attrs.dim % 2 == 1 and s.attrs.step == 1 and isinstance(s.attrs.start, int) and s.attrs.end == s.attrs.start + 1:
            nz = producer(s.inputs[0], "nonzero")
            return (nz, s.attrs.start) if nz is not None else None
    return None


def _eq_constant(mask: Value) -> tuple[Value, int] | None:
    """(ids, e) when `mask` is `ids == e` for an integer constant e."""
    n = producer(mask, "eq")
    if n is None:
        return None
    for a, b in (n.inputs, n.inputs[::-1]):
        c = scalar_constant(b)
        if c is not None and c == int(c) and not a.type.dtype.is_float:
            return a, int(c)
    return None


def _routed_weight(v: Value, nz: Node) -> Value | None:
    """`weights` when `v` [n, 1] is `weights[token, slot, None]` (or `.unsqueeze(-1)` of `weights[token, slot]`)."""
    n = v.producer
    inner = None
    if n is not None and n.op == "index" and tuple(n.attrs.dims) == (0, 1) and len(n.inputs) == 3:
        u = producer(n.inputs[0], "unsqueeze")
        if u is not None and u.attrs.dim % 3 == 2:
            inner = (u.inputs[0], n.inputs[1], n.inputs[2])
    elif n is not None and n.op in ("unsqueeze", "reshape") and v.type.rank == 2 and v.type.shape[1] == 1:
        i = producer(n.inputs[0], "index")
        if i is not None and tuple(i.attrs.dims) == (0, 1) and len(i.inputs) == 3 and i.outputs[0].type.rank == 1:
            inner = (i.inputs[0], i.inputs[1], i.inputs[2])
    if inner is None:
        return None
    weights, token, slot = inner
    if _nonzero_column(token) != (nz, 0) or _nonzero_column(slot) != (nz, 1):
        return None
    return weights


class ExpertLoopRule(_LiftRule):
    """A loop of `out.index_add_(0, token, expert(x[token]) * weights[token, slot, None])` over experts."""

    name = "expert-loop"
    stat = "expert_loop"

    def match(self, node: Node, ctx: RewriteContext) -> Match | None:
        if node.op != "index_add":
            return None
        if any(u.op == "index_add" and u.inputs[0] is node.outputs[0] for u in node.outputs[0].users):
            return None  # not the last expert's: the rule looks at the whole chain from its end
        return Match(node)

    def _read(self, match: Match, ctx: RewriteContext) -> Lifted | str:
        graph, root = ctx.graph, match.root
        steps, v = [], root.outputs[0]
        while (n := producer(v, "index_add")) is not None:
            steps.append(n)
            v = n.inputs[0]
        steps.reverse()
        if full_value(v) is None or full_value(v) != 0 or isinstance(full_value(v), bool):
            return "the sum does not start from zeros"
        if any(not only_use(n.outputs[0], graph, steps[i + 1]) for i, n in enumerate(steps[:-1])):
            return "a partial sum of the loop is used elsewhere too"
        experts: dict[int, ExpertFFN] = {}
        ids = x = weights = None
        for step in steps:
            if step.attrs.dim % 2 != 0:
                return "index_add along another axis than the tokens"
            found = _nonzero_column(step.inputs[1])
            if found is None or found[1] != 0:
                return "the rows put back are not the token column of a torch.where/nonzero"
            nz = found[0]
            eq = _eq_constant(nz.inputs[0])
            if eq is None:
                return "the rows are not found by torch.where(ids == e) for a constant e"
            ids_e, e = eq
            if ids is not None and not same_value(ids, ids_e):
                return "the experts compare different ids"
            ids = ids_e
            prod = producer(step.inputs[2], "mul")
            if prod is None:
                return "the rows put back are not an expert's output times its routing weight"
            why = "the rows put back are not scaled by weights[token, slot, None]"
            for y, w_col in (prod.inputs, prod.inputs[::-1]):
                w = _routed_weight(w_col, nz)
                if w is None:
                    continue
                if weights is not None and not same_value(weights, w):
                    why = "the experts are scaled by different weights"
                    break
                ffn = expert_ffn(graph, y, ("t", "f"))
                if isinstance(ffn, str):
                    why = ffn
                    break
                rows = producer(ffn.x, "index")
                if rows is None or tuple(rows.attrs.dims) != (0,) or _nonzero_column(rows.inputs[1]) != (nz, 0):
                    why = "the expert does not run on x[token] of its own torch.where"
                    break
                if x is not None and not same_value(x, rows.inputs[0]):
                    why = "the experts read different tokens"
                    break
                if e in experts:
                    why = f"expert {e} appears twice in the loop"
                    break
                x, weights, experts[e] = rows.inputs[0], w, ffn
                why = None
                break
            if why is not None:
                return why
        routing = _routing(graph, ids, weights)
        if isinstance(routing, str):
            return routing
        _, n_experts = routing
        if sorted(experts) != list(range(n_experts)):
            return f"the loop covers experts {sorted(experts)}, the router chooses among {n_experts}"
        if not dims_equal(ids.type.shape[0], x.type.shape[0]):
            return "the router's tokens are not the experts' tokens"
        # the FFNs were read on x[token]; as an experts op they read x itself
        ffns = [_on_tokens(experts[e], x) for e in range(n_experts)]
        return _lifted(root.outputs[0], x, ids, weights, ffns, n_experts)


def _on_tokens(ffn: ExpertFFN, x: Value) -> ExpertFFN:
    return dataclasses.replace(ffn, x=x)


# -- 3. the mask loop: out += expert(x) * combine[:, e:e+1] ----------------------------------------------


def _column(v: Value) -> tuple[Value, int] | None:
    """(combine, e) when `v` [T, 1] is column e of a [T, E] combine: `c[:, e:e+1]`, `c[:, e, None]`, `c[:, e].unsqueeze(-1)`."""
    n = v.producer
    if n is None or v.type.rank != 2 or v.type.shape[1] != 1:
        return None
    if n.op == "slice" and n.attrs.dim % 2 == 1 and n.attrs.step == 1 and isinstance(n.attrs.start, int) and n.attrs.end == n.attrs.start + 1:
        return (n.inputs[0], n.attrs.start) if n.inputs[0].type.rank == 2 else None
    if n.op in ("unsqueeze", "reshape"):
        s = producer(n.inputs[0], "select")
        if s is not None and s.attrs.dim % 2 == 1 and isinstance(s.attrs.index, int) and s.inputs[0].type.rank == 2:
            return s.inputs[0], s.attrs.index
    return None


def _sum_terms(graph: Graph, node: Node) -> list[Value]:
    """The terms of the tree of adds rooted at `node` (descending into adds used only there)."""
    out = []
    for v in node.inputs:
        inner = producer(v, "add")
        if inner is not None and only_use(v, graph, node):
            out.extend(_sum_terms(graph, inner))
        else:
            out.append(v)
    return out


class MaskLoopRule(_LiftRule):
    """A sum over experts of `expert(x) * combine[:, e:e+1]`, combine a top-k scattered into zeros."""

    name = "mask-loop"
    stat = "mask_loop"

    def match(self, node: Node, ctx: RewriteContext) -> Match | None:
        if node.op != "add":
            return None
        out = node.outputs[0]
        if only_use(out, ctx.graph) and out.uses[0][0].op == "add":
            return None  # inside a bigger sum: the rule reads it from its top
        terms = _sum_terms(ctx.graph, node)
        masked = [t for t in terms if producer(t, "mul") and any(_column(i) for i in t.producer.inputs)]
        return Match(node, {"terms": terms}) if len(masked) >= 2 else None

    def _read(self, match: Match, ctx: RewriteContext) -> Lifted | str:
        graph, root = ctx.graph, match.root
        experts: dict[int, ExpertFFN] = {}
        combine, rest = None, []
        for term in match["terms"]:
            prod = producer(term, "mul")
            pair = None
            if prod is not None and term.type == root.outputs[0].type:
                for y, col in (prod.inputs, prod.inputs[::-1]):
                    if _column(col) is not None:
                        pair = (y, *_column(col))
                        break
            if pair is None:
                if not (full_value(term) == 0 and term.type == root.outputs[0].type):
                    rest.append(term)
                continue
            y, c, e = pair
            if combine is not None and not same_value(c, combine):
                return "the experts are scaled by columns of different combines"
            combine = c
            ffn = expert_ffn(graph, y, ("t", "f"))
            if isinstance(ffn, str):
                return ffn
            if e in experts:
                return f"expert column {e} appears twice"
            experts[e] = ffn
        if any(t.type != root.outputs[0].type for t in rest):
            return "other terms of the sum broadcast"
        routing = dense_combine(combine)
        if isinstance(routing, str):
            return routing
        topk, ids, weights = routing
        why = weights_reason(graph, weights, topk)
        if why is not None:
            return why
        n_experts = combine.type.shape[1]
        if sorted(experts) != list(range(n_experts)):
            return f"the sum covers expert columns {sorted(experts)} of {n_experts}"
        return _lifted(root.outputs[0], experts[0].x, ids, weights, [experts[e] for e in range(n_experts)], n_experts, rest)


# -- 2. the dense combine: sum over E of combine * stacked expert outputs --------------------------------


def _chain_values(node: Node, graph: Graph) -> list[Value]:
    """The node's result and the layout ops that follow it alone, in order."""
    out = [node.outputs[0]]
    while only_use(out[-1], graph) and out[-1].uses[0][0].op in LAYOUT_OPS:
        out.append(out[-1].uses[0][0].outputs[0])
    return out


def _combine_reading(c) -> tuple[int, tuple] | None:
    """(combine source index, tags of the other source) when c is sum_e C[t, e] * Y[.., t, e, h ..] -> v[t, h].

    v may carry size-1 axes besides t and h (an einsum's matmul result, [T, 1, H]), t before h.
    """
    v_shape = c.out.type.shape
    for ci in (0, 1):
        croles, yroles = c.roles[ci], c.roles[1 - ci]
        if len(croles) != 2 or croles[0][0] != "out" or croles[1][0] != "sum":
            continue
        t = croles[0][1]
        outs = [r[1] for r in yroles if r[0] == "out" and r[1] != t]
        if len(outs) != 1 or outs[0] < t or any(d != 1 for i, d in enumerate(v_shape) if i not in (t, outs[0])):
            continue
        names = {("out", t): "t", croles[1]: "e", ("out", outs[0]): "f"}
        tags = tuple(names.get(r) for r in yroles)
        if sorted(x for x in tags if x) == ["e", "f", "t"] and all(r in names or r[0] == "unit" for r in yroles):
            return ci, tags
    return None


class DenseCombineRule(_LiftRule):
    """sum over E of combine[T, E] * (every expert on every token), however the product and sum are spelled."""

    name = "dense-combine"
    stat = "dense_combine"

    def match(self, node: Node, ctx: RewriteContext) -> Match | None:
        if node.op not in ("sum", "matmul"):
            return None
        found = None
        # The last value of the layout chain that still reads as the combine: it leaves the fewest reshapes.
        for v in _chain_values(node, ctx.graph):
            if sum(d != 1 for d in v.type.shape) != 2:
                continue  # the mixture's result is [T, H], maybe with size-1 axes
            c = contraction(v)
            reading = _combine_reading(c) if c is not None else None
            if reading is not None:
                found = Match(node, {"out": v, "contraction": c, "reading": reading})
        return found

    def _read(self, match: Match, ctx: RewriteContext) -> Lifted | str:
        graph, c = ctx.graph, match["contraction"]
        ci, tags = match["reading"]
        combine, y = c.sources[ci], c.sources[1 - ci]
        routing = dense_combine(combine)
        if isinstance(routing, str):
            return routing
        topk, ids, weights = routing
        why = weights_reason(graph, weights, topk)
        if why is not None:
            return why
        if weights.type.dtype != combine.type.dtype:
            return "the combine is cast after the scatter"
        n_experts = combine.type.shape[1]
        if isinstance(y, Stacked):  # torch.stack of per-expert outputs: part e is expert e
            if tags[0] != "e":
                return "the stacked outputs are not stacked along the expert axis"
            ffns = []
            for part in y.parts:
                ffn = expert_ffn(graph, part, tags[1:])
                if isinstance(ffn, str):
                    return f"expert {len(ffns)}: {ffn}"
                ffns.append(ffn)
            x = ffns[0].x
        else:
            ffns = expert_ffn(graph, y, tags)
            if isinstance(ffns, str):
                return ffns
            x = ffns.x
        return _lifted(match["out"], x, ids, weights, ffns, n_experts)


RULES = (ExpertLoopRule(), DenseCombineRule(), MaskLoopRule())


@register_pass("lift-moe")
@dataclass(frozen=True)
class LiftMoE(Pass):
    """Lift hand-written mixtures of experts to one `experts` op (exact): an expert loop with torch.where and
    index_add_, the dense masked form (a top-k combine times every expert's output, stacked modules or
    einsum/bmm over stacked weights), and a loop adding each expert's output times its combine column.

    Expert FFNs are recognised by what they compute (linear / act / linear, SwiGLU or GeGLU gated, biases
    optional) and their weights stacked into new params. The ids and weights must be a router's top-k.
    No options. Stats: expert_loop, dense_combine, mask_loop.
    """

    exact = True

    def run(self, graph: Graph) -> PassResult:
        stats = apply_rules(graph, RULES, rewriter=Rewriter(graph))
        erased = stats.pop("nodes_erased", 0)
        lifted = {k: stats.get(k, 0) for k in ("expert_loop", "dense_combine", "mask_loop")}
        if erased:
            lifted["nodes_erased"] = erased
        return PassResult(graph, any(lifted[k] for k in ("expert_loop", "dense_combine", "mask_loop")), lifted)
