"""Conversions the coverage sweep's architectures needed, each in the general form a model writes it.

`t.max().item()` in assertions (XLM, Flaubert) and as a size (Reformer's axial positions),
tails counted from a symbolic end (`x[:, -seq:]`), p-norms (YOSO), arange with float bounds
(Funnel, XLNet), integer clamps (ProphetNet), sliding windows (`unfold`: BLT's byte-group
hashes, whose integer pow and sum must wrap exactly like torch), pooling (Canine, Funnel),
scatter with a reduction (TAPAS's segment minimum), boolean-mask reads and writes (X-MOD's
language adapters) and integer-index assignment. Each traces with dynamic batch and seq,
matches eager at two shapes in the IR interpreter, and compiles to validated ONNX.
"""

import pytest
import torch
import torch.nn.functional as F

import t2c
from t2c.frontends.torch_export import trace
from t2c.ir import run_graph


class LengthAsserts(torch.nn.Module):
    """XLM's input checks: `.item()` feeding assertions only; the tail `x[:, -seq:]`."""

    def forward(self, x, lengths):
        slen = x.shape[1]
        torch._check(lengths.max().item() <= slen)  # XLM: `assert` (pytest rewrites asserts in test files)
        tail = x[:, -slen:]
        return tail * 2 + x.min() + lengths.max()


class ItemAsSize(torch.nn.Module):
    """Reformer's axial positions: as many table columns as the largest position needs."""

    def __init__(self):
        super().__init__()
        self.table = torch.nn.Parameter(torch.randn(3, 16))

    def forward(self, x, lengths):
        top = lengths.max().item()
        torch._check(top >= 0)
        torch._check(top < 64)
        cols = (top + 4) // 4
        used = self.table[:, :cols]
        return x * used.sum() + used.reshape(-1)[:1]


class Norms(torch.nn.Module):
    def forward(self, x, lengths):
        y = F.normalize(x, dim=-1) + torch.linalg.vector_norm(x, ord=3, dim=1, keepdim=True)
        y = y + x.norm(dim=-1, keepdim=True) + torch.linalg.vector_norm(x, ord=1, dim=(1, 2), keepdim=True)
        y = y + torch.linalg.vector_norm(x, ord=float("inf"), dim=-1, keepdim=True) + torch.linalg.vector_norm(x, ord=0)
        return y + torch.acos(x.clamp(-0.9, 0.9)) + torch.expm1(x) + torch.sign(x) * torch.atan(x)


class FloatArange(torch.nn.Module):
    """Funnel's and XLNet's position tables: arange with float bounds, integer or float results."""

    def forward(self, x, lengths):
        s = x.shape[1]
        a = torch.arange(0, s, 1.0, dtype=torch.int64).float()
        b = torch.arange(-s * 2, s * 2, 1.0)
        c = torch.arange(0.5, s, 0.75)
        d = torch.arange(s, -s, -1.0)
        return x + a.sum() + b.sum() + c.sum() + d.sum()


class IntClamp(torch.nn.Module):
    def forward(self, x, lengths):
        rel = lengths[:, None] - torch.arange(x.shape[1])
        return x + (torch.clamp(rel, 0) + torch.clamp(rel, min=-2, max=3) + torch.clamp(rel, max=1.5))[..., None]


class Windows(torch.nn.Module):
    """unfold, max and average pooling (ceil mode too), scatter_reduce: each along seq where torch keeps it dynamic."""

    def forward(self, x, lengths):
        w = x.unfold(1, 3, 2).sum(-1)  # [b, (s - 3) // 2 + 1, d, 3] -> [b, n, d]
        # Pooling over the static last dim (torch.export specialises a pooled dim), seq as channels.
        p = F.max_pool1d(x, 3, 1, 1) + F.avg_pool1d(x, 3, 1, 1, count_include_pad=False)
        q = F.avg_pool2d(x[:, None, :, :3], (1, 2), stride=(1, 2), ceil_mode=True)
        segments = (torch.arange(x.shape[1]) // 2).expand(x.shape[0], -1)
        lowest = torch.zeros(x.shape[0], 8).scatter_reduce(1, segments, x[..., 0], "amin", include_self=False)
        return w.sum((1, 2)) + p.sum((1, 2)) + q.sum((1, 2, 3)) + lowest.sum(-1)


class ByteGroupHash(torch.nn.Module):
    """BLT's hash: windows of ids times powers of a prime, summed; int64 products wrap."""

    def forward(self, x, lengths):
        ids = (x[..., 0].abs() * 1000).long()
        padded = torch.cat([torch.zeros(ids.shape[0], 2, dtype=torch.int64), ids], dim=1)
        windows = padded.unfold(1, 3, 1)
        powers = torch.tensor(1000000007, dtype=torch.int64) ** torch.arange(3)
        return (windows * powers).sum(-1) % 30000


class MaskedAdapters(torch.nn.Module):
    """X-MOD's language adapters: rows picked by a boolean mask, transformed, written back."""

    def __init__(self):
        super().__init__()
        self.adapters = torch.nn.ModuleList([torch.nn.Linear(4, 4) for _ in range(3)])

    def forward(self, x, lengths):
        lang = lengths[:, None].expand(-1, x.shape[1]) % 3
        out = torch.zeros_like(x)
        for i, adapter in enumerate(self.adapters):
            mask = lang == i
            out[mask] = adapter(x[mask])
        out[x[..., 0] > 1] += 1.0  # a broadcast value, read-modify-write
        first = x.clone()
        first[:, torch.tensor([0, -1])] = x[:, :2] * 3  # integer indices, one from the end
        return out + first + x.transpose(0, 1)[(lang == 0).transpose(0, 1)].sum()


MODULES = [LengthAsserts(), ItemAsSize(), Norms(), FloatArange(), IntClamp(), Windows(), ByteGroupHash(), MaskedAdapters()]


def _inputs(b, s):
    gen = torch.Generator().manual_seed(b * 100 + s)
    return {"x": torch.randn(b, s, 4, generator=gen), "lengths": torch.randint(1, s + 1, (b,), generator=gen)}


@pytest.mark.parametrize("module", MODULES, ids=lambda m: type(m).__name__)
def test_conversion_matches_eager_and_compiles(module):
    graph = trace(module, _inputs(2, 8))
    for b, s in [(2, 8), (3, 11)]:
        got = list(run_graph(graph, _inputs(b, s)).values())[0]
        with torch.no_grad():
            want = module(**_inputs(b, s))
        assert got.dtype == want.dtype and got.shape == want.shape
        if want.dtype.is_floating_point:
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
        else:
            assert torch.equal(got, want)
    assert t2c.compile(module, _inputs(2, 8), passes="-O1").ok is True
