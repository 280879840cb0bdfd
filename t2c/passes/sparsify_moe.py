"""sparsify-moe: run each expert on its own tokens only (`experts {dispatch="sparse"}`).

The `experts` op (t2c/ir/opdefs/experts.py) means the same function whatever
its dispatch; "sparse" tells backends to group the (token, slot) routes by
expert and run each expert's FFN on its routes alone, so expert work is K/E
of the dense form's (every expert on every token). Exact: only the order in
which a token's K contributions are added may change (float rounding).

Preconditions: `experts` ops (the frontend captures library experts modules;
lift-moe lifts hand-written ones). No options. Stats: sparsified,
already_sparse.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..ir.core import Graph
from .manager import Pass, PassResult, register_pass
from .rewrite import Rewriter


@register_pass("sparsify-moe")
@dataclass(frozen=True)
class SparsifyMoE(Pass):
    """Make every `experts` op dispatch sparsely: each expert runs on the tokens routed to it (exact)."""

    exact = True

    def run(self, graph: Graph) -> PassResult:
        rw = Rewriter(graph)
        stats = {"sparsified": 0, "already_sparse": 0}
        for node in list(graph.nodes):
            if node.op != "experts":
                continue
            if node.attrs.dispatch == "sparse":
                stats["already_sparse"] += 1
                continue
            attrs = dataclasses.replace(node.attrs, dispatch="sparse")
            new = rw.insert("experts", node.inputs, attrs, before=node, output_types=[v.type for v in node.outputs])
            rw.replace_node(node, new.outputs)
            stats["sparsified"] += 1
        return PassResult(graph, stats["sparsified"] > 0, stats)
