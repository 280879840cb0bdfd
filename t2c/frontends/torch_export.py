"""Frontend: torch.export (non-strict) -> FX (core ATen, high-level ops kept) -> t2c IR.

Steps, in order:
1. wrap the module so it takes named tensors and returns a flat tuple, remembering
   the output names (`logits`, `last_hidden_state`, ...);
2. for Hugging Face models, turn the KV cache off and swap MoE blocks for `t2c::moe`;
3. export with dynamic `batch`/`seq` dims where the example allows;
4. decompose to core ATen, keeping linear, layer_norm, SDPA, silu, gelu, softmax whole;
5. convert each FX node once through the table in `aten_table.py` (data-dependent
   ops in `aten_data_dependent.py`); an op with no conversion is a
   `UnsupportedOpError` naming the op, the module and the source line.

Symbols: the dims torch.export made dynamic are named after their labels (`batch`,
`seq`); an unbacked SymInt (`u0`: a size only the data decides, such as the row
count of `nonzero`) becomes a data-dependent dim `n0`, `n1`, ... in order of
appearance, named by the conversion of the op that computes it. A dim torch.export
needs divisible (`seq = 4*_seq`, windows of 4) stays `seq` with the graph constraint
`seq % 4 == 0`; a Max/Min the traced range decides becomes its winner, the deciding
bound a constraint `seq <= N` (see `_export_named` and `Converter._decide_min_max`).
"""

from __future__ import annotations

import functools
import operator
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import sympy
import torch
import torch.fx

from ..errors import UnsupportedOpError, UserError, VerifyError
from ..ir.core import Dim, DType, Graph, SymDim, TensorType, Value, dim_from_sympy, dim_sympy, fresh_data_dim, is_data_dim, sym_symbol
from ..ir.verifier import types_match
from . import hf
from .loaders import LoadedModel, default_dynamic_dims
from .guard_facts import equal_dims, guard_divisors, on_pinned_range, pin_breaking_sizes, pinned_bounds, shape_env
from .aten_table import CONVERSIONS, IDENTITY_OPS, SCALAR_OPS, SKIPPED_OPS, SYMBOLIC_OPS
from . import aten_data_dependent  # noqa: F401,E402  (registers its conversions in the same table)
from . import aten_complex  # noqa: F401,E402  (complex tensors as pairs of reals; same table)

_WRAPPER_PREFIX = "inner."


class NamedOutputs(torch.nn.Module):
    """Calls the model with keyword tensors; returns a flat tuple and records output names."""

    def __init__(self, inner: torch.nn.Module, input_names: list[str], output_names: list[str]):
        super().__init__()
        self.inner = inner
        self.input_names = input_names
        # Written through a closure, not a module attribute: torch.export restores module
        # attributes it saw mutated, which would throw the names away.
        self._record_names = lambda found: output_names.__setitem__(slice(None), found)

    def forward(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.inner(**dict(zip(self.input_names, inputs)))
        names, values = flatten_outputs(out)
        self._record_names(names)
        return tuple(values)


def flatten_outputs(out: Any) -> tuple[list[str], list[torch.Tensor]]:
    """Output names and tensors: ModelOutput/dict keys, `output_i` for tuples, `output` alone."""
    if isinstance(out, torch.Tensor):
        return ["output"], [out]
    if isinstance(out, Mapping):  # includes transformers' ModelOutput
        items = [(k, v) for k, v in out.items() if isinstance(v, torch.Tensor)]
        return [k for k, _ in items], [v for _, v in items]
    if isinstance(out, (tuple, list)):
        names, values = [], []
        for i, v in enumerate(out):
            if isinstance(v, torch.Tensor):
                names.append(f"output_{i}")
                values.append(v)
        return names, values
    raise UserError(f"the model returned {type(out).__name__}; t2c needs tensors, a tuple of tensors or a dict of tensors")


_aten = torch.ops.aten
# High-level ops t2c keeps whole (its passes and backends want them as they are).
_KEPT_WHOLE = frozenset(
    [_aten.linear.default, _aten.layer_norm.default, _aten.scaled_dot_product_attention.default,
     _aten.silu.default, _aten.gelu.default, _aten.softmax.int, _aten._softmax.default,
     _aten.log_softmax.int, _aten._log_softmax.default, _aten.embedding.default]
    + ([_aten.rms_norm.default] if hasattr(_aten, "rms_norm") else []))


@functools.lru_cache(maxsize=1)
def _core_table() -> dict:
    table = torch.export.default_decompositions()
    for op in _KEPT_WHOLE:
        table.pop(op, None)
    return table


def decomposition_table() -> dict:
    """Core ATen decompositions, minus the high-level ops t2c keeps whole."""
    return dict(_core_table())


def _dynamic_examples(examples: dict[str, torch.Tensor], dynamic_dims: dict[str, dict[int, str]]) -> dict[str, torch.Tensor]:
    """Examples whose dynamic dims are >= 2: torch.export specialises dims of size 0 and 1."""
    out = {}
    for name, t in examples.items():
        for axis in dynamic_dims.get(name, {}):
            if t.dim() > axis and t.shape[axis] < 2:
                reps = [1] * t.dim()
                reps[axis] = 2
                t = t.repeat(*reps)
        out[name] = t
    return out


def export(module: torch.nn.Module, examples: dict[str, torch.Tensor], dynamic_dims: dict[str, dict[int, str]]) -> tuple[torch.export.ExportedProgram, list[str]]:
    """torch.export the module (non-strict); returns the decomposed program and output names."""
    output_names: list[str] = []
    wrapper = NamedOutputs(module, list(examples), output_names).eval()
    examples = _dynamic_examples(examples, dynamic_dims)
    with hf.prepared_for_tracing(module), torch.no_grad(), warnings.catch_warnings():
        # torch.export's own internals warn about its pytree API; that is not the user's business.
        warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
        try:
            # One named Dim per label, so inputs that share `seq` share one symbol. If the
            # model constrains a dim (a position table of 512, say), named Dims are refused;
            # Dim.AUTO then lets torch.export keep what it can dynamic.
            # torch's own constraint solver may also fail while it words its suggested fixes
            # (LongT5: an AssertionError building a Dim with min 0, max -oo): Dim.AUTO then too.
            try:
                ep = _export_named(wrapper, examples, dynamic_dims)
            except (torch._dynamo.exc.UserError, AssertionError):  # type: ignore[attr-defined]
                ep = _export(wrapper, examples, dynamic_dims, named=False)
                ep = _unpinned(ep, wrapper, examples, dynamic_dims)
        except torch._dynamo.exc.UserError as e:  # type: ignore[attr-defined]
            raise UserError(f"torch.export could not trace the model: {_first_line(e)}") from e
        except Exception as e:  # noqa: BLE001 - surface the first line, keep the cause for --debug
            raise UserError(f"torch.export failed: {type(e).__name__}: {_first_line(e)}") from e
        ep = decomposed(ep)
    return ep, output_names


def _convertible(node: torch.fx.Node) -> bool:
    """Whether _convert_call takes this node as it is (a functional op it has a conversion for)."""
    t = node.target
    if t in IDENTITY_OPS:
        return True
    if isinstance(t, torch._ops.OpOverload) and t._schema.is_mutable:
        return False
    if t in SKIPPED_OPS or t in SYMBOLIC_OPS or t in SCALAR_OPS or t is operator.getitem:
        return True
    if t in CONVERSIONS:
        return True
    return isinstance(node.meta.get("val"), (torch.SymInt, int)) and not isinstance(node.meta.get("val"), bool)


def decomposed(ep: torch.export.ExportedProgram) -> torch.export.ExportedProgram:
    """The program in ops the frontend converts: torch.export's graph itself when every node is
    already one (functional, no mutated buffers or inputs), else core ATen via run_decompositions.

    run_decompositions traces the whole program again (about as long as the export itself, the
    largest share of trace time on a small model); most transformer graphs need none of it.
    An op without a conversion (or an in-place one) sends the program through the decompositions.
    """
    sig = ep.graph_signature
    mutates = bool(getattr(sig, "buffers_to_mutate", {})) or bool(getattr(sig, "user_inputs_to_mutate", {}))
    calls = [n for n in ep.graph.nodes if n.op == "call_function"]
    if not mutates and all(_convertible(n) for n in calls) and all(_polynomial_sizes(n) for n in calls):
        return ep
    return ep.run_decompositions(decomposition_table())


def _polynomial_sizes(node: torch.fx.Node) -> bool:
    """Whether every size of the node's result is a polynomial of the dims (no Max, floor division,
    modulo...). The retrace of run_decompositions simplifies such sizes with the ranges torch's guards
    established (`16 - Max(0, 16 - seq)` is `seq` once `seq <= 16` is known); the frontend's guard
    facts expect sizes in that simplified form, so a program holding others is decomposed."""
    val = node.meta.get("val")
    for t in val if isinstance(val, (tuple, list)) else (val,):
        if isinstance(t, torch.Tensor):
            for d in t.shape:
                if isinstance(d, torch.SymInt):
                    expr = d.node.expr
                    if not expr.is_polynomial(*expr.free_symbols):
                        return False
    return True


def _export(wrapper: torch.nn.Module, examples: dict[str, torch.Tensor], dynamic_dims: dict[str, dict[int, str]], *, named: bool, derived: dict[str, int] | None = None):
    """`derived` {label: W}: that label's dim is exported as W * a root dim (`seq = 4*_seq`)."""
    dims: dict[str, Any] = {}

    def spec(label: str):
        if not named or not label.isidentifier():  # a sum of labels (`past+seq`): torch names it, convert relates it
            return torch.export.Dim.AUTO
        if label not in dims:
            w = (derived or {}).get(label)
            dims[label] = w * torch.export.Dim(f"_{label}") if w else torch.export.Dim(label)
        return dims[label]

    # Positional, in the order of `examples`; *inputs is one (tuple) argument to torch.export.
    shapes = tuple({axis: spec(label) for axis, label in dynamic_dims.get(name, {}).items()} or None for name in examples)
    return torch.export.export(wrapper, tuple(examples.values()), dynamic_shapes=(shapes,), strict=False)


def _unpinned(ep, wrapper: torch.nn.Module, examples: dict[str, torch.Tensor], dynamic_dims: dict[str, dict[int, str]]):
    """A Dim.AUTO program traced again at a longer example when its guards pin a size to the example's.

    A Mamba-2 scan pads `seq` to a multiple of its chunk and views it as chunks: with fewer
    tokens than one chunk, torch.export's guards hold `(seq + pad) // chunk == 1` and its shapes
    say one chunk (cumsum's says 1, the views' `(seq + pad) // chunk`), a program only valid for
    seq <= chunk while its range says [2, oo]. A guard `size == N` that a longer value of one
    dynamic dim breaks is such a pin: the examples are tiled to the shortest such value and
    exported again, once. If that one fails or pins too, the first program stays, and a pin of it
    that holds from one token up is a bound (guard_facts.py).
    """
    longer = pin_breaking_sizes(ep, examples, dynamic_dims)
    if not longer:
        return ep
    again = _export_resized(wrapper, examples, dynamic_dims, longer)
    if again is not None and not pin_breaking_sizes(again[0], again[1], dynamic_dims):
        return again[0]
    # The pin stays (a Python loop over chunks unrolls once per chunk of the example): the program
    # is kept; if its pins hold from one token up, the bound they imply (guard_facts.pinned_bounds)
    # becomes a constraint of the graph. (Tracing such a model again at one chunk when the example
    # has several also re-traced MiniMax, whose lightning attention then narrowed seq to [2, 3].)
    return ep


def _export_resized(wrapper: torch.nn.Module, examples: dict[str, torch.Tensor], dynamic_dims: dict[str, dict[int, str]], sizes: dict[str, int]):
    """(program, examples): the Dim.AUTO program at the examples tiled or cut to `sizes` along their labels; None if the model refuses them."""
    out = {}
    for name, t in examples.items():
        for axis, label in dynamic_dims.get(name, {}).items():
            if label in sizes and t.dim() > axis:
                t = t.index_select(axis, torch.arange(sizes[label]) % t.shape[axis])
        out[name] = t
    try:
        return _export(wrapper, out, dynamic_dims, named=False), out
    except Exception:  # noqa: BLE001 - the model refuses that example: the caller keeps what torch traced first
        return None


def _export_named(wrapper: torch.nn.Module, examples: dict[str, torch.Tensor], dynamic_dims: dict[str, dict[int, str]]):
    """Export with one named Dim per label; a label torch.export needs divisible is retried as W * root.

    A model that views `seq` tokens as `seq // W` windows of W only traces when seq is a
    multiple of W: torch.export refuses a plain `seq` with a constraint violation whose
    suggested fix is a derived dim (`_seq = Dim('_seq')`, `seq = 4*_seq`). t2c takes such
    fixes (and only those: a bound such as `max=512` still falls back to Dim.AUTO), exports
    again, and `convert` turns the root back into `seq` with the constraint `seq % 4 == 0`.
    """
    derived: dict[str, int] = {}
    first: Exception | None = None
    doubled = False
    for _ in range(5):  # each retry may reveal the divisibility of one more label
        try:
            return _export(wrapper, _derived_examples(examples, dynamic_dims, derived), dynamic_dims, named=True, derived=derived)
        except Exception as e:  # noqa: BLE001 - a retry that fails otherwise (the model refuses the longer example) is the first error's
            if not isinstance(e, torch._dynamo.exc.UserError):  # type: ignore[attr-defined]
                if first is None:
                    raise
                raise first from None
            first = first or e
            found = _suggested_multiples(str(e), dynamic_dims)
            pinned = _suggested_pins(str(e), dynamic_dims, examples)
            if found and not any(derived.get(k) == w for k, w in found.items()):
                derived.update(found)
            elif pinned and not doubled and not derived:
                # `seq = 4` for an example of 4 tokens: one window, so torch pinned seq (its root
                # would be 1). Once, try the example twice as long along the pinned labels.
                doubled = True
                examples = _tiled_examples(examples, dynamic_dims, pinned)
            else:
                raise first from None
    assert first is not None
    raise first


_DERIVED_FIX = re.compile(r"^\s*([A-Za-z_][A-Za-z_0-9]*) = ([0-9]+)\*_([A-Za-z_][A-Za-z_0-9]*)\s*$")


def _suggested_multiples(message: str, dynamic_dims: dict[str, dict[int, str]]) -> dict[str, int]:
    """{label: W} for each `label = W*_label` line of torch.export's "Suggested fixes"."""
    labels = {label for axes in dynamic_dims.values() for label in axes.values()}
    _, _, fixes = message.partition("Suggested fixes:")
    out = {}
    for line in fixes.strip().split("\n\n")[0].splitlines():
        m = _DERIVED_FIX.match(line)
        if m and m.group(1) in labels and m.group(3) == m.group(1) and int(m.group(2)) > 1:
            out[m.group(1)] = int(m.group(2))
    return out


_PIN_FIX = re.compile(r"^\s*([A-Za-z_][A-Za-z_0-9]*) = ([0-9]+)\s*$")


def _suggested_pins(message: str, dynamic_dims: dict[str, dict[int, str]], examples: dict[str, torch.Tensor]) -> set[str]:
    """Labels a `label = N` fix pins to their example's own size N."""
    sizes = {label: examples[name].shape[axis] for name, axes in dynamic_dims.items() if name in examples
             for axis, label in axes.items() if examples[name].dim() > axis}
    _, _, fixes = message.partition("Suggested fixes:")
    out = set()
    for line in fixes.strip().split("\n\n")[0].splitlines():
        m = _PIN_FIX.match(line)
        if m and sizes.get(m.group(1)) == int(m.group(2)):
            out.add(m.group(1))
    return out


def _tiled_examples(examples: dict[str, torch.Tensor], dynamic_dims: dict[str, dict[int, str]], labels: set[str]) -> dict[str, torch.Tensor]:
    out = {}
    for name, t in examples.items():
        for axis, label in dynamic_dims.get(name, {}).items():
            if label in labels and t.dim() > axis:
                t = t.index_select(axis, torch.arange(2 * t.shape[axis]) % t.shape[axis])
        out[name] = t
    return out


def _derived_examples(examples: dict[str, torch.Tensor], dynamic_dims: dict[str, dict[int, str]], derived: dict[str, int]) -> dict[str, torch.Tensor]:
    """Examples whose derived dims are W * (a root >= 2): torch.export specialises a root of 1."""
    if not derived:
        return examples
    out = {}
    for name, t in examples.items():
        for axis, label in dynamic_dims.get(name, {}).items():
            w = derived.get(label)
            if w and t.dim() > axis and t.shape[axis] < 2 * w and t.shape[axis] % w == 0:
                t = t.index_select(axis, torch.arange(2 * w) % t.shape[axis])
        out[name] = t
    return out


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


@dataclass
class Converter:
    """State of one FX -> IR conversion; handlers in `aten_table` call back into it."""

    graph: Graph
    ep: torch.export.ExportedProgram
    symbols: dict[sympy.Symbol, sympy.Symbol] = field(default_factory=dict)
    env: dict[torch.fx.Node, Any] = field(default_factory=dict)
    node: torch.fx.Node | None = None
    # Unbacked symbols that `t.item()` made from a 0-d integer IR value: used as a size, the
    # value becomes a data-dependent dim through a `data_size` node (emitted on first use).
    scalar_sources: dict[sympy.Symbol, Value] = field(default_factory=dict)
    # Results a conversion shares with later ones (the nonzero of a boolean mask, read by
    # `x[mask]` and written by `x[mask] = v`: one data-dependent dim for both).
    memo: dict[Any, Any] = field(default_factory=dict)

    # -- helpers for handlers -------------------------------------------------------
    def lookup(self, arg: torch.fx.Node) -> Any:
        """What an FX node converted to; a size that could not be converted raises its error now."""
        v = self.env[arg]
        if isinstance(v, Unresolved):
            raise v.error
        return v

    def value(self, arg: Any) -> Value:
        if not isinstance(arg, torch.fx.Node):
            raise self.unsupported(f"expected a tensor operand, got {arg!r}")
        v = self.lookup(arg)
        if not isinstance(v, Value):
            raise self.unsupported(f"expected a tensor operand, got the symbolic size {v}")
        return v

    def maybe_value(self, arg: Any) -> Value | None:
        return None if arg is None else self.value(arg)

    def dim(self, x: Any) -> Dim:
        """A size argument (int, SymInt or an FX node computing one) as an IR dim."""
        if isinstance(x, torch.fx.Node):
            v = self.lookup(x)
            if isinstance(v, Value):
                raise self.unsupported("a size computed from tensor data (data-dependent shapes are not supported)")
            return v
        if isinstance(x, torch.SymInt):
            return self.sym(x)
        if isinstance(x, bool) or not isinstance(x, int):
            raise self.unsupported(f"expected a size, got {x!r}")
        return x

    def sym(self, x: Any) -> Dim:
        if isinstance(x, int):
            return x
        expr = x.node.expr if isinstance(x, torch.SymInt) else x
        for s in sorted(expr.free_symbols, key=str):
            if _is_unbacked(s) and s not in self.symbols and s in self.scalar_sources:
                self._bind_scalar(s)
        unnamed = [s for s in expr.free_symbols if _is_unbacked(s) and s not in self.symbols]
        if unnamed:
            raise self.unsupported(f"a size known only at run time ({unnamed[0]}) that no op t2c converts computes")
        expr = expr.xreplace(self.memo.get("divisible", {}))
        d = dim_from_sympy(self._decide_min_max(_plain_sympy(expr)).xreplace(self.symbols))
        return on_pinned_range(d, self.memo.get("pinned", {}))

    def _decide_min_max(self, expr: sympy.Expr) -> sympy.Expr:
        """Max/Min whose winner the dims' ranges decide, replaced by the winner.

        An ALiBi table of `max_seq_len` sliced from `max(0, 2048 - seq)` has `2048 - Max(0, 2048 - seq)`
        rows, which is `seq` only because the trace's guards hold seq <= 2048 (the add that
        follows needs it; they hold it to 2047). The range of each symbol is the trace's
        (`_ranges`); a finite upper bound in a decision becomes a constraint of the graph
        (`seq <= 2047`), checked at run time.
        """
        def kind(e: sympy.Expr) -> str | None:  # sympy's Max/Min or torch's own (torch.utils._sympy.functions)
            name = type(e).__name__
            return name if name in ("Max", "Min") and isinstance(e, sympy.Basic) and e.args else None

        if not any(kind(e) for e in sympy.preorder_traversal(expr)):
            return expr
        from torch.utils._sympy.value_ranges import bound_sympy

        ranges = self._ranges()

        def decide(e: sympy.Expr) -> sympy.Expr:
            if not kind(e):
                return e
            for x in e.args:
                diffs = [x - y for y in e.args if y is not x]
                try:
                    bounds = [bound_sympy(d, ranges) for d in diffs]
                except Exception:  # noqa: BLE001 - an expression torch cannot bound stays as it is
                    return e
                if all((b.lower >= 0) if kind(e) == "Max" else (b.upper <= 0) for b in bounds):
                    for d in diffs:
                        self._record_bounds(d, ranges)
                    return x
            return e

        return expr.replace(lambda e: kind(e) is not None, decide)

    def _ranges(self) -> dict:
        """Each input symbol's range: the program's range constraints, narrowed by the trace's guards.

        With Dim.AUTO the guard `Eq(seq, 2048 - Max(0, 2048 - seq))` (the trace holds only for
        seq <= 2048) narrows the shape env's range of seq but not `range_constraints`.
        """
        from torch.utils._sympy.value_ranges import ValueRanges

        if "ranges" in self.memo:
            return self.memo["ranges"]
        ranges = {k: v for k, v in self.ep.range_constraints.items() if isinstance(k, sympy.Symbol)}
        env = shape_env(self.ep)
        for sym, vr in (getattr(env, "var_to_range", None) or {}).items():
            if sym in ranges:
                ranges[sym] = ranges[sym] & vr
        # torch assumes dynamic dims >= 2 (it specialises 0 and 1); the IR's run for 1 too (a
        # decoder's single new token), so no decision may lean on more than >= 1.
        ranges = {k: ValueRanges(min(v.lower, 1), v.upper) for k, v in ranges.items()}
        self.memo["ranges"] = ranges
        return ranges

    def _record_bounds(self, expr: sympy.Expr, ranges: dict) -> None:
        """`label <= N` for each input dim in `expr` whose exported range is bounded above."""
        for s in expr.free_symbols:
            vr = ranges.get(s)
            named = self.symbols.get(s)
            if vr is None or named is None or not vr.upper.is_finite or len(named.free_symbols) != 1:
                continue
            (label,) = named.free_symbols
            scale = sympy.simplify(label / named)  # 1, or W for a derived dim (root = label/W)
            if scale.is_Integer:
                bound = int(vr.upper) * int(scale)
                prev = self.graph.bounds.get(label.name)
                self.graph.bounds[label.name] = bound if prev is None else min(prev, bound)

    def _taken(self) -> set[str]:
        """Names already used (a derived input dim maps to an expression, `seq/4`)."""
        return {s.name for e in self.symbols.values() for s in e.free_symbols}

    def _bind_scalar(self, s: sympy.Symbol) -> None:
        from ..ir.opdefs.data_dependent import DataSizeAttrs

        remainder = self.memo.get("split_remainders", {}).get(s)
        if remainder is not None:  # what the split's other sizes leave of its total (`split_remainders`)
            total, others = remainder
            self.symbols[s] = dim_sympy(self.sym(total)) - sum((dim_sympy(self.sym(o)) for o in others), sympy.Integer(0))
            return
        name = fresh_data_dim(self._taken())
        self.symbols[s] = sym_symbol(name)
        self.emit("data_size", [self.scalar_sources[s]], DataSizeAttrs(SymDim(name)))

    def data_dim(self, size: Any = None) -> SymDim:
        """Name the unbacked SymInt `size` (a data-dependent size the current node computes) `n0`, `n1`, ...

        Without `size`: a fresh name for a data-dependent size torch's trace does not name."""
        if size is None:
            name = fresh_data_dim(self._taken())
            self.symbols[sympy.Symbol(f"_t2c_{name}")] = sym_symbol(name)
            return SymDim(name)
        expr = size.node.expr if isinstance(size, torch.SymInt) else size
        if not (isinstance(expr, sympy.Symbol) and _is_unbacked(expr)):
            raise self.unsupported(f"expected a data-dependent size, got {size}")
        if expr not in self.symbols:
            name = fresh_data_dim(self._taken())
            self.symbols[expr] = sym_symbol(name)
        return SymDim(self.symbols[expr].name)

    def meta_type(self, node: torch.fx.Node | None = None, index: int | None = None) -> TensorType:
        node = node or self.node
        val = node.meta.get("val")
        if index is not None:
            val = val[index]
        if not isinstance(val, torch.Tensor):
            raise self.unsupported("the traced node has no tensor metadata")
        return TensorType(DType.from_torch(val.dtype), tuple(self.sym(s) for s in val.shape))

    def meta_types(self) -> list[TensorType]:
        vals = self.node.meta.get("val")
        return [self.meta_type(index=i) for i in range(len(vals))]

    def emit(self, op: str, inputs: list[Value], attrs: Any = None) -> Value:
        return self.graph.add_node(op, inputs, attrs).output

    def emit_multi(self, op: str, inputs: list[Value], attrs: Any = None) -> tuple[Value, ...]:
        return self.graph.add_node(op, inputs, attrs).outputs

    def scalar(self, value: Any, like: Value | None = None) -> Value:
        """A 0-d constant for a Python scalar; takes `like`'s dtype when that keeps torch's promotion."""
        from ..ir.opdefs.creation import FullAttrs

        if isinstance(value, torch.fx.Node):
            d = self.dim(value)
            return self.emit("full", [], FullAttrs((), d, DType.I64))
        if isinstance(value, torch.SymInt):
            return self.emit("full", [], FullAttrs((), self.sym(value), DType.I64))
        if isinstance(value, bool):
            dtype = DType.BOOL
        elif isinstance(value, int):
            dtype = like.type.dtype if like is not None and like.type.dtype not in (DType.BOOL,) else DType.I64
        elif isinstance(value, float):
            dtype = like.type.dtype if like is not None and like.type.dtype.is_float else DType.F32
            if not dtype.is_float:
                dtype = DType.F32
        else:
            raise self.unsupported(f"unsupported scalar {value!r}")
        if isinstance(value, int) and not isinstance(value, bool) and dtype.is_float:
            value = float(value)
        return self.emit("full", [], FullAttrs((), value, dtype))

    def operand(self, arg: Any, like: Value | None = None) -> Value:
        """A tensor operand, or a 0-d constant for a scalar argument."""
        if isinstance(arg, torch.fx.Node) and isinstance(self.lookup(arg), Value):
            return self.env[arg]
        return self.scalar(arg, like)

    def unsupported(self, why: str) -> UnsupportedOpError:
        return UnsupportedOpError(f"{why} at {describe_node(self.node, self.ep)}")


@dataclass(frozen=True)
class Unresolved:
    """A size the frontend could not express (a float from `.item()`, a size only the data decides).

    Stored instead of failing at once: torch.export's runtime assertions compute such
    sizes only to check them, and the table skips those checks. A conversion that
    really uses it raises the error then.
    """

    error: Exception


def _root_and_multiple(expr: sympy.Expr) -> tuple[sympy.Symbol | None, int]:
    """`s` -> (s, 1); `4*s` (a derived dim) -> (s, 4); anything else -> (None, 0)."""
    if isinstance(expr, sympy.Symbol):
        return expr, 1
    if isinstance(expr, sympy.Mul) and len(expr.args) == 2:
        c, s = sorted(expr.args, key=lambda a: not a.is_Integer)
        if c.is_Integer and int(c) > 1 and isinstance(s, sympy.Symbol):
            return s, int(c)
    return None, 0


def _is_unbacked(s: sympy.Symbol) -> bool:
    from torch.utils._sympy.symbol import SymT, symbol_is_type

    return symbol_is_type(s, SymT.UNBACKED_INT)


def _plain_sympy(expr: sympy.Expr) -> sympy.Expr:
    """Rewrite torch's sympy helpers (FloorDiv, CleanDiv, ...) into plain sympy."""
    from torch.utils._sympy import functions as F

    repl = {}
    for cls_name, fn in (("FloorDiv", lambda a, b: sympy.floor(a / b)), ("CleanDiv", lambda a, b: a / b), ("IntTrueDiv", lambda a, b: a / b), ("CeilDiv", lambda a, b: sympy.ceiling(a / b)), ("PythonMod", sympy.Mod), ("Mod", sympy.Mod), ("TruncToInt", lambda a: sympy.floor(a)),
                        ("CeilToInt", sympy.ceiling), ("FloorToInt", sympy.floor), ("ToFloat", lambda a: a),
                        ("FloatTrueDiv", lambda a, b: a / b)):
        cls = getattr(F, cls_name, None)
        if cls is not None:
            repl[cls] = fn
    for cls, fn in repl.items():
        expr = expr.replace(cls, fn)
    # Float sizes (`arange(0, 2 * seq, 1.0)`): exact rationals, so integral results simplify.
    floats = expr.atoms(sympy.Float)
    if floats:
        expr = expr.xreplace({f: sympy.Rational(str(f)) for f in floats})
    return expr


def describe_node(node: torch.fx.Node | None, ep: Any = None) -> str:
    """`module path (file:line)` of an FX node, from its metadata."""
    if node is None:
        return "<unknown>"
    module = module_path(node) or "<top level>"
    line = source_line(node)
    return f"{module}" + (f" ({line})" if line else "")


def module_path(node: torch.fx.Node) -> str | None:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return None
    path = list(stack.values())[-1][0]
    path = re.sub(r"^L\['self'\]\.?", "", path)
    path = path[len(_WRAPPER_PREFIX):] if path.startswith(_WRAPPER_PREFIX) else path
    if path == "inner":
        return None
    return path


def source_line(node: torch.fx.Node) -> str | None:
    trace = node.meta.get("stack_trace") or ""
    frames = re.findall(r'File "([^"]+)", line (\d+), in [^\n]*\n\s*([^\n]*)', trace)
    if not frames:
        return None
    file, line, code = frames[-1]
    return f"{file}:{line}: {code.strip()}"


def _param_name(target: str) -> str:
    name = target[len(_WRAPPER_PREFIX):] if target.startswith(_WRAPPER_PREFIX) else target
    return re.sub(r"[^A-Za-z0-9_.\-]", "_", name)


def label_expr(label: str) -> sympy.Expr:
    """A dynamic-dim label written as a sum of other labels (`past+seq`: an attention mask over a
    KV cache and the new tokens) as the expression of the symbols those labels name. torch.export
    cannot declare such a dim (its derived dims are `a*x + b` of one root), so the input is traced
    with a symbol of its own and this expression stands for it in the IR."""
    terms = [t.strip() for t in label.split("+")]
    if not terms or not all(t.isidentifier() for t in terms):
        raise UserError(f"dynamic dim label {label!r}: write a name, or names joined by '+'")
    return sympy.Add(*(sym_symbol(t) for t in terms))


def convert(ep: torch.export.ExportedProgram, output_names: list[str], *, name: str = "main", input_names: list[str] | None = None, dim_names: dict[tuple[str, int], str] | None = None) -> Graph:
    """Convert a decomposed ExportedProgram into an IR graph (weights attached)."""
    from torch.export.graph_signature import InputKind

    graph = Graph(name)
    conv = Converter(graph, ep)
    specs = {s.arg.name: s for s in ep.graph_signature.input_specs}
    user_placeholders = [n for n in ep.graph.nodes if n.op == "placeholder" and specs[n.name].kind == InputKind.USER_INPUT]
    names = input_names or [n.name for n in user_placeholders]
    # Name the symbols after the dims they stand for (batch, seq), first come first named. Under
    # Dim.AUTO torch gives each input's dim its own symbol unless an op made them one: dims the
    # caller labelled alike (`seq` of input_ids and of attention_mask) with the same example size
    # are one dim (the label says so); alike-labelled ones of different sizes get names apart.
    dim_names = dim_names or {}
    labelled: dict[str, tuple[sympy.Symbol, int | None]] = {}
    for ph, in_name in zip(user_placeholders, names):
        val = ph.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        for axis, s in enumerate(val.shape):
            if not isinstance(s, torch.SymInt):
                continue
            sym, w = _root_and_multiple(s.node.expr)
            if sym is not None and sym not in conv.symbols:
                label = dim_names.get((in_name, axis), f"d{len(conv.symbols)}")
                if not label.isidentifier():  # a label that is a sum of others (`past+seq`, see label_expr)
                    conv.symbols[sym] = label_expr(label)
                    continue
                if is_data_dim(label):  # n0, n1, ... name data-dependent dims
                    label = f"{label}_"
                size = s.node.hint
                if label in labelled and w == 1 and labelled[label][1] == size and size is not None:
                    conv.symbols[sym] = labelled[label][0]
                    continue
                if sympy.Symbol(label, integer=True, positive=True) in conv.symbols.values():
                    label = f"{label}{len(conv.symbols)}"
                named = sympy.Symbol(label, integer=True, positive=True)
                labelled.setdefault(label, (named, size if w == 1 else None))
                # A derived dim W*root (see `_export_named`): the input's dim is `label`, the
                # root is label/W, exact under the constraint `label % W == 0` the graph records.
                conv.symbols[sym] = named / w if w > 1 else named
                if w > 1:
                    graph.constraints[label] = w
    conv.memo["split_remainders"] = split_remainders(ep)
    # Two dims a guard makes equal are one (guard_facts.equal_dims); a dim torch's guards hold
    # divisible (`seq % 4 == 0`) is read as 4 * root, as a derived Dim is.
    divisors = guard_divisors(ep)
    for y, x in equal_dims(ep, divisors).items():
        if x in conv.symbols and y in conv.symbols:
            conv.symbols[y] = conv.symbols[x]
    conv.memo["divisible"] = {}
    for s, w in divisors.items():
        named = conv.symbols.get(s)
        if isinstance(named, sympy.Symbol):
            root = sympy.Symbol(f"_{named.name}_root", integer=True, positive=True)
            conv.memo["divisible"][s] = w * root
            conv.symbols[root] = named / w
            graph.constraints[named.name] = w
    # A size torch's guards pin (one chunk of a Python chunk loop) bounds its dim (guard_facts.py).
    conv.memo["pinned"] = pinned_bounds(ep, conv.symbols)
    for label, m in conv.memo["pinned"].items():
        graph.bounds[label] = min(graph.bounds.get(label, m), m)
    state = dict(ep.state_dict)
    state.update(getattr(ep, "constants", {}) or {})
    user_i = 0
    for node in ep.graph.nodes:
        conv.node = node
        if node.op == "placeholder":
            spec = specs[node.name]
            if spec.kind == InputKind.USER_INPUT:
                conv.env[node] = graph.add_input(names[user_i], conv.meta_type(node))
                user_i += 1
            else:
                target = spec.target
                tensor = state.get(target)
                if tensor is None:
                    raise UserError(f"the exported program has no data for {target!r}")
                tensor = tensor.detach()
                conv.env[node] = graph.add_param(_param_name(target), tensor.contiguous())
        elif node.op == "call_function":
            _convert_call(conv, node)
        elif node.op == "output":
            results = node.args[0]
            if len(output_names) != len(results):
                output_names = [f"output_{i}" for i in range(len(results))]
            for oname, r in zip(output_names, results):
                v = conv.env.get(r) if isinstance(r, torch.fx.Node) else None
                if not isinstance(v, Value):
                    raise UserError(f"output {oname!r} is not a tensor computed by the graph")
                graph.set_output(oname, v)
        elif node.op == "get_attr":
            raise conv.unsupported("a get_attr node (higher-order ops are not supported)")
    graph.remove_unused_params()
    return graph


def _convert_call(conv: Converter, node: torch.fx.Node) -> None:
    target = node.target
    if target in SKIPPED_OPS:
        return
    val = node.meta.get("val")
    if target in SYMBOLIC_OPS or (not isinstance(val, (torch.Tensor, tuple, list)) and isinstance(val, (torch.SymInt, int)) and target not in SCALAR_OPS):
        try:
            conv.env[node] = conv.sym(val)
        except UnsupportedOpError as e:
            conv.env[node] = Unresolved(e)
        return
    if target in IDENTITY_OPS:
        conv.env[node] = conv.value(node.args[0])
        return
    if target is __import__("operator").getitem:
        src = conv.lookup(node.args[0])
        conv.env[node] = src[node.args[1]]
        return
    handler = CONVERSIONS.get(target)
    if handler is None:
        raise conv.unsupported(f"unsupported op {_op_name(target)}; t2c has no conversion for it yet")
    start = len(conv.graph.nodes)
    result = handler(conv, *node.args, **node.kwargs)
    module = module_path(node)
    for n in conv.graph.nodes[start:]:
        n.meta["module"] = module
        n.meta["source"] = source_line(node)
    _check_against_meta(conv, node, result)
    conv.env[node] = result


def split_remainders(ep) -> dict[sympy.Symbol, tuple[Any, list[Any]]]:
    """{last size: (the split dim's size, the other sizes)} for each split into data-dependent sizes.

    `x.split(expert_sizes.tolist())` and then `cat` of the pieces has `n0+n1+n2+n3` rows where torch
    knows (split checks it) that they add up to x's rows: the last size is bound as `rows - n0 - n1 - n2`
    so that the cat keeps x's rows and broadcasts with per-row gates (JetMoE)."""
    out: dict[sympy.Symbol, tuple[Any, list[Any]]] = {}
    for node in ep.graph.nodes:
        if node.target is not torch.ops.aten.split_with_sizes.default or len(node.args[1]) < 2:
            continue
        x, sizes = node.args[0], node.args[1]
        axis = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
        vals = [n.meta.get("val") if isinstance(n, torch.fx.Node) else n for n in sizes]
        x_val = x.meta.get("val") if isinstance(x, torch.fx.Node) else None
        if not isinstance(x_val, torch.Tensor) or not all(isinstance(v, torch.SymInt) and _is_unbacked(v.node.expr) for v in vals):
            continue
        out.setdefault(vals[-1].node.expr, (x_val.shape[axis], vals[:-1]))
    return out


def _op_name(target: Any) -> str:
    return str(getattr(target, "name", lambda: target)()) if hasattr(target, "name") else str(target)


def _check_against_meta(conv: Converter, node: torch.fx.Node, result: Any) -> None:
    """The IR's inferred types must equal torch's: a mismatch is a frontend bug, caught here."""
    val = node.meta.get("val")
    if isinstance(result, Value) and isinstance(val, torch.Tensor):
        pairs = [(result, conv.meta_type(node))]
    elif isinstance(result, tuple) and isinstance(val, (tuple, list)):
        pairs = [(r, conv.meta_type(node, i)) for i, r in enumerate(result) if isinstance(r, Value) and isinstance(val[i], torch.Tensor)]
    else:
        return
    for got, want in pairs:
        if not types_match(got.type, want):
            raise VerifyError(f"frontend bug: {_op_name(node.target)} converted to {got.type}, torch says {want} at {describe_node(node)}")


def trace(module: torch.nn.Module, example_inputs: dict[str, torch.Tensor], dynamic_dims: dict[str, dict[int, str]] | None = None, *, name: str | None = None) -> Graph:
    """Trace `module` called with keyword `example_inputs` into an IR graph with weights attached."""
    if dynamic_dims is None:
        dynamic_dims = default_dynamic_dims(example_inputs)
    module = module.eval()
    ep, output_names = export(module, example_inputs, dynamic_dims)
    dim_names = {(inp, axis): label for inp, axes in dynamic_dims.items() for axis, label in axes.items()}
    return convert(ep, output_names, name=name or type(module).__name__, input_names=list(example_inputs), dim_names=dim_names)


def trace_exported(ep: torch.export.ExportedProgram, *, name: str = "main") -> Graph:
    """Convert a loaded `.pt2` program (its dynamic dims are whatever it was exported with)."""
    ep = ep.run_decompositions(decomposition_table())
    n_out = len(ep.graph_signature.user_outputs)
    return convert(ep, [f"output_{i}" for i in range(n_out)] if n_out > 1 else ["output"], name=name)


def trace_loaded(loaded: LoadedModel) -> Graph:
    """Trace whatever `loaders.load_model` returned, with its example inputs and dynamic dims."""
    name = type(loaded.module).__name__
    if loaded.exported is not None:
        name = "ExportedProgram"
    return trace(loaded.module, loaded.example_inputs, loaded.dynamic_dims, name=name)
