"""lift-moe on spellings the golden cases do not show: each traced, lifted (or refused for the stated
reason), and the lifted IR run by the interpreter against eager at two token counts, one so small that
some experts receive no token."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from t2c.frontends.torch_export import trace
from t2c.ir import run_graph
from t2c.passes import Pipeline, collect_near_misses

H, I, E, K = 8, 12, 4, 2


def route(gate, x, softmax_after_topk=False):
    if softmax_after_topk:  # Mixtral: top-k of the logits, softmax over the k
        logits, ids = torch.topk(gate(x), K, dim=-1)
        return torch.softmax(logits, dim=-1), ids
    w, ids = torch.topk(torch.softmax(gate(x), dim=-1), K, dim=-1)
    return w / w.sum(-1, keepdim=True), ids


class InterleavedLoop(nn.Module):
    """gate and up interleaved in one projection (gate = h[..., 0::2]), Mixtral-style router."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(H, E, bias=False)
        self.gate_up = nn.ModuleList(nn.Linear(H, 2 * I, bias=False) for _ in range(E))
        self.down = nn.ModuleList(nn.Linear(I, H, bias=False) for _ in range(E))

    def forward(self, x):
        w, ids = route(self.gate, x, softmax_after_topk=True)
        out = torch.zeros_like(x)
        for e in range(E):
            token, slot = torch.where(ids == e)
            h = self.gate_up[e](x[token])
            y = self.down[e](F.silu(h[..., 0::2]) * h[..., 1::2])
            out.index_add_(0, token, y * w[token, slot, None])
        return out


class QuickGeluMask(nn.Module):
    """x * sigmoid(1.702 x) experts, summed with their combine columns (c[:, e].unsqueeze(-1))."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(H, E, bias=False)
        self.fc1 = nn.ModuleList(nn.Linear(H, I) for _ in range(E))
        self.fc2 = nn.ModuleList(nn.Linear(I, H) for _ in range(E))

    def forward(self, x):
        w, ids = route(self.gate, x)
        combine = torch.zeros(x.shape[0], E).scatter(1, ids, w)
        out = 0
        for e in range(E):
            h = self.fc1[e](x)
            out = out + self.fc2[e](h * torch.sigmoid(1.702 * h)) * combine[:, e].unsqueeze(-1)
        return out


class BmmDense(nn.Module):
    """bmm over stacked [E, in, out] weights with biases, combined as (combine.T[..., None] * y).sum(0)."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(H, E, bias=False)
        self.w1, self.b1 = nn.Parameter(torch.randn(E, H, I) / 3), nn.Parameter(torch.randn(E, 1, I))
        self.w2, self.b2 = nn.Parameter(torch.randn(E, I, H) / 3), nn.Parameter(torch.randn(E, 1, H))

    def forward(self, x):
        w, ids = route(self.gate, x)
        combine = torch.zeros(x.shape[0], E).scatter(-1, ids, w)
        xs = x.unsqueeze(0).expand(E, -1, -1)
        y = torch.bmm(F.relu(torch.bmm(xs, self.w1) + self.b1), self.w2) + self.b2
        return (combine.t().unsqueeze(-1) * y).sum(0)


class MissingExpert(InterleavedLoop):
    """The loop skips the last expert: tokens routed there would get nothing, which experts does not say."""

    def forward(self, x):
        w, ids = route(self.gate, x, softmax_after_topk=True)
        out = torch.zeros_like(x)
        for e in range(E - 1):
            token, slot = torch.where(ids == e)
            h = self.gate_up[e](x[token])
            out.index_add_(0, token, self.down[e](F.silu(h[..., 0::2]) * h[..., 1::2]) * w[token, slot, None])
        return out


class TwoRouters(QuickGeluMask):
    """Ids from one router's top-k, weights from another softmax: nothing ties the weights to the ids."""

    def __init__(self):
        super().__init__()
        self.other = nn.Linear(H, E, bias=False)

    def forward(self, x):
        _, ids = route(self.gate, x)
        w = torch.softmax(self.other(x), dim=-1)[:, :K]
        combine = torch.zeros(x.shape[0], E).scatter(1, ids, w)
        out = 0
        for e in range(E):
            h = self.fc1[e](x)
            out = out + self.fc2[e](h * torch.sigmoid(1.702 * h)) * combine[:, e].unsqueeze(-1)
        return out


@pytest.mark.parametrize(
    "cls, attrs",
    [
        (InterleavedLoop, {"activation": "silu", "gated": True, "split": "interleaved", "layout": "out_in"}),
        (QuickGeluMask, {"activation": "silu", "alpha": 1.702, "gated": False, "layout": "out_in"}),
        (BmmDense, {"activation": "relu", "gated": False, "layout": "in_out"}),
    ],
)
def test_lifted_and_exact(cls, attrs):
    torch.manual_seed(0)
    m = cls().eval()
    g = trace(m, {"x": torch.randn(6, H)}, {"x": {0: "tokens"}})
    g, _ = Pipeline.parse("fold-shapes,cse,lift-moe,dce").run(g, verify_each=True)
    ops = [n for n in g.nodes if n.op == "experts"]
    assert len(ops) == 1 and len(g.nodes) < 12, [n.op for n in g.nodes]
    for key, want in attrs.items():
        assert getattr(ops[0].attrs, key) == pytest.approx(want) if isinstance(want, float) else getattr(ops[0].attrs, key) == want
    for tokens in (7, 1):  # 1 token, K=2 of E=4: two experts get nothing
        x = torch.randn(tokens, H)
        with torch.no_grad():
            torch.testing.assert_close(run_graph(g, {"x": x})["output"], m(x), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "cls, reason",
    [
        (MissingExpert, "the loop covers experts [0, 1, 2], the router chooses among 4"),
        (TwoRouters, "the expert weights are computed from slice"),
    ],
)
def test_refused_with_a_reason(cls, reason):
    torch.manual_seed(0)
    g = trace(cls().eval(), {"x": torch.randn(6, H)}, {"x": {0: "tokens"}})
    with collect_near_misses() as misses:
        g, _ = Pipeline.parse("fold-shapes,cse,lift-moe").run(g, verify_each=True)
    assert not any(n.op == "experts" for n in g.nodes)
    assert any(reason in m for m in misses), misses
