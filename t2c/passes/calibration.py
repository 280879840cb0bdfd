"""Calibration inputs for passes that measure activations (SmoothQuant in `quantize-int8`).

A pass keeps its `run(graph)` signature; the inputs reach it through a context
variable that the compiler sets for the duration of the pipeline:

    with calibrating(Calibration(batches, source="calib.pt")):
        pipeline.run(graph)

Inside a pass, `calibration_batches(graph)` returns those batches, or, when
none were given, inputs generated from the graph's input types (token ids in
range of its embedding tables) and a note saying so, which the compiler puts in
report.json's `warnings`.

Files (`t2c compile --calibrate FILE`):
  * `.pt`: loaded with `torch.load(weights_only=True)`: a tensor of token ids
    ([B, S] one batch, or [S] one sequence), a list of such tensors (batches of
    any length), or dicts {input name: tensor} (or a list of them) for models with
    several inputs;
  * anything else is text: one sequence a line, token ids separated by spaces
    or commas (blank lines and lines starting with # are skipped).
Token tensors feed the graph's one integer input (or the one named `input_ids`).
"""

from __future__ import annotations

import contextlib
import contextvars
import os
from dataclasses import dataclass, field
from typing import Iterator

import torch

from ..errors import UserError
from ..ir.core import Graph, SymDim

Batch = dict[str, torch.Tensor]


@dataclass
class Calibration:
    """Batches of graph inputs by name (None: generate), where they came from, and notes for the report."""

    batches: list[Batch] | None = None
    source: str = "generated"
    notes: list[str] = field(default_factory=list)


_CURRENT: contextvars.ContextVar[Calibration | None] = contextvars.ContextVar("t2c_calibration", default=None)


@contextlib.contextmanager
def calibrating(calibration: Calibration) -> Iterator[Calibration]:
    """Make `calibration` what passes see inside the block."""
    token = _CURRENT.set(calibration)
    try:
        yield calibration
    finally:
        _CURRENT.reset(token)


def calibration_batches(graph: Graph, who: str) -> tuple[list[Batch], str]:
    """(batches, source) for `graph`: the calibration in effect, else generated inputs (with a note)."""
    cal = _CURRENT.get()
    if cal is not None and cal.batches:
        return cal.batches, cal.source
    note = f"{who}: no calibration data (t2c compile --calibrate FILE); activation statistics come from generated inputs"
    if cal is not None and note not in cal.notes:
        cal.notes.append(note)
    return [generated_inputs(graph)], "generated"


def generated_inputs(graph: Graph, size: int = 8, seed: int = 0) -> Batch:
    """One batch from the input types: every dynamic dim `size`; ids below the smallest embedding table; masks all true."""
    bindings = {s: size for s in graph.symbols()}
    vocab = min((v.type.shape[0] for n in graph.nodes if n.op in ("embedding", "qembedding")
                 for v in n.inputs[:1] if isinstance(v.type.shape[0], int)), default=2)
    g = torch.Generator().manual_seed(seed)
    out: Batch = {}
    for v in graph.inputs:
        shape = v.type.concrete_shape(bindings)
        dt = v.type.dtype.torch
        if dt == torch.bool:
            out[v.name] = torch.ones(shape, dtype=torch.bool)
        elif dt.is_floating_point:
            out[v.name] = torch.randn(shape, generator=g).to(dt)
        else:
            out[v.name] = torch.randint(0, vocab, shape, generator=g, dtype=dt)
    return out


def load_calibration(path: str, graph: Graph) -> list[Batch]:
    """The batches in `path` (module docstring), checked against the graph's inputs; UserError when unusable."""
    if not os.path.isfile(path):
        raise UserError(f"calibration file {path} does not exist")
    if path.endswith((".pt", ".pth")):
        try:
            data = torch.load(path, weights_only=True, map_location="cpu")
        except Exception as e:  # noqa: BLE001 - any unreadable file is bad input
            raise UserError(f"cannot read calibration file {path}: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
        items = data if isinstance(data, (list, tuple)) else [data]
    else:
        try:
            with open(path, encoding="utf-8") as f:
                lines = [ln.strip() for ln in f if ln.strip() and not ln.lstrip().startswith("#")]
            items = [torch.tensor([int(t) for t in ln.replace(",", " ").split()], dtype=torch.int64) for ln in lines]
        except (OSError, UnicodeDecodeError, ValueError) as e:
            raise UserError(f"cannot read calibration file {path}: expected one sequence of integer token ids a line ({e})") from None
    if not items:
        raise UserError(f"calibration file {path} holds no batches")
    return [_batch(item, graph, path) for item in items]


def _token_input(graph: Graph, path: str):
    ints = [v for v in graph.inputs if not v.type.dtype.is_float and v.type.dtype.torch != torch.bool]
    named = [v for v in ints if v.name == "input_ids"]
    if named:
        return named[0]
    if len(ints) == 1:
        return ints[0]
    raise UserError(f"calibration file {path} holds bare token tensors, but the model takes {[v.name for v in graph.inputs]}; "
                    "save dicts {input name: tensor} in a .pt file instead")


def _batch(item, graph: Graph, path: str) -> Batch:
    if isinstance(item, dict):
        batch = {str(k): v for k, v in item.items()}
    elif isinstance(item, torch.Tensor):
        batch = {_token_input(graph, path).name: item}
    else:
        raise UserError(f"calibration file {path}: expected tensors or dicts of tensors, got {type(item).__name__}")
    for v in graph.inputs:
        t = batch.get(v.name)
        if not isinstance(t, torch.Tensor):
            raise UserError(f"calibration file {path}: a batch lacks input {v.name!r} (the model takes {[i.name for i in graph.inputs]})")
        if t.dim() == v.type.rank - 1 and v.type.rank >= 2 and isinstance(v.type.shape[0], SymDim):
            t = t.unsqueeze(0)  # one sequence: a batch of one
        if t.dim() != v.type.rank:
            raise UserError(f"calibration file {path}: input {v.name!r} has shape {tuple(t.shape)}, the model expects {v.type}")
        batch[v.name] = t.to(v.type.dtype.torch)
    return {v.name: batch[v.name] for v in graph.inputs}
