"""ONNX flavors: which operator domains a lowering may use.

`standard` emits only ai.onnx ops, so the model runs on any ONNX runtime.
`ort` may also use com.microsoft contrib ops where ONNX Runtime has faster
kernels that compute exactly the IR's semantics (GroupQueryAttention,
MultiHeadAttention, BiasGelu, FastGelu; Skip(Simplified)LayerNormalization in
float16; measured by benchmarks/ort_kernels.py). A lowering reads `ctx.flavor` and emits
with `domain="com.microsoft"`; ops without a contrib lowering lower as in
`standard`, and the model imports a contrib domain only when a node uses it.
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
    "ort": Flavor("ort", (("com.microsoft", 1),)),
}


def get_flavor(name: str) -> Flavor:
    """The flavor called `name`, or a UserError listing the valid ones."""
    try:
        return FLAVORS[name]
    except KeyError:
        raise UserError(f"unknown ONNX flavor {name!r}; choose one of {sorted(FLAVORS)}") from None
