"""contraction(v): traced einsum / bmm / matmul / mul-sum read back as an einsum over their sources."""

from __future__ import annotations

import pytest
import torch

from t2c.frontends.torch_export import trace
from t2c.passes import Pipeline
from t2c.passes.contraction import Stacked, contraction


class Einsum(torch.nn.Module):
    def __init__(self, equation: str, w_shape: tuple[int, ...]):
        super().__init__()
        self.equation = equation
        self.w = torch.nn.Parameter(torch.randn(w_shape))

    def forward(self, x):
        return torch.einsum(self.equation, x, self.w)


def _last_contraction(module, x):
    g = trace(module.eval(), {"x": x}, {"x": {0: "tokens"}})
    g, _ = Pipeline.parse("fold-shapes,cse").run(g)
    out = g.outputs[0][1]
    return g, contraction(out)


@pytest.mark.parametrize(
    "equation, w_shape, x_roles, w_roles",
    [
        # x [t, h]; out axes numbered as in the result
        ("th,ehi->eti", (3, 4, 5), (("out", 1), ("sum", 0)), (("out", 0), ("sum", 0), ("out", 2))),
        ("th,ehi->tei", (3, 4, 5), (("out", 0), ("sum", 0)), (("out", 1), ("sum", 0), ("out", 2))),
        ("th,ih->ti", (5, 4), (("out", 0), ("sum", 0)), (("out", 1), ("sum", 0))),
    ],
)
def test_einsum_roles_through_reshapes(equation, w_shape, x_roles, w_roles):
    g, c = _last_contraction(Einsum(equation, w_shape), torch.randn(6, 4))
    assert c is not None
    assert c.sources[0] is g.inputs[0] and c.sources[1] is g.param_values["w"]
    assert c.roles == (x_roles, w_roles)


class StackMulSum(torch.nn.Module):
    """sum_e c[t, e] * stack(y_e)[t, e, h]: torch.stack traces to a cat, read as a Stacked source."""

    def forward(self, x):
        c = torch.softmax(x[:, :3], dim=-1)
        ys = torch.stack([x * (e + 1) for e in range(3)], dim=1)
        return (c.unsqueeze(-1) * ys).sum(1)


def test_mul_sum_over_a_stack():
    g, c = _last_contraction(StackMulSum(), torch.randn(6, 4))
    assert c is not None
    stacked = [s for s in c.sources if isinstance(s, Stacked)]
    assert len(stacked) == 1 and len(stacked[0].parts) == 3
    comb = c.roles[1 - c.sources.index(stacked[0])]
    assert comb == (("out", 0), ("sum", 0))
    assert c.roles[c.sources.index(stacked[0])] == (("sum", 0), ("out", 0), ("out", 1))


class Mixing(torch.nn.Module):
    """x.T @ x mixes tokens: the token axis is summed, which the reading must say."""

    def forward(self, x):
        return x.transpose(0, 1) @ x


def test_reading_is_exact_about_which_axis_is_summed():
    g, c = _last_contraction(Mixing(), torch.randn(6, 4))
    assert c is not None and c.roles == ((("sum", 0), ("out", 0)), (("sum", 0), ("out", 1)))


class Gram(torch.nn.Module):
    """Both sources are x: each one's token axis goes to its own axis of the [t, t] result."""

    def forward(self, x):
        return (x.unsqueeze(1) * x.unsqueeze(0)).sum(-1)


def test_outer_axes_from_the_same_source_are_kept_apart():
    g, c = _last_contraction(Gram(), torch.randn(6, 4))
    assert c is not None
    assert c.roles == ((("out", 0), ("sum", 0)), (("out", 1), ("sum", 0)))  # x.unsqueeze(1): result axis 0
