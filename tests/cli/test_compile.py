"""`t2c compile` end to end: the folder it writes, the report, and its failure paths."""

import json
import os

import pytest
import torch

from t2c.cli import main
from t2c.passes import PRESETS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "tiny_moe_transformer.py") + ":build"


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    out = tmp_path_factory.mktemp("c") / "tiny"
    assert main(["compile", EXAMPLE, "-o", str(out)]) == 0
    return out


def test_compile_writes_the_folder(compiled):
    assert sorted(os.listdir(compiled)) == ["model.onnx", "model.t2c", "report.html", "report.json"]
    assert not [p for p in os.listdir(compiled.parent) if p.startswith(".t2c-")]


def test_report_has_what_design_promises(compiled):
    report = json.loads((compiled / "report.json").read_text())
    assert report["validation"]["ok"] is True
    assert report["target"] == "onnx" and report["target_options"] == {"flavor": "standard", "opset": 23}
    assert len(report["validation"]["artifact_vs_ir"]) == 2  # traced shape and another
    out = report["validation"]["artifact_vs_ir"][1]["outputs"][0]
    assert set(out) == {"name", "max_abs", "max_rel", "cosine", "atol", "rtol", "ok"}
    assert out["name"] == "output" and out["max_abs"] <= 1e-4
    assert [p["pass"] for p in report["passes"]] == list(PRESETS["O1"])
    # -O1 is all exact: one comparison after its last pass covers every pass (compiler._run_passes)
    last = report["passes"][-1]
    assert last["covers"] == list(PRESETS["O1"]) and all(o["ok"] for c in last["vs_eager"] for o in c["outputs"])
    assert report["op_counts"]["traced"]["sdpa"] == 2 and report["op_counts"]["final"]["attention"] == 2
    assert set(report["timings"]) >= {"trace", "passes", "lower", "validate"}
    html = (compiled / "report.html").read_text()
    assert "Artifact vs IR" in html and "fold-shapes" in html


def test_load_gives_a_callable_matching_eager(compiled):
    import t2c
    import tiny_moe_transformer

    model, _ = tiny_moe_transformer.build()
    loaded = t2c.load(str(compiled))
    ids = torch.randint(0, 256, (3, 21))
    got = loaded(input_ids=ids)["output"]
    assert (got - model(ids).detach()).abs().max().item() <= 1e-4
    assert loaded.ok is True


def test_validation_failure_exits_1_naming_the_output(tmp_path, capsys, monkeypatch):
    from t2c.backends.onnx import lowering

    # A wrong lowering of silu (as relu): the artifact no longer matches the IR. -O1 fuses the
    # example's `silu(gate) * up` into gated_act, so break that lowering the same way.
    monkeypatch.setitem(lowering.LOWERINGS, "silu", lambda ctx, node: [ctx.emit("Relu", [ctx.name(node.inputs[0])])])
    monkeypatch.setitem(lowering.LOWERINGS, "gated_act", lambda ctx, node: [ctx.emit("Mul", [ctx.emit("Relu", [ctx.name(node.inputs[0])]), ctx.name(node.inputs[1])])])
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("previous result")
    code, stdout, err = run(capsys, "compile", EXAMPLE, "-o", str(out))
    assert code == 1
    assert "'output'" in err and "max abs error" in err and err.count("\n") == 1
    assert os.listdir(out) == ["keep.txt"] and (out / "keep.txt").read_text() == "previous result"
    assert not [p for p in os.listdir(tmp_path) if p != "out"]


def test_unsupported_op_exits_2_and_writes_nothing(tmp_path, capsys):
    src = tmp_path / "model.py"
    src.write_text(
        "import torch\n"
        "class M(torch.nn.Module):\n"
        "    def forward(self, x):\n"
        "        return torch.atan2(x, x + 1)\n"
        "def build():\n"
        "    return M(), (torch.randn(2, 8, 4),)\n"
    )
    out = tmp_path / "out"
    code, _, err = run(capsys, "compile", f"{src}:build", "-o", str(out))
    assert code == 2 and "atan2" in err and "model.py" in err
    assert not out.exists()
    assert sorted(os.listdir(tmp_path)) == ["model.py"]


def test_bad_flags_exit_2(tmp_path, capsys):
    code, _, err = run(capsys, "compile", EXAMPLE, "-o", str(tmp_path / "o"), "--opset", "17")
    assert code == 2 and "opset" in err
    code, _, err = run(capsys, "compile", EXAMPLE, "-o", str(tmp_path / "o"), "--passes", "nope")
    assert code == 2 and "nope" in err
    code, _, err = run(capsys, "compile", EXAMPLE, "--input", "garbage")
    assert code == 2


def test_static_compile_fixes_shapes(tmp_path, capsys):
    out = tmp_path / "static"
    code, stdout, _ = run(capsys, "compile", EXAMPLE, "-o", str(out), "--static", "-O0")
    assert code == 0 and "validation OK" in stdout
    import onnx

    model = onnx.load(str(out / "model.onnx"))
    dims = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [2, 16]
