"""ONNX flavors: which operator domains a lowering may use.

`standard` emits only ai.onnx ops, so the model runs on any ONNX runtime.
`ort` is meant to use com.microsoft contrib ops where ONNX Runtime has faster
kernels (GroupQueryAttention, SkipLayerNormalization, MatMulNBits, MoE, ...);
for now it is accepted and lowers exactly like `standard`.
"""

from __future__ import annotations

from dataclasses import dataclass

from ...errors import UserError


@dataclass(frozen=True)
class Flavor:
    """A flavor's name and the extra (non ai.onnx) domains it may import."""

    name: str
    extra_domains: tuple[tuple[str, int], ...] = ()


FLAVORS = {
    "standard": Flavor("standard"),
    # Identical to standard until contrib-op lowerings are added.
    "ort": Flavor("ort"),
}


def get_flavor(name: str) -> Flavor:
    """The flavor called `name`, or a UserError listing the valid ones."""
    try:
        return FLAVORS[name]
    except KeyError:
        raise UserError(f"unknown ONNX flavor {name!r}; choose one of {sorted(FLAVORS)}") from None
