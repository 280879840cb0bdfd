"""Hugging Face specifics for tracing: the KV cache off, and the experts modules of
mixture-of-experts families captured as one `t2c::experts` call each (hf_experts.py).

Everything here is applied for the duration of tracing only (`prepared_for_tracing`)
and undone afterwards, so the caller's model is left as it was.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

from .hf_experts import captured_experts

def is_hf_model(module: torch.nn.Module) -> bool:
    try:
        from transformers import PreTrainedModel
    except ImportError:
        return False
    return isinstance(module, PreTrainedModel)


@contextlib.contextmanager
def prepared_for_tracing(module: torch.nn.Module) -> Iterator[dict[str, str]]:
    """Cache off and experts modules captured; yields {experts module path: "captured" | why not}."""
    config = getattr(module, "config", None)
    old_cache = getattr(config, "use_cache", None)
    try:
        if config is not None and old_cache is not None:
            config.use_cache = False
        with captured_experts(module) as experts:
            yield experts
    finally:
        if config is not None and old_cache is not None:
            config.use_cache = old_cache
