"""ONNX flavors: which operator domains a model may use, as overlays on the standard lowering table.

`standard` emits only ai.onnx ops, so the model runs on any ONNX runtime. A
flavor is an overlay: a table of lowerings tried before the standard one
(`lowering.LOWERINGS`). An overlay lowering returns the node's output names, or
None to fall back to the standard lowering (having emitted nothing), so no
lowering ever branches on the flavor. `ort` overlays ONNX Runtime's
com.microsoft kernels where they compute exactly the IR's semantics and are
faster (`ort_attention.py`, `ort_fusions.py`; measured by
benchmarks/ort_kernels.py). The model imports a contrib domain only when a
node uses it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ...errors import UserError

MS_DOMAIN = "com.microsoft"

OverlayFn = Callable[..., "list | None"]  # (ctx, node) -> output names, or None to fall back


@dataclass(frozen=True)
class Flavor:
    """A flavor's name, the extra (non ai.onnx) domains it may import, and its overlay table."""

    name: str
    extra_domains: tuple[tuple[str, int], ...] = ()
    overlay: dict[str, OverlayFn] = field(default_factory=dict, compare=False)
    doc: str = ""


FLAVORS = {
    "standard": Flavor("standard", doc="only ai.onnx ops (opset 23+): runs on any ONNX runtime"),
    "ort": Flavor("ort", ((MS_DOMAIN, 1),), doc="ONNX Runtime's com.microsoft kernels where exact and faster, standard elsewhere"),
}


def overlay(flavor: str, *ops: str) -> Callable[[OverlayFn], OverlayFn]:
    """Register the decorated function in `flavor`'s overlay for each IR op in `ops`."""

    def register(fn: OverlayFn) -> OverlayFn:
        table = FLAVORS[flavor].overlay
        for op in ops:
            if op in table:
                raise ValueError(f"{op} already has a {flavor} overlay lowering")
            table[op] = fn
        return fn

    return register


def get_flavor(name: str) -> Flavor:
    """The flavor called `name`, or a UserError listing the valid ones."""
    try:
        return FLAVORS[name]
    except KeyError:
        raise UserError(f"unknown ONNX flavor {name!r}; choose one of {sorted(FLAVORS)}") from None
