"""The IR core: types and dims, text round trip, verifier, interpreter checks."""

import math

import pytest
import torch

from t2c.errors import IRParseError, UserError, VerifyError
from t2c.ir import DType, Graph, SymDim, TensorType, all_ops, parse_graph, print_graph, run_graph, verify
from t2c.ir.core import dim, dims_equal, eval_dim, solve_dims
from t2c.ir.opdefs.creation import ArangeAttrs, FullAttrs
from t2c.ir.opdefs.experts import ExpertsAttrs
from t2c.ir.opdefs.pointwise import ClampAttrs
from t2c.ir.opdefs.reduction import TopKAttrs
from t2c.ir.opdefs.shape import ShapeAttrs, SliceAttrs


def small_graph():
    g = Graph("small")
    x = g.add_input("x", TensorType(DType.F32, (SymDim("batch"), SymDim("seq"), 8)))
    w = g.add_param("w", torch.randn(4, 8))
    y = g.add_node("linear", [x, w]).output
    c = g.add_node("full", [], FullAttrs((), 0.5, DType.F32)).output
    z = g.add_node("mul", [y, c]).output
    r = g.add_node("reshape", [z], ShapeAttrs((dim("batch*seq"), 4))).output
    s = g.add_node("slice", [r], SliceAttrs(0, 1, dim("batch*seq"), 1)).output
    g.set_output("y", s)
    return g


def test_symbolic_dims_canonicalise_and_evaluate():
    assert dim("seq*batch") == dim("batch*seq")
    assert dim("seq+1-1") == SymDim("seq")
    assert dim("3") == 3
    assert dims_equal(dim("2*seq"), dim("seq+seq"))
    assert eval_dim(dim("floor(seq/2)+batch"), {"seq": 7, "batch": 2}) == 5


def test_print_parse_round_trip_and_run():
    g = small_graph()
    verify(g)
    text = print_graph(g)
    assert "%5 = slice(%4) {dim=0, start=1, end=batch*seq, step=1} : f32[batch*seq-1,4]" in text
    again = parse_graph(text)
    assert print_graph(again) == text
    again.params = g.params
    out = run_graph(again, {"x": torch.randn(2, 3, 8)})["y"]
    assert out.shape == (5, 4)


@pytest.mark.parametrize("value", [0.1, 1e-6, -2.5e30, math.inf, -math.inf, 1.0, 3, True])
def test_attr_values_round_trip(value):
    g = Graph("v")
    x = g.add_input("x", TensorType(DType.F32, (4,)))
    dtype = DType.BOOL if isinstance(value, bool) else (DType.I64 if isinstance(value, int) else DType.F32)
    c = g.add_node("full", [], FullAttrs((4,), value, dtype)).output
    g.set_output("c", c)
    g.set_output("x", x)
    again = parse_graph(print_graph(g))
    got = again.nodes[0].attrs.value
    assert got == value and type(got) is type(value)


def test_nan_and_optional_attrs_round_trip():
    g = Graph("v")
    x = g.add_input("x", TensorType(DType.F32, (4,)))
    y = g.add_node("clamp", [x], ClampAttrs(None, math.nan)).output
    g.set_output("y", y)
    again = parse_graph(print_graph(g))
    assert again.nodes[0].attrs.min is None and math.isnan(again.nodes[0].attrs.max)


def test_string_attrs_with_quotes_round_trip():
    g = Graph("v")
    x = g.add_input("x", TensorType(DType.F32, (3, 8)))
    idx = g.add_input("idx", TensorType(DType.I64, (3, 2)))
    w = g.add_input("w", TensorType(DType.F32, (3, 2)))
    gu = g.add_param("gu", torch.randn(4, 12, 8))
    d = g.add_param("d", torch.randn(4, 8, 6))
    y = g.add_node("experts", [x, idx, w, gu, d], ExpertsAttrs(activation="gelu_tanh", split="interleaved")).output
    g.set_output('odd "name", really', y)
    verify(g)
    assert print_graph(parse_graph(print_graph(g))) == print_graph(g)


def test_multi_output_nodes_round_trip():
    g = Graph("t")
    x = g.add_input("x", TensorType(DType.F32, (SymDim("batch"), 10)))
    v, i = g.add_node("topk", [x], TopKAttrs(3, -1, True, True)).outputs
    g.set_output("values", v)
    g.set_output("indices", i)
    text = print_graph(g)
    assert "%1, %2 = topk(%0)" in text and ": f32[batch,3], i64[batch,3]" in text
    assert print_graph(parse_graph(text)) == text


def test_verifier_rejects_wrong_result_type():
    g = small_graph()
    g.nodes[0].outputs[0].type = TensorType(DType.F32, (SymDim("batch"), SymDim("seq"), 5))
    with pytest.raises(VerifyError, match="inferred"):
        verify(g)


def test_verifier_rejects_use_before_definition():
    g = small_graph()
    g.nodes[0], g.nodes[2] = g.nodes[2], g.nodes[0]
    with pytest.raises(VerifyError, match="before it is defined"):
        verify(g)


def test_verifier_rejects_malformed_attrs():
    g = small_graph()
    g.nodes[3].attrs = ShapeAttrs(("batch*seq", 4))  # a str where a dim belongs
    with pytest.raises(VerifyError, match="malformed attrs"):
        verify(g)
    g = small_graph()
    g.nodes[3].attrs = ShapeAttrs((dim("batch*seq"), 5))
    with pytest.raises(VerifyError, match="element count"):
        verify(g)


def test_attention_structure_needs_one_index_space():
    """causal/window structure counts queries and keys from 0 alike: refused over a KV cache (k longer than q)."""
    text = """graph g
input %0 "q" : f32[1,2,seq,8]
input %1 "k" : f32[1,2,past+seq,8]
%2 = attention(%0, %1, %1) {scale=0.25, causal=CAUSAL, window=[-1,-1], block=0, global_tokens=0, kv_heads=2, softcap=0.0, rope="none", rotary_dim=0, rope_cache="full", rope_positions="input"} : f32[1,2,seq,8]
output "out" = %2
"""
    verify(parse_graph(text.replace("CAUSAL", "false")))  # a plain (masked or cross) attention is fine
    with pytest.raises(VerifyError, match="need as many queries as keys"):
        verify(parse_graph(text.replace("CAUSAL", "true")))


def test_parser_errors_name_the_line():
    with pytest.raises(IRParseError, match="line 3"):
        parse_graph('graph g\ninput %0 "x" : f32[4]\n%1 = nosuchop(%0) : f32[4]\noutput "y" = %1\n')
    with pytest.raises(IRParseError, match="line 2"):
        parse_graph('graph g\n%1 = neg(%0) : f32[4]\n')
    with pytest.raises(IRParseError, match="first line"):
        parse_graph("# only a comment\n")


def test_interpreter_checks_input_shapes():
    g = small_graph()
    with pytest.raises(UserError, match="shape|rank"):
        run_graph(g, {"x": torch.randn(2, 3, 7)})
    with pytest.raises(UserError, match="missing inputs"):
        run_graph(g, {})


def test_interpreter_catches_a_wrong_type_claim():
    g = Graph("t")
    g.add_node("arange", [], ArangeAttrs(0, SymDim("seq"), 1, DType.I64))
    x = g.add_input("x", TensorType(DType.F32, (SymDim("seq"),)))
    g.nodes[0].outputs[0].type = TensorType(DType.I64, (dim("seq+1"),))
    g.set_output("r", g.nodes[0].outputs[0])
    g.set_output("x", x)
    with pytest.raises(VerifyError, match="produced"):
        run_graph(g, {"x": torch.randn(5)})


def test_every_op_documents_itself():
    ops = all_ops()
    assert {"linear", "sdpa", "experts", "layer_norm", "rms_norm", "embedding", "softmax", "gelu", "silu"} <= set(ops)
    assert all(op.doc for op in ops.values())


def test_a_symbol_no_input_has_alone_is_solved_from_a_sum():
    """`past` of a decode-state graph lives only in `attention_mask` [batch, past+seq]: every runner
    solves it from that sum once seq is bound (core.solve_dims); a coefficient other than 1 is not solved."""
    g = parse_graph('''graph derived
input %0 "input_ids" : i64[batch,seq]
input %1 "attention_mask" : i64[batch,past+seq]
%2 = arange() {start=past, end=past+seq, step=1, dtype=i64} : i64[seq]
output "positions" = %2
''')
    out = run_graph(g, [torch.zeros(2, 3, dtype=torch.long), torch.ones(2, 10, dtype=torch.long)])
    assert out["positions"].tolist() == [7, 8, 9]
    assert solve_dims([(SymDim("past+seq"), 10)], {"seq": 3}) == {"seq": 3, "past": 7}
    assert solve_dims([(SymDim("2*past+seq"), 10)], {"seq": 3}) == {"seq": 3}


def test_state_lines_round_trip():
    text = '''graph states
input %0 "past_state_0" : f32[batch,2,8,9]
state "past_state_0" {"feature": "elu1", "keys": "past_key_0"}
output "out" = %0
'''
    g = parse_graph(text)
    assert g.states == {"past_state_0": {"feature": "elu1", "keys": "past_key_0"}}
    assert print_graph(g) == text and g.copy().states == g.states
    with pytest.raises(IRParseError, match="state"):
        parse_graph(text.replace('{"feature"', '["feature"'))
