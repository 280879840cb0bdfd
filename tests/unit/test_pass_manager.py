"""The pass manager: registry, pipeline strings, ordering constraints, presets, verify_each, records."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from t2c.errors import UserError, VerifyError
from t2c.ir import DType, Graph, TensorType, print_graph, run_graph
from t2c.ir.core import SymDim, Value
from t2c.ir.opdefs.creation import ArangeAttrs, FullAttrs
from t2c.ir.opdefs.shape import AxisAttrs, PermuteAttrs, ShapeAttrs
from t2c.passes import PRESETS, Pass, PassResult, Pipeline, all_passes, describe_passes, register_pass
from t2c.passes import manager


@pytest.fixture
def scratch_passes():
    """Register test-only passes and take them out of the global registry afterwards."""
    names: list[str] = []

    def register(name: str):
        names.append(name)
        return register_pass(name)

    yield register
    for n in names:
        manager._PASSES.pop(n, None)


@register_pass("test-options")
@dataclass(frozen=True)
class _OptionsPass(Pass):
    """Does nothing; exists to exercise option parsing."""

    exact = False
    size: int = 512
    ratio: float = 0.5
    causal: bool = True
    kind: str = "sliding"

    def run(self, graph: Graph) -> PassResult:
        return PassResult(graph, False, {})


# -- pipeline strings ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "dce",
        "fold-shapes,cse,dce",
        "fold-shapes{max_elements=16},cse",
        "test-options{size=64,ratio=0.25,causal=false,kind=block}",
        'test-options{kind="a b,c"}',
        "",
    ],
)
def test_parse_print_round_trip(text):
    p = Pipeline.parse(text)
    assert str(p) == text
    assert Pipeline.parse(str(p)) == p


def test_parse_is_lenient_about_spacing_and_prints_canonically():
    p = Pipeline.parse(" test-options{ kind=block , size=64 } , dce ")
    assert str(p) == "test-options{size=64,kind=block},dce"
    assert p.passes[0] == _OptionsPass(size=64, kind="block")


def test_default_options_are_not_printed():
    assert str(Pipeline.parse("test-options{size=512,causal=true}")) == "test-options"


def test_unknown_pass_lists_valid_names():
    with pytest.raises(UserError) as e:
        Pipeline.parse("cse,no-such-pass")
    msg = str(e.value)
    assert "no-such-pass" in msg
    for name in ("cse", "dce", "fold-shapes"):
        assert name in msg


def test_unknown_option_lists_valid_options():
    with pytest.raises(UserError) as e:
        Pipeline.parse("test-options{window=3}")
    msg = str(e.value)
    assert "window" in msg and "size" in msg and "kind" in msg


def test_option_on_pass_without_options():
    with pytest.raises(UserError, match="valid options: none"):
        Pipeline.parse("dce{x=1}")


@pytest.mark.parametrize(
    "text",
    [
        "test-options{size=1.5}",
        "test-options{size=true}",
        "test-options{ratio=abc}",
        "test-options{causal=1}",
        "test-options{kind=}",
        "test-options{size}",
    ],
)
def test_bad_option_values(text):
    with pytest.raises(UserError, match="test-options"):
        Pipeline.parse(text)


@pytest.mark.parametrize("text", ["test-options{size=1", "dce}", "test-options{size=1,size=2}", "dce{{}}", "d ce"])
def test_malformed_pipelines(text):
    with pytest.raises(UserError):
        Pipeline.parse(text)


def test_int_option_accepted_for_float():
    assert Pipeline.parse("test-options{ratio=1}").passes[0].ratio == 1.0


# -- registry --------------------------------------------------------------------------


def test_registry_and_describe():
    passes = all_passes()
    for name in ("cse", "dce", "fold-shapes"):
        assert passes[name].name == name
        assert passes[name].exact
    text = describe_passes()
    assert "fold-shapes  (exact)" in text
    assert "max_elements: int = 4096" in text
    assert "test-options  (approximate)" in text
    assert "kind: str = sliding" in text


def test_register_rejects_non_dataclass_and_bad_option_types(scratch_passes):
    with pytest.raises(TypeError, match="frozen dataclass"):

        @scratch_passes("test-not-dataclass")
        class NotDataclass(Pass):
            pass

    with pytest.raises(TypeError, match="int, float, bool or str"):

        @scratch_passes("test-bad-option")
        @dataclass(frozen=True)
        class BadOption(Pass):
            sizes: list = None  # type: ignore[assignment]


# -- ordering constraints --------------------------------------------------------------


def test_ordering_constraint(scratch_passes):
    @scratch_passes("test-after-cse")
    @dataclass(frozen=True)
    class AfterCSE(Pass):
        """Must come after cse when both run."""

        after = ("cse",)

        def run(self, graph: Graph) -> PassResult:
            return PassResult(graph, False, {})

    Pipeline.parse("cse,test-after-cse")  # fine
    Pipeline.parse("test-after-cse")  # cse absent: fine
    with pytest.raises(UserError, match="test-after-cse must run after cse"):
        Pipeline.parse("test-after-cse,cse")
    # never reordered silently, also when built directly
    with pytest.raises(UserError):
        Pipeline((AfterCSE(), all_passes()["cse"]()))


# -- presets ---------------------------------------------------------------------------


def test_presets():
    assert str(Pipeline.preset("O0")) == "fold-shapes,cse,dce"
    assert str(Pipeline.preset("-O1")) == "fold-shapes,cse,lift-moe,lift-attention,lift-linear-attention,fuse-rope,fuse-activation,fuse-norm,sparsify-moe,dce"
    assert Pipeline.preset("-O1") == Pipeline.preset(1) == Pipeline.from_spec("O1")
    for key in PRESETS:
        # approximate attention rewrites are never in a preset; -O2 adds W8A8 int8 to -O1
        names = [p.name for p in Pipeline.preset(key).passes if not p.exact]
        assert names == (["quantize-int8"] if key == "O2" else [])
    # -O2: -O1, then W8A8 (weights per channel, activations per token, SmoothQuant)
    assert PRESETS["O2"] == PRESETS["O1"] + ("quantize-int8{mode=w8a8}",)
    assert str(Pipeline.preset("O2")).endswith(",dce,quantize-int8{mode=w8a8}")
    assert Pipeline.preset("O2") == Pipeline.parse("-O2") == Pipeline.parse(str(Pipeline.preset("O2")))
    # weight-only stays one pipeline away
    assert str(Pipeline.parse("-O1,quantize-int8")).endswith(",dce,quantize-int8")
    # a preset exists only once it does what it says
    with pytest.raises(UserError, match="valid presets: -O0, -O1, -O2$"):
        Pipeline.preset("O3")
    with pytest.raises(UserError, match="-O0"):
        Pipeline.preset("O9")


def test_cli_offers_exactly_the_presets_and_targets_that_exist(capsys):
    from t2c.backends import all_backends
    from t2c.cli import main

    assert main(["compile", "--help"]) == 0
    help_text = capsys.readouterr().out
    for key in PRESETS:
        assert f"-{key}" in help_text
    assert "-O3" not in help_text and "tensorrt" not in help_text
    assert f"[{'|'.join(all_backends())}]" in help_text


# -- running ---------------------------------------------------------------------------


B, S = SymDim("batch"), SymDim("seq")


def _small_graph() -> Graph:
    """A graph with something for every cleanup pass: identities, chains, constants, duplicates, dead code."""
    g = Graph("small")
    x = g.add_input("x", TensorType(DType.F32, ("batch", "seq", 32)))
    w = g.add_param("w", torch.randn(32, 32))
    g.add_param("unused", torch.randn(3))
    h = g.add_node("linear", [x, w]).output
    h2 = g.add_node("linear", [x, w]).output  # duplicate of h
    s = g.add_node("add", [h, h2]).output
    r = g.add_node("reshape", [s], ShapeAttrs((B, S, 4, 8))).output
    r = g.add_node("reshape", [r], ShapeAttrs((B, S, 32))).output
    p = g.add_node("permute", [r], PermuteAttrs((0, 2, 1))).output
    p = g.add_node("permute", [p], PermuteAttrs((0, 2, 1))).output
    zero = g.add_node("full", [], FullAttrs((), 0.0, DType.F32)).output
    p = g.add_node("add", [p, zero]).output
    # a constant subgraph: a 1x32 position bias made from arange
    ar = g.add_node("arange", [], ArangeAttrs(0, 32, 1, DType.I64)).output
    arf = g.add_node("cast", [ar], _cast(DType.F32)).output
    bias = g.add_node("unsqueeze", [arf], AxisAttrs(0)).output
    out = g.add_node("add", [p, bias]).output
    g.add_node("exp", [out])  # dead
    g.set_output("y", out)
    return g


def _cast(dtype: DType):
    from t2c.ir.opdefs.pointwise import CastAttrs

    return CastAttrs(dtype)


def test_O0_keeps_outputs_identical_and_records_stats():
    g = _small_graph()
    xs = [torch.randn(2, 5, 32), torch.randn(3, 7, 32)]  # two sizes of the dynamic dims
    want = [run_graph(g, [x])["y"] for x in xs]
    nodes_before = len(g.nodes)
    seen = []
    result, records = Pipeline.preset("O0").run(g, verify_each=True, on_pass=seen.append)
    for x, y in zip(xs, want):
        assert torch.equal(run_graph(result, [x])["y"], y)
    assert seen == records
    assert [r.name for r in records] == ["fold-shapes", "cse", "dce"]
    fold, cse, dce = records
    assert fold.stats["chains_collapsed"] >= 2 and fold.stats["identities_removed"] >= 1
    assert fold.stats["constants_folded"] >= 2
    assert cse.stats == {"nodes_merged": 1}
    assert dce.stats["params_removed"] == 1 and dce.stats["nodes_removed"] == 1
    assert records[0].node_count_before == nodes_before
    assert records[-1].node_count_after == len(result.nodes) < nodes_before
    assert all(r.seconds >= 0 and r.changed for r in records)
    assert "const0" in result.param_values
    assert print_graph(result).count("linear(") == 1


def test_second_run_changes_nothing():
    g, _ = Pipeline.preset("O0").run(_small_graph())
    text = print_graph(g)
    g, records = Pipeline.preset("O0").run(g)
    assert print_graph(g) == text
    assert not any(r.changed for r in records)


def test_verify_each_names_the_breaking_pass(scratch_passes):
    @scratch_passes("test-corrupt")
    @dataclass(frozen=True)
    class Corrupt(Pass):
        """Breaks the graph on purpose: gives the first node's result a wrong dtype."""

        def run(self, graph: Graph) -> PassResult:
            out: Value = graph.nodes[0].outputs[0]
            out.type = out.type.with_dtype(DType.I8)
            return PassResult(graph, True, {})

    pipeline = Pipeline.parse("cse,test-corrupt,dce")
    with pytest.raises(VerifyError, match="after pass test-corrupt"):
        pipeline.run(_small_graph(), verify_each=True)
    # without verify_each the pipeline does not look
    pipeline.run(_small_graph())


def test_verify_each_checks_the_input():
    g = _small_graph()
    g.nodes[0].outputs[0].type = TensorType(DType.F16, ("batch", "seq", 32))
    with pytest.raises(VerifyError, match="input graph"):
        Pipeline.preset("O0").run(g, verify_each=True)
