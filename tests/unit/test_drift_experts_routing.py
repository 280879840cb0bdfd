"""The per-layer SQNR of an experts layer (t2c/drift.py) over the tokens routed alike before and after a pass.

The fuzzer's w8a8-moe-expert-sqnr: a top-1 MoE under quantize-int8{mode=w8a8} failed the 10 dB bar
with its experts layer at 5.9 dB while every linear was 24-44 dB. The qexperts op was 38-42 dB on
every token but one, whose float router was at a near tie (0.4401 vs 0.4394) that the noise of the
quantized attention tipped: that token got another expert's output. The layer is now measured over
the tokens that kept their experts, and the row counts the others.
"""

from __future__ import annotations

import torch

from t2c.drift import ROUTE, layer_drift, run_layers, same_experts, sqnr_db
from t2c.ir import DType, Graph, TensorType
from t2c.ir.opdefs.experts import ExpertsAttrs
from t2c.passes.manager import Pipeline

E, H, I, T = 3, 16, 24, 9


def _graph() -> Graph:
    gen = torch.Generator().manual_seed(0)
    g = Graph()
    ins = [g.add_input("x", TensorType(DType.F32, ("tokens", H))), g.add_input("idx", TensorType(DType.I64, ("tokens", 1))),
           g.add_input("w", TensorType(DType.F32, ("tokens", 1)))]
    ins += [g.add_param("up", torch.randn(E, I, H, generator=gen) * 0.3), g.add_param("down", torch.randn(E, H, I, generator=gen) * 0.3)]
    node = g.add_node("experts", ins, ExpertsAttrs(activation="relu", gated=False))
    node.meta["module"] = "blocks.0.mlp"
    g.set_output("y", node.output)
    return g


def _feeds(flip: bool):
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(T, H, generator=gen)
    idx = torch.arange(T)[:, None] % E
    if flip:
        idx = idx.clone()
        idx[7, 0] = (idx[7, 0] + 1) % E  # one token's router tipped to the next expert
    return {"x": x, "idx": idx, "w": torch.ones(T, 1)}


def _rows(flip: bool):
    g = _graph()
    gq = Pipeline.from_spec("quantize-int8{mode=w8a8}").run(g.copy())[0]
    assert [n.op for n in gq.nodes] == ["qexperts"]
    _, before, _ = run_layers(g, [_feeds(False)])
    _, after, ops = run_layers(gq, [_feeds(flip)])
    return before, after, ops


def test_run_layers_probes_the_routing_of_experts_layers():
    before, after, ops = _rows(flip=False)
    assert ops == {"blocks.0.mlp": "qexperts"}
    assert torch.equal(after[0][("blocks.0.mlp", ROUTE)], _feeds(False)["idx"])


def test_a_rerouted_token_is_counted_not_measured_as_noise():
    before, after, ops = _rows(flip=True)
    (row,) = layer_drift(before, after, ops)
    assert row["rerouted_tokens"] == 1 and row["tokens"] == T
    assert row["sqnr_db"] > 25  # the int8 experts themselves
    # over every token (what the layer was measured by before): the flipped token dominates
    name = "blocks.0.mlp"
    assert sqnr_db(before[0][name], after[0][name]) < 10
    # and the SQNR over the tokens routed alike is that of the same pass without the flip
    before2, after2, _ = _rows(flip=False)
    (row2,) = layer_drift(before2, after2, ops)
    assert "rerouted_tokens" not in row2
    kept = torch.arange(T) != 7
    assert abs(row["sqnr_db"] - round(sqnr_db(before2[0][name][kept], after2[0][name][kept]), 2)) < 1e-9


def test_same_experts_compares_sets():
    a = torch.tensor([[0, 2], [1, 2], [0, 1]])
    b = torch.tensor([[2, 0], [1, 0], [0, 1]])
    assert same_experts(a, b).tolist() == [True, False, True]
