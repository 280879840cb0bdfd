"""Which IR nodes run on t2c's hand-written Triton kernels (t2c/kernels/), decided at lower time.

Each launcher mirrors its IR op: same operands in the same order, `attrs=` the node's attrs.
A kernel family may say what it takes: `supports(attrs)` when the module has it, and
`SUPPORTED_DTYPES` for the float operands (the IR's types are known here, so a combination
the kernel would refuse with NotImplementedError at run time goes to the generic path instead).
"""

from __future__ import annotations

import importlib
from types import ModuleType

from ...ir.core import Node
from ...ir.opdefs.attention import attention_operands

# IR op -> (kernel module, launcher)
KERNELS = {
    "attention": ("t2c.kernels.attention", "attention"),
    "layer_norm": ("t2c.kernels.norm", "layer_norm"),
    "rms_norm": ("t2c.kernels.norm", "rms_norm"),
    "add_norm": ("t2c.kernels.norm", "add_norm"),
    "linear_attention": ("t2c.kernels.linear_attention", "linear_attention"),
    "qlinear": ("t2c.kernels.int8_gemm", "qlinear"),
    "experts": ("t2c.kernels.moe", "experts"),
    "qexperts": ("t2c.kernels.moe", "qexperts"),
}


def _module(name: str) -> ModuleType | None:
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


def handwritten_kernel(node: Node) -> tuple[str, str] | None:
    """(module, launcher) of the hand-written kernel that computes `node`, or None (generic path)."""
    if node.op not in KERNELS:
        return None
    module_name, launcher = KERNELS[node.op]
    module = _module(module_name)
    if module is None or not hasattr(module, launcher):
        return None
    supports = getattr(module, "supports", None)
    if supports is not None and not supports(node.attrs):
        return None
    dtypes = getattr(module, "SUPPORTED_DTYPES", None)
    floats = [v.type.dtype.torch for v in node.inputs if v.type.dtype.is_float]
    if dtypes is not None and any(d not in dtypes for d in floats):
        return None
    if node.op == "attention":
        q, k, v, _, cos, _ = attention_operands(node.inputs, node.attrs)
        if len({q.type.dtype, k.type.dtype, v.type.dtype}) != 1:
            return None
        limit = getattr(module, "MAX_HEAD_DIM", None)
        heads = (q.type.shape[-1], v.type.shape[-1])
        if limit is not None and any(not isinstance(d, int) or d > limit for d in heads):
            return None
        if cos is not None and cos.type.dtype != q.type.dtype:  # the rope cache
            return None
    return module_name, launcher
