"""lift-linear-attention: linear attention written out by hand becomes one `linear_attention` op.

What is recognised is what the code computes, as Katharopoulos et al. ("Transformers
are RNNs", 2020) and the tutorials that follow them write it, with φ(x) = elu(x) + 1:

    non-causal   kv = φ(K)ᵀ V                       (matmul, or einsum 'nhsd,nhse->nhde')
                 z  = 1 / (φ(Q) · φ(K).sum(seq))    (or a division by the normaliser)
                 out = φ(Q) kv * z
    causal       kv = cumsum_seq(φ(K) ⊗ V),  z = 1 / (φ(Q) · cumsum_seq(φ(K))),  out = φ(Q) kv * z

in any spelling of its products (matmul, einsum, bmm, broadcast multiply and sum),
layouts ([B, H, S, D] or [B, S, H, D], one for q, k and v; the op gets them transposed
to [B, H, S, D] and its result transposed back) and grouped K/V heads.

How: the root is a division `num / den` (or `num * reciprocal(den)`, `num * (1 / den)`)
whose numerator is a product. Walking back from it through products, reductions,
prefix sums and layout ops finds its leaves: two values through the feature map
(φ(q), φ(k); `F.elu(x) + 1` as traced, or `where(x > 0, x + 1, exp(x))`) and one
other (v). Whether the root IS linear_attention(q, k, v) is then decided by
evaluating the subgraph, in float64 on random q, k, v at two sets of sizes for the
dynamic dims, against the op's reference: the subgraph between the leaves and the
root is a rational function of q, k and v (products, sums, one division, elu), and
two different rational functions agree at random points with probability zero.
A normaliser over the wrong axis, a missing transpose or a causal numerator with
a non-causal normaliser all fail that comparison and are left as written.

Exactness: `linear_attention` has no eps, so a normaliser with an eps added
(`1 / (φ(Q)·Σφ(K) + eps)`, the fast-transformers default 1e-6) is NOT lifted: it
is a different function (by eps / (φ(Q)·Σφ(K)) relative), and this pass is exact.
Such sites are near-misses that say so. Other feature maps (relu, softmax, elu
without + 1) are near-misses too: the op knows elu + 1 only.

A feature map applied before the heads are split (φ on the [B, S, H*D] projection, then
view and transpose) is followed: the op reads q with the same view and transpose. Not
followed: the quadratic spelling (φ(Q)φ(K)ᵀ) V / rowsum(φ(Q)φ(K)ᵀ).

Preconditions: none (cleanup first gives smaller subgraphs). Options: none.
Stats: lifted (one per linear_attention made), causal (of which causal).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from ..ir.core import Graph, Node, SymDim, Value, dims_equal
from ..ir.opdefs.attention import LinearAttentionAttrs, linear_attention_reference
from ..ir.opdefs.shape import PermuteAttrs, ShapeAttrs
from ..ir.ops import EvalContext, get_op
from .manager import Pass, PassResult, register_pass
from .patterns import producer, scalar_constant
from .rewrite import Match, RewriteContext, RewriteRule, apply_rules

LAYOUT_OPS = ("reshape", "permute", "unsqueeze", "squeeze", "expand", "select", "slice")
# Ops the product/normaliser part of linear attention is written with (between the leaves and the root).
_BODY_OPS = LAYOUT_OPS + ("matmul", "mul", "div", "reciprocal", "sum", "cumsum", "full", "add", "cast")
# Two sets of sizes for the dynamic dims: distinct and >= 3, so none looks like a broadcast 1.
_SIZES = ((3, 5, 7, 11, 13, 17), (4, 6, 9, 10, 14, 15))
_RTOL = 1e-9  # float64: summation order moves results by ~1e-15; eps=1e-6 by ~1e-8


def feature_input(v: Value) -> Value | None:
    """x when `v` is φ(x) = elu(x) + 1, in the spellings traced code has, else None.

    `F.elu(x) + 1` (the frontend's elu is `where(x > 0, x, exp(x) - 1)`), `1 + F.elu(x)`,
    and `where(x > 0, x + 1, exp(x))`. The evaluation in `check` confirms the function.
    """
    n = v.producer
    if n is None:
        return None
    if n.op == "add":
        for e, c in (n.inputs, n.inputs[::-1]):
            if scalar_constant(c) == 1.0:
                x = _elu_input(e)
                if x is not None:
                    return x
        return None
    if n.op == "where":
        x = _positive_test(n.inputs[0])
        if x is None:
            return None
        plus = producer(n.inputs[1], "add")
        ex = producer(n.inputs[2], "exp")
        if plus is not None and ex is not None and ex.inputs[0] is x and x in plus.inputs:
            other = plus.inputs[1] if plus.inputs[0] is x else plus.inputs[0]
            return x if scalar_constant(other) == 1.0 else None
    return None


def _elu_input(v: Value) -> Value | None:
    """x when `v` is where(x > 0, x, exp(x) - 1)."""
    n = producer(v, "where")
    if n is None:
        return None
    x = _positive_test(n.inputs[0])
    sub = producer(n.inputs[2], "sub")
    if x is None or n.inputs[1] is not x or sub is None or scalar_constant(sub.inputs[1]) != 1.0:
        return None
    ex = producer(sub.inputs[0], "exp")
    return x if ex is not None and ex.inputs[0] is x else None


def _positive_test(v: Value) -> Value | None:
    """x when `v` is `x > 0`."""
    n = producer(v, "gt")
    return n.inputs[0] if n is not None and scalar_constant(n.inputs[1]) == 0.0 else None


def _through_layout(v: Value) -> Value:
    while v.producer is not None and v.producer.op in LAYOUT_OPS:
        v = v.producer.inputs[0]
    return v


def _reciprocal_of(v: Value) -> Value | None:
    """d when `v` is (a layout of) reciprocal(d) or 1 / d."""
    n = _through_layout(v).producer
    if n is None:
        return None
    if n.op == "reciprocal":
        return n.inputs[0]
    if n.op == "div" and scalar_constant(n.inputs[0]) == 1.0:
        return n.inputs[1]
    return None


@dataclass
class _Body:
    """The walk back from the root: φ leaves (φ(x) value -> x), other leaves, the body's nodes."""

    features: dict[Value, Value]
    others: list[Value]
    nodes: set[Node]


def _walk(root: Value) -> _Body:
    features: dict[Value, Value] = {}
    others: list[Value] = []
    nodes: set[Node] = set()
    seen: set[Value] = set()
    stack = [root]
    while stack:
        v = stack.pop()
        if v in seen:
            continue
        seen.add(v)
        x = feature_input(v)
        if x is not None:
            features[v] = x
            continue
        n = v.producer
        if n is None or n.op not in _BODY_OPS:
            others.append(v)
            continue
        nodes.add(n)
        stack.extend(n.inputs)
    return _Body(features, others, nodes)


def _four_d_views(leaf: Value, body: set[Node]) -> list[tuple[Value, tuple | None]]:
    """Where v may be read as [batch, heads, seq, dim]: (value, None) for a rank-4 value on the
    layout chain from `leaf` into the body, (value, shape) for one that is that shape with unit
    axes added (einsum's view of v after cleanup merged its reshapes); rank-4 values first, each group nearest the body first.

    v may be read in another layout than q and k (a view, then a transpose for the product):
    each is a candidate, and the evaluation decides.
    """
    chain, v = [leaf], leaf
    while True:
        users = [u for u, _ in v.uses if u in body and u.op in LAYOUT_OPS]
        if len(users) != 1:
            break
        v = users[0].outputs[0]
        chain.append(v)
    views: list[tuple[Value, tuple | None]] = [(x, None) for x in reversed(chain) if x.type.rank == 4]
    for x in reversed(chain):  # after the rank-4 values: these cost a reshape
        if x.type.rank > 4 and len(squeezed := tuple(d for d in x.type.shape if d != 1)) == 4:
            views.append((x, squeezed))
    return views


def _cone(root: Value, leaves: list[Value], graph: Graph) -> list[Node] | None:
    """The nodes computing `root` from `leaves`, in graph order; None if anything else (an input, a weight) feeds it."""
    stop = set(leaves)
    seen: set[Value] = set()
    nodes: set[Node] = set()
    stack = [root]
    while stack:
        v = stack.pop()
        if v in seen or v in stop:
            continue
        seen.add(v)
        if v.producer is None:
            return None
        nodes.add(v.producer)
        stack.extend(v.producer.inputs)
    return [n for n in graph.nodes if n in nodes]


def _evaluate(cone: list[Node], leaves: list[Value], root: Value, bindings: dict[str, int], gen: torch.Generator):
    env = {v: torch.randn(v.type.concrete_shape(bindings), generator=gen, dtype=torch.float64) for v in leaves}
    ctx = EvalContext(dict(bindings))
    for n in cone:
        outs = get_op(n.op).run(ctx, n.attrs, [env[x] for x in n.inputs])
        for o, t in zip(n.outputs, outs):
            env[o] = t.to(torch.float64) if t.is_floating_point() else t
    return [env[v] for v in leaves], env[root]


def _bindings(values: list[Value], k: int) -> dict[str, int]:
    syms = sorted({s for x in values for d in x.type.shape if isinstance(d, SymDim) for s in d.symbols})
    sizes = _SIZES[k]
    return {s: sizes[i % len(sizes)] + len(sizes) * (i // len(sizes)) for i, s in enumerate(syms)}


@dataclass(frozen=True)
class _Operand:
    """An operand of the op: `leaf` (a value of the graph) through `steps` (layout ops to replay), of shape `shape`."""

    leaf: Value
    steps: tuple  # ((op, attrs), ...)
    shape: tuple


@dataclass(frozen=True)
class _Candidate:
    q: _Operand
    k: _Operand
    v: _Operand
    perm: tuple[int, ...]  # q, k, v permuted by it are [B, H, S, D]
    causal: bool
    out: str  # how the op's [B, H, S, Dv] result becomes the root: "same" | "permute" | "reshape" | "permute-reshape"


def _feature_operands(phi: Value, x: Value, body: set[Node]) -> list[_Operand]:
    """q (or k) as the op reads it: φ's input x, through the layout ops between φ(x) and its
    first 4-D [.., heads, seq, ..] view (a feature map applied before the heads are split);
    x itself when φ(x) is 4-D already. Every 4-D view on the chain is a candidate, nearest first."""
    operands, steps, v = [], (), phi
    while True:
        if v.type.rank == 4:
            operands.append(_Operand(x, steps, tuple(v.type.shape)))
        users = [u for u, _ in v.uses if u in body and u.op in LAYOUT_OPS]
        if len(users) != 1:
            return operands
        steps += ((users[0].op, users[0].attrs),)
        v = users[0].outputs[0]


def _shapes_fit(q: tuple, k: tuple, v: tuple, perm: tuple[int, ...]) -> bool:
    qs, ks, vs = ([x[p] for p in perm] for x in (q, k, v))
    if not (dims_equal(qs[0], ks[0]) and dims_equal(qs[0], vs[0]) and dims_equal(qs[2], ks[2]) and dims_equal(qs[2], vs[2])):
        return False
    if not (dims_equal(qs[3], ks[3]) and dims_equal(ks[1], vs[1]) and isinstance(ks[1], int) and ks[1] > 0):
        return False
    return dims_equal(qs[1], ks[1]) or (isinstance(qs[1], int) and qs[1] % ks[1] == 0)


def _out_forms(perm: tuple[int, ...], q: tuple, v: tuple, root: Value) -> list[str]:
    """The ways the op's result may be laid out as the root, by shape alone."""
    canon = (q[perm[0]], q[perm[1]], q[perm[2]], v[perm[3]])
    inv = tuple(perm.index(i) for i in range(4))
    laid = tuple(canon[i] for i in inv)  # the result in the inputs' layout
    r = root.type.shape

    def same(a, b):
        return len(a) == len(b) and all(dims_equal(x, y) for x, y in zip(a, b))

    def squeezed(s):
        return tuple(d for d in s if d != 1)

    forms = []
    for name, shape in (("same", canon), ("permute", laid)):
        if same(shape, r):
            forms.append(name)
    for name, shape in (("reshape", canon), ("permute-reshape", laid)):
        if len(r) != 4 and same(squeezed(shape), squeezed(r)):
            forms.append(name)
    return forms


def _replay(ctx: EvalContext, o: _Operand, t: torch.Tensor) -> torch.Tensor:
    for op, a in o.steps:
        (t,) = get_op(op).run(ctx, a, [t])
    return t


def _lay_out(o: torch.Tensor, perm: tuple[int, ...], form: str, shape: tuple[int, ...]) -> torch.Tensor:
    inv = tuple(perm.index(i) for i in range(4))
    if form in ("permute", "permute-reshape"):
        o = o.permute(inv)
    return o.reshape(shape)


@dataclass(frozen=True)
class LiftLinearAttention(RewriteRule):
    """`num / den` that computes linear attention of φ(q), φ(k), v -> `linear_attention(q, k, v)`."""

    name = "lift-linear-attention"
    stat = "lifted"

    def match(self, node: Node, ctx: RewriteContext) -> Match | None:
        if node.op == "div":
            pairs = [(node.inputs[0], node.inputs[1])]
        elif node.op == "mul":
            pairs = [(a, d) for a, b in (node.inputs, node.inputs[::-1]) if (d := _reciprocal_of(b)) is not None]
        else:
            return None
        for num, den in pairs:
            n = _through_layout(num).producer
            d = _through_layout(den).producer
            # a product over a product (an eps `add` is refused in check, with its reason)
            if n is not None and d is not None and n.op in ("matmul", "sum") and d.op in ("matmul", "sum", "add"):
                return Match(node, {"num": num, "den": den})
        return None

    def check(self, match: Match, ctx: RewriteContext) -> str | None:
        root = match.root.outputs[0]
        body = _walk(root)
        for n in body.nodes:
            if n.op == "add":
                consts = [c for c in (scalar_constant(x) for x in n.inputs) if c is not None]
                if consts:
                    return f"adds {consts[0]:g} to the normaliser: linear_attention has no eps, so lifting would not be exact"
        if n_casts := [n for n in body.nodes if n.op == "cast"]:
            return f"casts inside the products ({n_casts[0].attrs.dtype}), which linear_attention does not"
        others = [v for v in body.others if not (v.producer is not None and v.producer.op == "full")]
        if len(body.features) == 0:
            ops = sorted({v.producer.op if v.producer is not None else "input" for v in others})
            return f"no elu(x) + 1 feature map on q and k (the products read {', '.join(ops)}); linear_attention's φ is elu + 1"
        if len(body.features) != 2 or len(others) != 1:
            return f"reads {len(body.features)} feature-mapped values and {len(others)} others; linear attention reads φ(q), φ(k) and v"
        (phi_a, x_a), (phi_b, x_b) = body.features.items()
        qk = [_feature_operands(phi_a, x_a, body.nodes), _feature_operands(phi_b, x_b, body.nodes)]
        if not all(qk):
            return "φ(q) or φ(k) is never viewed as a 4-D [batch, heads, seq, dim] value"
        views = _four_d_views(others[0], body.nodes)
        if not views:
            return "v is not read as a 4-D [batch, heads, seq, dim] value"
        if len({x.type.dtype for x in (x_a, x_b, views[0][0], root)}) != 1:
            return "q, k, v and the result differ in dtype"
        causal = any(n.op == "cumsum" for n in body.nodes)
        reason = None
        for v, v_shape in views:
            steps = (("reshape", ShapeAttrs(v_shape)),) if v_shape is not None else ()
            found = self._verify(ctx.graph, qk, _Operand(v, steps, v_shape or tuple(v.type.shape)), root, causal)
            if not isinstance(found, str):
                match.captures["site"] = found
                return None
            reason = reason or found
        return reason

    @staticmethod
    def _verify(graph: Graph, qk: list[list[_Operand]], v: _Operand, root: Value, causal: bool) -> "_Candidate | str":
        leaves = [qk[0][0].leaf, qk[1][0].leaf, v.leaf]
        cone = _cone(root, leaves, graph)
        if cone is None:
            return "depends on values other than q, k and v (a weight or another input inside the products)"
        candidates = []
        for qs, ks in (qk, qk[::-1]):
            for q, k in itertools.product(qs, ks):
                for perm in itertools.permutations(range(4)):
                    if _shapes_fit(q.shape, k.shape, v.shape, perm):
                        candidates += [_Candidate(q, k, v, perm, causal, form) for form in _out_forms(perm, q.shape, v.shape, root)]
        if not candidates:
            return "q, k and v shapes do not fit [batch, heads, seq, dim] in one layout"
        involved = [*leaves, root, *(n.outputs[0] for n in cone)]
        gen = torch.Generator().manual_seed(0)
        for size in range(len(_SIZES)):
            bindings = _bindings(involved, size)
            ctx = EvalContext(dict(bindings))
            try:
                tensors, got = _evaluate(cone, leaves, root, bindings, gen)
            except Exception as e:  # noqa: BLE001  an op that refuses these sizes: not something to lift
                return f"could not be evaluated at other sizes ({type(e).__name__})"
            t = dict(zip(leaves, tensors))
            kept = []
            for c in candidates:
                p = c.perm
                attrs = LinearAttentionAttrs(causal=causal, kv_heads=c.k.shape[p[1]])
                try:
                    q, k, vv = (_replay(ctx, o, t[o.leaf]).permute(p) for o in (c.q, c.k, c.v))
                    o = _lay_out(linear_attention_reference(q, k, vv, attrs), p, c.out, got.shape)
                except (RuntimeError, ValueError, IndexError):  # this layout does not fit at these sizes
                    continue
                if o.shape == got.shape and torch.allclose(o, got, rtol=_RTOL, atol=1e-12):
                    kept.append(c)
            candidates = kept
            if not candidates:
                what = "causal (cumsum) " if causal else ""
                return f"is not {what}linear attention φ(q)(φ(k)ᵀv) / φ(q)(φ(k)ᵀ1) over the sequence axis (checked by evaluation)"
        return candidates[0]

    def rewrite(self, match: Match, ctx: RewriteContext) -> None:
        rw, node = ctx.rewriter, match.root
        c: _Candidate = match["site"]
        p = c.perm

        def canon(x: Value) -> Value:
            if p == (0, 1, 2, 3):
                return x
            return rw.insert("permute", [x], PermuteAttrs(p), before=node).outputs[0]

        def operand(o: _Operand) -> Value:
            x = o.leaf
            for op, a in o.steps:
                if op == "reshape" and x.producer is not None and x.producer.op == "reshape":
                    x = x.producer.inputs[0]  # a reshape of a reshape is one reshape
                x = rw.insert(op, [x], a, before=node).outputs[0]
            return canon(x)

        attrs = LinearAttentionAttrs(causal=c.causal, kv_heads=c.k.shape[p[1]])
        out = rw.insert("linear_attention", [operand(c.q), operand(c.k), operand(c.v)], attrs, before=node).outputs[0]
        if c.out in ("permute", "permute-reshape"):
            out = rw.insert("permute", [out], PermuteAttrs(tuple(p.index(i) for i in range(4))), before=node).outputs[0]
        if c.causal:
            ctx.count("causal")
        root = node.outputs[0]
        if c.out in ("reshape", "permute-reshape"):
            # einsum's product is 5-D with a unit axis, reshaped back right after: replace that reshape.
            user = root.uses[0][0] if len(root.uses) == 1 else None
            if user is not None and user.op == "reshape" and user.outputs[0].type == out.type and not any(root is o for o in ctx.graph.output_values()):
                rw.replace_node(user, [out])
                return
            out = rw.insert("reshape", [out], ShapeAttrs(tuple(root.type.shape)), before=node).outputs[0]
        rw.replace_node(node, [out])


@register_pass("lift-linear-attention")
@dataclass(frozen=True)
class LiftLinearAttentionPass(Pass):
    """Turn hand-written linear attention into `linear_attention` (exact).

    φ(x) = elu(x) + 1 on q and k, kv = φ(K)ᵀV, normaliser 1 / (φ(Q)·Σ_s φ(K)), causal
    with cumsum prefix sums; products as matmul, einsum or multiply-and-sum, in
    [B, H, S, D] or [B, S, H, D] layout, grouped K/V. Recognised by evaluating the
    subgraph against the op's reference at two sizes (module docstring). A normaliser
    with an eps stays as written (the op has none: lifting would not be exact), as do
    other feature maps; `t2c opt --debug-rewrites` says why. Options: none.
    Stats: lifted, causal.
    """

    exact = True

    def run(self, graph: Graph) -> PassResult:
        counts = apply_rules(graph, [LiftLinearAttention()])
        stats = {"lifted": counts["lifted"]}
        if counts.get("causal"):
            stats["causal"] = counts["causal"]
        return PassResult(graph, stats["lifted"] > 0, stats)
