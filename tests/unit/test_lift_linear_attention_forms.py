"""lift-linear-attention on traced spellings: what lifts (and to which attrs), what stays, and why.

Each module is traced with dynamic batch and sequence, run through cleanup and the pass, and
the result compared with eager at another shape (the interpreter; the compile and ONNX are
tests/numerics/test_lift_linear_attention.py). Near-misses are checked by their reason.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from t2c.frontends.torch_export import trace
from t2c.ir import run_graph
from t2c.passes import Pipeline, collect_near_misses

H, D = 4, 8


def phi(x):
    return F.elu(x) + 1


def phi_where(x):
    return torch.where(x > 0, x + 1, torch.exp(x))  # elu(x) + 1 written out


class Site(nn.Module):
    """Linear attention over q/k/v projections, in the spelling `form`."""

    def __init__(self, form: str, kv_heads: int = H, hidden: int = H * D):
        super().__init__()
        self.form, self.kvh = form, kv_heads
        self.q = nn.Linear(hidden, H * D)
        self.k = nn.Linear(hidden, kv_heads * D)
        self.v = nn.Linear(hidden, kv_heads * D)

    def forward(self, x):
        b, s, _ = x.shape
        f = self.form
        if f == "phi_before_split":  # the feature map on the projections, then the heads
            Q = phi(self.q(x)).view(b, s, H, D).transpose(1, 2)
            K = phi(self.k(x)).view(b, s, self.kvh, D).transpose(1, 2)
            v = self.v(x).view(b, s, self.kvh, D).transpose(1, 2)
            out = (Q @ (K.transpose(-1, -2) @ v)) / (Q @ K.sum(2).unsqueeze(-1))
            return out.transpose(1, 2).reshape(b, s, -1)
        q, k, v = self.q(x).view(b, s, H, D), self.k(x).view(b, s, self.kvh, D), self.v(x).view(b, s, self.kvh, D)
        if f == "nlhe":  # fast-transformers' [N, L, H, E] layout, no eps
            Q, K = phi(q), phi(k)
            kv = torch.einsum("nshd,nshm->nhmd", K, v)
            z = 1 / torch.einsum("nlhd,nhd->nlh", Q, K.sum(dim=1))
            return torch.einsum("nlhd,nhmd,nlh->nlhm", Q, kv, z).reshape(b, s, -1)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        if f == "gqa":  # φ before the kv heads are repeated
            r = H // self.kvh
            Q, K, vv = phi(q), phi(k).repeat_interleave(r, dim=1), v.repeat_interleave(r, dim=1)
            out = Q @ (K.transpose(-1, -2) @ vv) / (Q @ K.sum(2, keepdim=True).transpose(-1, -2))
        elif f == "mul_sum":  # broadcast products and sums, φ spelled with where/exp
            Q, K = phi_where(q), phi_where(k)
            kv = (K.unsqueeze(-1) * v.unsqueeze(-2)).sum(2)
            out = (Q.unsqueeze(-1) * kv.unsqueeze(2)).sum(-2) / (Q * K.sum(2, keepdim=True)).sum(-1, keepdim=True)
        elif f == "causal_loop_free":
            Q, K = phi(q), phi(k)
            kv = (K.unsqueeze(-1) * v.unsqueeze(-2)).cumsum(2)
            out = (Q.unsqueeze(-2) @ kv).squeeze(-2) / (Q * K.cumsum(2)).sum(-1, keepdim=True)
        elif f == "causal_numerator_only":  # prefix-summed numerator, full normaliser: not linear attention
            Q, K = phi(q), phi(k)
            kv = torch.einsum("nhsd,nhse->nhsde", K, v).cumsum(2)
            out = torch.einsum("nhsd,nhsde->nhse", Q, kv) / (Q @ K.sum(2, keepdim=True).transpose(-1, -2))
        elif f == "elu_without_one":
            Q, K = F.elu(q), F.elu(k)
            out = Q @ (K.transpose(-1, -2) @ v) / (Q @ K.sum(2, keepdim=True).transpose(-1, -2))
        elif f == "eps_divide":
            Q, K = phi(q), phi(k)
            out = Q @ (K.transpose(-1, -2) @ v) / (Q @ K.sum(2, keepdim=True).transpose(-1, -2) + 1e-4)
        else:
            raise ValueError(f)
        return out.transpose(1, 2).reshape(b, s, -1)


def run(form: str, kv_heads: int = H):
    torch.manual_seed(0)
    model = Site(form, kv_heads).eval()
    ex = {"x": torch.randn(2, 7, H * D)}
    g = trace(model, ex, {"x": {0: "batch", 1: "seq"}})
    with collect_near_misses() as misses:
        g, records = Pipeline.parse("fold-shapes,cse,lift-linear-attention,dce").run(g, verify_each=True)
    x = torch.randn(3, 11, H * D)
    with torch.no_grad():
        want = model(x)
    torch.testing.assert_close(run_graph(g, [x])["output"], want, rtol=1e-4, atol=1e-5)
    stats = next(r.stats for r in records if r.name == "lift-linear-attention")
    return g, stats, [m for m in misses if m.startswith("lift-linear-attention")]


@pytest.mark.parametrize(
    "form, kv_heads, causal",
    [("nlhe", H, False), ("phi_before_split", H, False), ("gqa", 2, False), ("mul_sum", H, False), ("causal_loop_free", H, True)],
)
def test_lifts(form, kv_heads, causal):
    g, stats, misses = run(form, kv_heads)
    assert stats["lifted"] == 1 and misses == []
    (op,) = [n for n in g.nodes if n.op == "linear_attention"]
    assert op.attrs.causal is causal and op.attrs.kv_heads == kv_heads
    counts = g.op_counts()
    assert not {"matmul", "sum", "cumsum", "div", "reciprocal", "exp"} & set(counts), counts


@pytest.mark.parametrize(
    "form, reason",
    [
        ("causal_numerator_only", "is not causal (cumsum) linear attention"),
        ("elu_without_one", "no elu(x) + 1 feature map on q and k"),
        ("eps_divide", "adds 0.0001 to the normaliser: linear_attention has no eps"),
    ],
)
def test_near_misses(form, reason):
    g, stats, misses = run(form)
    assert stats["lifted"] == 0 and "linear_attention" not in g.op_counts()
    assert len(misses) == 1 and reason in misses[0], misses


def test_elu_converts_with_alpha():
    """The frontend's elu (where / exp - 1) matches eager for alpha != 1 too."""

    class Elu(nn.Module):
        def forward(self, x):
            return F.elu(x, alpha=0.5) + F.elu(x)

    x = torch.randn(3, 5) * 3
    g = trace(Elu(), {"x": x}, {"x": {}})
    torch.testing.assert_close(run_graph(g, [x])["output"], Elu()(x))
