"""The anchor exporters benchmarks compare t2c against, written once."""

from __future__ import annotations

import warnings

import torch

from t2c.frontends.torch_export import flatten_outputs


def torch_onnx_export(model: torch.nn.Module, inputs: dict[str, torch.Tensor], path: str,
                      dynamic_axes: dict[str, list[int]] | None = None) -> str:
    """torch.onnx.export(dynamo=True) of `model` called with keyword `inputs`, dynamic batch/seq (or
    `dynamic_axes` {input: axes}); returns `path`."""

    class Positional(torch.nn.Module):
        def __init__(self, inner, names):
            super().__init__()
            self.inner, self.names = inner, names

        def forward(self, *args):
            return tuple(flatten_outputs(self.inner(**dict(zip(self.names, args))))[1])

    names = list(inputs)
    # Dim.AUTO, as t2c uses: a batch-1 example would make a named Dim fail to export. Batch and sequence
    # axes only where the input has them (a per-sequence `lengths` vector has no axis 1).
    axes = dynamic_axes or {n: [a for a in (0, 1) if a < t.dim()] for n, t in inputs.items()}
    dynamic = tuple({a: torch.export.Dim.AUTO for a in axes.get(n, [])} for n in names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(Positional(model, names), tuple(inputs.values()), path, dynamo=True, input_names=names,
                          dynamic_shapes=(dynamic,), verbose=False, optimize=True)
    return path
