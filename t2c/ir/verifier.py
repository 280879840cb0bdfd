"""The verifier: SSA, topological order, operand counts, attrs, types against `infer_type`, bound dims.

It runs after every pass in the tests and under `--verify-each`. A failure is a
bug in whatever produced the graph; the message names the node.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Iterator

from ..errors import VerifyError
from .core import Graph, SymDim, TensorType, dims_equal, is_data_dim
from .ops import get_op
from .printer import Namer, format_node


def types_match(a: TensorType, b: TensorType) -> bool:
    return a.dtype == b.dtype and a.rank == b.rank and all(dims_equal(x, y) for x, y in zip(a.shape, b.shape))


def attr_symbols(attrs: Any) -> Iterator[str]:
    """Every dim symbol an attrs dataclass mentions (reshape targets, slice bounds, ...)."""

    def walk(x: Any) -> Iterator[str]:
        if isinstance(x, SymDim):
            yield from x.symbols
        elif isinstance(x, (tuple, list)):
            for y in x:
                yield from walk(y)

    if dataclasses.is_dataclass(attrs):
        for f in dataclasses.fields(attrs):
            yield from walk(getattr(attrs, f.name))


def _check_dims(node, opdef, bound: set[str], where) -> None:
    """Symbols a node uses must be bound before it; data-dependent ones it introduces must be fresh."""
    introduced = set()
    for sym, index, axis in opdef.data_dims(node.attrs):
        if not is_data_dim(sym):
            raise VerifyError(f"data-dependent dim {sym!r} must be named n0, n1, ...: {where()}")
        if sym in bound or sym in introduced:
            raise VerifyError(f"data-dependent dim {sym} is introduced twice: {where()}")
        out = node.outputs[index].type if index < len(node.outputs) else None
        if out is None or axis >= out.rank or str(out.shape[axis]) != sym:
            raise VerifyError(f"result {index} axis {axis} must be the data-dependent dim {sym}: {where()}")
        introduced.add(sym)
    used = set(attr_symbols(node.attrs))
    for out in node.outputs:
        for d in out.type.shape:
            if isinstance(d, SymDim):
                used |= d.symbols
    unbound = sorted(used - bound - introduced)
    if unbound:
        raise VerifyError(f"dim {', '.join(unbound)} is not bound: no graph input has it and no earlier op computes it: {where()}")
    bound |= introduced


def verify(graph: Graph) -> None:
    """Raise `VerifyError` at the first broken invariant."""
    name = Namer(graph)
    defined: set[int] = {id(v) for v in graph.inputs} | {id(v) for v in graph.param_values.values()}
    # Dims in scope: the inputs' symbols, then each data-dependent dim from the node that computes it.
    bound: set[str] = {s for v in graph.inputs for d in v.type.shape if isinstance(d, SymDim) for s in d.symbols}
    bare = {d.expr for v in graph.inputs for d in v.type.shape if isinstance(d, SymDim) and d.expr in d.symbols}
    for sym, m in graph.constraints.items():
        if sym not in bare or not isinstance(m, int) or m < 2:
            raise VerifyError(f"constraint {sym} % {m} == 0 must name an input dim (a bare symbol) and a modulus >= 2")
    for sym, n in graph.bounds.items():
        if sym not in bare or not isinstance(n, int) or n < 1:
            raise VerifyError(f"constraint {sym} <= {n} must name an input dim (a bare symbol) and a bound >= 1")
    for pname, v in graph.param_values.items():
        if v.name != pname or v.producer is not None:
            raise VerifyError(f"param @{pname} is malformed")
        t = graph.params.get(pname)
        if t is not None and (tuple(t.shape) != v.type.shape or t.dtype != v.type.dtype.torch):
            raise VerifyError(f"param @{pname} holds {tuple(t.shape)} {t.dtype}, declared {v.type}")
    for node in graph.nodes:
        where = lambda: format_node(node, name)  # noqa: E731
        opdef = get_op(node.op)
        if not opdef.arity_ok(len(node.inputs)):
            raise VerifyError(f"{node.op} takes ({', '.join(opdef.operands)}): {where()}")
        for pos, v in enumerate(node.inputs):
            if id(v) not in defined:
                raise VerifyError(f"operand {pos} is used before it is defined (SSA/topological order): {where()}")
            if (node, pos) not in v.uses:
                raise VerifyError(f"use list of operand {pos} is stale: {where()}")
        for out in node.outputs:
            if id(out) in defined:
                raise VerifyError(f"value defined twice: {where()}")
            if out.producer is not node:
                raise VerifyError(f"result does not point at its node: {where()}")
            defined.add(id(out))
        in_types = [v.type for v in node.inputs]
        try:
            opdef.verify(in_types, node.attrs)
            expected = opdef.infer_type(in_types, node.attrs)
        except VerifyError as e:
            raise VerifyError(f"{e}: {where()}") from None
        except (TypeError, AttributeError, ValueError) as e:
            # Malformed attrs (a str where a dim belongs, a wrong field type) surface here.
            raise VerifyError(f"malformed attrs ({type(e).__name__}: {e}): {where()}") from None
        if len(expected) != len(node.outputs) or not all(types_match(e, o.type) for e, o in zip(expected, node.outputs)):
            exp = ", ".join(map(str, expected))
            raise VerifyError(f"result types differ from inferred ({exp}): {where()}")
        _check_dims(node, opdef, bound, where)
    if not graph.outputs:
        raise VerifyError("graph has no outputs")
    names = [n for n, _ in graph.outputs]
    if len(set(names)) != len(names):
        raise VerifyError(f"output names repeat: {names}")
    for oname, v in graph.outputs:
        if id(v) not in defined:
            raise VerifyError(f"output {oname!r} is not defined in the graph")
