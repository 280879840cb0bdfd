"""Running a compiled Triton module: the device check, the generic path, loading `model.py` and its weights.

`model.py` imports this module for two things: `require_device()` (before any kernel is
defined: Triton decides then whether kernels run on a GPU or in its CPU interpreter) and
`run_op` (the generic path: an op's eager reference from the IR op registry). `load_runner`
opens an output folder as `runner(**inputs) -> {output name: tensor}`.
"""

from __future__ import annotations

import itertools
import linecache
import os
import sys
import types
from typing import Any

import torch

from ...errors import UserError
from ...ir.ops import EvalContext, get_op

NO_DEVICE = "no CUDA GPU: set TRITON_INTERPRET=1 to run the Triton module on the CPU (slow, for testing)"
_module_ids = itertools.count()


def require_device() -> str:
    """The device the module runs on: "cuda" when there is a CUDA GPU, "cpu" under TRITON_INTERPRET=1.

    Raises UserError otherwise: Triton kernels need one or the other."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        return "cpu"  # the interpreter runs kernels on CPU tensors only
    if torch.cuda.is_available():
        return "cuda"
    raise UserError(NO_DEVICE)


def run_op(op: str, attrs: Any, ctx: EvalContext, *tensors: torch.Tensor):
    """The generic path: the eager reference of IR op `op` (one tensor, or a tuple for several results)."""
    out = get_op(op).run(ctx, attrs, tensors)
    return out[0] if len(out) == 1 else out


def import_model(path: str) -> types.ModuleType:
    """Import `model.py` at `path` as a new module (a unique name each time, so two folders never clash).

    Its source is registered with linecache under a name of its own: Triton reads a kernel's
    source when it compiles or interprets it, and the folder may be moved after loading."""
    with open(path, encoding="utf-8") as f:
        source = f.read()
    name = f"t2c_triton_model_{next(_module_ids)}"
    filename = f"<t2c triton model {name} from {os.path.abspath(path)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
    module = types.ModuleType(name)
    module.__file__ = filename
    sys.modules[name] = module
    try:
        exec(compile(source, filename, "exec"), module.__dict__)
    except BaseException:
        sys.modules.pop(name, None)
        raise
    return module


class TritonRunner:
    """A loaded Triton module: call it with the graph's inputs by name; outputs come back by name,
    on the device the inputs came from."""

    def __init__(self, module: types.ModuleType, params: dict[str, torch.Tensor], device: str):
        self.module, self.params, self.device = module, params, device

    def __call__(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        names = self.module.INPUTS
        missing = [n for n in names if n not in inputs]
        if missing or len(inputs) != len(names):
            raise UserError(f"the Triton module takes inputs {names}, got {sorted(inputs)}")
        home = next(iter(inputs.values())).device if inputs else torch.device("cpu")
        # the default device too: references that create tensors (arange, full) make them where the kernels run
        with torch.no_grad(), torch.device(self.device):
            out = self.module.forward(self.params, *(inputs[n].to(self.device) for n in names))
        return {k: v.to(home) for k, v in out.items()}


def load_runner(folder: str, artifact: str = "model.py", weights: str = "weights.safetensors") -> TritonRunner:
    """Open a folder written by the Triton backend: model.py and its weights, on the module's device."""
    from safetensors.torch import load_file

    device = require_device()
    path = os.path.join(folder, artifact)
    if not os.path.isfile(path):
        raise UserError(f"{folder} has no {artifact}; compile with --target triton first")
    weights_path = os.path.join(folder, weights)
    params = load_file(weights_path, device=device) if os.path.isfile(weights_path) else {}
    return TritonRunner(import_model(path), params, device)
