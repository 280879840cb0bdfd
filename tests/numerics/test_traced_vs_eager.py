"""Validation judges the traced IR against eager PyTorch before any pass.

Passes are judged against the IR before them and the artifact against the final IR, so
a frontend conversion that computes something else than the model, or a model whose eager
result its inputs do not determine, would otherwise pass validation with an artifact that
differs from the model. A top-k over tied scores is the second kind (a zero-initialised
router: torch's CPU order among equal values is unspecified, the IR's is the lower index).
"""

import pytest
import torch

import t2c
from t2c.errors import ValidationError


class TiedRouter(torch.nn.Module):
    """Top-2 of 4 experts by scores that are all equal: eager picks by its own order."""

    def forward(self, x):
        scores = torch.zeros(x.shape[0], x.shape[1], 4) + 0.0 * x[..., :1]
        idx = torch.topk(scores, 2, dim=-1).indices
        return x * (1 + idx.sum(-1, keepdim=True).to(x.dtype))


class UntiedRouter(TiedRouter):
    def forward(self, x):
        scores = x[..., :4]
        idx = torch.topk(scores, 2, dim=-1).indices
        return x * (1 + idx.sum(-1, keepdim=True).to(x.dtype))


def test_traced_ir_that_differs_from_eager_fails_validation(tmp_path):
    x = torch.randn(2, 5, 8)
    assert torch.topk(torch.zeros(2, 5, 4), 2, dim=-1).indices[0, 0].tolist() != [0, 1]  # the premise: eager's tie order
    with pytest.raises(ValidationError, match="traced IR differs from eager PyTorch before any pass"):
        t2c.compile(TiedRouter(), {"x": x}, passes="-O1", out=str(tmp_path / "tied"))
    assert not (tmp_path / "tied").exists()


def test_traced_ir_is_compared_and_recorded(tmp_path):
    compiled = t2c.compile(UntiedRouter(), {"x": torch.randn(2, 5, 8)}, passes="-O1", out=str(tmp_path / "ok"))
    assert compiled.ok is True
    traced = compiled.report["traced_vs_eager"]
    assert len(traced) == 2 and all(o["ok"] for c in traced for o in c["outputs"])
