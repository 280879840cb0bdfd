"""Backend-neutral plans: facts derived once from a semantic op's attributes and operand types.

Every backend reads these instead of analysing the graph: `attention_plan` says
which form an `attention` takes, which key blocks each query block visits, how
query heads group onto KV heads, what kind of mask operand it has and how its
RoPE is laid out (`rope_plan`). The attributes they read were recorded by the
passes (lift-attention, fuse-rope), so a plan never walks producers.
"""

from .attention import MAX_BLOCK, AttentionPlan, attention_plan, key_blocks
from .rope import RopePlan, rope_plan

__all__ = ["MAX_BLOCK", "AttentionPlan", "RopePlan", "attention_plan", "key_blocks", "rope_plan"]
