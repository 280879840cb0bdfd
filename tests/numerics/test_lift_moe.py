"""lift-moe on real model code: each MoE spelling compiles with -O1 (and -O1,sparsify-moe) to exactly one
`experts` op per MoE layer, and plain ONNX Runtime on model.onnx matches eager PyTorch within 1e-4 at
two shapes, the second so short that some experts receive no token (tokens * K < E).

Models: examples/deepseek_moe.py (the torch.where / index_add_ loop), examples/tiny_moe_transformer.py
(the dense masked form, torch.stack of per-expert modules), and three written here: an expert loop
over GeGLU experts with biases found by `.nonzero()`, a SwiGLU mixture computed with einsum over
stacked weights, and a loop adding each ReLU expert's output times its combine column.
"""

from __future__ import annotations

import os
import sys
from collections import Counter
from pathlib import Path

import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import t2c
import t2c.passes

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from examples import deepseek_moe, tiny_moe_transformer  # noqa: E402

H, I, E, K = 32, 48, 8, 2


def _route(gate: nn.Linear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    weights, ids = torch.topk(torch.softmax(gate(x), dim=-1), K, dim=-1)
    return weights / weights.sum(dim=-1, keepdim=True), ids


class GeGLUBias(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate, self.up, self.down = nn.Linear(H, I), nn.Linear(H, I), nn.Linear(I, H)

    def forward(self, x):
        return self.down(F.gelu(self.gate(x)) * self.up(x))


class GeGLULoop(nn.Module):
    """An expert loop over GeGLU experts with biases; rows found with `.nonzero()`, weights unsqueezed."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(H, E, bias=False)
        self.experts = nn.ModuleList(GeGLUBias() for _ in range(E))

    def forward(self, x):
        b, s, h = x.shape
        tokens = x.reshape(-1, h)
        weights, ids = _route(self.gate, tokens)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            rows = (ids == e).nonzero()
            token, slot = rows[:, 0], rows[:, 1]
            out.index_add_(0, token, expert(tokens[token]) * weights[token, slot].unsqueeze(-1))
        return out.reshape(b, s, h)


class EinsumSwiGLU(nn.Module):
    """Every expert on every token through einsum over stacked weights, combined by the top-k."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(H, E, bias=False)
        self.w_gate = nn.Parameter(torch.randn(E, H, I) * H**-0.5)
        self.w_up = nn.Parameter(torch.randn(E, H, I) * H**-0.5)
        self.w_down = nn.Parameter(torch.randn(E, I, H) * I**-0.5)

    def forward(self, x):
        b, s, h = x.shape
        tokens = x.reshape(-1, h)
        weights, ids = _route(self.gate, tokens)
        combine = torch.zeros(tokens.shape[0], E, dtype=x.dtype).scatter(1, ids, weights)
        hidden = F.silu(torch.einsum("th,ehi->eti", tokens, self.w_gate)) * torch.einsum("th,ehi->eti", tokens, self.w_up)
        y = torch.einsum("eti,eih->eth", hidden, self.w_down)
        return torch.einsum("te,eth->th", combine, y).reshape(b, s, h)


class MaskLoop(nn.Module):
    """out += expert(x) * combine[:, e:e+1] over ReLU experts."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(H, E, bias=False)
        self.experts = nn.ModuleList(nn.Sequential(nn.Linear(H, I), nn.ReLU(), nn.Linear(I, H)) for _ in range(E))

    def forward(self, x):
        b, s, h = x.shape
        tokens = x.reshape(-1, h)
        weights, ids = _route(self.gate, tokens)
        combine = torch.zeros(tokens.shape[0], E).scatter(-1, ids, weights)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            out = out + expert(tokens) * combine[:, e : e + 1]
        return out.reshape(b, s, h)


def _hand_written(cls):
    def build():
        torch.manual_seed(0)
        return cls().eval(), {"x": torch.randn(2, 8, H)}, lambda shape: torch.randn(*shape, H, generator=torch.Generator().manual_seed(5))

    return build


def _decoder(module):
    def build():
        model, (ids,) = module.build()
        vocab = module.VOCAB
        return model, {"input_ids": ids}, lambda shape: torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(5))

    return build


# name -> (build, MoE layers, a short shape with tokens * K < E)
MODELS = {
    "deepseek_moe": (_decoder(deepseek_moe), 1, (1, 3)),  # 16 experts, top-4
    "tiny_moe": (_decoder(tiny_moe_transformer), 1, (1, 1)),  # 4 experts, top-2
    "geglu_loop": (_hand_written(GeGLULoop), 1, (1, 3)),
    "einsum_swiglu": (_hand_written(EinsumSwiGLU), 1, (1, 3)),
    "mask_loop": (_hand_written(MaskLoop), 1, (1, 3)),
}


def _check_onnx(path: str, model: nn.Module, name: str, make, shapes) -> None:
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for shape in shapes:
        x = make(shape)
        (got,) = session.run(None, {name: x.numpy()})
        with torch.no_grad():
            want = model(x)
        err = (torch.from_numpy(got) - want).abs().max().item()
        assert err <= 1e-4, f"{shape}: {err}"


@pytest.mark.parametrize("passes", ["-O1", "-O1,sparsify-moe"])
@pytest.mark.parametrize("name", list(MODELS))
def test_lifted_moe_matches_eager(name, passes, tmp_path):
    build, layers, short = MODELS[name]
    model, examples, make = build()
    out = str(tmp_path / name)
    compiled = t2c.compile(model, examples, passes=passes, out=out)
    assert compiled.ok is True
    counts = compiled.report["op_counts"]["final"]
    assert counts.get("experts") == layers, counts
    assert "nonzero" not in counts and "index_add" not in counts  # the loop is gone, not kept beside the op
    dispatch = {n.attrs.dispatch for n in t2c.ir.parse_graph(open(os.path.join(out, "model.t2c")).read()).nodes if n.op == "experts"}
    sparse = "sparsify-moe" in str(t2c.passes.Pipeline.from_spec(passes))  # -O1 may hold it too
    assert dispatch == {"sparse" if sparse else "dense"}
    _check_onnx(os.path.join(out, "model.onnx"), model, next(iter(examples)), make, [(2, 16), short])


def test_expert_loop_compiles_without_lifting(tmp_path):
    """-O0 keeps the torch.where loop: data-dependent row counts all the way to ONNX (NonZero, ScatterND)."""
    build, _, short = MODELS["deepseek_moe"]
    model, examples, make = build()
    out = str(tmp_path / "o0")
    compiled = t2c.compile(model, examples, passes="-O0", out=out)
    assert compiled.ok is True
    counts = compiled.report["op_counts"]["final"]
    assert counts["nonzero"] == deepseek_moe.NUM_EXPERTS and "experts" not in counts
    ops = Counter(n.op_type for n in onnx.load(os.path.join(out, "model.onnx")).graph.node)
    assert ops["NonZero"] == deepseek_moe.NUM_EXPERTS and ops["ScatterND"] == deepseek_moe.NUM_EXPERTS
    _check_onnx(os.path.join(out, "model.onnx"), model, "input_ids", make, [(2, 16), short])
