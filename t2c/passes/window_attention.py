"""Restrict every `attention` to a sliding window or to blocks (approximate)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import UserError
from ..ir.core import Graph
from ..ir.opdefs.attention import AttentionAttrs
from .manager import Pass, PassResult, register_pass
from .rewrite import Rewriter

KINDS = ("sliding", "block")


@register_pass("window")
@dataclass(frozen=True)
class WindowAttention(Pass):
    """Make every attention local: a sliding window of `size` keys, or blocks of `size`.

    kind=sliding: a causal attention becomes window=[size-1,-1] (query i sees keys
    i-size+1..i); a bidirectional one becomes window=[size-1,size-1] (|i-j| < size).
    A window the node already has is kept where it is tighter, side by side.
    kind=block: block=size (attention within blocks of `size` positions), causality kept;
    an existing block that divides `size` is already tighter and is kept.
    global=G: the first G positions see and are seen by every position (Longformer
    global tokens; with causal attention, StreamingLLM-style attention sinks).

    Approximate: the result is exact when the model already attends within that window
    (the node is then left unchanged) or when no sequence is longer than `size`, and
    differs otherwise; the compile report measures by how much. Runs after
    lift-attention, which produces the `attention` nodes this pass rewrites.

    Options: size (>= 1, required), kind (sliding | block), global (>= 0).
    Stats: windowed, already_windowed, attention_nodes.
    """

    size: int = 0
    kind: str = "sliding"
    global_tokens: int = 0

    exact = False
    after = ("lift-attention",)
    option_aliases = {"global": "global_tokens"}

    def __post_init__(self) -> None:
        if self.size < 1:
            raise UserError(f"window needs size=W with W >= 1, got size={self.size}")
        if self.kind not in KINDS:
            raise UserError(f"option kind of pass window must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.global_tokens < 0:
            raise UserError(f"option global of pass window must be >= 0, got {self.global_tokens}")

    def windowed(self, a: AttentionAttrs) -> AttentionAttrs:
        """The attrs of `a` restricted by this pass's window."""
        new = a
        if self.kind == "sliding":
            w = self.size - 1
            left = _tighter(a.window[0], w)
            right = _tighter(a.window[1], -1 if a.causal else w)
            new = dataclasses.replace(new, window=(left, right))
        else:
            keep = a.block > 0 and self.size % a.block == 0
            new = dataclasses.replace(new, block=a.block if keep else self.size)
        if self.global_tokens > 0:
            new = dataclasses.replace(new, global_tokens=self.global_tokens)
        return new

    def run(self, graph: Graph) -> PassResult:
        rw = Rewriter(graph)
        stats = {"windowed": 0, "already_windowed": 0, "attention_nodes": 0}
        for node in list(graph.nodes):
            if node.op != "attention":
                continue
            stats["attention_nodes"] += 1
            attrs = self.windowed(node.attrs)
            if attrs == node.attrs:
                stats["already_windowed"] += 1
                continue
            new = rw.insert("attention", node.inputs, attrs, before=node, output_types=[v.type for v in node.outputs])
            rw.replace_node(node, new.outputs)
            stats["windowed"] += 1
        return PassResult(graph, stats["windowed"] > 0, stats)


def _tighter(old: int, new: int) -> int:
    """The tighter of two window bounds, where -1 means unlimited."""
    if old < 0:
        return new
    if new < 0:
        return old
    return min(old, new)
