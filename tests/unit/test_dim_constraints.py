"""Constraints on dynamic dims: divisibility (`seq % 4 == 0`) and upper bounds (`seq <= 2047`).

A model that views `seq` tokens as `seq // W` windows traces only for multiples of W: the
frontend retries torch.export with the derived dim torch suggests (`seq = 4*_seq`), keeps the
input's dim `seq` and records `seq % 4 == 0`; a Max that the trace's ranges decide
(`2048 - Max(0, 2048 - seq)` is `seq` for seq <= 2047) is replaced by its winner and the bound
recorded. The IR text carries both, the verifier checks them, the interpreter refuses inputs
that break them, and validation's second shape respects them.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from t2c.errors import IRParseError, UserError, VerifyError
from t2c.frontends.torch_export import _suggested_multiples, trace
from t2c.ir import DType, Graph, TensorType, parse_graph, print_graph, run_graph, verify
from t2c.ir.core import dim
from t2c.ir.opdefs.shape import ShapeAttrs
from t2c.validate import second_shape_candidates


class Windows(nn.Module):
    def forward(self, x):
        b, s, d = x.shape
        w = x.view(b, s // 4, 4, d)
        return (w - w.mean(dim=2, keepdim=True)).reshape(b, s, d)


class Table(nn.Module):
    """A table of 16 rows sliced from the end by the sequence length (MPT's ALiBi)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.arange(16.0))

    def forward(self, x):
        s = x.shape[1]
        return x + self.table[max(0, 16 - s):]


def _graph() -> Graph:
    g = Graph("g", constraints={"seq": 4}, bounds={"seq": 64})
    x = g.add_input("x", TensorType(DType.F32, ("batch", "seq", 8)))
    y = g.add_node("reshape", [x], ShapeAttrs(tuple(dim(d) for d in ("batch", "seq/4", 4, 8)))).output
    g.set_output("y", y)
    return g


def test_constraints_print_parse_and_verify():
    g = _graph()
    text = print_graph(g)
    assert "constraint seq % 4 == 0\nconstraint seq <= 64\n" in text
    assert g.constraint_lines() == ["seq % 4 == 0", "seq <= 64"]
    back = parse_graph(text)
    assert back.constraints == {"seq": 4} and back.bounds == {"seq": 64} and print_graph(back) == text
    verify(back)
    assert g.copy().constraints == {"seq": 4}
    bad = parse_graph(text.replace("seq % 4", "len % 4"))
    with pytest.raises(VerifyError, match="must name an input dim"):
        verify(bad)
    with pytest.raises(IRParseError, match="constraint SYMBOL"):
        parse_graph(text.replace("seq % 4 == 0", "seq % 4 == 1"))


def test_interpreter_refuses_inputs_that_break_them():
    g = _graph()
    assert run_graph(g, {"x": torch.randn(2, 12, 8)})["y"].shape == (2, 3, 4, 8)
    with pytest.raises(UserError, match=r"seq = 10, but the graph needs seq % 4 == 0"):
        run_graph(g, {"x": torch.randn(2, 10, 8)})
    with pytest.raises(UserError, match=r"seq = 68, but the graph needs seq <= 64"):
        run_graph(g, {"x": torch.randn(2, 68, 8)})


def test_second_shapes_respect_them():
    g = _graph()
    for example_seq in (12, 60, 64):
        for c in second_shape_candidates(g, {"x": torch.randn(2, example_seq, 8)}):
            seq = c["x"].shape[1]
            assert seq % 4 == 0 and 4 <= seq <= 64, (example_seq, seq)
    grown = next(second_shape_candidates(g, {"x": torch.randn(2, 12, 8)}))
    assert grown["x"].shape == (3, 20, 8)


def test_suggested_fix_parsing():
    msg = ("Constraints violated (seq)!\n  - Not all values ...\nSuggested fixes:\n  _seq = Dim('_seq', min=1, max=oo)\n"
           "  seq = 4*_seq\n  batch = Dim('batch', max=8)\n\nThe error above occurred when calling torch.export.export.")
    assert _suggested_multiples(msg, {"x": {0: "batch", 1: "seq"}}) == {"seq": 4}
    assert _suggested_multiples(msg, {"x": {0: "batch", 1: "len"}}) == {}
    assert _suggested_multiples("no fixes here", {"x": {1: "seq"}}) == {}


@pytest.mark.parametrize("seq", [4, 12])
def test_windowed_view_traces_with_a_divisibility_constraint(seq):
    model = Windows()
    g = trace(model, {"x": torch.randn(2, seq, 8)}, {"x": {0: "batch", 1: "seq"}})
    assert str(g.inputs[0].type) == "f32[batch,seq,8]" and g.constraints == {"seq": 4} and not g.bounds
    assert any(str(d) == "seq/4" for n in g.nodes for o in n.outputs for d in o.type.shape)
    verify(g)
    for s in (8, 20):
        x = torch.randn(3, s, 8)
        assert torch.allclose(run_graph(g, {"x": x})["output"], model(x), atol=1e-6)
    with pytest.raises(UserError, match="seq % 4 == 0"):
        run_graph(g, {"x": torch.randn(3, 10, 8)})


def test_max_decided_by_the_trace_range_becomes_a_bound():
    model = Table()
    g = trace(model, {"x": torch.randn(2, 6)}, {"x": {0: "batch", 1: "seq"}})
    assert "Max" not in print_graph(g)
    assert g.bounds and set(g.bounds) == {"seq"} and g.bounds["seq"] <= 16, g.bounds
    x = torch.randn(3, 9)
    assert torch.equal(run_graph(g, {"x": x})["output"], model(x))
    with pytest.raises(UserError, match="seq <= "):
        run_graph(g, {"x": torch.randn(1, 17)})


class Pinned(nn.Module):
    """seq must be 6: a table added whole, as BigBird's block-sparse plan fixes its sequence length."""

    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.arange(6.0))

    def forward(self, x):
        return x + self.table


def test_a_dim_the_model_pins_is_a_warning(tmp_path):
    import t2c

    compiled = t2c.compile(Pinned(), {"x": torch.randn(2, 6)}, out=str(tmp_path / "o"), dynamic_dims={"x": {0: "batch", 1: "seq"}})
    assert str(compiled.graph.inputs[0].type) == "f32[batch,6]"
    assert any("static seq = 6 although asked dynamic" in w for w in compiled.report["warnings"]), compiled.report.get("warnings")
    assert "constraints" not in compiled.report
