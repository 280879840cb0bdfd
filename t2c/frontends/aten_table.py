"""The one table from core-ATen FX nodes to IR ops.

Each handler takes the Converter and the FX node's args/kwargs and returns the
IR value(s) standing for the node's result. Shapes the node produces are read
from torch's metadata (`conv.meta_type()`), so reshape/expand/slice targets are
exactly what torch computed, symbolic dims included.
"""

from __future__ import annotations

import operator
from typing import Any

import torch

from ..ir.core import DType, dim_add, dim_mul, dim_sub, dim_sympy, dims_equal
from ..ir.opdefs.creation import ArangeAttrs, FullAttrs
from ..ir.opdefs.experts import ExpertsAttrs
from . import custom_ops  # noqa: F401  (registers torch.ops.t2c.*, converted below)
from ..ir.opdefs.nn import EmbeddingAttrs, NormAttrs, RMSNormAttrs, SDPAAttrs
from ..ir.opdefs.pointwise import CastAttrs, ClampAttrs, DivAttrs, GeluAttrs
from ..ir.opdefs.reduction import ArgAttrs, AvgPoolAttrs, DimAttrs, PoolAttrs, ReduceAttrs, SortAttrs, TopKAttrs, VarAttrs
from ..ir.opdefs.shape import (
    AxisAttrs, DiagonalAttrs, DimsAttrs, IndexAttrs, PadAttrs, PermuteAttrs, RepeatAttrs, ScatterReduceAttrs, SelectAttrs,
    ShapeAttrs, SliceAttrs, SplitAttrs,
)

aten = torch.ops.aten
CONVERSIONS: dict[Any, Any] = {}

# Nodes that only assert facts torch already checked while tracing.
SKIPPED_OPS = {
    aten._assert_tensor_metadata.default, aten._assert_scalar.default, aten.sym_constrain_range_for_size.default,
    aten.sym_constrain_range.default, torch.ops.aten._assert_async.msg,
}
# Nodes that return their input unchanged in inference. `detach_` is in place but changes only
# autograd metadata, never values (transformers' DynamicLayer detaches the empty tensor it starts from).
IDENTITY_OPS = {aten.clone.default, aten.alias.default, aten.detach.default, aten.detach_.default, aten.lift_fresh_copy.default,
                aten.contiguous.default}
# Nodes computing sizes (SymInts): they become dims, not IR nodes.
SYMBOLIC_OPS = {
    aten.sym_size.int, aten.sym_numel.default, operator.add, operator.sub, operator.mul, operator.floordiv,
    operator.mod, operator.neg, operator.truediv, torch.sym_max, torch.sym_min,
}
# Nodes whose result is a Python scalar read from a tensor (`t.item()`): converted by their
# handler (aten_data_dependent.py), not as a size.
SCALAR_OPS = {aten.item.default, aten._local_scalar_dense.default}


def conversion(*targets):
    def register(fn):
        for t in targets:
            CONVERSIONS[t] = fn
        return fn

    return register


def _dtype(conv, torch_dtype, default: DType) -> DType:
    return DType.from_torch(torch_dtype) if torch_dtype is not None else default


def _cast_if(conv, v, dtype):
    if dtype is None or DType.from_torch(dtype) == v.type.dtype:
        return v
    return conv.emit("cast", [v], CastAttrs(DType.from_torch(dtype)))


def _cast_to(conv, v, dtype: DType):
    return v if v.type.dtype == dtype else conv.emit("cast", [v], CastAttrs(dtype))


# -- neural-network ops kept whole ---------------------------------------------------
@conversion(aten.linear.default)
def _linear(conv, x, w, b=None):
    ins = [conv.value(x), conv.value(w)] + ([conv.value(b)] if b is not None else [])
    return conv.emit("linear", ins)


@conversion(aten.addmm.default)
def _addmm(conv, bias, a, b, *, beta=1, alpha=1):
    prod = conv.emit("matmul", [conv.value(a), conv.value(b)])
    if alpha != 1:
        prod = conv.emit("mul", [prod, conv.scalar(alpha, prod)])
    bias_v = conv.value(bias)
    if beta != 1:
        bias_v = conv.emit("mul", [bias_v, conv.scalar(beta, bias_v)])
    return conv.emit("add", [prod, bias_v])


@conversion(aten.mm.default, aten.bmm.default, aten.matmul.default)
def _matmul(conv, a, b):
    return conv.emit("matmul", [conv.value(a), conv.value(b)])


@conversion(aten.embedding.default)
def _embedding(conv, weight, ids, padding_idx=-1, scale_grad_by_freq=False, sparse=False):
    return conv.emit("embedding", [conv.value(weight), conv.value(ids)], EmbeddingAttrs(padding_idx))


@conversion(aten.layer_norm.default)
def _layer_norm(conv, x, shape, weight=None, bias=None, eps=1e-5, cudnn_enable=True):
    ins = [conv.value(x)]
    if weight is not None or bias is not None:
        ins.append(conv.value(weight) if weight is not None else None)
    if bias is not None:
        ins.append(conv.value(bias))
    if any(v is None for v in ins):
        raise conv.unsupported("layer_norm with a bias but no weight")
    return conv.emit("layer_norm", ins, NormAttrs(tuple(int(s) for s in shape), float(eps)))


if hasattr(aten, "rms_norm"):

    @conversion(aten.rms_norm.default)
    def _rms_norm(conv, x, shape, weight=None, eps=None):
        ins = [conv.value(x)] + ([conv.value(weight)] if weight is not None else [])
        return conv.emit("rms_norm", ins, RMSNormAttrs(tuple(int(s) for s in shape), None if eps is None else float(eps)))


@conversion(aten.scaled_dot_product_attention.default)
def _sdpa(conv, q, k, v, attn_mask=None, dropout_p=0.0, is_causal=False, *, scale=None, enable_gqa=False):
    if dropout_p:
        raise conv.unsupported("attention dropout in inference (call model.eval())")
    ins = [conv.value(q), conv.value(k), conv.value(v)] + ([conv.value(attn_mask)] if attn_mask is not None else [])
    return conv.emit("sdpa", ins, SDPAAttrs(bool(is_causal), None if scale is None else float(scale), bool(enable_gqa)))


@conversion(aten.silu.default)
def _silu(conv, x):
    return conv.emit("silu", [conv.value(x)])


@conversion(aten.gelu.default)
def _gelu(conv, x, *, approximate="none"):
    return conv.emit("gelu", [conv.value(x)], GeluAttrs(approximate))


@conversion(aten._softmax.default, aten._log_softmax.default)
def _softmax_internal(conv, x, dim, half_to_float):
    op = "softmax" if conv.node.target is aten._softmax.default else "log_softmax"
    v = conv.value(x)
    if half_to_float:
        v = conv.emit("cast", [v], CastAttrs(DType.F32))
    return conv.emit(op, [v], DimAttrs(dim))


@conversion(aten.softmax.int, aten.log_softmax.int)
def _softmax(conv, x, dim, dtype=None):
    op = "softmax" if conv.node.target is aten.softmax.int else "log_softmax"
    return conv.emit(op, [_cast_if(conv, conv.value(x), dtype)], DimAttrs(dim))


@conversion(torch.ops.t2c.experts.default)
def _experts(conv, x, index, weights, w_up, w_down, b_up, b_down, activation, alpha, gated, layout, split, limit, up_offset):
    ins = [conv.value(x), conv.value(index), conv.value(weights), conv.value(w_up), conv.value(w_down)]
    if b_up is not None or b_down is not None:
        ins += [conv.value(b_up), conv.value(b_down)]
    attrs = ExpertsAttrs(str(activation), float(alpha), bool(gated), str(layout), str(split), float(limit), float(up_offset))
    return conv.emit("experts", ins, attrs)


# -- elementwise -----------------------------------------------------------------------
_UNARY = {
    aten.neg.default: "neg", aten.abs.default: "abs", aten.exp.default: "exp", aten.log.default: "log",
    aten.sqrt.default: "sqrt", aten.rsqrt.default: "rsqrt", aten.reciprocal.default: "reciprocal",
    aten.sin.default: "sin", aten.cos.default: "cos", aten.tanh.default: "tanh", aten.sigmoid.default: "sigmoid",
    aten.erf.default: "erf", aten.relu.default: "relu", aten.floor.default: "floor", aten.ceil.default: "ceil",
    aten.logical_not.default: "logical_not", aten.round.default: "round", aten.sign.default: "sign", aten.tan.default: "tan",
    aten.asin.default: "asin", aten.acos.default: "acos", aten.atan.default: "atan",
}


def _unary(op):
    return lambda conv, x: conv.emit(op, [conv.value(x)])


for _t, _op in _UNARY.items():
    CONVERSIONS[_t] = _unary(_op)


@conversion(aten.log1p.default)
def _log1p(conv, x):
    # log(1 + x): ONNX has no Log1p either; where the two differ (tiny x) the absolute error stays below 1e-7.
    v = conv.value(x)
    return conv.emit("log", [conv.emit("add", [v, conv.scalar(1.0, v)])])


@conversion(aten.expm1.default)
def _expm1(conv, x):
    v = conv.value(x)  # exp(x) - 1, as log1p is log(1 + x): ONNX has neither
    return conv.emit("sub", [conv.emit("exp", [v]), conv.scalar(1.0, v)])


@conversion(aten.elu.default)
def _elu(conv, x, alpha=1.0, scale=1.0, input_scale=1.0):
    """scale * x where x > 0, else alpha * scale * (exp(input_scale * x) - 1), as ATen (exp - 1: see expm1)."""
    v = conv.value(x)
    neg = conv.emit("mul", [v, conv.scalar(float(input_scale), v)]) if input_scale != 1 else v
    neg = conv.emit("sub", [conv.emit("exp", [neg]), conv.scalar(1.0, v)])
    if alpha * scale != 1:
        neg = conv.emit("mul", [neg, conv.scalar(float(alpha * scale), v)])
    pos = conv.emit("mul", [v, conv.scalar(float(scale), v)]) if scale != 1 else v
    return conv.emit("where", [conv.emit("gt", [v, conv.scalar(0.0, v)]), pos, neg])


@conversion(aten.bitwise_not.default)
def _bitwise_not(conv, x):
    v = conv.value(x)
    if v.type.dtype != DType.BOOL:
        raise conv.unsupported("bitwise_not on integers")
    return conv.emit("logical_not", [v])


HALF = (DType.F16, DType.BF16)


def _opmath_scalar(conv, op, a, b):
    """`half_tensor op python_float` as torch computes it, or None when the IR's op in the tensor's
    dtype already does: torch's CPU kernels for mul and div read the scalar in float32 (their opmath
    type for halves), not rounded to the half dtype (scores / math.sqrt(12) in bfloat16 divides by
    3.4641, not 3.4688), so an inexact scalar makes the op float32 between two casts. Its add and sub
    kernels round the scalar to the half dtype first, which the IR's op in that dtype already does
    (both checked bit for bit against eager in tests/unit/test_half_scalar_opmath.py)."""
    tensor, scalar = (a, b) if isinstance(b, float) else (b, a)
    v = _tensor_arg(conv, tensor)
    if not isinstance(scalar, float) or v is None or v.type.dtype not in HALF or op not in ("mul", "div"):
        return None
    if float(torch.tensor(scalar, dtype=v.type.dtype.torch)) == float(torch.tensor(scalar, dtype=torch.float32)):
        return None
    wide = conv.emit("cast", [v], CastAttrs(DType.F32))
    c = conv.scalar(scalar, wide)
    out = conv.emit(op, [wide, c] if tensor is a else [c, wide])
    return conv.emit("cast", [out], CastAttrs(v.type.dtype))


def _binary(op):
    def handler(conv, a, b, **kw):
        exact = _opmath_scalar(conv, op, a, b) if kw.get("alpha", 1) == 1 else None
        if exact is not None:
            return exact
        if kw.get("alpha", 1) != 1:
            bv = conv.operand(b, _tensor_arg(conv, a))
            b_scaled = conv.emit("mul", [bv, conv.scalar(kw["alpha"], bv)])
            return conv.emit(op, [conv.operand(a, _tensor_arg(conv, b)), b_scaled])
        like_a, like_b = _tensor_arg(conv, b), _tensor_arg(conv, a)
        return conv.emit(op, [conv.operand(a, like_a), conv.operand(b, like_b)])

    return handler


def _tensor_arg(conv, arg):
    if isinstance(arg, torch.fx.Node):
        v = conv.env.get(arg)
        from ..ir.core import Value

        return v if isinstance(v, Value) else None
    return None


_BINARY = {
    "add": (aten.add.Tensor, aten.add.Scalar), "sub": (aten.sub.Tensor, aten.sub.Scalar),
    "mul": (aten.mul.Tensor, aten.mul.Scalar), "pow": (aten.pow.Tensor_Scalar, aten.pow.Tensor_Tensor, aten.pow.Scalar),
    "maximum": (aten.maximum.default,), "minimum": (aten.minimum.default,),
    "remainder": (aten.remainder.Tensor, aten.remainder.Scalar), "floor_divide": (aten.floor_divide.default,),
    # `a & b` on tensors is aten.__and__ until decomposed (the undecomposed export keeps it)
    "bitwise_and": (aten.bitwise_and.Tensor, aten.bitwise_and.Scalar, aten.__and__.Tensor),
    "bitwise_or": (aten.bitwise_or.Tensor, aten.bitwise_or.Scalar, aten.__or__.Tensor),
    "logical_and": (aten.logical_and.default,), "logical_or": (aten.logical_or.default,),
    "eq": (aten.eq.Tensor, aten.eq.Scalar), "ne": (aten.ne.Tensor, aten.ne.Scalar), "lt": (aten.lt.Tensor, aten.lt.Scalar),
    "le": (aten.le.Tensor, aten.le.Scalar), "gt": (aten.gt.Tensor, aten.gt.Scalar), "ge": (aten.ge.Tensor, aten.ge.Scalar),
}
for _op, _targets in _BINARY.items():
    for _t in _targets:
        CONVERSIONS[_t] = _binary(_op)


@conversion(aten.rsub.Scalar, aten.rsub.Tensor)
def _rsub(conv, a, b, alpha=1):
    return _binary("sub")(conv, b, a, alpha=alpha)


@conversion(aten.div.Tensor, aten.div.Scalar, aten.div.Tensor_mode, aten.div.Scalar_mode)
def _div(conv, a, b, *, rounding_mode=None):
    exact = _opmath_scalar(conv, "div", a, b) if rounding_mode is None else None
    if exact is not None:
        return exact
    return conv.emit("div", [conv.operand(a, _tensor_arg(conv, b)), conv.operand(b, _tensor_arg(conv, a))], DivAttrs(rounding_mode))


@conversion(aten.clamp.default, aten.clamp_min.default, aten.clamp_max.default)
def _clamp(conv, x, lo=None, hi=None):
    t = conv.node.target
    if t is aten.clamp_max.default:
        lo, hi = None, lo
    # torch promotes an integer tensor clamped by float bounds to float: cast first, as torch does.
    v = _cast_to(conv, conv.value(x), conv.meta_type().dtype)
    return conv.emit("clamp", [v], ClampAttrs(None if lo is None else float(lo), None if hi is None else float(hi)))


@conversion(aten.clamp.Tensor)
def _clamp_tensor(conv, x, lo=None, hi=None):
    """clamp with tensor bounds: max(x, lo), then min(., hi), broadcast like torch."""
    out = conv.value(x)
    if lo is not None:
        out = conv.emit("maximum", [out, conv.operand(lo, out)])
    if hi is not None:
        out = conv.emit("minimum", [out, conv.operand(hi, out)])
    return _cast_to(conv, out, conv.meta_type().dtype)


@conversion(aten.where.self, aten.where.ScalarSelf, aten.where.ScalarOther, aten.where.Scalar)
def _where(conv, cond, a, b):
    like = _tensor_arg(conv, a) or _tensor_arg(conv, b)
    return conv.emit("where", [conv.value(cond), conv.operand(a, like), conv.operand(b, like)])


@conversion(aten.masked_fill.Scalar, aten.masked_fill.Tensor)
def _masked_fill(conv, x, mask, value):
    xv = conv.value(x)
    return conv.emit("where", [conv.value(mask), conv.operand(value, xv), xv])


@conversion(aten._to_copy.default, aten.to.dtype)
def _to_copy(conv, x, dtype=None, *args, **kwargs):
    if conv.node.target is aten.to.dtype:
        target = dtype
    else:
        target = kwargs.get("dtype", dtype if isinstance(dtype, torch.dtype) else None)
    return _cast_if(conv, conv.value(x), target)


@conversion(aten.dropout.default, aten.native_dropout.default)
def _dropout(conv, x, p, train):
    if train and p:
        raise conv.unsupported("dropout in training mode (call model.eval())")
    return conv.value(x)


# -- shape and data movement -------------------------------------------------------------
@conversion(aten.view.default, aten._unsafe_view.default, aten.reshape.default)
def _reshape(conv, x, shape):
    return conv.emit("reshape", [conv.value(x)], ShapeAttrs(conv.meta_type().shape))


@conversion(aten.expand.default)
def _expand(conv, x, size, *, implicit=False):
    return conv.emit("expand", [conv.value(x)], ShapeAttrs(conv.meta_type().shape))


@conversion(aten.permute.default)
def _permute(conv, x, dims):
    v = conv.value(x)
    return conv.emit("permute", [v], PermuteAttrs(tuple(d % v.type.rank for d in dims)))


@conversion(aten.transpose.int)
def _transpose(conv, x, d0, d1):
    v = conv.value(x)
    perm = list(range(v.type.rank))
    a, b = d0 % v.type.rank, d1 % v.type.rank
    perm[a], perm[b] = perm[b], perm[a]
    return conv.emit("permute", [v], PermuteAttrs(tuple(perm)))


@conversion(aten.t.default)
def _t(conv, x):
    v = conv.value(x)
    return v if v.type.rank < 2 else conv.emit("permute", [v], PermuteAttrs((1, 0)))


@conversion(aten.unsqueeze.default)
def _unsqueeze(conv, x, dim):
    return conv.emit("unsqueeze", [conv.value(x)], AxisAttrs(dim if dim >= 0 else dim + conv.value(x).type.rank + 1))


@conversion(aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default)
def _squeeze(conv, x, dims=None):
    v = conv.value(x)
    if dims is None:
        dims = [i for i, d in enumerate(v.type.shape) if d == 1]
    elif isinstance(dims, int):
        dims = [dims]
    return conv.emit("squeeze", [v], DimsAttrs(tuple(d % max(v.type.rank, 1) for d in dims)))


@conversion(aten.to.device, aten.to.dtype_layout, aten.to.other)
def _to_any(conv, x, *args, **kwargs):
    """Tensor.to(device, dtype) / .to(dtype=..., layout=...) / .to(other): a cast to the dtype torch
    computed (devices do not exist in the IR). Kept whole by the undecomposed export."""
    return _cast_to(conv, conv.value(x), conv.meta_type().dtype)


@conversion(aten.diff.default)
def _diff(conv, x, n=1, dim=-1, prepend=None, append=None):
    """torch.diff: x[1:] - x[:-1] along `dim`, n times (xor for bool), after prepend/append."""
    v = conv.value(x)
    axis = dim % v.type.rank
    parts = [conv.value(t) for t in (prepend,) if t is not None] + [v] + [conv.value(t) for t in (append,) if t is not None]
    if len(parts) > 1:
        v = conv.emit("cat", parts, AxisAttrs(axis))
    for _ in range(n):
        size = v.type.shape[axis]
        later = conv.emit("slice", [v], SliceAttrs(axis, 1, size, 1))
        earlier = conv.emit("slice", [v], SliceAttrs(axis, 0, dim_sub(size, 1), 1))
        v = conv.emit("ne" if v.type.dtype == DType.BOOL else "sub", [later, earlier])
    return v


def _negative(d) -> bool:
    """A start or index counted from the end: a negative int, or a dim such as `-seq` (torch guarded its sign)."""
    if isinstance(d, int):
        return d < 0
    return bool(dim_sympy(d).is_negative)


@conversion(aten.slice.Tensor)
def _slice(conv, x, dim=0, start=None, end=None, step=1):
    v = conv.value(x)
    axis = dim % v.type.rank
    size = v.type.shape[axis]
    out_len = conv.meta_type().shape[axis]
    s = 0 if start is None else conv.dim(start)
    if _negative(s):
        s = dim_add(size, s)
    if isinstance(s, int) and isinstance(size, int):
        s = min(max(s, 0), size)
    # The end follows from the length torch computed: that absorbs clamping of huge ends.
    if step == 1:
        e = dim_add(s, out_len)
    elif out_len == 0:
        e = s
    else:
        e = dim_add(dim_add(s, dim_mul(dim_sub(out_len, 1), step)), 1)
    return conv.emit("slice", [v], SliceAttrs(axis, s, e, int(step)))


@conversion(aten.copy.default)
def _copy(conv, dst, src, non_blocking=False):
    """copy(dst, src) returns dst's storage filled with src: src cast to dst's dtype, broadcast to its shape."""
    want = conv.meta_type()
    v = _cast_to(conv, conv.operand(src, conv.value(dst)), want.dtype)
    same = v.type.rank == len(want.shape) and all(dims_equal(a, b) for a, b in zip(v.type.shape, want.shape))
    return v if same else conv.emit("expand", [v], ShapeAttrs(want.shape))


@conversion(aten.slice_scatter.default)
def _slice_scatter(conv, x, src, dim=0, start=None, end=None, step=1):
    """x with x[start:end:step] along dim replaced by src.

    Step 1: the untouched slices and src, concatenated. Other steps: src
    scattered at start, start + step, ... (an arange broadcast to src's shape).
    """
    v, sv = conv.value(x), conv.value(src)
    axis = dim % v.type.rank
    size = v.type.shape[axis]
    s = 0 if start is None else conv.dim(start)
    if _negative(s):
        s = dim_add(size, s)
    if isinstance(s, int) and isinstance(size, int):
        s = min(max(s, 0), size)
    n = sv.type.shape[axis]  # src's length is the slice's: torch checked it
    sv = _cast_to(conv, sv, v.type.dtype)
    if step != 1:
        positions = conv.emit("arange", [], ArangeAttrs(s, dim_add(s, dim_mul(n, step)), int(step), DType.I64))
        column = tuple(n if i == axis else 1 for i in range(v.type.rank))
        index = conv.emit("expand", [conv.emit("reshape", [positions], ShapeAttrs(column))], ShapeAttrs(sv.type.shape))
        return conv.emit("scatter", [v, index, sv], AxisAttrs(axis))
    e = dim_add(s, n)
    pieces = []
    if not dims_equal(s, 0):
        pieces.append(conv.emit("slice", [v], SliceAttrs(axis, 0, s, 1)))
    pieces.append(sv)
    if not dims_equal(e, size):
        pieces.append(conv.emit("slice", [v], SliceAttrs(axis, e, size, 1)))
    return pieces[0] if len(pieces) == 1 else conv.emit("cat", pieces, AxisAttrs(axis))


@conversion(aten.select.int)
def _select(conv, x, dim, index):
    v = conv.value(x)
    axis = dim % v.type.rank
    i = conv.dim(index)
    if _negative(i):
        i = dim_add(v.type.shape[axis], i)
    return conv.emit("select", [v], SelectAttrs(axis, i))


@conversion(aten.cat.default)
def _cat(conv, tensors, dim=0):
    vals = [conv.value(t) for t in tensors]
    vals = [v for v in vals if not (v.type.rank == 1 and v.type.shape[0] == 0)] or vals[:1]
    if len(vals) == 1:
        return vals[0]
    return conv.emit("cat", vals, AxisAttrs(dim % vals[0].type.rank))


@conversion(aten.split.Tensor, aten.split_with_sizes.default, aten.split.sizes)
def _split(conv, x, sizes, dim=0):
    v = conv.value(x)
    axis = dim % v.type.rank
    pieces = tuple(t.shape[axis] for t in conv.meta_types())
    return conv.emit_multi("split", [v], SplitAttrs(axis, pieces))


@conversion(aten.gather.default)
def _gather(conv, x, dim, index, *, sparse_grad=False):
    v = conv.value(x)
    return conv.emit("gather", [v, conv.value(index)], AxisAttrs(dim % v.type.rank))


@conversion(aten.scatter.src, aten.scatter.value)
def _scatter(conv, x, dim, index, src):
    v = conv.value(x)
    if conv.node.target is aten.scatter.value:
        from ..ir.opdefs.shape import ShapeAttrs as _S

        idx = conv.value(index)
        c = conv.scalar(src, v)
        src_v = conv.emit("expand", [c], _S(idx.type.shape))
    else:
        src_v = conv.value(src)
    return conv.emit("scatter", [v, conv.value(index), src_v], AxisAttrs(dim % v.type.rank))


@conversion(aten.scatter_reduce.two)
def _scatter_reduce(conv, x, dim, index, src, reduce, *, include_self=True):
    v = conv.value(x)
    sv = _cast_to(conv, conv.value(src), v.type.dtype)
    attrs = ScatterReduceAttrs(dim % v.type.rank, str(reduce), bool(include_self))
    return conv.emit("scatter_reduce", [v, conv.value(index), sv], attrs)


@conversion(aten.unfold.default)
def _unfold(conv, x, dim, size, step):
    """x.unfold(dim, size, step): windows gathered by an [n, size] index (i * step + j), the window axis moved last."""
    v = conv.value(x)
    axis = dim % max(v.type.rank, 1)
    n = conv.meta_type().shape[axis]
    starts = conv.emit("reshape", [conv.emit("arange", [], ArangeAttrs(0, dim_mul(n, step), step, DType.I64))], ShapeAttrs((n, 1)))
    offsets = conv.emit("arange", [], ArangeAttrs(0, size, 1, DType.I64))
    windows = conv.emit("index", [v, conv.emit("add", [starts, offsets])], IndexAttrs((axis,)))  # [..., n, size, ...]
    rank = v.type.rank + 1
    perm = [i for i in range(rank) if i != axis + 1] + [axis + 1]
    return windows if perm == list(range(rank)) else conv.emit("permute", [windows], PermuteAttrs(tuple(perm)))


def _per_dim(value, n: int) -> tuple[int, ...]:
    """A pooling size as one int per spatial dim: torch accepts one int for all, or () for the default."""
    if isinstance(value, (list, tuple)):
        if len(value) == 0:
            return ()
        return tuple(int(v) for v in value) if len(value) == n else (int(value[0]),) * n
    return (int(value),) * n


@conversion(aten.max_pool1d.default, aten.max_pool2d.default, aten.max_pool3d.default,
            aten.max_pool2d_with_indices.default, aten.max_pool3d_with_indices.default)
def _max_pool(conv, x, kernel, stride=(), padding=0, dilation=1, ceil_mode=False):
    """max_pool over the last len(kernel) dims; an unbatched input gets a batch of one. The
    indices of the *_with_indices forms convert only if nothing uses them."""
    n = len(kernel)
    k = _per_dim(kernel, n)
    attrs = PoolAttrs(k, _per_dim(stride, n) or k, _per_dim(padding, n), _per_dim(dilation, n), bool(ceil_mode))
    out = _pool(conv, "max_pool", conv.value(x), attrs)
    if "with_indices" in str(conv.node.target):
        from .torch_export import Unresolved

        return (out, Unresolved(conv.unsupported("the indices of max_pool (return_indices=True)")))
    return out


@conversion(aten.avg_pool1d.default, aten.avg_pool2d.default, aten.avg_pool3d.default)
def _avg_pool(conv, x, kernel, stride=(), padding=0, ceil_mode=False, count_include_pad=True, divisor_override=None):
    if divisor_override is not None:
        raise conv.unsupported("avg_pool with divisor_override")
    n = len(kernel)
    k = _per_dim(kernel, n)
    attrs = AvgPoolAttrs(k, _per_dim(stride, n) or k, _per_dim(padding, n), bool(ceil_mode), bool(count_include_pad))
    return _pool(conv, "avg_pool", conv.value(x), attrs)


def _pool(conv, op, v, attrs):
    """A pooling op over [N, C, *spatial]; an unbatched input gets a batch of one."""
    from ..errors import VerifyError

    unbatched = v.type.rank == len(attrs.kernel) + 1
    if unbatched:
        v = conv.emit("unsqueeze", [v], AxisAttrs(0))
    try:
        out = conv.emit(op, [v], attrs)
    except VerifyError as e:
        raise conv.unsupported(str(e)) from None
    return conv.emit("squeeze", [out], DimsAttrs((0,))) if unbatched else out


@conversion(aten.index.Tensor)
def _index(conv, x, indices):
    from .aten_data_dependent import index_operands  # boolean masks become nonzero's coordinates

    dims, vals = index_operands(conv, indices)
    return conv.emit("index", [conv.value(x)] + vals, IndexAttrs(dims))


@conversion(aten.index_select.default)
def _index_select(conv, x, dim, index):
    v = conv.value(x)
    return conv.emit("index", [v, conv.value(index)], IndexAttrs((dim % v.type.rank,)))


@conversion(aten.triu.default, aten.tril.default)
def _tri(conv, x, diagonal=0):
    op = "triu" if conv.node.target is aten.triu.default else "tril"
    return conv.emit(op, [conv.value(x)], DiagonalAttrs(int(diagonal)))


@conversion(aten.flip.default)
def _flip(conv, x, dims):
    v = conv.value(x)
    return conv.emit("flip", [v], DimsAttrs(tuple(d % v.type.rank for d in dims)))


@conversion(aten.constant_pad_nd.default)
def _pad(conv, x, pad, value=0.0):
    return conv.emit("pad", [conv.value(x)], PadAttrs(tuple(conv.dim(p) for p in pad), float(value)))


@conversion(aten.repeat.default)
def _repeat(conv, x, repeats):
    return conv.emit("repeat", [conv.value(x)], RepeatAttrs(tuple(conv.dim(r) for r in repeats)))


# -- creation ----------------------------------------------------------------------------
def _fill(conv, value):
    t = conv.meta_type()
    if isinstance(value, torch.fx.Node) or isinstance(value, torch.SymInt):
        value = conv.dim(value)
    elif isinstance(value, (int, float, bool)):
        value = bool(value) if t.dtype == DType.BOOL else (float(value) if t.dtype.is_float else int(value))
    return conv.emit("full", [], FullAttrs(t.shape, value, t.dtype))


@conversion(aten.full.default, aten.new_full.default)
def _full(conv, *args, **kwargs):
    value = args[-1] if conv.node.target is aten.full.default else args[2]
    return _fill(conv, value)


@conversion(aten.full_like.default)
def _full_like(conv, x, value, **kwargs):
    return _fill(conv, value)


@conversion(aten.zeros.default, aten.new_zeros.default, aten.zeros_like.default, aten.empty.memory_format, aten.new_empty.default, aten.empty_like.default,
            aten.empty_permuted.default)
def _zeros(conv, *args, **kwargs):
    # empty's contents are unspecified; zeros are one valid choice and keep runs deterministic.
    return _fill(conv, 0)


@conversion(aten.ones.default, aten.new_ones.default, aten.ones_like.default)
def _ones(conv, *args, **kwargs):
    return _fill(conv, 1)


@conversion(aten.scalar_tensor.default)
def _scalar_tensor(conv, value, **kwargs):
    return _fill(conv, value)


@conversion(aten.arange.default, aten.arange.start, aten.arange.start_step)
def _arange(conv, *args, **kwargs):
    t = conv.node.target
    if t is aten.arange.default:
        start, end, step = 0, args[0], 1
    elif t is aten.arange.start:
        start, end, step = args[0], args[1], 1
    else:
        start, end = args[0], args[1]
        step = args[2] if len(args) > 2 else kwargs.get("step", 1)
    out = conv.meta_type()
    if any(_is_float_arg(conv, a) for a in (start, end, step)):
        return _float_arange(conv, start, step, out)
    return conv.emit("arange", [], ArangeAttrs(conv.dim(start), conv.dim(end), conv.dim(step), out.dtype))


def _is_float_arg(conv, a) -> bool:
    if isinstance(a, torch.fx.Node):
        return isinstance(a.meta.get("val"), (float, torch.SymFloat))
    return isinstance(a, (float, torch.SymFloat))


def _float_arange(conv, start, step, out):
    """arange with float bounds: start + step * i for i < n, where n is the length torch computed.

    Integral start and step (`arange(0, seq / 2, 1.0)`) keep the plain arange with an
    integer end; otherwise the values are computed in the result dtype (torch
    accumulates in double: the two differ by float rounding only).
    """
    n = out.shape[0]
    integral = lambda a: isinstance(a, (int, torch.SymInt)) or (isinstance(a, float) and a.is_integer()) or (  # noqa: E731
        isinstance(a, torch.fx.Node) and isinstance(a.meta.get("val"), (int, torch.SymInt)))
    if integral(start) and integral(step) and not isinstance(step, torch.fx.Node):
        s = conv.dim(int(start) if isinstance(start, float) else start)
        return conv.emit("arange", [], ArangeAttrs(s, dim_add(s, dim_mul(n, int(step))), int(step), out.dtype))
    if not out.dtype.is_float:
        raise conv.unsupported(f"arange with fractional bounds and an integer result ({out.dtype})")
    if isinstance(start, torch.fx.Node) and not isinstance(start.meta.get("val"), (int, torch.SymInt)):
        raise conv.unsupported("arange whose start is a float computed from sizes")
    if isinstance(step, torch.fx.Node):
        raise conv.unsupported("arange whose step is computed from sizes")
    i = conv.emit("arange", [], ArangeAttrs(0, n, 1, out.dtype))
    values = conv.emit("mul", [i, conv.scalar(float(step), i)]) if float(step) != 1 else i
    if isinstance(start, (int, float)) and float(start) == 0:
        return values
    first = conv.scalar(float(start), i) if isinstance(start, (int, float)) else _cast_to(conv, conv.scalar(start), out.dtype)
    return conv.emit("add", [values, first])


# -- reductions and scans --------------------------------------------------------------------
def _reduce(op):
    def handler(conv, x, dims=None, keepdim=False, *, dtype=None):
        v = _cast_if(conv, conv.value(x), dtype)
        if isinstance(dims, int):
            dims = [dims]
        dims = tuple(d % max(v.type.rank, 1) for d in (dims or ()))
        return conv.emit(op, [v], ReduceAttrs(dims, bool(keepdim)))

    return handler


CONVERSIONS[aten.sum.dim_IntList] = _reduce("sum")
CONVERSIONS[aten.sum.default] = lambda conv, x, dtype=None: _reduce("sum")(conv, x, None, False, dtype=dtype)
CONVERSIONS[aten.mean.dim] = _reduce("mean")
CONVERSIONS[aten.mean.default] = lambda conv, x, dtype=None: _reduce("mean")(conv, x, None, False, dtype=dtype)
CONVERSIONS[aten.amax.default] = _reduce("amax")
CONVERSIONS[aten.amin.default] = _reduce("amin")
CONVERSIONS[aten.max.default] = lambda conv, x: _reduce("amax")(conv, x)  # t.max(): over every element
CONVERSIONS[aten.min.default] = lambda conv, x: _reduce("amin")(conv, x)
CONVERSIONS[aten.any.dim] = _reduce("any")
CONVERSIONS[aten.any.dims] = _reduce("any")
CONVERSIONS[aten.any.default] = lambda conv, x: _reduce("any")(conv, x)
CONVERSIONS[aten.all.dim] = _reduce("all")
CONVERSIONS[aten.all.default] = lambda conv, x: _reduce("all")(conv, x)


@conversion(aten.linalg_vector_norm.default)
def _vector_norm(conv, x, ord=2, dim=None, keepdim=False, *, dtype=None):
    """The p-norm over dims, from sums: 2 -> sqrt(sum(x*x)), 1 -> sum(|x|), inf -> max |x|, 0 -> count of non-zeros."""
    v = _cast_if(conv, conv.value(x), dtype)
    if isinstance(dim, int):
        dim = [dim]
    attrs = ReduceAttrs(tuple(d % max(v.type.rank, 1) for d in (dim or ())), bool(keepdim))
    p = float(ord)
    if p == 0:
        nz = conv.emit("ne", [v, conv.scalar(0.0, v)])
        return _cast_to(conv, conv.emit("sum", [nz], attrs), v.type.dtype)
    a = conv.emit("abs", [v])
    if p in (float("inf"), float("-inf")):
        return conv.emit("amax" if p > 0 else "amin", [a], attrs)
    if p == 1:
        return conv.emit("sum", [a], attrs)
    if p == 2:
        return conv.emit("sqrt", [conv.emit("sum", [conv.emit("mul", [v, v])], attrs)])
    powered = conv.emit("pow", [a, conv.scalar(p, a)])
    return conv.emit("pow", [conv.emit("sum", [powered], attrs), conv.scalar(1.0 / p, a)])


@conversion(aten.var.correction)
def _var(conv, x, dims=None, *, correction=None, keepdim=False):
    v = conv.value(x)
    dims = tuple(d % v.type.rank for d in (dims or ()))
    return conv.emit("var", [v], VarAttrs(dims, 1.0 if correction is None else float(correction), bool(keepdim)))


@conversion(aten.argmax.default, aten.argmin.default)
def _argmax(conv, x, dim=None, keepdim=False):
    v = conv.value(x)
    if dim is None:
        raise conv.unsupported("argmax over a flattened tensor")
    op = "argmax" if conv.node.target is aten.argmax.default else "argmin"
    return conv.emit(op, [v], ArgAttrs(dim % v.type.rank, bool(keepdim)))


@conversion(aten.max.dim, aten.min.dim)
def _max_dim(conv, x, dim, keepdim=False):
    v = conv.value(x)
    axis = dim % v.type.rank
    is_max = conv.node.target is aten.max.dim
    values = conv.emit("amax" if is_max else "amin", [v], ReduceAttrs((axis,), bool(keepdim)))
    indices = conv.emit("argmax" if is_max else "argmin", [v], ArgAttrs(axis, bool(keepdim)))
    return (values, indices)


@conversion(aten.cumsum.default)
def _cumsum(conv, x, dim, *, dtype=None):
    v = _cast_if(conv, conv.value(x), dtype)
    return conv.emit("cumsum", [v], DimAttrs(dim % v.type.rank))


@conversion(aten.topk.default)
def _topk(conv, x, k, dim=-1, largest=True, sorted=True):
    v = conv.value(x)
    return conv.emit_multi("topk", [v], TopKAttrs(conv.dim(k), dim % v.type.rank, bool(largest), bool(sorted)))


@conversion(aten.sort.default, aten.sort.stable)
def _sort(conv, x, *args, **kwargs):
    v = conv.value(x)
    if conv.node.target is aten.sort.stable:
        stable, dim, descending = kwargs.get("stable", False), kwargs.get("dim", -1), kwargs.get("descending", False)
    else:
        dim = args[0] if args else kwargs.get("dim", -1)
        descending = args[1] if len(args) > 1 else kwargs.get("descending", False)
        stable = False
    return conv.emit_multi("sort", [v], SortAttrs(dim % v.type.rank, bool(descending), bool(stable)))


from . import aten_conv  # noqa: E402,F401  (its conversions join this table; imported last: it imports `conversion` from here)
