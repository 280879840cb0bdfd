"""Mamba-2-style chunked scans: pad seq to a multiple of a chunk, view it as chunks, segment-sum with cumsum.

Ten Hugging Face families (bamba, mamba2, nemotron_h, qwen3_next, zamba2, ...) failed the frontend's
self-check on this pattern:

* with fewer tokens than one chunk, torch.export (Dim.AUTO) guards `(seq + pad) // chunk == 1` and
  its cumsum's shape says one chunk: a program valid only for seq <= chunk. The frontend traces
  such a program again at a longer example (`_unpinned`);
* torch writes the padded length `seq + (W - seq % W) % W` and the chunk `(seq + pad) // ((seq + pad) // W)`,
  which sympy could not see are a multiple of W and W: the IR folds `x + Mod(-x, W)` into `W*ceiling(x/W)`;
* a chunk count `seq/8` (a derived dim under `seq % 8 == 0`) plus one made `arange` infer
  `ceiling(seq/8)+1`: with step 1 an arange's length is end - start.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

from t2c.frontends.torch_export import trace
from t2c.ir import run_graph, verify
from t2c.ir.core import dim, dim_floordiv, dim_mul, dims_equal
from t2c.ir.opdefs.creation import ArangeAttrs
from t2c.ir.ops import get_op


class ChunkedSegsum(nn.Module):
    """What `mamba2_chunk_scan` does to its decay before the scan (modeling_bamba.py, reshape_into_chunks and segment_sum)."""

    def __init__(self, chunk: int = 16):
        super().__init__()
        self.chunk = chunk

    def forward(self, x):  # x: [batch, seq, heads]
        seq = x.shape[1]
        pad = (self.chunk - seq % self.chunk) % self.chunk
        x = nn.functional.pad(x, (0, 0, 0, pad))
        x = x.reshape(x.shape[0], -1, self.chunk, x.shape[2]).permute(0, 3, 1, 2)  # [b, h, chunks, chunk]
        a = torch.cumsum(x, dim=-1)
        t = x[..., None].expand(*x.size(), self.chunk)
        t = t.masked_fill(~torch.tril(torch.ones(self.chunk, self.chunk, dtype=torch.bool), diagonal=-1), 0)
        segsum = torch.cumsum(t, dim=-2).masked_fill(~torch.tril(torch.ones(self.chunk, self.chunk, dtype=torch.bool)), -torch.inf)
        return torch.exp(segsum).sum(-1) + a[..., -1:]


def test_padded_length_is_a_multiple_of_the_chunk():
    padded = dim("seq+Mod(15*seq,16)")  # torch: seq + (16 - seq % 16) % 16
    assert str(padded) == "16*ceiling(seq/16)"
    chunks = dim_floordiv(padded, 16)
    assert str(chunks) == "ceiling(seq/16)"
    assert dim_floordiv(padded, chunks) == 16  # torch's way of writing the chunk
    assert dims_equal(dim_mul(chunks, 16), padded)  # reshape's element count
    assert str(dim("floor(seq/16+(Mod(15*seq,16))/16)")) == "ceiling(seq/16)"  # the padded length divided, as torch divides it
    # Not a round-up: left alone.
    assert str(dim("seq+Mod(seq,16)")) == "seq+Mod(seq,16)"
    for s in range(1, 50):
        assert -(-s // 16) * 16 == s + (16 - s % 16) % 16


def test_arange_with_step_one_is_end_minus_start():
    (t,) = get_op("arange").infer([], ArangeAttrs(0, dim("seq/8+1"), 1))
    assert str(t.shape[0]) == "seq/8+1"  # not ceiling(seq/8)+1: the bounds are sizes, integers
    (t,) = get_op("arange").infer([], ArangeAttrs(0, dim("seq"), 2))
    assert str(t.shape[0]) == "ceiling(seq/2)"


@pytest.mark.parametrize("traced", [8, 40])  # shorter than one chunk (torch pins one chunk) and longer
def test_chunked_segsum_traces_for_every_length(traced):
    m = ChunkedSegsum(16).eval()
    g = trace(m, {"x": torch.randn(2, traced, 4)})
    verify(g)
    assert not g.constraints and not g.bounds
    for seq in (1, 8, 16, 17, 40):
        x = torch.randn(3, seq, 4)
        (got,) = run_graph(g, {"x": x}).values()
        torch.testing.assert_close(got, m(x))


class ChunkLoop(nn.Module):
    """A chunked recurrence written as papers write it (Gated DeltaNet's `torch_chunk_gated_delta_rule`):
    a Python loop over the chunks carrying a state from one chunk to the next."""

    def __init__(self, chunk: int = 16):
        super().__init__()
        self.chunk = chunk

    def forward(self, x):  # x: [batch, seq, d]
        seq = x.shape[1]
        pad = (self.chunk - seq % self.chunk) % self.chunk
        x = nn.functional.pad(x, (0, 0, 0, pad))
        chunks = x.reshape(x.shape[0], -1, self.chunk, x.shape[-1])
        state = torch.zeros(x.shape[0], x.shape[-1])
        out = torch.zeros_like(chunks)
        for i in range((seq + pad) // self.chunk):
            out[:, i] = chunks[:, i].cumsum(1) + state[:, None]
            state = state + chunks[:, i].sum(1)
        return out.reshape(x.shape[0], -1, x.shape[-1])[:, :seq]


def test_python_chunk_loop_is_bounded_to_the_chunks_it_unrolled():
    """torch.export unrolls the loop once per chunk and guards `(seq + pad) // 16 == 1`: no length
    breaks that pin, so the program holds for seq <= 16 only, and says so as a constraint the
    interpreter enforces; the padded length is 16 on that range, as torch's later shapes say.
    (Traced at several chunks the pin holds on (32, 48] only, which a bound cannot say: the compile's
    check of the traced IR against eager at its second shape refuses such a program.)"""
    m = ChunkLoop(16).eval()
    g = trace(m, {"x": torch.randn(2, 8, 4)})
    verify(g)
    assert g.constraint_lines() == ["seq <= 16"]
    for seq in (1, 7, 16):
        x = torch.randn(3, seq, 4)
        (got,) = run_graph(g, {"x": x}).values()
        torch.testing.assert_close(got, m(x))
    with pytest.raises(Exception, match="seq <= 16"):
        run_graph(g, {"x": torch.randn(1, 17, 4)})


def test_simplest_form_on_a_pinned_range():
    from t2c.frontends.guard_facts import on_pinned_range

    padded = dim("seq+Mod(15*seq,16)")
    assert on_pinned_range(padded, {"seq": 16}) == 16
    assert str(on_pinned_range(dim("Mod(15*seq,16)"), {"seq": 16})) == "16-seq"  # the padding
    assert on_pinned_range(padded, {"seq": 17}) == padded  # 32 at 17: not one form on [1, 17]
    assert on_pinned_range(padded, {}) == padded  # no bound: unchanged


class MaskedChunks(nn.Module):
    """Reformer's local attention layout: a length check, seq tokens viewed as seq // 4 chunks of
    seq // (seq // 4), a mask input chunked the same way."""

    def forward(self, x, mask):  # x [batch, seq, 8], mask [batch, seq]
        seq = x.shape[1]
        if seq % 4 != 0:
            raise ValueError(f"sequence length {seq} must be a multiple of the chunk length 4")
        chunks = x.reshape(x.shape[0], seq // 4, seq // (seq // 4), 8)
        m = mask.reshape(mask.shape[0], mask.shape[1] // 4, 4, 1)
        return (chunks * m).reshape(x.shape[0], -1, 8) + x


def test_divisible_and_equal_lengths_read_off_the_guards():
    """A program exported with Dim.AUTO (as t2c does when named dims are refused, or a user's `.pt2`):
    torch holds `seq % 4 == 0` and `mask_len // 4 == seq // 4` without merging the two lengths. t2c
    reads seq as 4 * root (the chunk product is seq again) and the two lengths as one."""
    from t2c.frontends.torch_export import trace_exported

    m = MaskedChunks().eval()
    auto = torch.export.Dim.AUTO
    ep = torch.export.export(m, (torch.randn(2, 8, 8), torch.ones(2, 8)), dynamic_shapes=({0: auto, 1: auto}, {0: auto, 1: auto}), strict=False)
    g = trace_exported(ep)
    verify(g)
    (length,) = g.constraints
    assert g.constraint_lines() == [f"{length} % 4 == 0"]
    assert g.inputs[0].type.shape[1] == g.inputs[1].type.shape[1]
    for seq in (4, 12, 32):
        x, mask = torch.randn(3, seq, 8), (torch.rand(3, seq) > 0.3).float()
        (got,) = run_graph(g, dict(zip([v.name for v in g.inputs], (x, mask)))).values()
        torch.testing.assert_close(got, m(x, mask))


class PaddedBlocks(nn.Module):
    """LongT5's local attention layout: ids and mask each padded to whole blocks of 4 and multiplied
    block by block (torch only learns that their block counts agree), under a position table of 32."""

    def __init__(self):
        super().__init__()
        self.pos = nn.Parameter(torch.randn(32, 8))

    def forward(self, x, mask):  # x [batch, seq, 8], mask [batch, seq]
        seq = x.shape[1]
        h = x + self.pos[:seq]
        hb = nn.functional.pad(h, (0, 0, 0, (-seq) % 4)).reshape(h.shape[0], -1, 4, 8)
        mb = nn.functional.pad(mask, (0, (-mask.shape[1]) % 4)).reshape(mask.shape[0], -1, 4, 1)
        return (hb * mb).reshape(h.shape[0], -1, 8)[:, :seq]


def test_alike_labelled_dims_of_one_size_are_one_dim():
    """The position table bounds seq, so torch.export refuses named dims and t2c exports with Dim.AUTO,
    where ids and mask get symbols of their own; both are labelled `seq` with one example size, so
    they are one dim, and the blocks broadcast."""
    m = PaddedBlocks().eval()
    g = trace(m, {"x": torch.randn(2, 7, 8), "mask": torch.ones(2, 7)})
    verify(g)
    assert [str(v.type) for v in g.inputs] == ["f32[batch,seq,8]", "f32[batch,seq]"]
    for seq in (1, 7, 32):
        x, mask = torch.randn(3, seq, 8), (torch.rand(3, seq) > 0.3).float()
        (got,) = run_graph(g, {"x": x, "mask": mask}).values()
        torch.testing.assert_close(got, m(x, mask))
