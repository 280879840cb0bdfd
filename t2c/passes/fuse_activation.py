"""fuse-activation: written-out activations become one op; gated MLPs and bias + activation fuse.

Rules, in the order they get the graph (an earlier phase's result feeds the next):

1. activations written out
   * GELU, erf form: `0.5 * x * (1 + erf(x / sqrt(2)))` in any order of the
     products, with `x * (1/sqrt(2))` or `/ 2` spellings  ->  `gelu {approximate="none"}`;
   * GELU, tanh form (GPT-2's NewGELU):
     `0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))`, the tanh argument
     read as a polynomial in x, so `x*x*x`, `pow(x, 3)` or
     `x * (1 + 0.044715 * x * x)` all match  ->  `gelu {approximate="tanh"}`;
   * `x * sigmoid(x)`  ->  `silu(x)`.
   Every constant must match its exact value within 1e-6 relative (0.045 for
   0.044715 is another function, not a spelling).
2. gated MLPs: `mul(act(a), b)`, act one of silu / gelu / relu, either operand
   order, the activation used only there  ->  `gated_act(a, b) {activation}`.
3. bias + activation: `act(add(x, bias))` with `bias` a 1-D param of x's last
   dim (GPT-2's addmm; a reshape that keeps the last dim may sit between the add
   and the activation), or `act(linear(x, w, b))` split into
   `bias_act(linear(x, w), b)`  ->  `bias_act(x, bias) {activation}`.
   Gated MLPs go first: `gelu(x + b) * up` becomes `gated_act(x + b, up)`.

Exact: the fused ops compute the same function (the written-out GELUs to float
rounding). Preconditions: none; after `cse` the `x` of a written-out GELU is one
value, which the rules need. Stats: gelu_erf, gelu_tanh, silu, gated_act, bias_act.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from ..ir.core import Graph, Node, Value, dims_equal
from ..ir.opdefs.activation import ActivationAttrs
from ..ir.opdefs.pointwise import GeluAttrs
from ..ir.opdefs.shape import ShapeAttrs
from .manager import Pass, PassResult, register_pass
from .patterns import only_use, operands_by, producer, scalar_constant
from .rewrite import Match, RewriteContext, Rewriter, RewriteRule, apply_rules

REL_TOL = 1e-6
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_TANH_CUBIC = 0.044715
# The tanh/erf argument of each GELU form as a polynomial in x: {power: coefficient}.
GELU_ARGUMENT = {
    "erf": {1: 1.0 / math.sqrt(2.0)},
    "tanh": {1: SQRT_2_OVER_PI, 3: SQRT_2_OVER_PI * GELU_TANH_CUBIC},
}
MAX_DEGREE = 6
MAX_DEPTH = 12


def _close(got: float, want: float) -> bool:
    return abs(got - want) <= REL_TOL * abs(want)


# -- reading products and polynomials --------------------------------------------------------


def _product_operands(v: Value, depth: int = 3) -> list[Value]:
    """Every value in the tree of `mul`s (and divisions by a constant) rooted at `v`, `v` excluded."""
    out: list[Value] = []
    n = producer(v, "mul", "div")
    if n is None or depth == 0 or (n.op == "div" and (n.attrs.rounding_mode is not None or scalar_constant(n.inputs[1]) is None)):
        return out
    for operand in n.inputs:
        out.append(operand)
        out.extend(_product_operands(operand, depth - 1))
    return out


def _product(v: Value, x: Value, bracket: Value, depth: int = 4) -> tuple[float, int, int] | None:
    """`v` as `c * x^i * bracket^j`: (c, i, j), or None when another factor appears."""
    if v is x:
        return 1.0, 1, 0
    if v is bracket:
        return 1.0, 0, 1
    c = scalar_constant(v)
    if c is not None:
        return c, 0, 0
    n = producer(v, "mul", "div")
    if n is None or depth == 0:
        return None
    a = _product(n.inputs[0], x, bracket, depth - 1)
    if a is None:
        return None
    if n.op == "div":
        d = scalar_constant(n.inputs[1])
        if n.attrs.rounding_mode is not None or not d:
            return None
        return a[0] / d, a[1], a[2]
    b = _product(n.inputs[1], x, bracket, depth - 1)
    if b is None:
        return None
    return a[0] * b[0], a[1] + b[1], a[2] + b[2]


Poly = dict[int, float]


def _poly(v: Value, x: Value, depth: int = MAX_DEPTH) -> Poly | None:
    """`v` as a polynomial in `x` with constant coefficients, or None when it is not one."""
    if v is x:
        return {1: 1.0}
    c = scalar_constant(v)
    if c is not None:
        return {0: c}
    n = v.producer
    if n is None or depth == 0:
        return None
    if n.op == "neg":
        p = _poly(n.inputs[0], x, depth - 1)
        return None if p is None else {k: -c for k, c in p.items()}
    if n.op in ("add", "sub", "mul"):
        a, b = (_poly(i, x, depth - 1) for i in n.inputs)
        if a is None or b is None:
            return None
        if n.op == "mul":
            out = _poly_mul(a, b)
            return out if max(out, default=0) <= MAX_DEGREE else None
        sign = 1.0 if n.op == "add" else -1.0
        out = dict(a)
        for k, cb in b.items():
            out[k] = out.get(k, 0.0) + sign * cb
        return out
    if n.op == "div":
        d = scalar_constant(n.inputs[1])
        p = _poly(n.inputs[0], x, depth - 1)
        if p is None or not d or n.attrs.rounding_mode is not None:
            return None
        return {k: c / d for k, c in p.items()}
    if n.op == "pow":
        e = scalar_constant(n.inputs[1])
        p = _poly(n.inputs[0], x, depth - 1)
        if p is None or e is None or e != int(e) or not 0 <= e <= MAX_DEGREE:
            return None
        return _poly_pow(p, int(e))
    return None


def _poly_mul(a: Poly, b: Poly) -> Poly:
    out: Poly = {}
    for i, ca in a.items():
        for j, cb in b.items():
            out[i + j] = out.get(i + j, 0.0) + ca * cb
    return out


def _poly_pow(p: Poly, e: int) -> Poly | None:
    out: Poly = {0: 1.0}
    for _ in range(e):
        out = _poly_mul(out, p)
    return out if max(out, default=0) <= MAX_DEGREE else None


def _format_poly(p: Poly) -> str:
    terms = [f"{c:.10g}*x^{k}" if k else f"{c:.10g}" for k, c in sorted(p.items())]
    return " + ".join(terms) or "0"


def _poly_matches(got: Poly, want: Poly) -> bool:
    got = {k: c for k, c in got.items() if c != 0.0}
    return set(got) == set(want) and all(_close(got[k], want[k]) for k in want)


# -- rules -----------------------------------------------------------------------------------


class _GeluRule(RewriteRule):
    """`0.5 * x * (1 + fn(P(x)))` -> `gelu(x)`, fn and P fixed by the form."""

    fn: ClassVar[str] = ""
    approximate: ClassVar[str] = ""

    def match(self, node: Node, ctx: RewriteContext) -> Match | None:
        if node.op not in ("mul", "div"):  # `x * (1 + erf(...)) / 2` ends in a div
            return None
        for v in _product_operands(node.outputs[0]):
            add = producer(v, "add")
            if add is None:
                continue
            for i in (0, 1):
                f = producer(add.inputs[i], self.fn)
                one = scalar_constant(add.inputs[1 - i])
                if f is not None and one is not None:
                    return Match(node, {"bracket": v, "one": one, "arg": f.inputs[0]})
        return None

    def check(self, match: Match, ctx: RewriteContext) -> str | None:
        if not _close(match["one"], 1.0):
            return f"{self.fn} is shifted by {match['one']!r}, not 1"
        root, bracket = match.root.outputs[0], match["bracket"]
        want = GELU_ARGUMENT[self.fn]
        reason = f"the {self.fn} argument is not a polynomial in a factor of the product"
        for x in _product_operands(root):
            if x is bracket or scalar_constant(x) is not None:
                continue
            p = _poly(match["arg"], x)
            if p is None:
                continue
            if not _poly_matches(p, want):
                reason = f"the {self.fn} argument is {_format_poly(p)}, GELU needs {_format_poly(want)} (within {REL_TOL:g})"
                continue
            prod = _product(root, x, bracket)
            if prod is None or prod[1:] != (1, 1):
                reason = f"the product is not c * x * (1 + {self.fn}(...))"
                continue
            if not _close(prod[0], 0.5):
                reason = f"the product's constant is {prod[0]!r}, not 0.5"
                continue
            if x.type != root.type or not x.type.dtype.is_float:
                reason = f"x {x.type} and the result {root.type} differ in type"
                continue
            match.captures["x"] = x
            return None
        return reason

    def rewrite(self, match: Match, ctx: RewriteContext) -> None:
        node = ctx.rewriter.insert("gelu", [match["x"]], GeluAttrs(self.approximate), before=match.root)
        ctx.rewriter.replace_node(match.root, node.outputs)


class GeluErfRule(_GeluRule):
    """`0.5 * x * (1 + erf(x / sqrt(2)))` -> `gelu {approximate="none"}`."""

    name = "gelu-erf"
    stat = "gelu_erf"
    fn = "erf"
    approximate = "none"


class GeluTanhRule(_GeluRule):
    """`0.5 * x * (1 + tanh(sqrt(2/pi) * (x + 0.044715 * x^3)))` -> `gelu {approximate="tanh"}`."""

    name = "gelu-tanh"
    stat = "gelu_tanh"
    fn = "tanh"
    approximate = "tanh"


class SiluRule(RewriteRule):
    """`x * sigmoid(x)` (either order) -> `silu(x)`."""

    name = "silu"
    stat = "silu"

    def match(self, node: Node, ctx: RewriteContext) -> Match | None:
        if node.op != "mul":
            return None
        pairs = list(operands_by(node, "sigmoid"))
        for sigmoid, x in pairs:
            if sigmoid.inputs[0] is x:
                return Match(node, {"x": x})
        # a product with a sigmoid of something else: a gate, not SiLU (a near-miss worth naming)
        return Match(node, {"x": None}) if pairs else None

    def check(self, match: Match, ctx: RewriteContext) -> str | None:
        x = match["x"]
        if x is None:
            return "the sigmoid is of another tensor than the one it multiplies (a gate, not SiLU)"
        if not x.type.dtype.is_float or x.type != match.root.outputs[0].type:
            return f"x is {x.type}, the product {match.root.outputs[0].type}"
        return None

    def rewrite(self, match: Match, ctx: RewriteContext) -> None:
        node = ctx.rewriter.insert("silu", [match["x"]], before=match.root)
        ctx.rewriter.replace_node(match.root, node.outputs)


def _activation_of(n: Node) -> str | None:
    """The `ActivationAttrs` name of an activation node (silu, gelu, gelu_tanh, relu), else None."""
    if n.op in ("silu", "relu"):
        return n.op
    if n.op == "gelu":
        return "gelu_tanh" if n.attrs.approximate == "tanh" else "gelu"
    return None


class GatedActRule(RewriteRule):
    """`act(a) * b` (either order) -> `gated_act(a, b)`."""

    name = "gated-act"
    stat = "gated_act"

    def match(self, node: Node, ctx: RewriteContext) -> Match | None:
        if node.op != "mul":
            return None
        for act, up in operands_by(node, lambda n: _activation_of(n) is not None):
            return Match(node, {"act": act, "up": up})
        return None

    def check(self, match: Match, ctx: RewriteContext) -> str | None:
        act = match["act"]
        if not only_use(act.outputs[0], ctx.graph):
            return f"the {act.op} result is used elsewhere too"
        if not act.inputs[0].type.dtype.is_float:
            return f"the gate is {act.inputs[0].type}, not floating-point"
        return None

    def rewrite(self, match: Match, ctx: RewriteContext) -> None:
        act = match["act"]
        node = ctx.rewriter.insert("gated_act", [act.inputs[0], match["up"]], ActivationAttrs(_activation_of(act)), before=match.root)
        ctx.rewriter.replace_node(match.root, node.outputs)


class BiasActRule(RewriteRule):
    """`act(add(x, bias))` (a last-dim-keeping reshape may sit between) or `act(linear(x, w, b))` -> `bias_act`."""

    name = "bias-act"
    stat = "bias_act"

    def match(self, node: Node, ctx: RewriteContext) -> Match | None:
        if _activation_of(node) is None:
            return None
        v = node.inputs[0]
        reshape = producer(v, "reshape")
        if reshape is not None:
            v = reshape.inputs[0]
        pre = producer(v, "add", "linear")
        if pre is None or (pre.op == "linear" and len(pre.inputs) < 3):
            return None
        return Match(node, {"pre": pre, "reshape": reshape})

    def check(self, match: Match, ctx: RewriteContext) -> str | None:
        pre, reshape = match["pre"], match["reshape"]
        out = pre.outputs[0]
        if not only_use(out, ctx.graph) or (reshape is not None and not only_use(reshape.outputs[0], ctx.graph)):
            return f"the {pre.op} result is used elsewhere too"
        if reshape is not None and not (out.type.rank and reshape.outputs[0].type.rank and dims_equal(out.type.shape[-1], reshape.outputs[0].type.shape[-1])):
            return "the reshape between the bias add and the activation changes the last dim"
        if pre.op == "linear":
            return None if pre.inputs[2].type.rank == 1 else "the linear bias is not 1-D"
        site = self._split_add(ctx.graph, pre)
        if site is None:
            return "neither addend is a 1-D param the size of the other's last dim"
        x, _ = site
        if x.type != out.type or not x.type.dtype.is_float:
            return f"the add broadcasts or promotes {x.type} to {out.type}"
        return None

    @staticmethod
    def _split_add(graph: Graph, add: Node) -> tuple[Value, Value] | None:
        """(x, bias) of a bias add, or None."""
        for i in (1, 0):
            x, b = add.inputs[1 - i], add.inputs[i]
            if graph.is_param(b) and b.type.rank == 1 and x.type.rank >= 1 and dims_equal(b.type.shape[0], x.type.shape[-1]):
                return x, b
        return None

    def rewrite(self, match: Match, ctx: RewriteContext) -> None:
        rewriter = ctx.rewriter
        act, pre, reshape = match.root, match["pre"], match["reshape"]
        if pre.op == "linear":
            x = rewriter.insert("linear", list(pre.inputs[:2]), pre.attrs, before=act).outputs[0]
            bias = pre.inputs[2]
        else:
            x, bias = self._split_add(ctx.graph, pre)
        if reshape is not None:  # the bias runs along the last dim, which the reshape keeps
            x = rewriter.insert("reshape", [x], ShapeAttrs(reshape.attrs.shape), before=act).outputs[0]
        node = rewriter.insert("bias_act", [x, bias], ActivationAttrs(_activation_of(act)), before=act)
        rewriter.replace_node(act, node.outputs)


@register_pass("fuse-activation")
@dataclass(frozen=True)
class FuseActivation(Pass):
    """Fuse activations (exact): written-out GELU (erf and tanh forms) -> `gelu`, `x*sigmoid(x)` -> `silu`,
    `act(a) * b` -> `gated_act` (SwiGLU/GeGLU), `act(x + bias)` and `act(linear(x, w, b))` -> `bias_act`.

    Constants of a written-out GELU must match within 1e-6 relative. Gated MLPs
    fuse before bias adds. No options. Stats: gelu_erf, gelu_tanh, silu,
    gated_act, bias_act.
    """

    exact = True

    def run(self, graph: Graph) -> PassResult:
        rw = Rewriter(graph)
        stats: dict[str, int] = {}
        # Activations first, so that the gated and bias rules see them as single ops.
        stats.update(apply_rules(graph, [GeluErfRule(), GeluTanhRule(), SiluRule()], rewriter=rw))
        # Gated before bias: `gelu(x + b) * up` keeps the add and becomes one gated_act.
        stats.update(apply_rules(graph, [GatedActRule()], rewriter=rw))
        stats.update(apply_rules(graph, [BiasActRule()], rewriter=rw))
        erased = stats.pop("nodes_erased", 0)
        fused = {k: v for k, v in stats.items() if v}
        if erased:
            fused["nodes_erased"] = erased
        changed = any(k != "nodes_erased" for k in fused)
        for k in ("gelu_erf", "gelu_tanh", "silu", "gated_act", "bias_act"):
            fused.setdefault(k, 0)
        return PassResult(graph, changed, fused)
