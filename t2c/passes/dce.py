"""Dead-code elimination."""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.core import Graph
from .manager import Pass, PassResult, register_pass
from .rewrite import Rewriter


@register_pass("dce")
@dataclass(frozen=True)
class DeadCodeElimination(Pass):
    """Remove nodes none of whose results reach a graph output, then params nothing uses.

    A node with several results (topk, split) stays when any one of them is
    live. Graph inputs are the signature and always stay. Every IR op is pure,
    so removing an unused node never changes what the graph computes.

    Stats: nodes_removed, params_removed. No options.
    """

    exact = True

    def run(self, graph: Graph) -> PassResult:
        live = set(graph.output_values())
        dead = []
        # One backward sweep suffices: nodes are in topological order, so every
        # user of a node is seen before the node itself.
        for node in reversed(graph.nodes):
            if any(v in live for v in node.outputs):
                live.update(node.inputs)
            else:
                dead.append(node)
        removed = Rewriter(graph).erase_many(dead)
        params = graph.remove_unused_params()
        return PassResult(graph, bool(removed or params), {"nodes_removed": removed, "params_removed": params})
