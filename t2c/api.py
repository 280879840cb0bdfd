"""The Python API: `t2c.compile(...)` and `t2c.load(out_dir)`."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Mapping, Sequence

import torch

from .errors import UserError
from .frontends.loaders import LoadedModel, default_dynamic_dims, name_examples
from .ir import Graph, parse_graph
from .passes.manager import Pipeline
from .runtime import OnnxSession


class CompiledModel:
    """A compiled artifact: call it like the model (`compiled(input_ids=ids)` -> dict of outputs)."""

    def __init__(self, out_dir: str, report: dict, graph: Graph):
        self.out_dir = out_dir
        self.report = report
        self.graph = graph
        self.session = OnnxSession(os.path.join(out_dir, "model.onnx"))

    def __call__(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.session(*args, **kwargs)

    @property
    def ok(self) -> bool | None:
        return self.report.get("validation", {}).get("ok")

    def __repr__(self) -> str:
        return f"CompiledModel({self.out_dir!r}, validation ok={self.ok})"


def compile(
    model: torch.nn.Module,
    example_inputs: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
    passes: str | Pipeline | None = "-O1",
    target: str = "onnx",
    out: str | None = None,
    *,
    flavor: str = "standard",
    opset: int = 23,
    static: bool = False,
    validate: bool = True,
    max_drift: float | None = None,
    dynamic_dims: dict[str, dict[int, str]] | None = None,
) -> CompiledModel:
    """Compile `model` with `example_inputs` (by forward-argument name, or positional).

    Writes the artifact folder to `out` (a new temporary folder when None) and
    returns a callable `CompiledModel`. Raises `ValidationError` when the
    artifact does not reproduce the model, `UserError` for bad input.
    """
    from .compiler import CompileOptions, compile_loaded
    examples = dict(example_inputs) if isinstance(example_inputs, Mapping) else name_examples(model, tuple(example_inputs), "example_inputs")
    loaded = LoadedModel(model.eval(), examples, dynamic_dims if dynamic_dims is not None else default_dynamic_dims(examples), source=type(model).__name__, kind="module")
    options = CompileOptions(pipeline=Pipeline.from_spec(passes), target=target, flavor=flavor, opset=opset, static=static, validate=validate, max_drift=max_drift)
    out_dir = out or tempfile.mkdtemp(prefix="t2c-")
    result = compile_loaded(loaded, options, out_dir)
    return CompiledModel(out_dir, result.report, result.graph)


def load(out_dir: str) -> CompiledModel:
    """Open a folder written by `t2c compile` (or `t2c.compile`)."""
    report_path = os.path.join(out_dir, "report.json")
    ir_path = os.path.join(out_dir, "model.t2c")
    if not (os.path.isfile(report_path) and os.path.isfile(ir_path)):
        raise UserError(f"{out_dir} is not a t2c output folder (no report.json / model.t2c); run t2c compile first")
    with open(report_path, encoding="utf-8") as f:
        report: dict[str, Any] = json.load(f)
    with open(ir_path, encoding="utf-8") as f:
        graph = parse_graph(f.read())
    return CompiledModel(out_dir, report, graph)
