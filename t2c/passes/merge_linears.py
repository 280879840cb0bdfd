"""merge-linears: linears that read one input become one linear over the concatenated weights, then a split.

Q/K/V projections and an MLP's gate/up read the same activation. Each set of
`linear(x, W_i, b_i?)` (or `qlinear(x, Wq_i, s_i, b_i?)` of one mode and group)
with the same x becomes

    y = linear(x, cat(W_1..W_n), cat(b_1..b_n)?)      (qlinear: cat(Wq_i), cat(s_i))
    y_1, ..., y_n = split(y) {dim=-1, sizes=[N_1, ..., N_n]}

so the runtime runs one bigger matmul instead of n, and a W8A8 qlinear
quantizes its activation once. Exact: every output column is the same dot
product of the same row of x with the same weight row (per-output-channel
scales and per-token activation scales are the same numbers, so the w8a8
reference is bit-identical); only a float matmul's blocking may differ.

Runs after quantize-int8 (it merges the qlinears that pass makes, and leaves a
router or the LM head, kept float, apart from the int8 linears beside it) and
after the lifting and fusion passes, which match the separate projections.

In no preset: on ONNX Runtime's CPU provider (one thread, hidden 256, 256 tokens)
the merged graph measured no faster: W8A8 1.07x-1.10x the unmerged time on a
Llama-style decoder, 0.99x-1.05x on a BERT-style encoder, float32 1.02x-1.06x (the
Split copies and the wider scale epilogue are suspects; not isolated). Name it
(`-O2,merge-linears`) where a runtime gains from fewer, wider matmuls.

Preconditions: weights (and biases) are params; all of a set have a bias or
none has; each weight is read by that linear only (else the file would hold
it twice). Near-misses say which condition failed. No options.
Stats: merged (linears replaced), merged_groups (new linears made).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..ir.core import Graph, Node, Value
from ..ir.opdefs.shape import SplitAttrs
from .manager import Pass, PassResult, register_pass
from .rewrite import Match, RewriteRule, apply_rules

OPS = ("linear", "qlinear")


def _kind(node: Node) -> tuple:
    """What members of one merged linear must share: op, attrs (mode, group), bias or none, operand dtypes."""
    return (node.op, node.attrs, len(node.inputs), tuple(v.type.dtype for v in node.inputs[1:]))


def _describe(node: Node) -> str:
    bias = "a bias" if _has_bias(node) else "no bias"
    if node.op == "qlinear":
        return f"qlinear {{mode={node.attrs.mode}, group={node.attrs.group}}} with {bias}"
    return f"{node.op} with {bias}"


def _has_bias(node: Node) -> bool:
    return len(node.inputs) > (3 if node.op == "qlinear" else 2)


def _unmergeable(node: Node, graph: Graph) -> str | None:
    """Why `node` cannot join any merged linear, or None."""
    for v in node.inputs[1:]:
        if not graph.is_param(v):
            return f"operand {v.name or 'value'} of {node.op} is not a param (its weights are not constant)"
        if any(u is not node for u in v.users) or any(v is o for o in graph.output_values()):
            return f"param @{v.name} is also read elsewhere (a merged copy would store it twice)"
    return None


@dataclass(frozen=True)
class MergeLinears(RewriteRule):
    """Linears (or qlinears of one mode and group) reading one x -> one linear over concatenated weights + split."""

    name = "merge-linears"
    stat = "merged_groups"

    def match(self, node, ctx):
        if node.op not in OPS or node.inputs[0].type.rank < 1:
            return None
        x = node.inputs[0]
        siblings = [u for u in x.users if u.op in OPS and u.inputs[0] is x]
        if len(siblings) < 2:
            return None
        return Match(node, {"x": x, "siblings": siblings})

    def check(self, m, ctx):
        node, graph = m.root, ctx.graph
        reason = _unmergeable(node, graph)
        if reason is not None:
            return reason
        group = self.group(m, ctx)
        if len(group) > 1:
            return None
        others = [u for u in m["siblings"] if u is not node]
        differ = [u for u in others if _kind(u) != _kind(node)]
        if differ:
            return f"the other readers of its input are {_describe(differ[0])}, this is {_describe(node)}"
        return _unmergeable(others[0], graph)

    @staticmethod
    def group(m: Match, ctx) -> list[Node]:
        """The root and its siblings it can merge with, in graph order (the root comes first: rules visit in order)."""
        kind = _kind(m.root)
        return [m.root] + [u for u in m["siblings"] if u is not m.root and _kind(u) == kind and _unmergeable(u, ctx.graph) is None]

    def rewrite(self, m, ctx):
        graph, rw = ctx.graph, ctx.rewriter
        members = self.group(m, ctx)
        first = min(members, key=graph.nodes.index)  # the merged node must come before every member's users
        operands = []
        for i in range(1, len(m.root.inputs)):
            stem = f"{m.root.inputs[i].name}.merged_"
            operands.append(rw.add_param(stem, torch.cat([_data(graph, u.inputs[i]) for u in members], 0)))
        merged = rw.insert(m.root.op, [m["x"], *operands], m.root.attrs, before=first)
        sizes = tuple(u.outputs[0].type.shape[-1] for u in members)
        parts = rw.insert("split", [merged.outputs[0]], SplitAttrs(dim=-1, sizes=sizes), before=first)
        for u, part in zip(members, parts.outputs):
            rw.replace_node(u, [part])
        ctx.count("merged", len(members))


def _data(graph: Graph, v: Value) -> torch.Tensor:
    """A param's tensor, or a meta tensor of its type (IR text carries types only)."""
    if v.name in graph.params:
        return graph.params[v.name]
    return torch.empty(v.type.concrete_shape({}), dtype=v.type.dtype.torch, device="meta")


@register_pass("merge-linears")
@dataclass(frozen=True)
class MergeLinearsPass(Pass):
    """Linears (and qlinears of one mode and group) reading the same input become one linear and a split (exact).

    Q/K/V and gate/up projections run as one matmul; a w8a8 qlinear quantizes its
    input once. Weights and biases must be params read by that linear alone.
    Runs after quantize-int8 and the lifting/fusion passes. See t2c/passes/merge_linears.py.
    """

    exact = True
    after = ("lift-moe", "lift-attention", "lift-linear-attention", "fuse-rope", "fuse-activation", "fuse-norm", "quantize-int8")

    def run(self, graph: Graph) -> PassResult:
        stats = apply_rules(graph, [MergeLinears()], max_sweeps=1)
        graph.remove_unused_params()
        stats.setdefault("merged", 0)
        return PassResult(graph, stats["merged_groups"] > 0, stats)
