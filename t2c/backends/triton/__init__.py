"""The Triton backend (`--target triton`): the IR as a readable Python module of Triton kernels and torch calls.

    source = lower(graph)          # codegen.ModelSource: model.py's text, weights, path counts
    save(source, "out/")           # out/model.py, out/weights.safetensors, out/kernels.json
    load_runner("out/")(input_ids=ids)   # {output name: tensor}

Files, one concept each:
    codegen.py      the text of model.py and the count of nodes on each path (hand-written kernels,
                    generated kernels, torch, generic reference)
    fusion.py       which glue nodes share a generated kernel (the kernels: t2c/kernels/glue.py)
    handwritten.py  which nodes run on t2c/kernels' hand-written kernels, decided at lower time
    runtime.py      the device check, the generic path (`run_op`), importing model.py and its weights
Running the module needs a CUDA GPU, or TRITON_INTERPRET=1 (Triton's interpreter, on the CPU:
slow, for testing); without either, load raises UserError saying so. Inputs move to the module's
device and outputs come back on the inputs' device. Ops without a Triton kernel take the
generic path: their eager reference from the IR op registry, counted in kernels.json.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

from ...ir.core import Graph
from ..registry import Backend, register_backend
from .codegen import ModelSource, generate
from .runtime import NO_DEVICE, TritonRunner, load_runner, require_device

WEIGHTS = "weights.safetensors"
KERNELS_JSON = "kernels.json"


def lower(graph: Graph) -> ModelSource:
    """model.py's text for `graph`, its weights by IR name and how many nodes run on each path."""
    return generate(graph)


def save(source: ModelSource, folder: str) -> None:
    """Write model.py, weights.safetensors and kernels.json (the path counts) into `folder`."""
    from safetensors.torch import save_file

    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, "model.py"), "w", encoding="utf-8") as f:
        f.write(source.text)
    # safetensors refuses tensors that share storage (tied weights) or are not contiguous: copies
    save_file({k: v.detach().contiguous().clone() for k, v in source.params.items()}, os.path.join(folder, WEIGHTS))
    with open(os.path.join(folder, KERNELS_JSON), "w", encoding="utf-8") as f:
        json.dump(source.counts, f, indent=2)
        f.write("\n")


@dataclass(frozen=True)
class TritonOptions:
    """`--target triton` takes no options: the device is the CUDA GPU, or the interpreter under TRITON_INTERPRET=1."""


@register_backend
class TritonBackend(Backend):
    """A Python module (`model.py`) of generated and hand-written Triton kernels, weights in safetensors."""

    name = "triton"
    artifact = "model.py"
    Options = TritonOptions
    doc = "a readable Python module of Triton kernels (CUDA GPU, or TRITON_INTERPRET=1 on the CPU)"

    def lower(self, graph: Graph, options: TritonOptions) -> ModelSource:
        return lower(graph)

    def save(self, artifact: ModelSource, folder: str, options: TritonOptions) -> None:
        save(artifact, folder)

    def load(self, folder: str, options: TritonOptions) -> TritonRunner:
        return load_runner(folder, self.artifact, WEIGHTS)

    def describe(self, options: TritonOptions) -> str:
        return "Triton's CPU interpreter, TRITON_INTERPRET=1" if os.environ.get("TRITON_INTERPRET") == "1" else "CUDA GPU"


__all__ = ["lower", "save", "load_runner", "require_device", "ModelSource", "TritonBackend", "TritonRunner", "NO_DEVICE"]
