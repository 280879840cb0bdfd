"""Replace softmax `attention` by `linear_attention` (approximate)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..ir.core import Graph
from ..ir.opdefs.attention import FEATURE_MAPS, LinearAttentionAttrs, attention_operands
from ..ir.opdefs.rope import RopeAttrs
from .manager import Pass, PassResult, register_pass
from ..ir.printer import Namer, format_node
from .linear_state import linearize_over_cache, match_cache_attention, over_cache
from .rewrite import Match, RewriteContext, RewriteRule, Rewriter, apply_rules, near_misses_wanted, report_near_miss

CAUSAL_CHOICES = ("auto", "true", "false")


@dataclass(frozen=True)
class LinearizeAttention(RewriteRule):
    """attention(q, k, v) -> linear_attention(q, k, v), when nothing but causality shapes the mask."""

    feature: str = "elu1"
    causal: str = "auto"

    name = "linear-attention"
    stat = "linearized"

    def match(self, node, ctx: RewriteContext) -> Match | None:
        return Match(node) if node.op == "attention" else None

    def check(self, match: Match, ctx: RewriteContext) -> str | None:
        node, a = match.root, match.root.attrs
        if over_cache(ctx.graph, node):
            return "attends over a KV cache (see the cache rule's near-miss)"
        if attention_operands(node.inputs, a)[3] is not None:
            return "has a mask operand, which linear attention cannot apply"
        return _structure_miss(a)

    def rewrite(self, match: Match, ctx: RewriteContext) -> None:
        rewriter = ctx.rewriter
        node, a = match.root, match.root.attrs
        causal = a.causal if self.causal == "auto" else self.causal == "true"
        attrs = LinearAttentionAttrs(feature=self.feature, causal=causal, kv_heads=a.kv_heads)
        q, k, v, _, cos, sin = attention_operands(node.inputs, a)
        if a.rope != "none":
            # A fused RoPE still rotates q and k: apply it explicitly, then linearise.
            rope = RopeAttrs(interleaved=a.rope == "interleaved", rotary_dim=a.rotary_dim, cache=a.rope_cache, positions=a.rope_positions)
            q = rewriter.insert("rope", [q, cos, sin], rope, before=node).outputs[0]
            k = rewriter.insert("rope", [k, cos, sin], rope, before=node).outputs[0]
        new = rewriter.insert("linear_attention", [q, k, v], attrs, before=node, output_types=[v.type for v in node.outputs])
        rewriter.replace_node(node, new.outputs)


def _structure_miss(a) -> str | None:
    if a.window != (-1, -1) or a.block > 0 or a.global_tokens > 0:
        return "has a window, block or global-token structure, which linear attention cannot apply"
    if a.softcap > 0:
        return "uses logit soft-capping, which has no linear form"
    return None


def _cache_miss(graph: Graph, node, causal: str):
    """The cache structure of an attention over a KV cache, or why it cannot become a decode state."""
    a = node.attrs
    why = _structure_miss(a)
    if why is None and a.rope != "none":
        why = "rotates q and k inside the attention, which a cache never does (keys are cached rotated)"
    if why is None and causal == "false":
        why = "decodes from a cache, which is causal; causal=false cannot apply"
    return why or match_cache_attention(graph, node)


@register_pass("linear-attention")
@dataclass(frozen=True)
class LinearAttention(Pass):
    """Replace each softmax `attention` by `linear_attention` with feature map `feature`.

    out_i = phi(q_i) sum_j phi(k_j)^T v_j / (phi(q_i) . sum_j phi(k_j)), the sums running
    over j <= i when causal: linear in sequence length instead of quadratic. The softmax
    scale has no counterpart and is dropped. causal=auto keeps each attention's own
    causality; true or false force it. Attention with a mask operand, a window, block or
    global-token structure, or softcap cannot be linearised faithfully and is left
    unchanged (`t2c opt --debug-rewrites` says why).

    Approximate: softmax and linear attention are different functions, so outputs change
    on purpose; the compile report measures by how much. Runs after lift-attention,
    which produces the `attention` nodes this pass rewrites.

    Over a KV cache (`--with-past`: keys past + seq, queries seq, the cache a graph input and
    output) the attention becomes a step of the recurrent form instead: the cache inputs and
    outputs of that layer become one state [batch, kv_heads, D, Dv+1], O(1) in the context
    (passes/linear_state.py). Its mask must be a boolean causal and key-padding mask.

    Options: feature (elu1), causal (auto | true | false).
    Stats: linearized, kv_cache (attentions over a cache turned into a decode state), skipped.
    """

    feature: str = "elu1"
    causal: str = "auto"

    exact = False
    after = ("lift-attention",)

    def __post_init__(self) -> None:
        if self.feature not in FEATURE_MAPS:
            raise UserError(
                f"option feature of pass linear-attention must be one of {', '.join(sorted(FEATURE_MAPS))}, got {self.feature!r}"
            )
        if self.causal not in CAUSAL_CHOICES:
            raise UserError(
                f"option causal of pass linear-attention must be one of {', '.join(CAUSAL_CHOICES)}, got {self.causal!r}"
            )

    def run(self, graph: Graph) -> PassResult:
        rw, states = Rewriter(graph), 0
        for node in [n for n in graph.nodes if n.op == "attention" and over_cache(graph, n)]:
            m = _cache_miss(graph, node, self.causal)
            if isinstance(m, str):
                if near_misses_wanted():
                    report_near_miss(f"linear-attention: {format_node(node, Namer(graph))}: attends over a KV cache and {m}")
                continue
            linearize_over_cache(graph, rw, m, self.feature)
            states += 1
        stats = apply_rules(graph, [LinearizeAttention(self.feature, self.causal)])
        skipped = sum(1 for n in graph.nodes if n.op == "attention")
        changed = stats["linearized"] + states > 0
        return PassResult(graph, changed, {"linearized": stats["linearized"], "kv_cache": states, "skipped": skipped})
