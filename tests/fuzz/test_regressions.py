"""Regressions the differential fuzzer found: each a fixed case (spec, pipeline, target) run through
the fuzzer's own check (tests/fuzz/test_fuzz.py: compile, `ok is True`, the artifact against the
interpreter and eager at a fresh shape). Each entry says what failed and which commit fixed it.
"""

from __future__ import annotations

import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from model_space import Spec  # noqa: E402
from test_fuzz import Case, check  # noqa: E402

REGRESSIONS = {
    # An SDPA call with a key-padding mask [B, 1, 1, S] compiled without lift-attention (-O0)
    # lowered to ONNX Attention with the mask as it is; onnxruntime's Attention does not
    # broadcast the mask over queries and failed at run time ("inconsistent q_sequence_length
    # (between attn_mask and Q)"), an internal error out of t2c.compile's validation. Fixed in
    # the sdpa lowering (t2c/backends/onnx/attention.py: query_rows, shared with attention).
    "sdpa-padding-row-O0-standard": Case(Spec(mask="padding", attn_impl="sdpa", layers=1, heads=2, kv_heads=2, seq=7),
                                         "-O0", "onnx", "standard"),
    "sdpa-padding-row-O0-ort-fp16": Case(Spec(seed=555, mask="padding", attn_impl="sdpa", layers=1, hidden=64, heads=3, kv_heads=1,
                                              head_dim=12, norm="rms", placement="post", activation="gelu_tanh", gated=False,
                                              bias=True, batch=1, seq=7, dtype="float16"),
                                         "-O0", "onnx", "ort"),
    # A float16 torch.where / index_add_ expert loop compiled without lift-moe (-O0) lowered
    # index_add to ScatterND(reduction="add") in float16, which onnxruntime's CPU provider has
    # no kernel for ("MLFloat16 data type is not supported with ScatterND opset 16 when
    # reduction is 'add'"): an internal error at run time. Fixed in the ONNX lowering
    # (t2c/backends/onnx/data_dependent.py: half accumulations scatter in float32).
    "index-add-fp16-O0": Case(Spec(experts=2, top_k=1, layers=1, dtype="float16", seq=4, batch=2), "-O0", "onnx", "standard"),
}


@pytest.mark.parametrize("name", list(REGRESSIONS))
def test_regression(name):
    assert check(REGRESSIONS[name]) == "ok"
