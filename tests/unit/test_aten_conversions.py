"""Conversions of in-place writes and tensor-bound ops that the MoE families need.

Multi-head latent attention assembles keys by writing into slices of a new
tensor (`copy`, `slice_scatter`), multimodal RoPE interleaves frequencies with a
strided slice write, Phi-MoE's router clamps by tensors, softplus decomposes to
`log1p`, and sparse-attention indexers take a top-k whose k is the sequence
length. Each case traces with dynamic batch and seq and must match eager at two
shapes, then compile to validated ONNX.
"""

import pytest
import torch

import t2c
from t2c.frontends.torch_export import trace
from t2c.ir import run_graph


class SliceWrites(torch.nn.Module):
    """Keys built like MLA's expand_kv: a fresh tensor, a prefix and a suffix copied in; a strided write."""

    def forward(self, x, y):
        k = x.new_empty(x.shape[0], x.shape[1], 14)
        k[..., :8] = x[..., :8]
        k[..., 8:] = y[..., :6].to(torch.float64)  # copy casts to the destination's dtype
        k[..., 1:12:3] = y[..., 2:6]
        k[:, 1::2] = k[:, 1::2] * 2
        return k


class CopyBroadcast(torch.nn.Module):
    def forward(self, x, y):
        out = torch.empty_like(x)
        out.copy_(y[..., :1])  # a [b, s, 1] source broadcast to [b, s, 12]
        return out + x


class TensorClampLog1p(torch.nn.Module):
    def forward(self, x, y):
        lo = y[..., :1] * 0.1
        both = torch.clamp(x, min=lo, max=lo + 1.0)
        upper = torch.clamp(x, max=lo)
        return both + upper + torch.log1p(x.abs()) + torch.nn.functional.softplus(x)


class SeqTopK(torch.nn.Module):
    """top-min(64, seq): k follows the sequence length (a sparse-attention indexer)."""

    def forward(self, x, y):
        scores = x[..., 0]
        values, index = scores.topk(min(64, scores.shape[-1]), dim=-1)
        return values * 2 + index.to(values.dtype)


@pytest.mark.parametrize("module", [SliceWrites(), CopyBroadcast(), TensorClampLog1p(), SeqTopK()], ids=lambda m: type(m).__name__)
def test_conversion_matches_eager_and_compiles(module):
    def inputs(b, s):
        gen = torch.Generator().manual_seed(b * 100 + s)
        return {"x": torch.randn(b, s, 12, generator=gen), "y": torch.randn(b, s, 6, generator=gen)}

    graph = trace(module, inputs(2, 6))
    for b, s in [(2, 6), (3, 9)]:
        got = list(run_graph(graph, inputs(b, s)).values())[0]
        want = module(**inputs(b, s))
        assert got.dtype == want.dtype and got.shape == want.shape
        assert (got - want).abs().max().item() <= 1e-5
    assert t2c.compile(module, inputs(2, 6), passes="-O1").ok is True
