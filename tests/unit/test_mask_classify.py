"""Mask classification by evaluation: each structure, traced with a dynamic sequence length."""

import pytest
import torch
import torch.nn.functional as F

from t2c.frontends.torch_export import trace
from t2c.ir import run_graph
from t2c.passes import Pipeline


def masked_attention(mask_fn):
    class M(torch.nn.Module):
        def forward(self, q, k, v):
            s = q.shape[2]
            i = torch.arange(s)[:, None]
            j = torch.arange(s)[None, :]
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask_fn(i, j))

    return M()


STRUCTURES = {
    # name: (mask_fn, expected attrs (causal, window, block, global_tokens), expected stats kind)
    "none": (lambda i, j: (i >= 0) | (j >= 0), (False, (-1, -1), 0, 0), "none"),
    "causal": (lambda i, j: j <= i, (True, (-1, -1), 0, 0), "causal"),
    "sliding": (lambda i, j: (j <= i) & (j > i - 5), (True, (4, -1), 0, 0), "sliding"),
    "band": (lambda i, j: (i - j).abs() < 3, (False, (2, 2), 0, 0), "band"),
    "block": (lambda i, j: torch.div(i, 4, rounding_mode="floor") == torch.div(j, 4, rounding_mode="floor"), (False, (-1, -1), 4, 0), "block"),
    "causal_block": (lambda i, j: (i // 4 == j // 4) & (j <= i), (True, (-1, -1), 4, 0), "block"),
    "global_band": (lambda i, j: ((i - j).abs() < 3) | (i < 2) | (j < 2), (False, (2, 2), 0, 2), "global"),
}


def lift(mask_fn, seq=16):
    q = torch.randn(1, 2, seq, 8)
    g = trace(masked_attention(mask_fn), {"q": q, "k": torch.randn(1, 2, seq, 8), "v": torch.randn(1, 2, seq, 8)}, {"q": {2: "seq"}, "k": {2: "seq"}, "v": {2: "seq"}})
    g, records = Pipeline.parse("fold-shapes,cse,lift-attention,dce").run(g, verify_each=True)
    return g, records[2].stats


@pytest.mark.parametrize("name", sorted(STRUCTURES))
def test_structure_is_classified_and_exact(name):
    mask_fn, (causal, window, block, glob), kind = STRUCTURES[name]
    g, stats = lift(mask_fn)
    (node,) = [n for n in g.nodes if n.op == "attention"]
    a = node.attrs
    assert (a.causal, a.window, a.block, a.global_tokens) == (causal, window, block, glob)
    assert len(node.inputs) == 3, "a classified mask is no longer an operand"
    assert stats[f"mask_{kind}"] == 1
    for seq in (3, 13, 40):  # exact at lengths other than the traced one
        q, k, v = (torch.randn(1, 2, seq, 8) for _ in range(3))
        i, j = torch.arange(seq)[:, None], torch.arange(seq)[None, :]
        want = F.scaled_dot_product_attention(q, k, v, attn_mask=mask_fn(i, j))
        got = run_graph(g, {"q": q, "k": k, "v": v})["output"]
        assert (got - want).abs().max().item() <= 1e-5


def test_unstructured_mask_stays_an_operand():
    g, stats = lift(lambda i, j: ((i + j) % 3 != 1) | (i == j))
    (node,) = [n for n in g.nodes if n.op == "attention"]
    assert len(node.inputs) == 4 and stats["mask_unclassified"] == 1


def test_window_beyond_probe_range_is_not_guessed():
    g, stats = lift(lambda i, j: (j <= i) & (j > i - 9000))
    (node,) = [n for n in g.nodes if n.op == "attention"]
    assert len(node.inputs) == 4 and stats["mask_unclassified"] == 1


def test_large_window_is_found_by_probing_past_its_constant():
    mask_fn = lambda i, j: (j <= i) & (j > i - 300)  # noqa: E731
    g, stats = lift(mask_fn)
    (node,) = [n for n in g.nodes if n.op == "attention"]
    assert node.attrs.window == (299, -1) and node.attrs.causal
