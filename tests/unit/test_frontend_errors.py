"""The frontend's refusals: an op with no conversion names the op, the module and the source line."""

import pytest
import torch

from t2c.errors import UnsupportedOpError, UserError
from t2c.frontends.torch_export import trace


class Inner(torch.nn.Module):
    def forward(self, x):
        return torch.atan2(x, x + 1.0)  # no conversion for atan2


class Outer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.block = Inner()

    def forward(self, x):
        return self.block(x) * 2.0


def test_unconvertible_op_names_op_module_and_line():
    with pytest.raises(UnsupportedOpError) as info:
        trace(Outer(), {"x": torch.randn(2, 8, 4)})
    msg = str(info.value)
    assert "atan2" in msg
    assert "block" in msg
    assert "test_frontend_errors.py" in msg and "torch.atan2(x, x + 1.0)" in msg
    assert "\n" not in msg
    assert info.value.exit_code == 2


class DataDependent(torch.nn.Module):
    def forward(self, x):
        return torch.unique(x)  # a data-dependent size t2c has no conversion for (x[x > 0] converts: nonzero)


def test_data_dependent_shapes_are_a_user_error():
    with pytest.raises(UserError) as info:
        trace(DataDependent(), {"x": torch.randn(2, 8)})
    assert "\n" not in str(info.value)


class Scaled(torch.nn.Module):
    def forward(self, x, scale):
        return x * scale


def test_batch_one_example_still_gives_dynamic_batch():
    graph = trace(Scaled(), {"x": torch.randn(1, 5, 3), "scale": torch.randn(3)}, {"x": {0: "batch", 1: "seq"}})
    assert [str(d) for d in graph.inputs[0].type.shape] == ["batch", "seq", "3"]
    assert graph.inputs[1].type.shape == (3,)
