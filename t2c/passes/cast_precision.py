"""cast-precision: the graph computes in another float dtype, mixed precision where it matters.

`cast-precision{dtype=f16}` turns a float32 (or bfloat16, ...) graph into one that
computes in float16; `dtype=f32` turns a half graph into float32 (lossless for
its weights). The policy is torch.autocast's, adapted to a deployed graph:

  * lower-precision ops take every float operand in the target dtype and give
    their result in it: `linear`, `matmul`, `conv`, `embedding`, `experts`,
    `sdpa`, and the fused ops whose references and ONNX lowerings accumulate in
    float32 inside for half inputs: `attention`, `linear_attention` (scores,
    softmax, state in float32), `layer_norm`, `rms_norm`, `add_norm` (statistics
    in float32: torch's kernels, ONNX `stash_type`);
  * float32 ops take their float operands in float32 and give float32 results
    ("accumulated" values): `softmax`, `log_softmax`, the reductions `sum`,
    `mean`, `var`, `cumsum`, and `exp`, `log`, `pow`, `rsqrt`, `reciprocal`
    (autocast's float32 list): softmax and reductions accumulate in float32 on
    any runtime, the FP32 master / FP16 compute split;
  * every other op computes in the widest dtype among its operands: an
    accumulated float32 value keeps what it meets in float32 until the next
    lower-precision op, so a written-out RMSNorm (`x * rsqrt(mean(x*x) + eps) * w`)
    stays one float32 chain that fuse-norm can still fuse;
  * activation-independent values (weights, rotary cos/sin, masks, constants) are
    cast down where they meet an activation in the target dtype, as a half model
    written by hand casts them (`cos.to(x.dtype)`), and are computed in float32
    until then (the rotary angles of long positions need it);
  * params are stored in the target dtype when only lower-precision ops read them
    (also through layout ops: `select`, `permute`, ...), else in float32 (a master
    copy, lossless from any half dtype); weights beyond the target's range are
    clamped to it (counted); scalar constants are re-made in the dtype they are
    used in, clamped the same way (a mask's `finfo(float32).min` becomes
    `finfo(float16).min`, not `-inf`);
  * float inputs and outputs are in the target dtype; the model's own casts to its
    working dtype (`.to(torch.bfloat16)` traced from a bf16 checkpoint) and
    `full`/`arange` in that dtype follow the target; its casts up to float32 stay
    (what follows them is accumulated);
  * int8 ops (`qlinear`, `qembedding`, `qexperts`) and any op that refuses the new
    operand dtypes keep their original dtypes (operands cast back to them).

Where it runs: fusion passes recognise the model as traced, so `t2c compile
--dtype` runs this pass last for a downcast (the fused ops then just change
dtype) and first for an upcast to float32 (every other pass then sees the
float32 model: a bf16 checkpoint's `cast(x, f32) ... cast(y, bf16)` around its
norms disappears and fuse-norm absorbs the weights). float64 values are left
alone.

Approximate (the target rounds differently): the compile reports the drift from
eager and judges it by `drift_bar`. With `dtype=f32` from a half graph the
weights are exact and every op computes in float32, so the result is the float32
eager model's.

Options: dtype (f32 | f16 | bf16; float32 / float16 / bfloat16 also accepted).
Stats: cast_nodes (casts inserted), params_converted, params_kept_f32,
saturated_values, f32_ops, lower_precision_ops, kept_ops.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch

from ..errors import UserError, VerifyError
from ..ir.core import DType, Graph, Node, Value
from ..ir.opdefs.creation import ArangeAttrs, FullAttrs
from ..ir.opdefs.pointwise import CastAttrs
from ..ir.ops import get_op
from ..ir.printer import Namer, format_node
from .manager import Pass, PassResult, register_pass
from .rewrite import near_misses_wanted, report_near_miss

DTYPE_NAMES = {
    "f32": DType.F32, "float32": DType.F32, "fp32": DType.F32,
    "f16": DType.F16, "float16": DType.F16, "fp16": DType.F16, "half": DType.F16,
    "bf16": DType.BF16, "bfloat16": DType.BF16,
}
CONVERTIBLE = (DType.F32, DType.F16, DType.BF16)  # float64 stays as the model wrote it

LOWER_PRECISION_OPS = frozenset({
    "linear", "matmul", "conv", "embedding", "experts", "sdpa",
    "attention", "linear_attention", "layer_norm", "rms_norm", "add_norm",  # float32 inside for halves
})
F32_OPS = frozenset({
    "softmax", "log_softmax",
    "sum", "mean", "var", "cumsum",
    "exp", "log", "pow", "rsqrt", "reciprocal",
})
KEEP_OPS = frozenset({"qlinear", "qembedding", "qexperts"})
# Ops that only move a param's elements: a param read by lower-precision ops through them is stored in the target dtype.
LAYOUT_OPS = frozenset({"select", "slice", "permute", "reshape", "squeeze", "unsqueeze", "expand", "split", "index", "gather", "repeat", "flip", "cat"})

# What this pass makes or re-makes in another dtype: left unused, they (or the originals) are dropped.
REMADE_OPS = frozenset({"cast", "full", "where"}) | LAYOUT_OPS

# How a float value came to be, which decides the dtype it meets others in.
ACT = "act"  # an activation in the target dtype (a lower-precision op's result, a float input)
ACC = "acc"  # an accumulated float32 value (a float32 op's result and what it flows into)
CONST = "const"  # independent of the activations: params, constants, positions, masks from integer inputs


def parse_dtype(name: str, where: str = "option dtype of pass cast-precision") -> DType:
    """f32 / f16 / bf16 (or float32 / float16 / bfloat16) as an IR dtype; UserError otherwise."""
    try:
        return DTYPE_NAMES[name.lower()]
    except KeyError:
        raise UserError(f"{where} must be one of float32, float16, bfloat16 (or f32, f16, bf16), got {name!r}") from None


def working_dtype(graph: Graph) -> DType:
    """The dtype most of the graph's float weights (by element count) are in: the checkpoint's dtype.

    A graph without float params counts its float inputs; float32 when there is neither.
    """
    counts: Counter = Counter()
    for name, v in graph.param_values.items():
        if v.type.dtype in CONVERTIBLE:
            t = graph.params.get(name)
            counts[v.type.dtype] += t.numel() if t is not None else 1
    if not counts:
        counts.update(v.type.dtype for v in graph.inputs if v.type.dtype in CONVERTIBLE)
    return counts.most_common(1)[0][0] if counts else DType.F32


def _saturate(t: torch.Tensor, dtype: DType) -> tuple[torch.Tensor, int]:
    """`t` in `dtype`, finite values beyond its range clamped to it (and how many were)."""
    if dtype not in CONVERTIBLE:
        return t.to(dtype.torch), 0
    limit = torch.finfo(dtype.torch).max
    finite = torch.isfinite(t)
    over = int((finite & (t.abs() > limit)).sum()) if t.dtype != dtype.torch and t.is_floating_point() else 0
    if over:
        t = torch.where(finite, t.clamp(-limit, limit), t)
    return t.to(dtype.torch), over


def _fits(value, dtype: DType):
    """A scalar constant as `full` in `dtype` holds it: finite values clamped to its range."""
    if isinstance(value, float) and dtype in CONVERTIBLE and value == value and abs(value) != float("inf"):
        limit = torch.finfo(dtype.torch).max
        return max(-limit, min(limit, value))
    return value


class _Converter:
    """Builds the converted graph node by node (the old graph is read, never changed)."""

    def __init__(self, graph: Graph, target: DType):
        self.old = graph
        self.target = target
        self.source = working_dtype(graph)
        self.new = Graph(graph.name, constraints=dict(graph.constraints), bounds=dict(graph.bounds))
        self.values: dict[int, Value] = {}  # id(old value) -> new value
        self.kinds: dict[int, str] = {}  # id(new value) -> ACT / ACC / CONST
        self.casts: dict[tuple[int, DType], Value] = {}  # (id(new value), dtype) -> its cast
        self.params: dict[tuple[str, DType], Value] = {}  # (old param name, dtype) -> new param
        self.param_dtype: dict[str, DType] = {}  # the dtype a param is read in when nobody asks otherwise
        self.stats: Counter = Counter()
        self.inserted: set[Node] = set()  # casts and constants this pass made
        self.misses: list[tuple[Node, str]] = []  # (new node, why it keeps its dtypes): `--debug-rewrites`
        self.touched = False  # whether anything differs from the old graph

    # -- values ------------------------------------------------------------------------
    def retarget(self, dtype: DType) -> DType:
        """A dtype the model chose as its working dtype follows the target."""
        return self.target if dtype == self.source and dtype != DType.F32 else dtype

    def param(self, name: str, dtype: DType) -> Value:
        """The old param `name` as a new param in `dtype` (made on first request; the first keeps the name)."""
        key = (name, dtype)
        if key not in self.params:
            old_v = self.old.param_values[name]
            tensor = self.old.params.get(name)
            new_name = name if not any(k[0] == name for k in self.params) else f"{name}.{dtype}"
            if tensor is not None:
                tensor, over = _saturate(tensor, dtype)
                self.stats["saturated_values"] += over
            v = self.new.add_param(new_name, tensor, old_v.type.with_dtype(dtype))
            self.touched |= dtype != old_v.type.dtype
            self.kinds[id(v)] = CONST
            self.params[key] = v
            self.stats["params_converted" if dtype == self.target and dtype != old_v.type.dtype else "params_kept_f32" if dtype == DType.F32 else "params_other"] += 1
        return self.params[key]

    def get(self, old_v: Value) -> Value:
        """The new value for an old one; params are made in their default dtype on first use."""
        if self.old.is_param(old_v):
            dtype = old_v.type.dtype
            if dtype in CONVERTIBLE:
                dtype = self.param_dtype.get(old_v.name, DType.F32)
            return self.param(old_v.name, dtype)
        return self.values[id(old_v)]

    def kind(self, v: Value) -> str | None:
        return self.kinds.get(id(v)) if v.type.dtype in CONVERTIBLE else None

    def cast(self, v: Value, dtype: DType, source: Value | None = None) -> Value:
        """`v` in `dtype`: itself, a param made in it, a constant re-made in it, or a (shared) cast node."""
        if v.type.dtype == dtype:
            return v
        if source is not None and self.old.is_param(source):
            return self.param(source.name, dtype)
        key = (id(v), dtype)
        if key not in self.casts:
            out = self._remake(v, dtype) if self.kinds.get(id(v), CONST) == CONST else None
            if out is None:
                out = self.new.add_node("cast", (v,), CastAttrs(dtype)).outputs[0]
                self.inserted.add(out.producer)
            self.kinds[id(out)] = self.kinds.get(id(v), CONST)
            self.casts[key] = out
        return self.casts[key]

    def _remake(self, v: Value, dtype: DType, depth: int = 6) -> Value | None:
        """A constant made of `full`s (through `where` and layout ops) made again in `dtype`, each
        value clamped to its range: a mask's finfo(float32).min becomes finfo(float16).min where a
        cast would make it -inf (and a fully masked row NaN). None for anything else."""
        p = v.producer
        if p is None or depth == 0 or len(p.outputs) != 1:
            return None
        if p.op == "full":
            out = self.new.add_node("full", (), FullAttrs(p.attrs.shape, _fits(p.attrs.value, dtype), dtype)).outputs[0]
        elif p.op == "where" or (p.op in LAYOUT_OPS and p.op != "cat"):
            ins = list(p.inputs)
            floats = [i for i, x in enumerate(ins) if x.type.dtype == v.type.dtype]
            if not floats or (p.op != "where" and floats != [0]):
                return None
            for i in floats:
                made = self.casts.get((id(ins[i]), dtype)) or self._remake(ins[i], dtype, depth - 1)
                if made is None:
                    return None
                ins[i] = made
            try:
                out = self.new.add_node(p.op, ins, p.attrs).outputs[0]
            except VerifyError:
                return None
        else:
            return None
        self.kinds[id(out)] = CONST
        self.inserted.add(out.producer)
        return out

    # -- params read only by lower-precision ops -----------------------------------------
    def plan_params(self) -> None:
        for name, v in self.old.param_values.items():
            if v.type.dtype in CONVERTIBLE:
                self.param_dtype[name] = self.target if _only_lower_precision(v) else DType.F32

    # -- nodes -------------------------------------------------------------------------
    def convert(self) -> Graph:
        self.plan_params()
        for v in self.old.inputs:
            dtype = self.target if v.type.dtype in CONVERTIBLE else v.type.dtype
            nv = self.new.add_input(v.name, v.type.with_dtype(dtype))
            self.touched |= dtype != v.type.dtype
            self.values[id(v)] = nv
            self.kinds[id(nv)] = ACT
        for node in self.old.nodes:
            self.node(node)
        for name, v in self.old.outputs:
            nv = self.get(v)
            if nv.type.dtype in CONVERTIBLE and nv.type.dtype != self.target:
                nv = self.cast(nv, self.target, v)
            self.new.set_output(name, nv)
        self._drop_dead()
        return self.new

    def node(self, node: Node) -> None:
        if node.op == "cast":
            return self._cast_node(node)
        if node.op in ("full", "arange"):
            return self._creation(node)
        floats = [i for i, v in enumerate(node.inputs) if v.type.dtype in CONVERTIBLE]
        if not floats:  # integer/bool work (and float64): as it was
            new = self._emit(node, [self.get(v) for v in node.inputs], None)
            if any(v.type.dtype == DType.F64 for v in (*node.inputs, *node.outputs)):
                self.misses.append((new, "float64 stays as the model wrote it (only float32, float16 and bfloat16 convert)"))
            return None
        if node.op in KEEP_OPS:
            return self._keep(node, "an int8 op keeps its operand dtypes")
        ins = [self.get(v) for v in node.inputs]
        kinds = {self.kind(ins[i]) for i in floats}
        if node.op in LOWER_PRECISION_OPS:
            want, kind = self.target, ACT
            self.stats["lower_precision_ops"] += 1
        elif node.op in F32_OPS:
            want = DType.F32
            kind = ACC if kinds & {ACT, ACC} else CONST
            self.stats["f32_ops"] += 1
        elif ACC in kinds:
            want, kind = DType.F32, ACC
        elif ACT in kinds:
            want, kind = self.target, ACT
        else:  # activation-independent work (positions, masks, rotary angles) as the model wrote it
            want, kind = None, CONST
        if want is not None:
            ins = [self.cast(ins[i], want, node.inputs[i]) if i in floats else ins[i] for i in range(len(ins))]
        try:
            self._emit(node, ins, kind)
        except VerifyError as e:  # the op refuses these dtypes: keep the ones it had
            self._keep(node, f"refuses {', '.join(str(v.type.dtype) for v in ins)} operands ({e}); keeps its dtypes")

    def _keep(self, node: Node, why: str) -> None:
        ins = [self.get(v) for v in node.inputs]
        kinds = {self.kind(v) for v in ins}
        ins = [self.cast(nv, ov.type.dtype, ov) if ov.type.dtype in CONVERTIBLE else nv for nv, ov in zip(ins, node.inputs)]
        self.stats["kept_ops"] += 1
        new = self._emit(node, ins, ACT if kinds & {ACT, ACC} else CONST, check=False)
        self.misses.append((new, why))

    def _emit(self, node: Node, ins: list[Value], kind: str | None, check: bool = True, attrs=None) -> Node:
        opdef = get_op(node.op)
        attrs = node.attrs if attrs is None else attrs
        types = [v.type for v in ins]
        out_types = opdef.infer_type(types, attrs) if check else [o.type for o in node.outputs]
        if check:
            opdef.verify(types, attrs)
        new = self.new.add_node(node.op, ins, attrs, out_types)
        new.meta = dict(node.meta)
        self.touched |= [o.type for o in new.outputs] != [o.type for o in node.outputs]
        for old_o, new_o in zip(node.outputs, new.outputs):
            self.values[id(old_o)] = new_o
            if kind is not None:
                self.kinds[id(new_o)] = kind
        return new

    def _cast_node(self, node: Node) -> None:
        (old_in,) = node.inputs
        x = self.get(old_in)
        dtype = self.retarget(node.attrs.dtype)
        if x.type.dtype == dtype:  # a cast to the model's working dtype, now the target: gone
            self.values[id(node.outputs[0])] = x
            self.touched = True
            return
        src = self.kind(x)
        if not dtype.is_float or dtype not in CONVERTIBLE:
            kind = None
        elif src is None or src == CONST:
            kind = CONST
        elif dtype == DType.F32 and self.target != DType.F32:
            kind = ACC  # the model upcasts on purpose: what follows accumulates
        else:
            kind = ACT
        self._emit(node, [x], kind, attrs=CastAttrs(dtype))

    def _creation(self, node: Node) -> None:
        a = node.attrs
        dtype = self.retarget(a.dtype)
        if isinstance(a, FullAttrs):
            attrs = FullAttrs(a.shape, _fits(a.value, dtype) if dtype != a.dtype else a.value, dtype)
        else:
            attrs = ArangeAttrs(a.start, a.end, a.step, dtype)
        self._emit(node, [], CONST, attrs=attrs)

    def _drop_dead(self) -> None:
        """Remove what this pass made and left unused (and the originals it re-made in another dtype)."""
        live = {id(v) for _, v in self.new.outputs}
        dead = []
        for n in reversed(self.new.nodes):
            if any(id(o) in live or o.uses for o in n.outputs) or n.op not in REMADE_OPS:
                live.update(id(v) for v in n.inputs)
            else:
                dead.append(n)
                n.drop_uses()
        self.new.nodes = [n for n in self.new.nodes if n not in set(dead)]
        for n in dead:
            n.erased = True
        self.new.remove_unused_params()
        self.stats["cast_nodes"] = sum(1 for n in self.new.nodes if n in self.inserted and n.op == "cast")


def _only_lower_precision(v: Value, depth: int = 8) -> bool:
    """Whether every read of `v`, through layout ops, is an operand of a lower-precision op."""
    if not v.uses or depth == 0:
        return False
    for user in v.users:
        if user.op in LOWER_PRECISION_OPS:
            continue
        if user.op in LAYOUT_OPS:
            if not all(_only_lower_precision(o, depth - 1) for o in user.outputs if o.type.dtype == v.type.dtype):
                return False
            continue
        return False
    return True


@register_pass("cast-precision")
@dataclass(frozen=True)
class CastPrecision(Pass):
    """The graph computes in `dtype`: lower-precision ops (linear, matmul, attention, ...) in it,
    norms, softmax and reductions accumulating in float32, weights stored in it where only
    those ops read them (autocast's policy; module docstring). dtype=f32 upcasts a half
    graph losslessly. Approximate: judged by its drift from eager (drift_bar)."""

    # Stored as f32 / f16 / bf16: never equal to this default's spelling, so a pipeline string
    # (the report's, `t2c opt`'s) always names the dtype.
    dtype: str = "float16"

    exact = False
    # Half precision keeps ~3 (bf16) to ~4 (f16) significant digits per op; measured on the
    # zoo (benchmarks/dtype.py) every output keeps cosine >= 0.9999 with the float32 model.
    drift_bar = {"min_cosine": 0.999, "min_sqnr": 20.0}

    def __post_init__(self) -> None:
        object.__setattr__(self, "dtype", str(parse_dtype(self.dtype)))

    def run(self, graph: Graph) -> PassResult:
        target = parse_dtype(self.dtype)
        converter = _Converter(graph, target)
        new = converter.convert()
        stats = {k: v for k, v in converter.stats.items() if v}
        _report_kept(converter.misses, new)
        if not converter.touched:
            return PassResult(graph, False, {})
        return PassResult(new, True, stats)


def _report_kept(misses: list[tuple[Node, str]], graph: Graph) -> None:
    """The nodes left in their dtypes, as near-misses (`t2c opt --debug-rewrites`, golden `# near-miss:` lines).

    Names are the new graph's; an untouched graph prints the same as the one the pass was given.
    """
    if not misses or not near_misses_wanted():
        return
    namer = Namer(graph)
    for node, why in misses:
        if not node.erased:
            report_near_miss(f"cast-precision: {format_node(node, namer)}: {why}")
