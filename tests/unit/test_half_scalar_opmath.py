"""A Python float operand of a half-precision op is read in float32, as torch's opmath does.

`scores / math.sqrt(12)` in bfloat16 divides by 3.4641..., not by the bfloat16 3.4688 a constant of
the tensor's dtype would hold (found by the fuzzer: tests/fuzz). The frontend makes such a mul or
div float32 between two casts; torch's CPU add and sub round the scalar to the half dtype first, as
the IR's op in that dtype does; a scalar the half dtype holds exactly keeps every op in it.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from t2c.frontends.torch_export import trace
from t2c.ir import run_graph


class Scaled(nn.Module):
    def forward(self, x):
        return (x / math.sqrt(12)) * 0.1 + 0.3 - (1.7 - x)


class ExactScalars(nn.Module):
    def forward(self, x):
        return x * 0.5 + 2.0


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_inexact_scalars_match_eager_bit_for_bit(dtype):
    x = (torch.randn(4, 33, generator=torch.Generator().manual_seed(0)) * 3).to(dtype)
    g = trace(Scaled(), {"x": x}, {"x": {0: "batch"}})
    assert torch.equal(run_graph(g, {"x": x})["output"], Scaled()(x))
    casts = [n for n in g.nodes if n.op == "cast"]
    assert len(casts) == 4  # the div and the mul, each between a widening and a narrowing cast


def test_exact_scalars_keep_the_half_op():
    x = torch.randn(4, 8).to(torch.bfloat16)
    g = trace(ExactScalars(), {"x": x}, {"x": {0: "batch"}})
    assert not [n for n in g.nodes if n.op == "cast"]
    assert torch.equal(run_graph(g, {"x": x})["output"], ExactScalars()(x))


def test_float32_is_unchanged():
    x = torch.randn(4, 8)
    g = trace(Scaled(), {"x": x}, {"x": {0: "batch"}})
    assert not [n for n in g.nodes if n.op == "cast"]
