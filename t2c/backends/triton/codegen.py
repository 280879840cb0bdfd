"""The text of `model.py`: one `forward(P, *inputs)` over the IR, each statement under the IR line it implements.

Every node takes one of four paths, counted in the result (`kernels.json`, model.py's docstring):
    handwritten  t2c.kernels' launchers for attention, norms, linear_attention, qlinear, experts,
                 qexperts (handwritten.py)
    generated    glue kernels generated from the IR (t2c/kernels/glue.py, grouped by fusion.py),
                 their source written into model.py above `forward`
    torch        matmul/linear as torch calls; shape, gather, embedding, conv, creation ops and
                 the integer/bool elementwise ops through their references, which are torch calls
    generic      any other op (rope, a kernel's refused case, ...) through its eager reference from
                 the IR op registry (runtime.run_op): correct everywhere, no Triton kernel
Attrs objects are built once at import (`A7 = AttentionAttrs(...)`), not on every call.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import keyword
import re
from dataclasses import dataclass, field
from typing import Any

from ...ir.core import Graph, Node, SymDim, Value, solve_dims
from ...ir.ops import get_op
from ...ir.printer import Namer, format_node
from ...kernels.glue import helpers_source, kernel_source
from ...kernels.glue_ops import float_literal
from .fusion import plan_fusion
from .handwritten import handwritten_kernel

# Ops that are plain torch library calls (their references are one torch call, or a few).
TORCH_OPS = frozenset({
    "linear", "matmul", "conv", "embedding", "gather", "index", "reshape", "permute", "expand", "slice", "select",
    "cat", "split", "squeeze", "unsqueeze", "flip", "pad", "repeat", "tril", "triu", "arange", "full", "sdpa",
    "scatter", "cumsum", "argmax", "argmin", "topk", "sort",
})
_ELEMENTWISE_FAMILIES = ("t2c.ir.opdefs.pointwise", "t2c.ir.opdefs.reduction", "t2c.ir.opdefs.activation")
# Names model.py defines or imports: an input named so would shadow them inside forward.
_RESERVED = {"P", "dims", "ctx", "torch", "triton", "tl", "math", "F", "forward", "INPUTS", "OUTPUTS", "DEVICE",
             "run_op", "require_device", "EvalContext", "flat_block", "row_block", "DType", "SymDim", "solve_dims"}
_GENERATED_NAME = re.compile(r"^(v|A|A_|glue|input)\d+$|^_|Attrs")


@dataclass
class ModelSource:
    """What lower returns: the text of model.py, the weights by IR name, and the path counts."""

    text: str
    params: dict[str, Any]
    counts: dict[str, Any] = field(default_factory=dict)


class _Imports:
    """`from module import Name` lines for the attrs classes and enums the literals use."""

    def __init__(self) -> None:
        self.names: dict[tuple[str, str], str] = {}

    def name(self, obj: type) -> str:
        key = (obj.__module__, obj.__qualname__)
        if key not in self.names:
            alias = obj.__qualname__
            if alias in self.names.values():
                alias = f"{alias}_{len(self.names)}"
            self.names[key] = alias
        return self.names[key]

    def lines(self) -> list[str]:
        out = []
        for (module, qual), alias in sorted(self.names.items()):
            out.append(f"from {module} import {qual}" + (f" as {alias}" if alias != qual else ""))
        return out


def literal(v: Any, imports: _Imports) -> str:
    """Python source that rebuilds the attrs value `v`."""
    if v is None or isinstance(v, (bool, int, str)):
        return repr(v)
    if isinstance(v, float):
        return float_literal(v)
    if isinstance(v, enum.Enum):
        return f"{imports.name(type(v))}.{v.name}"
    if isinstance(v, SymDim):
        return f"{imports.name(SymDim)}({v.expr!r})"
    if isinstance(v, tuple):
        items = [literal(x, imports) for x in v]
        return "(" + ", ".join(items) + ("," if len(items) == 1 else "") + ")"
    if isinstance(v, list):
        return "[" + ", ".join(literal(x, imports) for x in v) + "]"
    if isinstance(v, dict):
        return "{" + ", ".join(f"{literal(k, imports)}: {literal(x, imports)}" for k, x in v.items()) + "}"
    if dataclasses.is_dataclass(v):
        args = ", ".join(f"{f.name}={literal(getattr(v, f.name), imports)}" for f in dataclasses.fields(v))
        return f"{imports.name(type(v))}({args})"
    raise TypeError(f"cannot write attr value {v!r} as Python")


def _input_names(graph: Graph) -> list[str]:
    names = []
    for i, v in enumerate(graph.inputs):
        ok = v.name and v.name.isidentifier() and not keyword.iskeyword(v.name) and v.name not in _RESERVED \
            and not _GENERATED_NAME.search(v.name) and v.name not in names
        names.append(v.name if ok else f"input{i}")
    return names


def _path(node: Node) -> str:
    if node.op in TORCH_OPS or get_op(node.op).reference.__module__ in _ELEMENTWISE_FAMILIES:
        return "torch"
    return "generic"


def _count(counts: dict, path: str, op: str) -> None:
    entry = counts.setdefault(path, {"nodes": 0, "ops": {}})
    entry["nodes"] += 1
    entry["ops"][op] = entry["ops"].get(op, 0) + 1


def generate(graph: Graph) -> ModelSource:
    """model.py for `graph` (after passes), with its weights and the count of nodes on each path."""
    ir = Namer(graph)
    imports = _Imports()
    plan = plan_fusion(graph)
    inputs = _input_names(graph)
    py: dict[int, str] = {id(v): n for v, n in zip(graph.inputs, inputs)}
    for node in graph.nodes:
        for out in node.outputs:
            py[id(out)] = "v" + ir(out)[1:]

    def name(v: Value) -> str:
        return py[id(v)] if id(v) in py else f"P[{json.dumps(v.name)}]"

    def label(node: Node) -> str:
        return format_node(node, ir)

    counts: dict[str, Any] = {"nodes": len(graph.nodes)}
    for p in ("handwritten", "generated", "torch", "generic"):
        counts[p] = {"nodes": 0, "ops": {}}
    counts["generated"]["kernels"] = len(plan.groups)
    counts["generated"]["row_kernels"] = sum(1 for g in plan.groups if g.tail is not None)
    counts["folded_constants"] = len(plan.folded)
    counts["unused"] = len(plan.unused)  # glue whose results nothing reads: not launched

    kernel_modules: dict[str, str] = {}
    attrs_lines: list[str] = []
    kernels: list[str] = []
    glue_name = {id(g): f"glue{i}" for i, g in enumerate(plan.groups)}
    statements: list[tuple[list[str], list[Value], list[Value]]] = []  # (lines, reads, writes)
    for node in graph.nodes:
        if id(node) in plan.folded or id(node) in plan.unused:
            continue
        group = plan.member.get(id(node))
        if group is not None:
            _count(counts, "generated", node.op)
            if node is not group.nodes[-1]:
                continue
            kname = glue_name[id(group)]
            rank = (group.tail.inputs[0] if group.tail is not None else group.nodes[0].outputs[0]).type.rank
            kernels.append(kernel_source(kname, group, rank, label))
            lines = [f"# {label(n)}" for n in group.nodes]
            outs = ", ".join(name(v) for v in group.outputs)
            lines.append(f"{outs} = {kname}({', '.join(name(v) for v in group.inputs)})")
            statements.append((lines, list(group.inputs), list(group.outputs)))
            continue
        outs = ", ".join(name(o) for o in node.outputs)
        args = ", ".join(name(v) for v in node.inputs)
        lines = [f"# {label(node)}"]
        kernel = handwritten_kernel(node)
        attrs = f"A{ir(node.outputs[0])[1:]}" if node.outputs else f"A_{len(attrs_lines)}"
        if kernel is not None:
            module, launcher = kernel
            alias = kernel_modules.setdefault(module, "_" + module.rsplit(".", 1)[-1])
            attrs_lines.append(f"{attrs} = {literal(node.attrs, imports)}")
            lines.append(f"{outs} = {alias}.{launcher}({args}, attrs={attrs})")
            _count(counts, "handwritten", node.op)
        elif node.op == "linear":
            lines.append(f"{outs} = F.linear({args})")
            _count(counts, "torch", node.op)
        elif node.op == "matmul":
            lines.append(f"{outs} = torch.matmul({args})")
            _count(counts, "torch", node.op)
        else:
            attrs_lines.append(f"{attrs} = {literal(node.attrs, imports)}")
            lines.append(f"{outs} = run_op({node.op!r}, {attrs}, ctx{', ' if args else ''}{args})")
            _count(counts, _path(node), node.op)
        for sym, index, axis in get_op(node.op).data_dims(node.attrs):
            lines.append(f"dims[{sym!r}] = {name(node.outputs[index])}.shape[{axis}]")
        statements.append((lines, list(node.inputs), list(node.outputs)))

    body = _forward_body(graph, inputs, statements, name, imports)
    text = _module_text(graph, counts, imports, kernel_modules, attrs_lines, kernels, inputs, body)
    return ModelSource(text, dict(graph.params), counts)


def _forward_body(graph: Graph, inputs: list[str], statements, name, imports: _Imports) -> list[str]:
    """forward's lines: bind the dynamic dims, the statements (each dead value deleted after its last use), return."""
    binds: dict[str, str] = {}
    for v, n in zip(graph.inputs, inputs):
        for axis, d in enumerate(v.type.shape):
            if isinstance(d, SymDim) and d.expr.isidentifier() and d.expr not in binds:
                binds[d.expr] = f"{n}.shape[{axis}]"
    lines = ["    dims = {" + ", ".join(f"{k!r}: {e}" for k, e in binds.items()) + "}"]
    # A symbol no input has alone (`past` once a decode state replaced the KV cache): from a sum.
    derived = [f"({imports.name(SymDim)}({d.expr!r}), {n}.shape[{axis}])" for v, n in zip(graph.inputs, inputs)
               for axis, d in enumerate(v.type.shape) if isinstance(d, SymDim) and not d.symbols <= set(binds)]
    if derived:
        lines.append(f"    {imports.name(solve_dims)}([{', '.join(derived)}], dims)")
    lines.append("    ctx = EvalContext(dims)")
    keep = {id(v) for v in graph.output_values()}
    last: dict[int, int] = {}
    for i, (_, reads, writes) in enumerate(statements):
        for v in writes:
            last.setdefault(id(v), i)
        for v in reads:
            last[id(v)] = i
    produced = {id(v): v for _, _, writes in statements for v in writes}
    dying: dict[int, list[str]] = {}
    for vid, i in last.items():
        if vid in produced and vid not in keep:
            dying.setdefault(i, []).append(name(produced[vid]))
    for i, (stmt, _, _) in enumerate(statements):
        lines += ["    " + s for s in stmt]
        if i in dying:
            lines.append("    del " + ", ".join(sorted(set(dying[i]))))
    lines.append("    return {" + ", ".join(f"{json.dumps(o)}: {name(v)}" for o, v in graph.outputs) + "}")
    return lines


def _module_text(graph, counts, imports, kernel_modules, attrs_lines, kernels, inputs, body) -> str:
    gen = counts["generated"]
    summary = (f"{counts['nodes']} IR nodes: {counts['handwritten']['nodes']} on hand-written kernels, "
               f"{gen['nodes']} in {gen['kernels']} generated kernels ({gen['row_kernels']} with a row reduction), "
               f"{counts['torch']['nodes']} torch, {counts['generic']['nodes']} on the generic path, "
               f"{counts['folded_constants']} scalar constants as kernel literals.")
    by_path = [f"  {p}: " + ", ".join(f"{op} {n}" for op, n in sorted(counts[p]["ops"].items()))
               for p in ("handwritten", "generated", "torch", "generic") if counts[p]["ops"]]
    head = [
        f'"""{graph.name}, compiled by t2c --target triton.',
        "",
        summary,
        *by_path,
        "Generic path: ops without a Triton kernel run their eager reference from t2c's IR op registry",
        "(t2c.backends.triton.runtime.run_op). Weights are `P`, read from weights.safetensors by IR name.",
        '"""',
        "",
        "import math",
        "",
        "import torch",
        "import torch.nn.functional as F",
        "",
        "from t2c.backends.triton.runtime import require_device, run_op",
        "",
        "DEVICE = require_device()  # before any kernel is defined: a CUDA GPU, or Triton's CPU interpreter",
        "",
        "import triton  # noqa: E402",
        "import triton.language as tl  # noqa: E402",
        "",
        "from t2c.ir.ops import EvalContext  # noqa: E402",
        "from t2c.kernels.glue import flat_block, row_block  # noqa: E402",
    ]
    head += [f"import {m} as {a}  # noqa: E402" for m, a in sorted(kernel_modules.items())]
    head += [f"{line}  # noqa: E402" for line in imports.lines()]
    head += ["", f"INPUTS = {json.dumps([v.name for v in graph.inputs])}",
             f"OUTPUTS = {json.dumps([o for o, _ in graph.outputs])}", ""]
    if attrs_lines:
        head += ["# attrs of the nodes that take them, built once"] + attrs_lines + [""]
    head += ["", "# ---- generated glue kernels ----", "", helpers_source()]
    for k in kernels:
        head += ["", k]
    args = ", ".join(["P"] + inputs)
    head += ["", f"def forward({args}):", '    """The graph: inputs in INPUTS order, weights P; returns {output name: tensor}."""']
    return "\n".join(head + body) + "\n"
