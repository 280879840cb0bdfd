"""Restrict every `attention` to a sliding window or to blocks (approximate)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..errors import UserError
from ..ir.core import DType, Graph, dim_sub, dims_equal
from ..ir.opdefs.attention import AttentionAttrs, attention_operands
from ..ir.opdefs.creation import ArangeAttrs, FullAttrs
from ..ir.opdefs.shape import ShapeAttrs
from .manager import Pass, PassResult, register_pass
from ..ir.printer import Namer, format_node
from .rewrite import Rewriter, near_misses_wanted, report_near_miss

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

    Over a KV cache (`--with-past`: keys past + seq, queries seq) the sliding window is ANDed into
    the mask operand instead (the structure counts queries and keys from 0 alike), in the cache's
    own frame, so it holds with a rolling cache too, and global tokens are the first G keys of that
    frame (the rolling cache keeps them in front); blocks are not carried into a cache (near-miss).

    Options: size (>= 1, required), kind (sliding | block), global (>= 0).
    Stats: windowed, already_windowed, attention_nodes, kv_cache (windows put into a cache's mask).
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
        stats = {"windowed": 0, "already_windowed": 0, "attention_nodes": 0, "kv_cache": 0}
        for node in list(graph.nodes):
            if node.op != "attention":
                continue
            stats["attention_nodes"] += 1
            if not dims_equal(node.inputs[0].type.shape[-2], node.inputs[1].type.shape[-2]):
                # Keys of a KV cache (--with-past): query i is position past + i, which the op's
                # structure cannot say; the window goes into the mask operand instead.
                why = self._cache_miss()
                if why is None:
                    _window_into_mask(rw, node, self.windowed(node.attrs).window, self.global_tokens)
                    stats["kv_cache"] += 1
                    continue
                if near_misses_wanted():
                    report_near_miss(f"window: {format_node(node, Namer(graph))}: attends over a KV cache and {why}")
                continue
            attrs = self.windowed(node.attrs)
            if attrs == node.attrs:
                stats["already_windowed"] += 1
                continue
            new = rw.insert("attention", node.inputs, attrs, before=node, output_types=[v.type for v in node.outputs])
            rw.replace_node(node, new.outputs)
            stats["windowed"] += 1
        return PassResult(graph, stats["windowed"] + stats["kv_cache"] > 0, stats)


    def _cache_miss(self) -> str | None:
        """Why this window cannot go into the mask of an attention over a KV cache, or None."""
        if self.kind != "sliding":
            return "blocks count positions from the sequence's start, which a rolling cache no longer holds"
        return None


def _window_into_mask(rw: Rewriter, node, window: tuple[int, int], global_tokens: int = 0) -> None:
    """attention(q, k, v, mask) over keys [past + seq] -> the same with mask & band, where the band
    holds |i - j| inside `window` (left, right; -1 unlimited) and query i is key position Sk - Sq + i:
    the cache's own frame, so a rolling cache (the last W - 1 positions) keeps the same distances.
    With global tokens, keys j < G are in the band too: the first G positions of the frame, which a
    rolling cache keeps in front (frontends/hf_past.cache_window)."""
    q, k = node.inputs[0].type, node.inputs[1].type
    sq, sk = q.shape[-2], k.shape[-2]
    i64 = DType.I64

    def ins(op, inputs, attrs=None):
        return rw.insert(op, inputs, attrs, before=node).outputs[0]

    qpos = ins("reshape", [ins("arange", [], ArangeAttrs(start=dim_sub(sk, sq), end=sk, dtype=i64))], ShapeAttrs((sq, 1)))
    kpos = ins("reshape", [ins("arange", [], ArangeAttrs(start=0, end=sk, dtype=i64))], ShapeAttrs((1, sk)))
    behind = ins("sub", [qpos, kpos])  # i - j: how far key j lies behind query i
    left, right = window
    band = None
    for op, bound in [("le", left)] * (left >= 0) + [("ge", -right)] * (right >= 0):  # i - j <= left, i - j >= -right
        cond = ins(op, [behind, ins("full", [], FullAttrs(shape=(), value=bound, dtype=i64))])
        band = cond if band is None else ins("bitwise_and", [band, cond])
    if global_tokens:  # key j < G: seen by every query (the queries are never among them after the prompt)
        sinks = ins("lt", [kpos, ins("full", [], FullAttrs(shape=(), value=global_tokens, dtype=i64))])
        band = sinks if band is None else ins("bitwise_or", [band, sinks])
    band = ins("reshape", [band], ShapeAttrs((1, 1, sq, sk)))
    a = node.attrs
    q_, k_, v_, mask, cos, sin = attention_operands(node.inputs, a)
    if mask is None:
        mask = band
    elif mask.type.dtype == DType.BOOL:
        mask = ins("bitwise_and", [mask, band])
    else:  # an additive mask: -inf outside the band
        mask = ins("where", [band, mask, ins("full", [], FullAttrs(shape=(), value=float("-inf"), dtype=mask.type.dtype))])
    operands = [q_, k_, v_, mask] + ([cos, sin] if cos is not None else [])
    new = rw.insert("attention", operands, a, before=node, output_types=[v.type for v in node.outputs])
    rw.replace_node(node, new.outputs)


def _tighter(old: int, new: int) -> int:
    """The tighter of two window bounds, where -1 means unlimited."""
    if old < 0:
        return new
    if new < 0:
        return old
    return min(old, new)
