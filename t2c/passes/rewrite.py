"""Pattern / check / rewrite: the small API that rewriting passes are written in.

A `RewriteRule` has three steps, kept apart so near-misses can be explained:

- `match(node)` looks at the graph around `node` and returns a `Match` (the root
  node plus named captures) or None when the shape is not there at all;
- `check(match)` returns None when the rewrite is valid, else a one-line reason
  (`t2c opt --debug-rewrites` prints these: "why did my attention not lift?");
- `rewrite(rewriter, match)` changes the graph, only through the `Rewriter`.

Rules keep no state between calls: everything a rule learns lives in the Match,
so one rule object can be shared and applied anywhere. `apply_rules` walks the
graph, applies rules until nothing changes (bounded), and erases the nodes a
rewrite leaves dead.
"""

from __future__ import annotations

import contextlib
import contextvars
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator, Sequence

import torch

from ..ir.core import Graph, Node, TensorType, Value
from ..ir.printer import Namer, format_node


@dataclass
class Match:
    """A matched pattern: its root node and what the rule captured on the way."""

    root: Node
    captures: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.captures[key]


class RewriteRule:
    """Base of rewrite rules. `name` names it in debug output; `stat` is the counter it bumps."""

    name: ClassVar[str] = ""
    stat: ClassVar[str] = "rewrites"

    def match(self, node: Node) -> Match | None:
        raise NotImplementedError

    def check(self, match: Match) -> str | None:
        return None

    def rewrite(self, rewriter: "Rewriter", match: Match) -> None:
        raise NotImplementedError


class Rewriter:
    """The one door through which rules and passes mutate a graph; it counts what it does.

    Counts: `nodes_inserted`, `nodes_erased`, `uses_replaced`, `params_added`.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        self.counts: dict[str, int] = {"nodes_inserted": 0, "nodes_erased": 0, "uses_replaced": 0, "params_added": 0}
        self._erased: set[int] = set()

    def insert(
        self,
        op: str,
        inputs: Sequence[Value],
        attrs: Any = None,
        *,
        before: Node,
        output_types: Iterable[TensorType] | None = None,
    ) -> Node:
        """A new node placed just before `before` (types inferred unless given)."""
        node = self.graph.add_node(op, inputs, attrs, output_types, before=before)
        # A node made to replace others belongs where they came from (module, source line):
        # reports and `inspect --format dot` group by it.
        node.meta = dict(before.meta)
        self.counts["nodes_inserted"] += 1
        return node

    def add_param(self, stem: str, tensor: torch.Tensor) -> Value:
        """A new param holding `tensor`, named `stem0`, `stem1`, ... whichever is free."""
        self.counts["params_added"] += 1
        return self.graph.add_param(self.graph.fresh_param_name(stem), tensor)

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Point every use of `old`, graph outputs included, at `new`."""
        if old is new:
            return
        if old.type != new.type and not _same_type(old.type, new.type):
            raise ValueError(f"replacing {old.type} by {new.type} would change types")
        self.graph.replace_all_uses(old, new)
        self.counts["uses_replaced"] += 1

    def replace_node(self, node: Node, new_values: Sequence[Value]) -> None:
        """Replace each result of `node` by the matching value, then erase `node` and what only it used."""
        if len(new_values) != len(node.outputs):
            raise ValueError(f"{node.op} has {len(node.outputs)} results, got {len(new_values)} replacements")
        for old, new in zip(node.outputs, new_values):
            self.replace_all_uses(old, new)
        self.erase_dead(node)

    def erase(self, node: Node) -> None:
        """Remove a node whose results are unused."""
        self.graph.remove_node(node)
        self._erased.add(id(node))
        self.counts["nodes_erased"] += 1

    def erase_many(self, nodes: Iterable[Node]) -> int:
        """Remove many unused nodes in one sweep over the node list (linear, not quadratic)."""
        doomed = {id(n): n for n in nodes}
        for n in doomed.values():
            n.drop_uses()
        self.graph.nodes = [n for n in self.graph.nodes if id(n) not in doomed]
        self._erased.update(doomed)
        self.counts["nodes_erased"] += len(doomed)
        return len(doomed)

    def is_dead(self, node: Node) -> bool:
        outputs = {id(v) for v in self.graph.output_values()}
        return all(not v.uses and id(v) not in outputs for v in node.outputs)

    def erase_dead(self, node: Node) -> None:
        """Erase `node` if it is dead, then the producers of its operands that this left dead."""
        stack = [node]
        while stack:
            n = stack.pop()
            if id(n) in self._erased or not self.is_dead(n):
                continue
            producers = [v.producer for v in n.inputs if v.producer is not None]
            self.erase(n)
            stack.extend(producers)

    def was_erased(self, node: Node) -> bool:
        return id(node) in self._erased


def _same_type(a: TensorType, b: TensorType) -> bool:
    from ..ir.verifier import types_match

    return types_match(a, b)


def apply_rules(
    graph: Graph,
    rules: Sequence[RewriteRule],
    debug: list[str] | None = None,
    *,
    max_sweeps: int = 16,
    rewriter: Rewriter | None = None,
) -> dict[str, int]:
    """Apply `rules` over the graph until a sweep changes nothing (at most `max_sweeps`).

    Returns the count of each rule's `stat` plus the rewriter's `nodes_erased`.
    When `debug` is a list, appends one "rule: node: reason" line per near-miss
    (a match whose check failed), each once.
    """
    rw = rewriter or Rewriter(graph)
    stats: dict[str, int] = {r.stat: 0 for r in rules}
    # (rule, node, reason) -> node; printed at the end so names match the final graph
    misses: dict[tuple[str, int, str], Node] = {}
    fired: set[tuple[str, int]] = set()  # a miss that later succeeded is no miss
    for _ in range(max_sweeps):
        changed = False
        for node in list(graph.nodes):
            for rule in rules:
                if rw.was_erased(node):
                    break
                m = rule.match(node)
                if m is None:
                    continue
                reason = rule.check(m)
                if reason is not None:
                    misses.setdefault((rule.name, id(node), reason), node)
                    continue
                rule.rewrite(rw, m)
                fired.add((rule.name, id(node)))
                stats[rule.stat] += 1
                changed = True
                rw.erase_dead(node)
        if not changed:
            break
    sink = debug if debug is not None else _NEAR_MISSES.get()
    if sink is not None and misses:
        name = Namer(graph)
        for (rule_name, node_id, reason), node in misses.items():
            if (rule_name, node_id) in fired or rw.was_erased(node):
                continue
            line = f"{rule_name}: {format_node(node, name)}: {reason}"
            if line not in sink:  # passes that call apply_rules repeatedly report a miss once
                sink.append(line)
    stats["nodes_erased"] = rw.counts["nodes_erased"]
    return stats


_NEAR_MISSES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("t2c_near_misses", default=None)


@contextlib.contextmanager
def collect_near_misses() -> Iterator[list[str]]:
    """Collect the near-misses of every `apply_rules` call inside the block (for `--debug-rewrites`).

    Passes keep their `run(graph)` signature; the collector reaches the rules
    through a context variable instead of an extra argument on every pass.
    """
    misses: list[str] = []
    token = _NEAR_MISSES.set(misses)
    try:
        yield misses
    finally:
        _NEAR_MISSES.reset(token)
