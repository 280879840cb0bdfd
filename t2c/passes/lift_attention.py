"""lift-attention: every spelling of attention becomes one `attention` op.

Spellings recognised:
  * `sdpa(q, k, v, mask?)` as traced from `scaled_dot_product_attention`;
  * eager chains: `matmul(q, kᵀ)`, scaled by a constant (mul or div, or q
    pre-scaled), optionally soft-capped (`c * tanh(s / c)`), masked by an
    additive mask or a `where(mask, s, -big)` (with a bias added to s under
    it: DeBERTa's relative-position terms), `softmax` over the last dim
    (with casts around it), then `matmul(·, v)`;
  * grouped-query K/V repeated with unsqueeze/expand/reshape (repeat_kv) are
    un-repeated: the op takes the KV heads and `kv_heads` says how many;
  * attention within windows: tokens viewed as [B, n, W, D] windows and q, k, v
    [B, n, H, W, d] (or [B, H, n, W, d]), attended per window. One attention
    over the whole sequence with `block=W` computes exactly the same (query i
    sees key j iff i // W == j // W), so the windows are merged back into the
    sequence, [B, H, n*W, d], the op takes `block=W` (causal too for a causal
    sdpa), and its result is split into windows again. The sequence is n*W by
    construction, so it is divisible by W whatever n is: no constraint on the
    model's sequence dim is needed. (The IR records no divisibility: torch.export's
    `seq // W` windows of a symbolic `seq` fail the frontend's reshape check, and
    an input typed `4*n` binds no symbol, so models reach here with a static
    sequence, or with windows cut upstream, an input [B, n, W, D].) Where q, k
    or v was split into heads from a [B, n, W, H*d] tensor, the merge is a view
    of that tensor as [B, n*W, H, d]: attention on the un-windowed tokens. Keys
    per window that differ from queries per window (keys from neighbouring
    windows) and masks inside windows are refused with a near-miss.

Masks built from shapes alone are classified by evaluation (`mask_classify`)
and become attrs (causal, window, block, global tokens); other masks (padding
from an input, biases) stay an operand. A bool mask that is a shape-only part
AND an input's padding row [B, 1, 1, Sk] (Hugging Face's mask with an
attention_mask input) is split: the part into attrs, the row as the operand
(stats `mask_padding_split`). Lifting is exact.

A `where` with a finite fill (`masked_fill(~mask, finfo.min)`) differs from a
hidden key in one place: a query row it hides completely softmaxes equal
scores in eager (the mean of v), where `attention` gives zeros. Such a mask
becomes attrs only when it is a structure (every structure keeps the
diagonal, so no row is hidden completely); otherwise it becomes an additive
operand, the bias (or 0) where visible and the fill where hidden, exact when
s + fill == fill (a fill of -inf, or <= -1e30 in f32/f64); any other fill
over such a mask is refused with a near-miss.

Preconditions: none (run cleanup first for tidier matches). Options:
  max_probe: longest sequence at which mask subgraphs are evaluated.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..ir.core import DType, Graph, Node, Value, dim_prod, dims_equal
from ..ir.opdefs.attention import AttentionAttrs
from ..ir.opdefs.creation import FullAttrs
from ..ir.opdefs.pointwise import CastAttrs
from ..ir.opdefs.shape import PermuteAttrs, ShapeAttrs
from ..ir.verifier import types_match
from .manager import Pass, PassResult, register_pass
from .mask_classify import MASKED_BELOW, MaskClass, classify, split_padding
from .patterns import producer, scalar_constant, skip_casts, skip_noops, unrepeat_kv
from .rewrite import Match, RewriteContext, RewriteRule, apply_rules


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
    fill: float | None = None  # the score a where() gives hidden keys (None: not a where-mask)
    bias: Value | None = None  # a term added to the scores under a where-mask (relative positions)


@dataclass(frozen=True)
class _Windows:
    """q, k, v [B, a1, a2, W, d]: attention within windows; one of a1, a2 counts windows, the other heads."""

    win_axis: int  # 1 or 2
    heads_axis: int  # the other one
    window: int  # W, keys and queries per window


def _heads_axis(q: Value) -> int | None:
    """The axis of a rank-5 q that holds heads when q = permute(reshape(t), p) splits t's last dim into (heads, d)."""
    perm = producer(q, "permute")
    split = producer(perm.inputs[0], "reshape") if perm is not None else None
    if split is None:
        return None
    t, r = split.inputs[0].type.shape, split.outputs[0].type.shape
    if len(t) != 4 or len(r) != 5 or not all(dims_equal(a, b) for a, b in zip(t[:3], r[:3])):
        return None
    if not dims_equal(t[3], dim_prod(r[3:])):
        return None
    p = perm.attrs.perm
    return p.index(3) if p.index(3) in (1, 2) and p[4] == 4 else None


def _windows(site: _Site) -> "_Windows | str":
    """The window layout of a rank-5 attention, or why it is not one."""
    qs, ks, vs = site.q.type.shape, site.k.type.shape, site.v.type.shape
    if not (len(qs) == len(ks) == len(vs) == 5):
        return "q, k, v are not [batch, heads, seq, head_dim] (nor [batch, windows, heads, window, head_dim])"
    if not all(dims_equal(a, b) and dims_equal(a, c) for a, b, c in zip(qs[:3], ks[:3], vs[:3])):
        return "windowed q, k, v whose batch, window or head dims differ"
    w = qs[3]
    if not dims_equal(ks[3], w):
        return f"windowed attention whose keys per window ({ks[3]}) differ from its queries per window ({w}): the keys cross windows"
    if not isinstance(w, int):
        return "the window length is not static"
    if site.mask is not None or site.softcap:
        return "a mask or soft-cap on attention within windows"
    heads = _heads_axis(site.q)
    if heads is None:  # no split into heads to read: the tutorial layout [B, n, H, W, d] when it has static heads there
        heads = 2 if isinstance(qs[2], int) else 1
    if not isinstance(qs[heads], int):
        return "the head count of windowed attention is not static"
    return _Windows(3 - heads, heads, w)


def _unwindow(x: Value, win: _Windows, before: Node, ctx: RewriteContext) -> Value:
    """[B, a1, a2, W, d] -> [B, H, n*W, d]: the windows merged back into one sequence, in order."""
    rw = ctx.rewriter
    b, n, h, w, d = (x.type.shape[i] for i in (0, win.win_axis, win.heads_axis, 3, 4))
    seq = dim_prod((n, w))
    perm = producer(x, "permute")
    if perm is not None and _heads_axis(x) == win.heads_axis and perm.attrs.perm[0] == 0 and perm.attrs.perm[win.win_axis] == 1 and perm.attrs.perm[3] == 2:
        # x = permute(reshape(t [B, n, W, H*d] -> [B, n, W, H, d])): view t as tokens [B, n*W, H, d]
        t = producer(perm.inputs[0], "reshape").inputs[0]
        if dims_equal(t.type.shape[1], n):
            tokens = rw.insert("reshape", [t], ShapeAttrs((b, seq, h, d)), before=before).outputs[0]
            return rw.insert("permute", [tokens], PermuteAttrs((0, 2, 1, 3)), before=before).outputs[0]
    if win.win_axis == 1:
        x = rw.insert("permute", [x], PermuteAttrs((0, 2, 1, 3, 4)), before=before).outputs[0]
    return rw.insert("reshape", [x], ShapeAttrs((b, h, seq, d)), before=before).outputs[0]


def _rewindow(o: Value, like: Value, win: _Windows, before: Node, ctx: RewriteContext) -> Value:
    """[B, H, n*W, dv] -> the windowed layout of `like` ([B, a1, a2, W, dv])."""
    rw = ctx.rewriter
    b, n, h, w = (like.type.shape[i] for i in (0, win.win_axis, win.heads_axis, 3))
    o = rw.insert("reshape", [o], ShapeAttrs((b, h, n, w, o.type.shape[3])), before=before).outputs[0]
    if win.win_axis == 1:
        o = rw.insert("permute", [o], PermuteAttrs((0, 2, 1, 3, 4)), before=before).outputs[0]
    return o


@dataclass(frozen=True)
class _LiftRule(RewriteRule):
    """The part every spelling shares: checks on q/k/v and the rewrite into `attention`.

    Mask classifications are cached per mask value in `ctx.data` (one mask feeds
    every layer's attention), and counted through `ctx.count`.
    """

    stat = "lifted"
    max_probe: int = 8200

    def site(self, match: Match) -> _Site:
        raise NotImplementedError

    def check(self, match: Match, ctx: RewriteContext) -> str | None:
        site = self.site(match)
        q, k, v = site.q, site.k, site.v
        if q.type.rank == 5:
            win = _windows(site)
            return win if isinstance(win, str) else None
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
        if self._additive_where(site):
            mc = self._where_class(site, ctx)
            if mc.attrs is None and not (site.fill == -math.inf or (site.fill <= MASKED_BELOW and q.type.dtype in (DType.F32, DType.F64))):
                # A row the mask hides completely softmaxes `fill` everywhere in eager: the mean of v.
                return (f"a where() fill of {site.fill:g} under a mask that is not a structure ({mc.kind}): a row it hides completely "
                        "averages v, which only a fill of -inf or <= -1e30 (in f32) keeps as an additive mask")
        return None

    @staticmethod
    def _additive_where(site: _Site) -> bool:
        """A where-mask lifted with care: a finite fill (a row hidden completely is not zeros in eager) or a bias under it."""
        return site.fill is not None and (site.fill != -math.inf or site.bias is not None)

    def _where_class(self, site: _Site, ctx: RewriteContext) -> MaskClass:
        """The structure of a where-mask's visible pattern (classified once per mask and orientation)."""
        graph, mask, seq_dims = ctx.graph, site.mask, (site.q.type.shape[2], site.k.type.shape[2])
        negate = not site.mask_is_keep
        return ctx.cached("where_classes", (mask, negate), lambda: classify(graph, mask, seq_dims, max_probe=self.max_probe, negate=negate))

    def rewrite(self, match: Match, ctx: RewriteContext) -> None:
        site = self.site(match)
        if site.q.type.rank == 5:  # attention within windows: block-local attention over the merged sequence
            win = _windows(site)
            q, k, v = (_unwindow(x, win, match.root, ctx) for x in (site.q, site.k, site.v))
            head_dim = q.type.shape[-1]
            attrs = AttentionAttrs(
                scale=site.scale if site.scale is not None else 1.0 / math.sqrt(head_dim),
                causal=site.causal, block=win.window, kv_heads=k.type.shape[1], softcap=site.softcap,
            )
            ctx.count("windowed")
            node = ctx.rewriter.insert("attention", [q, k, v], attrs, before=match.root)
            ctx.rewriter.replace_node(match.root, [_rewindow(node.outputs[0], site.q, win, match.root, ctx)])
            return
        rewriter = ctx.rewriter
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
        if self._additive_where(site):
            # where(hidden, fill, s [+ bias]): a structure (no row hidden completely) becomes attrs and
            # the bias the operand; otherwise the operand is additive, bias where visible and fill where
            # hidden, so a row hidden completely softmaxes equal scores as in eager (s + fill == fill
            # for fill <= -1e30 in f32, and for -inf).
            mc = self._where_class(site, ctx)
            ctx.count(f"mask_{mc.kind}")
            if mc.attrs is not None:
                s = mc.attrs
                attrs = replace(attrs, causal=attrs.causal or s.causal, window=s.window, block=s.block, global_tokens=s.global_tokens)
                if site.bias is not None:
                    operands.append(site.bias)
            else:
                operands.append(self._additive_mask(site, match.root, ctx))
            node = rewriter.insert("attention", operands, attrs, before=match.root)
            rewriter.replace_node(match.root, node.outputs)
            return
        if site.mask is not None:
            mask = site.mask
            if not site.mask_is_keep:
                mask = rewriter.insert("logical_not", [mask], before=match.root).outputs[0]
            seq_dims = (site.q.type.shape[2], k0.type.shape[2])
            graph = ctx.graph
            mc: MaskClass = ctx.cached("mask_classes", mask, lambda: classify(graph, mask, seq_dims, max_probe=self.max_probe))
            ctx.count(f"mask_{mc.kind}")
            split = None
            if mc.kind == "input":
                split = ctx.cached("mask_splits", mask, lambda: split_padding(graph, mask, seq_dims, max_probe=self.max_probe))
                if split is not None:  # structure AND padding row: the structure into attrs, the row stays
                    mc, mask = split
                    ctx.count("mask_padding_split")
            if mc.attrs is not None:
                s = mc.attrs
                attrs = replace(attrs, causal=attrs.causal or s.causal, window=s.window, block=s.block, global_tokens=s.global_tokens)
            if mc.attrs is None or split is not None:
                operands.append(mask)
        node = rewriter.insert("attention", operands, attrs, before=match.root)
        rewriter.replace_node(match.root, node.outputs)

    @staticmethod
    def _additive_mask(site: _Site, before: Node, ctx: RewriteContext) -> Value:
        """where(mask, bias, fill) (or its mirror for a hidden-where-true mask) in the scores' dtype."""
        dt = site.q.type.dtype
        rw = ctx.rewriter
        fill = rw.insert("full", [], FullAttrs((), site.fill, dt), before=before).outputs[0]
        bias = site.bias
        if bias is None:
            bias = rw.insert("full", [], FullAttrs((), 0.0, dt), before=before).outputs[0]
        elif bias.type.dtype != dt:
            bias = rw.insert("cast", [bias], CastAttrs(dt), before=before).outputs[0]
        pair = [bias, fill] if site.mask_is_keep else [fill, bias]
        return rw.insert("where", [site.mask, *pair], before=before).outputs[0]


@dataclass(frozen=True)
class SDPARule(_LiftRule):
    """`sdpa(q, k, v, mask?)` -> `attention`."""

    name = "lift-sdpa"

    def match(self, node: Node, ctx: RewriteContext) -> Match | None:
        return Match(node) if node.op == "sdpa" else None

    def site(self, match: Match) -> _Site:
        n = match.root
        mask = n.inputs[3] if len(n.inputs) > 3 else None
        return _Site(n.inputs[0], n.inputs[1], n.inputs[2], n.attrs.scale, n.attrs.is_causal, mask, True)


@dataclass(frozen=True)
class EagerRule(_LiftRule):
    """`matmul(softmax(mask(cap(scale(matmul(q, kᵀ))))), v)` -> `attention`."""

    name = "lift-eager-attention"

    def match(self, node: Node, ctx: RewriteContext) -> Match | None:
        if node.op != "matmul":
            return None
        probs = skip_casts(node.inputs[0])
        sm = producer(probs, "softmax")
        if sm is None or sm.attrs.dim not in (-1, sm.inputs[0].type.rank - 1):
            return None
        return Match(node, {"softmax": sm})

    def site(self, match: Match) -> _Site:
        cached = match.captures.get("site")
        if cached is None:
            cached = self._parse(match)
            match.captures["site"] = cached
        return cached

    def check(self, match: Match, ctx: RewriteContext) -> str | None:
        site = self.site(match)
        if isinstance(site, str):
            return site
        x, perm = match.captures["k_perm"]
        site.k = _PermutedView(x, perm)
        return super().check(match, ctx)

    def rewrite(self, match: Match, ctx: RewriteContext) -> None:
        site = self.site(match)
        x, perm = match.captures["k_perm"]
        if perm == tuple(range(len(perm))):
            site.k = x
        else:
            site.k = ctx.rewriter.insert("permute", [x], PermuteAttrs(perm), before=match.root).outputs[0]
        super().rewrite(match, ctx)

    def _parse(self, match: Match) -> "_Site | str":
        scores = skip_casts(match.captures["softmax"].inputs[0])
        mask, keep, fill, bias = None, True, None, None
        add = producer(scores, "add")
        where = producer(scores, "where")
        if add is not None:
            split = _scores_plus(add)
            if split is None:
                return "softmax input is an add of two non-score tensors"
            scores, mask = split
        elif where is not None:
            cond, a, b = where.inputs
            fill_a, fill_b = scalar_constant(a), scalar_constant(b)
            if fill_b is not None and fill_b <= -1e4:
                scores, mask, keep, fill = a, cond, True, fill_b
            elif fill_a is not None and fill_a <= -1e4:
                scores, mask, keep, fill = b, cond, False, fill_a
            else:
                return "a where() before softmax that does not fill with a large negative value"
            biased = producer(scores, "add")  # scores + a bias (DeBERTa's relative-position terms), then the mask
            split = _scores_plus(biased) if biased is not None else None
            if split is not None:
                scores, bias = split
        softcap = 0.0
        mul = producer(scores, "mul")
        if mul is not None and producer(mul.inputs[0], "tanh") is not None and scalar_constant(mul.inputs[1]) is not None:
            cap = scalar_constant(mul.inputs[1])
            div = producer(producer(mul.inputs[0], "tanh").inputs[0], "div")
            if div is None or scalar_constant(div.inputs[1]) != cap:
                return "a tanh soft-cap whose divisor and multiplier differ"
            softcap, scores = cap, div.inputs[0]
        scale = 1.0
        for _ in range(2):  # a scale may sit after the matmul and/or on q
            m = producer(scores, "mul", "div")
            if m is None:
                break
            c = scalar_constant(m.inputs[1])
            if c is None or c == 0:
                break
            scale *= c if m.op == "mul" else 1.0 / c
            scores = m.inputs[0]
        qk = producer(scores, "matmul")
        if qk is None:
            return "softmax input is not q @ kᵀ"
        q, kt = (skip_noops(x) for x in qk.inputs)
        pq = producer(q, "mul", "div")
        if pq is not None and scalar_constant(pq.inputs[1]) not in (None, 0.0):
            c = scalar_constant(pq.inputs[1])
            scale *= c if pq.op == "mul" else 1.0 / c
            q = pq.inputs[0]
        perm = producer(kt, "permute")
        if perm is None or kt.type.rank not in (4, 5):
            return "the key operand is not a transpose of k"
        # kᵀ = permute(x, p): k is x permuted by p with its last two entries swapped.
        p = perm.attrs.perm
        k_perm = p[:-2] + (p[-1], p[-2])
        match.captures["k_perm"] = (perm.inputs[0], k_perm)
        return _Site(q, None, skip_noops(match.root.inputs[1]), scale, False, mask, keep, softcap, fill, bias)


class _PermutedView:
    """Stands for `permute(x, perm)` during checks, before any node is made."""

    def __init__(self, x: Value, perm: tuple[int, ...]):
        self.type = x.type.with_shape(tuple(x.type.shape[p] for p in perm))
        self.producer = None


def _scores_plus(add: Node) -> "tuple[Value, Value] | None":
    """(the score chain, the other operand) of `add`, whichever side the scores are on."""
    for mine, other in (add.inputs, add.inputs[::-1]):
        if _is_score_chain(mine):
            return mine, other
    return None


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


@dataclass(frozen=True)
class UnflattenBatchedMatmul(RewriteRule):
    """`reshape(matmul(reshape(a), reshape(b)))` -> `matmul(a, b)` with the batch dims kept.

    torch decomposes a 4-D matmul into reshapes around a 3-D bmm; undoing that
    lets the attention rules see q, kᵀ and v with their head dims. Exact.
    """

    name = "unflatten-bmm"
    stat = "bmm_unflattened"

    def match(self, node: Node, ctx: RewriteContext) -> Match | None:
        if node.op != "reshape":
            return None
        mm = producer(node.inputs[0], "matmul")
        if mm is None or mm.outputs[0].type.rank != 3 or len(mm.outputs[0].uses) != 1:
            return None
        ra, rb = producer(mm.inputs[0], "reshape"), producer(mm.inputs[1], "reshape")
        out = node.outputs[0].type.shape
        if ra is None or rb is None or len(out) < 4:  # only where batch dims were really merged
            return None
        return Match(node, {"a": ra.inputs[0], "b": rb.inputs[0], "mm": mm})

    def check(self, match: Match, ctx: RewriteContext) -> str | None:
        out = match.root.outputs[0].type.shape
        mm = match["mm"]
        x, m, n = mm.outputs[0].type.shape
        if not (dims_equal(dim_prod(out[:-2]), x) and dims_equal(out[-2], m) and dims_equal(out[-1], n)):
            return "the outer reshape does not split the bmm batch"
        return None

    def rewrite(self, match: Match, ctx: RewriteContext) -> None:
        rewriter = ctx.rewriter
        out = match.root.outputs[0].type.shape
        mm = match["mm"]
        k = mm.inputs[0].type.shape[2]
        lead = tuple(out[:-2])
        a = self._as(ctx, match["a"], lead + (out[-2], k), match.root)
        b = self._as(ctx, match["b"], lead + (k, out[-1]), match.root)
        node = rewriter.insert("matmul", [a, b], before=match.root)
        rewriter.replace_node(match.root, node.outputs)

    @staticmethod
    def _as(ctx: RewriteContext, v: Value, shape: tuple, before: Node) -> Value:
        if types_match(v.type, v.type.with_shape(shape)) or v.type.shape == shape:
            return v
        return ctx.rewriter.insert("reshape", [v], ShapeAttrs(shape), before=before).outputs[0]


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
        stats: dict[str, int] = {}
        unflattened = apply_rules(graph, [UnflattenBatchedMatmul()])["bmm_unflattened"]
        counts = apply_rules(graph, [SDPARule(self.max_probe), EagerRule(self.max_probe)])
        if unflattened:
            stats["bmm_unflattened"] = unflattened
        stats.update({k: v for k, v in counts.items() if v})
        stats.setdefault("lifted", 0)
        return PassResult(graph, stats["lifted"] > 0, stats)
