"""Data-dependent dims (`n0`, `n1`, ...): text round trip, verifier scoping, interpreter binding,
the frontend naming torch's unbacked SymInts, and ONNX reading them off the op that computed them."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

from t2c.backends.onnx import lower
from t2c.errors import VerifyError
from t2c.frontends.torch_export import trace
from t2c.ir import parse_graph, print_graph, run_graph, verify
from t2c.ir.core import SymDim, fresh_data_dim, is_data_dim

# One expert's share of the tokens: the rows where idx == 1, gathered, then added back.
TEXT = """graph g
input %0 "idx" : i64[batch,2]
input %1 "x" : f32[batch,4]
%2 = full() {shape=[], value=1, dtype=i64} : i64[]
%3 = eq(%0, %2) : bool[batch,2]
%4 = nonzero(%3) {size=n0} : i64[n0,2]
%5 = select(%4) {dim=1, index=0} : i64[n0]
%6 = index(%1, %5) {dims=[0]} : f32[n0,4]
%7 = reshape(%6) {shape=[n0*4]} : f32[n0*4]
%8 = reshape(%7) {shape=[n0,4]} : f32[n0,4]
%9 = index_add(%1, %5, %8) {dim=0} : f32[batch,4]
output "y" = %9
output "rows" = %6
"""


def test_round_trip_is_structurally_equal():
    g = parse_graph(TEXT)
    verify(g)
    again = parse_graph(print_graph(g))
    verify(again)
    assert print_graph(again) == print_graph(g)
    assert g.nodes[2].attrs.size == SymDim("n0")


def test_naming_scheme():
    assert is_data_dim("n0") and is_data_dim("n12")
    assert not is_data_dim("n") and not is_data_dim("seq") and not is_data_dim("batch")
    assert fresh_data_dim(["n0", "n1", "batch"]) == "n2"
    # may be zero, unlike an input dim: sympy must not assume n0 >= 1
    assert SymDim("Max(1,n0)").expr != "n0"
    assert SymDim("Max(1,seq)").expr == "seq"


@pytest.mark.parametrize(
    "old, new, why",
    [
        ("%5 = select", "%99 = full() {shape=[n1], value=0.0, dtype=f32} : f32[n1]\n%5 = select", "not bound"),  # no op computes n1
        ("%2 = full()", "%99 = full() {shape=[n0], value=0.0, dtype=f32} : f32[n0]\n%2 = full()", "not bound"),  # used before its op
        ("%5 = select", "%98 = nonzero(%3) {size=n0} : i64[n0,2]\n%5 = select", "introduced twice"),
        ("{size=n0} : i64[n0,2]", "{size=seq} : i64[seq,2]", "n0, n1"),  # must follow the naming scheme
    ],
)
def test_verifier_scopes_data_dependent_dims(old, new, why):
    with pytest.raises(VerifyError, match=why):
        verify(parse_graph(TEXT.replace(old, new, 1)))


def test_interpreter_binds_the_size_when_the_op_runs():
    g = parse_graph(TEXT)
    idx = torch.tensor([[1, 0], [2, 1], [0, 0]])
    x = torch.randn(3, 4)
    out = run_graph(g, {"idx": idx, "x": x})
    assert out["rows"].shape == (2, 4)  # rows 0 and 1 chose 1
    torch.testing.assert_close(out["y"], x + torch.cat([x[:2], torch.zeros(1, 4)]))
    none = run_graph(g, {"idx": torch.zeros(3, 2, dtype=torch.int64), "x": x})
    assert none["rows"].shape == (0, 4) and torch.equal(none["y"], x)


def test_onnx_reads_the_dim_off_the_nonzero_result():
    g = parse_graph(TEXT)
    session = ort.InferenceSession(lower(g).SerializeToString(), providers=["CPUExecutionProvider"])
    for idx in (torch.tensor([[1, 0], [2, 1], [0, 1], [1, 1]]), torch.zeros(2, 2, dtype=torch.int64)):
        x = torch.randn(idx.shape[0], 4)
        want = run_graph(g, {"idx": idx, "x": x})
        y, rows = session.run(["y", "rows"], {"idx": idx.numpy(), "x": x.numpy()})
        np.testing.assert_allclose(y, want["y"].numpy(), rtol=1e-6, atol=1e-6)
        assert rows.shape == tuple(want["rows"].shape)


class ExpertLoop(torch.nn.Module):
    """A loop over experts with torch.where and index_add_: one unbacked SymInt per expert."""

    def __init__(self):
        super().__init__()
        self.experts = torch.nn.ModuleList(torch.nn.Linear(4, 4) for _ in range(3))

    def forward(self, x, idx):
        out = torch.zeros_like(x)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(idx == e)
            out.index_add_(0, token, expert(x[token]) * (slot[:, None] + 1))
        return out


def test_frontend_names_unbacked_sizes_in_order():
    torch.manual_seed(0)
    m = ExpertLoop().eval()
    x, idx = torch.randn(5, 4), torch.randint(0, 3, (5, 2))
    g = trace(m, {"x": x, "idx": idx}, {"x": {0: "tokens"}, "idx": {0: "tokens"}})
    verify(g)
    sizes = [str(n.attrs.size) for n in g.nodes if n.op == "nonzero"]
    assert sizes == ["n0", "n1", "n2"]
    assert [n.op for n in g.nodes].count("index_add") == 3
    for xs, ids in ((x, idx), (torch.randn(2, 4), torch.zeros(2, 2, dtype=torch.int64))):
        torch.testing.assert_close(run_graph(g, {"x": xs, "idx": ids})["output"], m(xs, ids))


class SplitExperts(torch.nn.Module):
    """JetMoE's parallel experts: rows sorted by expert, split by the experts' token counts
    (`.tolist()`: data-dependent sizes), one linear per piece, concatenated, scaled per row."""

    def __init__(self, experts: int = 3, d: int = 4):
        super().__init__()
        self.experts = experts
        self.weight = torch.nn.Parameter(torch.randn(experts, d, d))

    def forward(self, x, idx):  # x [rows, d], idx [rows] in [0, experts)
        order = idx.argsort()
        sizes = torch.nn.functional.one_hot(idx, self.experts).sum(0).tolist()
        pieces = x[order].split(sizes, dim=0)
        out = torch.cat([p @ self.weight[e] for e, p in enumerate(pieces)], dim=0)
        gates = torch.sigmoid(x[order].sum(-1, keepdim=True))  # [rows, 1]
        return out * gates


def test_split_into_data_dependent_sizes_keeps_the_total():
    """The last size is what the others leave (`rows - n0 - n1`), so the cat has `rows` rows again
    and multiplies with the per-row gates; n0+n1+n2 would not broadcast with `rows`."""
    m = SplitExperts().eval()
    g = trace(m, {"x": torch.randn(6, 4), "idx": torch.tensor([0, 2, 1, 0, 2, 2])}, {"x": {0: "rows"}, "idx": {0: "rows"}})
    verify(g)
    assert str(g.outputs[0][1].type) == "f32[rows,4]"
    for idx in ([1, 1, 0, 2, 0], [2, 2, 2, 2, 2], [0, 1, 2, 0, 1, 2, 0]):
        x, i = torch.randn(len(idx), 4), torch.tensor(idx)
        (got,) = run_graph(g, {"x": x, "idx": i}).values()
        torch.testing.assert_close(got, m(x, i))
