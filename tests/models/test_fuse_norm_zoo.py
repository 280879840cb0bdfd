"""fuse-norm on real model code, through -O1: every norm in the zoo is one norm op.

Llama/Mistral/Mixtral write RMSNorm by hand (pow, mean, rsqrt, mul): after -O1 no
rsqrt, mean or pow is left. GPT-2, BERT and MiniLM use nn.LayerNorm, traced whole. In
every family each norm fed by a residual add becomes `add_norm`, whose second result
carries the residual stream on. Fusion is exact: the interpreter still matches eager
at two shapes.
"""

import functools

import pytest
import torch

import zoo
from eager_check import assert_matches_eager
from t2c.frontends.torch_export import trace
from t2c.ir import run_graph
from t2c.passes import Pipeline

NORM_OPS = ("rms_norm", "layer_norm", "add_norm")


@functools.lru_cache(maxsize=None)
def optimised(family):
    model, examples = zoo.build(family)
    graph, records = Pipeline.preset("O1").run(trace(model, examples), verify_each=True)
    stats = next(r.stats for r in records if r.name == "fuse-norm")
    return model, graph, stats


# family: (rms_norm, layer_norm, add_norm) after -O1, with 2 layers (MiniLM: 6).
# Pre-norm (Llama family, GPT-2): 2 norms a layer + the final norm; only the first norm,
# on the embeddings, has no residual add before it. GPT-2's first norm reads
# token + position embeddings, an add that broadcasts over the batch: no residual.
# Post-norm (BERT, MiniLM): 2 residual norms a layer + the embeddings' LayerNorm.
EXPECTED = {
    "llama": (1, 0, 4),
    "mistral": (1, 0, 4),
    "mixtral": (1, 0, 4),
    "gpt2": (0, 1, 4),
    "bert": (0, 1, 4),
    "minilm": (0, 1, 12),
}


@pytest.mark.parametrize("family", list(EXPECTED))
def test_every_norm_is_one_op(family):
    model, graph, stats = optimised(family)
    counts = graph.op_counts()
    assert tuple(counts.get(op, 0) for op in NORM_OPS) == EXPECTED[family], counts
    for op in ("rsqrt", "mean", "pow", "var"):
        assert op not in counts, f"{family}: {op} left after fuse-norm"
    assert stats["add_norm_fused"] == EXPECTED[family][2]
    if family in ("llama", "mistral", "mixtral"):
        assert stats["rms_norm_fused"] == 5 and stats["weights_absorbed"] == 5
        assert all(n.attrs.kind == "rms" and len(n.inputs) == 3 for n in graph.nodes if n.op == "add_norm")
    else:
        assert stats["rms_norm_fused"] == stats["layer_norm_fused"] == 0
        assert all(n.attrs.kind == "layer" and len(n.inputs) == 4 for n in graph.nodes if n.op == "add_norm")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_residual_stream_continues_from_the_sum(family):
    # Pre-norm: every add_norm's sum but the last feeds the next residual add or add_norm.
    _, graph, _ = optimised(family)
    fused = [n for n in graph.nodes if n.op == "add_norm"]
    for n in fused[:-1]:
        assert n.outputs[1].uses, f"{family}: an add_norm's sum is unused"
    assert not fused[-1].outputs[1].uses  # the final norm: the stream ends there


@pytest.mark.parametrize("family", list(EXPECTED))
def test_fusion_is_exact(family):
    model, graph, _ = optimised(family)
    assert_matches_eager(model, graph, family)


def test_residual_option_off_keeps_the_adds():
    model, examples = zoo.llama()
    graph, records = Pipeline.parse("fold-shapes,cse,fuse-norm{residual=false},dce").run(trace(model, examples), verify_each=True)
    counts = graph.op_counts()
    assert counts.get("rms_norm") == 5 and "add_norm" not in counts
    assert records[2].stats["add_norm_fused"] == 0


def test_gemma_one_plus_weight_is_folded():
    """Gemma scales by (1 + weight): folded into a new param, then fused like Llama's RMSNorm."""
    import transformers

    torch.manual_seed(0)
    cfg = transformers.GemmaConfig(num_hidden_layers=2, hidden_size=64, num_attention_heads=4, num_key_value_heads=2, head_dim=16, intermediate_size=128, vocab_size=zoo.VOCAB)
    model = transformers.GemmaForCausalLM(cfg).eval()
    model.config.use_cache = False
    with torch.no_grad():  # trained-looking norm weights (they start at zero)
        for name, p in model.named_parameters():
            if "norm" in name:
                p.normal_(0, 0.3)
    ids = torch.randint(0, zoo.VOCAB, (2, 16), generator=torch.Generator().manual_seed(1))
    graph, records = Pipeline.preset("O1").run(trace(model, {"input_ids": ids}), verify_each=True)
    stats = next(r.stats for r in records if r.name == "fuse-norm")
    assert stats["weights_folded"] == 5 and stats["add_norm_fused"] == 4
    counts = graph.op_counts()
    assert counts.get("rms_norm") == 1 and counts.get("add_norm") == 4 and "rsqrt" not in counts
    for shape in [(2, 16), (3, 37)]:
        x = torch.randint(0, zoo.VOCAB, shape, generator=torch.Generator().manual_seed(5))
        with torch.no_grad():
            want = model(input_ids=x).logits
        assert (run_graph(graph, {"input_ids": x})["logits"] - want).abs().max().item() <= 1e-5
