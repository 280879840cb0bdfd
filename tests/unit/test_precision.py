"""The precision policy (t2c/precision.py) and cast-precision on small traced models: which dtype a
compile picks and why, where the pass goes, the errors, and the numerics of the converted IR."""

import json
import os

import pytest
import torch

import t2c
from t2c.backends import get_backend
from t2c.cli import main, summary_lines
from t2c.errors import UserError
from t2c.frontends.torch_export import trace
from t2c.ir import DType, parse_graph, run_graph, verify
from t2c.passes import Pipeline
from t2c.precision import choose, graph_inputs

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "tiny_moe_transformer.py") + ":build"


def graph_in(dtype: str):
    return parse_graph(f"""graph g
input %0 "x" : {dtype}[batch,8]
param @w : {dtype}[4,8]
%1 = linear(%0, @w) : {dtype}[batch,4]
output "y" = %1
""")


ONNX = get_backend("onnx")
O1 = Pipeline.preset("O1")


def test_checkpoint_dtype_kept_where_the_target_computes_it():
    for dtype in ("f32", "f16"):
        p = choose(graph_in(dtype), O1, ONNX, None, True)
        assert str(p.checkpoint) == dtype and p.dtype == p.checkpoint and not p.converts
        assert p.place(O1) == O1


def test_bf16_checkpoint_becomes_float32_for_onnx_saying_why():
    p = choose(graph_in("bf16"), O1, ONNX, None, True)
    assert p.checkpoint == DType.BF16 and p.dtype == DType.F32 and not p.explicit
    assert "no bfloat16" in p.reason and "float32 holds bfloat16 weights exactly" in p.reason
    placed = p.place(O1)
    assert placed.passes[0].name == "cast-precision" and placed.passes[0].dtype == "f32"  # first: the others see f32
    assert placed.passes[1:] == O1.passes
    assert p.as_json() == {"checkpoint": "bfloat16", "dtype": "float32", "converted": True, "explicit": False,
                           "reason": p.reason, "primary": "float32"}


def test_downcast_goes_last():
    p = choose(graph_in("f32"), O1, ONNX, "float16", True)
    assert p.dtype == DType.F16 and p.explicit and p.reason == "--dtype float16"
    placed = p.place(O1)
    assert placed.passes[:-1] == O1.passes and str(placed.passes[-1]) == "cast-precision{dtype=f16}"
    assert p.references() == [DType.F32, DType.F16] and p.primary == DType.F32


def test_bf16_for_onnx_is_a_user_error_naming_the_way_out():
    with pytest.raises(UserError) as e:
        choose(graph_in("f32"), O1, ONNX, "bfloat16", True)
    msg = str(e.value)
    assert "no bfloat16" in msg and "--dtype float32 or float16" in msg and "--no-validate" in msg and "\n" not in msg
    # unchecked, it may be written
    assert choose(graph_in("f32"), O1, ONNX, "bfloat16", False).dtype == DType.BF16


def test_int8_needs_float32():
    o2 = Pipeline.preset("O2")
    p = choose(graph_in("f16"), o2, ONNX, None, True)
    assert p.dtype == DType.F32 and "quantize-int8" in p.reason
    with pytest.raises(UserError, match="quantize-int8"):
        choose(graph_in("f32"), o2, ONNX, "float16", True)


def test_pipeline_cast_precision_is_the_users_choice():
    pipe = Pipeline.parse("cse,cast-precision{dtype=float16}")
    p = choose(graph_in("f32"), pipe, ONNX, None, True)
    assert p.dtype == DType.F16 and p.in_pipeline and p.place(pipe) == pipe
    with pytest.raises(UserError, match="contradicts"):
        choose(graph_in("f32"), pipe, ONNX, "float32", True)
    with pytest.raises(UserError, match="float32, float16, bfloat16"):
        Pipeline.parse("cast-precision{dtype=f8}")


class Block(torch.nn.Module):
    """A pre-norm block with a softmax head: norms, reductions and softmax are what stays float32."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.norm = torch.nn.LayerNorm(32)
        self.up = torch.nn.Linear(32, 64)
        self.down = torch.nn.Linear(64, 32)
        self.head = torch.nn.Linear(32, 10)

    def forward(self, x):
        h = x + self.down(torch.nn.functional.gelu(self.up(self.norm(x))))
        rms = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6)
        return {"probs": torch.softmax(self.head(rms), -1), "hidden": h}


def test_f16_conversion_keeps_accumulation_in_f32_and_tracks_eager():
    model = Block().eval()
    x = torch.randn(2, 5, 32)
    graph = trace(model, {"x": x}, {}, name="Block")
    (p,) = Pipeline.parse("cast-precision{dtype=f16}").passes
    result = p.run(graph)
    assert result.changed
    g = result.graph
    verify(g)
    ops = {n.op: n.outputs[0].type.dtype for n in g.nodes if n.op != "cast"}
    assert ops["linear"] == DType.F16 and ops["softmax"] == DType.F32 and ops["mean"] == DType.F32
    assert g.inputs[0].type.dtype == DType.F16 and all(v.type.dtype == DType.F16 for _, v in g.outputs)
    assert result.stats["params_converted"] >= 3 and result.stats["f32_ops"] >= 2
    got = run_graph(g, graph_inputs(g, {"x": x}))
    with torch.no_grad():
        want = model(x)
    for name in ("probs", "hidden"):
        assert got[name].dtype == torch.float16
        assert (got[name].float() - want[name]).abs().max().item() < 1e-2, name


def test_bf16_module_to_f32_is_the_f32_model():
    model = Block().eval().to(torch.bfloat16)
    x = torch.randn(2, 5, 32)
    graph = trace(model, {"x": x.to(torch.bfloat16)}, {}, name="Block")
    (p,) = Pipeline.parse("cast-precision{dtype=f32}").passes
    g = p.run(graph).graph
    assert {v.type.dtype for v in g.param_values.values()} == {DType.F32}
    got = run_graph(g, {"x": x})
    with torch.no_grad():
        want = model.float()(x)
    for name in ("probs", "hidden"):
        assert torch.allclose(got[name], want[name], atol=1e-5, rtol=1e-5), name


def test_api_dtype_float16_compiles_validates_and_takes_float32_inputs(tmp_path):
    model = Block().eval()
    x = torch.randn(2, 5, 32)
    compiled = t2c.compile(model, {"x": x}, dtype="float16", out=str(tmp_path / "b"))
    assert compiled.ok is True
    prec = compiled.report["precision"]
    assert prec["checkpoint"] == "float32" and prec["dtype"] == "float16" and prec["explicit"] is True
    assert [r["dtype"] for r in prec["references"]] == ["float32", "float16"]
    assert compiled.report["passes"][-1]["pass"] == "cast-precision"
    tols = {(o["atol"], o["rtol"]) for c in compiled.report["validation"]["artifact_vs_ir"] for o in c["outputs"]}
    assert tols == {(1e-2, 1.6e-2)}  # the artifact is held to float16's tolerance
    out = compiled(x=torch.randn(3, 7, 32))  # float32 in: cast to the artifact's float16
    assert out["probs"].dtype == torch.float16 and out["probs"].shape == (3, 7, 10)
    with torch.no_grad():
        want = model(x)["probs"]
    assert (compiled(x=x)["probs"].float() - want).abs().max().item() < 1e-2


def test_api_bf16_module_compiles_as_float32_with_the_summary_saying_so(tmp_path):
    model = Block().eval().to(torch.bfloat16)
    x = torch.randn(2, 5, 32).to(torch.bfloat16)
    compiled = t2c.compile(model, {"x": x}, out=str(tmp_path / "b"))
    assert compiled.ok is True
    prec = compiled.report["precision"]
    assert (prec["checkpoint"], prec["dtype"], prec["converted"], prec["explicit"]) == ("bfloat16", "float32", True, False)
    assert compiled.report["passes"][0]["pass"] == "cast-precision"
    text = summary_lines(compiled.report, str(tmp_path / "b"))
    assert "dtype: bfloat16 checkpoint compiled as float32: ONNX Runtime's CPU provider has no bfloat16" in text
    assert "artifact vs eager bfloat16 (the checkpoint)" in text
    assert "drift from" not in text  # a lossless upcast: the precision lines say what it did


def test_cli_dtype_bfloat16_for_onnx_exits_2_in_one_line(tmp_path, capsys):
    code = main(["compile", EXAMPLE, "-o", str(tmp_path / "o"), "--dtype", "bfloat16"])
    out, err = capsys.readouterr()
    assert code == 2
    lines = [line for line in err.strip().splitlines() if line]
    assert len(lines) == 1 and "no bfloat16" in lines[0] and "--dtype float32 or float16" in lines[0], err
    assert not os.path.exists(tmp_path / "o")


def test_cli_dtype_float16_writes_the_precision_record(tmp_path, capsys):
    code = main(["compile", EXAMPLE, "-o", str(tmp_path / "o"), "--dtype", "float16"])
    out, err = capsys.readouterr()
    assert code == 0, err
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["precision"]["dtype"] == "float16" and report["validation"]["ok"] is True
    assert "dtype: float32 checkpoint compiled as float16: --dtype float16" in out
