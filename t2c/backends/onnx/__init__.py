"""The ONNX backend: `lower` an IR graph to an onnx.ModelProto, `save` it to a folder.

    model = lower(graph)                 # opset 23, flavor "standard", dynamic batch/seq
    path = save(model, "out/")           # out/model.onnx (+ model.onnx.data past 1 GiB)

Every IR op has a lowering in the table of `lowering.py` (`@lowers("op")`);
`attention.py` (sdpa), `windowed_attention.py` (attention: Attention op, blocked
window/block/global form, dense fallback), `linear_attention.py`, `moe.py`,
`activations.py` (gated_act, bias_act) and `norms.py` (add_norm) add their entries to it. `context.py` names
tensors and computes symbolic dims at run time, `flavors.py` lists the
flavors, `model.py` assembles and checks the model.
"""

from __future__ import annotations

import os

import onnx

from ...ir.core import Graph
from .context import LoweringError
from .lowering import LOWERINGS, check_complete, lowers
from . import activations, attention, linear_attention, moe, norms, rope, windowed_attention  # noqa: E402,F401  (their @lowers entries join the table)
from .model import build_model

EXTERNAL_DATA_THRESHOLD = 1 << 30  # weights beyond 1 GiB go to model.onnx.data


def lower(graph: Graph, *, opset: int = 23, flavor: str = "standard", static: bool = False) -> onnx.ModelProto:
    """Lower `graph` to an ONNX model; inputs and outputs keep the IR's names.

    Dynamic dims become dim_params named after their symbol (`batch`, `seq`);
    `static=True` requires every input dim to be an int. The model passes
    onnx.checker (full) and strict shape inference, or LoweringError is raised.
    """
    return build_model(graph, opset=opset, flavor=flavor, static=static)


def initializer_bytes(model: onnx.ModelProto) -> int:
    """Total size of the model's initializers in bytes."""
    total = 0
    for t in model.graph.initializer:
        total += len(t.raw_data) if t.HasField("raw_data") else onnx.numpy_helper.to_array(t).nbytes
    return total


def save(model: onnx.ModelProto, out_dir: str, *, external_threshold: int = EXTERNAL_DATA_THRESHOLD) -> str:
    """Write `out_dir/model.onnx`; weights go to `model.onnx.data` when they exceed the threshold."""
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "model.onnx")
    if initializer_bytes(model) > external_threshold:
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True, location="model.onnx.data", size_threshold=1024)
    else:
        onnx.save_model(model, path)
    return path


__all__ = ["lower", "save", "lowers", "LOWERINGS", "check_complete", "LoweringError", "initializer_bytes"]
