"""Pattern / check / rewrite: the small API that rewriting passes are written in.

A `RewriteRule` has three steps, kept apart so near-misses can be explained:

- `match(node, ctx)` looks at the graph around `node` and returns a `Match` (the
  root node plus named captures) or None when the shape is not there at all;
- `check(match, ctx)` returns None when the rewrite is valid, else a one-line
  reason (`t2c opt --debug-rewrites` prints these: "why did my attention not lift?");
- `rewrite(match, ctx)` changes the graph, only through `ctx.rewriter`.

Rules keep no state: a rule object holds at most its configuration (a frozen
dataclass's fields), so one rule can be shared and applied anywhere. What a
rule needs beyond the node comes in `ctx` (a `RewriteContext`): the graph, the
rewriter, pass-local data (`ctx.data`, e.g. a cache of mask classifications
keyed by value), and `ctx.count(key)` for counts beyond the rule's own `stat`.
`apply_rules` owns every count: it bumps each rule's `stat` once per rewrite,
merges `ctx.count`s, and returns them together.

Matchers that several passes need live in `patterns.py`.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar, Iterable, Iterator, Sequence

import torch

from ..ir.core import DType, Graph, Node, TensorType, Value
from ..ir.printer import Namer, format_node
from ..ir.verifier import types_match


@dataclass
class Match:
    """A matched pattern: its root node and what the rule captured on the way."""

    root: Node
    captures: dict[str, Any] = field(default_factory=dict)

    def __getitem__(self, key: str) -> Any:
        return self.captures[key]


class RewriteRule:
    """Base of rewrite rules. `name` names it in debug output; `stat` is the counter `apply_rules` bumps.

    Subclasses hold no per-run state: either no instance attributes at all, or
    configuration only, as fields of a frozen dataclass (`apply_rules` checks).
    """

    name: ClassVar[str] = ""
    stat: ClassVar[str] = "rewrites"

    def match(self, node: Node, ctx: "RewriteContext") -> Match | None:
        raise NotImplementedError

    def check(self, match: Match, ctx: "RewriteContext") -> str | None:
        return None

    def rewrite(self, match: Match, ctx: "RewriteContext") -> None:
        raise NotImplementedError


class Rewriter:
    """The one door through which rules and passes mutate a graph; it counts what it does.

    Counts: `nodes_inserted`, `nodes_erased`, `uses_replaced`, `params_added`, `params_erased`.
    """

    def __init__(self, graph: Graph):
        self.graph = graph
        self.counts: dict[str, int] = {"nodes_inserted": 0, "nodes_erased": 0, "uses_replaced": 0, "params_added": 0, "params_erased": 0}

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
        """A new param holding `tensor`, named `stem0`, `stem1`, ... whichever is free.

        A meta tensor adds the type alone: a graph parsed from text has params without
        data, and what a pass derives from them has none either.
        """
        self.counts["params_added"] += 1
        name = self.graph.fresh_param_name(stem)
        if tensor.is_meta:
            return self.graph.add_param(name, None, TensorType(DType.from_torch(tensor.dtype), tuple(tensor.shape)))
        return self.graph.add_param(name, tensor)

    def erase_param(self, name: str) -> None:
        """Remove param `name`, which nothing uses any more (a rewrite replaced its users)."""
        v = self.graph.param_values[name]
        if v.uses or any(v is o for o in self.graph.output_values()):
            raise ValueError(f"cannot remove param @{name}: it is still used")
        del self.graph.param_values[name]
        self.graph.params.pop(name, None)
        self.counts["params_erased"] += 1

    def replace_all_uses(self, old: Value, new: Value) -> None:
        """Point every use of `old`, graph outputs included, at `new`."""
        if old is new:
            return
        if old.type != new.type and not types_match(old.type, new.type):
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
        self.counts["nodes_erased"] += 1

    def erase_many(self, nodes: Iterable[Node]) -> int:
        """Remove many unused nodes in one sweep over the node list (linear, not quadratic)."""
        n = self.graph.remove_nodes(nodes)
        self.counts["nodes_erased"] += n
        return n

    def is_dead(self, node: Node) -> bool:
        outputs = set(self.graph.output_values())
        return all(not v.uses and v not in outputs for v in node.outputs)

    def erase_dead(self, node: Node) -> None:
        """Erase `node` if it is dead, then the producers of its operands that this left dead."""
        stack = [node]
        while stack:
            n = stack.pop()
            if n.erased or not self.is_dead(n):
                continue
            producers = [v.producer for v in n.inputs if v.producer is not None]
            self.erase(n)
            stack.extend(producers)

    @staticmethod
    def was_erased(node: Node) -> bool:
        return node.erased


@dataclass
class RewriteContext:
    """What a rule sees besides the node: the graph, the rewriter, pass-local data, extra counts."""

    graph: Graph
    rewriter: Rewriter
    data: dict[str, Any] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)

    def count(self, key: str, n: int = 1) -> None:
        """Add `n` to the count `key`, reported with the rules' stats by `apply_rules`."""
        self.counts[key] = self.counts.get(key, 0) + n

    def cached(self, table: str, key: Any, compute: Any) -> Any:
        """`compute()` once per `key` in the pass-local table `table` (keys are objects, never id()s)."""
        memo = self.data.setdefault(table, {})
        if key not in memo:
            memo[key] = compute()
        return memo[key]


def _check_stateless(rule: RewriteRule) -> None:
    """Rules carry configuration at most: fields of a frozen dataclass, or nothing."""
    state = vars(rule) if hasattr(rule, "__dict__") else {}
    if not state:
        return
    params = getattr(type(rule), "__dataclass_params__", None)
    if params is None or not params.frozen or set(state) != {f.name for f in dataclasses.fields(rule)}:
        raise TypeError(f"rewrite rule {type(rule).__name__} keeps state {sorted(state)}; pass it through the RewriteContext")


def apply_rules(
    graph: Graph,
    rules: Sequence[RewriteRule],
    debug: list[str] | None = None,
    *,
    max_sweeps: int = 16,
    rewriter: Rewriter | None = None,
    data: dict[str, Any] | None = None,
) -> dict[str, int]:
    """Apply `rules` over the graph until a sweep changes nothing (at most `max_sweeps`).

    Returns the count of each rule's `stat`, the counts rules made with
    `ctx.count`, and the rewriter's `nodes_erased` (its total so far). `data` is the pass-local
    data rules see as `ctx.data` (shared across calls when the pass passes the
    same dict). When `debug` is a list, appends one "rule: node: reason" line per
    near-miss (a match whose check failed), each once.
    """
    for rule in rules:
        _check_stateless(rule)
    ctx = RewriteContext(graph, rewriter or Rewriter(graph), data if data is not None else {})
    stats: dict[str, int] = {r.stat: 0 for r in rules}
    # (rule, node, reason) -> None; printed at the end so names match the final graph.
    # Keyed by the node object: it stays alive while listed, so no other node can alias it.
    misses: dict[tuple[str, Node, str], None] = {}
    fired: set[tuple[str, Node]] = set()  # a miss that later succeeded is no miss
    for _ in range(max_sweeps):
        changed = False
        for node in list(graph.nodes):
            for rule in rules:
                if node.erased:
                    break
                m = rule.match(node, ctx)
                if m is None:
                    continue
                reason = rule.check(m, ctx)
                if reason is not None:
                    misses.setdefault((rule.name, node, reason), None)
                    continue
                rule.rewrite(m, ctx)
                fired.add((rule.name, node))
                stats[rule.stat] += 1
                changed = True
                ctx.rewriter.erase_dead(node)
        if not changed:
            break
    if misses and (debug is not None or near_misses_wanted()):
        name = Namer(graph)
        for rule_name, node, reason in misses:
            if (rule_name, node) in fired or node.erased:
                continue
            report_near_miss(f"{rule_name}: {format_node(node, name)}: {reason}", debug)
    for key, n in ctx.counts.items():
        stats[key] = stats.get(key, 0) + n
    stats["nodes_erased"] = ctx.rewriter.counts["nodes_erased"]  # the rewriter's total, across calls that share it
    return stats


_NEAR_MISSES: contextvars.ContextVar[list[str] | None] = contextvars.ContextVar("t2c_near_misses", default=None)


def near_misses_wanted() -> bool:
    """Whether a `collect_near_misses` block is listening (passes skip formatting lines otherwise)."""
    return _NEAR_MISSES.get() is not None


def report_near_miss(line: str, sink: list[str] | None = None) -> None:
    """Record one near-miss line (`<pass or rule>: <node>: <reason>`) for `--debug-rewrites`.

    For passes without rules too (cast-precision's kept nodes). A line already
    recorded is not repeated: passes that run their rules repeatedly report a miss once.
    """
    sink = sink if sink is not None else _NEAR_MISSES.get()
    if sink is not None and line not in sink:
        sink.append(line)


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
