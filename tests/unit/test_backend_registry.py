"""The backend registry: targets and their options come from one place, and only the ONNX backend imports onnx."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest
import torch

import t2c
from t2c.backends import DEFAULT_TARGET, Backend, all_backends, get_backend, option, register_backend
from t2c.backends import registry
from t2c.errors import UserError

PACKAGE = Path(t2c.__file__).parent


def test_only_the_onnx_backend_imports_onnx():
    """compiler, api, cli and the rest reach ONNX through the registry only."""
    importers = sorted(
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if re.search(r"^\s*(import|from) onnx", p.read_text(), re.M)
    )
    assert importers and all(p.startswith("backends/onnx/") for p in importers), importers


def test_registered_targets_and_their_options():
    assert DEFAULT_TARGET in all_backends() and list(all_backends()) == ["onnx", "triton"]
    onnx = get_backend("onnx")
    assert onnx.make_options({"flavor": "ort"}).flavor == "ort"
    assert onnx.make_options({"flavor": None}).flavor == "standard"  # unset flags keep the default
    with pytest.raises(UserError, match="has no option quantize; its options: flavor, opset"):
        onnx.make_options({"quantize": True})
    with pytest.raises(UserError, match="must be one of standard, ort"):
        onnx.make_options({"flavor": "trt"})
    with pytest.raises(UserError, match="opset 17 is too old"):
        onnx.make_options({"opset": 17})
    with pytest.raises(UserError, match="unknown target 'tensorrt'; choose one of onnx, triton"):
        get_backend("tensorrt")


def test_a_new_backend_is_one_registration(tmp_path, monkeypatch):
    """A backend registered at run time compiles, validates and loads through the same driver."""
    from t2c.ir import run_graph

    @dataclasses.dataclass(frozen=True)
    class EchoOptions:
        scale: float = option(1.0, "multiply every float output by this (1.0: the IR's own outputs)")

    class InterpreterBackend(Backend):
        """The IR interpreter as a 'target': its artifact is the IR (model.t2c, written by the driver) and its weights."""

        name, artifact, Options = "interp", "weights.pt", EchoOptions

        def lower(self, graph, options):
            return graph.params

        def save(self, artifact, folder, options):
            torch.save(artifact, Path(folder) / self.artifact)

        def load(self, folder, options):
            graph = t2c.ir.parse_graph((Path(folder) / "model.t2c").read_text())
            graph.params = torch.load(Path(folder) / self.artifact, weights_only=True)
            return lambda **inputs: {k: v * options.scale for k, v in run_graph(graph, inputs).items()}

    monkeypatch.setattr(registry, "_BACKENDS", dict(registry._BACKENDS))
    register_backend(InterpreterBackend)
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.GELU())
    x = torch.randn(2, 5, 4)
    compiled = t2c.compile(model, (x,), target="interp", out=str(tmp_path / "ok"))
    assert compiled.report["target"] == "interp" and compiled.report["target_options"] == {"scale": 1.0} and compiled.ok
    torch.testing.assert_close(compiled(input=x)["output"], model(x))
    again = t2c.load(str(tmp_path / "ok"))
    torch.testing.assert_close(again(input=x)["output"], model(x))
    # a wrong artifact is caught by validation, whatever the backend
    with pytest.raises(t2c.errors.ValidationError):
        t2c.compile(model, (x,), target="interp", scale=2.0, out=str(tmp_path / "bad"))
    with pytest.raises(UserError, match="has no option flavor"):
        t2c.compile(model, (x,), target="interp", flavor="ort", out=str(tmp_path / "bad"))
