"""quantize-int8's options, its SmoothQuant arithmetic, and calibration files (t2c/passes/calibration.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from t2c.errors import UserError
from t2c.ir import DType, Graph, TensorType, run_graph, verify
from t2c.ir.opdefs import quant as Q
from t2c.ir.opdefs.nn import NormAttrs
from t2c.passes import Pipeline
from t2c.passes.calibration import Calibration, calibrating, generated_inputs, load_calibration
from t2c.passes.quantize_int8 import QuantizeInt8


@pytest.mark.parametrize("text,match", [
    ("quantize-int8{mode=int4}", "mode .* weight_only, w8a8"),
    ("quantize-int8{granularity=per_tensor}", "granularity"),
    ("quantize-int8{mode=w8a8,granularity=per_group}", "per_group is for mode=weight_only"),
    ("quantize-int8{granularity=per_group,group=24}", "power of two >= 16"),
    ("quantize-int8{smooth=1.5}", r"\[0, 1\]"),
])
def test_bad_options(text, match):
    with pytest.raises(UserError, match=match):
        Pipeline.parse(text)


def test_options_round_trip_and_order():
    p = Pipeline.parse('quantize-int8{mode=w8a8,smooth=0.8,skip="lm_head,*.pooler.*"}')
    assert p.passes[0] == QuantizeInt8(mode="w8a8", smooth=0.8, skip="lm_head,*.pooler.*")
    assert Pipeline.parse(str(p)) == p
    with pytest.raises(UserError, match="quantize-int8 must run after fuse-norm"):
        Pipeline.parse("quantize-int8,fuse-norm")


def _mlp(norm: bool = True) -> tuple[Graph, dict]:
    gen = torch.Generator().manual_seed(0)
    g = Graph()
    x = g.add_input("x", TensorType(DType.F32, ("tokens", 32)))
    if norm:
        affine = [g.add_param("ln_w", torch.rand(32, generator=gen) + 0.5), g.add_param("ln_b", torch.randn(32, generator=gen))]
        h = g.add_node("layer_norm", [x, *affine], NormAttrs((32,), 1e-5)).output
    else:
        h = x
    w1, w2 = torch.randn(48, 32, generator=gen) * 0.2, torch.randn(16, 32, generator=gen) * 0.2
    y1 = g.add_node("linear", [h, g.add_param("w1", w1)]).output
    y2 = g.add_node("linear", [h, g.add_param("w2", w2)]).output
    g.set_output("y1", y1)
    g.set_output("y2", y2)
    return g, {"w1": w1, "w2": w2}


def test_smoothquant_scales_from_calibration():
    """s_j = max|X_j|^a / max|W_j|^(1-a) over the linears reading X; X / s folded into the norm, W * s quantized."""
    g, w = _mlp()
    x = torch.randn(20, 32)
    x[:, 3] *= 30  # an outlier channel after the norm's input
    ref_graph, _ = _mlp()
    want = run_graph(ref_graph, {"x": x})
    # the activations the linears read, measured on the calibration batch
    ln_w, ln_b = g.params["ln_w"], g.params["ln_b"]
    h = F.layer_norm(x, (32,), ln_w, ln_b, 1e-5)
    with calibrating(Calibration([{"x": x}], source="test")) as cal:
        g, (record,) = Pipeline.parse("quantize-int8{mode=w8a8,smooth=0.5}").run(g, verify_each=True)
    assert not cal.notes and record.stats["smoothed_inputs"] == 1 and record.stats["smooth_folded_into_norm"] == 1
    wmax = torch.stack([w["w1"].abs().amax(0), w["w2"].abs().amax(0)]).amax(0)
    s = h.abs().amax(0).sqrt() / wmax.sqrt()
    norm = next(n for n in g.nodes if n.op == "layer_norm")
    torch.testing.assert_close(g.params[norm.inputs[1].name], ln_w / s)
    torch.testing.assert_close(g.params[norm.inputs[2].name], ln_b / s)
    q1 = next(n for n in g.nodes if n.op == "qlinear")
    wq, sc = Q.quantize_weight(w["w1"] * s)
    assert torch.equal(g.params[q1.inputs[1].name], wq) and torch.equal(g.params[q1.inputs[2].name], sc)
    got = run_graph(g, {"x": x})
    for k in want:
        assert F.cosine_similarity(got[k].flatten(), want[k].flatten(), dim=0) > 0.999


def test_without_calibration_the_pass_generates_inputs_and_says_so():
    g, _ = _mlp(norm=False)
    with calibrating(Calibration()) as cal:
        g, (record,) = Pipeline.parse("quantize-int8{mode=w8a8}").run(g)
    assert record.stats["calibration_batches"] == 1 and record.stats["smooth_folded_into_norm"] == 0
    assert cal.notes and "--calibrate" in cal.notes[0]
    assert [n.op for n in g.nodes] == ["mul", "qlinear", "qlinear"]  # one X / s for both linears
    verify(g)


def test_calibration_files(tmp_path):
    g = Graph()
    g.add_input("input_ids", TensorType(DType.I64, ("batch", "seq")))
    text = tmp_path / "ids.txt"
    text.write_text("# token ids\n101 7592 102\n\n101, 2088, 2003, 102\n")
    batches = load_calibration(str(text), g)
    assert [b["input_ids"].tolist() for b in batches] == [[[101, 7592, 102]], [[101, 2088, 2003, 102]]]
    pt = tmp_path / "ids.pt"
    torch.save([torch.tensor([[1, 2, 3], [4, 5, 6]]), torch.tensor([7, 8])], pt)
    assert [tuple(b["input_ids"].shape) for b in load_calibration(str(pt), g)] == [(2, 3), (1, 2)]
    torch.save({"input_ids": torch.tensor([[1, 2]])}, pt)
    assert load_calibration(str(pt), g)[0]["input_ids"].tolist() == [[1, 2]]
    bad = tmp_path / "bad.txt"
    bad.write_text("one two\n")
    for path, match in [(bad, "integer token ids"), (tmp_path / "missing.pt", "does not exist")]:
        with pytest.raises(UserError, match=match):
            load_calibration(str(path), g)
    torch.save({"attention_mask": torch.ones(1, 2)}, pt)
    with pytest.raises(UserError, match="lacks input 'input_ids'"):
        load_calibration(str(pt), g)
    two = Graph()
    two.add_input("a", TensorType(DType.I64, ("batch", "seq")))
    two.add_input("b", TensorType(DType.I64, ("batch", "seq")))
    with pytest.raises(UserError, match="save dicts"):
        load_calibration(str(text), two)


def test_generated_inputs_stay_inside_the_tables():
    g = Graph()
    ids = g.add_input("ids", TensorType(DType.I64, ("batch", "seq")))
    g.set_output("e", g.add_node("embedding", [g.add_param("t", torch.randn(7, 4)), ids]).output)
    batch = generated_inputs(g)
    assert batch["ids"].shape == (8, 8) and int(batch["ids"].max()) < 7
