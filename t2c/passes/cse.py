"""Common-subexpression elimination."""

from __future__ import annotations

from dataclasses import dataclass

from ..ir.core import Graph
from ..ir.printer import format_attrs
from .manager import Pass, PassResult, register_pass
from .rewrite import Rewriter


@register_pass("cse")
@dataclass(frozen=True)
class CommonSubexpressionElimination(Pass):
    """Merge nodes that apply the same op with the same attrs to the same operands.

    Operands must be the very same values; attrs are compared by their printed
    text rather than `==`, because `==` calls `0.0` and `-0.0` (or `1` and
    `true`) equal where the results differ. Every IR op is pure, so the later
    duplicate is replaced by the earlier one. One forward sweep reaches the
    fixpoint: merging operands first makes their users identical in turn.

    Stats: nodes_merged. No options.
    """

    exact = True

    def run(self, graph: Graph) -> PassResult:
        rw = Rewriter(graph)
        seen: dict[tuple, object] = {}
        duplicates = []
        for node in graph.nodes:
            key = (
                node.op,
                node.inputs,  # the very same values (hashed by identity)
                type(node.attrs),
                format_attrs(node.attrs),
                tuple(str(v.type) for v in node.outputs),
            )
            first = seen.setdefault(key, node)
            if first is node:
                continue
            for old, new in zip(node.outputs, first.outputs):  # type: ignore[attr-defined]
                rw.replace_all_uses(old, new)
            duplicates.append(node)
        merged = rw.erase_many(duplicates)
        return PassResult(graph, merged > 0, {"nodes_merged": merged})
