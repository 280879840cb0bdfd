"""Hand-written linear attention compiled with -O1: one `linear_attention` per layer, ONNX vs eager.

The model is written as Katharopoulos et al. ("Transformers are RNNs") and the tutorials after
them write it: q/k/v linears viewed into heads, φ(x) = elu(x) + 1, kv = φ(K)ᵀV, the normaliser
1 / (φ(Q) · Σ_s φ(K)), in matmul or einsum spelling, causal with prefix sums. -O1 must lift each
layer's chain into one op, leave no product behind, and the ONNX artifact must match eager at two
sequence lengths. A normaliser with an eps added stays as written (the op has none; -O1 is exact).
"""

from __future__ import annotations

import os

import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import t2c


def phi(x: torch.Tensor) -> torch.Tensor:
    return F.elu(x) + 1


class LinearAttention(nn.Module):
    def __init__(self, hidden: int, heads: int, form: str, eps: float | None = None):
        super().__init__()
        self.h, self.d, self.form, self.eps = heads, hidden // heads, form, eps
        self.q_proj, self.k_proj, self.v_proj = (nn.Linear(hidden, hidden) for _ in range(3))
        self.o_proj = nn.Linear(hidden, hidden)

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        return x.view(b, s, self.h, self.d).transpose(1, 2)  # [B, H, S, D]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q, k, v = phi(self.heads(self.q_proj(x))), phi(self.heads(self.k_proj(x))), self.heads(self.v_proj(x))
        if self.form == "matmul":
            kv = k.transpose(-1, -2) @ v  # [B, H, D, D]
            z = 1 / (q @ k.sum(dim=2).unsqueeze(-1))  # [B, H, S, 1]
            out = (q @ kv) * z
        elif self.form == "einsum":
            kv = torch.einsum("nhsd,nhse->nhde", k, v)
            den = torch.einsum("nhsd,nhd->nhs", q, k.sum(dim=2))
            if self.eps is not None:
                den = den + self.eps
            out = torch.einsum("nhsd,nhde,nhs->nhse", q, kv, 1 / den)
        else:  # causal: prefix sums over the sequence
            kv = torch.einsum("nhsd,nhse->nhsde", k, v).cumsum(dim=2)
            den = torch.einsum("nhsd,nhsd->nhs", q, k.cumsum(dim=2))
            out = torch.einsum("nhsd,nhsde->nhse", q, kv) / den.unsqueeze(-1)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, -1))


class Model(nn.Module):
    def __init__(self, form: str, eps: float | None = None, layers: int = 2, vocab: int = 50, hidden: int = 32, heads: int = 4):
        super().__init__()
        self.embed = nn.Embedding(vocab, hidden)
        self.layers = nn.ModuleList(LinearAttention(hidden, heads, form, eps) for _ in range(layers))
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(layers))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        h = self.embed(input_ids)
        for attn, norm in zip(self.layers, self.norms):
            h = norm(h + attn(h))
        return h


def _ids(batch: int, seq: int) -> dict[str, torch.Tensor]:
    return {"input_ids": torch.randint(0, 50, (batch, seq), generator=torch.Generator().manual_seed(seq))}


def _check_onnx(model: nn.Module, folder: str) -> None:
    session = ort.InferenceSession(os.path.join(folder, "model.onnx"), providers=["CPUExecutionProvider"])
    name = session.get_outputs()[0].name
    for batch, seq in [(2, 9), (3, 23)]:
        feeds = _ids(batch, seq)
        (got,) = session.run([name], {k: v.numpy() for k, v in feeds.items()})
        with torch.no_grad():
            want = model(**feeds)
        assert (torch.from_numpy(got) - want).abs().max().item() <= 1e-4, (batch, seq)


@pytest.mark.parametrize("form", ["matmul", "einsum", "causal"])
def test_hand_written_linear_attention_lifts_at_O1(form, tmp_path):
    torch.manual_seed(0)
    model = Model(form).eval()
    compiled = t2c.compile(model, _ids(2, 9), passes="-O1", out=str(tmp_path / "out"))
    assert compiled.ok is True
    record = next(p for p in compiled.report["passes"] if p["pass"] == "lift-linear-attention")
    assert record["stats"]["lifted"] == 2, record["stats"]
    counts = compiled.graph.op_counts()
    assert counts["linear_attention"] == 2, counts
    # nothing of the chain is left: no products, prefix sums, divisions or feature maps
    for op in ("matmul", "cumsum", "reciprocal", "div", "exp", "where"):
        assert op not in counts, counts
    ops = [n for n in compiled.graph.nodes if n.op == "linear_attention"]
    assert all(n.attrs.causal == (form == "causal") and n.attrs.kv_heads == 4 for n in ops)
    _check_onnx(model, str(tmp_path / "out"))


def test_normaliser_with_eps_is_not_lifted(tmp_path):
    torch.manual_seed(0)
    model = Model("einsum", eps=1e-6).eval()
    compiled = t2c.compile(model, _ids(2, 9), passes="-O1", out=str(tmp_path / "out"))
    assert compiled.ok is True
    assert "linear_attention" not in compiled.graph.op_counts()
    _check_onnx(model, str(tmp_path / "out"))
