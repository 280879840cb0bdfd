"""The model zoo through the ONNX backend: trace, lower, run in onnxruntime, compare with the interpreter.

Every family at the traced shape (2x16) and at 3x37, fp32, max abs <= 1e-4 per output.
"""

import functools

import onnxruntime as ort
import pytest
import torch

import zoo
from t2c.backends.onnx import lower
from t2c.frontends.torch_export import trace
from t2c.ir import run_graph

FAMILIES = ["gpt2", "llama", "mistral", "bert", "mixtral", "minilm", "example"]
SHAPES = [(2, 16), (3, 37)]
OUTPUTS = {"bert": ["last_hidden_state", "pooler_output"], "minilm": ["last_hidden_state", "pooler_output"], "example": ["output"]}


@functools.lru_cache(maxsize=None)
def lowered(family):
    model, examples = zoo.build(family)
    graph = trace(model, examples)
    proto = lower(graph)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return graph, proto, session


@pytest.mark.parametrize("family", FAMILIES)
def test_names_and_dynamic_axes(family):
    graph, proto, session = lowered(family)
    assert [i.name for i in session.get_inputs()] == ["input_ids"]
    assert [o.name for o in session.get_outputs()] == OUTPUTS.get(family, ["logits"])
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    assert [d.dim_param for d in dims] == ["batch", "seq"]


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("family", FAMILIES)
def test_matches_interpreter(family, shape):
    graph, _, session = lowered(family)
    torch.manual_seed(0)
    ids = torch.randint(0, 60, shape)
    ref = run_graph(graph, {"input_ids": ids})
    got = dict(zip([o.name for o in session.get_outputs()], session.run(None, {"input_ids": ids.numpy()})))
    for name, want in ref.items():
        diff = (torch.from_numpy(got[name]) - want).abs().max().item()
        assert diff <= 1e-4, f"{family} {name} at {shape}: max abs {diff}"
