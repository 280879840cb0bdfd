"""The ONNX lowerings of `experts`: dense, sparse, and the ort flavor's com.microsoft.MoE, against the IR reference.

Every variant of the op (activations, gated or not, weight layouts, gate/up split,
clamp limit, up offset, biases) in every form, in ONNX Runtime, at a token count
where every expert gets tokens and at one where most get none; ids out of range
and chosen twice; and which forms the ort flavor hands to its MoE kernel.
"""

from __future__ import annotations


import numpy as np
import onnxruntime as ort
import pytest
import torch

from t2c.backends.onnx import lower
from t2c.ir import DType, Graph, TensorType, run_graph
from t2c.ir.opdefs.experts import ExpertsAttrs

E, H, I, K = 6, 8, 5, 2
F32, I64 = DType.F32, DType.I64


def _graph(a: ExpertsAttrs, bias: bool, seed: int = 0, dtype: DType = F32, w_dtype: DType = F32) -> Graph:
    """experts over x [tokens, H] in `dtype` (weights alike); routing weights in `w_dtype` (routers give float32)."""
    gen = torch.Generator().manual_seed(seed)
    u = 2 * I if a.gated else I
    up = torch.randn(E, u, H, generator=gen) * 0.4
    down = torch.randn(E, H, I, generator=gen) * 0.4
    if a.layout == "in_out":
        up, down = up.transpose(1, 2).contiguous(), down.transpose(1, 2).contiguous()
    g = Graph()
    ins = [g.add_input("x", TensorType(dtype, ("tokens", H))), g.add_input("idx", TensorType(I64, ("tokens", K))),
           g.add_input("w", TensorType(w_dtype, ("tokens", K)))]
    ins += [g.add_param("up", up.to(dtype.torch)), g.add_param("down", down.to(dtype.torch))]
    if bias:
        ins += [g.add_param("b_up", (torch.randn(E, u, generator=gen) * 0.1).to(dtype.torch)),
                g.add_param("b_down", (torch.randn(E, H, generator=gen) * 0.1).to(dtype.torch))]
    g.set_output("y", g.add_node("experts", ins, a).output)
    return g


def _routing(tokens: int, seed: int, spread: int = E, nonneg: bool = False):
    """Ids among the first `spread` experts (distinct per token), plus an out-of-range id and a repeated one."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.stack([torch.randperm(spread, generator=gen)[:K] for _ in range(tokens)])
    w = torch.rand(tokens, K, generator=gen) if nonneg else torch.randn(tokens, K, generator=gen)
    if tokens > 3:
        idx[0, 1] = E  # an expert-parallel sentinel: contributes nothing
        idx[1, 1] = idx[1, 0]  # the same expert twice: both count
    return idx, w


def _check(g: Graph, flavor: str, nonneg: bool, tol: float = 1e-5) -> set:
    model = lower(g, flavor=flavor)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    for tokens, spread in ((11, E), (3, 2)):  # at 3 tokens on 2 experts, 4 of the 6 experts get nothing
        gen = torch.Generator().manual_seed(tokens)
        x = torch.randn(tokens, H, generator=gen).to(g.inputs[0].type.dtype.torch)
        idx, w = _routing(tokens, tokens, spread, nonneg)
        want = run_graph(g, {"x": x, "idx": idx, "w": w})["y"]
        have = session.run(None, {"x": x.numpy(), "idx": idx.numpy(), "w": w.numpy()})[0]
        np.testing.assert_allclose(have.astype(np.float32), want.float().numpy(), atol=tol, rtol=tol, err_msg=f"{g.nodes[-1].attrs} at {tokens} tokens")
    return {(n.domain, n.op_type) for n in model.graph.node}


VARIANTS = [
    ExpertsAttrs(),
    ExpertsAttrs(activation="gelu"),
    ExpertsAttrs(activation="gelu_tanh", split="interleaved"),
    ExpertsAttrs(activation="silu", alpha=1.702, layout="in_out", split="interleaved", limit=0.5, up_offset=1.0),
    ExpertsAttrs(activation="silu", limit=0.3),
    ExpertsAttrs(activation="relu2", gated=False),
    ExpertsAttrs(activation="relu", gated=False, layout="in_out"),
    ExpertsAttrs(activation="identity", gated=False),
    ExpertsAttrs(activation="gelu_tanh", gated=False),
]


@pytest.mark.parametrize("dispatch", ["dense", "sparse"])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("attrs", VARIANTS, ids=lambda a: f"{a.activation}{'' if a.gated else '-ungated'}-{a.layout}-{a.split}-{a.limit}")
def test_standard_forms(attrs, bias, dispatch):
    from dataclasses import replace

    ops = _check(_graph(replace(attrs, dispatch=dispatch), bias), "standard", nonneg=False)
    assert all(d == "" for d, _ in ops)
    if dispatch == "sparse":
        assert ("", "TopK") in ops  # routes sorted by expert
    else:
        assert ("", "TopK") not in ops


# Gated SiLU (any alpha/limit/offset) and ungated silu/relu/gelu_tanh/identity go to MoE; the rest may not.
ORT_TAKES = [
    (ExpertsAttrs(), True),
    (ExpertsAttrs(activation="silu", alpha=1.702, layout="in_out", split="interleaved", limit=0.5, up_offset=1.0), True),
    (ExpertsAttrs(activation="silu", limit=0.3), True),
    (ExpertsAttrs(activation="relu", gated=False, layout="in_out"), True),
    (ExpertsAttrs(activation="gelu_tanh", gated=False), True),
    (ExpertsAttrs(activation="identity", gated=False), True),
    (ExpertsAttrs(activation="gelu"), False),  # no gated GELU on the CPU kernel
    (ExpertsAttrs(activation="relu2", gated=False), False),
    (ExpertsAttrs(activation="silu", gated=False, alpha=1.702), False),
]


@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("attrs,takes", ORT_TAKES, ids=lambda v: str(v) if isinstance(v, bool) else f"{v.activation}-{v.gated}-{v.layout}")
def test_ort_moe_kernel(attrs, takes, bias):
    """In float16 (the dtype the ort flavor uses it for)."""
    from dataclasses import replace

    a = replace(attrs, dispatch="sparse", nonneg_weights=True)
    ops = _check(_graph(a, bias, dtype=DType.F16), "ort", nonneg=True, tol=1.6e-2)
    assert (("com.microsoft", "MoE") in ops) == takes, ops


@pytest.mark.parametrize("dispatch,nonneg,dtype", [("dense", True, DType.F16), ("sparse", False, DType.F16), ("sparse", True, F32)])
def test_ort_moe_only_where_exact_and_faster(dispatch, nonneg, dtype):
    """Dense experts stay dense; weights not proved >= 0 cannot become log-probabilities; float32 is
    faster in the standard sparse graph (benchmarks/moe.py)."""
    tol = 1.6e-2 if dtype == DType.F16 else 1e-5
    ops = _check(_graph(ExpertsAttrs(dispatch=dispatch, nonneg_weights=nonneg), False, dtype=dtype), "ort", nonneg=True, tol=tol)
    assert ("com.microsoft", "MoE") not in ops


def test_reference_checks_the_nonneg_claim():
    g = _graph(ExpertsAttrs(dispatch="sparse", nonneg_weights=True), False)
    idx, w = _routing(5, 0)
    with pytest.raises(Exception, match="nonneg_weights"):
        run_graph(g, {"x": torch.randn(5, H), "idx": idx, "w": -w.abs()})


@pytest.mark.parametrize("dispatch", ["dense", "sparse"])
def test_half_models(dispatch):
    """float16 experts with float16 routing weights (scatter-adds run in float32 where ONNX Runtime needs it)."""
    g = _graph(ExpertsAttrs(dispatch=dispatch), True, dtype=DType.F16, w_dtype=DType.F16)
    model = lower(g)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    x = torch.randn(9, H).half()
    idx, w = _routing(9, 0)
    want = run_graph(g, {"x": x, "idx": idx, "w": w.half()})["y"]
    have = session.run(None, {"x": x.numpy(), "idx": idx.numpy(), "w": w.half().numpy()})[0]
    np.testing.assert_allclose(have.astype(np.float32), want.float().numpy(), atol=1.6e-2, rtol=1.6e-2)
