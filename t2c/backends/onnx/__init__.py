"""The ONNX backend (`--target onnx`): lower an IR graph to an onnx.ModelProto, save it, run it in ONNX Runtime.

    model = lower(graph)                 # opset 23, flavor "standard", dynamic batch/seq
    path = save(model, "out/")           # out/model.onnx (+ model.onnx.data past 1 GiB)
    OnnxSession(path)(input_ids=ids)     # {output name: tensor}

Files, one concept each:
    lowering.py           the standard lowering table (@lowers) and the core ATen ops
    attention.py          `sdpa` and `attention` (its plan picks the fused Attention op or dense math)
    blocked_attention.py  the blocked O(n*(W+G)) form of windowed / block-local / global attention
    linear_attention.py   `linear_attention` as O(n) matmuls
    experts.py            `experts` dense or sparse (grouped by expert)
    quant.py              the int8 ops `qlinear` and `qembedding` (qexperts.py: `qexperts`)
    data_dependent.py     `nonzero` (a data-dependent row count) and `index_add`
    conv.py               `conv` (Conv; half precision computed in float32)
    rope.py, norms.py, activations.py   the other semantic ops
    flavors.py            flavors as overlays on the table; ort_attention.py, ort_experts.py and ort_fusions.py fill `ort`'s
    context.py            tensor names, initializers, run-time dims
    model.py              assembles and checks the ModelProto
    external.py           weights past 1 GiB written to model.onnx.data while lowering (no >2 GiB protobuf)
    runtime.py            OnnxSession (ONNX Runtime, torch tensors in and out)
This package is the only one in t2c that imports onnx or onnxruntime.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import onnx

from ...errors import UserError
from ...ir.core import Graph
from ..registry import Backend, option, register_backend
from .context import LoweringError
from .flavors import FLAVORS
from .lowering import LOWERINGS, check_complete, lowers
from . import activations, attention, blocked_attention, conv, data_dependent, experts, linear_attention, norms, qexperts, quant, rope  # noqa: E402,F401  (their @lowers entries join the table)
from . import ort_attention, ort_experts, ort_fusions  # noqa: E402,F401  (the ort overlay)
from .external import EXTERNAL_DATA_THRESHOLD, initializer_bytes, save_model
from .model import MIN_OPSET, build_model
from .runtime import OnnxSession


def lower(graph: Graph, *, opset: int = MIN_OPSET, flavor: str = "standard", static: bool = False,
          external_threshold: int = EXTERNAL_DATA_THRESHOLD) -> onnx.ModelProto:
    """Lower `graph` to an ONNX model; inputs and outputs keep the IR's names.

    Dynamic dims become dim_params named after their symbol (`batch`, `seq`);
    `static=True` requires every input dim to be an int. The model passes
    onnx.checker (full) and strict shape inference, or LoweringError is raised.
    Initializers beyond `external_threshold` bytes in all are written out while lowering
    (external.py): the model holds references to them and only `save` can write it.
    """
    return build_model(graph, opset=opset, flavor=flavor, static=static, external_threshold=external_threshold)


def save(model: onnx.ModelProto, out_dir: str, *, external_threshold: int = EXTERNAL_DATA_THRESHOLD, move: bool = False) -> str:
    """Write `out_dir/model.onnx`; weights go to `model.onnx.data` when they exceed the threshold.

    A model lowered with external weights always gets model.onnx.data (its spill file, moved
    with `move=True` or else linked/copied); an inline one past `external_threshold` is split.
    """
    return save_model(model, out_dir, external_threshold=external_threshold, move=move)


@dataclass(frozen=True)
class OnnxOptions:
    """What `--target onnx` takes: the flavor (flavors.py) and the opset."""

    flavor: str = option("standard", "standard: only ai.onnx ops; ort: ONNX Runtime's com.microsoft kernels where exact and faster", tuple(FLAVORS))
    opset: int = option(MIN_OPSET, f"the ai.onnx opset to emit ({MIN_OPSET} or newer)")

    def __post_init__(self) -> None:
        if self.opset < MIN_OPSET:
            raise UserError(f"opset {self.opset} is too old: t2c emits opset {MIN_OPSET} or newer (--opset {MIN_OPSET})")


@register_backend
class OnnxBackend(Backend):
    """An ONNX model (`model.onnx`) run by ONNX Runtime."""

    name = "onnx"
    artifact = "model.onnx"
    Options = OnnxOptions
    doc = "an ONNX model (opset 23+) for ONNX Runtime or any ONNX runtime"
    # ONNX Runtime's CPU provider (what t2c validates on) has float16 kernels or inserts casts to
    # float32 around the ops that lack them; bfloat16 it can only move (Transpose, Identity, Cast).
    float_dtypes = ("f32", "f16")
    missing_dtypes = {"bf16": "ONNX Runtime's CPU provider has no bfloat16 arithmetic kernels (Add, Mul, MatMul, ...)"}

    def lower(self, graph: Graph, options: OnnxOptions) -> onnx.ModelProto:
        return lower(graph, opset=options.opset, flavor=options.flavor)

    def save(self, artifact: onnx.ModelProto, folder: str, options: OnnxOptions) -> None:
        save(artifact, folder, move=True)  # the compiler saves its artifact once: its spill file becomes model.onnx.data

    def load(self, folder: str, options: OnnxOptions) -> OnnxSession:
        return OnnxSession(os.path.join(folder, self.artifact))

    def describe(self, options: OnnxOptions) -> str:
        return f"opset {options.opset}, {options.flavor}"


__all__ = ["lower", "save", "lowers", "LOWERINGS", "check_complete", "LoweringError", "initializer_bytes", "OnnxSession", "OnnxBackend"]
