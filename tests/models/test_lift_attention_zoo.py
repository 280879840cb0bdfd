"""lift-attention on real model code: every attention in the zoo becomes one `attention` op.

Also the eager spellings (Hugging Face `attn_implementation="eager"`: matmul,
scale, mask, softmax, matmul, with repeat_kv), Gemma-2's soft-capped logits and
its alternating sliding/global layers. Lifting is exact: the interpreter still
matches eager at two shapes.
"""

import functools

import pytest

import zoo
from eager_check import assert_matches_eager
from t2c.frontends.torch_export import trace
from t2c.passes import Pipeline


@functools.lru_cache(maxsize=None)
def lifted(family):
    model, examples = zoo.build(family)
    graph = trace(model, examples)
    graph, records = Pipeline.parse("fold-shapes,cse,lift-attention,dce").run(graph, verify_each=True)
    return model, graph, records[2].stats


def layers(model):
    return model.config.num_hidden_layers if hasattr(model, "config") else len(model.layers)


FAMILIES = ["gpt2", "llama", "mistral", "bert", "mixtral", "minilm", "example", "llama-eager", "gpt2-eager", "bert-eager", "gemma2-eager"]


@pytest.mark.parametrize("family", FAMILIES)
def test_one_attention_per_layer(family):
    model, graph, stats = lifted(family)
    counts = graph.op_counts()
    assert counts.get("attention") == layers(model), counts
    assert "sdpa" not in counts
    assert stats["lifted"] == layers(model)
    # The only softmax left is a MoE router's (one per MoE layer).
    routers = {"example": 1, "mixtral": layers(model)}.get(family, 0)
    assert counts.get("softmax", 0) == routers


@pytest.mark.parametrize("family", FAMILIES)
def test_lifting_is_exact(family):
    model, graph, _ = lifted(family)
    assert_matches_eager(model, graph, family)


def attrs(family):
    return [n.attrs for n in lifted(family)[1].nodes if n.op == "attention"]


def test_masks_become_attrs():
    for family in ("gpt2", "llama", "mixtral", "gpt2-eager", "llama-eager", "example"):
        assert all(a.causal and a.window == (-1, -1) for a in attrs(family)), family
    for family in ("bert", "minilm", "bert-eager"):
        assert all(not a.causal and a.window == (-1, -1) for a in attrs(family)), family
    # Mistral's trained window of 8: query i sees keys i-7..i.
    assert all(a.causal and a.window == (7, -1) for a in attrs("mistral"))


def test_grouped_query_heads_are_not_repeated():
    for family in ("llama", "mistral", "mixtral", "llama-eager", "example"):
        graph = lifted(family)[1]
        for n in graph.nodes:
            if n.op == "attention":
                assert n.attrs.kv_heads == n.inputs[1].type.shape[1] < n.inputs[0].type.shape[1], family


def test_gemma2_alternates_local_and_global_layers_with_softcap():
    a = attrs("gemma2-eager")
    assert [x.window for x in a] == [(7, -1), (-1, -1), (7, -1), (-1, -1)]
    assert all(x.softcap == 50.0 and x.causal for x in a)
    assert all(abs(x.scale - 256 ** -0.5) < 1e-12 for x in a)  # query_pre_attn_scalar


def test_stats_count_mask_kinds():
    assert lifted("mistral")[2]["mask_sliding"] == 2
    assert lifted("llama")[2]["mask_causal"] == 2
