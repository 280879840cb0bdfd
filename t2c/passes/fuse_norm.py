"""fuse-norm: LayerNorm and RMSNorm written out by hand become `layer_norm` / `rms_norm`;
a residual add that feeds a norm becomes `add_norm` (both results kept).

Spellings recognised (operands of add and mul in either order):
  * RMSNorm, as Hugging Face Llama/Mistral/Mixtral/Gemma write it:
        y = h * rsqrt(mean(pow(h, 2) | h*h, trailing dims, keepdim) + eps)
    or  y = h / sqrt(...); the `+ eps` may be absent (eps = 0);
  * LayerNorm: with d = x - mean(x, dims, keepdim),
        y = d * rsqrt(mean(d*d | pow(d, 2), dims, keepdim) + eps)   or / sqrt(...)
    or  y = d * rsqrt(var(x, dims, correction=0, keepdim) + eps);
  * then `y * w` (a weight of exactly normalized_shape, same dtype) and, for
    LayerNorm, `+ b`, become the op's weight and bias. Gemma's `y * (1 + w)`
    takes `1 + w` as the weight; when `w` is a param with data the sum is
    folded into a new param, computed as the graph would (same ops, same dtype);
  * `norm(a + b)` where a and b have the sum's type -> `add_norm(a, b, ...)`;
    every other use of the sum reads add_norm's second result.

Exactness: the fused ops compute in float32 (torch upcasts halves internally),
so only chains that compute in f32 or f64 are fused. For a half model that
upcasts by hand (`cast(x, f32)` ... `cast(y, f16)`), the f32 core becomes
`rms_norm(cast(x, f32))` and the cast back and the half-precision weight
multiply stay as they are: folding the weight in would round once instead of
twice. A mean over any dims other than the trailing ones never matches.

Preconditions: none; run cleanup first (fold-shapes drops no-op casts, cse
merges the repeated `x - mean` of some spellings). Options:
  residual: also fuse residual adds into `add_norm` (default true).
Stats: rms_norm_fused, layer_norm_fused, add_norm_fused, weights_absorbed,
weights_folded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import VerifyError
from ..ir.core import DType, Graph, Node, Value
from ..ir.opdefs._infer import norm_axis
from ..ir.opdefs.add_norm import AddNormAttrs
from ..ir.opdefs.nn import NormAttrs, RMSNormAttrs
from .manager import Pass, PassResult, register_pass
from .patterns import only_use, operands_by, producer, same_value, scalar_constant, trailing_axes
from .rewrite import Match, RewriteContext, RewriteRule, apply_rules

# Dtypes in which torch's fused norms compute exactly what the chain computes.
_WIDE = (DType.F32, DType.F64)


def _squared(v: Value) -> Value | None:
    """y when `v` is pow(y, 2) or y * y."""
    p = producer(v, "pow")
    if p is not None:
        return p.inputs[0] if scalar_constant(p.inputs[1]) == 2.0 else None
    m = producer(v, "mul")
    if m is not None and same_value(m.inputs[0], m.inputs[1]):
        return m.inputs[0]
    return None


@dataclass
class _Core:
    """A normalisation chain: what it normalises, over which dims, with which eps."""

    kind: str  # "rms" or "layer"
    x: Value  # the tensor normalised (for "layer", the un-centred input)
    reduce: Node  # the mean/var that computes the statistic
    eps: float
    eps_type: DType | None


def _parse_core(root: Node) -> "_Core | tuple[str, str] | None":
    """Parse `h * rsqrt(stat + eps)` / `h / sqrt(stat + eps)`.

    None when it is no norm at all; (kind, reason) for a near-miss of that kind.
    """
    if root.op == "mul":
        rs, h = next(operands_by(root, "rsqrt"), (None, None))
        if rs is None:
            return None
    elif root.op == "div" and root.attrs.rounding_mode is None:
        h, rs = root.inputs[0], producer(root.inputs[1], "sqrt")
        if rs is None:
            return None
    else:
        return None
    den = rs.inputs[0]
    eps, eps_type, stat = 0.0, None, den
    add = producer(den, "add")
    if add is not None:
        for s, e in (add.inputs, add.inputs[::-1]):
            if producer(s, "mean", "var") is not None:
                stat, c = s, scalar_constant(e)
                if c is None:
                    return "rms", "eps is not a scalar constant"
                eps, eps_type = c, e.producer.attrs.dtype
                break
        else:
            return None
    reduce = producer(stat, "mean", "var")
    if reduce is None:
        return None
    centred = _centred(h)
    if reduce.op == "var":
        if centred is None or reduce.inputs[0] is not centred[0]:
            return "layer", "a variance whose input is not the centred tensor"
        if not _same_axes(centred[1], reduce):
            return "layer", "the mean and the variance are over different dims"
        if reduce.attrs.correction != 0:
            return "layer", f"a variance with correction {reduce.attrs.correction} (LayerNorm uses 0)"
        return _Core("layer", centred[0], reduce, eps, eps_type)
    y = _squared(reduce.inputs[0])
    if y is None:
        return None
    if not same_value(y, h):
        return "rms", "the mean of squares is over another tensor than the one normalised"
    if centred is not None and _same_axes(centred[1], reduce):
        return _Core("layer", centred[0], reduce, eps, eps_type)
    return _Core("rms", h, reduce, eps, eps_type)


def _same_axes(a: Node, b: Node) -> bool:
    """Whether two reductions of same-rank tensors reduce the same axes."""
    ra, rb = a.inputs[0].type.rank, b.inputs[0].type.rank
    try:
        return ra == rb and {norm_axis(d, ra) for d in a.attrs.dims} == {norm_axis(d, rb) for d in b.attrs.dims}
    except VerifyError:
        return False


def _centred(h: Value) -> tuple[Value, Node] | None:
    """(x, mean node) when `h` is x - mean(x, dims, keepdim)."""
    sub = producer(h, "sub")
    if sub is None:
        return None
    mu = producer(sub.inputs[1], "mean")
    if mu is None or mu.inputs[0] is not sub.inputs[0] or not mu.attrs.keepdim:
        return None
    return sub.inputs[0], mu


@dataclass(frozen=True)
class NormCoreRule(RewriteRule):
    """`h * rsqrt(mean(h²) + eps)` -> `rms_norm(h)`; the centred form -> `layer_norm(x)`."""

    kind: str = "rms"  # "rms" or "layer"

    @property
    def name(self) -> str:  # type: ignore[override]
        return f"fuse-{self.kind}-norm"

    @property
    def stat(self) -> str:  # type: ignore[override]
        return f"{self.kind}_norm_fused"

    def match(self, node: Node, ctx: RewriteContext) -> Match | None:
        core = _parse_core(node)
        if core is None or (core.kind if isinstance(core, _Core) else core[0]) != self.kind:
            return None
        return Match(node, {"core": core})

    def check(self, match: Match, ctx: RewriteContext) -> str | None:
        core = match["core"]
        if not isinstance(core, _Core):
            return core[1]
        x, red, out = core.x, core.reduce, match.root.outputs[0]
        k = trailing_axes(red.attrs.dims, x.type.rank)
        if k is None:
            return f"the {red.op} is over dims {list(red.attrs.dims)}, not the trailing dims of a rank-{x.type.rank} tensor"
        if not red.attrs.keepdim:
            return f"the {red.op} drops the reduced dims (keepdim=false)"
        if red.inputs[0].type.shape != x.type.shape:
            return "the statistic is taken over a broadcast of the input"
        if not all(isinstance(d, int) for d in x.type.shape[-k:]):
            return "the normalised dims are not static"
        if x.type.dtype not in _WIDE:
            return f"the chain computes in {x.type.dtype}; the fused op would compute in f32"
        if out.type != x.type or red.outputs[0].type.dtype != x.type.dtype:
            return "the result's type differs from the input's"
        if core.eps < 0:
            return f"a negative eps {core.eps}"
        return None

    def rewrite(self, match: Match, ctx: RewriteContext) -> None:
        core = match["core"]
        x = core.x
        k = trailing_axes(core.reduce.attrs.dims, x.type.rank)
        shape = tuple(x.type.shape[-k:])
        eps = core.eps
        if core.eps_type is not None and core.eps_type != x.type.dtype:
            # The chain adds eps as rounded to its constant's dtype, then promoted.
            eps = float(torch.tensor(eps, dtype=core.eps_type.torch).to(x.type.dtype.torch))
        attrs = RMSNormAttrs(shape, eps) if core.kind == "rms" else NormAttrs(shape, eps)
        node = ctx.rewriter.insert(f"{core.kind}_norm", [x], attrs, before=match.root)
        ctx.rewriter.replace_node(match.root, node.outputs)


@dataclass(frozen=True)
class AffineRule(RewriteRule):
    """`norm(x) * w` -> `norm(x, w)`; `layer_norm(x, w) + b` -> `layer_norm(x, w, b)`."""

    name = "fuse-norm-affine"
    stat = "weights_absorbed"

    def match(self, node: Node, ctx: RewriteContext) -> Match | None:
        if node.op not in ("mul", "add"):
            return None
        for norm, p in operands_by(node, ("rms_norm", "layer_norm")):
            n_in = len(norm.inputs)
            if node.op == "mul" and n_in == 1:
                return Match(node, {"norm": norm, "param": p, "slot": "weight"})
            if node.op == "add" and norm.op == "layer_norm" and n_in == 2:
                return Match(node, {"norm": norm, "param": p, "slot": "bias"})
        return None

    def check(self, match: Match, ctx: RewriteContext) -> str | None:
        norm, p, out = match["norm"], match["param"], match.root.outputs[0]
        y = norm.outputs[0]
        if not only_use(y, ctx.graph, match.root):
            return f"the normalised tensor has other uses than the {match['slot']}"
        if p.type.dtype != y.type.dtype:
            return f"the {match['slot']} is {p.type.dtype}, the norm computes in {y.type.dtype}"
        if tuple(p.type.shape) != tuple(norm.attrs.normalized_shape):
            return f"the {match['slot']} has shape {list(map(str, p.type.shape))}, not normalized_shape"
        if out.type != y.type:
            return "the result's type differs from the norm's"
        return None

    def rewrite(self, match: Match, ctx: RewriteContext) -> None:
        norm, p = match["norm"], match["param"]
        if match["slot"] == "weight":
            p = self._folded(ctx, p, match.root)
        node = ctx.rewriter.insert(norm.op, list(norm.inputs) + [p], norm.attrs, before=match.root)
        ctx.rewriter.replace_node(match.root, node.outputs)

    @staticmethod
    def _folded(ctx: RewriteContext, w: Value, user: Node) -> Value:
        """Gemma's `1 + weight` (a param, maybe cast) as a new param holding the sum."""
        graph = ctx.graph
        add = producer(w, "add")
        if add is None or not only_use(w, graph, user):
            return w
        for v, c in (add.inputs, add.inputs[::-1]):
            cast = producer(v, "cast")
            param = cast.inputs[0] if cast is not None else v
            value = scalar_constant(c)
            if value is None or not graph.is_param(param) or param.name not in graph.params:
                continue
            t = graph.params[param.name]
            if cast is not None:
                t = t.to(cast.attrs.dtype.torch)
            const = torch.full(tuple(c.type.shape), value, dtype=c.type.dtype.torch)
            # The same reference ops, in the same order, as the graph would run.
            folded = torch.add(t, const) if v is add.inputs[0] else torch.add(const, t)
            if tuple(folded.shape) != tuple(w.type.shape) or folded.dtype != w.type.dtype.torch:
                continue
            ctx.count("weights_folded")
            return ctx.rewriter.add_param(f"{param.name}_plus_one", folded)
        return w


@dataclass(frozen=True)
class AddNormRule(RewriteRule):
    """`norm(a + b)` -> `add_norm(a, b)`; other uses of `a + b` read its second result."""

    name = "fuse-add-norm"
    stat = "add_norm_fused"

    def match(self, node: Node, ctx: RewriteContext) -> Match | None:
        if node.op not in ("rms_norm", "layer_norm"):
            return None
        add = producer(node.inputs[0], "add")
        return Match(node, {"add": add}) if add is not None else None

    def check(self, match: Match, ctx: RewriteContext) -> str | None:
        add = match["add"]
        s = add.outputs[0]
        if any(v.type != s.type for v in add.inputs):
            return "the add broadcasts or promotes (not a residual add)"
        nodes = ctx.graph.nodes
        at = nodes.index(add)
        for v in match.root.inputs[1:]:
            if v.producer is not None and nodes.index(v.producer) > at:
                return "the norm's weight or bias is computed after the residual add"
        return None

    def rewrite(self, match: Match, ctx: RewriteContext) -> None:
        rewriter = ctx.rewriter
        norm, add = match.root, match["add"]
        a = norm.attrs
        attrs = AddNormAttrs("rms" if norm.op == "rms_norm" else "layer", tuple(a.normalized_shape), a.eps)
        # Placed where the add was, so that every earlier-placed use of the sum still follows it.
        node = rewriter.insert("add_norm", list(add.inputs) + list(norm.inputs[1:]), attrs, before=add)
        normed, total = node.outputs
        rewriter.replace_all_uses(add.outputs[0], total)
        rewriter.replace_node(norm, [normed])
        rewriter.erase_dead(add)


@register_pass("fuse-norm")
@dataclass(frozen=True)
class FuseNorm(Pass):
    """Fuse hand-written LayerNorm/RMSNorm chains into `layer_norm`/`rms_norm`, and residual adds
    feeding a norm into `add_norm` (exact).

    Recognises Hugging Face's RMSNorm (with its f32 upcast), Gemma's `(1 + w)`
    scale, LayerNorm by mean/variance or `var(correction=0)`, with rsqrt or
    sqrt/div; only over the trailing dims, and only where the chain computes
    in f32/f64 so that the fused op gives the same values.
    Options: residual (bool, true): also fuse residual adds into `add_norm`.
    Stats: rms_norm_fused, layer_norm_fused, add_norm_fused, weights_absorbed, weights_folded.
    """

    exact = True
    residual: bool = True

    def run(self, graph: Graph) -> PassResult:
        stats: dict[str, int] = {}
        # The layer rule first: a centred chain is also an RMS chain of `x - mean(x)`.
        counts = apply_rules(graph, [NormCoreRule("layer"), NormCoreRule("rms"), AffineRule()])
        # The adds last, so that each norm has taken its weight and bias before it becomes add_norm.
        if self.residual:
            counts.update({k: v for k, v in apply_rules(graph, [AddNormRule()]).items() if k != "nodes_erased"})
        stats.update({k: v for k, v in counts.items() if k != "nodes_erased" and v})
        for key in ("rms_norm_fused", "layer_norm_fused", "add_norm_fused"):
            stats.setdefault(key, 0)
        changed = any(v for v in stats.values())
        return PassResult(graph, changed, stats)
