"""t2c's own torch custom ops, used to trace blocks whose traced form is needlessly hard to read.

A Hugging Face MoE block traces into an expert loop or a grouped-matmul op;
`swap_moe_blocks` (in `hf.py`) replaces it, for the duration of tracing, by a
call to `t2c::moe`, which has the same semantics (`t2c.ir.opdefs.moe`) and
converts one-to-one into the IR's `moe` op.
"""

from __future__ import annotations

import torch

from ..ir.opdefs.moe import moe_reference


@torch.library.custom_op("t2c::moe", mutates_args=())
def moe_op(
    x: torch.Tensor,
    router_weight: torch.Tensor,
    gate_up: torch.Tensor,
    down: torch.Tensor,
    top_k: int,
    norm_topk_prob: bool,
    activation: str,
) -> torch.Tensor:
    return moe_reference(x, router_weight, gate_up, down, top_k, norm_topk_prob, activation)


@moe_op.register_fake
def _(x, router_weight, gate_up, down, top_k, norm_topk_prob, activation):
    return torch.empty_like(x)
