"""The standard lowering table: one function per IR op, emitting ai.onnx nodes.

`@lowers("op", ...)` registers a function `fn(ctx, node) -> list[str]` that
returns the ONNX names of the node's outputs. The semantic ops have their own
files (attention.py, blocked_attention.py, linear_attention.py, rope.py,
norms.py, activations.py, moe.py); a flavor's overlay (flavors.py) is tried
before this table. The IR op references
(`t2c/ir/opdefs`) are the semantics reproduced here; where ONNX differs from
torch (integer division, remainder signs, flip, GQA), the comments say how.
"""

from __future__ import annotations

from typing import Callable

import torch

from ...ir.core import DType, Node, dim_prod, dims_equal
from ...ir.opdefs._infer import broadcast_shapes, norm_axis, promote
from .context import ONNX_DTYPE, Context, LoweringError

LowerFn = Callable[[Context, Node], list]
LOWERINGS: dict[str, LowerFn] = {}


def lowers(*ops: str):
    """Register the decorated function as the lowering of each IR op in `ops`."""

    def register(fn: LowerFn) -> LowerFn:
        for op in ops:
            if op in LOWERINGS:
                raise ValueError(f"{op} already has an ONNX lowering")
            LOWERINGS[op] = fn
        return fn

    return register


def arg(ctx: Context, node: Node, i: int, dtype: DType | None = None) -> str:
    """Operand i of `node`, cast to `dtype` when given."""
    v = node.inputs[i]
    name = ctx.name(v)
    return name if dtype is None else ctx.cast(name, v.type.dtype, dtype)


def out_dtype(node: Node, i: int = 0) -> DType:
    """The dtype of output i of `node`."""
    return node.outputs[i].type.dtype


def rank(node: Node, i: int = 0) -> int:
    """The rank of operand i of `node`."""
    return node.inputs[i].type.rank


# -- pointwise ---------------------------------------------------------------------------

_UNARY = {
    "neg": "Neg", "abs": "Abs", "exp": "Exp", "log": "Log", "sqrt": "Sqrt", "reciprocal": "Reciprocal",
    "sin": "Sin", "cos": "Cos", "tanh": "Tanh", "sigmoid": "Sigmoid", "erf": "Erf", "relu": "Relu",
    "tan": "Tan", "asin": "Asin", "acos": "Acos", "atan": "Atan",
}


@lowers(*_UNARY)
def _unary(ctx, node):
    # Ops that give floats for integer input (exp, sin, ...) compute in the result dtype.
    return [ctx.emit(_UNARY[node.op], [arg(ctx, node, 0, out_dtype(node))])]


@lowers("rsqrt")
def _rsqrt(ctx, node):
    return [ctx.emit("Reciprocal", [ctx.emit("Sqrt", [arg(ctx, node, 0, out_dtype(node))])])]


@lowers("silu")
def _silu(ctx, node):
    x = arg(ctx, node, 0, out_dtype(node))
    return [ctx.emit("Mul", [x, ctx.emit("Sigmoid", [x])])]


@lowers("floor", "ceil", "round")
def _round(ctx, node):
    x = arg(ctx, node, 0)
    if not out_dtype(node).is_float:  # torch.floor of an integer tensor is the tensor
        return [ctx.emit("Identity", [x])]
    return [ctx.emit({"floor": "Floor", "ceil": "Ceil", "round": "Round"}[node.op], [x])]


@lowers("sign")
def _sign(ctx, node):
    dt = out_dtype(node)
    if dt == DType.BOOL:  # sign of a bool is the bool
        return [ctx.emit("Identity", [arg(ctx, node, 0)])]
    return [ctx.emit("Sign", [arg(ctx, node, 0)])]


@lowers("logical_not")
def _not(ctx, node):
    return [ctx.emit("Not", [arg(ctx, node, 0, DType.BOOL)])]


@lowers("gelu")
def _gelu(ctx, node):
    return [ctx.emit("Gelu", [arg(ctx, node, 0)], approximate=node.attrs.approximate)]


@lowers("cast")
def _cast(ctx, node):
    return [ctx.emit("Cast", [arg(ctx, node, 0)], to=ONNX_DTYPE[node.attrs.dtype])]


@lowers("clamp")
def _clamp(ctx, node):
    dt = out_dtype(node)
    bounds = [ctx.const(b, dt) if b is not None else "" for b in (node.attrs.min, node.attrs.max)]
    while bounds and bounds[-1] == "":
        bounds.pop()
    return [ctx.emit("Clip", [arg(ctx, node, 0)] + bounds)]


_ARITH = {"add": "Add", "sub": "Sub", "mul": "Mul", "maximum": "Max", "minimum": "Min", "pow": "Pow"}
_BOOL_ARITH = {"add": "Or", "mul": "And", "maximum": "Or", "minimum": "And"}  # torch's bool results


def _binary_args(ctx, node, dtype=None):
    dt = dtype or out_dtype(node)
    return arg(ctx, node, 0, dt), arg(ctx, node, 1, dt)


@lowers(*_ARITH)
def _arith(ctx, node):
    a, b = _binary_args(ctx, node)
    if out_dtype(node) == DType.BOOL and node.op in _BOOL_ARITH:
        return [ctx.emit(_BOOL_ARITH[node.op], [a, b])]
    if node.op == "pow" and not out_dtype(node).is_float:
        return [_int_pow(ctx, a, b, out_dtype(node), _max_exponent(ctx, node.inputs[1]))]
    return [ctx.emit(_ARITH[node.op], [a, b])]


def _max_exponent(ctx, v) -> int | None:
    """The largest value of an integer exponent when the graph fixes it (a param, a constant, an arange)."""
    t = ctx.param_tensor(v)
    if t is not None:
        return int(t.max()) if t.numel() else 0
    p = v.producer
    if p is not None and p.op == "full" and isinstance(p.attrs.value, (int, bool)):
        return int(p.attrs.value)
    if p is not None and p.op == "arange" and all(isinstance(d, int) for d in (p.attrs.start, p.attrs.end, p.attrs.step)):
        values = range(p.attrs.start, p.attrs.end, p.attrs.step)
        return max(values) if len(values) else 0
    return None


def _int_pow(ctx, base: str, exp: str, dt: DType, max_exp: int | None) -> str:
    """Integer pow by repeated squaring, wrapping on overflow as torch does (ONNX Runtime's
    Pow computes integers through double, inexact above 2**53). One step per exponent bit:
    as many as the largest exponent needs when it is known, else the dtype's width."""
    bits = max(int(max_exp), 1).bit_length() if max_exp is not None else torch.iinfo(dt.torch).bits - 1
    one, two = ctx.const(1, dt), ctx.const(2, dt)
    result = ctx.emit("Mul", [ctx.emit("Mul", [base, ctx.const(0, dt)]), ctx.emit("Mul", [exp, ctx.const(0, dt)])])
    result = ctx.emit("Add", [result, one])  # ones of the broadcast shape
    for i in range(bits):
        odd = ctx.emit("Equal", [ctx.emit("Mod", [exp, two], fmod=0), one])
        result = ctx.emit("Where", [odd, ctx.emit("Mul", [result, base]), result])
        if i + 1 < bits:
            exp = ctx.emit("Div", [exp, two])
            base = ctx.emit("Mul", [base, base])
    return result


def _floordiv(ctx, a, b, dtype):
    if dtype.is_float:
        return ctx.emit("Floor", [ctx.emit("Div", [a, b])])
    return ctx.floordiv(a, b)  # exact for negative operands, unlike ONNX's truncating Div


@lowers("floor_divide")
def _floor_divide(ctx, node):
    a, b = _binary_args(ctx, node)
    return [_floordiv(ctx, a, b, out_dtype(node))]


@lowers("remainder")
def _remainder(ctx, node):
    a, b = _binary_args(ctx, node)
    if not out_dtype(node).is_float:
        return [ctx.emit("Mod", [a, b], fmod=0)]
    # torch: a - floor(a / b) * b (the result takes the divisor's sign)
    return [ctx.emit("Sub", [a, ctx.emit("Mul", [ctx.emit("Floor", [ctx.emit("Div", [a, b])]), b])])]


@lowers("div")
def _div(ctx, node):
    dt = out_dtype(node)
    a, b = _binary_args(ctx, node)
    mode = node.attrs.rounding_mode
    if mode is None:
        return [ctx.emit("Div", [a, b])]
    if mode == "floor":
        return [_floordiv(ctx, a, b, dt)]
    if not dt.is_float:  # ONNX integer Div truncates toward zero, like C
        return [ctx.emit("Div", [a, b])]
    q = ctx.emit("Div", [a, b])  # trunc(q) = sign(q) * floor(|q|)
    return [ctx.emit("Mul", [ctx.emit("Sign", [q]), ctx.emit("Floor", [ctx.emit("Abs", [q])])])]


@lowers("bitwise_and", "bitwise_or")
def _bitwise(ctx, node):
    a, b = _binary_args(ctx, node)
    is_and = node.op == "bitwise_and"
    if out_dtype(node) == DType.BOOL:
        return [ctx.emit("And" if is_and else "Or", [a, b])]
    return [ctx.emit("BitwiseAnd" if is_and else "BitwiseOr", [a, b])]


@lowers("logical_and", "logical_or")
def _logical(ctx, node):
    a, b = _binary_args(ctx, node, DType.BOOL)
    return [ctx.emit("And" if node.op == "logical_and" else "Or", [a, b])]


_COMPARE = {"eq": "Equal", "lt": "Less", "le": "LessOrEqual", "gt": "Greater", "ge": "GreaterOrEqual"}


@lowers("eq", "ne", "lt", "le", "gt", "ge")
def _compare(ctx, node):
    dt = promote(node.inputs[0].type, node.inputs[1].type)
    if dt == DType.BOOL and node.op not in ("eq", "ne"):
        dt = DType.I32  # ONNX orders numbers only; False < True as 0 < 1
    a, b = _binary_args(ctx, node, dt)
    if node.op == "ne":
        return [ctx.emit("Not", [ctx.emit("Equal", [a, b])])]
    return [ctx.emit(_COMPARE[node.op], [a, b])]


@lowers("where")
def _where(ctx, node):
    dt = out_dtype(node)
    return [ctx.emit("Where", [arg(ctx, node, 0, DType.BOOL), arg(ctx, node, 1, dt), arg(ctx, node, 2, dt)])]


# -- reductions and scans ----------------------------------------------------------------


def _axes(node, dims):
    r = rank(node)
    return sorted({norm_axis(d, r) for d in dims}) if dims else list(range(r))


def _reduce_to(ctx, op, x, node, dims, keepdim):
    axes = _axes(node, dims)
    if not axes:  # a 0-d input: nothing to reduce
        return ctx.emit("Identity", [x])
    return ctx.emit(op, [x, ctx.ints(axes)], keepdims=int(keepdim))


_REDUCE = {"sum": "ReduceSum", "mean": "ReduceMean", "amax": "ReduceMax", "amin": "ReduceMin"}


@lowers(*_REDUCE)
def _reduce(ctx, node):
    x = arg(ctx, node, 0, out_dtype(node))
    if node.op == "sum" and out_dtype(node) == DType.I64:
        return [_exact_int_sum(ctx, x, node)]
    return [_reduce_to(ctx, _REDUCE[node.op], x, node, node.attrs.dims, node.attrs.keepdim)]


def _exact_int_sum(ctx, x, node):
    """ONNX Runtime's ReduceSum on int64 rounds through double above 2**53 (hashes wrap
    past it); CumSum is exact and wraps like torch: its last element along each axis."""
    axes = _axes(node, node.attrs.dims)
    if not axes:
        return ctx.emit("Identity", [x])
    for a in axes:
        pads = [0] * (2 * len(node.inputs[0].type.shape))
        pads[a] = 1  # a leading 0 on the axis: an empty axis sums to 0
        x = ctx.emit("Pad", [x, ctx.ints(pads), ctx.const(0, DType.I64)])
        x = ctx.emit("CumSum", [x, ctx.const(a, DType.I64)])
        x = ctx.emit("Slice", [x, ctx.ints([-1]), ctx.ints([2**63 - 1]), ctx.ints([a])])
    return x if node.attrs.keepdim else ctx.emit("Squeeze", [x, ctx.ints(axes)])


@lowers("any", "all")
def _any_all(ctx, node):
    # Reduce over 0/1 integers: ReduceMax/Min on bool is not implemented everywhere.
    x = ctx.emit("Cast", [arg(ctx, node, 0, DType.BOOL)], to=ONNX_DTYPE[DType.I32])
    r = _reduce_to(ctx, "ReduceMax" if node.op == "any" else "ReduceMin", x, node, node.attrs.dims, node.attrs.keepdim)
    return [ctx.emit("Cast", [r], to=ONNX_DTYPE[DType.BOOL])]


@lowers("var")
def _var(ctx, node):
    a, dt = node.attrs, out_dtype(node)
    x = arg(ctx, node, 0)
    axes = _axes(node, a.dims)
    d = ctx.emit("Sub", [x, ctx.emit("ReduceMean", [x, ctx.ints(axes)], keepdims=1)])
    ss = ctx.emit("ReduceSum", [ctx.emit("Mul", [d, d]), ctx.ints(axes)], keepdims=int(a.keepdim))
    n = dim_prod(node.inputs[0].type.shape[i] for i in axes)  # may be symbolic
    count = ctx.emit("Cast", [ctx.dim(n)], to=ONNX_DTYPE[dt])
    denom = ctx.emit("Sub", [count, ctx.const(a.correction, dt)])
    return [ctx.emit("Div", [ss, denom])]


@lowers("argmax", "argmin")
def _arg(ctx, node):
    op = "ArgMax" if node.op == "argmax" else "ArgMin"
    axis = norm_axis(node.attrs.dim, rank(node))
    # select_last_index=0: the first extreme wins, as in torch.
    return [ctx.emit(op, [arg(ctx, node, 0)], axis=axis, keepdims=int(node.attrs.keepdim), select_last_index=0)]


@lowers("softmax", "log_softmax")
def _softmax(ctx, node):
    op = "Softmax" if node.op == "softmax" else "LogSoftmax"
    return [ctx.emit(op, [arg(ctx, node, 0)], axis=norm_axis(node.attrs.dim, rank(node)))]


@lowers("max_pool")
def _max_pool(ctx, node):
    # ONNX Runtime's MaxPool has no bf16 kernel: bf16 pools in f32 (exact for a max).
    a, dt = node.attrs, out_dtype(node)
    work = dt if dt in (DType.F32, DType.F16, DType.F64) else DType.F32
    x = arg(ctx, node, 0, work)
    y = ctx.emit("MaxPool", [x], kernel_shape=list(a.kernel), strides=list(a.stride), pads=list(a.padding) * 2,
                 dilations=list(a.dilation), ceil_mode=int(a.ceil_mode))
    return [ctx.cast(y, work, dt)]


@lowers("avg_pool")
def _avg_pool(ctx, node):
    a = node.attrs
    # Without padding both counting rules divide by the elements a window covers.
    include = int(a.count_include_pad and any(a.padding))
    return [ctx.emit("AveragePool", [arg(ctx, node, 0)], kernel_shape=list(a.kernel), strides=list(a.stride),
                     pads=list(a.padding) * 2, ceil_mode=int(a.ceil_mode), count_include_pad=include)]


@lowers("cumsum")
def _cumsum(ctx, node):
    x = arg(ctx, node, 0, out_dtype(node))
    return [ctx.emit("CumSum", [x, ctx.const(norm_axis(node.attrs.dim, rank(node)), DType.I64)])]


@lowers("topk")
def _topk(ctx, node):
    a = node.attrs
    axis = norm_axis(a.dim, rank(node))
    # Always sorted: torch's sorted=False order is unspecified, so any order is correct.
    return ctx.emit("TopK", [arg(ctx, node, 0), ctx.dim1(a.k)], 2, axis=axis, largest=int(a.largest), sorted=1)


@lowers("sort")
def _sort(ctx, node):
    # TopK over the whole axis. ONNX TopK puts the lower index first among equal values,
    # which is what a stable sort does in both directions.
    axis = norm_axis(node.attrs.dim, rank(node))
    k = ctx.dim1(node.inputs[0].type.shape[axis])
    return ctx.emit("TopK", [arg(ctx, node, 0), k], 2, axis=axis, largest=int(node.attrs.descending), sorted=1)


# -- shape and data movement -------------------------------------------------------------


@lowers("reshape")
def _reshape(ctx, node):
    # Every dim is computed, so 0 means a real 0 (allowzero=1) and -1 never appears.
    return [ctx.emit("Reshape", [arg(ctx, node, 0), ctx.shape(node.attrs.shape)], allowzero=1)]


@lowers("expand")
def _expand(ctx, node):
    return [ctx.emit("Expand", [arg(ctx, node, 0), ctx.shape(node.attrs.shape)])]


@lowers("permute")
def _permute(ctx, node):
    return [ctx.emit("Transpose", [arg(ctx, node, 0)], perm=list(node.attrs.perm))]


@lowers("unsqueeze")
def _unsqueeze(ctx, node):
    axis = norm_axis(node.attrs.dim, rank(node), extra=1)
    return [ctx.emit("Unsqueeze", [arg(ctx, node, 0), ctx.ints([axis])])]


@lowers("squeeze")
def _squeeze(ctx, node):
    # Only the dims the IR type drops (size 1 by type), as infer_type decided.
    t = node.inputs[0].type
    axes = sorted({norm_axis(d, t.rank) for d in node.attrs.dims if t.shape[norm_axis(d, t.rank)] == 1})
    if not axes:
        return [ctx.emit("Identity", [arg(ctx, node, 0)])]
    return [ctx.emit("Squeeze", [arg(ctx, node, 0), ctx.ints(axes)])]


@lowers("slice")
def _slice(ctx, node):
    a = node.attrs
    axis = norm_axis(a.dim, rank(node))
    inputs = [arg(ctx, node, 0), ctx.dim1(a.start), ctx.dim1(a.end), ctx.ints([axis]), ctx.ints([a.step])]
    return [ctx.emit("Slice", inputs)]


@lowers("select")
def _select(ctx, node):
    # Gather with a 0-d index drops the axis, as select does.
    axis = norm_axis(node.attrs.dim, rank(node))
    return [ctx.emit("Gather", [arg(ctx, node, 0), ctx.dim(node.attrs.index)], axis=axis)]


@lowers("flip")
def _flip(ctx, node):
    axes = sorted({norm_axis(d, rank(node)) for d in node.attrs.dims})
    if not axes:
        return [ctx.emit("Identity", [arg(ctx, node, 0)])]
    n = len(axes)
    big = -(2**63)  # "before the first element" for a negative step
    return [ctx.emit("Slice", [arg(ctx, node, 0), ctx.ints([-1] * n), ctx.ints([big] * n), ctx.ints(axes), ctx.ints([-1] * n)])]


@lowers("cat")
def _cat(ctx, node):
    dt = out_dtype(node)
    axis = norm_axis(node.attrs.dim, rank(node))
    return [ctx.emit("Concat", [arg(ctx, node, i, dt) for i in range(len(node.inputs))], axis=axis)]


@lowers("split")
def _split(ctx, node):
    axis = norm_axis(node.attrs.dim, rank(node))
    outs = ctx.emit("Split", [arg(ctx, node, 0), ctx.shape(node.attrs.sizes)], len(node.outputs), axis=axis)
    return outs if isinstance(outs, list) else [outs]


@lowers("gather")
def _gather(ctx, node):
    axis = norm_axis(node.attrs.dim, rank(node))
    return [ctx.emit("GatherElements", [arg(ctx, node, 0), arg(ctx, node, 1, DType.I64)], axis=axis)]


@lowers("scatter")
def _scatter(ctx, node):
    axis = norm_axis(node.attrs.dim, rank(node))
    idx_t, src_t = node.inputs[1].type, node.inputs[2].type
    src = arg(ctx, node, 2, out_dtype(node))
    if not all(dims_equal(a, b) for a, b in zip(idx_t.shape, src_t.shape)):
        # torch reads src only where index has elements; ONNX wants equal shapes.
        r = idx_t.rank
        src = ctx.emit("Slice", [src, ctx.ints([0] * r), ctx.shape(idx_t.shape), ctx.ints(list(range(r)))])
    return [ctx.emit("ScatterElements", [arg(ctx, node, 0), arg(ctx, node, 1, DType.I64), src], axis=axis)]


_SCATTER_REDUCTION = {"sum": "add", "prod": "mul", "amax": "max", "amin": "min", "mean": "add"}


def _scatter_identity(dt: DType, reduce: str):
    if reduce in ("sum", "mean"):
        return 0
    if reduce == "prod":
        return 1
    big = float("inf") if dt.is_float else (True if dt == DType.BOOL else torch.iinfo(dt.torch).max)
    return -big if reduce == "amax" and dt != DType.BOOL else (False if dt == DType.BOOL else big)


@lowers("scatter_reduce")
def _scatter_reduce(ctx, node):
    """ScatterElements with a reduction. Without x's own values, the positions that receive
    anything are first reset to the reduction's identity; mean is a sum divided by a count
    scattered the same way (1 for x's own value when it takes part)."""
    a, dt = node.attrs, out_dtype(node)
    axis = norm_axis(a.dim, rank(node))
    x, index = arg(ctx, node, 0), arg(ctx, node, 1, DType.I64)
    idx_t, src_t = node.inputs[1].type, node.inputs[2].type
    src = arg(ctx, node, 2)
    if not all(dims_equal(p, q) for p, q in zip(idx_t.shape, src_t.shape)):
        r = idx_t.rank  # torch reads src only where index has elements
        src = ctx.emit("Slice", [src, ctx.ints([0] * r), ctx.shape(idx_t.shape), ctx.ints(list(range(r)))])
    index_shape = ctx.shape(idx_t.shape)

    def filled(value, dtype):
        return ctx.emit("Expand", [ctx.const(value, dtype), index_shape])

    if not a.include_self:
        x = ctx.emit("ScatterElements", [x, index, filled(_scatter_identity(dt, a.reduce), dt)], axis=axis)
    out = ctx.emit("ScatterElements", [x, index, src], axis=axis, reduction=_SCATTER_REDUCTION[a.reduce])
    if a.reduce != "mean":
        return [out]
    ones = ctx.emit("Expand", [ctx.const(1, dt), ctx.emit("Shape", [arg(ctx, node, 0)])])
    if not a.include_self:
        ones = ctx.emit("ScatterElements", [ones, index, filled(0, dt)], axis=axis)
    count = ctx.emit("ScatterElements", [ones, index, filled(1, dt)], axis=axis, reduction="add")  # >= 1 everywhere
    return [ctx.emit("Div", [out, count])]


@lowers("index")
def _index(ctx, node):
    x_t = node.inputs[0].type
    dims = list(node.attrs.dims)
    idx = [_wrap_negative(ctx, arg(ctx, node, i + 1, DType.I64), x_t.shape[d]) for i, d in enumerate(dims)]
    if len(dims) == 1:  # Gather puts the index dims where the indexed dim was: torch's rule
        return [ctx.emit("Gather", [ctx.name(node.inputs[0]), idx[0]], axis=dims[0])]
    bshape = broadcast_shapes(*(v.type.shape for v in node.inputs[1:]))
    target = ctx.shape(bshape)
    nb = len(bshape)
    stacked = ctx.emit("Concat", [ctx.emit("Unsqueeze", [ctx.emit("Expand", [i, target]), ctx.ints([nb])]) for i in idx], axis=nb)
    rest = [i for i in range(x_t.rank) if i not in dims]
    xt = ctx.emit("Transpose", [ctx.name(node.inputs[0])], perm=dims + rest)
    out = ctx.emit("GatherND", [xt, stacked])  # [broadcast dims..., remaining dims...]
    adjacent = dims == list(range(dims[0], dims[-1] + 1))
    if adjacent and dims[0] > 0:
        # torch keeps adjacent index dims in place: dims before them come first.
        first = dims[0]
        perm = list(range(nb, nb + first)) + list(range(nb)) + list(range(nb + first, nb + len(rest)))
        out = ctx.emit("Transpose", [out], perm=perm)
    return [out]


def _wrap_negative(ctx, i: str, size) -> str:
    # torch accepts -1 for the last element; Gather does too but GatherND is clearer with it explicit.
    neg = ctx.emit("Less", [i, ctx.const(0, DType.I64)])
    return ctx.emit("Where", [neg, ctx.emit("Add", [i, ctx.dim(size)]), i])


@lowers("triu", "tril")
def _trilu(ctx, node):
    k = ctx.const(node.attrs.diagonal, DType.I64)
    return [ctx.emit("Trilu", [arg(ctx, node, 0), k], upper=int(node.op == "triu"))]


@lowers("pad")
def _pad(ctx, node):
    # Pads for every axis, no `axes` input: ONNX Runtime's transpose optimizer (which moves
    # transposes through Pad when it lays a Conv out as NHWC) permutes `pads` as if it had
    # 2 * rank entries, and reads past the end of a shorter one.
    r, pads = rank(node), node.attrs.pads
    lo, hi = [0] * r, [0] * r
    for k in range(len(pads) // 2):
        lo[r - 1 - k], hi[r - 1 - k] = pads[2 * k], pads[2 * k + 1]
    value = ctx.const(node.attrs.value, out_dtype(node))
    return [ctx.emit("Pad", [arg(ctx, node, 0), ctx.shape(lo + hi), value], mode="constant")]


@lowers("repeat")
def _repeat(ctx, node):
    x = arg(ctx, node, 0)
    lead = len(node.attrs.repeats) - rank(node)
    if lead > 0:  # torch's repeat adds leading dims first
        x = ctx.emit("Unsqueeze", [x, ctx.ints(list(range(lead)))])
    return [ctx.emit("Tile", [x, ctx.shape(node.attrs.repeats)])]


@lowers("embedding")
def _embedding(ctx, node):
    return [ctx.emit("Gather", [arg(ctx, node, 0), arg(ctx, node, 1, DType.I64)], axis=0)]


# -- creation ----------------------------------------------------------------------------


@lowers("full")
def _full(ctx, node):
    a, dt = node.attrs, out_dtype(node)
    symbolic_value = not isinstance(a.value, (bool, int, float))
    if not symbolic_value and all(isinstance(d, int) for d in a.shape):
        return [ctx.emit("Identity", [ctx.const(torch.full(a.shape, a.value, dtype=dt.torch).tolist(), dt, a.shape)])]
    value = ctx.cast(ctx.dim(a.value), DType.I64, dt) if symbolic_value else ctx.const(a.value, dt)
    return [ctx.emit("Expand", [value, ctx.shape(a.shape)])]


@lowers("arange")
def _arange(ctx, node):
    a = node.attrs
    r = ctx.emit("Range", [ctx.dim(a.start), ctx.dim(a.end), ctx.dim(a.step)])
    return [ctx.cast(r, DType.I64, out_dtype(node))]


# -- neural-network ops ------------------------------------------------------------------


def transposed_weight(ctx, node: Node, i: int, perm: list[int]) -> str:
    """Operand i transposed by `perm`: a pre-transposed initializer `<param>.T` for params."""
    v = node.inputs[i]
    t = ctx.param_tensor(v)
    if t is None:
        return ctx.emit("Transpose", [ctx.name(v)], perm=perm)
    name = f"{v.name}.T"
    if name not in ctx.initializers:
        ctx.add_initializer(name, t.permute(perm).contiguous())
    return name


@lowers("linear")
def _linear(ctx, node):
    w = transposed_weight(ctx, node, 1, [1, 0])
    x = arg(ctx, node, 0)
    has_bias = len(node.inputs) > 2
    if has_bias and rank(node) == 2:
        return [ctx.emit("Gemm", [x, w, arg(ctx, node, 2)])]
    y = ctx.emit("MatMul", [x, w])
    return [ctx.emit("Add", [y, arg(ctx, node, 2)]) if has_bias else y]


@lowers("matmul")
def _matmul(ctx, node):
    a, b = _binary_args(ctx, node)
    return [ctx.emit("MatMul", [a, b])]


def check_complete() -> list[str]:
    """IR ops that have no ONNX lowering (empty when the table is complete)."""
    from ...ir import all_ops

    return sorted(set(all_ops()) - set(LOWERINGS))


def lower_node(ctx: Context, node: Node) -> list:
    """Lower one node: the flavor's overlay first, else the standard table.

    The result names one ONNX tensor per IR output. An overlay lowering that
    returns None has emitted nothing and leaves the node to the standard one.
    """
    outs = None
    special = ctx.flavor.overlay.get(node.op)
    if special is not None:
        outs = special(ctx, node)
    if outs is None:
        try:
            fn = LOWERINGS[node.op]
        except KeyError:
            raise LoweringError(f"the ONNX backend has no lowering for IR op {node.op!r}") from None
        outs = fn(ctx, node)
    if len(outs) != len(node.outputs):
        raise LoweringError(f"lowering of {node.op} gave {len(outs)} outputs, the IR node has {len(node.outputs)}")
    return outs
