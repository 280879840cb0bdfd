"""The `window` and `linear-attention` passes: options, attrs they produce, stats, near-misses."""

from __future__ import annotations

import math
from dataclasses import dataclass

import pytest

from t2c.errors import UserError
from t2c.ir import DType, Graph, TensorType, print_graph, verify
from t2c.ir.opdefs.attention import AttentionAttrs, LinearAttentionAttrs
from t2c.passes import Pass, PassResult, Pipeline, all_passes, collect_near_misses, describe_passes, register_pass
from t2c.passes import manager
from t2c.passes.linear_attention import LinearAttention
from t2c.passes.window_attention import WindowAttention

SCALE = 1 / math.sqrt(8)


def attention_graph(*attrs: AttentionAttrs, mask: bool = False, hq: int = 4, hkv: int = 2, seq: int = 16) -> Graph:
    """q [1,hq,seq,8], k/v [1,hkv,seq,8]; one attention node per attrs, summed into one output."""
    g = Graph("attn")
    q = g.add_input("q", TensorType(DType.F32, (1, hq, seq, 8)))
    k = g.add_input("k", TensorType(DType.F32, (1, hkv, seq, 8)))
    v = g.add_input("v", TensorType(DType.F32, (1, hkv, seq, 8)))
    extra = [g.add_input("mask", TensorType(DType.BOOL, (1, 1, seq, seq)))] if mask else []
    outs = [g.add_node("attention", [q, k, v, *extra], a).output for a in attrs]
    total = outs[0]
    for o in outs[1:]:
        total = g.add_node("add", [total, o]).output
    g.set_output("out", total)
    verify(g)
    return g


def attn(**kw) -> AttentionAttrs:
    return AttentionAttrs(scale=SCALE, kv_heads=2, **kw)


def run(pipeline: str, g: Graph):
    out, records = Pipeline.parse(pipeline).run(g, verify_each=True)
    return out, records[-1]


def attrs_of(g: Graph, op: str) -> list:
    return [n.attrs for n in g.nodes if n.op == op]


# -- pipeline strings and options ----------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "window{size=512}",
        "window{size=512,kind=block,global=16}",
        "window{size=4,global=3}",
        "linear-attention",
        "linear-attention{causal=true}",
        "linear-attention{causal=false}",
        "window{size=8},linear-attention,dce",
    ],
)
def test_pipeline_round_trip(text):
    p = Pipeline.parse(text)
    assert str(p) == text
    assert Pipeline.parse(str(p)) == p


def test_options_parse_to_fields():
    w = Pipeline.parse("window{size=512,kind=block,global=16}").passes[0]
    assert w == WindowAttention(size=512, kind="block", global_tokens=16)
    assert Pipeline.parse("window{size=512,kind=sliding,global=0}").passes[0] == WindowAttention(size=512)
    assert str(Pipeline.parse("window{size=512,kind=sliding,global=0}")) == "window{size=512}"  # defaults left out
    la = Pipeline.parse("linear-attention{feature=elu1,causal=auto}").passes[0]
    assert la == LinearAttention() and str(la) == "linear-attention"


def test_global_is_the_pipeline_spelling():
    with pytest.raises(UserError, match="valid options: size, kind, global$"):
        Pipeline.parse("window{size=8,global_tokens=2}")
    with pytest.raises(UserError, match="given twice"):
        Pipeline.parse("window{size=8,global=2,global=3}")
    text = describe_passes()
    assert "      global: int = 0" in text
    assert "global_tokens: int" not in text


@pytest.mark.parametrize(
    "text, message",
    [
        ("window", "window needs size=W"),
        ("window{size=0}", "window needs size=W"),
        ("window{size=-4}", "window needs size=W"),
        ("window{size=8,kind=dilated}", "kind .* sliding, block"),
        ("window{size=8,global=-1}", "global .* >= 0"),
        ("window{size=eight}", "must be int"),
        ("window{size=8,width=3}", "no option 'width'"),
        ("linear-attention{feature=relu}", "feature .* elu1"),
        ("linear-attention{causal=yes}", "causal .* auto, true, false"),
        ("linear-attention{causal=1}", "causal .* auto, true, false"),
        ("linear-attention{size=3}", "no option 'size'"),
    ],
)
def test_bad_options(text, message):
    with pytest.raises(UserError, match=message) as info:
        Pipeline.parse(text)
    assert "\n" not in str(info.value)


def test_bad_options_also_when_built_directly():
    with pytest.raises(UserError, match="window needs size=W"):
        WindowAttention()
    with pytest.raises(UserError):
        LinearAttention(causal="maybe")


def test_both_are_approximate_and_run_after_lift_attention():
    passes = all_passes()
    for name in ("window", "linear-attention"):
        assert passes[name].exact is False
        assert passes[name].after == ("lift-attention",)
        assert f"{name}  (approximate)" in describe_passes()


def test_ordering_against_lift_attention():
    Pipeline.parse("lift-attention,window{size=8},linear-attention")
    with pytest.raises(UserError, match="window must run after lift-attention"):
        Pipeline.parse("window{size=8},lift-attention")
    with pytest.raises(UserError, match="linear-attention must run after lift-attention"):
        Pipeline.parse("linear-attention,lift-attention")


def test_option_aliases_are_general():
    """Any pass can spell an option as a Python keyword through `option_aliases`."""
    try:

        @register_pass("test-alias")
        @dataclass(frozen=True)
        class Aliased(Pass):
            lambda_: float = 0.0
            option_aliases = {"lambda": "lambda_"}

            def run(self, graph):
                return PassResult(graph, False, {})

        p = Pipeline.parse("test-alias{lambda=0.5}")
        assert p.passes[0].lambda_ == 0.5 and str(p) == "test-alias{lambda=0.5}"
        with pytest.raises(TypeError, match="names no option"):

            @register_pass("test-bad-alias")
            @dataclass(frozen=True)
            class BadAlias(Pass):
                option_aliases = {"lambda": "missing"}

    finally:
        manager._PASSES.pop("test-alias", None)
        manager._PASSES.pop("test-bad-alias", None)


# -- window: the attrs it produces -----------------------------------------------------


@pytest.mark.parametrize(
    "pipeline, before, after",
    [
        # causal -> causal sliding window: query i sees keys i-W+1..i
        ("window{size=4}", attn(causal=True), attn(causal=True, window=(3, -1))),
        # bidirectional -> band |i-j| < W
        ("window{size=4}", attn(), attn(window=(3, 3))),
        ("window{size=1}", attn(), attn(window=(0, 0))),
        # an existing window: the tighter bound per side, -1 meaning unlimited
        ("window{size=4}", attn(window=(2, -1)), attn(window=(2, 3))),
        ("window{size=4}", attn(window=(9, 1)), attn(window=(3, 1))),
        ("window{size=4}", attn(causal=True, window=(9, 0)), attn(causal=True, window=(3, 0))),
        # block-local, causality kept; an existing block/window stays too
        ("window{size=4,kind=block}", attn(causal=True), attn(causal=True, block=4)),
        ("window{size=4,kind=block}", attn(window=(5, 5)), attn(window=(5, 5), block=4)),
        ("window{size=8,kind=block}", attn(block=6), attn(block=8)),
        # global tokens in addition to the window
        ("window{size=4,global=3}", attn(causal=True), attn(causal=True, window=(3, -1), global_tokens=3)),
        ("window{size=4,kind=block,global=1}", attn(), attn(block=4, global_tokens=1)),
        # global=0 leaves a model's own global tokens alone
        ("window{size=4}", attn(global_tokens=2), attn(window=(3, 3), global_tokens=2)),
        # softcap and kv_heads pass through
        ("window{size=4}", attn(causal=True, softcap=30.0), attn(causal=True, window=(3, -1), softcap=30.0)),
    ],
)
def test_window_attrs(pipeline, before, after):
    g, record = run(pipeline, attention_graph(before))
    assert attrs_of(g, "attention") == [after]
    assert record.stats == {"windowed": 1, "already_windowed": 0, "attention_nodes": 1, "kv_cache": 0}
    assert record.changed


@pytest.mark.parametrize(
    "pipeline, attrs",
    [
        ("window{size=4}", attn(causal=True, window=(3, -1))),
        ("window{size=4}", attn(causal=True, window=(1, -1))),  # tighter already
        ("window{size=4}", attn(window=(3, 2))),
        ("window{size=4}", attn(window=(0, 0))),
        ("window{size=8,kind=block}", attn(block=8)),
        ("window{size=8,kind=block}", attn(causal=True, block=4)),  # 4 divides 8: already tighter
        ("window{size=4,global=2}", attn(causal=True, window=(3, -1), global_tokens=2)),
    ],
)
def test_window_already_there_leaves_the_node(pipeline, attrs):
    g = attention_graph(attrs)
    node = g.nodes[0]
    text = print_graph(g)
    g, record = run(pipeline, g)
    assert g.nodes[0] is node and print_graph(g) == text
    assert record.stats == {"windowed": 0, "already_windowed": 1, "attention_nodes": 1, "kv_cache": 0}
    assert not record.changed


def test_window_stats_over_several_nodes_and_masks():
    g = attention_graph(
        attn(causal=True),
        attn(causal=True, window=(3, -1)),
        attn(),
        attn(window=(1, 1)),
        mask=True,
    )
    g, record = run("window{size=4}", g)
    assert record.stats == {"windowed": 2, "already_windowed": 2, "attention_nodes": 4, "kv_cache": 0}
    assert [a.window for a in attrs_of(g, "attention")] == [(3, -1), (3, -1), (3, 3), (1, 1)]
    assert all(len(n.inputs) == 4 for n in g.nodes if n.op == "attention")  # the mask stays


def test_window_without_attention():
    g = Graph("plain")
    x = g.add_input("x", TensorType(DType.F32, (2, 8)))
    g.set_output("y", g.add_node("relu", [x]).output)
    g, record = run("window{size=4}", g)
    assert record.stats == {"windowed": 0, "already_windowed": 0, "attention_nodes": 0, "kv_cache": 0}
    assert not record.changed


# -- linear-attention -------------------------------------------------------------------


@pytest.mark.parametrize(
    "pipeline, causal_in, causal_out",
    [
        ("linear-attention", True, True),
        ("linear-attention", False, False),
        ("linear-attention{causal=auto}", True, True),
        ("linear-attention{causal=true}", False, True),
        ("linear-attention{causal=false}", True, False),
    ],
)
def test_linear_attention_causality(pipeline, causal_in, causal_out):
    g, record = run(pipeline, attention_graph(attn(causal=causal_in)))
    assert [n.op for n in g.nodes] == ["linear_attention"]
    assert g.nodes[0].attrs == LinearAttentionAttrs(feature="elu1", causal=causal_out, kv_heads=2)
    assert g.nodes[0].output.type == TensorType(DType.F32, (1, 4, 16, 8))
    assert record.stats == {"linearized": 1, "kv_cache": 0, "skipped": 0}
    assert record.changed


def test_linear_attention_prints():
    g, _ = run("linear-attention", attention_graph(attn(causal=True)))
    assert "%3 = linear_attention(%0, %1, %2) {feature=\"elu1\", causal=true, kv_heads=2} : f32[1,4,16,8]" in print_graph(g)


def test_linear_attention_skips_what_it_cannot_linearise():
    g = attention_graph(
        attn(causal=True),
        attn(causal=True, window=(3, -1)),
        attn(block=4),
        attn(causal=True, global_tokens=2),
        attn(causal=True, softcap=50.0),
        attn(),
    )
    with collect_near_misses() as misses:
        g, record = run("linear-attention", g)
    assert record.stats == {"linearized": 2, "kv_cache": 0, "skipped": 4}
    assert [n.op for n in g.nodes if "attention" in n.op] == ["linear_attention", "attention", "attention", "attention", "attention", "linear_attention"]
    assert len(misses) == 4
    assert all(m.startswith("linear-attention: ") for m in misses)
    assert sum("window, block or global-token" in m for m in misses) == 3
    assert sum("soft-capping" in m for m in misses) == 1


def test_linear_attention_skips_masked():
    g = attention_graph(attn(), mask=True)
    text = print_graph(g)
    with collect_near_misses() as misses:
        g, record = run("linear-attention", g)
    assert print_graph(g) == text
    assert record.stats == {"linearized": 0, "kv_cache": 0, "skipped": 1}
    assert not record.changed
    assert len(misses) == 1 and "mask operand" in misses[0]


def test_window_then_linear_attention_linearises_nothing():
    g, records = Pipeline.parse("window{size=4},linear-attention").run(attention_graph(attn(causal=True)), verify_each=True)
    assert records[0].stats["windowed"] == 1
    assert records[1].stats == {"linearized": 0, "kv_cache": 0, "skipped": 1}
