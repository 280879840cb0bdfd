"""Convolutions from the frontend: every form transformers use, traced with dynamic batch and seq.

Causal depthwise conv1d (Mamba, Gated DeltaNet, LFM2: pad k-1, keep the first
seq outputs), "same" padding with an even kernel (torch pads unevenly), a
(k, 1) grouped conv2d over the sequence (Nystromformer), a pointwise grouped
conv1d (SqueezeBERT), a strided patch embedding, an unbatched conv1d. Each must
match eager at two shapes in the interpreter, then compile to validated ONNX.
"""

import pytest
import torch
from torch import nn

import t2c
from t2c.errors import UnsupportedOpError
from t2c.frontends.torch_export import trace
from t2c.ir import run_graph


class CausalDepthwise(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(12, 12, 4, padding=3, groups=12)

    def forward(self, x):  # [B, S, C]
        return torch.nn.functional.silu(self.conv(x.transpose(1, 2))[..., : x.shape[1]]).transpose(1, 2)


class SameEven(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(12, 6, 4, padding="same", dilation=1, bias=False)

    def forward(self, x):
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


class GroupedSeqConv2d(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, (5, 1), padding=(2, 0), groups=3, bias=False)

    def forward(self, x):  # [B, S, 12] seen as 3 heads of 4
        v = x.unflatten(-1, (3, 4)).transpose(1, 2)  # [B, 3, S, 4]
        return self.conv(v).transpose(1, 2).flatten(2)


class PointwiseGrouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(12, 8, 1, groups=4)

    def forward(self, x):
        return self.conv(x.transpose(1, 2)).transpose(1, 2)


class StridedDilated(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(12, 4, 3, stride=2, dilation=2, padding=2)

    def forward(self, x):
        return self.conv(x.transpose(1, 2))


class Unbatched(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(12, 4, 3, padding=1)

    def forward(self, x):
        return self.conv(x[0].transpose(0, 1))  # [12, S]: torch's unbatched form


class ConvThenUnfold(nn.Module):
    """ConvBERT's span-based dynamic conv: a separable conv1d, then F.unfold (im2col, a Pad on two of
    four axes) of a transposed linear. ONNX Runtime's transpose optimizer, laying the Conv out as
    NHWC, once read past the end of a Pad's pads given for two axes only."""

    def __init__(self):
        super().__init__()
        self.depthwise = nn.Conv1d(12, 12, 3, padding=1, groups=12, bias=False)
        self.pointwise = nn.Conv1d(12, 12, 1, bias=False)
        self.linear = nn.Linear(12, 12)

    def forward(self, x):
        h = self.pointwise(self.depthwise(x.transpose(1, 2))).transpose(1, 2)  # [B, S, 12]
        k = self.linear(x * h).transpose(1, 2).contiguous().unsqueeze(-1)  # [B, 12, S, 1]
        cols = torch.nn.functional.unfold(k, kernel_size=[3, 1], padding=[1, 0])  # [B, 36, S]
        return cols.transpose(1, 2)


MODULES = [CausalDepthwise(), SameEven(), GroupedSeqConv2d(), PointwiseGrouped(), StridedDilated(), Unbatched(), ConvThenUnfold()]


def _inputs(b, s):
    return {"x": torch.randn(b, s, 12, generator=torch.Generator().manual_seed(b * 100 + s))}


@pytest.mark.parametrize("module", MODULES, ids=lambda m: type(m).__name__)
def test_conv_matches_eager_and_compiles(module):
    module.eval()
    graph = trace(module, _inputs(2, 7))
    assert graph.op_counts().get("conv") >= 1
    for b, s in [(2, 7), (3, 12)]:
        got = list(run_graph(graph, _inputs(b, s)).values())[0]
        with torch.no_grad():
            want = module(**_inputs(b, s))
        assert got.shape == want.shape
        assert (got - want).abs().max().item() <= 1e-5
    assert t2c.compile(module, _inputs(2, 7), passes="-O1").ok is True


def test_patch_embedding_keeps_image_dims_static():
    patches = nn.Conv2d(3, 8, 4, stride=4).eval()
    graph = trace(patches, {"input": torch.randn(2, 3, 16, 16)})
    (out,) = graph.output_values()
    assert [str(d) for d in out.type.shape] == ["batch", "8", "4", "4"]


def test_transposed_conv_is_refused_by_name():
    class Up(nn.Module):
        def __init__(self):
            super().__init__()
            self.up = nn.ConvTranspose1d(12, 4, 4, stride=2)

        def forward(self, x):
            return self.up(x.transpose(1, 2))

    with pytest.raises(UnsupportedOpError, match="transposed convolution.*up"):
        trace(Up().eval(), _inputs(2, 7))
