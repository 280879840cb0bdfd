"""Attention computed inside windows, written the way tutorials write it, lifts to one block-local `attention`.

Tokens [B, S, D] are viewed as [B, S//W, W, D] windows, q, k, v are split into heads per window
and attended with matmul/softmax (or SDPA, causal within each window), and the windows are merged
back. lift-attention turns that into one `attention` over the un-windowed sequence with
`block=W` (plus `causal` for the causal form), which ONNX lowers to its blocked form: no
S x S tensor anywhere. Each module is compiled with -O1 at two sequence lengths, multiples of W
(a static sequence), and the ONNX Runtime artifact is checked against eager at two batch sizes.
With `seq` dynamic too, one artifact serves every multiple of W: the trace records the
constraint `seq % 4 == 0` (torch.export needs it to keep `seq // W` windows of a symbolic seq),
and the artifact refuses other lengths at run time.
"""

from __future__ import annotations

import math
import os
from collections import Counter

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import t2c
from t2c.errors import UserError
from t2c.ir import run_graph

W = 4


class WindowAttention(nn.Module):
    """Non-overlapping local attention: each window of W tokens attends to itself only."""

    def __init__(self, dim=32, heads=2, window=W, sdpa_causal=False):
        super().__init__()
        self.h, self.d, self.w, self.sdpa_causal = heads, dim // heads, window, sdpa_causal
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, s, dim = x.shape
        n = s // self.w
        windows = x.view(b, n, self.w, dim)
        q, k, v = self.qkv(windows).chunk(3, dim=-1)
        q, k, v = (t.view(b, n, self.w, self.h, self.d).transpose(2, 3) for t in (q, k, v))  # [B, n, H, W, d]
        if self.sdpa_causal:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            att = (q @ k.transpose(-2, -1)) / math.sqrt(self.d)
            y = att.softmax(dim=-1) @ v
        y = y.transpose(2, 3).reshape(b, s, dim)
        return self.proj(y)


class WindowBlock(nn.Module):
    def __init__(self, layers=2, dim=32, **kw):
        super().__init__()
        self.attn = nn.ModuleList(WindowAttention(dim, **kw) for _ in range(layers))
        self.norm = nn.ModuleList(nn.LayerNorm(dim) for _ in range(layers))

    def forward(self, x):
        for attn, norm in zip(self.attn, self.norm):
            x = norm(x + attn(x))
        return x


@pytest.mark.parametrize("seq", [3 * W, 5 * W])
@pytest.mark.parametrize("form", ["matmul", "sdpa-causal"])
def test_window_attention_lifts_to_block_local(form, seq, tmp_path):
    torch.manual_seed(0)
    model = WindowBlock(sdpa_causal=form == "sdpa-causal").eval()
    x = torch.randn(2, seq, 32)
    out = tmp_path / "out"
    compiled = t2c.compile(model, {"x": x}, passes="-O1", out=str(out), dynamic_dims={"x": {0: "batch"}})
    assert compiled.ok is True
    lift = next(p for p in compiled.report["passes"] if p["pass"] == "lift-attention")
    assert lift["stats"]["lifted"] == 2 and lift["stats"]["windowed"] == 2, lift["stats"]
    attentions = [n for n in compiled.graph.nodes if n.op == "attention"]
    assert len(attentions) == 2
    for n in attentions:
        assert n.attrs.block == W and n.attrs.causal == (form == "sdpa-causal"), n.attrs
        assert n.inputs[0].type.shape[1:3] == (2, seq), n  # heads, the whole (un-windowed) sequence
    assert "softmax" not in compiled.graph.op_counts()

    path = os.path.join(out, "model.onnx")
    ops = Counter(n.op_type for n in onnx.load(path, load_external_data=False).graph.node)
    assert ops.get("Attention", 0) == 0 and ops["Softmax"] == 2, ops  # the blocked form
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        feed = torch.randn(batch, seq, 32, generator=torch.Generator().manual_seed(batch))
        got = torch.from_numpy(session.run(None, {"x": feed.numpy()})[0])
        with torch.no_grad():
            want = model(feed)
        assert (got - want).abs().max().item() <= 1e-5, (batch, seq)


class PreWindowed(nn.Module):
    """Windows cut upstream: x [B, n, W, D] with n dynamic, heads before windows ([B, H, n, W, d])."""

    def __init__(self, dim=32, heads=2):
        super().__init__()
        self.h, self.d = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)

    def forward(self, x):
        b, n, w, dim = x.shape
        q, k, v = (t.view(b, n, w, self.h, self.d).permute(0, 3, 1, 2, 4) for t in self.qkv(x).chunk(3, dim=-1))
        att = torch.softmax(q @ k.transpose(-1, -2) * self.d**-0.5, dim=-1)
        return (att @ v).permute(0, 2, 3, 1, 4).reshape(b, n * w, dim)  # [B, S, D] tokens


def test_dynamic_window_count_one_artifact_two_lengths(tmp_path):
    """With the window count a dynamic dim the sequence is 4*n: one artifact serves every multiple of W."""
    torch.manual_seed(0)
    model = PreWindowed().eval()
    out = tmp_path / "out"
    compiled = t2c.compile(model, {"x": torch.randn(2, 3, W, 32)}, passes="-O1", out=str(out),
                           dynamic_dims={"x": {0: "batch", 1: "windows"}})
    assert compiled.ok is True
    (att,) = [n for n in compiled.graph.nodes if n.op == "attention"]
    assert att.attrs.block == W and str(att.inputs[0].type.shape[2]) == "4*windows", att
    session = ort.InferenceSession(os.path.join(out, "model.onnx"), providers=["CPUExecutionProvider"])
    for batch, n in [(1, 5), (3, 2)]:  # sequences of 20 and 8 tokens
        feed = torch.randn(batch, n, W, 32, generator=torch.Generator().manual_seed(n))
        got = torch.from_numpy(session.run(None, {"x": feed.numpy()})[0])
        with torch.no_grad():
            want = model(feed)
        assert (got - want).abs().max().item() <= 1e-5, (batch, n)


@pytest.mark.parametrize("form", ["matmul", "sdpa-causal"])
def test_dynamic_seq_one_artifact_multiples_of_window(form, tmp_path):
    """seq dynamic: one artifact for 8, 12 and 20 tokens; 10 tokens is refused, never truncated to 2 windows."""
    torch.manual_seed(0)
    model = WindowBlock(sdpa_causal=form == "sdpa-causal").eval()
    out = tmp_path / "out"
    compiled = t2c.compile(model, {"x": torch.randn(2, 3 * W, 32)}, passes="-O1", out=str(out),
                           dynamic_dims={"x": {0: "batch", 1: "seq"}})
    assert compiled.ok is True
    assert str(compiled.graph.inputs[0].type) == "f32[batch,seq,32]"
    assert compiled.graph.constraints == {"seq": W} and compiled.report["constraints"] == ["seq % 4 == 0"]
    assert "constraint seq % 4 == 0" in (out / "model.t2c").read_text()
    assert [c["shape"] for c in compiled.report["validation"]["artifact_vs_ir"]] == ["x=2x12x32", "x=3x20x32"]
    lift = next(p for p in compiled.report["passes"] if p["pass"] == "lift-attention")
    assert lift["stats"]["lifted"] == 2 and lift["stats"]["windowed"] == 2, lift["stats"]
    for n in (n for n in compiled.graph.nodes if n.op == "attention"):
        assert n.attrs.block == W and str(n.inputs[0].type.shape[2]) == "seq", n

    session = ort.InferenceSession(os.path.join(out, "model.onnx"), providers=["CPUExecutionProvider"])
    for batch, seq in [(1, 2 * W), (3, 5 * W)]:
        feed = torch.randn(batch, seq, 32, generator=torch.Generator().manual_seed(seq))
        got = torch.from_numpy(session.run(None, {"x": feed.numpy()})[0])
        with torch.no_grad():
            want = model(feed)
        assert (got - want).abs().max().item() <= 1e-5, (batch, seq)
        assert (compiled(x=feed)["output"] - want).abs().max().item() <= 1e-5, (batch, seq)

    bad = torch.randn(1, 10, 32)
    # The artifact itself: a Reshape named after the constraint fails in plain ONNX Runtime.
    with pytest.raises(Exception, match="must be a multiple of 4"):
        session.run(None, {"x": bad.numpy()})
    # t2c's runner and the interpreter say it in their own words, before running anything.
    with pytest.raises(UserError, match=r"seq = 10, but the graph needs seq % 4 == 0"):
        compiled(x=bad)
    with pytest.raises(UserError, match=r"seq % 4 == 0"):
        run_graph(compiled.graph, {"x": bad})
    with pytest.raises(UserError, match=r"seq % 4 == 0"):
        t2c.load(str(out))(x=bad)
