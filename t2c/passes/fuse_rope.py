"""fuse-rope: rotary position embeddings become `rope` ops, then fold into `attention`.

Spellings recognised (any operand order of the add and of each mul):
  * rotate-half (Llama, Mistral, Phi, GPT-NeoX, ...):
        add(mul(x, cos), mul(cat(neg(x[..., h:]), x[..., :h]), sin))
    the halves taken by slices or by a two-way split of the last dim;
  * interleaved (GPT-J, ...): rot(x) = flatten(stack(-x[..., 1::2], x[..., 0::2]))
    traced as reshape(cat(unsqueeze(neg(slice)), unsqueeze(slice))) over a new last dim;
  * partial rotary: `cat(rope(x[..., :r]), x[..., r:])` on the last dim becomes
    `rope(x) {rotary_dim=r}`.
Where cos and sin come from does not matter (inverse frequencies and an arange,
position ids from an input, a cache passed in): only the structure is checked,
exactly, so a look-alike (halves swapped without the neg, the same tensor as cos
and sin) is left alone.

Then `attention(rope(q, c, s), rope(k, c, s), v, mask?)` with the same c, s and
attrs becomes `attention(q, k, v, mask?, c, s) {rope=..., rotary_dim=...}`. A
rope applied before the head transpose (GPT-J: [B, S, H, D]) is moved after it
first, its cos and sin permuted alike. Exact: the same arithmetic in the same order.

Preconditions: lift-attention for the fold (cse helps matching). Stats:
rope_lifted, rope_folded.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import VerifyError
from ..ir.core import Graph, Node, TensorType, Value, dims_equal
from ..ir.opdefs.attention import AttentionAttrs, attention_operands
from ..ir.opdefs.rope import RopeAttrs, check_rope_types
from ..ir.opdefs.shape import PermuteAttrs, ShapeAttrs
from .lift_attention import _producer
from .manager import Pass, PassResult, register_pass
from .rewrite import Match, Rewriter, RewriteRule, apply_rules


def _last(node: Node, dim: int) -> bool:
    """Whether `dim` is the last axis of the node's first operand."""
    r = node.inputs[0].type.rank
    return dim in (r - 1, -1)


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


def _same_type(a: TensorType, b: TensorType) -> bool:
    return a.dtype == b.dtype and a.rank == b.rank and all(dims_equal(x, y) for x, y in zip(a.shape, b.shape))


def rotated_half(v: Value) -> Value | None:
    """x when v = cat(-x[..., h:], x[..., :h]) over x's whole last dim D = 2h."""
    cat = _producer(v, "cat")
    if cat is None or len(cat.inputs) != 2 or not _last(cat, cat.attrs.dim):
        return None
    neg = _producer(cat.inputs[0], "neg")
    if neg is None:
        return None
    d = v.type.shape[-1]
    if not isinstance(d, int) or d % 2:
        return None
    h = d // 2
    x = _slice_of(neg.inputs[0], h, d, 1)
    if x is None or _slice_of(cat.inputs[1], 0, h, 1) is not x or not _same_type(x.type, v.type):
        return None
    return x


def rotated_pairs(v: Value) -> Value | None:
    """x when v = reshape(cat(unsqueeze(-x[..., 1::2], -1), unsqueeze(x[..., 0::2], -1)), x.shape)."""
    rs = _producer(v, "reshape")
    cat = _producer(rs.inputs[0], "cat") if rs else None
    if cat is None or len(cat.inputs) != 2 or not _last(cat, cat.attrs.dim) or cat.outputs[0].type.shape[-1] != 2:
        return None
    u0, u1 = (_producer(i, "unsqueeze") for i in cat.inputs)
    if u0 is None or u1 is None or not (_last(cat, u0.attrs.dim) and _last(cat, u1.attrs.dim)):
        return None
    neg = _producer(u0.inputs[0], "neg")
    d = v.type.shape[-1]
    if neg is None or not isinstance(d, int) or d % 2:
        return None
    x = _slice_of(neg.inputs[0], 1, d, 2)
    if x is None or _slice_of(u1.inputs[0], 0, d, 2) is not x or not _same_type(x.type, v.type):
        return None
    return x


class LiftRope(RewriteRule):
    """`add(mul(x, cos), mul(rot(x), sin))` -> `rope(x, cos, sin)` (rot: rotate-half or pairs)."""

    name = "lift-rope"
    stat = "rope_lifted"

    def match(self, node: Node) -> Match | None:
        if node.op != "add":
            return None
        for a, b in (node.inputs, node.inputs[::-1]):
            m_rot = _producer(b, "mul")
            m_cos = _producer(a, "mul")
            if m_rot is None or m_cos is None:
                continue
            for r, sin in (m_rot.inputs, m_rot.inputs[::-1]):
                for interleaved, finder in ((False, rotated_half), (True, rotated_pairs)):
                    x = finder(r)
                    if x is None:
                        continue
                    for xx, cos in (m_cos.inputs, m_cos.inputs[::-1]):
                        if xx is x:
                            return Match(node, {"x": x, "cos": cos, "sin": sin, "interleaved": interleaved})
        return None

    def check(self, match: Match) -> str | None:
        x, cos, sin = match["x"], match["cos"], match["sin"]
        if cos is sin:
            return "the same tensor multiplies x and its rotation (not cos and sin)"
        if cos is x or sin is x:
            return "x multiplies itself"
        if not _same_type(match.root.outputs[0].type, x.type):
            return "cos/sin broadcast x to a larger shape"
        try:
            check_rope_types(x.type, cos.type, sin.type, match["interleaved"], x.type.shape[-1], "rope")
        except VerifyError as e:
            return str(e)
        return None

    def rewrite(self, rewriter: Rewriter, match: Match) -> None:
        x = match["x"]
        attrs = RopeAttrs(interleaved=match["interleaved"], rotary_dim=x.type.shape[-1])
        node = rewriter.insert("rope", [x, match["cos"], match["sin"]], attrs, before=match.root)
        node.meta = dict(match.root.meta)
        rewriter.replace_node(match.root, node.outputs)


class PartialRope(RewriteRule):
    """`cat(rope(x[..., :r]), x[..., r:])` on the last dim -> `rope(x) {rotary_dim=r}`."""

    name = "partial-rope"
    stat = "rope_partial"

    def match(self, node: Node) -> Match | None:
        if node.op != "cat" or len(node.inputs) != 2 or not _last(node, node.attrs.dim):
            return None
        rope = _producer(node.inputs[0], "rope")
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

    def check(self, match: Match) -> str | None:
        x = match["x"]
        if not _same_type(match.root.outputs[0].type, x.type):
            return "the concatenation is not x's shape"
        return None

    def rewrite(self, rewriter: Rewriter, match: Match) -> None:
        rope = match["rope"]
        attrs = RopeAttrs(interleaved=rope.attrs.interleaved, rotary_dim=rope.attrs.rotary_dim)
        node = rewriter.insert("rope", [match["x"], rope.inputs[1], rope.inputs[2]], attrs, before=match.root)
        node.meta = dict(match.root.meta)
        rewriter.replace_node(match.root, node.outputs)


def _same_value(a: Value, b: Value, depth: int = 12) -> bool:
    """a is b, or both are computed by the same ops with the same attrs from the same values (cse not run)."""
    if a is b:
        return True
    na, nb = a.producer, b.producer
    if na is None or nb is None or depth == 0 or a.index != b.index:
        return False
    if na.op != nb.op or na.attrs != nb.attrs or len(na.inputs) != len(nb.inputs) or a.type != b.type:
        return False
    return all(_same_value(x, y, depth - 1) for x, y in zip(na.inputs, nb.inputs))


def _rope_operand(v: Value) -> tuple[Node, Node | None] | None:
    """(rope, permute or None) when v is rope(x) or permute(rope(x)) with the last dim kept and the rope used once."""
    rope = _producer(v, "rope")
    if rope is not None:
        return rope, None
    perm = _producer(v, "permute")
    rope = _producer(perm.inputs[0], "rope") if perm else None
    p = perm.attrs.perm if perm else ()
    if rope is None or p[-1] != len(p) - 1 or len(rope.outputs[0].uses) != 1:
        return None
    return rope, perm


class FoldRope(RewriteRule):
    """`attention(rope(q, c, s), rope(k, c, s), v, mask?)` -> `attention(q, k, v, mask?, c, s) {rope=...}`."""

    name = "fold-rope"
    stat = "rope_folded"

    def match(self, node: Node) -> Match | None:
        if node.op != "attention" or node.attrs.rope != "none":
            return None
        rq, rk = _rope_operand(node.inputs[0]), _rope_operand(node.inputs[1])
        if rq is None or rk is None:
            return None
        return Match(node, {"q": rq, "k": rk})

    def check(self, match: Match) -> str | None:
        (rq, pq), (rk, pk) = match["q"], match["k"]
        if not (_same_value(rq.inputs[1], rk.inputs[1]) and _same_value(rq.inputs[2], rk.inputs[2])):
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

    def rewrite(self, rewriter: Rewriter, match: Match) -> None:
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
        from dataclasses import replace

        attrs: AttentionAttrs = replace(
            node.attrs, rope="interleaved" if rq.attrs.interleaved else "half", rotary_dim=rq.attrs.rotary_dim
        )
        operands = [q, k, v] + ([mask] if mask is not None else []) + [cos, sin]
        new = rewriter.insert("attention", operands, attrs, before=node, output_types=[o.type for o in node.outputs])
        new.meta = dict(node.meta)
        rewriter.replace_node(node, new.outputs)

    @staticmethod
    def _permuted(rewriter: Rewriter, t: Value, perm: Node, before: Node) -> Value:
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
