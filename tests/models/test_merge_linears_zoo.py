"""merge-linears on real model code, after -O1 and quantize-int8{mode=w8a8} (the -O2 order).

Q/K/V (and a SwiGLU's gate/up) become one qlinear and a split; the attention,
rope and gated_act ops the earlier passes made still read the split's parts. The
merged graph is bit-identical to the unmerged one in the IR interpreter and in
ONNX Runtime (both flavors): per-token activation scales and per-output-channel
weight scales are the same numbers, and the integer products are exact. In
float32 (`-O1,merge-linears`) the outputs agree to float tolerance.
"""

import functools

import pytest
import torch

import zoo
from eager_check import assert_matches_eager, vocab_size
from t2c.backends.onnx import lower
from t2c.frontends.torch_export import trace
from t2c.ir import run_graph
from t2c.passes import Pipeline

W8A8 = "-O1,quantize-int8{mode=w8a8}"
# family: merged groups per layer (llama: q/k/v and gate/up; bert: q/k/v; gpt2: c_attn is one Conv1D already)
FAMILIES = {"llama": 2, "bert": 1, "mixtral": 1, "gpt2": 0}


def layers(model) -> int:
    return model.config.num_hidden_layers if hasattr(model.config, "num_hidden_layers") else model.config.n_layer


@functools.lru_cache(maxsize=None)
def compiled(family, pipeline):
    model, examples = zoo.build(family)
    graph, records = Pipeline.from_spec(pipeline).run(trace(model, examples), verify_each=True)
    stats = next((r.stats for r in records if r.name == "merge-linears"), {})
    return model, graph, stats


def ids_for(model, shape=(2, 16)):
    return torch.randint(0, vocab_size(model), shape, generator=torch.Generator().manual_seed(3))


def ops(graph, op):
    return [n for n in graph.nodes if n.op == op]


@pytest.mark.parametrize("family", list(FAMILIES))
def test_w8a8_merged_is_bit_identical(family):
    model, plain, _ = compiled(family, W8A8)
    _, merged, stats = compiled(family, W8A8 + ",merge-linears")
    assert stats["merged_groups"] == FAMILIES[family] * layers(model)
    assert len(ops(merged, "split")) - len(ops(plain, "split")) == stats["merged_groups"]
    # The lifted and fused ops are all still there, each reading its part.
    for op in ("attention", "rms_norm", "layer_norm", "add_norm", "gated_act"):
        assert len(ops(merged, op)) == len(ops(plain, op)), op
    assert [n.attrs for n in ops(merged, "attention")] == [n.attrs for n in ops(plain, "attention")]
    for shape in ((2, 16), (3, 37)):
        ids = ids_for(model, shape)
        want, got = run_graph(plain, {"input_ids": ids}), run_graph(merged, {"input_ids": ids})
        for name in want:
            assert torch.equal(got[name], want[name]), f"{family} {name} {shape}: max diff {(got[name] - want[name]).abs().max():.3g}"


@pytest.mark.parametrize("flavor", ["standard", "ort"])
@pytest.mark.parametrize("family", ["llama", "bert"])
def test_w8a8_merged_is_bit_identical_in_onnx_runtime(family, flavor):
    import onnxruntime as ort

    model, plain, _ = compiled(family, W8A8)
    _, merged, _ = compiled(family, W8A8 + ",merge-linears")
    ids = ids_for(model, (2, 23)).numpy()
    outs = []
    for graph in (plain, merged):
        so = ort.SessionOptions()
        so.log_severity_level = 3
        sess = ort.InferenceSession(lower(graph, flavor=flavor).SerializeToString(), so, providers=["CPUExecutionProvider"])
        feeds = {i.name: ids for i in sess.get_inputs()}
        outs.append(sess.run(None, feeds))
    for a, b in zip(*outs):
        assert (a == b).all(), f"max diff {abs(a - b).max():.3g}"


@pytest.mark.parametrize("family", ["llama", "bert"])
def test_float_merge_matches_eager(family):
    model, graph, stats = compiled(family, "-O1,merge-linears")
    assert stats["merged_groups"] == FAMILIES[family] * layers(model)
    assert_matches_eager(model, graph, f"{family} -O1,merge-linears")


def test_order_is_checked():
    from t2c.errors import UserError

    with pytest.raises(UserError, match="merge-linears must run after quantize-int8"):
        Pipeline.parse("merge-linears,quantize-int8")
