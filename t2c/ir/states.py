"""Inputs that stand for a state the eager model keeps in another form (`Graph.states`, the
`state` lines of the IR text), and how to build them, so such a graph is validated like any other.

The one kind: `linear_kv`, a linear-attention decode state [B, Hkv, D, Dv+1] that replaces a
layer's KV cache (passes/linear_state.py): sum_j keep_j phi(k_j)^T [v_j, 1] over the cached
positions j, keep_j = 0 on padding. Its record names the KV inputs it replaces (`keys`,
`values`), the key-padding input over past and new tokens (`keep`, the attention_mask), the
feature map, and the state output with the KV outputs it replaces (`present`, `present_keys`,
`present_values`).
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from .core import Graph
from .opdefs.attention import FEATURE_MAPS

STATE_KIND = "linear_kv"


def state_from_cache(keys: torch.Tensor, values: torch.Tensor, keep: torch.Tensor | None, feature: str) -> torch.Tensor:
    """The state [B, Hkv, D, Dv+1] that a KV cache (keys [B, Hkv, P, D], values [B, Hkv, P, Dv])
    stands for, keep [B, P] 1 on real tokens: sum_j keep_j phi(k_j)^T [v_j, 1]."""
    fk = FEATURE_MAPS[feature](keys.float())
    if keep is not None:
        fk = fk * keep[:, None, :, None].float()
    return fk.transpose(-1, -2) @ F.pad(values.float(), (0, 1), value=1.0)


def state_inputs(graph: Graph, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`inputs` with the graph's state inputs built from the KV inputs they replace (and those dropped)."""
    if not graph.states:
        return dict(inputs)
    out = dict(inputs)
    for name, spec in graph.states.items():
        if name in inputs or spec["keys"] not in inputs:
            continue
        keys, values = inputs[spec["keys"]], inputs[spec["values"]]
        keep = inputs[spec["keep"]][:, : keys.shape[2]] if spec["keep"] else None
        out[name] = state_from_cache(keys, values, keep, spec["feature"])
        out.pop(spec["keys"], None)
        out.pop(spec["values"], None)
    return out


def adapt_references(graph: Graph, inputs: Mapping[str, torch.Tensor], outputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Reference `outputs` (eager's, or an IR's before the rewrite) with KV cache outputs turned into
    the states the graph returns, over `inputs`' whole key padding (past and new tokens)."""
    out = dict(outputs)
    for spec in graph.states.values():
        if spec["present"] in out or spec["present_keys"] not in out:
            continue
        keys, values = out.pop(spec["present_keys"]), out.pop(spec["present_values"])
        keep = inputs[spec["keep"]] if spec["keep"] else None
        out[spec["present"]] = state_from_cache(keys, values, keep, spec["feature"])
    return out
