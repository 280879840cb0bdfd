"""lift-attention: every spelling of attention becomes one `attention` op.

Spellings recognised:
  * `sdpa(q, k, v, mask?)` as traced from `scaled_dot_product_attention`;
  * eager chains: `matmul(q, kᵀ)`, scaled by a constant (mul or div, or q
    pre-scaled), optionally soft-capped (`c * tanh(s / c)`), masked by an
    additive mask or a `where(mask, s, -big)`, `softmax` over the last dim
    (with casts around it), then `matmul(·, v)`;
  * grouped-query K/V repeated with unsqueeze/expand/reshape (repeat_kv) are
    un-repeated: the op takes the KV heads and `kv_heads` says how many.

Masks built from shapes alone are classified by evaluation (`mask_classify`)
and become attrs (causal, window, block, global tokens); other masks (padding
from an input, biases) stay an operand. A bool mask that is a shape-only part
AND an input's padding row [B, 1, 1, Sk] (Hugging Face's mask with an
attention_mask input) is split: the part into attrs, the row as the operand
(stats `mask_padding_split`). Lifting is exact.

Preconditions: none (run cleanup first for tidier matches). Options:
  max_probe: longest sequence at which mask subgraphs are evaluated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..ir.core import Graph, Node, Value
from ..ir.opdefs.attention import AttentionAttrs
from .manager import Pass, PassResult, register_pass
from .mask_classify import MaskClass, classify, split_padding
from .rewrite import Match, Rewriter, RewriteRule, apply_rules


def _producer(v: Value, op: str) -> Node | None:
    n = v.producer
    return n if n is not None and n.op == op else None


def scalar_constant(v: Value) -> float | None:
    """The value of a 0-d or all-ones-shaped `full` constant."""
    n = _producer(v, "full")
    if n is None or any(d != 1 for d in n.attrs.shape) or not isinstance(n.attrs.value, (int, float)):
        return None
    return float(n.attrs.value)


def unrepeat_kv(v: Value) -> tuple[Value, int]:
    """(kv, repeats): undo `reshape(expand(unsqueeze(kv, 2)))` that repeats KV heads."""
    r = _producer(v, "reshape")
    e = _producer(r.inputs[0], "expand") if r else None
    u = _producer(e.inputs[0], "unsqueeze") if e else None
    if not (r and e and u) or u.attrs.dim != 2:
        return v, 1
    kv = u.inputs[0]
    b, hkv, s, d = kv.type.shape if kv.type.rank == 4 else (None,) * 4
    shape = e.attrs.shape
    if kv.type.rank != 4 or len(shape) != 5 or shape[1] != hkv or not isinstance(shape[2], int):
        return v, 1
    if r.outputs[0].type.shape != (b, hkv * shape[2] if isinstance(hkv, int) else None, s, d):
        return v, 1
    return kv, shape[2]


@dataclass
class _Site:
    """Everything an attention needs, gathered from one spelling."""

    q: Value
    k: Value
    v: Value
    scale: float | None
    causal: bool
    mask: Value | None
    mask_is_keep: bool  # a bool mask where true means "attend"; false: where(mask, -big, s)
    softcap: float = 0.0


class _LiftRule(RewriteRule):
    stat = "lifted"

    def __init__(self, pass_: "LiftAttention", classes: dict[int, MaskClass], stats: dict[str, int]):
        self.max_probe = pass_.max_probe
        self.classes = classes
        self.splits: dict[int, tuple[MaskClass, Value] | None] = {}  # split_padding per mask, per rule
        self.stats = stats

    def site(self, match: Match) -> _Site:
        raise NotImplementedError

    def check(self, match: Match) -> str | None:
        site = self.site(match)
        q, k, v = site.q, site.k, site.v
        if not (q.type.rank == k.type.rank == v.type.rank == 4):
            return "q, k, v are not [batch, heads, seq, head_dim]"
        if not isinstance(q.type.shape[-1], int):
            return "the head dim is not static"
        if not (isinstance(q.type.shape[1], int) and isinstance(k.type.shape[1], int)):
            return "the head counts are not static"
        k0, rk = unrepeat_kv(k)
        if rk != unrepeat_kv(v)[1]:
            k0 = k
        if q.type.shape[1] % k0.type.shape[1]:
            return "query heads are not a multiple of key heads"
        if site.mask is not None and not site.mask_is_keep and site.mask.type.dtype.name != "BOOL":
            return "a where-mask that is not boolean"
        return None

    def rewrite(self, rewriter: Rewriter, match: Match) -> None:
        site = self.site(match)
        k0, rk = unrepeat_kv(site.k)
        v0, rv = unrepeat_kv(site.v)
        if rk != rv:
            k0, v0 = site.k, site.v
        head_dim = site.q.type.shape[-1]
        attrs = AttentionAttrs(
            scale=site.scale if site.scale is not None else 1.0 / math.sqrt(head_dim),
            causal=site.causal, kv_heads=k0.type.shape[1], softcap=site.softcap,
        )
        operands = [site.q, k0, v0]
        if site.mask is not None:
            mask = site.mask
            if not site.mask_is_keep:
                mask = rewriter.insert("logical_not", [mask], before=match.root).outputs[0]
            seq_dims = (site.q.type.shape[2], k0.type.shape[2])
            mc = self.classes.get(id(mask))
            if mc is None:
                mc = classify(rewriter.graph, mask, seq_dims, max_probe=self.max_probe)
                self.classes[id(mask)] = mc
            self.stats[f"mask_{mc.kind}"] = self.stats.get(f"mask_{mc.kind}", 0) + 1
            split = None
            if mc.kind == "input":
                if id(mask) not in self.splits:
                    self.splits[id(mask)] = split_padding(rewriter.graph, mask, seq_dims, max_probe=self.max_probe)
                split = self.splits[id(mask)]
                if split is not None:  # structure AND padding row: the structure into attrs, the row stays
                    mc, mask = split
                    self.stats["mask_padding_split"] = self.stats.get("mask_padding_split", 0) + 1
            if mc.attrs is not None:
                s = mc.attrs
                attrs = replace(attrs, causal=attrs.causal or s.causal, window=s.window, block=s.block, global_tokens=s.global_tokens)
            if mc.attrs is None or split is not None:
                operands.append(mask)
        node = rewriter.insert("attention", operands, attrs, before=match.root)
        rewriter.replace_node(match.root, node.outputs)


class SDPARule(_LiftRule):
    """`sdpa(q, k, v, mask?)` -> `attention`."""

    name = "lift-sdpa"

    def match(self, node: Node) -> Match | None:
        return Match(node) if node.op == "sdpa" else None

    def site(self, match: Match) -> _Site:
        n = match.root
        mask = n.inputs[3] if len(n.inputs) > 3 else None
        return _Site(n.inputs[0], n.inputs[1], n.inputs[2], n.attrs.scale, n.attrs.is_causal, mask, True)


class EagerRule(_LiftRule):
    """`matmul(softmax(mask(cap(scale(matmul(q, kᵀ))))), v)` -> `attention`."""

    name = "lift-eager-attention"

    def match(self, node: Node) -> Match | None:
        if node.op != "matmul":
            return None
        probs = _skip_casts(node.inputs[0])
        sm = _producer(probs, "softmax")
        if sm is None or sm.attrs.dim not in (-1, sm.inputs[0].type.rank - 1):
            return None
        return Match(node, {"softmax": sm})

    def site(self, match: Match) -> _Site:
        cached = match.captures.get("site")
        if cached is None:
            cached = self._parse(match)
            match.captures["site"] = cached
        return cached

    def check(self, match: Match) -> str | None:
        site = self.site(match)
        if isinstance(site, str):
            return site
        x, perm = match.captures["k_perm"]
        site.k = _PermutedView(x, perm)
        return super().check(match)

    def rewrite(self, rewriter: Rewriter, match: Match) -> None:
        from ..ir.opdefs.shape import PermuteAttrs

        site = self.site(match)
        x, perm = match.captures["k_perm"]
        if perm == tuple(range(len(perm))):
            site.k = x
        else:
            site.k = rewriter.insert("permute", [x], PermuteAttrs(perm), before=match.root).outputs[0]
        super().rewrite(rewriter, match)

    def _parse(self, match: Match) -> "_Site | str":
        scores = _skip_casts(match.captures["softmax"].inputs[0])
        mask, keep = None, True
        add = _producer(scores, "add")
        where = _producer(scores, "where")
        if add is not None:
            a, b = add.inputs
            if _is_score_chain(a):
                scores, mask = a, b
            elif _is_score_chain(b):
                scores, mask = b, a
            else:
                return "softmax input is an add of two non-score tensors"
        elif where is not None:
            cond, a, b = where.inputs
            fill_a, fill_b = scalar_constant(a), scalar_constant(b)
            if fill_b is not None and fill_b <= -1e4:
                scores, mask, keep = a, cond, True
            elif fill_a is not None and fill_a <= -1e4:
                scores, mask, keep = b, cond, False
            else:
                return "a where() before softmax that does not fill with a large negative value"
        softcap = 0.0
        mul = _producer(scores, "mul")
        if mul is not None and _producer(mul.inputs[0], "tanh") is not None and scalar_constant(mul.inputs[1]) is not None:
            cap = scalar_constant(mul.inputs[1])
            div = _producer(_producer(mul.inputs[0], "tanh").inputs[0], "div")
            if div is None or scalar_constant(div.inputs[1]) != cap:
                return "a tanh soft-cap whose divisor and multiplier differ"
            softcap, scores = cap, div.inputs[0]
        scale = 1.0
        for _ in range(2):  # a scale may sit after the matmul and/or on q
            m = _producer(scores, "mul") or _producer(scores, "div")
            if m is None:
                break
            c = scalar_constant(m.inputs[1])
            if c is None or c == 0:
                break
            scale *= c if m.op == "mul" else 1.0 / c
            scores = m.inputs[0]
        qk = _producer(scores, "matmul")
        if qk is None:
            return "softmax input is not q @ kᵀ"
        q, kt = (_skip_noops(x) for x in qk.inputs)
        pq = _producer(q, "mul") or _producer(q, "div")
        if pq is not None and scalar_constant(pq.inputs[1]) not in (None, 0.0):
            c = scalar_constant(pq.inputs[1])
            scale *= c if pq.op == "mul" else 1.0 / c
            q = pq.inputs[0]
        perm = _producer(kt, "permute")
        if perm is None or kt.type.rank != 4:
            return "the key operand is not a transpose of k"
        # kᵀ = permute(x, p): k is x permuted by p with its last two entries swapped.
        p = perm.attrs.perm
        k_perm = p[:-2] + (p[-1], p[-2])
        match.captures["k_perm"] = (perm.inputs[0], k_perm)
        return _Site(q, None, _skip_noops(match.root.inputs[1]), scale, False, mask, keep, softcap)


class _PermutedView:
    """Stands for `permute(x, perm)` during checks, before any node is made."""

    def __init__(self, x: Value, perm: tuple[int, ...]):
        self.type = x.type.with_shape(tuple(x.type.shape[p] for p in perm))
        self.producer = None


def _skip_noops(v: Value) -> Value:
    """Look through reshape/expand to the same shape (left when cleanup has not run)."""
    while v.producer is not None and v.producer.op in ("reshape", "expand") and v.producer.inputs[0].type == v.type:
        v = v.producer.inputs[0]
    return v


def _skip_casts(v: Value) -> Value:
    v = _skip_noops(v)
    while v.producer is not None and v.producer.op == "cast":
        v = _skip_noops(v.producer.inputs[0])
    return v


def _is_score_chain(v: Value) -> bool:
    """Whether `v` is computed from a matmul through scale/softcap ops (not a mask)."""
    for _ in range(6):
        n = v.producer
        if n is None:
            return False
        if n.op == "matmul":
            return True
        if n.op not in ("mul", "div", "tanh", "cast"):
            return False
        v = n.inputs[0]
    return False


class UnflattenBatchedMatmul(RewriteRule):
    """`reshape(matmul(reshape(a), reshape(b)))` -> `matmul(a, b)` with the batch dims kept.

    torch decomposes a 4-D matmul into reshapes around a 3-D bmm; undoing that
    lets the attention rules see q, kᵀ and v with their head dims. Exact.
    """

    name = "unflatten-bmm"
    stat = "bmm_unflattened"

    def match(self, node: Node) -> Match | None:
        if node.op != "reshape":
            return None
        mm = _producer(node.inputs[0], "matmul")
        if mm is None or mm.outputs[0].type.rank != 3 or len(mm.outputs[0].uses) != 1:
            return None
        ra, rb = _producer(mm.inputs[0], "reshape"), _producer(mm.inputs[1], "reshape")
        out = node.outputs[0].type.shape
        if ra is None or rb is None or len(out) < 4:  # only where batch dims were really merged
            return None
        return Match(node, {"a": ra.inputs[0], "b": rb.inputs[0], "mm": mm})

    def check(self, match: Match) -> str | None:
        from ..ir.core import dim_prod, dims_equal

        out = match.root.outputs[0].type.shape
        mm = match["mm"]
        x, m, n = mm.outputs[0].type.shape
        if not (dims_equal(dim_prod(out[:-2]), x) and dims_equal(out[-2], m) and dims_equal(out[-1], n)):
            return "the outer reshape does not split the bmm batch"
        return None

    def rewrite(self, rewriter: Rewriter, match: Match) -> None:
        out = match.root.outputs[0].type.shape
        mm = match["mm"]
        k = mm.inputs[0].type.shape[2]
        lead = tuple(out[:-2])
        a = self._as(rewriter, match["a"], lead + (out[-2], k), match.root)
        b = self._as(rewriter, match["b"], lead + (k, out[-1]), match.root)
        node = rewriter.insert("matmul", [a, b], before=match.root)
        rewriter.replace_node(match.root, node.outputs)

    @staticmethod
    def _as(rewriter: Rewriter, v: Value, shape: tuple, before: Node) -> Value:
        from ..ir.opdefs.shape import ShapeAttrs
        from ..ir.verifier import types_match

        if types_match(v.type, v.type.with_shape(shape)) or v.type.shape == shape:
            return v
        return rewriter.insert("reshape", [v], ShapeAttrs(shape), before=before).outputs[0]


@register_pass("lift-attention")
@dataclass(frozen=True)
class LiftAttention(Pass):
    """Turn SDPA calls and eager softmax-attention chains into `attention` ops (exact).

    Masks that depend only on shapes are classified by evaluating them at many
    lengths (none, causal, sliding window, band, block-local, global tokens) and
    folded into the op's attrs; padding masks and biases stay an operand.
    Options: max_probe (int, 8200): the longest length at which a mask is
    evaluated; a window constant beyond it leaves the mask unclassified.
    Stats: lifted, mask_<kind> per classified mask use.
    """

    exact = True
    max_probe: int = 8200

    def run(self, graph: Graph) -> PassResult:
        classes: dict[int, MaskClass] = {}
        stats: dict[str, int] = {}
        unflattened = apply_rules(graph, [UnflattenBatchedMatmul()])["bmm_unflattened"]
        rules = [SDPARule(self, classes, stats), EagerRule(self, classes, stats)]
        counts = apply_rules(graph, rules)
        if unflattened:
            stats["bmm_unflattened"] = unflattened
        stats.update({k: v for k, v in counts.items() if v})
        stats.setdefault("lifted", 0)
        return PassResult(graph, stats["lifted"] > 0, stats)
