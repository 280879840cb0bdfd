"""The per-layer "fully fused" check, on real models before and after -O1."""

import json

import zoo
from t2c.cli import main
from t2c.frontends.torch_export import trace
from t2c.fusion_report import fusion_lines, fusion_report
from t2c.passes import Pipeline


def test_llama_is_fully_fused_after_O1_and_not_before():
    model, examples = zoo.llama()
    graph = trace(model, examples)
    before = fusion_report(graph)
    assert not before["fully_fused"]
    layer0 = before["layers"]["model.layers.0"]
    assert set(layer0["unfused"]) >= {"norm", "rope", "softmax"} or set(layer0["unfused"]) >= {"norm", "rope", "attention"}
    graph, _ = Pipeline.preset("O1").run(graph, verify_each=True)
    after = fusion_report(graph)
    assert after["fully_fused"], fusion_lines(after)
    assert set(after["layers"]) == {"model.layers.0", "model.layers.1"}
    assert all(e["fused"].get("attention") == 1 for e in after["layers"].values())


def test_inspect_shows_the_check(capsys):
    assert main(["inspect", "examples/zoo.py:bert", "--format", "json", "--after", "-O0"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["fusion"]["fully_fused"] is False
    assert main(["inspect", "examples/zoo.py:bert", "--after", "-O1"]) == 0
    out = capsys.readouterr().out
    assert "# encoder.layer.0: fully fused" in out


def test_moe_routers_are_not_leftovers():
    """Mixtral after -O1: attention, norms and experts fused; the router's softmax stays by design."""
    model, examples = zoo.mixtral()
    graph, _ = Pipeline.preset("O1").run(trace(model, examples), verify_each=True)
    report = fusion_report(graph)
    assert report["fully_fused"], fusion_lines(report)
    assert all(e["fused"].get("experts") == 1 for e in report["layers"].values())
    assert graph.op_counts()["softmax"] == 2  # still there, as the routers
