"""fuse-rope: rotary position embeddings become `rope` ops, then fold into `attention`.

Spellings recognised (any operand order of the add and of each mul):
  * rotate-half (Llama, Mistral, Phi, GPT-NeoX, ...):
        add(mul(x, cos), mul(cat(neg(x[..., h:]), x[..., :h]), sin))
    the halves taken by slices or by a two-way split of the last dim;
  * interleaved (GPT-J, ...): rot(x) = flatten(stack(-x[..., 1::2], x[..., 0::2]))
    traced as reshape(cat(unsqueeze(neg(slice)), unsqueeze(slice))) over a new last dim;
  * partial rotary: `cat(rope(x[..., :r]), x[..., r:])` on the last dim becomes
    `rope(x) {rotary_dim=r}`.
Where cos and sin come from does not matter for the match (inverse frequencies
and an arange, position ids from an input, a cache passed in): only the structure
is checked, exactly, so a look-alike (halves swapped without the neg, the same
tensor as cos and sin) is left alone. Where they come from is then recorded on
the op, so no backend has to walk the graph to rediscover it:
  * `cache="paired"` when their computation proves that both members of every
    rotated pair hold the same angle (`cos(cat(f, f))` for rotate-half,
    Hugging Face's `emb = cat(freqs, freqs)`; each angle repeated twice by
    reshape/expand for interleaved, GPT-J's repeat_interleave), seen through
    casts and last-dim-keeping unsqueeze/reshape/expand/permute; `"full"` otherwise
    (cos/sin passed in). A paired cache can be given to kernels as one angle per pair.
  * `positions="length"` when no model input feeds cos/sin (they are a function of
    the sequence length: positions 0..S-1), `"input"` when one does (position ids).

Then `attention(rope(q, c, s), rope(k, c, s), v, mask?)` with the same c, s and
attrs becomes `attention(q, k, v, mask?, c, s) {rope=..., rotary_dim=...}`. A
rope applied before the head transpose (GPT-J: [B, S, H, D]) is moved after it
first, its cos and sin permuted alike. Exact: the same arithmetic in the same order.

Preconditions: lift-attention for the fold (cse helps matching). Stats:
rope_lifted, rope_folded.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..errors import VerifyError
from ..ir.core import Graph, Node, TensorType, Value
from ..ir.opdefs.attention import AttentionAttrs, attention_operands
from ..ir.opdefs.rope import RopeAttrs, check_rope_types
from ..ir.opdefs.shape import PermuteAttrs, ShapeAttrs
from .manager import Pass, PassResult, register_pass
from .patterns import cone, on_last_axis, operands_by, producer, same_type, same_value
from .rewrite import Match, RewriteContext, RewriteRule, apply_rules

_last = on_last_axis


def _slice_of(v: Value, start: int, stop: int, step: int) -> Value | None:
    """x when v is x[..., start:stop:step] on the last dim (a slice or a piece of a split), else None."""
    n = v.producer
    if n is None:
        return None
    if n.op == "slice":
        a = n.attrs
        d = n.inputs[0].type.shape[-1]
        if not (_last(n, a.dim) and isinstance(d, int) and a.step == step and a.start == start and isinstance(a.end, int)):
            return None
        if v.type.shape[-1] != len(range(start, min(stop, d), step)) or not (a.end >= min(stop, d) - (step - 1)):
            return None
        return n.inputs[0]
    if n.op == "split" and step == 1 and _last(n, n.attrs.dim):
        sizes = n.attrs.sizes
        if not all(isinstance(s, int) for s in sizes):
            return None
        begin = sum(sizes[: v.index])
        if begin == start and begin + sizes[v.index] == stop:
            return n.inputs[0]
    return None


def rotated_half(v: Value, negated: bool = True) -> Value | None:
    """x when v = cat(-x[..., h:], x[..., :h]) over x's whole last dim D = 2h.

    With negated=False: x when v = cat(x[..., h:], x[..., :h]), the look-alike that
    swaps the halves and forgets the sign (reported as a near-miss, never lifted).
    """
    cat = producer(v, "cat")
    if cat is None or len(cat.inputs) != 2 or not _last(cat, cat.attrs.dim):
        return None
    if negated:
        neg = producer(cat.inputs[0], "neg")
        if neg is None:
            return None
        front = neg.inputs[0]
    else:
        front = cat.inputs[0]
    d = v.type.shape[-1]
    if not isinstance(d, int) or d % 2:
        return None
    h = d // 2
    x = _slice_of(front, h, d, 1)
    if x is None or _slice_of(cat.inputs[1], 0, h, 1) is not x or not same_type(x.type, v.type):
        return None
    return x


def rotated_pairs(v: Value) -> Value | None:
    """x when v = reshape(cat(unsqueeze(-x[..., 1::2], -1), unsqueeze(x[..., 0::2], -1)), x.shape)."""
    rs = producer(v, "reshape")
    cat = producer(rs.inputs[0], "cat") if rs else None
    if cat is None or len(cat.inputs) != 2 or not _last(cat, cat.attrs.dim) or cat.outputs[0].type.shape[-1] != 2:
        return None
    u0, u1 = (producer(i, "unsqueeze") for i in cat.inputs)
    if u0 is None or u1 is None or not (_last(cat, u0.attrs.dim) and _last(cat, u1.attrs.dim)):
        return None
    neg = producer(u0.inputs[0], "neg")
    d = v.type.shape[-1]
    if neg is None or not isinstance(d, int) or d % 2:
        return None
    x = _slice_of(neg.inputs[0], 1, d, 2)
    if x is None or _slice_of(u1.inputs[0], 0, d, 2) is not x or not same_type(x.type, v.type):
        return None
    return x


def _rotation(v: Value) -> tuple[Value, bool, bool] | None:
    """(x, interleaved, negated) when v = rot(x), rotate-half or interleaved pairs, or the
    rotate-half look-alike without the negation (negated=False)."""
    for interleaved, finder in ((False, rotated_half), (True, rotated_pairs)):
        x = finder(v)
        if x is not None:
            return x, interleaved, True
    x = rotated_half(v, negated=False)
    return (x, False, False) if x is not None else None


def _through(v: Value) -> Value:
    """Look through ops that keep each value's last-dim index: cast, unsqueeze/reshape/expand/permute keeping the last dim."""
    while v.producer is not None:
        n = v.producer
        last = v.type.rank - 1
        ok = n.op == "cast"
        ok |= n.op == "unsqueeze" and n.attrs.dim not in (-1, last)
        ok |= n.op in ("reshape", "expand") and n.inputs[0].type.rank >= 1 and n.inputs[0].type.shape[-1] == v.type.shape[-1]
        ok |= n.op == "permute" and n.attrs.perm[-1] == last
        if not ok:
            break
        v = n.inputs[0]
    return v


def pairs_equal(v: Value, interleaved: bool) -> bool:
    """Whether the structure proves the two members of every rotated pair of cos/sin `v` equal."""
    v = _through(v)
    n = v.producer
    if n is None:
        return False
    if n.op in ("cos", "sin"):  # cos(cat(f, f)) / cos(repeated f)
        return pairs_equal(n.inputs[0], interleaved)
    if not interleaved:
        return n.op == "cat" and len(n.inputs) == 2 and n.inputs[0] is n.inputs[1] and n.attrs.dim in (-1, v.type.rank - 1)
    # reshape(expand(reshape(f, [..., n, 1]), [..., n, 2]), [..., 2n])
    if n.op != "reshape" or n.inputs[0].type.rank != v.type.rank + 1 or n.inputs[0].type.shape[-1] != 2:
        return False
    e = n.inputs[0].producer
    return e is not None and e.op == "expand" and e.inputs[0].type.shape[-1] == 1 and e.inputs[0].type.shape[-2] == v.type.shape[-1] // 2


def rope_source(graph: Graph, cos: Value, sin: Value, interleaved: bool) -> dict[str, str]:
    """The `cache` and `positions` attrs that say where cos and sin come from."""
    paired = pairs_equal(cos, interleaved) and pairs_equal(sin, interleaved)
    from_length = cone(graph, cos) is not None and cone(graph, sin) is not None
    return {"cache": "paired" if paired else "full", "positions": "length" if from_length else "input"}


@dataclass(frozen=True)
class LiftRope(RewriteRule):
    """`add(mul(x, cos), mul(rot(x), sin))` -> `rope(x, cos, sin)` (rot: rotate-half or pairs)."""

    name = "lift-rope"
    stat = "rope_lifted"

    def match(self, node: Node, ctx: RewriteContext) -> Match | None:
        if node.op != "add":
            return None
        for m_rot, a in operands_by(node, "mul"):
            m_cos = producer(a, "mul")
            if m_cos is None:
                continue
            for r, sin in (m_rot.inputs, m_rot.inputs[::-1]):
                rotation = _rotation(r)
                if rotation is None:
                    continue
                x, interleaved, negated = rotation
                for xx, cos in (m_cos.inputs, m_cos.inputs[::-1]):
                    if xx is x:
                        return Match(node, {"x": x, "cos": cos, "sin": sin, "interleaved": interleaved, "negated": negated})
        return None

    def check(self, match: Match, ctx: RewriteContext) -> str | None:
        x, cos, sin = match["x"], match["cos"], match["sin"]
        if not match["negated"]:
            return "the halves are swapped but the moved half is not negated (rotate-half is cat(-x2, x1))"
        if cos is sin:
            return "the same tensor multiplies x and its rotation (not cos and sin)"
        if cos is x or sin is x:
            return "x multiplies itself"
        if not same_type(match.root.outputs[0].type, x.type):
            return "cos/sin broadcast x to a larger shape"
        try:
            check_rope_types(x.type, cos.type, sin.type, match["interleaved"], x.type.shape[-1], "rope")
        except VerifyError as e:
            return str(e)
        return None

    def rewrite(self, match: Match, ctx: RewriteContext) -> None:
        x, cos, sin, interleaved = match["x"], match["cos"], match["sin"], match["interleaved"]
        attrs = RopeAttrs(interleaved=interleaved, rotary_dim=x.type.shape[-1], **rope_source(ctx.graph, cos, sin, interleaved))
        node = ctx.rewriter.insert("rope", [x, cos, sin], attrs, before=match.root)
        ctx.rewriter.replace_node(match.root, node.outputs)


@dataclass(frozen=True)
class PartialRope(RewriteRule):
    """`cat(rope(x[..., :r]), x[..., r:])` on the last dim -> `rope(x) {rotary_dim=r}`."""

    name = "partial-rope"
    stat = "rope_partial"

    def match(self, node: Node, ctx: RewriteContext) -> Match | None:
        if node.op != "cat" or len(node.inputs) != 2 or not _last(node, node.attrs.dim):
            return None
        rope = producer(node.inputs[0], "rope")
        if rope is None:
            return None
        r = rope.inputs[0].type.shape[-1]
        d = node.outputs[0].type.shape[-1]
        if not (isinstance(r, int) and isinstance(d, int)) or rope.attrs.rotary_dim != r:
            return None
        x = _slice_of(rope.inputs[0], 0, r, 1)
        if x is None or _slice_of(node.inputs[1], r, d, 1) is not x:
            return None
        return Match(node, {"x": x, "rope": rope})

    def check(self, match: Match, ctx: RewriteContext) -> str | None:
        x = match["x"]
        if not same_type(match.root.outputs[0].type, x.type):
            return "the concatenation is not x's shape"
        return None

    def rewrite(self, match: Match, ctx: RewriteContext) -> None:
        rope = match["rope"]
        node = ctx.rewriter.insert("rope", [match["x"], rope.inputs[1], rope.inputs[2]], rope.attrs, before=match.root)
        ctx.rewriter.replace_node(match.root, node.outputs)


def _rope_operand(v: Value) -> tuple[Node, Node | None] | None:
    """(rope, permute or None) when v is rope(x) or permute(rope(x)) with the last dim kept and the rope used once."""
    rope = producer(v, "rope")
    if rope is not None:
        return rope, None
    perm = producer(v, "permute")
    rope = producer(perm.inputs[0], "rope") if perm else None
    p = perm.attrs.perm if perm else ()
    if rope is None or p[-1] != len(p) - 1 or len(rope.outputs[0].uses) != 1:
        return None
    return rope, perm


@dataclass(frozen=True)
class FoldRope(RewriteRule):
    """`attention(rope(q, c, s), rope(k, c, s), v, mask?)` -> `attention(q, k, v, mask?, c, s) {rope=...}`."""

    name = "fold-rope"
    stat = "rope_folded"

    def match(self, node: Node, ctx: RewriteContext) -> Match | None:
        if node.op != "attention" or node.attrs.rope != "none":
            return None
        rq, rk = _rope_operand(node.inputs[0]), _rope_operand(node.inputs[1])
        if rq is None or rk is None:
            return None
        return Match(node, {"q": rq, "k": rk})

    def check(self, match: Match, ctx: RewriteContext) -> str | None:
        (rq, pq), (rk, pk) = match["q"], match["k"]
        if not (same_value(rq.inputs[1], rk.inputs[1]) and same_value(rq.inputs[2], rk.inputs[2])):
            return "q and k are rotated with different cos/sin"
        if rq.attrs != rk.attrs:
            return "q and k are rotated differently (interleaved or rotary_dim)"
        if (pq is None) != (pk is None) or (pq is not None and pq.attrs.perm != pk.attrs.perm):
            return "q and k are transposed differently after their rotation"
        if pq is not None:
            x_rank = rq.inputs[0].type.rank
            if rq.inputs[1].type.rank != x_rank and not all(d == 1 for d in rq.inputs[1].type.shape[:-1]):
                return "cos/sin of lower rank than x would need broadcasting before the transpose"
        cos_t, sin_t = (self._cs_type(rq, pq, i) for i in (1, 2))
        try:
            for x in match.root.inputs[:2]:
                check_rope_types(x.type, cos_t, sin_t, rq.attrs.interleaved, rq.attrs.rotary_dim, "attention")
        except VerifyError as e:
            return str(e)
        return None

    @staticmethod
    def _cs_type(rope: Node, perm: Node | None, i: int) -> TensorType:
        t = rope.inputs[i].type
        if perm is None:
            return t
        full = (1,) * (perm.inputs[0].type.rank - t.rank) + tuple(t.shape)
        return t.with_shape(tuple(full[p] for p in perm.attrs.perm))

    def rewrite(self, match: Match, ctx: RewriteContext) -> None:
        rewriter = ctx.rewriter
        node = match.root
        (rq, pq), (rk, _) = match["q"], match["k"]
        q, k = rq.inputs[0], rk.inputs[0]
        cos, sin = rq.inputs[1], rq.inputs[2]
        if pq is not None:
            perm = PermuteAttrs(pq.attrs.perm)
            q = rewriter.insert("permute", [q], perm, before=node).outputs[0]
            k = rewriter.insert("permute", [k], perm, before=node).outputs[0]
            cos, sin = (self._permuted(rewriter, t, pq, node) for t in (cos, sin))
        _, _, v, mask, _, _ = attention_operands(node.inputs, node.attrs)
        r = rq.attrs
        attrs: AttentionAttrs = replace(
            node.attrs, rope="interleaved" if r.interleaved else "half", rotary_dim=r.rotary_dim,
            rope_cache=r.cache, rope_positions=r.positions,
        )
        operands = [q, k, v] + ([mask] if mask is not None else []) + [cos, sin]
        new = rewriter.insert("attention", operands, attrs, before=node, output_types=[o.type for o in node.outputs])
        rewriter.replace_node(node, new.outputs)

    @staticmethod
    def _permuted(rewriter, t: Value, perm: Node, before: Node) -> Value:
        rank = perm.inputs[0].type.rank
        if t.type.rank < rank:
            shape = (1,) * (rank - t.type.rank) + tuple(t.type.shape)
            t = rewriter.insert("reshape", [t], ShapeAttrs(shape), before=before).outputs[0]
        return rewriter.insert("permute", [t], PermuteAttrs(perm.attrs.perm), before=before).outputs[0]


@register_pass("fuse-rope")
@dataclass(frozen=True)
class FuseRope(Pass):
    """Lift rotary embeddings (rotate-half, interleaved, partial) into `rope`, then fold them into `attention` (exact).

    Stats: rope_lifted (rope ops formed, partial ones counted once), rope_folded
    (attention ops that took the rotation of their q and k).
    """

    exact = True
    after = ("lift-attention",)

    def run(self, graph: Graph) -> PassResult:
        counts = apply_rules(graph, [LiftRope(), PartialRope()])
        folded = apply_rules(graph, [FoldRope()])
        stats = {"rope_lifted": counts["rope_lifted"], "rope_folded": folded["rope_folded"]}
        if counts["rope_partial"]:
            stats["rope_partial"] = counts["rope_partial"]
        return PassResult(graph, stats["rope_lifted"] + stats["rope_folded"] > 0, stats)
