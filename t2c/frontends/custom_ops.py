"""t2c's own torch custom ops, used to trace library boundaries whose traced form is needlessly hard to read.

A Hugging Face experts module traces into an expert loop with data-dependent
shapes, or a grouped-matmul op torch.export cannot look into; `hf_experts.py`
swaps its forward, for the duration of tracing, for a call to `t2c::experts`,
which has the IR op's semantics (`t2c.ir.opdefs.experts`) and converts
one-to-one into it.
"""

from __future__ import annotations

from typing import Optional

import torch

from ..ir.opdefs.experts import ExpertsAttrs, experts_reference


@torch.library.custom_op("t2c::experts", mutates_args=())
def experts_op(
    x: torch.Tensor,
    top_k_index: torch.Tensor,
    top_k_weights: torch.Tensor,
    w_up: torch.Tensor,
    w_down: torch.Tensor,
    b_up: Optional[torch.Tensor],
    b_down: Optional[torch.Tensor],
    activation: str,
    alpha: float,
    gated: bool,
    layout: str,
    split: str,
    limit: float,
    up_offset: float,
) -> torch.Tensor:
    attrs = ExpertsAttrs(activation, alpha, gated, layout, split, limit, up_offset)
    return experts_reference(x, top_k_index, top_k_weights, w_up, w_down, b_up, b_down, attrs)


@experts_op.register_fake
def _(x, top_k_index, top_k_weights, w_up, w_down, b_up, b_down, activation, alpha, gated, layout, split, limit, up_offset):
    return torch.empty_like(x)
