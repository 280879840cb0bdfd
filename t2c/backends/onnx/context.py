"""The lowering context: ONNX names for IR values, initializers, constants and run-time dims.

IR shapes and shape-like attrs are made of dims that may be symbolic
(`batch*seq`, `seq+1`, `floor(seq/2)`). `dim`/`shape` turn them into int64
tensors: constants when the dim is an int, otherwise computed at run time from
the graph inputs' shapes (each bare symbol is read once, with Shape, from the
first input that has it). A data-dependent dim (`n0`, ...) is read, with Shape,
from the ONNX tensor of the result that introduced it (`bind` records which).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

import onnx
import sympy
import torch
from onnx import TensorProto, helper

from ...errors import T2CError
from ...ir.core import Dim, DType, Graph, SymDim, Value, rest_of_sum
from ...ir.core import dim as as_dim

if TYPE_CHECKING:
    from .flavors import Flavor

ONNX_DTYPE = {
    DType.F64: TensorProto.DOUBLE,
    DType.F32: TensorProto.FLOAT,
    DType.F16: TensorProto.FLOAT16,
    DType.BF16: TensorProto.BFLOAT16,
    DType.I64: TensorProto.INT64,
    DType.I32: TensorProto.INT32,
    DType.I16: TensorProto.INT16,
    DType.I8: TensorProto.INT8,
    DType.U8: TensorProto.UINT8,
    DType.BOOL: TensorProto.BOOL,
}


class LoweringError(T2CError):
    """An IR graph that the ONNX backend cannot lower, or whose ONNX model fails its checks."""


def tensor_proto(name: str, t: torch.Tensor) -> TensorProto:
    """A TensorProto holding `t` (raw bytes; bf16 goes through its 16-bit pattern)."""
    t = t.detach().cpu().contiguous()
    dtype = DType.from_torch(t.dtype)
    if dtype == DType.BF16:
        raw = t.view(torch.int16).numpy().tobytes()
    else:
        raw = t.numpy().tobytes()
    return helper.make_tensor(name, ONNX_DTYPE[dtype], list(t.shape), raw, raw=True)


class Context:
    """Builds the ONNX node list while lowering one IR graph."""

    def __init__(self, graph: Graph, opset: int, flavor: "Flavor | None" = None):
        from .flavors import FLAVORS

        self.graph = graph
        self.opset = opset
        self.flavor = flavor or FLAVORS["standard"]  # its overlay is tried before the standard lowerings
        self.nodes: list[onnx.NodeProto] = []
        # Tensors computed once per graph and shared by every node that needs them (the
        # blocked attention's structural bias), keyed by what determines them.
        self.shared: dict[tuple, Any] = {}
        self.initializers: dict[str, TensorProto] = {}
        self.current_op = "graph"  # IR op being lowered; names its ONNX nodes
        self._names: dict[Value, str] = {v: v.name for v in graph.inputs}
        self._used: set[str] = {v.name for v in graph.inputs} | set(graph.param_values) | {n for n, _ in graph.outputs}
        self._counter = 0
        self._consts: dict[tuple, str] = {}
        self._dims: dict[str, str] = {}  # sympy expr string -> int64 [1] tensor name
        self._data_dims: dict[str, tuple[str, int]] = {}  # data-dependent dim -> (ONNX tensor, axis) holding it

    # -- names ------------------------------------------------------------------------
    def fresh(self, stem: str = "t") -> str:
        """A tensor name not used yet."""
        while True:
            self._counter += 1
            name = f"{stem}_{self._counter}"
            if name not in self._used:
                self._used.add(name)
                return name

    def name(self, v: Value) -> str:
        """The ONNX name of IR value `v`; a param becomes an initializer on first use."""
        if v in self._names:
            return self._names[v]
        if self.graph.is_param(v):
            if v.name not in self.graph.params:
                raise LoweringError(f"param @{v.name} has no data (graphs parsed from text carry types only)")
            self.add_initializer(v.name, self.graph.params[v.name])
            self._names[v] = v.name
            return v.name
        raise LoweringError(f"value {v!r} is used before the node that makes it was lowered")

    def bind(self, v: Value, name: str) -> None:
        """Record that IR value `v` is the ONNX tensor `name` (and any data-dependent dim its size defines)."""
        self._names[v] = name
        if v.producer is not None:
            from ...ir.ops import get_op

            for sym, index, axis in get_op(v.producer.op).data_dims(v.producer.attrs):
                if index == v.index:
                    self._data_dims[sym] = (name, axis)

    def param_tensor(self, v: Value) -> torch.Tensor | None:
        """The data of `v` when it is a param with data, else None."""
        if self.graph.is_param(v):
            return self.graph.params.get(v.name)
        return None

    def add_initializer(self, name: str, t: torch.Tensor) -> str:
        """Add `t` as initializer `name` (once); returns the name."""
        if name not in self.initializers:
            self._used.add(name)
            self.initializers[name] = tensor_proto(name, t)
        return name

    # -- nodes ------------------------------------------------------------------------
    def emit(self, op_type: str, inputs: Sequence[str], n_out: int = 1, *, unused: Sequence[int] = (), **attrs: Any) -> Any:
        """Append one ONNX node; returns its output name (or the list of them if n_out > 1).

        Outputs whose positions are in `unused` are left unnamed (optional outputs
        such as a norm's training statistics); `domain=` picks a contrib domain.
        """
        outs = ["" if i in unused else self.fresh(op_type.lower()) for i in range(n_out)]
        node_name = self.fresh(f"{self.current_op}/{op_type}")
        self.nodes.append(helper.make_node(op_type, list(inputs), outs, name=node_name, **attrs))
        return outs[0] if n_out == 1 else outs

    def cast(self, x: str, from_dtype: DType, to: DType) -> str:
        """Cast only when the dtypes differ."""
        return x if from_dtype == to else self.emit("Cast", [x], to=ONNX_DTYPE[to])

    def const(self, value: Any, dtype: DType, shape: Sequence[int] | None = None) -> str:
        """An initializer holding `value` (scalar or nested list) of `dtype`; deduplicated."""
        arr = torch.tensor(value, dtype=dtype.torch)
        if shape is not None:
            arr = arr.reshape(tuple(shape))
        key = (dtype, tuple(arr.shape), tuple(arr.flatten().tolist()))
        if key not in self._consts:
            self._consts[key] = self.add_initializer(self.fresh("const"), arr)
        return self._consts[key]

    def ints(self, values: Sequence[int]) -> str:
        """A 1-D int64 constant."""
        return self.const(list(values), DType.I64, (len(values),))

    # -- dims -------------------------------------------------------------------------
    def dim(self, d: Dim) -> str:
        """`d` as a 0-d int64 tensor."""
        d = as_dim(d)
        if isinstance(d, int):
            return self.const(d, DType.I64)
        return self.emit("Squeeze", [self.dim1(d), self.ints([0])])

    def shape(self, dims: Sequence[Dim]) -> str:
        """`dims` as a 1-D int64 tensor (a constant when every dim is an int)."""
        dims = [as_dim(d) for d in dims]
        if all(isinstance(d, int) for d in dims):
            return self.ints(list(dims))
        if len(dims) == 1:
            return self.dim1(dims[0])
        return self.emit("Concat", [self.dim1(d) for d in dims], axis=0)

    def dim1(self, d: Dim) -> str:
        """`d` as a 1-D int64 tensor of one element; symbolic dims computed once per expression."""
        d = as_dim(d)  # attrs built by hand may hold "seq" instead of SymDim("seq")
        if isinstance(d, int):
            return self.ints([d])
        return self._expr(d.sympy)

    def _expr(self, e: sympy.Expr) -> str:
        key = str(e)
        if key in self._dims:
            return self._dims[key]
        out = self._build(e)
        self._dims[key] = out
        return out

    def _build(self, e: sympy.Expr) -> str:
        if e.is_Integer:
            return self.ints([int(e)])
        if e.is_Symbol:
            return self._symbol(e.name)
        if isinstance(e, (sympy.floor, sympy.ceiling)):
            num, den = sympy.fraction(sympy.together(e.args[0]))
            if isinstance(e, sympy.floor):
                return self.floordiv(self._expr(num), self._expr(den))
            neg = self.emit("Neg", [self._expr(num)])  # ceil(a/b) = -floor(-a/b)
            return self.emit("Neg", [self.floordiv(neg, self._expr(den))])
        num, den = sympy.fraction(sympy.together(e))
        if den != 1:  # an exact quotient such as (batch*seq)/2
            return self.floordiv(self._expr(num), self._expr(den))
        if e.is_Add:
            return self._fold("Add", e.args)
        if e.is_Mul:
            return self._fold("Mul", e.args)
        if e.is_Pow and e.args[1].is_Integer and int(e.args[1]) > 0:
            return self._fold("Mul", [e.args[0]] * int(e.args[1]))
        if isinstance(e, sympy.Mod):
            return self.emit("Mod", [self._expr(e.args[0]), self._expr(e.args[1])], fmod=0)
        if isinstance(e, (sympy.Max, sympy.Min)):
            return self.emit("Max" if isinstance(e, sympy.Max) else "Min", [self._expr(a) for a in e.args])
        raise LoweringError(f"cannot lower the dim expression {e}")

    def _fold(self, op: str, args) -> str:
        out = self._expr(args[0])
        for a in args[1:]:
            out = self.emit(op, [out, self._expr(a)])
        return out

    def floordiv(self, a: str, b: str) -> str:
        """floor(a / b) for int64 tensors, exact for negative a: (a - mod(a, b)) / b."""
        exact = self.emit("Sub", [a, self.emit("Mod", [a, b], fmod=0)])
        return self.emit("Div", [exact, b])

    def _symbol(self, name: str) -> str:
        if name in self._data_dims:
            tensor, axis = self._data_dims[name]
            return self.emit("Shape", [tensor], start=axis, end=axis + 1)
        for v in self.graph.inputs:
            for axis, d in enumerate(v.type.shape):
                if isinstance(d, SymDim) and d.expr == name:
                    return self.emit("Shape", [v.name], start=axis, end=axis + 1)
        for v in self.graph.inputs:  # no input has it alone: `past` of a `past+seq` dim (core.solve_dims)
            for axis, d in enumerate(v.type.shape):
                rest = rest_of_sum(d, name) if isinstance(d, SymDim) and name in d.symbols else None
                if rest is not None:
                    return self.emit("Sub", [self.emit("Shape", [v.name], start=axis, end=axis + 1), self._expr(rest)])
        raise LoweringError(f"dynamic dim {name!r} is not bound by any graph input or earlier data-dependent op")

