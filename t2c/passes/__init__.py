"""Passes over the IR: the registry and pipelines (`manager`), the rewrite API, and the passes.

Importing this package registers every built-in pass.
"""

from .manager import (
    PRESETS,
    Pass,
    PassRecord,
    PassResult,
    Pipeline,
    all_passes,
    describe_passes,
    get_pass,
    register_pass,
)
from .rewrite import Match, Rewriter, RewriteRule, apply_rules, collect_near_misses

# Each import registers its passes.
from . import cast_precision, cse, dce, fold_shapes, fuse_activation, fuse_norm, fuse_rope, lift_attention, lift_linear_attention, lift_moe, linear_attention, merge_linears, quantize_int8, sparsify_moe, window_attention  # noqa: E402,F401

__all__ = [
    "PRESETS", "Pass", "PassRecord", "PassResult", "Pipeline", "all_passes", "describe_passes",
    "get_pass", "register_pass", "Match", "Rewriter", "RewriteRule", "apply_rules", "collect_near_misses",
]
