"""Dead-code elimination."""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.core import Graph, SymDim
from ..ir.ops import get_op
from ..ir.verifier import attr_symbols
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
        # A node that introduces a data-dependent dim (`data_size`: n0) stays while a live
        # node's type or attrs use that dim, even when nothing reads its result.
        live_syms = {s for v in live for s in _symbols(v.type.shape)}
        dead = []
        # One backward sweep suffices: nodes are in topological order, so every
        # user of a node (and of its dims) is seen before the node itself.
        for node in reversed(graph.nodes):
            introduced = {sym for sym, _, _ in get_op(node.op).data_dims(node.attrs)}
            if any(v in live for v in node.outputs) or introduced & live_syms:
                live.update(node.inputs)
                live_syms |= set(attr_symbols(node.attrs))
                for v in (*node.inputs, *node.outputs):
                    live_syms |= _symbols(v.type.shape)
            else:
                dead.append(node)
        removed = Rewriter(graph).erase_many(dead)
        params = graph.remove_unused_params()
        return PassResult(graph, bool(removed or params), {"nodes_removed": removed, "params_removed": params})


def _symbols(shape) -> set[str]:
    return {s for d in shape if isinstance(d, SymDim) for s in d.symbols}
