"""fuse-rope on real model code: every rotary embedding folds into its `attention` op.

Llama, Mistral, Mixtral and the example model (rotate-half over the whole head),
Phi with partial_rotary_factor=0.5 (rotate-half over half the head, the rest
passed through) and GPT-J with rotary_dim (interleaved pairs, applied before the
head transpose). After cleanup, `lift-attention,fuse-rope,dce` (and after -O1) each
attention carries the rotation, no rope/neg/cat of it is left, and the
interpreter matches eager at two shapes.
"""

import functools

import pytest

import zoo
from eager_check import assert_matches_eager
from t2c.frontends.torch_export import trace
from t2c.passes import Pipeline


@functools.lru_cache(maxsize=None)
def model_and_graph(family):
    model, examples = zoo.build(family)
    return model, trace(model, examples)


@functools.lru_cache(maxsize=None)
def fused(family, pipeline):
    model, graph = model_and_graph(family)
    graph, records = Pipeline.from_spec(pipeline).run(graph.copy(), verify_each=True)
    stats = next(r.stats for r in records if r.name == "fuse-rope")
    return model, graph, stats


FAMILIES = {"llama": ("half", 16), "mistral": ("half", 16), "mixtral": ("half", 16), "example": ("half", None),
            "phi-partial": ("half", 8), "gptj-interleaved": ("interleaved", 8)}
PIPELINES = ["fold-shapes,cse,lift-attention,fuse-rope,dce", "-O1"]  # cleanup first: lift-attention needs it to undo repeat_kv


def layers(model):
    return model.config.num_hidden_layers if hasattr(model, "config") else len(model.layers)


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_rope_folds_into_every_attention(family, pipeline):
    model, graph, stats = fused(family, pipeline)
    kind, rd = FAMILIES[family]
    atts = [n for n in graph.nodes if n.op == "attention"]
    assert len(atts) == layers(model)
    for n in atts:
        assert n.attrs.rope == kind, n.attrs
        assert rd is None or n.attrs.rotary_dim == rd
        assert len(n.inputs) == 5
    counts = graph.op_counts()
    assert "rope" not in counts and "neg" not in counts, counts
    # cats left build cos/sin (cat(freqs, freqs)) or are the model's own (the example's MoE); none rotates or re-joins a head
    for n in graph.nodes:
        if n.op == "cat":
            made_by = {v.producer.op for v in n.inputs if v.producer is not None}
            assert not made_by & {"neg", "slice", "split", "unsqueeze", "rope"}, f"a cat left from a rotation: {made_by}"
    assert stats["rope_folded"] == layers(model)
    assert stats["rope_lifted"] == 2 * layers(model)


@pytest.mark.parametrize("pipeline", PIPELINES)
@pytest.mark.parametrize("family", list(FAMILIES))
def test_fusion_is_exact(family, pipeline):
    model, graph, _ = fused(family, pipeline)
    assert_matches_eager(model, graph, family)
