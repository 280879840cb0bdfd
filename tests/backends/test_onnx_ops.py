"""Per-op tests of the ONNX backend: small IR graphs, run in onnxruntime, compared with `run_graph`.

Each case is one node whose inputs have dynamic dims (`batch`, `seq`), checked
at two input shapes so that dims computed at run time are exercised.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from t2c.backends.onnx import LOWERINGS, check_complete, initializer_bytes, lower, save
from t2c.errors import UserError
from t2c.ir import DType, Graph, SymDim, TensorType, all_ops, get_op, run_graph
from t2c.ir.opdefs import activation, add_norm, attention, conv, creation, data_dependent, experts, nn, pointwise, reduction, shape

F32, I64, I32, BOOL = DType.F32, DType.I64, DType.I32, DType.BOOL
BS = ("batch", "seq")
B, SEQ = SymDim("batch"), SymDim("seq")
SIZES = [{"batch": 2, "seq": 5}, {"batch": 3, "seq": 8}]


def randn(shape, dtype):
    if dtype.is_float:
        return torch.randn(shape, dtype=dtype.torch)
    if dtype == BOOL:
        return torch.rand(shape) > 0.5
    return torch.randint(-6, 7, shape, dtype=dtype.torch)


def nonzero(shape, dtype):
    x = randn(shape, dtype)
    return torch.where(x == 0, torch.ones_like(x), x)


def positive(shape, dtype):
    return randn(shape, dtype).abs() + 0.5


def ints_below(n):
    return lambda shape, dtype: torch.randint(0, n, shape, dtype=dtype.torch)


def masked_row(shape, dtype):
    """A mask whose second query row attends nothing (torch gives zeros there)."""
    m = torch.ones(shape, dtype=torch.bool)
    m[..., 1, :] = False
    return m


@dataclass
class Case:
    op: str
    attrs: Any = None
    ins: list = field(default_factory=lambda: [(F32, BS)])  # (dtype, shape[, generator])
    params: dict = field(default_factory=dict)  # name -> tensor, passed after the inputs
    tol: float = 1e-5


def run_case(case: Case) -> None:
    g = Graph()
    vals = [g.add_input(f"x{i}", TensorType(spec[0], spec[1])) for i, spec in enumerate(case.ins)]
    vals += [g.add_param(n, t) for n, t in case.params.items()]
    node = g.add_node(case.op, vals, case.attrs)
    for i, out in enumerate(node.outputs):
        g.set_output(f"y{i}", out)
    session = ort.InferenceSession(lower(g).SerializeToString(), providers=["CPUExecutionProvider"])
    for sizes in SIZES:
        torch.manual_seed(0)
        feeds = {}
        for i, spec in enumerate(case.ins):
            shp = [d if isinstance(d, int) else sizes[d] for d in spec[1]]
            feeds[f"x{i}"] = (spec[2] if len(spec) > 2 else randn)(shp, spec[0])
        ref = run_graph(g, feeds)
        got = session.run(None, {k: v.numpy() for k, v in feeds.items()})
        for (name, want), have in zip(ref.items(), got):
            have = torch.from_numpy(np.asarray(have))
            assert have.shape == want.shape, f"{case.op} {name}: shape {tuple(have.shape)} != {tuple(want.shape)}"
            assert have.dtype == want.dtype, f"{case.op} {name}: dtype {have.dtype} != {want.dtype}"
            if want.dtype.is_floating_point:
                torch.testing.assert_close(have, want, atol=case.tol, rtol=case.tol, equal_nan=True)
            else:
                assert torch.equal(have, want), f"{case.op} {name} differs at {sizes}"


def _cases() -> list[tuple[str, Case]]:
    P, R, S, N, C, M = pointwise, reduction, shape, nn, creation, experts
    c: list[tuple[str, Case]] = []
    for op in ["neg", "abs", "exp", "sin", "cos", "tanh", "sigmoid", "erf", "relu", "silu", "floor", "ceil"]:
        c.append((op, Case(op)))
    for op in ["log", "sqrt", "rsqrt", "reciprocal"]:
        c.append((op, Case(op, ins=[(F32, BS, positive)])))
    c += [
        ("exp-int", Case("exp", ins=[(I64, BS)])),
        ("floor-int", Case("floor", ins=[(I64, BS)])),
        ("logical_not", Case("logical_not", ins=[(F32, BS)])),
        ("gelu", Case("gelu", P.GeluAttrs("none"))),
        ("gelu-tanh", Case("gelu", P.GeluAttrs("tanh"))),
        ("clamp", Case("clamp", P.ClampAttrs(-0.5, 0.7))),
        ("clamp-min", Case("clamp", P.ClampAttrs(min=0.0))),
        ("clamp-max-int", Case("clamp", P.ClampAttrs(max=2), ins=[(I64, BS)])),
        ("cast", Case("cast", P.CastAttrs(I64), ins=[(F32, BS)])),
        ("cast-bool", Case("cast", P.CastAttrs(F32), ins=[(BOOL, BS)])),
        ("where", Case("where", ins=[(BOOL, BS), (F32, BS), (F32, ("seq",))])),
        ("where-promote", Case("where", ins=[(BOOL, BS), (I64, BS), (F32, ())])),
    ]
    for op in ["add", "sub", "mul", "maximum", "minimum"]:
        c.append((op, Case(op, ins=[(F32, BS), (F32, ("seq",))])))
    c += [
        ("add-promote", Case("add", ins=[(I64, BS), (F32, ())])),
        ("add-bool", Case("add", ins=[(BOOL, BS), (BOOL, BS)])),
        ("pow", Case("pow", ins=[(F32, BS, positive), (F32, ())])),
        ("pow-int", Case("pow", ins=[(I64, BS), (I64, (), ints_below(3))])),
        ("remainder", Case("remainder", ins=[(F32, BS), (F32, BS, nonzero)])),
        ("remainder-int", Case("remainder", ins=[(I64, BS), (I64, BS, nonzero)])),
        ("floor_divide", Case("floor_divide", ins=[(F32, BS), (F32, BS, nonzero)], tol=1e-4)),
        ("floor_divide-int", Case("floor_divide", ins=[(I64, BS), (I64, BS, nonzero)])),
        ("div", Case("div", P.DivAttrs(None), ins=[(F32, BS), (F32, BS, nonzero)], tol=1e-4)),
        ("div-int-true", Case("div", P.DivAttrs(None), ins=[(I64, BS), (I64, BS, nonzero)])),
        ("div-floor-int", Case("div", P.DivAttrs("floor"), ins=[(I64, BS), (I64, BS, nonzero)])),
        ("div-trunc-int", Case("div", P.DivAttrs("trunc"), ins=[(I64, BS), (I64, BS, nonzero)])),
        ("div-floor", Case("div", P.DivAttrs("floor"), ins=[(F32, BS), (F32, BS, nonzero)], tol=1e-4)),
        ("div-trunc", Case("div", P.DivAttrs("trunc"), ins=[(F32, BS), (F32, BS, nonzero)], tol=1e-4)),
        ("bitwise_and", Case("bitwise_and", ins=[(I64, BS), (I64, BS)])),
        ("bitwise_or-bool", Case("bitwise_or", ins=[(BOOL, BS), (BOOL, BS)])),
        ("bitwise_and-bool", Case("bitwise_and", ins=[(BOOL, BS), (BOOL, BS)])),
        ("bitwise_or", Case("bitwise_or", ins=[(I32, BS), (I32, BS)])),
        ("logical_and", Case("logical_and", ins=[(F32, BS), (BOOL, BS)])),
        ("logical_or", Case("logical_or", ins=[(BOOL, BS), (BOOL, BS)])),
    ]
    for op in ["eq", "ne", "lt", "le", "gt", "ge"]:
        c.append((op, Case(op, ins=[(I64, BS), (I64, ("seq",))])))
    c.append(("lt-bool", Case("lt", ins=[(BOOL, BS), (BOOL, BS)])))
    c.append(("ge-mixed", Case("ge", ins=[(I64, BS), (F32, ())])))
    # reductions and scans
    for op in ["sum", "mean", "amax", "amin"]:
        c.append((op, Case(op, R.ReduceAttrs((1,), False), ins=[(F32, (*BS, 3))])))
        c.append((f"{op}-all", Case(op, R.ReduceAttrs((), True), ins=[(F32, BS)])))
    c += [
        ("sum-bool", Case("sum", R.ReduceAttrs((-1,), False), ins=[(BOOL, BS)])),
        ("any", Case("any", R.ReduceAttrs((1,), False), ins=[(BOOL, BS)])),
        ("all", Case("all", R.ReduceAttrs((), False), ins=[(F32, BS, ints_below(2))])),
        ("var", Case("var", R.VarAttrs((1,), 1.0, False), ins=[(F32, (*BS, 3))])),
        ("var-all", Case("var", R.VarAttrs((), 0.0, True), ins=[(F32, BS)])),
        ("argmax", Case("argmax", R.ArgAttrs(1, False))),
        ("argmin", Case("argmin", R.ArgAttrs(-1, True), ins=[(I64, BS)])),
        ("softmax", Case("softmax", R.DimAttrs(-1))),
        ("log_softmax", Case("log_softmax", R.DimAttrs(0))),
        ("cumsum", Case("cumsum", R.DimAttrs(1))),
        ("cumsum-bool", Case("cumsum", R.DimAttrs(-1), ins=[(BOOL, BS)])),
        ("topk", Case("topk", R.TopKAttrs(2, 1, True, True))),
        ("topk-smallest", Case("topk", R.TopKAttrs(3, 0, False, True), ins=[(F32, (4, "seq"))])),
        ("topk-symbolic-k", Case("topk", R.TopKAttrs(SymDim("seq-1"), 1, True, True))),
        # ties (a zero-initialised router): the lower index first in the reference and in ONNX TopK
        ("topk-ties", Case("topk", R.TopKAttrs(2, 1, True, True), ins=[(F32, BS, lambda shape, dtype: torch.zeros(shape))])),
        ("topk-ties-smallest", Case("topk", R.TopKAttrs(2, 1, False, True), ins=[(F32, BS, lambda shape, dtype: torch.ones(shape))])),
        ("sort", Case("sort", R.SortAttrs(-1, False, False))),
        ("sort-desc", Case("sort", R.SortAttrs(0, True, True))),
    ]
    # shape ops
    c += [
        ("reshape", Case("reshape", S.ShapeAttrs((SymDim("batch*seq"), 4)), ins=[(F32, (*BS, 4))])),
        ("reshape-split", Case("reshape", S.ShapeAttrs((B, SEQ, 2, 2)), ins=[(F32, (*BS, 4))])),
        ("expand", Case("expand", S.ShapeAttrs((B, 3, SEQ)), ins=[(F32, ("batch", 1, "seq"))])),
        ("permute", Case("permute", S.PermuteAttrs((2, 0, 1)), ins=[(F32, (*BS, 3))])),
        ("unsqueeze", Case("unsqueeze", S.AxisAttrs(-1))),
        ("squeeze", Case("squeeze", S.DimsAttrs((1, 2)), ins=[(F32, ("batch", 1, "seq"))])),
        ("flip", Case("flip", S.DimsAttrs((0, -1)))),
        ("slice", Case("slice", S.SliceAttrs(1, 1, SymDim("seq-1"), 1))),
        ("slice-step", Case("slice", S.SliceAttrs(1, 0, SEQ, 2))),
        ("select", Case("select", S.SelectAttrs(1, 2))),
        ("select-last", Case("select", S.SelectAttrs(1, SymDim("seq-1")))),
        ("cat", Case("cat", S.AxisAttrs(1), ins=[(F32, BS), (I64, ("batch", 3))])),
        ("split", Case("split", S.SplitAttrs(1, (2, SymDim("seq-2"))))),
        ("gather", Case("gather", S.AxisAttrs(1), ins=[(F32, (*BS, 3)), (I64, ("batch", 2, 3), ints_below(5))])),
        ("scatter", Case("scatter", S.AxisAttrs(1), ins=[(F32, (*BS, 3)), (I64, ("batch", 1, 3), ints_below(5)), (F32, ("batch", 1, 3))])),
        ("scatter-bigger-src", Case("scatter", S.AxisAttrs(0), ins=[(F32, (4, 3)), (I64, (1, 3), ints_below(4)), (F32, (2, 3))])),
        ("index-one", Case("index", S.IndexAttrs((1,)), ins=[(F32, (*BS, 3)), (I64, (2, 4), ints_below(5))])),
        ("index-adjacent", Case("index", S.IndexAttrs((1, 2)), ins=[(F32, ("batch", 5, 6, 3)), (I64, ("seq", 1), ints_below(5)), (I64, (4,), ints_below(6))])),
        ("index-front", Case("index", S.IndexAttrs((0, 1)), ins=[(F32, ("batch", 5, 6, 3)), (I64, ("batch", 1, 1, 1), ints_below(2)), (I64, (1, 1, "seq", 1), ints_below(5))])),
        ("index-gap", Case("index", S.IndexAttrs((0, 2)), ins=[(F32, ("batch", 5, 6, 3)), (I64, ("seq",), ints_below(2)), (I64, (1,), ints_below(6))])),
        ("index-negative", Case("index", S.IndexAttrs((1, 2)), ins=[(F32, ("batch", 5, 6)), (I64, (3,), lambda s, d: torch.tensor([-1, 0, -5])), (I64, (3,), lambda s, d: torch.tensor([2, -6, -1]))])),
        ("triu", Case("triu", S.DiagonalAttrs(1), ins=[(F32, ("batch", "seq", "seq"))])),
        ("tril-bool", Case("tril", S.DiagonalAttrs(0), ins=[(BOOL, ("seq", "seq"))])),
        ("pad", Case("pad", S.PadAttrs((1, 2, 0, SymDim("seq")), 0.5))),
        ("repeat", Case("repeat", S.RepeatAttrs((2, 1, SymDim("seq"))))),
        ("embedding", Case("embedding", ins=[(F32, (10, 4)), (I64, BS, ints_below(10))])),
    ]
    # creation: attrs alone, shapes from a dummy input that binds batch/seq
    c += [
        ("full", Case("full", C.FullAttrs((B, SymDim("seq+1")), 1.5, F32))),
        ("full-sym-value", Case("full", C.FullAttrs((), SymDim("seq"), I64))),
        ("full-static", Case("full", C.FullAttrs((2, 3), True, BOOL))),
        ("arange", Case("arange", C.ArangeAttrs(0, SEQ, 1, I64))),
        ("arange-float", Case("arange", C.ArangeAttrs(1, SymDim("2*seq"), 3, F32))),
    ]
    # nn
    w, b = torch.randn(6, 4), torch.randn(6)
    c += [
        ("linear", Case("linear", ins=[(F32, (*BS, 4))], params={"w": w, "b": b})),
        ("linear-2d", Case("linear", ins=[(F32, ("seq", 4))], params={"w": w, "b": b})),
        ("linear-nobias", Case("linear", ins=[(F32, ("seq", 4))], params={"w": w})),
        ("matmul", Case("matmul", ins=[(F32, ("batch", "seq", 4)), (F32, (4, 3))])),
        ("matmul-vec", Case("matmul", ins=[(F32, ("seq", 4)), (F32, (4,))])),
        ("layer_norm", Case("layer_norm", N.NormAttrs((4,), 1e-5), ins=[(F32, (*BS, 4))], params={"g": torch.randn(4), "b": torch.randn(4)})),
        ("layer_norm-2d-noaffine", Case("layer_norm", N.NormAttrs((3, 4), 1e-6), ins=[(F32, ("batch", 3, 4))])),
        ("rms_norm", Case("rms_norm", N.RMSNormAttrs((4,), 1e-6), ins=[(F32, (*BS, 4))], params={"g": torch.randn(4)})),
        ("rms_norm-default-eps", Case("rms_norm", N.RMSNormAttrs((4,), None), ins=[(F32, (*BS, 4))])),
    ]
    # conv: causal depthwise conv1d (SSM mixers), strided/dilated grouped, patch embedding, (k, 1) grouped conv2d
    CV = conv.ConvAttrs
    c += [
        ("conv-1d-depthwise", Case("conv", CV((1,), (3,), (1,), 6), ins=[(F32, ("batch", 6, "seq"))], params={"w": torch.randn(6, 1, 4), "b": torch.randn(6)})),
        ("conv-1d-strided-dilated", Case("conv", CV((2,), (1,), (2,), 2), ins=[(F32, ("batch", 4, "seq"))], params={"w": torch.randn(6, 2, 3)})),
        ("conv-2d-patches", Case("conv", CV((4, 4), (0, 0), (1, 1), 1), ins=[(F32, ("batch", 3, 8, 8))], params={"w": torch.randn(4, 3, 4, 4), "b": torch.randn(4)}, tol=1e-4)),
        ("conv-2d-grouped", Case("conv", CV((1, 1), (1, 0), (1, 1), 4), ins=[(F32, ("batch", 4, "seq", 5))], params={"w": torch.randn(4, 1, 3, 1)})),
        ("conv-1d-f16", Case("conv", CV((1,), (1,), (1,), 1), ins=[(DType.F16, ("batch", 4, "seq"))], params={"w": torch.randn(2, 4, 3, dtype=torch.float16)}, tol=1e-2)),
    ]
    # residual add + norm; tests/backends/test_onnx_norms.py covers both flavors
    AN = add_norm.AddNormAttrs
    c += [
        ("add_norm-rms", Case("add_norm", AN("rms", (4,), 1e-6), ins=[(F32, (*BS, 4)), (F32, (*BS, 4))], params={"g": torch.randn(4)})),
        ("add_norm-rms-default-eps", Case("add_norm", AN("rms", (4,), None), ins=[(F32, (*BS, 4)), (F32, (*BS, 4))])),
        ("add_norm-layer", Case("add_norm", AN("layer", (4,), 1e-5), ins=[(F32, (*BS, 4)), (F32, (*BS, 4))], params={"g": torch.randn(4), "b": torch.randn(4)})),
        ("add_norm-layer-broadcast", Case("add_norm", AN("layer", (3, 4), 1e-6), ins=[(F32, ("batch", 3, 4)), (F32, (3, 4))])),
    ]
    q, kv = (F32, ("batch", 4, "seq", 8)), (F32, ("batch", 2, "seq", 8))
    mask = (BOOL, ("batch", 1, "seq", "seq"), lambda s, d: (torch.rand(s) > 0.5) | torch.eye(s[-1], dtype=torch.bool))
    c += [
        ("sdpa", Case("sdpa", N.SDPAAttrs(), ins=[q, q, q])),
        ("sdpa-causal", Case("sdpa", N.SDPAAttrs(is_causal=True, scale=0.3), ins=[q, q, q])),
        ("sdpa-gqa", Case("sdpa", N.SDPAAttrs(is_causal=True, enable_gqa=True), ins=[q, kv, kv])),
        ("sdpa-bool-mask", Case("sdpa", N.SDPAAttrs(), ins=[q, q, q, mask])),
        ("sdpa-float-mask", Case("sdpa", N.SDPAAttrs(), ins=[q, q, q, (F32, (1, 1, "seq", "seq"))])),
        ("sdpa-causal-rect", Case("sdpa", N.SDPAAttrs(is_causal=True), ins=[(F32, (1, 2, 3, 8)), (F32, (1, 2, "seq", 8)), (F32, (1, 2, "seq", 8))])),
        ("sdpa-masked-row", Case("sdpa", N.SDPAAttrs(), ins=[q, q, q, (BOOL, (1, 1, "seq", "seq"), masked_row)])),
        ("sdpa-3d-masked-row", Case("sdpa", N.SDPAAttrs(), ins=[(F32, ("batch", "seq", 8))] * 3 + [(BOOL, ("seq", "seq"), masked_row)])),
        ("sdpa-3d", Case("sdpa", N.SDPAAttrs(is_causal=True), ins=[(F32, ("batch", "seq", 8))] * 3)),
        ("sdpa-3d-gqa-mask", Case("sdpa", N.SDPAAttrs(enable_gqa=True), ins=[(F32, (4, "seq", 8)), (F32, (2, "seq", 8)), (F32, (2, "seq", 8)), (F32, ("seq", "seq"))])),
    ]
    AT = attention  # the semantic ops; tests/backends/test_onnx_attention.py covers them in depth
    c += [
        ("attention", Case("attention", AT.AttentionAttrs(scale=0.3, kv_heads=2), ins=[q, kv, kv])),
        ("attention-causal", Case("attention", AT.AttentionAttrs(scale=0.3, causal=True, kv_heads=4), ins=[q, q, q])),
        ("attention-sliding", Case("attention", AT.AttentionAttrs(scale=0.3, causal=True, window=(2, -1), global_tokens=1, kv_heads=2), ins=[q, kv, kv])),
        ("attention-dense", Case("attention", AT.AttentionAttrs(scale=0.3, window=(-1, 1), kv_heads=4), ins=[q, q, q, mask])),
        ("linear_attention", Case("linear_attention", AT.LinearAttentionAttrs(kv_heads=2), ins=[q, kv, kv], tol=1e-4)),
        ("linear_attention-causal", Case("linear_attention", AT.LinearAttentionAttrs(causal=True, kv_heads=4), ins=[q, q, q], tol=1e-4)),
    ]
    from t2c.ir.opdefs import rope as RO  # cos/sin as inputs: the explicit form (test_onnx_rope.py: RotaryEmbedding)

    cs8, cs4 = (F32, (1, 1, "seq", 8)), (F32, ("batch", 1, "seq", 4))
    c += [
        ("rope-half", Case("rope", RO.RopeAttrs(False, 8), ins=[q, cs8, cs8])),
        ("rope-partial", Case("rope", RO.RopeAttrs(False, 4), ins=[q, cs4, cs4])),
        ("rope-interleaved-bshd", Case("rope", RO.RopeAttrs(True, 8), ins=[(F32, ("batch", "seq", 4, 8)), (F32, ("seq", 1, 8)), (F32, ("seq", 1, 8))])),
        ("attention-rope", Case("attention", AT.AttentionAttrs(scale=0.3, causal=True, kv_heads=2, rope="half", rotary_dim=8), ins=[q, kv, kv, cs8, cs8])),
        ("attention-rope-mask-sliding", Case("attention", AT.AttentionAttrs(scale=0.3, causal=True, window=(2, -1), kv_heads=2, rope="interleaved", rotary_dim=4), ins=[q, kv, kv, (BOOL, ("batch", 1, 1, "seq")), cs4, cs4])),
    ]
    # experts: T tokens (the batch dim here), K=2 ids among 4 experts (and -1 / 4, which contribute nothing)
    weights = {"gate_up": torch.randn(4, 12, 8) * 0.3, "down": torch.randn(4, 8, 6) * 0.3}
    routed = [(F32, ("batch", 8)), (I64, ("batch", 2), lambda shape, dtype: torch.randint(-1, 5, shape)), (F32, ("batch", 2))]
    for dispatch in M.DISPATCH:
        c.append((f"experts-{dispatch}", Case("experts", M.ExpertsAttrs(dispatch=dispatch), ins=routed, params=weights, tol=1e-4)))
    # int8 ops; tests/backends/test_onnx_quant.py covers modes, groups and flavors (bit-identical)
    from t2c.ir.opdefs import quant as Q

    qw, qs = Q.quantize_weight(torch.randn(6, 4))
    uq, us = Q.quantize_weight(weights["gate_up"])
    dq, ds = Q.quantize_weight(weights["down"])
    for mode in Q.MODES:
        c.append((f"qlinear-{mode}", Case("qlinear", Q.QLinearAttrs(mode), ins=[(F32, (*BS, 4))], params={"w": qw, "s": qs, "b": b})))
        c.append((f"qexperts-{mode}", Case("qexperts", Q.QExpertsAttrs(mode=mode), ins=routed, params={"up": uq, "us": us, "down": dq, "ds": ds}, tol=1e-4)))
    c.append(("qembedding", Case("qembedding", ins=[(DType.I8, (10, 4)), (F32, (10,)), (I64, BS, ints_below(10))])))
    # fused activations; tests/backends/test_onnx_activations.py covers both flavors
    for act in ["silu", "gelu", "gelu_tanh", "relu"]:
        A = activation.ActivationAttrs(act)
        c.append((f"gated_act-{act}", Case("gated_act", A, ins=[(F32, (*BS, 4)), (F32, (*BS, 4))])))
        c.append((f"bias_act-{act}", Case("bias_act", A, ins=[(F32, (*BS, 4))], params={"bias": torch.randn(4)})))
    c.append(("gated_act-broadcast", Case("gated_act", activation.ActivationAttrs("silu"), ins=[(F32, (*BS, 4)), (F32, ("seq", 1))])))
    # data-dependent: a row count known at run time; duplicate indices accumulate
    D = data_dependent
    c += [
        ("nonzero", Case("nonzero", D.NonzeroAttrs(SymDim("n0")), ins=[(BOOL, BS)])),
        ("nonzero-int-3d", Case("nonzero", D.NonzeroAttrs(SymDim("n0")), ins=[(I64, ("batch", 2, "seq"), ints_below(2))])),
        ("index_add", Case("index_add", D.IndexAddAttrs(0), ins=[(F32, ("batch", 4)), (I64, ("seq",), ints_below(2)), (F32, ("seq", 4))])),
        ("index_add-dim1", Case("index_add", D.IndexAddAttrs(1), ins=[(F32, (3, "batch", 2)), (I64, ("seq",), ints_below(2)), (F32, (3, "seq", 2))])),
        ("data_size", Case("data_size", D.DataSizeAttrs(SymDim("n0")), ins=[(I64, (), ints_below(7))])),
        ("scatter_nd", Case("scatter_nd", D.ScatterNDAttrs(False), ins=[(F32, (4, 4, 3)), (I64, ("seq", 2), distinct_rows(2, 4)), (F32, ("seq", 3))])),
        ("scatter_nd-accumulate", Case("scatter_nd", D.ScatterNDAttrs(True), ins=[(F32, ("batch", 4)), (I64, (2, "seq", 1), ints_below(2)), (F32, (2, "seq", 4))])),
    ]
    # coverage ops: pooling, scatter with a reduction, more unary math, exact integer pow and sum
    c += [(op, Case(op, ins=[(F32, BS, lambda s, d: torch.rand(s) * 1.8 - 0.9)])) for op in ["tan", "asin", "acos", "atan", "sign", "round"]]
    c += [
        ("sign-int", Case("sign", ins=[(I64, BS)])),
        ("round-half-even", Case("round", ins=[(F32, BS, lambda s, d: torch.randint(-6, 7, s) + 0.5)])),
        ("max_pool-1d", Case("max_pool", R.PoolAttrs((4,), (4,), (0,), (1,)), ins=[(F32, ("batch", 3, 16))])),
        ("max_pool-2d-pad-dilated", Case("max_pool", R.PoolAttrs((3, 2), (2, 1), (1, 1), (1, 2)), ins=[(F32, ("batch", 2, 9, 7))])),
        ("max_pool-ceil", Case("max_pool", R.PoolAttrs((2,), (2,), (0,), (1,), True), ins=[(F32, ("batch", 3, "seq"))])),
        ("max_pool-f16", Case("max_pool", R.PoolAttrs((2,), (2,), (0,), (1,)), ins=[(DType.F16, ("batch", 3, 8))])),
        ("avg_pool-ceil", Case("avg_pool", R.AvgPoolAttrs((2, 2), (2, 2), (0, 0), True), ins=[(F32, ("batch", 1, "seq", 5))])),
        ("avg_pool-pad", Case("avg_pool", R.AvgPoolAttrs((3,), (1,), (1,), False, True), ins=[(F32, ("batch", 2, "seq"))])),
        ("avg_pool-pad-exclude", Case("avg_pool", R.AvgPoolAttrs((3,), (2,), (1,), False, False), ins=[(F32, ("batch", 2, "seq"))])),
    ]
    scatter_ins = [(F32, ("batch", 4)), (I64, ("batch", "seq"), ints_below(4)), (F32, ("batch", "seq"))]
    for reduce in S.SCATTER_REDUCTIONS:
        c.append((f"scatter_reduce-{reduce}", Case("scatter_reduce", S.ScatterReduceAttrs(1, reduce, True), ins=scatter_ins)))
        c.append((f"scatter_reduce-{reduce}-no-self", Case("scatter_reduce", S.ScatterReduceAttrs(1, reduce, False), ins=scatter_ins)))
    c.append(("scatter_reduce-amin-int", Case("scatter_reduce", S.ScatterReduceAttrs(0, "amin", False), ins=[(I64, (3, "seq")), (I64, (2, "seq"), ints_below(3)), (I64, (2, "seq"))])))
    big = lambda s, d: torch.randint(2**40, 2**41, s)  # noqa: E731  (products and sums past 2**53 wrap like torch)
    c += [
        ("pow-int-exact", Case("pow", ins=[(I64, BS, big), (I64, ("seq",), ints_below(3))])),
        ("pow-int-exact-scalar", Case("pow", ins=[(I64, (), lambda s, d: torch.tensor(1000000007)), (I64, ("seq",), ints_below(4))])),
        ("sum-int-exact", Case("sum", R.ReduceAttrs((0, 1), False), ins=[(I64, (*BS, 3), lambda s, d: torch.randint(2**60, 2**62, s))])),
        ("sum-int-exact-keepdim", Case("sum", R.ReduceAttrs((1,), True), ins=[(I64, BS, big)])),
    ]
    return c


def distinct_rows(k, n):
    """[rows, k] coordinates below n without repeats (scatter_nd's writes are then well defined)."""
    def make(shape, dtype):
        rows = shape[0]
        flat = torch.randperm(n**k)[:rows]
        return torch.stack([(flat // n**(k - 1 - j)) % n for j in range(k)], dim=1)
    return make


CASES = _cases()


@pytest.mark.parametrize("case", [c for _, c in CASES], ids=[n for n, _ in CASES])
def test_op(case):
    if not get_op(case.op).operands:
        run_creation(case)
    else:
        run_case(case)


def run_creation(case: Case) -> None:
    """full/arange take no operands: a graph input binds the dims and is returned too."""
    g = Graph()
    x = g.add_input("x0", TensorType(F32, BS))
    node = g.add_node(case.op, [], case.attrs)
    g.set_output("y0", node.output)
    g.set_output("x", x)
    session = ort.InferenceSession(lower(g).SerializeToString(), providers=["CPUExecutionProvider"])
    for sizes in SIZES:
        feed = torch.zeros(sizes["batch"], sizes["seq"])
        want = run_graph(g, {"x0": feed})["y0"]
        have = torch.from_numpy(np.asarray(session.run(["y0"], {"x0": feed.numpy()})[0]))
        assert have.dtype == want.dtype and torch.equal(have, want), f"{case.op} at {sizes}: {have} != {want}"


def test_every_op_has_a_lowering():
    assert check_complete() == [], "IR ops without an ONNX lowering"
    assert set(all_ops()) <= set(LOWERINGS)


def test_every_op_has_a_test():
    assert set(all_ops()) <= {c.op for _, c in CASES}


def test_symbolic_reshape_names_dims():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (*BS, 64)))
    y = g.add_node("reshape", [x], shape.ShapeAttrs((SymDim("batch*seq"), 64))).output
    g.set_output("y", y)
    proto = lower(g)
    assert [d.dim_param for d in proto.graph.input[0].type.tensor_type.shape.dim[:2]] == ["batch", "seq"]
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    for b, s in [(2, 5), (3, 9)]:
        assert session.run(None, {"x": np.zeros((b, s, 64), np.float32)})[0].shape == (b * s, 64)


def test_static_requires_static_inputs():
    g = Graph()
    g.set_output("y", g.add_node("neg", [g.add_input("x", TensorType(F32, BS))]).output)
    with pytest.raises(UserError):
        lower(g, static=True)
    g2 = Graph()
    g2.set_output("y", g2.add_node("neg", [g2.add_input("x", TensorType(F32, (2, 3)))]).output)
    dims = lower(g2, static=True).graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_value for d in dims] == [2, 3]


def test_opset_and_flavor_checked():
    g = Graph()
    g.set_output("y", g.add_node("neg", [g.add_input("x", TensorType(F32, BS))]).output)
    with pytest.raises(UserError):
        lower(g, opset=18)
    with pytest.raises(UserError):
        lower(g, flavor="nope")
    assert onnx.printer.to_text(lower(g, flavor="ort")) == onnx.printer.to_text(lower(g))


def test_linear_weight_pretransposed_once():
    g = Graph()
    x = g.add_input("x", TensorType(F32, (*BS, 4)))
    w = g.add_param("w", torch.randn(6, 4))
    y = g.add_node("linear", [x, w]).output
    z = g.add_node("linear", [x, w]).output
    g.set_output("y", g.add_node("add", [y, z]).output)
    proto = lower(g)
    assert [i.name for i in proto.graph.initializer] == ["w.T"]
    assert all(n.op_type != "Transpose" for n in proto.graph.node)


def test_external_data_decision(tmp_path):
    g = Graph()
    x = g.add_input("x", TensorType(F32, ("seq", 256)))
    g.set_output("y", g.add_node("linear", [x, g.add_param("w", torch.randn(256, 256))]).output)
    proto = lower(g)
    assert initializer_bytes(proto) == 256 * 256 * 4
    small = save(proto, str(tmp_path / "small"))
    assert not (tmp_path / "small" / "model.onnx.data").exists()
    big = save(proto, str(tmp_path / "big"), external_threshold=1000)
    assert (tmp_path / "big" / "model.onnx.data").stat().st_size >= 256 * 256 * 4
    for path in (small, big):
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        assert session.run(None, {"x": np.ones((3, 256), np.float32)})[0].shape == (3, 256)

