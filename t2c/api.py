"""The Python API: `t2c.compile(...)` and `t2c.load(out_dir)`."""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Mapping, Sequence

import torch

from .backends import DEFAULT_TARGET, Runner, get_backend
from .errors import UserError
from .frontends.loaders import LoadedModel, default_dynamic_dims, name_examples
from .ir import Graph, SymDim, parse_graph
from .ir.core import eval_dim
from .passes.manager import Pipeline


class CompiledModel:
    """A compiled artifact: call it like the model (`compiled(input_ids=ids)` -> dict of outputs).

    It runs through the backend that wrote the folder (report.json names it):
    ONNX Runtime for `onnx`.
    """

    def __init__(self, out_dir: str, report: dict, graph: Graph, runner: Runner):
        self.out_dir = out_dir
        self.report = report
        self.graph = graph
        self.runner = runner

    def __call__(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> dict[str, torch.Tensor]:
        # Float inputs are cast to the dtypes the artifact takes: a float16 compile (--dtype) of a
        # vision model takes float16 pixel_values, and its caller may hold float32 ones.
        from .precision import graph_inputs

        names = [v.name for v in self.graph.inputs]
        positional = graph_inputs(self.graph, dict(zip(names, args)))
        args = tuple(positional.get(n, a) for n, a in zip(names, args)) + args[len(names):]
        given = {**dict(zip(names, args)), **kwargs}
        self._check_constraints(given)
        self._check_derived_dims(given)
        return self.runner(*args, **graph_inputs(self.graph, kwargs))

    def _check_derived_dims(self, inputs: Mapping[str, Any]) -> None:
        """Refuse an input whose dim the graph derives from others (`attention_mask` [batch, past+seq]
        of a with-past artifact) at another size: the runtime would index past its end or ignore the rest."""
        bindings: dict[str, int] = {}
        derived = []
        for v in self.graph.inputs:
            shape = getattr(inputs.get(v.name), "shape", None)
            if shape is None or len(shape) != v.type.rank:
                continue
            for axis, (d, n) in enumerate(zip(v.type.shape, shape)):
                if isinstance(d, SymDim) and d.expr in d.symbols:
                    bindings.setdefault(d.expr, int(n))
                elif isinstance(d, SymDim):
                    derived.append((v.name, axis, d, int(n)))
        for name, axis, d, n in derived:
            if d.symbols <= set(bindings):
                want = eval_dim(d, bindings)
                if want != n:
                    raise UserError(f"input {name} has {n} along axis {axis}; the compiled model takes {d} = {want} there")

    def _check_constraints(self, inputs: Mapping[str, Any]) -> None:
        """Refuse inputs that break the graph's constraints (`seq % 4 == 0`, `seq <= 2048`) with a plain message.

        The ONNX artifact refuses them too (a Reshape named after the constraint fails), but
        in ONNX Runtime's words; checking here first says what is wrong and what would do.
        """
        if not self.graph.constrained_symbols():
            return
        bindings: dict[str, int] = {}
        for v in self.graph.inputs:
            t = inputs.get(v.name)
            shape = getattr(t, "shape", None)
            if shape is None or len(shape) != v.type.rank:
                continue
            for d, n in zip(v.type.shape, shape):
                if isinstance(d, SymDim) and d.expr in self.graph.constrained_symbols():
                    bindings.setdefault(d.expr, int(n))
        broken = self.graph.check_constraints(bindings)
        if broken:
            raise UserError(f"input shapes break the compiled model's constraints: {'; '.join(broken)} ")

    def generate(self, prompts, max_new_tokens: int, *, eos_token_id: int | Sequence[int] | None | str = "config") -> list:
        """Greedy decoding from a `--with-past` artifact: token ids after each prompt.

        `prompts`: one sequence of ids (returns one list) or several (returns a list per prompt;
        different lengths decode together, left-padded). A sequence stops after its end-of-sequence
        token (the model's `eos_token_id` unless given; None: never stops early).
        """
        from .generate import generate

        return generate(self, prompts, max_new_tokens, eos_token_id=eos_token_id)

    @property
    def ok(self) -> bool | None:
        return self.report.get("validation", {}).get("ok")

    def __repr__(self) -> str:
        return f"CompiledModel({self.out_dir!r}, target={self.report.get('target')!r}, validation ok={self.ok})"


def compile(
    model: torch.nn.Module,
    example_inputs: Mapping[str, torch.Tensor] | Sequence[torch.Tensor],
    passes: str | Pipeline | None = "-O1",
    target: str = DEFAULT_TARGET,
    out: str | None = None,
    *,
    static: bool = False,
    validate: bool = True,
    max_drift: float | None = None,
    min_cosine: float | None = None,
    min_sqnr: float | None = None,
    min_token_agreement: float | None = None,
    calibrate: str | None = None,
    dtype: str | None = None,
    dynamic_dims: dict[str, dict[int, str]] | None = None,
    with_past: bool = False,
    **target_options: Any,
) -> CompiledModel:
    """Compile `model` with `example_inputs` (by forward-argument name, or positional).

    `target_options` are the target's own (for onnx: `flavor="ort"`, `opset=24`).
    `min_cosine`, `min_sqnr`, `min_token_agreement` override the drift limits of approximate
    passes (their defaults: `Pass.drift_bar`); `calibrate` is a calibration file for
    quantize-int8's SmoothQuant (`t2c compile --calibrate`). `dtype` ("float32",
    "float16", "bfloat16") is what the artifact computes in (`t2c compile --dtype`);
    None keeps the model's dtype where the target runs it, else float32.
    `with_past=True` compiles a Hugging Face causal LM with its KV cache as inputs and outputs
    (`t2c compile --with-past`; `example_inputs` then only set the batch) for `.generate`.
    Writes the artifact folder to `out` (a new temporary folder when None) and
    returns a callable `CompiledModel`. Raises `ValidationError` when the
    artifact does not reproduce the model, `UserError` for bad input.
    """
    from .compiler import CompileOptions, compile_loaded

    examples = dict(example_inputs) if isinstance(example_inputs, Mapping) else name_examples(model, tuple(example_inputs), "example_inputs")
    loaded = LoadedModel(model.eval(), examples, dynamic_dims if dynamic_dims is not None else default_dynamic_dims(examples), source=type(model).__name__, kind="module")
    if with_past:
        from .frontends.hf_past import loaded_with_past

        loaded = loaded_with_past(loaded, Pipeline.from_spec(passes))
    options = CompileOptions(
        pipeline=Pipeline.from_spec(passes), target=target, target_options=target_options,
        static=static, validate=validate, max_drift=max_drift,
        min_cosine=min_cosine, min_sqnr=min_sqnr, min_token_agreement=min_token_agreement, calibrate=calibrate, dtype=dtype,
    )
    options.check()
    out_dir = out or tempfile.mkdtemp(prefix="t2c-")
    result = compile_loaded(loaded, options, out_dir)
    runner = options.backend.load(out_dir, options.backend_options())
    return CompiledModel(out_dir, result.report, result.graph, runner)


def load(out_dir: str) -> CompiledModel:
    """Open a folder written by `t2c compile` (or `t2c.compile`), through the backend that wrote it."""
    report_path = os.path.join(out_dir, "report.json")
    ir_path = os.path.join(out_dir, "model.t2c")
    if not (os.path.isfile(report_path) and os.path.isfile(ir_path)):
        raise UserError(f"{out_dir} is not a t2c output folder (no report.json / model.t2c); run t2c compile first")
    with open(report_path, encoding="utf-8") as f:
        report: dict[str, Any] = json.load(f)
    with open(ir_path, encoding="utf-8") as f:
        graph = parse_graph(f.read())
    backend = get_backend(report.get("target", DEFAULT_TARGET))
    return CompiledModel(out_dir, report, graph, backend.load(out_dir, backend.options_from_report(report)))
