"""Run a graph and also return intermediate values: calibration and per-layer error reports read them.

    outputs, seen = run_with_probes(graph, inputs, [v1, v2])   # seen[v1] is v1's tensor

The probes are appended to the graph's outputs for the run and removed after,
so this is the interpreter (`run_graph`) itself, never a second implementation.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import torch

from .core import Graph, Value
from .interpreter import run_graph

_PROBE = "\0probe"


def run_with_probes(
    graph: Graph, inputs: Sequence[torch.Tensor] | Mapping[str, torch.Tensor], probes: Sequence[Value]
) -> tuple[dict[str, torch.Tensor], dict[Value, torch.Tensor]]:
    """(the graph's outputs by name, each probed value's tensor)."""
    saved = list(graph.outputs)
    unique = list(dict.fromkeys(probes))
    graph.outputs = saved + [(f"{_PROBE}{i}", v) for i, v in enumerate(unique)]
    try:
        results = run_graph(graph, inputs)
    finally:
        graph.outputs = saved
    outputs = {name: results[name] for name, _ in saved}
    return outputs, {v: results[f"{_PROBE}{i}"] for i, v in enumerate(unique)}
