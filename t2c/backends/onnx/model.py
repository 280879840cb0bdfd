"""Assemble the ONNX model: opset import, IR version, typed inputs/outputs, checks."""

from __future__ import annotations

import onnx
from onnx import helper

from ...errors import UserError
from ...ir.core import Graph, SymDim, TensorType
from .context import ONNX_DTYPE, Context, LoweringError
from .external import CHECK_INLINE_MAX, EXTERNAL_DATA_THRESHOLD, SpillingContext, check_inline_header, check_spilled, initializer_bytes, spill_path
from .flavors import get_flavor
from .lowering import lower_node

MIN_OPSET = 23  # Attention, RMSNormalization, Gelu with approximate


def value_info(name: str, t: TensorType) -> onnx.ValueInfoProto:
    """A typed graph input/output; bare symbols become dim_params, other symbolic dims stay unnamed."""
    shape = []
    for d in t.shape:
        if isinstance(d, int):
            shape.append(d)
        elif isinstance(d, SymDim) and d.expr in d.symbols:
            shape.append(d.expr)
        else:
            shape.append(None)
    return helper.make_tensor_value_info(name, ONNX_DTYPE[t.dtype], shape)


def build_model(graph: Graph, *, opset: int = MIN_OPSET, flavor: str = "standard", static: bool = False,
                external_threshold: int = EXTERNAL_DATA_THRESHOLD) -> onnx.ModelProto:
    """Lower every node of `graph` and wrap the result in a checked ModelProto.

    Initializers beyond `external_threshold` bytes in all are written to a spill file while
    lowering (external.py): the ModelProto then holds references, never the weights' bytes.
    """
    fl = get_flavor(flavor)
    if not isinstance(opset, int) or opset < MIN_OPSET:
        raise UserError(f"the ONNX backend needs opset {MIN_OPSET} or newer, got {opset}")
    if opset > onnx.defs.onnx_opset_version():
        raise UserError(f"opset {opset} is newer than this onnx package knows ({onnx.defs.onnx_opset_version()})")
    if static:
        dynamic = [f"{v.name}: {v.type}" for v in graph.inputs if not v.type.is_static]
        if dynamic:
            raise UserError(f"static=True needs static input shapes; trace with static shapes ({', '.join(dynamic)})")

    ctx = SpillingContext(graph, opset, flavor=fl, threshold=external_threshold)
    try:
        _check_constraints(ctx, graph)
        for node in graph.nodes:
            ctx.current_op = node.op
            for v, name in zip(node.outputs, lower_node(ctx, node)):
                ctx.bind(v, name)
        ctx.current_op = "output"
        _name_outputs(ctx, graph)

        onnx_graph = helper.make_graph(
            ctx.nodes,
            graph.name,
            [value_info(v.name, v.type) for v in graph.inputs],
            [value_info(name, v.type) for name, v in graph.outputs],
        )
        # Import only the extra domains the nodes use, so a model without contrib ops is plain ai.onnx.
        used = {n.domain for n in ctx.nodes if n.domain not in ("", "ai.onnx")}
        allowed = dict(fl.extra_domains)
        if used - set(allowed):
            raise LoweringError(f"flavor {fl.name!r} may not use operator domains {sorted(used - set(allowed))}")
        opsets = [helper.make_opsetid("", opset)] + [helper.make_opsetid(d, allowed[d]) for d in sorted(used)]
        model = helper.make_model(onnx_graph, opset_imports=opsets, producer_name="t2c")
        # Initializers join the model last and leave the context at once: an inline model's weights
        # are then copied once (make_graph and make_model would each copy them again).
        model.graph.initializer.extend(ctx.initializers.values())
        ctx.initializers.clear()
        model.ir_version = helper.find_min_ir_version_for(opsets, ignore_unknown=True)  # contrib domains have no IR table
        ctx.finish(model)
        check(model)
        return model
    except BaseException:
        ctx.discard()  # a failed lowering leaves no spill file behind
        raise


def _name_outputs(ctx: Context, graph: Graph) -> None:
    """Give each graph output its name: the node computing it is renamed to write it directly, or,
    for an output that is an input, a param or listed twice, an Identity copies it. (An Identity per
    output costs a copy per run in ONNX Runtime: 8 MiB a decode step for a 2k-token KV cache.)"""
    producers = {out: node for node in ctx.nodes for out in node.output}
    taken = set(producers) | {v.name for v in graph.inputs} | set(ctx.initializers)
    renames: dict[str, str] = {}
    for name, v in graph.outputs:
        source = ctx.name(v)
        node = producers.get(source)
        if node is None or source in renames or name in taken:
            ctx.nodes.append(helper.make_node("Identity", [renames.get(source, source)], [name], name=ctx.fresh("output/Identity")))
            continue
        renames[source] = name
        taken.add(name)
    if renames:
        for node in ctx.nodes:
            node.output[:] = [renames.get(o, o) for o in node.output]
            node.input[:] = [renames.get(i, i) for i in node.input]


def _check_constraints(ctx: Context, graph: Graph) -> None:
    """Make the artifact itself refuse inputs that break the graph's constraints (`seq % 4 == 0`, `seq <= 2048`).

    ONNX has no assert op, so each input with a constrained dim is reshaped (allowzero=1) to its
    own shape with that dim rounded down to a multiple (`4*floor(seq/4)`) and clipped to its
    bound (`Min(seq,2048)`), and every node reads
    the reshaped tensor. A conforming input passes unchanged (a metadata-only Reshape); any
    other fails in ONNX Runtime with an error naming this node, whose name states the
    constraint, instead of computing `seq/4` windows by truncation. t2c's own runner
    (`t2c.load`, `t2c.compile`'s result) checks the same before it calls ONNX Runtime, with
    a plain message.
    """
    for v in graph.inputs:
        axes = [(axis, d.expr) for axis, d in enumerate(v.type.shape) if isinstance(d, SymDim) and d.expr in graph.constrained_symbols()]
        if not axes:
            continue
        shape, what = list(v.type.shape), []
        for axis, sym in axes:
            m, n = graph.constraints.get(sym, 1), graph.bounds.get(sym)
            size = sym if n is None else f"Min({sym},{n})"  # a bound: the size clipped to it
            shape[axis] = SymDim(size if m == 1 else f"{m}*floor({size}/{m})")
            rules = ([f"a multiple of {m}"] if m > 1 else []) + ([f"at most {n}"] if n is not None else [])
            what.append(f"axis {axis} ({sym}) must be {' and '.join(rules)}")
        ctx.current_op = "constraint"
        checked = ctx.emit("Reshape", [v.name, ctx.shape(shape)], allowzero=1)
        what = ", ".join(what)
        ctx.nodes[-1].name = f"t2c constraint: input {v.name} {what}"
        ctx.bind(v, checked)


def check(model: onnx.ModelProto) -> None:
    """onnx.checker (full) and strict shape inference; a failure names the ONNX node and its IR op."""
    try:
        if spill_path(model) is not None:  # weights in a spill file (external.py): checked from a file beside it
            check_spilled(model)
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
        elif initializer_bytes(model) > CHECK_INLINE_MAX:  # in memory the checks would copy the weights ~6 times
            check_inline_header(model)
        else:
            onnx.checker.check_model(model, full_check=True)
            onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as e:
        raise LoweringError(f"the lowered ONNX model fails its checks (node names read <IR op>/<ONNX op>): {e}") from e
