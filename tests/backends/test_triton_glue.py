"""Generated glue kernels (t2c/kernels/glue.py, grouped by t2c/backends/triton/fusion.py) against the IR interpreter.

Small IR graphs built with the IR API run through the Triton backend (lower, save, load) under
TRITON_INTERPRET=1, with small blocks so that flat kernels launch several programs and row
kernels loop over their rows (sizes 37 and 3x37 are no multiple of the blocks). Tolerance:
FlashAttention's rule. The reference is the same graph in float64 (so that float32's own error is
measurable); the generated kernel's max error must be at most 2x eager PyTorch's on the same
graph in the kernel's dtype, plus 1e-6. Bool outputs must equal eager's.
"""

from __future__ import annotations

import pytest
import torch

from t2c.backends.triton import lower, save
from t2c.backends.triton.fusion import plan_fusion
from t2c.backends.triton.runtime import load_runner
from t2c.ir import run_graph
from t2c.ir.core import DType, Graph, SymDim, TensorType
from t2c.ir.ops import get_op

DTYPES = [DType.F32, DType.F16, DType.BF16]


class Builder:
    """A graph written op by op: `b.op("add", x, y)`, attrs as keywords."""

    def __init__(self, name: str):
        self.g = Graph(name)

    def input(self, name, dtype, *shape):
        return self.g.add_input(name, TensorType(dtype, tuple(SymDim(d) if isinstance(d, str) else d for d in shape)))

    def param(self, name, tensor):
        return self.g.add_param(name, tensor)

    def op(self, name, *inputs, **attrs):
        a = get_op(name).attrs(**attrs) if attrs else None
        return self.g.add_node(name, inputs, a).outputs[0]

    def const(self, value, dtype):
        return self.op("full", shape=(), value=value, dtype=dtype)


def chain_graph(dt: DType) -> Graph:
    """Elementwise glue with broadcasting, constants, a strided input and every activation."""
    b = Builder("chain")
    x = b.input("x", dt, "batch", 3, 37)
    y = b.input("y", dt, 3, 1)
    z = b.input("z", dt, 37, 3)
    w = b.param("w", (torch.rand(37, generator=torch.Generator().manual_seed(3)) + 0.5).to(dt.torch))
    zt = b.op("permute", z, perm=(1, 0))  # strided: the kernel reads it in place
    h = b.op("sub", b.op("add", b.op("mul", x, b.const(0.5, dt)), y), zt)
    g1 = b.op("mul", b.op("gelu", h, approximate="tanh"), w)
    g2 = b.op("gated_act", h, g1, activation="gelu")
    g3 = b.op("bias_act", g2, w, activation="silu")
    g4 = b.op("div", b.op("tanh", g3), b.op("add", b.op("pow", h, b.const(2.0, dt)), b.const(1.0, dt)))
    g5 = b.op("clamp", b.op("sub", b.op("sigmoid", g4), b.op("rsqrt", b.op("add", b.op("abs", h), b.const(1.0, dt)))), min=-0.25, max=0.75)
    g6 = b.op("maximum", b.op("exp", b.op("neg", g5)), b.op("relu", h))
    b.g.set_output("h", h)
    b.g.set_output("out", b.op("add", g6, b.op("gated_act", g1, g4, activation="relu")))
    b.g.set_output("mask", b.op("logical_and", b.op("gt", g5, b.const(0.0, dt)), b.op("le", h, zt)))
    return b.g


def rows_graph(dt: DType) -> Graph:
    """A chain ending in each last-dim reduction, and reductions by themselves."""
    b = Builder("rows")
    x = b.input("x", dt, "batch", 3, 37)
    bias = b.input("bias", dt, 37)
    scores = b.op("add", b.op("mul", x, b.const(0.125, dt)), bias)
    b.g.set_output("softmax", b.op("softmax", scores, dim=-1))
    b.g.set_output("log_softmax", b.op("log_softmax", x, dim=2))
    b.g.set_output("sum", b.op("sum", b.op("mul", x, x), dims=(-1,), keepdim=False))
    b.g.set_output("mean", b.op("mean", b.op("silu", x), dims=(2,), keepdim=True))
    b.g.set_output("amax", b.op("amax", x, dims=(-1,), keepdim=True))
    b.g.set_output("amin", b.op("amin", b.op("exp", x), dims=(-1,), keepdim=False))
    return b.g


def epilogue_graph(dt: DType) -> Graph:
    """Unfused norms and softmaxes: what follows a reduction joins its kernel (the row's result broadcast back)."""
    b = Builder("epilogue")
    x = b.input("x", dt, "batch", 3, 37)
    w = b.input("w", dt, 37)
    keep = b.input("keep", DType.BOOL, "batch", 1, 37)
    ms = b.op("mean", b.op("pow", x, b.const(2.0, dt)), dims=(-1,), keepdim=True)
    b.g.set_output("rms_norm", b.op("mul", b.op("mul", x, b.op("rsqrt", b.op("add", ms, b.const(1e-6, dt)))), w))
    e = b.op("exp", b.op("sub", x, b.op("amax", x, dims=(-1,), keepdim=True)))
    b.g.set_output("manual_softmax", b.op("div", e, b.op("sum", e, dims=(-1,), keepdim=True)))
    b.g.set_output("masked_probs", b.op("where", keep, b.op("softmax", b.op("mul", x, w), dim=-1), b.const(0.0, dt)))
    return b.g


def mixed_graph(dt: DType) -> Graph:
    """Integer and bool inputs inside a float chain: compare, cast, where, logical ops."""
    b = Builder("mixed")
    ids = b.input("ids", DType.I64, "batch", 7)
    f = b.input("f", dt, "batch", 7)
    pad = b.op("eq", ids, b.const(0, DType.I64))
    keep = b.op("logical_not", pad)
    chosen = b.op("where", keep, b.op("cast", ids, dtype=dt), b.op("mul", f, b.const(-1.0, dt)))
    b.g.set_output("chosen", chosen)
    b.g.set_output("flag", b.op("logical_or", b.op("ge", chosen, b.const(2.0, dt)), pad))
    b.g.set_output("masked", b.op("where", pad, b.const(float("-inf"), dt), b.op("floor", f)))
    return b.g


def _inputs(graph: Graph, batch: int, dt: DType) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    out = {}
    for v in graph.inputs:
        shape = [batch if isinstance(d, SymDim) else d for d in v.type.shape]
        if v.type.dtype == DType.I64:
            out[v.name] = torch.randint(0, 4, shape, generator=gen)
        elif v.type.dtype == DType.BOOL:
            out[v.name] = torch.randint(0, 2, shape, generator=gen).bool()
        else:
            out[v.name] = (torch.randn(shape, generator=gen) * 2).to(dt.torch)
    return out


def _retyped(graph_fn, dt: DType, like: Graph) -> Graph:
    """The same graph in dtype `dt`, with `like`'s weights converted to it."""
    g = graph_fn(dt)
    g.params = {k: v.to(dt.torch) for k, v in like.params.items()}
    return g


def _run(graph: Graph, inputs, tmp_path, *, flat: int = 64, row: int = 16):
    folder = tmp_path / graph.name
    save(lower(graph), str(folder))
    runner = load_runner(str(folder))
    runner.module.flat_block = lambda n: flat  # several programs, several loop steps per row
    runner.module.row_block = lambda n: row
    return runner(**inputs)


def assert_2x_pytorch(graph_fn, dt: DType, tmp_path, batch: int = 2):
    graph = graph_fn(dt)
    inputs = _inputs(graph, batch, dt)
    got = _run(graph, inputs, tmp_path)
    eager = run_graph(graph, inputs)
    ref = run_graph(_retyped(graph_fn, DType.F64, graph), {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()})
    for name, want in ref.items():
        assert got[name].dtype == eager[name].dtype and got[name].shape == eager[name].shape, name
        if want.dtype == torch.bool:
            assert torch.equal(got[name], eager[name]), name
            continue
        finite = torch.isfinite(want)
        assert torch.equal(finite, torch.isfinite(got[name])) and torch.equal(want[~finite], got[name][~finite].double()), name
        err = (got[name].double() - want)[finite].abs().max().item()
        torch_err = (eager[name].double() - want)[finite].abs().max().item()
        assert err <= 2 * torch_err + 1e-6, f"{name} {dt}: generated {err:.3g}, eager {torch_err:.3g}"


@pytest.mark.parametrize("dt", DTYPES, ids=str)
def test_elementwise_chain_with_broadcasting(dt, tmp_path):
    assert_2x_pytorch(chain_graph, dt, tmp_path)


@pytest.mark.parametrize("dt", DTYPES, ids=str)
def test_row_reductions(dt, tmp_path):
    assert_2x_pytorch(rows_graph, dt, tmp_path, batch=3)


@pytest.mark.parametrize("dt", DTYPES, ids=str)
def test_reductions_with_epilogues(dt, tmp_path):
    assert_2x_pytorch(epilogue_graph, dt, tmp_path)


@pytest.mark.parametrize("dt", [DType.F32, DType.BF16], ids=str)
def test_integer_and_bool_operands(dt, tmp_path):
    assert_2x_pytorch(mixed_graph, dt, tmp_path)


def test_one_kernel_per_chain():
    """The chain is one kernel (its permute stays torch); a reduction joins its input's kernel, and
    what follows it the reduction's; constants are literals."""
    counts = lower(chain_graph(DType.F32)).counts
    assert counts["generated"]["kernels"] == 1 and counts["torch"]["ops"] == {"permute": 1}
    assert counts["folded_constants"] == 5  # 0.5, 2.0, 1.0, 1.0 and 0.0 as literals
    rows = lower(rows_graph(DType.F32)).counts
    assert rows["generated"]["kernels"] == 6 and rows["generated"]["row_kernels"] == 6
    assert rows["torch"]["nodes"] == rows["generic"]["nodes"] == 0
    # rms: pow, mean | add, rsqrt | mul, mul in one; softmax by hand in two (amax, sub, exp | sum, div); softmax then where in one
    plan = plan_fusion(epilogue_graph(DType.F32))
    assert [[n.op for n in g.nodes] for g in plan.groups] == [
        ["pow", "mean", "add", "rsqrt", "mul", "mul"], ["amax", "sub", "exp"], ["sum", "div"], ["mul", "softmax", "where"]]


@pytest.mark.parametrize("dt", [DType.F16, DType.BF16], ids=str)
def test_a_float32_constant_is_rounded_to_the_ops_dtype_first(dt, tmp_path):
    """x_half > 0.3 compares with 0.3 in x's dtype, as torch casts both to their common dtype (a 0-d f32 input too)."""
    b = Builder("constant")
    x = b.input("x", dt, 6)
    scalar = b.input("scalar", DType.F32)
    b.g.set_output("mul_scalar", b.op("mul", x, scalar))
    b.g.set_output("gt_scalar", b.op("gt", x, scalar))
    c = b.const(0.3, DType.F32)
    b.g.set_output("gt", b.op("gt", x, c))
    b.g.set_output("mul", b.op("mul", x, c))
    b.g.set_output("clamped", b.op("where", b.op("lt", x, c), c, x))
    half = torch.tensor(0.3).to(dt.torch)
    inputs = {"x": torch.stack([half, half * 2, -half, half, torch.tensor(0.29).to(dt.torch), torch.tensor(0.31).to(dt.torch)]),
              "scalar": torch.tensor(0.3)}
    got, want = _run(b.g, inputs, tmp_path), run_graph(b.g, inputs)
    for name in want:
        assert got[name].dtype == want[name].dtype and torch.equal(got[name], want[name]), name


def _graph_with_a_matmul_between():
    """a = exp(x); m = matmul(a, w) reads a; d = -a * m cannot join a's kernel (m needs it first)."""
    b = Builder("between")
    x = b.input("x", DType.F32, 5, 6)
    w = b.param("w", torch.randn(6, 6, generator=torch.Generator().manual_seed(1)))
    a = b.op("exp", x)
    m = b.op("matmul", a, w)
    d = b.op("mul", b.op("neg", a), m)
    c, s = b.op("cos", d), b.op("sin", d)
    b.g.set_output("out", b.op("add", c, s))
    b.g.set_output("cos", c)
    return b.g, {"x": torch.randn(5, 6, generator=torch.Generator().manual_seed(2))}


def test_a_group_read_from_outside_takes_no_more_members(tmp_path):
    graph, inputs = _graph_with_a_matmul_between()
    plan = plan_fusion(graph)
    assert [[n.op for n in g.nodes] for g in plan.groups] == [["exp"], ["neg", "mul", "cos", "sin", "add"]]
    got, want = _run(graph, inputs, tmp_path), run_graph(graph, inputs)
    for name in want:  # cos/sin of arguments up to ~30: float32 ulps of the argument
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-5)


def test_siblings_reading_one_value_share_a_kernel():
    b = Builder("siblings")
    x = b.input("x", DType.F32, "seq", 8)
    angle = b.op("matmul", x, b.param("w", torch.randn(8, 8)))
    b.g.set_output("cos", b.op("cos", angle))
    b.g.set_output("sin", b.op("sin", angle))
    b.g.set_output("other", b.op("exp", x))  # reads another value: a kernel of its own
    assert [[n.op for n in g.nodes] for g in plan_fusion(b.g).groups] == [["cos", "sin"], ["exp"]]


def test_unsupported_ops_stay_on_torch():
    """Integer arithmetic, rounding division and a pow by a tensor are no generated kernel's."""
    b = Builder("unfused")
    ids = b.input("ids", DType.I64, 4)
    x = b.input("x", DType.F32, 4)
    b.g.set_output("a", b.op("add", ids, b.const(1, DType.I64)))
    b.g.set_output("b", b.op("div", x, x, rounding_mode="floor"))
    b.g.set_output("c", b.op("pow", x, x))
    counts = lower(b.g).counts
    assert counts["generated"]["nodes"] == 0 and counts["torch"]["ops"] == {"add": 1, "div": 1, "full": 1, "pow": 1}
