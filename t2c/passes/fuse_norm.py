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
from .lift_attention import scalar_constant
from .manager import Pass, PassResult, register_pass
from .rewrite import Match, Rewriter, RewriteRule, apply_rules

# Dtypes in which torch's fused norms compute exactly what the chain computes.
_WIDE = (DType.F32, DType.F64)


def _producer(v: Value, *ops: str) -> Node | None:
    n = v.producer
    return n if n is not None and n.op in ops else None


def _only_use(v: Value, graph: Graph, node: Node) -> bool:
    """Whether `node` is the one and only user of `v` (and `v` is no graph output)."""
    return len(v.uses) == 1 and v.uses[0][0] is node and not any(v is o for o in graph.output_values())


def _same_value(a: Value, b: Value) -> bool:
    """`a is b`, or both made by the same pure op on the same operands (an un-CSE'd `x - mu`)."""
    if a is b:
        return True
    pa, pb = a.producer, b.producer
    return (
        pa is not None and pb is not None and pa.op == pb.op == "sub" and pa.attrs == pb.attrs
        and len(pa.inputs) == len(pb.inputs) and all(x is y for x, y in zip(pa.inputs, pb.inputs))
    )


def _squared(v: Value) -> Value | None:
    """y when `v` is pow(y, 2) or y * y."""
    p = _producer(v, "pow")
    if p is not None:
        return p.inputs[0] if scalar_constant(p.inputs[1]) == 2.0 else None
    m = _producer(v, "mul")
    if m is not None and _same_value(m.inputs[0], m.inputs[1]):
        return m.inputs[0]
    return None


def _trailing(dims: tuple[int, ...], rank: int) -> int | None:
    """k when `dims` are exactly the last k axes of a rank-`rank` tensor, else None."""
    if not dims:
        return None
    try:
        axes = sorted({norm_axis(d, rank) for d in dims})
    except VerifyError:
        return None
    k = len(axes)
    return k if len(dims) == k and axes == list(range(rank - k, rank)) else None


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
        for h, r in (root.inputs, root.inputs[::-1]):
            rs = _producer(r, "rsqrt")
            if rs is not None:
                break
        else:
            return None
    elif root.op == "div" and root.attrs.rounding_mode is None:
        h, rs = root.inputs[0], _producer(root.inputs[1], "sqrt")
        if rs is None:
            return None
    else:
        return None
    den = rs.inputs[0]
    eps, eps_type, stat = 0.0, None, den
    add = _producer(den, "add")
    if add is not None:
        for s, e in (add.inputs, add.inputs[::-1]):
            if _producer(s, "mean", "var") is not None:
                stat, c = s, scalar_constant(e)
                if c is None:
                    return "rms", "eps is not a scalar constant"
                eps, eps_type = c, e.producer.attrs.dtype
                break
        else:
            return None
    reduce = _producer(stat, "mean", "var")
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
    if not _same_value(y, h):
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
    sub = _producer(h, "sub")
    if sub is None:
        return None
    mu = _producer(sub.inputs[1], "mean")
    if mu is None or mu.inputs[0] is not sub.inputs[0] or not mu.attrs.keepdim:
        return None
    return sub.inputs[0], mu


class NormCoreRule(RewriteRule):
    """`h * rsqrt(mean(h²) + eps)` -> `rms_norm(h)`; the centred form -> `layer_norm(x)`."""

    def __init__(self, kind: str):
        self.kind = kind
        self.name = f"fuse-{kind}-norm"
        self.stat = f"{kind}_norm_fused"

    def match(self, node: Node) -> Match | None:
        core = _parse_core(node)
        if core is None or (core.kind if isinstance(core, _Core) else core[0]) != self.kind:
            return None
        return Match(node, {"core": core})

    def check(self, match: Match) -> str | None:
        core = match["core"]
        if not isinstance(core, _Core):
            return core[1]
        x, red, out = core.x, core.reduce, match.root.outputs[0]
        k = _trailing(red.attrs.dims, x.type.rank)
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

    def rewrite(self, rewriter: Rewriter, match: Match) -> None:
        core = match["core"]
        x = core.x
        k = _trailing(core.reduce.attrs.dims, x.type.rank)
        shape = tuple(x.type.shape[-k:])
        eps = core.eps
        if core.eps_type is not None and core.eps_type != x.type.dtype:
            # The chain adds eps as rounded to its constant's dtype, then promoted.
            eps = float(torch.tensor(eps, dtype=core.eps_type.torch).to(x.type.dtype.torch))
        attrs = RMSNormAttrs(shape, eps) if core.kind == "rms" else NormAttrs(shape, eps)
        node = rewriter.insert(f"{core.kind}_norm", [x], attrs, before=match.root)
        rewriter.replace_node(match.root, node.outputs)


class AffineRule(RewriteRule):
    """`norm(x) * w` -> `norm(x, w)`; `layer_norm(x, w) + b` -> `layer_norm(x, w, b)`."""

    name = "fuse-norm-affine"
    stat = "weights_absorbed"

    def __init__(self, graph: Graph, stats: dict[str, int]):
        self.graph = graph
        self.stats = stats

    def match(self, node: Node) -> Match | None:
        if node.op not in ("mul", "add"):
            return None
        for v, p in (node.inputs, node.inputs[::-1]):
            norm = _producer(v, "rms_norm", "layer_norm")
            if norm is None:
                continue
            n_in = len(norm.inputs)
            if node.op == "mul" and n_in == 1:
                return Match(node, {"norm": norm, "param": p, "slot": "weight"})
            if node.op == "add" and norm.op == "layer_norm" and n_in == 2:
                return Match(node, {"norm": norm, "param": p, "slot": "bias"})
        return None

    def check(self, match: Match) -> str | None:
        norm, p, out = match["norm"], match["param"], match.root.outputs[0]
        y = norm.outputs[0]
        if not _only_use(y, self.graph, match.root):
            return f"the normalised tensor has other uses than the {match['slot']}"
        if p.type.dtype != y.type.dtype:
            return f"the {match['slot']} is {p.type.dtype}, the norm computes in {y.type.dtype}"
        if tuple(p.type.shape) != tuple(norm.attrs.normalized_shape):
            return f"the {match['slot']} has shape {list(map(str, p.type.shape))}, not normalized_shape"
        if out.type != y.type:
            return "the result's type differs from the norm's"
        return None

    def rewrite(self, rewriter: Rewriter, match: Match) -> None:
        norm, p = match["norm"], match["param"]
        if match["slot"] == "weight":
            p = self._folded(rewriter, p, match.root)
        node = rewriter.insert(norm.op, list(norm.inputs) + [p], norm.attrs, before=match.root)
        rewriter.replace_node(match.root, node.outputs)

    def _folded(self, rewriter: Rewriter, w: Value, user: Node) -> Value:
        """Gemma's `1 + weight` (a param, maybe cast) as a new param holding the sum."""
        add = _producer(w, "add")
        if add is None or not _only_use(w, self.graph, user):
            return w
        for v, c in (add.inputs, add.inputs[::-1]):
            cast = _producer(v, "cast")
            param = cast.inputs[0] if cast is not None else v
            value = scalar_constant(c)
            if value is None or not self.graph.is_param(param) or param.name not in self.graph.params:
                continue
            t = self.graph.params[param.name]
            if cast is not None:
                t = t.to(cast.attrs.dtype.torch)
            const = torch.full(tuple(c.type.shape), value, dtype=c.type.dtype.torch)
            # The same reference ops, in the same order, as the graph would run.
            folded = torch.add(t, const) if v is add.inputs[0] else torch.add(const, t)
            if tuple(folded.shape) != tuple(w.type.shape) or folded.dtype != w.type.dtype.torch:
                continue
            self.stats["weights_folded"] = self.stats.get("weights_folded", 0) + 1
            return rewriter.add_param(f"{param.name}_plus_one", folded)
        return w


class AddNormRule(RewriteRule):
    """`norm(a + b)` -> `add_norm(a, b)`; other uses of `a + b` read its second result."""

    name = "fuse-add-norm"
    stat = "add_norm_fused"

    def __init__(self, graph: Graph):
        self.graph = graph

    def match(self, node: Node) -> Match | None:
        if node.op not in ("rms_norm", "layer_norm"):
            return None
        add = _producer(node.inputs[0], "add")
        return Match(node, {"add": add}) if add is not None else None

    def check(self, match: Match) -> str | None:
        add = match["add"]
        s = add.outputs[0]
        if any(v.type != s.type for v in add.inputs):
            return "the add broadcasts or promotes (not a residual add)"
        nodes = self.graph.nodes
        at = nodes.index(add)
        for v in match.root.inputs[1:]:
            if v.producer is not None and nodes.index(v.producer) > at:
                return "the norm's weight or bias is computed after the residual add"
        return None

    def rewrite(self, rewriter: Rewriter, match: Match) -> None:
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
        rules = [NormCoreRule("layer"), NormCoreRule("rms"), AffineRule(graph, stats)]
        counts = apply_rules(graph, rules)
        # The adds last, so that each norm has taken its weight and bias before it becomes add_norm.
        if self.residual:
            counts.update({k: v for k, v in apply_rules(graph, [AddNormRule(graph)]).items() if k != "nodes_erased"})
        stats.update({k: v for k, v in counts.items() if k != "nodes_erased" and v})
        for key in ("rms_norm_fused", "layer_norm_fused", "add_norm_fused"):
            stats.setdefault(key, 0)
        changed = any(v for v in stats.values())
        return PassResult(graph, changed, stats)
