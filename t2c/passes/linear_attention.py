"""Replace softmax `attention` by `linear_attention` (approximate)."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import UserError
from ..ir.core import Graph
from ..ir.opdefs.attention import FEATURE_MAPS, LinearAttentionAttrs, attention_operands
from ..ir.opdefs.rope import RopeAttrs
from .manager import Pass, PassResult, register_pass
from .rewrite import Match, RewriteContext, RewriteRule, apply_rules

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
        if attention_operands(node.inputs, a)[3] is not None:
            return "has a mask operand, which linear attention cannot apply"
        if a.window != (-1, -1) or a.block > 0 or a.global_tokens > 0:
            return "has a window, block or global-token structure, which linear attention cannot apply"
        if a.softcap > 0:
            return "uses logit soft-capping, which has no linear form"
        return None

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

    Options: feature (elu1), causal (auto | true | false).
    Stats: linearized, skipped.
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
        stats = apply_rules(graph, [LinearizeAttention(self.feature, self.causal)])
        skipped = sum(1 for n in graph.nodes if n.op == "attention")
        return PassResult(graph, stats["linearized"] > 0, {"linearized": stats["linearized"], "skipped": skipped})
