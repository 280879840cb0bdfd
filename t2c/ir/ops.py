"""The op registry: every IR op is declared once, here or in `t2c.ir.opdefs`.

A declaration gives the op's name, its operands, its attrs dataclass, its type
inference, an optional extra verification, and its reference implementation in
eager torch. The interpreter runs nothing but these references, so the
references *are* the semantics of the IR; backends are checked against them.

Operand specs: a plain name is required, `name?` is optional (may be absent at
the end), `name*` takes the rest (variadic, only last).

An op whose result has a size known only once it has run (`nonzero`) declares
`data_dims(attrs) -> ((symbol, output index, axis), ...)`: the data-dependent
dims it introduces (named in its attrs) and where to read their sizes. The
verifier lets later nodes use those symbols; the interpreter and the backends
bind them from that result.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

from ..errors import VerifyError
from .core import Dim, NoAttrs, TensorType, eval_dim

InferFn = Callable[[Sequence[TensorType], Any], list[TensorType]]
VerifyFn = Callable[[Sequence[TensorType], Any], None]
DataDimsFn = Callable[[Any], Sequence[tuple[str, int, int]]]


class EvalContext:
    """What a reference implementation needs beyond its tensors: the sizes of dynamic dims."""

    def __init__(self, bindings: dict[str, int]):
        self.bindings = bindings

    def dim(self, d: Dim) -> int:
        return eval_dim(d, self.bindings)

    def shape(self, dims: Sequence[Dim]) -> list[int]:
        return [eval_dim(d, self.bindings) for d in dims]


RefFn = Callable[..., "torch.Tensor | tuple[torch.Tensor, ...]"]


@dataclass(frozen=True)
class OpDef:
    """One op: its contract with the rest of t2c."""

    name: str
    operands: tuple[str, ...]
    attrs: type
    infer: InferFn
    reference: RefFn  # reference(ctx, attrs, *tensors)
    verify_fn: VerifyFn | None = None
    doc: str = ""
    data_dims_fn: DataDimsFn | None = None

    def data_dims(self, attrs: Any) -> tuple[tuple[str, int, int], ...]:
        """(symbol, output index, axis) for each data-dependent dim this node introduces."""
        return tuple(self.data_dims_fn(attrs)) if self.data_dims_fn is not None else ()

    def arity_ok(self, n: int) -> bool:
        required = [o for o in self.operands if not o.endswith(("?", "*"))]
        if self.operands and self.operands[-1].endswith("*"):
            return n >= len(required)
        return len(required) <= n <= len(self.operands)

    def infer_type(self, types: Sequence[TensorType], attrs: Any) -> list[TensorType]:
        if not self.arity_ok(len(types)):
            raise VerifyError(f"{self.name} takes operands ({', '.join(self.operands)}), got {len(types)}")
        return self.infer(types, attrs)

    def verify(self, types: Sequence[TensorType], attrs: Any) -> None:
        if not isinstance(attrs, self.attrs):
            raise VerifyError(f"{self.name}: attrs must be {self.attrs.__name__}, got {type(attrs).__name__}")
        if self.verify_fn is not None:
            self.verify_fn(types, attrs)

    def run(self, ctx: EvalContext, attrs: Any, tensors: Sequence[torch.Tensor]) -> tuple[torch.Tensor, ...]:
        out = self.reference(ctx, attrs, *tensors)
        return out if isinstance(out, tuple) else (out,)


_REGISTRY: dict[str, OpDef] = {}


def define_op(
    name: str,
    operands: Sequence[str],
    infer: InferFn,
    reference: RefFn,
    attrs: type = NoAttrs,
    verify: VerifyFn | None = None,
    doc: str = "",
    data_dims: DataDimsFn | None = None,
) -> OpDef:
    """Register an op. Names are unique; attrs must be a frozen dataclass."""
    if name in _REGISTRY:
        raise ValueError(f"op {name!r} is already defined")
    if not (dataclasses.is_dataclass(attrs) and attrs.__dataclass_params__.frozen):  # type: ignore[attr-defined]
        raise TypeError(f"attrs of {name} must be a frozen dataclass")
    op = OpDef(name, tuple(operands), attrs, infer, reference, verify, doc, data_dims)
    _REGISTRY[name] = op
    return op


def get_op(name: str) -> OpDef:
    _ensure_loaded()
    try:
        return _REGISTRY[name]
    except KeyError:
        raise VerifyError(f"unknown op {name!r}") from None


def all_ops() -> dict[str, OpDef]:
    _ensure_loaded()
    return dict(sorted(_REGISTRY.items()))


_loaded = False


def _ensure_loaded() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        from . import opdefs  # noqa: F401  (registers every op)
