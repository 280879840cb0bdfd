"""sparsify-moe: run each expert on its own tokens only (`experts {dispatch="sparse"}`).

The `experts` op (t2c/ir/opdefs/experts.py) means the same function whatever
its dispatch; "sparse" tells backends to group the (token, slot) routes by
expert and run each expert's FFN on its routes alone, so expert work is K/E
of the dense form's (every expert on every token). Exact: only the order in
which a token's K contributions are added may change (float rounding).

It also records, as `nonneg_weights`, whether the routing weights are proved
>= 0 by how they are computed (softmax, sigmoid, top-k of those, sums and
quotients: `patterns.nonnegative`): backends may then use kernels that route
by probabilities (ONNX Runtime's MoE).

Preconditions: `experts` ops (the frontend captures library experts modules;
lift-moe lifts hand-written ones). No options. Stats: sparsified,
already_sparse, nonneg_weights.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..ir.core import Graph
from .manager import Pass, PassResult, register_pass
from .patterns import nonnegative
from .rewrite import Rewriter


@register_pass("sparsify-moe")
@dataclass(frozen=True)
class SparsifyMoE(Pass):
    """Make every `experts` op dispatch sparsely: each expert runs on the tokens routed to it (exact)."""

    exact = True
    after = ("lift-moe",)  # it sparsifies the experts ops lift-moe makes; before it, they would stay dense

    def run(self, graph: Graph) -> PassResult:
        rw = Rewriter(graph)
        stats = {"sparsified": 0, "already_sparse": 0, "nonneg_weights": 0}
        for node in list(graph.nodes):
            if node.op != "experts":
                continue
            nonneg = node.attrs.nonneg_weights or nonnegative(node.inputs[2], graph)
            stats["nonneg_weights"] += nonneg
            if node.attrs.dispatch == "sparse" and nonneg == node.attrs.nonneg_weights:
                stats["already_sparse"] += 1
                continue
            attrs = dataclasses.replace(node.attrs, dispatch="sparse", nonneg_weights=nonneg)
            new = rw.insert("experts", node.inputs, attrs, before=node, output_types=[v.type for v in node.outputs])
            rw.replace_node(node, new.outputs)
            stats["sparsified"] += 1
        return PassResult(graph, stats["sparsified"] > 0, stats)
