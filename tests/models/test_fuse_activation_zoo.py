"""fuse-activation on the zoo after -O1: GPT-2's NewGELU, Llama/Mistral SwiGLU, BERT's bias + GELU.

GPT-2 writes its tanh-GELU out (`0.5 * x * (1 + tanh(...))`) after an addmm;
-O1 must turn each into one `bias_act {gelu_tanh}`. Llama and Mistral MLPs
become one `gated_act {silu}` per layer. The pass is exact: the interpreter
still matches eager at two shapes.
"""

import functools

import pytest

import zoo
from eager_check import assert_matches_eager
from t2c.frontends.torch_export import trace
from t2c.passes import Pipeline


@functools.lru_cache(maxsize=None)
def optimized(family):
    model, examples = zoo.build(family)
    graph, records = Pipeline.preset("O1").run(trace(model, examples), verify_each=True)
    stats = next(r.stats for r in records if r.name == "fuse-activation")
    return model, graph, stats


def acts(graph, op):
    return [n.attrs.activation for n in graph.nodes if n.op == op]


def test_gpt2_new_gelu_becomes_bias_gelu_tanh():
    model, graph, stats = optimized("gpt2")
    layers = model.config.n_layer
    assert acts(graph, "bias_act") == ["gelu_tanh"] * layers
    assert stats["gelu_tanh"] == layers and stats["bias_act"] == layers
    counts = graph.op_counts()
    assert "tanh" not in counts and "pow" not in counts, counts


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_swiglu_becomes_gated_act(family):
    model, graph, stats = optimized(family)
    layers = model.config.num_hidden_layers
    assert acts(graph, "gated_act") == ["silu"] * layers
    assert stats["gated_act"] == layers
    assert "silu" not in graph.op_counts()


@pytest.mark.parametrize("family", ["bert", "minilm"])
def test_bert_linear_bias_gelu_becomes_bias_act(family):
    model, graph, _ = optimized(family)
    assert acts(graph, "bias_act") == ["gelu"] * model.config.num_hidden_layers
    assert "gelu" not in graph.op_counts()


@pytest.mark.parametrize("family", ["gpt2", "llama", "mistral", "bert", "mixtral"])
def test_fusion_is_exact(family):
    model, graph, _ = optimized(family)
    assert_matches_eager(model, graph, family)
