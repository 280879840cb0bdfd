"""The IR's data structures: dtypes, symbolic dims, tensor types, values, nodes, graphs.

The IR is flat, typed SSA. A `Graph` holds `inputs`, `nodes` in topological
order, `outputs` (named), and `params` (named weights kept as tensors). Every
tensor is a `Value` with a `TensorType`; each dim is an `int` or a `SymDim`, a
symbolic expression over the graph's dynamic dims (`batch`, `seq`,
`batch*seq`, `seq + 1`). Shapes that ops take as attributes (reshape, expand,
arange) use the same dims, so a graph never carries shape values at run time:
the interpreter binds the symbols from its inputs' sizes.

Data-dependent dims are sizes known only once an op has run (the number of
true elements `nonzero` finds, hence an expert's share of the tokens). They are
symbols like the others, named `n0`, `n1`, ... (`is_data_dim`): the op that
computes one says so (`OpDef.data_dims`) and holds the name in its attrs, so it
prints, parses and verifies like any dim. A symbol is bound either by a graph
input's shape or by exactly one such op earlier in the graph; the interpreter
and the backends read its size off that op's result. Data-dependent dims may be
0 (a nonzero that finds nothing), input dims are >= 1: sympy is told so.
"""

from __future__ import annotations

import enum
import functools
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Iterator, Union

import sympy
import torch


class DType(enum.Enum):
    """Element types, named as in the text form (`f32`, `i64`, ...)."""

    F64 = "f64"
    F32 = "f32"
    F16 = "f16"
    BF16 = "bf16"
    I64 = "i64"
    I32 = "i32"
    I16 = "i16"
    I8 = "i8"
    U8 = "u8"
    BOOL = "bool"

    @property
    def torch(self) -> torch.dtype:
        return _TO_TORCH[self]

    @staticmethod
    def from_torch(dtype: torch.dtype) -> "DType":
        try:
            return _FROM_TORCH[dtype]
        except KeyError:
            raise ValueError(f"t2c has no IR dtype for {dtype}") from None

    @property
    def is_float(self) -> bool:
        return self in (DType.F64, DType.F32, DType.F16, DType.BF16)

    def __str__(self) -> str:
        return self.value


_TO_TORCH = {
    DType.F64: torch.float64,
    DType.F32: torch.float32,
    DType.F16: torch.float16,
    DType.BF16: torch.bfloat16,
    DType.I64: torch.int64,
    DType.I32: torch.int32,
    DType.I16: torch.int16,
    DType.I8: torch.int8,
    DType.U8: torch.uint8,
    DType.BOOL: torch.bool,
}
_FROM_TORCH = {v: k for k, v in _TO_TORCH.items()}


def rest_of_sum(d: "SymDim", name: str) -> sympy.Expr | None:
    """`rest` when d is `name + rest` (name once, coefficient 1, not inside rest), else None:
    then name = (the size of d) - rest."""
    s = sym_symbol(name)
    rest = d.sympy - s
    return rest if s not in rest.free_symbols and d.sympy.coeff(s) == 1 else None


def solve_dims(sizes: Iterable[tuple[Dim, int]], bindings: dict[str, int]) -> dict[str, int]:
    """`bindings` with every symbol that some dim `sym + known` (a unit coefficient) determines:
    `past` from an attention_mask of `past+seq` once seq is bound, when no input has `past`
    alone (a decode state replaced the KV cache that had it). Bare dims are bound by the caller."""
    pending = [(d, n) for d, n in sizes if isinstance(d, SymDim)]
    progress = True
    while progress:
        progress = False
        for d, n in pending:
            unknown = d.symbols - set(bindings)
            if len(unknown) != 1:
                continue
            (name,) = unknown
            rest = rest_of_sum(d, name)
            if rest is None:
                continue
            bindings[name] = int(n) - int(rest.subs({sym_symbol(k): v for k, v in bindings.items()}))
            progress = True
    return bindings


@functools.lru_cache(maxsize=4096)
def _sympify(expr: str) -> sympy.Expr:
    names = {s: sym_symbol(s) for s in _identifiers(expr)}
    return sympy.sympify(expr, locals=names)


_DATA_DIM = re.compile(r"n[0-9]+")


def is_data_dim(name: str) -> bool:
    """Whether a symbol name is a data-dependent dim (`n0`, `n1`, ...): the naming scheme, in one place."""
    return _DATA_DIM.fullmatch(name) is not None


def fresh_data_dim(taken: Iterable[str]) -> str:
    """The first `nK` not in `taken`."""
    taken = set(taken)
    k = 0
    while f"n{k}" in taken:
        k += 1
    return f"n{k}"


def sym_symbol(name: str) -> sympy.Symbol:
    """The sympy symbol of a dim name: integer, >= 0 for data-dependent dims, >= 1 otherwise."""
    if is_data_dim(name):
        return sympy.Symbol(name, integer=True, nonnegative=True)
    return sympy.Symbol(name, integer=True, positive=True)


def _identifiers(expr: str) -> list[str]:
    return [t for t in re.findall(r"[A-Za-z_][A-Za-z_0-9]*", expr) if t not in _SYMPY_FUNCS]


_SYMPY_FUNCS = {"floor", "ceiling", "Mod", "Max", "Min", "FloorDiv", "CeilDiv"}


@dataclass(frozen=True)
class SymDim:
    """A symbolic dim: a canonical sympy expression over named dynamic dims."""

    expr: str

    def __post_init__(self) -> None:
        canonical = _canonical(_sympify(self.expr))
        object.__setattr__(self, "expr", canonical)

    @property
    def sympy(self) -> sympy.Expr:
        return _sympify(self.expr)

    @property
    def symbols(self) -> frozenset[str]:
        return frozenset(s.name for s in self.sympy.free_symbols)

    def __str__(self) -> str:
        return self.expr

    def __repr__(self) -> str:
        return f"SymDim({self.expr!r})"


Dim = Union[int, SymDim]


def _canonical(e: sympy.Expr) -> str:
    return str(_round_ups(e)).replace(" ", "")


def _round_ups(e: sympy.Expr) -> sympy.Expr:
    """`x + Mod(-x, W)` (x padded to a multiple of W, as torch writes `x + (W - x % W) % W`) as `W*ceiling(x/W)`.

    The same size either way for integer x, but only the second lets sympy see that it is a
    multiple of W: the chunks of a padded sequence, `floor(that/W)`, times W give it back.
    """
    if not e.has(sympy.Mod):
        return e

    def integral(q: sympy.Expr) -> bool:
        q = sympy.expand(q)
        if not q.free_symbols:
            return bool(q.is_Integer)
        return q.is_polynomial(*q.free_symbols) and all(c.is_Integer for c in sympy.Poly(q, *q.free_symbols).coeffs())

    def fold(add: sympy.Expr) -> sympy.Expr:
        for term in add.args:  # term = c * Mod(m, W), c a number (a padded size divided by something)
            c, mod = term.as_coeff_Mul()
            if isinstance(mod, sympy.Mod) and mod.args[1].is_Integer and int(mod.args[1]) > 1 and c.is_Rational and c != 0:
                m, w = mod.args
                rest = (add - term) / c
                if integral((m + rest) / w):
                    return c * w * sympy.ceiling(rest / w)
        return add

    return e.replace(lambda x: isinstance(x, sympy.Add) and x.has(sympy.Mod), fold)


def dim_from_sympy(e: Any) -> Dim:
    """An int when the expression is a number, else a `SymDim`."""
    e = sympy.sympify(e)
    if e.is_Integer:
        return int(e)
    return SymDim(_canonical(e))


def dim_sympy(d: Dim) -> sympy.Expr:
    return sympy.Integer(d) if isinstance(d, int) else d.sympy


def dim(x: Any) -> Dim:
    """Coerce an int, a str expression or a sympy expression to a `Dim`."""
    if isinstance(x, SymDim):
        return x
    if isinstance(x, bool):
        raise TypeError("a dim cannot be a bool")
    if isinstance(x, int):
        return x
    if isinstance(x, str):
        return dim_from_sympy(_sympify(x))
    return dim_from_sympy(x)


def dim_add(a: Dim, b: Dim) -> Dim:
    return dim_from_sympy(dim_sympy(a) + dim_sympy(b))


def dim_sub(a: Dim, b: Dim) -> Dim:
    return dim_from_sympy(dim_sympy(a) - dim_sympy(b))


def dim_mul(a: Dim, b: Dim) -> Dim:
    return dim_from_sympy(dim_sympy(a) * dim_sympy(b))


def dim_floordiv(a: Dim, b: Dim) -> Dim:
    return dim_from_sympy(sympy.floor(dim_sympy(a) / dim_sympy(b)))


def dim_prod(dims: Iterable[Dim]) -> Dim:
    out: Dim = 1
    for d in dims:
        out = dim_mul(out, d)
    return out


def dims_equal(a: Dim, b: Dim) -> bool:
    if isinstance(a, int) and isinstance(b, int):
        return a == b
    return sympy.simplify(dim_sympy(a) - dim_sympy(b)) == 0


def eval_dim(d: Dim, bindings: dict[str, int]) -> int:
    """The concrete size of `d` once the dynamic dims are bound."""
    if isinstance(d, int):
        return d
    fn = _compiled(d.expr)
    return int(fn(bindings))


@functools.lru_cache(maxsize=4096)
def _compiled(expr: str):
    e = _sympify(expr)
    syms = sorted(e.free_symbols, key=lambda s: s.name)
    f = sympy.lambdify(syms, e, modules=[{"floor": _floor, "ceiling": _ceil}, "math"])
    names = [s.name for s in syms]

    def run(bindings: dict[str, int]) -> int:
        try:
            return f(*(bindings[n] for n in names))
        except KeyError as missing:
            raise KeyError(f"dynamic dim {missing} is not bound") from None

    return run


def _floor(x):
    import math

    return math.floor(x)


def _ceil(x):
    import math

    return math.ceil(x)


@dataclass(frozen=True)
class TensorType:
    """dtype and shape of a tensor value."""

    dtype: DType
    shape: tuple[Dim, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "shape", tuple(dim(d) for d in self.shape))

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_static(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    def numel(self) -> Dim:
        return dim_prod(self.shape)

    def with_shape(self, shape: Iterable[Dim]) -> "TensorType":
        return TensorType(self.dtype, tuple(shape))

    def with_dtype(self, dtype: DType) -> "TensorType":
        return TensorType(dtype, self.shape)

    def concrete_shape(self, bindings: dict[str, int]) -> tuple[int, ...]:
        return tuple(eval_dim(d, bindings) for d in self.shape)

    def __str__(self) -> str:
        return f"{self.dtype}[{','.join(str(d) for d in self.shape)}]"


class Value:
    """One SSA value: a graph input, a param, or one output of a node."""

    __slots__ = ("type", "producer", "index", "name", "uses")

    def __init__(self, type: TensorType, producer: "Node | None" = None, index: int = 0, name: str | None = None):
        self.type = type
        self.producer = producer
        self.index = index
        self.name = name
        # (node, operand position) for every use; kept by Graph/Node mutation.
        self.uses: list[tuple[Node, int]] = []

    @property
    def users(self) -> list["Node"]:
        seen: dict[int, Node] = {}
        for n, _ in self.uses:
            seen.setdefault(id(n), n)
        return list(seen.values())

    def __repr__(self) -> str:
        who = self.name or (self.producer.op if self.producer else "?")
        return f"<Value {who}:{self.type}>"


@dataclass(frozen=True)
class NoAttrs:
    """Attributes of ops that take none."""


class Node:
    """One op application: `outputs = op(inputs) {attrs}`."""

    __slots__ = ("op", "inputs", "attrs", "outputs", "meta", "erased")

    def __init__(self, op: str, inputs: Iterable[Value], attrs: Any, output_types: Iterable[TensorType]):
        self.op = op
        self.inputs: tuple[Value, ...] = tuple(inputs)
        self.attrs = attrs
        self.outputs: tuple[Value, ...] = tuple(Value(t, self, i) for i, t in enumerate(output_types))
        # Where the node came from (module path, source line); never printed.
        self.meta: dict[str, Any] = {}
        # Set when the node leaves its graph. Kept on the node itself, never as a set of
        # id()s: an erased node can be freed and a new node can take its address.
        self.erased = False
        for pos, v in enumerate(self.inputs):
            v.uses.append((self, pos))

    @property
    def output(self) -> Value:
        if len(self.outputs) != 1:
            raise ValueError(f"{self.op} has {len(self.outputs)} outputs")
        return self.outputs[0]

    def set_input(self, pos: int, new: Value) -> None:
        old = self.inputs[pos]
        old.uses.remove((self, pos))
        self.inputs = self.inputs[:pos] + (new,) + self.inputs[pos + 1 :]
        new.uses.append((self, pos))

    def drop_uses(self) -> None:
        for pos, v in enumerate(self.inputs):
            v.uses.remove((self, pos))

    def __repr__(self) -> str:
        return f"<Node {self.op}>"


@dataclass
class Graph:
    """A function: inputs, nodes in topological order, named outputs, named params."""

    name: str = "main"
    inputs: list[Value] = field(default_factory=list)
    nodes: list[Node] = field(default_factory=list)
    outputs: list[tuple[str, Value]] = field(default_factory=list)
    # name -> Value (the SSA value uses see) and name -> tensor (the data, may be absent
    # for graphs parsed from text, whose params carry only their types).
    param_values: dict[str, Value] = field(default_factory=dict)
    params: dict[str, torch.Tensor] = field(default_factory=dict)
    # Divisibility the dynamic dims must obey, symbol -> modulus: {"seq": 4} is `seq % 4 == 0`
    # (a model that views seq tokens as seq/4 windows of 4). The frontend records what
    # torch.export required; shapes inside the graph are exact under it (`seq/4`), and
    # every runner refuses inputs that break it (`check_constraints`).
    constraints: dict[str, int] = field(default_factory=dict)
    # Upper bounds, symbol -> largest size: {"seq": 2048} is `seq <= 2048` (a table of 2048
    # positions that the trace sliced with `Max(0, 2048 - seq)`, decided as `2048 - seq`).
    bounds: dict[str, int] = field(default_factory=dict)
    # Inputs that stand for a state the model itself keeps in another form, input name -> how
    # to build it from that form (ir/states.py): a linear-attention decode state replaces a KV
    # cache (passes/linear_state.py). Validation builds them from inputs in the model's own
    # form (precision.graph_inputs), so the graph stays comparable with eager.
    states: dict[str, dict] = field(default_factory=dict)

    # -- construction -------------------------------------------------------------
    def add_input(self, name: str, type: TensorType) -> Value:
        v = Value(type, None, 0, name)
        self.inputs.append(v)
        return v

    def add_param(self, name: str, tensor: torch.Tensor | None, type: TensorType | None = None) -> Value:
        if name in self.param_values:
            raise ValueError(f"param {name!r} already exists")
        if type is None:
            assert tensor is not None
            type = TensorType(DType.from_torch(tensor.dtype), tuple(tensor.shape))
        v = Value(type, None, 0, name)
        self.param_values[name] = v
        if tensor is not None:
            self.params[name] = tensor
        return v

    def fresh_param_name(self, stem: str) -> str:
        i = 0
        while f"{stem}{i}" in self.param_values:
            i += 1
        return f"{stem}{i}"

    def add_node(self, op: str, inputs: Iterable[Value], attrs: Any = None, output_types: Iterable[TensorType] | None = None, *, before: Node | None = None) -> Node:
        """Create a node, inferring output types from the op registry when not given."""
        from .ops import get_op

        inputs = tuple(inputs)
        opdef = get_op(op)
        if attrs is None:
            attrs = opdef.attrs()
        if output_types is None:
            output_types = opdef.infer_type([v.type for v in inputs], attrs)
        node = Node(op, inputs, attrs, output_types)
        if before is None:
            self.nodes.append(node)
        else:
            self.nodes.insert(self.nodes.index(before), node)
        return node

    def set_output(self, name: str, value: Value) -> None:
        self.outputs.append((name, value))

    # -- queries ------------------------------------------------------------------
    def is_param(self, v: Value) -> bool:
        return v.producer is None and v.name in self.param_values and self.param_values[v.name] is v

    def is_input(self, v: Value) -> bool:
        return any(v is i for i in self.inputs)

    def param_name(self, v: Value) -> str | None:
        return v.name if self.is_param(v) else None

    def output_values(self) -> list[Value]:
        return [v for _, v in self.outputs]

    def op_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for n in self.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        return dict(sorted(counts.items()))

    def symbols(self) -> list[str]:
        """Names of the dynamic dims bound by the graph inputs, in order of appearance."""
        out: list[str] = []
        for v in self.inputs:
            for d in v.type.shape:
                if isinstance(d, SymDim):
                    for s in sorted(d.symbols):
                        if s not in out:
                            out.append(s)
        return out

    def constraint_lines(self) -> list[str]:
        """The constraints as text, `seq % 4 == 0` then `seq <= 2048`, in symbol order."""
        return ([f"{s} % {m} == 0" for s, m in sorted(self.constraints.items())]
                + [f"{s} <= {n}" for s, n in sorted(self.bounds.items())])

    def constrained_symbols(self) -> set[str]:
        return set(self.constraints) | set(self.bounds)

    def check_constraints(self, bindings: dict[str, int]) -> list[str]:
        """What the bound dims break: `seq = 10, but the graph needs seq % 4 == 0`, one line each."""
        return ([f"{s} = {bindings[s]}, but the graph needs {s} % {m} == 0"
                 for s, m in sorted(self.constraints.items()) if s in bindings and bindings[s] % m]
                + [f"{s} = {bindings[s]}, but the graph needs {s} <= {n}"
                   for s, n in sorted(self.bounds.items()) if s in bindings and bindings[s] > n])

    def __iter__(self) -> Iterator[Node]:
        return iter(list(self.nodes))

    # -- mutation -----------------------------------------------------------------
    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Point every use of `old` (node operands and graph outputs) at `new`."""
        if old is new:
            return
        for node, pos in list(old.uses):
            node.set_input(pos, new)
        self.outputs = [(n, new if v is old else v) for n, v in self.outputs]

    def remove_node(self, node: Node) -> None:
        for out in node.outputs:
            if out.uses or any(out is v for v in self.output_values()):
                raise ValueError(f"cannot remove {node.op}: its result is still used")
        node.drop_uses()
        self.nodes.remove(node)
        node.erased = True

    def remove_nodes(self, nodes: Iterable[Node]) -> int:
        """Remove many nodes whose results are unused, in one sweep over the node list (linear)."""
        doomed = set(nodes)
        for n in doomed:
            n.drop_uses()
            n.erased = True
        self.nodes = [n for n in self.nodes if n not in doomed]
        return len(doomed)

    def remove_unused_params(self) -> int:
        dead = [n for n, v in self.param_values.items() if not v.uses and not any(v is o for o in self.output_values())]
        for n in dead:
            del self.param_values[n]
            self.params.pop(n, None)
        return len(dead)

    def copy(self) -> "Graph":
        """A structural copy sharing param tensors (they are never mutated in place)."""
        from .printer import print_graph
        from .parser import parse_graph

        g = parse_graph(print_graph(self))
        g.params = dict(self.params)
        for old, new in zip(self.nodes, g.nodes):
            new.meta = dict(old.meta)
        return g
