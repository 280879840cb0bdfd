"""Complex tensors as pairs of reals: rotary embeddings written the way Meta's original Llama code
writes them (`precompute_freqs_cis` / `apply_rotary_emb`; DeepSeek-V2 in transformers), and FNet's
Fourier token mixing (`torch.fft.fftn(x).real`)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from t2c.errors import UnsupportedOpError
from t2c.frontends.torch_export import trace
from t2c.ir import run_graph, verify


class ComplexRope(nn.Module):
    """`precompute_freqs_cis` (polar of the angle table) and `apply_rotary_emb`, in one module."""

    def __init__(self, dim: int = 8, max_len: int = 64):
        super().__init__()
        self.register_buffer("angles", torch.outer(torch.arange(max_len).float(), 1.0 / (10000.0 ** (torch.arange(0, dim, 2).float() / dim))))

    def forward(self, xq):  # [batch, seq, heads, dim]
        seq = xq.shape[1]
        freqs_cis = torch.polar(torch.ones_like(self.angles[:seq]), self.angles[:seq]) * 1.0  # complex table, scaled
        xq_ = torch.view_as_complex(xq.float().reshape(*xq.shape[:-1], -1, 2))
        freqs_cis = freqs_cis.unsqueeze(0).unsqueeze(2)  # [1, seq, 1, dim/2]
        return torch.view_as_real(xq_ * freqs_cis).flatten(3).type_as(xq)


def test_complex_rope_traces_to_real_arithmetic_and_matches_eager():
    m = ComplexRope().eval()
    g = trace(m, {"xq": torch.randn(2, 5, 3, 8)}, {"xq": {0: "batch", 1: "seq"}})
    verify(g)
    assert not any(v.type.dtype.name.startswith("c") for n in g.nodes for v in n.outputs)
    assert {"cos", "sin"} <= {n.op for n in g.nodes}
    for seq in (1, 5, 17):
        x = torch.randn(3, seq, 3, 8)
        (got,) = run_graph(g, {"xq": x}).values()
        torch.testing.assert_close(got, m(x), atol=1e-6, rtol=1e-5)


class ComplexAbs(nn.Module):
    def forward(self, x):
        return torch.view_as_complex(x.reshape(*x.shape[:-1], -1, 2)).abs()


def test_an_unconverted_complex_op_fails_by_name():
    with pytest.raises(UnsupportedOpError, match="abs"):
        trace(ComplexAbs().eval(), {"x": torch.randn(2, 4, 8)})


class FourierMixing(nn.Module):
    """FNet's mixing layer: the real part of the 2-D DFT over tokens and features."""

    def __init__(self, norm: str = "backward"):
        super().__init__()
        self.norm = norm

    def forward(self, x):  # [batch, seq, hidden]
        return torch.fft.fftn(x, dim=(1, 2), norm=self.norm).real


def test_fourier_mixing_is_a_dft_matmul_per_dim():
    m = FourierMixing().eval()
    g = trace(m, {"x": torch.randn(2, 6, 12)})
    verify(g)
    assert sum(n.op == "matmul" for n in g.nodes) == 8  # 4 real matmuls per transformed dim
    for seq in (1, 6, 37):
        x = torch.randn(3, seq, 12)
        (got,) = run_graph(g, {"x": x}).values()
        torch.testing.assert_close(got, m(x), atol=2e-4, rtol=1e-4)


def test_a_normalised_fft_is_refused_by_name():
    with pytest.raises(UnsupportedOpError, match="fft other than the forward, unnormalised"):
        trace(FourierMixing(norm="ortho").eval(), {"x": torch.randn(2, 6, 12)})
