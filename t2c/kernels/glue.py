"""Generated glue kernels: a chain of IR elementwise ops (and at most one row reduction) as one Triton kernel.

The Triton backend groups the glue between heavy ops (t2c/backends/triton/fusion.py) and asks
this module for the source of one `@triton.jit` kernel and its Python launcher per group; the
source is written into the compiled `model.py`, so what runs is readable there. Nothing here is
written per pattern: every IR elementwise op maps to one small Triton expression (`TEMPLATES`),
and a group's kernel is those expressions in the IR's order.

Contract of a generated kernel:
    flat group   y_j = chain(x_0, ..., x_k)       every member has the group's shape S; inputs
                 broadcast to S (the launcher expands them: stride 0 on broadcast dims, so any
                 strided input is read in place); outputs are new contiguous tensors of shape S.
                 One program per BLOCK elements of S, flattened row-major.
    row group    a prologue (the flat chain), one reduction over the last dim of S (softmax,
                 log_softmax, sum, mean, amax, amin), then nodes of one value per row (the
                 reduced shape [..., 1]: `+ eps`, `rsqrt`) and an epilogue of shape S that reads
                 them (`x * rsqrt(mean(x^2) + eps) * w`, `softmax(x) * mask`). One program per
                 row, looping over it in BLOCK columns: the reduction (softmax: max, then the sum
                 of exponentials), the per-row values, and a last pass for softmax's values and
                 the epilogue (the prologue is recomputed, not stored, where a pass needs it).
                 Per-row results are contiguous [rows] tensors ([..., 1] or [...]).
Dtypes: inputs of any IR dtype but f64; float values are computed in float32 and each op's result
is rounded to its IR dtype (f16/bf16) as eager PyTorch rounds each op, so a fused chain matches
the unfused graph (bf16 by bits: the interpreter's conversion truncates); an operand wider than
the op's common dtype (a 0-d f32 constant with an f16 tensor) is rounded to it first, as torch
casts operands. Bool values are Triton int1; integer inputs are loaded as they are. Results are
f32, f16, bf16 or bool; integer-valued ops are left to torch.
Limits (glue_ops.py): `pow` only by a constant exponent in `_POW_EXPONENTS`; no `round`, `asin`/`acos`/`atan`,
`remainder`, `floor_divide`, rounding `div` (Triton has no portable expression for them here).
Under TRITON_INTERPRET=1 the launchers use one big block (few programs: the interpreter runs
each program in Python); on a GPU, 1024 elements (flat) and up to 4096 columns (rows).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, Sequence

from ..ir.core import Node, Value
from .glue_ops import FLOATS, TEMPLATES, Operand, constant_in, operand_in, rounded, row_reduction


# -- launch sizes (called by the generated launchers) -------------------------------------------
def interpreting() -> bool:
    """True when Triton runs kernels on the CPU (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET") == "1"


def flat_block(n: int) -> int:
    """Elements per program of a flat kernel over n elements."""
    if interpreting():
        return min(1 << max(n - 1, 0).bit_length(), 1 << 16)
    return 1024


def row_block(n: int) -> int:
    """Columns per loop step of a row kernel over rows of n elements."""
    full = 1 << max(n - 1, 0).bit_length()
    return max(full if interpreting() else min(full, 4096), 16)


# -- code generation -----------------------------------------------------------------------------
@dataclass
class GlueGroup:
    """What one generated kernel computes: IR nodes in order, at most one of them a row reduction.

    In a row group the nodes before the reduction (the prologue) have the group's shape S; after
    it come nodes of the reduced shape (one value per row: `+ eps`, `rsqrt`) and nodes of shape S
    again (the epilogue: `x * rsqrt(...)`, `softmax(...) * mask`), which read the row's result.
    """

    nodes: list[Node]
    inputs: list[Value] = field(default_factory=list)  # tensors read, in argument order
    outputs: list[Value] = field(default_factory=list)  # values written, in result order
    constants: dict[int, float | int] = field(default_factory=dict)  # id(value) -> literal

    @property
    def tail(self) -> Node | None:
        """The row reduction of the group, if any."""
        return next((n for n in self.nodes if row_reduction(n)), None)


def allows_epilogue(tail: Node) -> bool:
    """Whether nodes may follow this reduction in its kernel: its result broadcasts back over rows
    (softmax's has the row's shape; a reduction kept as [..., 1]), and rows are longer than 1."""
    shape = tail.inputs[0].type.shape
    if shape[-1] == 1:
        return False
    return tail.op in ("softmax", "log_softmax") or bool(tail.attrs.keepdim)


_HELPERS = '''@triton.jit
def _glue_tanh(x):
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)


@triton.jit
def _glue_bf16(x):
    # float32 -> nearest bfloat16 (ties to even), kept in float32. By bits: Triton's interpreter
    # truncates in .to(tl.bfloat16), a GPU rounds; this is the same on both.
    bits = x.to(tl.uint32, bitcast=True)
    bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000
    return bits.to(tl.float32, bitcast=True)
'''


def helpers_source() -> str:
    """Source of the @triton.jit helpers the generated kernels call (once per model.py)."""
    return _HELPERS


def _body(group: GlueGroup, nodes: Sequence[Node], names: dict[int, str], label: Callable[[Node], str], indent: str) -> list[str]:
    """Lines computing `nodes` (elementwise members of `group`) from the variables in `names`, which they extend."""
    lines = []
    index = {id(n): k for k, n in enumerate(group.nodes)}
    for node in nodes:
        ops = [Operand("", v.type.dtype, constant_in(group.constants[id(v)], node)) if id(v) in group.constants
               else Operand(operand_in(names[id(v)], v, node), v.type.dtype) for v in node.inputs]
        out = node.outputs[0]
        expr = TEMPLATES[node.op](node, ops)
        if out.type.dtype in FLOATS:
            expr = rounded(expr, out.type.dtype)
        names[id(out)] = f"t{index[id(node)]}"
        lines.append(f"{indent}# {label(node)}")
        lines.append(f"{indent}{names[id(out)]} = {expr}")
    return lines


def _needed(nodes: Sequence[Node], reads: Sequence[Value]) -> list[Node]:
    """The nodes, in order, whose results `reads` uses directly or through other nodes of `nodes`."""
    wanted = {id(v) for v in reads}
    keep = []
    for node in reversed(nodes):
        if id(node.outputs[0]) in wanted:
            keep.append(node)
            wanted.update(id(v) for v in node.inputs)
    return keep[::-1]


def _loads(group: GlueGroup, load: Callable[[int, Value], str], indent: str, names: dict[int, str], prefix: str = "a") -> list[str]:
    """Lines loading every input into `{prefix}{i}` (recorded in `names`)."""
    lines = []
    for i, v in enumerate(group.inputs):
        names[id(v)] = f"{prefix}{i}"
        lines.append(f"{indent}{prefix}{i} = {load(i, v)}")
    return lines


def _load_expr(i: int, v: Value, offset: str, mask: str) -> str:
    text = f"tl.load(x{i} + {offset}, mask={mask}, other=1)"  # 1: masked lanes compute no 0/0 or log(0)
    return f"{text}.to(tl.float32)" if v.type.dtype in FLOATS else text


def _index_lines(prefix: str, index: str, dims: Sequence[str], indent: str) -> list[str]:
    """Row-major multi-index of `index` over sizes `dims` into variables prefix0, prefix1, ..."""
    if not dims:
        return []
    lines, rem = [], index
    for d in range(len(dims) - 1, 0, -1):
        lines.append(f"{indent}{prefix}{d} = {rem} % {dims[d]}")
        lines.append(f"{indent}rem = {rem} // {dims[d]}")
        rem = "rem"
    lines.append(f"{indent}{prefix}0 = {rem}")
    return lines


def kernel_source(name: str, group: GlueGroup, rank: int, label: Callable[[Node], str]) -> str:
    """Source of `_{name}_kernel` (@triton.jit) and its launcher `{name}(*inputs)` for `group`.

    `rank` is the rank of the group's shape; `label(node)` is the IR line a statement implements.
    The launcher returns the outputs (one tensor, or a tuple in `group.outputs` order).
    """
    return (_row_source if group.tail is not None else _flat_source)(name, group, rank, label)


def _launcher_head(name: str, group: GlueGroup, label: Callable[[Node], str]) -> list[str]:
    args = ", ".join(f"x{i}" for i in range(len(group.inputs)))
    doc = "; ".join(label(n).split(" = ", 1)[0] + " = " + n.op for n in group.nodes)
    shapes = ", ".join(f"x{i}.shape" for i in range(len(group.inputs)))
    lines = [f"def {name}({args}):", f'    """Generated from the IR: {doc}."""',
             f"    shape = torch.broadcast_shapes({shapes})"]
    if group.inputs:
        lines.append(f"    {args} = " + ", ".join(f"x{i}.expand(shape)" for i in range(len(group.inputs))))
    return lines


def _strides(group: GlueGroup) -> str:
    return "".join(f", *x{i}.stride()" for i in range(len(group.inputs)))


def _flat_source(name: str, group: GlueGroup, rank: int, label) -> str:
    dims = [f"s{d}" for d in range(rank)]
    xs = [f"x{i}" for i in range(len(group.inputs))]
    ys = [f"y{j}" for j in range(len(group.outputs))]
    strides = [f"x{i}_st{d}" for i in range(len(group.inputs)) for d in range(rank)]
    params = ", ".join(xs + ys + ["n"] + dims + strides + ["BLOCK: tl.constexpr"])
    lines = ["@triton.jit", f"def _{name}_kernel({params}):",
             "    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
             "    mask = offs < n"]
    lines += _index_lines("i", "offs", dims, "    ")

    def load(i: int, v: Value) -> str:
        offset = " + ".join(f"i{d} * x{i}_st{d}" for d in range(rank)) or "offs * 0"
        return _load_expr(i, v, offset, "mask")

    names: dict[int, str] = {}
    lines += _loads(group, load, "    ", names)
    lines += _body(group, group.nodes, names, label, "    ")
    for j, v in enumerate(group.outputs):
        lines.append(f"    tl.store(y{j} + offs, {names[id(v)]}.to(y{j}.dtype.element_ty), mask=mask)")
    lines.append("")
    lines += _launcher_head(name, group, label)
    for j, v in enumerate(group.outputs):
        lines.append(f"    y{j} = torch.empty(shape, dtype={v.type.dtype.torch}, device=x0.device)")
    lines += ["    n = y0.numel()", "    if n:", "        block = flat_block(n)",
              f"        _{name}_kernel[(triton.cdiv(n, block),)]({', '.join(xs + ys)}, n, *shape{_strides(group)}, BLOCK=block)",
              f"    return {', '.join(ys)}"]
    return "\n".join(lines) + "\n"


def _row_source(name: str, group: GlueGroup, rank: int, label) -> str:
    tail = group.tail
    assert tail is not None
    shape = tail.inputs[0].type.shape
    at = group.nodes.index(tail)
    prologue, after = group.nodes[:at], group.nodes[at + 1:]
    per_row = [n for n in after if n.outputs[0].type.shape != shape]  # one value per row
    epilogue = [n for n in after if n.outputs[0].type.shape == shape]
    softmax = tail.op in ("softmax", "log_softmax")
    row_values = {id(n.outputs[0]) for n in per_row} | (set() if softmax else {id(tail.outputs[0])})
    full_out = [v for v in group.outputs if id(v) not in row_values]
    row_out = [v for v in group.outputs if id(v) in row_values]
    lead = [f"s{d}" for d in range(rank - 1)]
    xs = [f"x{i}" for i in range(len(group.inputs))]
    ys = [f"y{j}" for j in range(len(full_out))]
    zs = [f"z{j}" for j in range(len(row_out))]
    strides = [f"x{i}_st{d}" for i in range(len(group.inputs)) for d in range(rank)]
    params = ", ".join(xs + ys + zs + ["N"] + lead + strides + ["BLOCK: tl.constexpr"])
    last = rank - 1
    out_dtype = tail.outputs[0].type.dtype
    lines = ["@triton.jit", f"def _{name}_kernel({params}):", "    row = tl.program_id(0).to(tl.int64)"]
    lines += _index_lines("i", "row", lead, "    ")
    for i in range(len(group.inputs)):
        lines.append(f"    base{i} = " + (" + ".join(f"i{d} * x{i}_st{d}" for d in range(rank - 1)) or "row * 0"))
    lines.append("    cols0 = tl.arange(0, BLOCK)")
    in_loop = "        "

    def load(i: int, v: Value) -> str:
        return _load_expr(i, v, f"base{i} + cols * x{i}_st{last}", "mask")

    def loop(names: dict[int, str], reads: Sequence[Value] | None = None) -> list[str]:
        """The head of a pass over the row: columns, mask, loads and the prologue (what `reads` needs of it)."""
        needed = _needed(prologue, reads) if reads is not None else prologue
        return (["    for start in range(0, N, BLOCK):", f"{in_loop}cols = start + cols0", f"{in_loop}mask = cols < N"]
                + _loads(group, load, in_loop, names) + _body(group, needed, names, label, in_loop))

    def stores(values: list[Value], names: dict[int, str]) -> list[str]:
        return [f"{in_loop}tl.store(y{full_out.index(v)} + row * N + cols, {names[id(v)]}.to(y{full_out.index(v)}.dtype.element_ty), mask=mask)"
                for v in values if v in full_out]

    # pass 1: the prologue's stored values, and the reduction (softmax: the row max)
    names: dict[int, str] = {}
    first = loop(names)
    v = names[id(tail.inputs[0])]
    first += stores([n.outputs[0] for n in prologue], names)
    lines.append(f"    # {label(tail)}")
    op = tail.op
    if op in ("sum", "mean"):
        lines += ["    acc = tl.zeros([BLOCK], dtype=tl.float32)"] + first + [f"{in_loop}acc += tl.where(mask, {v}, 0.0)"]
        lines.append("    res = " + rounded("tl.sum(acc, 0)" + (" / N" if op == "mean" else ""), out_dtype))
    elif op in ("amax", "amin"):
        init, comb = ('-float("inf")', "tl.maximum") if op == "amax" else ('float("inf")', "tl.minimum")
        lines += [f"    acc = tl.full([BLOCK], {init}, tl.float32)"] + first + [f"{in_loop}acc = {comb}(acc, tl.where(mask, {v}, {init}))"]
        lines.append(f"    res = {'tl.max' if op == 'amax' else 'tl.min'}(acc, 0)")
    else:  # softmax / log_softmax: the row max, then the sum of exponentials
        lines += ['    acc = tl.full([BLOCK], -float("inf"), tl.float32)'] + first + [f'{in_loop}acc = tl.maximum(acc, tl.where(mask, {v}, -float("inf")))']
        lines.append("    m = tl.max(acc, 0)")
        second_names: dict[int, str] = {}
        second = loop(second_names, tail.inputs)
        lines += ["    acc = tl.zeros([BLOCK], dtype=tl.float32)"] + second + [f"{in_loop}acc += tl.where(mask, tl.exp({second_names[id(tail.inputs[0])]} - m), 0.0)"]
        lines.append("    s = tl.sum(acc, 0)")
    # the values of one per row: the reduction's result and what follows from it
    row_names: dict[int, str] = {}
    if not softmax:
        row_names[id(tail.outputs[0])] = "res"
        used = {id(v) for n in per_row for v in n.inputs}
        for i, x in enumerate(group.inputs):
            if id(x) in used:  # an input of the reduced shape: one element per row
                row_names[id(x)] = f"c{i}"
                lines.append(f"    c{i} = tl.load(x{i} + base{i})" + (".to(tl.float32)" if x.type.dtype in FLOATS else ""))
        lines += _body(group, per_row, row_names, label, "    ")
        for j, x in enumerate(row_out):
            lines.append(f"    tl.store(z{j} + row, {row_names[id(x)]}.to(z{j}.dtype.element_ty))")
    # the last pass: softmax's values and the epilogue
    if softmax or epilogue:
        final_names: dict[int, str] = {k: v for k, v in row_names.items() if k not in {id(x) for x in group.inputs}}
        final = loop(final_names, ([tail.inputs[0]] if softmax else []) + [v for n in epilogue for v in n.inputs])
        if softmax:
            src = final_names[id(tail.inputs[0])]
            result = f"tl.exp({src} - m) / s" if op == "softmax" else f"{src} - m - tl.log(s)"
            final_names[id(tail.outputs[0])] = "soft"
            final.append(f"{in_loop}soft = {rounded(result, out_dtype)}")
        final += _body(group, epilogue, final_names, label, in_loop)
        final += stores(([tail.outputs[0]] if softmax else []) + [n.outputs[0] for n in epilogue], final_names)
        lines += final
    lines.append("")
    lines += _launcher_head(name, group, label)
    lines += ["    N = shape[-1]", "    rows = math.prod(shape[:-1])"]
    for j, x in enumerate(full_out):
        lines.append(f"    y{j} = torch.empty(shape, dtype={x.type.dtype.torch}, device=x0.device)")
    for j, x in enumerate(row_out):
        kept = x.type.rank == rank
        lines.append(f"    z{j} = torch.empty(shape[:-1]{' + (1,)' if kept else ''}, dtype={x.type.dtype.torch}, device=x0.device)")
    lines += ["    if rows and N:",
              f"        _{name}_kernel[(rows,)]({', '.join(xs + ys + zs)}, N, *shape[:-1]{_strides(group)}, BLOCK=row_block(N))"]
    results = [f"y{full_out.index(x)}" if x in full_out else f"z{row_out.index(x)}" for x in group.outputs]
    lines.append(f"    return {', '.join(results)}")
    return "\n".join(lines) + "\n"
