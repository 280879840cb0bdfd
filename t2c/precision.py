"""Which float dtype a compiled model computes in, and where cast-precision goes in the pipeline.

    checkpoint  the dtype most of the traced graph's float weights are in (a bf16
                Hugging Face folder traces to a bf16 graph)
    dtype       what the artifact computes in: `--dtype` when given; else the
                checkpoint's when the target runs it and every pass takes it; else float32

The target says which float dtypes its runtime computes (`Backend.float_dtypes`,
with the reason for each one it lacks: ONNX Runtime's CPU provider has no
bfloat16 arithmetic kernels). float32 is the fallback: it holds float16 and
bfloat16 weights exactly, every runtime computes it, and passes that quantize
weights (`Pass.needs_float32`) take only it.

A conversion is the `cast-precision{dtype=...}` pass, placed where the graph is
widest so that the pattern passes always see the model as traced or wider: first
for float32 (the others then see the float32 model), last for a half dtype (the
fused ops then only change dtype).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UserError
from .ir.core import DType, Graph
from .passes.cast_precision import CastPrecision, parse_dtype, working_dtype
from .passes.manager import Pipeline

NAMES = {DType.F32: "float32", DType.F16: "float16", DType.BF16: "bfloat16"}


def name(dtype: DType) -> str:
    """The name `--dtype` and torch use (float32), else the IR's (f64)."""
    return NAMES.get(dtype, str(dtype))


@dataclass(frozen=True)
class Precision:
    """The checkpoint's dtype, the one the artifact computes in, and why."""

    checkpoint: DType
    dtype: DType
    explicit: bool  # the user chose it (--dtype, or a cast-precision pass in the pipeline)
    reason: str
    in_pipeline: bool = False  # the user's pipeline already holds cast-precision

    @property
    def converts(self) -> bool:
        return self.checkpoint != self.dtype

    def place(self, pipeline: Pipeline) -> Pipeline:
        """The pipeline with cast-precision where it belongs (unchanged when nothing converts or the user placed it)."""
        if not self.converts or self.in_pipeline:
            return pipeline
        cast = CastPrecision(dtype=str(self.dtype))
        if self.dtype == DType.F32:
            return Pipeline((cast,) + pipeline.passes)
        return Pipeline(pipeline.passes + (cast,))

    def references(self) -> list[DType]:
        """The dtypes the eager model runs in for the report: the checkpoint's, float32 where a
        half dtype is involved, and the target's when torch's own result in it is worth comparing."""
        refs = [self.checkpoint]
        if DType.F32 not in refs and (self.checkpoint != DType.F32 or self.dtype != DType.F32):
            refs.append(DType.F32)
        if self.dtype not in refs:
            refs.append(self.dtype)
        return refs

    @property
    def primary(self) -> DType:
        """The eager dtype the passes' drift is measured against: float32 when the artifact computes
        in float32 (the conversion is then exact against it), else the checkpoint's."""
        return DType.F32 if self.dtype == DType.F32 else self.checkpoint

    def as_json(self) -> dict:
        """The report's record: dtypes by the names `--dtype` takes (float32, float16, bfloat16)."""
        return {"checkpoint": name(self.checkpoint), "dtype": name(self.dtype), "converted": self.converts,
                "explicit": self.explicit, "reason": self.reason, "primary": name(self.primary)}


def choose(graph: Graph, pipeline: Pipeline, backend, requested: str | None, validate: bool) -> Precision:
    """The precision policy (module docstring); UserError for a dtype the target or a pass cannot take."""
    checkpoint = working_dtype(graph)
    runs = {parse_dtype(d) for d in backend.float_dtypes}
    needs_f32 = [p.name for p in pipeline.passes if type(p).needs_float32]
    placed = [p for p in pipeline.passes if isinstance(p, CastPrecision)]
    if placed:
        dtype = parse_dtype(placed[-1].dtype)
        if requested is not None and parse_dtype(requested, "--dtype") != dtype:
            raise UserError(f"--dtype {requested} contradicts the pipeline's {placed[-1]}; give one of them")
        return Precision(checkpoint, dtype, True, "the pipeline's cast-precision", in_pipeline=True)
    if requested is not None:
        dtype = parse_dtype(requested, "--dtype")
        if needs_f32 and dtype != DType.F32:
            raise UserError(f"{', '.join(needs_f32)} quantizes float32 weights; drop --dtype {requested} or use --dtype float32")
        if dtype not in runs and validate:
            usable = " or ".join(name(parse_dtype(d)) for d in backend.float_dtypes)
            raise UserError(f"--dtype {name(dtype)}: {backend.missing_dtype_reason(str(dtype))}, so t2c cannot validate "
                            f"a {name(dtype)} artifact for target {backend.name}; use --dtype {usable}, or --no-validate to write it unchecked")
        reason = "kept, as --dtype asked" if dtype == checkpoint else f"--dtype {name(dtype)}"
        return Precision(checkpoint, dtype, True, reason)
    if needs_f32 and checkpoint != DType.F32:
        return Precision(checkpoint, DType.F32, False, f"{', '.join(needs_f32)} quantizes float32 weights")
    if checkpoint in runs:
        return Precision(checkpoint, checkpoint, False, f"the checkpoint's, which target {backend.name} computes")
    reason = backend.missing_dtype_reason(str(checkpoint))
    return Precision(checkpoint, DType.F32, False, f"{reason}; float32 holds {name(checkpoint)} weights exactly (--dtype to choose)")


def module_in(module: torch.nn.Module, dtype: DType) -> torch.nn.Module:
    """A copy of `module` with its float params and buffers in `dtype` (the module itself when they already are)."""
    import copy

    floats = [t for t in list(module.parameters()) + list(module.buffers()) if t.is_floating_point()]
    if all(t.dtype == dtype.torch for t in floats):
        return module
    return copy.deepcopy(module).to(dtype.torch)


def inputs_in(inputs: dict[str, torch.Tensor], dtype: DType | None) -> dict[str, torch.Tensor]:
    """Float inputs in `dtype` (None: as they are)."""
    if dtype is None:
        return inputs
    return {k: v.to(dtype.torch) if isinstance(v, torch.Tensor) and v.is_floating_point() else v for k, v in inputs.items()}


def graph_inputs(graph: Graph, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Float inputs cast to the dtypes the graph's inputs declare (cast-precision may have changed them);
    state inputs built from the KV-cache inputs they replace (passes/linear_state.py)."""
    if graph.states:
        from .ir.states import state_inputs

        inputs = state_inputs(graph, inputs)
    declared = {v.name: v.type.dtype for v in graph.inputs}
    out = {}
    for k, v in inputs.items():
        d = declared.get(k)
        if isinstance(v, torch.Tensor) and v.is_floating_point() and d is not None and d.is_float and v.dtype != d.torch:
            v = v.to(d.torch)
        out[k] = v
    return out
