"""Half-precision artifacts against the IR: FlashAttention's rule where the elementwise tolerance
refuses what only rounding order explains (validate.judge_half_by_fp32, run_graph(upcast=True))."""

from __future__ import annotations

import torch

from t2c.ir import parse_graph, run_graph
from t2c.validate import compare, judge_half_by_fp32

# The difference of two 2048-wide dot products of bf16 terms that nearly cancel: the interpreter's
# bf16 matmuls each round their ~90-sized result, a float32-accumulating kernel rounds only the
# small difference.
DOT = """graph g
input %0 "x" : bf16[4,2048]
input %1 "w" : bf16[2048,8]
input %2 "w2" : bf16[2048,8]
%3 = matmul(%0, %1) : bf16[4,8]
%4 = matmul(%0, %2) : bf16[4,8]
%5 = sub(%3, %4) : bf16[4,8]
output "y" = %5
"""


def _inputs(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(4, 2048, generator=g) * 2).bfloat16()
    w = torch.randn(2048, 8, generator=g).bfloat16()
    w2 = (w.float() + 0.01 * torch.randn(2048, 8, generator=g)).bfloat16()
    return {"x": x, "w": w, "w2": w2}


def _kernel(inp, terms: int = 2048):
    """What a float32-accumulating kernel returns (with `terms` < 2048: a wrong one)."""
    x, w, w2 = (inp[k].float() for k in ("x", "w", "w2"))
    return (x[:, :terms] @ w[:terms] - x[:, :terms] @ w2[:terms]).bfloat16()


def test_upcast_runs_the_graph_in_float32():
    g = parse_graph(DOT)
    inp = _inputs()
    (fp32,) = run_graph(g, inp, upcast=True).values()
    assert fp32.dtype == torch.float32
    torch.testing.assert_close(fp32, inp["x"].float() @ inp["w"].float() - inp["x"].float() @ inp["w2"].float())


def test_a_float32_accumulating_candidate_passes_by_the_2x_rule():
    g = parse_graph(DOT)
    inp = _inputs()
    (ir,) = run_graph(g, inp).values()
    (fp32,) = run_graph(g, inp, upcast=True).values()
    kernel = _kernel(inp)
    c = compare("y", kernel, ir)
    assert not c.ok  # elementwise, atol 1e-2 + rtol 1.6e-2 refuses it
    judged = judge_half_by_fp32(c, kernel, ir, fp32)
    assert judged.fp32_error <= judged.reference_fp32_error  # the kernel is the better of the two
    assert judged.ok
    assert "fp32_error" in judged.as_json()


def test_a_wrong_candidate_still_fails():
    g = parse_graph(DOT)
    inp = _inputs()
    (ir,) = run_graph(g, inp).values()
    (fp32,) = run_graph(g, inp, upcast=True).values()
    wrong = _kernel(inp, terms=1000)  # half the terms: off by more than twice the bf16 rounding of the IR
    judged = judge_half_by_fp32(compare("y", wrong, ir), wrong, ir, fp32)
    assert not judged.ok and judged.fp32_error > 2 * judged.reference_fp32_error + judged.atol
