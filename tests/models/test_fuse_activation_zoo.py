"""fuse-activation on the zoo after -O1: GPT-2's NewGELU, Llama/Mistral SwiGLU, BERT's bias + GELU.

GPT-2 writes its tanh-GELU out (`0.5 * x * (1 + tanh(...))`) after an addmm;
-O1 must turn each into one `bias_act {gelu_tanh}`. Llama and Mistral MLPs
become one `gated_act {silu}` per layer. The pass is exact: the interpreter
still matches eager at two shapes.
"""

import functools

import pytest
import torch

import zoo
from t2c.frontends.torch_export import trace
from t2c.ir import run_graph
from t2c.passes import Pipeline


@functools.lru_cache(maxsize=None)
def optimized(family):
    model, examples = zoo.ZOO[family]()
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
    for shape in [(2, 16), (3, 37)]:
        ids = torch.randint(0, model.config.vocab_size, shape, generator=torch.Generator().manual_seed(5))
        got = run_graph(graph, {"input_ids": ids})
        with torch.no_grad():
            want = model(input_ids=ids)
        for name, value in got.items():
            err = (value - want[name]).abs().max().item()
            assert err <= 1e-5, f"{family} {name} {shape}: {err}"
