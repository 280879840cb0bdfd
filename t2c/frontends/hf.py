"""Hugging Face specifics for tracing: cache off, named outputs, MoE blocks as one op.

Everything here is applied for the duration of tracing only (`prepared_for_tracing`)
and undone afterwards, so the caller's model is left as it was.
"""

from __future__ import annotations

import contextlib
import inspect
import re
from typing import Any, Iterator

import torch

from .custom_ops import moe_op

_ACTIVATIONS = {"SiLUActivation": "silu", "SiLU": "silu", "GELUActivation": "gelu", "GELU": "gelu", "ReLU": "relu", "NewGELUActivation": "gelu_tanh", "GELUTanh": "gelu_tanh"}


def is_hf_model(module: torch.nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(module, PreTrainedModel)


def _src(fn: Any) -> str:
    try:
        text = inspect.getsource(fn)
    except (OSError, TypeError):
        return ""
    text = re.sub(r"#.*", "", text)
    return re.sub(r"\s+", "", text)


def _known_sources() -> dict[str, Any]:
    """Forward sources whose semantics `t2c::moe` reproduces exactly, and how to read norm_topk_prob."""
    known: dict[str, Any] = {}
    try:
        from transformers.models.mixtral import modeling_mixtral as mx

        known["block"] = {_src(mx.MixtralSparseMoeBlock.forward)}
        known["router"] = {_src(mx.MixtralTopKRouter.forward): lambda r: True}
    except ImportError:
        return {}
    try:
        from transformers.models.qwen3_moe import modeling_qwen3_moe as qm

        known["block"].add(_src(qm.Qwen3MoeSparseMoeBlock.forward))
        known["router"][_src(qm.Qwen3MoeTopKRouter.forward)] = lambda r: bool(r.norm_topk_prob)
    except (ImportError, AttributeError):
        pass
    return known


class MoEBlockAsOp(torch.nn.Module):
    """Calls `t2c::moe` with the weights of a Hugging Face sparse MoE block."""

    def __init__(self, block: torch.nn.Module, norm_topk_prob: bool, activation: str):
        super().__init__()
        self.gate = block.gate
        self.experts = block.experts
        self.top_k = int(block.gate.top_k)
        self.norm_topk_prob = norm_topk_prob
        self.activation = activation

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return moe_op(hidden_states, self.gate.weight, self.experts.gate_up_proj, self.experts.down_proj, self.top_k, self.norm_topk_prob, self.activation)


def moe_replacement(block: torch.nn.Module, known: dict[str, Any]) -> MoEBlockAsOp | None:
    """The op-calling stand-in for `block`, or None when its semantics are not known to match."""
    gate, experts = getattr(block, "gate", None), getattr(block, "experts", None)
    if gate is None or experts is None or not hasattr(gate, "top_k"):
        return None
    if not all(hasattr(experts, a) for a in ("gate_up_proj", "down_proj", "act_fn")):
        return None
    if _src(type(block).forward) not in known.get("block", ()):
        return None
    norm = known.get("router", {}).get(_src(type(gate).forward))
    act = _ACTIVATIONS.get(type(experts.act_fn).__name__)
    if norm is None or act is None or getattr(gate, "bias", None) is not None:
        return None
    return MoEBlockAsOp(block, norm(gate), act)


@contextlib.contextmanager
def prepared_for_tracing(module: torch.nn.Module) -> Iterator[int]:
    """Cache off and MoE blocks swapped for `t2c::moe`; yields the number of blocks swapped."""
    config = getattr(module, "config", None)
    old_cache = getattr(config, "use_cache", None)
    swapped: list[tuple[torch.nn.Module, str, torch.nn.Module]] = []
    known = _known_sources()
    try:
        if config is not None and old_cache is not None:
            config.use_cache = False
        if known:
            for parent in list(module.modules()):
                for name, child in list(parent.named_children()):
                    stand_in = moe_replacement(child, known)
                    if stand_in is not None:
                        setattr(parent, name, stand_in)
                        swapped.append((parent, name, child))
        yield len(swapped)
    finally:
        for parent, name, child in swapped:
            setattr(parent, name, child)
        if config is not None and old_cache is not None:
            config.use_cache = old_cache
