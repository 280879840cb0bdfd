"""The model zoo through the frontend: trace, verify, print/parse round trip, interpreter == eager.

Every family at its traced shape and at a second batch/sequence shape, fp32,
max abs difference <= 1e-5.
"""

import functools

import pytest

import zoo
from eager_check import assert_matches_eager
from t2c.frontends.torch_export import trace
from t2c.ir import parse_graph, print_graph, verify

FAMILIES = ["gpt2", "llama", "mistral", "bert", "mixtral", "minilm", "example"]
SHAPES = [(2, 16), (3, 37)]  # the traced shape, then another batch and sequence length


@functools.lru_cache(maxsize=None)
def traced(family):
    model, examples = zoo.build(family)
    return model, trace(model, examples)


@pytest.mark.parametrize("family", FAMILIES)
def test_traces_and_verifies(family):
    _, graph = traced(family)
    verify(graph)
    assert [v.name for v in graph.inputs] == ["input_ids"]
    assert {str(d) for d in graph.inputs[0].type.shape} == {"batch", "seq"}


@pytest.mark.parametrize("family", FAMILIES)
def test_text_round_trip(family):
    _, graph = traced(family)
    text = print_graph(graph)
    again = parse_graph(text)
    verify(again)
    assert print_graph(again) == text


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("shape", SHAPES)
def test_interpreter_matches_eager(family, shape):
    model, graph = traced(family)
    assert_matches_eager(model, graph, family, shapes=(shape,), seed=7)


def test_output_names_follow_model_fields():
    assert [n for n, _ in traced("bert")[1].outputs] == ["last_hidden_state", "pooler_output"]
    assert [n for n, _ in traced("llama")[1].outputs] == ["logits"]


def test_mixtral_experts_become_experts_ops():
    """The library's experts module is captured at its boundary; the router stays ordinary ops."""
    model, graph = traced("mixtral")
    counts = graph.op_counts()
    assert counts["experts"] == model.config.num_hidden_layers
    assert counts["topk"] == model.config.num_hidden_layers and counts["softmax"] == model.config.num_hidden_layers
    node = next(n for n in graph.nodes if n.op == "experts")
    assert node.attrs.activation == "silu" and node.attrs.gated and node.attrs.layout == "out_in"
    assert node.inputs[1].type.shape[1] == model.config.num_experts_per_tok
    assert node.inputs[1].producer.op == "topk"  # the router's ids feed it
    # The swap is undone after tracing: the user's model is unchanged.
    experts = model.model.layers[0].mlp.experts
    assert "forward" not in vars(experts)


def test_high_level_ops_stay_whole():
    _, graph = traced("bert")
    counts = graph.op_counts()
    assert counts["sdpa"] == 2 and counts["layer_norm"] == 5 and counts["gelu"] == 2 and counts["embedding"] == 3


def test_nodes_remember_their_module():
    _, graph = traced("llama")
    modules = {n.meta.get("module") for n in graph.nodes}
    assert "model.layers.0.self_attn.q_proj" in modules
