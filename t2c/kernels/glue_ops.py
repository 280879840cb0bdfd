"""What a generated glue kernel computes for each IR op: one Triton expression per elementwise op.

`TEMPLATES[op](node, operands)` is the op's value as Triton source (float results in float32,
bool results int1), given each operand as an `Operand` (a kernel variable or a constant literal).
`elementwise_fusible` and `row_reduction` say which nodes a generated kernel takes, and
`constant_literal` which 0-d constants become literals. Half-precision semantics follow eager
PyTorch: `rounded` rounds a result to its IR dtype, and an operand wider than the op's common
dtype is rounded to it first (`constant_in`, `operand_in`), as torch casts operands. The code
generation that strings these into kernels is glue.py.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from ..ir.core import DType, Node, SymDim, Value
from ..ir.opdefs._infer import promote
from ..ir.opdefs.activation import ACTIVATIONS

FLOATS = (DType.F32, DType.F16, DType.BF16)
ROW_REDUCTIONS = ("softmax", "log_softmax", "sum", "mean", "amax", "amin")
_POW_EXPONENTS = (0.5, -0.5, 1.0, 2.0, 3.0, 4.0, -1.0)


class Operand:
    """One operand inside a kernel: a variable (or a constant literal) and its IR dtype."""

    def __init__(self, text: str, dtype: DType, constant: float | int | None = None):
        self.text, self.dtype, self.constant = text, dtype, constant

    @property
    def f(self) -> str:
        """As float32."""
        if self.constant is not None:
            return float_literal(float(self.constant))
        return self.text if self.dtype in FLOATS else f"{self.text}.to(tl.float32)"

    @property
    def b(self) -> str:
        """As int1 (bool)."""
        if self.constant is not None:
            return "True" if self.constant else "False"
        return self.text if self.dtype == DType.BOOL else f"({self.text} != 0)"

    @property
    def n(self) -> str:
        """As it is (integers and bools native, floats as float32)."""
        if self.constant is not None:
            return repr(int(self.constant)) if self.dtype not in FLOATS else float_literal(float(self.constant))
        return self.text


def float_literal(v: float) -> str:
    """Triton (and Python) source for the float `v`: inf and nan spelled with float()."""
    if math.isnan(v):
        return 'float("nan")'
    if math.isinf(v):
        return 'float("inf")' if v > 0 else '-float("inf")'
    return repr(v)


def _sigmoid(x: str) -> str:
    return f"tl.sigmoid({x})"


def _tanh(x: str) -> str:
    # tanh(x) = sign(x) (1 - e^{-2|x|}) / (1 + e^{-2|x|}): no overflow, no libdevice (the interpreter has none)
    return f"_glue_tanh({x})"


def _erf(x: str) -> str:
    return f"tl.erf({x})"


def _act(name: str, x: str) -> str:
    """One activation of ACTIVATIONS (gated_act, bias_act) as an expression of float32 `x`."""
    return {
        "silu": f"({x}) * {_sigmoid(x)}",
        "gelu": f"0.5 * ({x}) * (1.0 + {_erf(f'({x}) * 0.7071067811865476')})",
        "gelu_tanh": f"0.5 * ({x}) * (1.0 + {_tanh(f'0.7978845608028654 * (({x}) + 0.044715 * ({x}) * ({x}) * ({x}))')})",
        "relu": f"tl.maximum({x}, 0.0)",
    }[name]


def _pow(a: Operand, e: float) -> str:
    return {0.5: f"tl.sqrt({a.f})", -0.5: f"tl.rsqrt({a.f})", 1.0: a.f, 2.0: f"{a.f} * {a.f}",
            3.0: f"{a.f} * {a.f} * {a.f}", 4.0: f"({a.f} * {a.f}) * ({a.f} * {a.f})", -1.0: f"1.0 / {a.f}"}[e]


_COMPARE = {"eq": "==", "ne": "!=", "lt": "<", "le": "<=", "gt": ">", "ge": ">="}


def _compare(op: str, a: Operand, b: Operand) -> str:
    ints = all(o.dtype not in FLOATS for o in (a, b))  # both integral or bool: compare as they are
    x, y = (a.n, b.n) if ints else (a.f, b.f)
    return f"{x} {_COMPARE[op]} {y}"


# op -> expression builder(node, operands); float results are float32 expressions, bool results int1.
TEMPLATES: dict[str, Callable[[Node, Sequence[Operand]], str]] = {
    "neg": lambda n, o: f"-{o[0].f}",
    "abs": lambda n, o: f"tl.abs({o[0].f})",
    "exp": lambda n, o: f"tl.exp({o[0].f})",
    "log": lambda n, o: f"tl.log({o[0].f})",
    "sqrt": lambda n, o: f"tl.sqrt({o[0].f})",
    "rsqrt": lambda n, o: f"tl.rsqrt({o[0].f})",
    "reciprocal": lambda n, o: f"1.0 / {o[0].f}",
    "sin": lambda n, o: f"tl.sin({o[0].f})",
    "cos": lambda n, o: f"tl.cos({o[0].f})",
    "tan": lambda n, o: f"tl.sin({o[0].f}) / tl.cos({o[0].f})",
    "tanh": lambda n, o: _tanh(o[0].f),
    "sigmoid": lambda n, o: _sigmoid(o[0].f),
    "erf": lambda n, o: _erf(o[0].f),
    "relu": lambda n, o: _act("relu", o[0].f),
    "silu": lambda n, o: _act("silu", o[0].f),
    "gelu": lambda n, o: _act("gelu" if n.attrs.approximate == "none" else "gelu_tanh", o[0].f),
    "floor": lambda n, o: f"tl.floor({o[0].f})",
    "ceil": lambda n, o: f"tl.ceil({o[0].f})",
    "sign": lambda n, o: f"tl.where({o[0].f} > 0, 1.0, tl.where({o[0].f} < 0, -1.0, {o[0].f} * 0.0))",
    "logical_not": lambda n, o: f"{o[0].b} == 0",
    "clamp": lambda n, o: _clamp(n, o[0]),
    "cast": lambda n, o: o[0].b if n.attrs.dtype == DType.BOOL else o[0].f,
    "add": lambda n, o: f"{o[0].f} + {o[1].f}",
    "sub": lambda n, o: f"{o[0].f} - {o[1].f}",
    "mul": lambda n, o: f"{o[0].f} * {o[1].f}",
    "div": lambda n, o: f"{o[0].f} / {o[1].f}",
    "pow": lambda n, o: _pow(o[0], float(o[1].constant)),
    "maximum": lambda n, o: f"tl.maximum({o[0].f}, {o[1].f})",
    "minimum": lambda n, o: f"tl.minimum({o[0].f}, {o[1].f})",
    "logical_and": lambda n, o: f"{o[0].b} & {o[1].b}",
    "logical_or": lambda n, o: f"{o[0].b} | {o[1].b}",
    "bitwise_and": lambda n, o: f"{o[0].b} & {o[1].b}",
    "bitwise_or": lambda n, o: f"{o[0].b} | {o[1].b}",
    **{op: (lambda op: lambda n, o: _compare(op, o[0], o[1]))(op) for op in _COMPARE},
    "where": lambda n, o: f"tl.where({o[0].b}, {o[1].b if n.outputs[0].type.dtype == DType.BOOL else o[1].f}, "
                          f"{o[2].b if n.outputs[0].type.dtype == DType.BOOL else o[2].f})",
    "gated_act": lambda n, o: f"({_act(n.attrs.activation, o[0].f)}) * {o[1].f}",
    "bias_act": lambda n, o: _act(n.attrs.activation, f"({o[0].f} + {o[1].f})"),
}


def _clamp(node: Node, x: Operand) -> str:
    out = x.f
    if node.attrs.min is not None:
        out = f"tl.maximum({out}, {float_literal(float(node.attrs.min))})"
    if node.attrs.max is not None:
        out = f"tl.minimum({out}, {float_literal(float(node.attrs.max))})"
    return out


def elementwise_fusible(node: Node, constants: dict[int, float | int]) -> bool:
    """True when `node` has a template and its dtypes are ones a generated kernel computes.

    `constants` maps id(value) -> the literal of a folded 0-d constant (pow needs its exponent there).
    """
    if node.op not in TEMPLATES or len(node.outputs) != 1:
        return False
    out = node.outputs[0].type.dtype
    if out not in FLOATS + (DType.BOOL,) or any(v.type.dtype == DType.F64 for v in node.inputs):
        return False
    if node.op in ("bitwise_and", "bitwise_or", "logical_not", "logical_and", "logical_or") or node.op in _COMPARE:
        return out == DType.BOOL
    if node.op == "cast":
        return True
    if node.op == "where":
        return True
    if node.op == "div" and node.attrs.rounding_mode is not None:
        return False
    if node.op == "pow":
        e = constants.get(id(node.inputs[1]))
        return out in FLOATS and e is not None and float(e) in _POW_EXPONENTS
    if node.op in ("gated_act", "bias_act") and node.attrs.activation not in ACTIVATIONS:
        return False
    return out in FLOATS


def row_reduction(node: Node) -> bool:
    """True when `node` reduces the last dim of a float tensor (a generated row kernel computes it)."""
    if node.op not in ROW_REDUCTIONS or not node.inputs or node.inputs[0].type.dtype not in FLOATS:
        return False
    rank = node.inputs[0].type.rank
    if rank == 0:
        return False
    if node.op in ("softmax", "log_softmax"):
        return node.attrs.dim % rank == rank - 1
    return len(node.attrs.dims) == 1 and node.attrs.dims[0] % rank == rank - 1


def constant_literal(node: Node) -> float | int | None:
    """The value of a 0-d `full` a kernel can take as a literal (rounded to its dtype), else None."""
    if node.op != "full" or node.attrs.shape != () or isinstance(node.attrs.value, (SymDim, bool)):
        return None
    dtype = node.attrs.dtype
    if dtype in FLOATS:
        return float(torch.tensor(float(node.attrs.value), dtype=dtype.torch).float())
    if dtype in (DType.I64, DType.I32, DType.I16, DType.I8, DType.U8) and abs(int(node.attrs.value)) < 2**31:
        return int(node.attrs.value)
    return None


def rounded(expr: str, dtype: DType) -> str:
    """`expr` rounded to `dtype` and back to float32, as eager rounds each op's result
    (bf16 through `_glue_bf16`, one of glue.py's helpers written into every model.py)."""
    if dtype == DType.F16:
        return f"({expr}).to(tl.float16).to(tl.float32)"
    if dtype == DType.BF16:
        return f"_glue_bf16({expr})"
    return expr


def constant_in(value: float | int, node: Node) -> float | int:
    """A constant as `node` computes with it: torch casts every operand to the op's common dtype
    first, so x_f16 * 0.3 (an f32 constant) multiplies by 0.3 rounded to f16."""
    if not isinstance(value, float):
        return value
    common = _common_dtype(node)
    return float(torch.tensor(value).to(common.torch).float()) if common in (DType.F16, DType.BF16) else value


def _common_dtype(node: Node) -> DType | None:
    """The dtype torch computes `node` in (its operands' result_type); None for a cast."""
    if node.op == "cast":
        return None
    return promote(*(v.type for v in (node.inputs[1:] if node.op == "where" else node.inputs)))


def operand_in(text: str, v: Value, node: Node) -> str:
    """A float operand wider than the op's common dtype (a 0-d f32 tensor with an f16 one) rounded to it first."""
    common = _common_dtype(node)
    if common in (DType.F16, DType.BF16) and v.type.dtype in FLOATS and v.type.dtype != common:
        return rounded(text, common)
    return text
