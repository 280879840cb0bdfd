"""Experts modules without transformers' decorator, found by their call and described by search.

Enumerated from the installed library (every nn.Module class whose forward takes the
experts call and that the decorator does not mark), built standalone from the permissive
config of test_hf_experts_capture.py; plus hand-written modules in the shapes papers and
tutorials use (stacked [E*I, H] matrices, [E, H, I] tensors). Each must be reproduced by the
captured forward on a routing the probe never saw, or be one t2c knowingly leaves alone.
"""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

from t2c.frontends.experts_search import has_experts_call, search
from t2c.frontends.hf_experts import _captured_forward, captured_experts, is_experts_module

from test_hf_experts_capture import PermissiveConfig, modeling_classes  # noqa: E402  (tests/unit is on sys.path)

class Config(PermissiveConfig):
    """The permissive config, plus the fields these classes read in a shape of their own."""

    ffn_act_fn = {"name": "silu"}  # DBRX: a dict naming the activation
    zero_expert_num = 2  # Longcat-Flash: identity experts after the routed ones


# Not one of the experts op's functions: ids past the routed experts are identity ("zero") experts.
NOT_DESCRIBED = {"LongcatFlashExperts": "identity experts"}


def undecorated_classes() -> list[type]:
    """Modules of the installed transformers with the experts call that the decorator does not mark."""
    return [cls for cls in modeling_classes() if issubclass(cls, nn.Module) and has_experts_call(cls)
            and not hasattr(cls.forward, "__wrapped__")]


CLASSES = undecorated_classes()


def routing(experts: int, hidden: int, tokens: int = 11, seed: int = 3):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, hidden, generator=gen)
    idx = torch.stack([torch.randperm(experts, generator=gen)[:2] for _ in range(tokens)])
    return x, idx, torch.rand(tokens, 2, generator=gen)


def assert_captured_matches(module: nn.Module, experts: int, hidden: int) -> None:
    found = search(module)
    assert found is not None, f"{type(module).__name__}: no description found"
    module.register_buffer("_w_up", found.w_up)
    module.register_buffer("_w_down", found.w_down)
    forward = _captured_forward(module, found.attrs, lambda m: (m._w_up, m._w_down, None, None))
    x, idx, w = routing(experts, hidden)
    with torch.no_grad():
        want = module(x, idx, w).reshape(x.shape)
        got = forward(x, idx, w)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_the_library_has_undecorated_experts():
    assert {"DbrxExperts", "LongcatFlashExperts"} <= {c.__name__ for c in CLASSES}


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_undecorated_experts_class(cls):
    torch.manual_seed(0)
    module = cls(Config()).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape))
    assert not is_experts_module(module)
    if cls.__name__ in NOT_DESCRIBED:
        assert search(module) is None, f"{cls.__name__} is now described: update NOT_DESCRIBED"
        return
    # The permissive config gives 8 experts and hidden size 24.
    assert_captured_matches(module, experts=8, hidden=24)


class StackedSwiGLUExperts(nn.Module):
    """Tutorial style: three [E*I, H] matrices, experts looped over those the routing hit."""

    def __init__(self, experts=4, hidden=12, inner=20):
        super().__init__()
        self.e, self.i = experts, inner
        self.w_gate = nn.Parameter(torch.randn(experts * inner, hidden))
        self.w_up = nn.Parameter(torch.randn(experts * inner, hidden))
        self.w_down = nn.Parameter(torch.randn(experts * inner, hidden) / 4)

    def forward(self, hidden_states, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden_states)
        for e in top_k_index.unique().tolist():
            token, slot = torch.where(top_k_index == e)
            rows = slice(e * self.i, (e + 1) * self.i)
            x = hidden_states[token]
            h = F.silu(x @ self.w_gate[rows].T) * (x @ self.w_up[rows].T)
            out.index_add_(0, token, (h @ self.w_down[rows]) * top_k_weights[token, slot, None])
        return out


class TransposedGeluExperts(nn.Module):
    """Papers' layout: x @ W with W [E, H, I] and [E, I, H], ungated GELU."""

    def __init__(self, experts=3, hidden=10, inner=14):
        super().__init__()
        self.w1 = nn.Parameter(torch.randn(experts, hidden, inner))
        self.w2 = nn.Parameter(torch.randn(experts, inner, hidden) / 4)

    def forward(self, hidden_states, top_k_index, top_k_weights):
        out = torch.zeros_like(hidden_states)
        for e in range(self.w1.shape[0]):
            token, slot = torch.where(top_k_index == e)
            y = F.gelu(hidden_states[token] @ self.w1[e]) @ self.w2[e]
            out.index_add_(0, token, y * top_k_weights[token, slot, None])
        return out


class SoftcappedExperts(TransposedGeluExperts):
    """Near miss: a tanh softcap on the expert input is no activation the experts op has."""

    def forward(self, hidden_states, top_k_index, top_k_weights):
        return super().forward(torch.tanh(hidden_states), top_k_index, top_k_weights)


def test_hand_written_stacked_swiglu_is_described():
    torch.manual_seed(0)
    assert_captured_matches(StackedSwiGLUExperts(), experts=4, hidden=12)


def test_hand_written_transposed_gelu_is_described():
    torch.manual_seed(0)
    assert_captured_matches(TransposedGeluExperts(), experts=3, hidden=10)


def test_a_function_the_op_cannot_express_is_left_alone():
    torch.manual_seed(0)
    model = nn.ModuleDict({"experts": SoftcappedExperts()})
    assert search(model["experts"]) is None
    with captured_experts(model) as status:
        assert status == {"experts": "no reading of its weights reproduces it (experts_search.py)"}
        assert "forward" not in vars(model["experts"])


def test_a_module_without_the_experts_call_is_not_searched():
    class Renamed(TransposedGeluExperts):
        def forward(self, x, index, weights):  # the library's call names are the interface
            return super().forward(x, index, weights)

    assert not has_experts_call(Renamed())


def test_capture_adds_buffers_only_while_tracing():
    torch.manual_seed(0)
    model = nn.ModuleDict({"experts": StackedSwiGLUExperts()})
    before = {n for n, _ in model.named_buffers()}
    with captured_experts(model) as status:
        assert status == {"experts": "captured"}
        assert len({n for n, _ in model.named_buffers()} - before) == 2
    assert {n for n, _ in model.named_buffers()} == before and "forward" not in vars(model["experts"])


class TinyMoE(nn.Module):
    """A router and the tutorial-style experts, as a user's model holds them."""

    def __init__(self):
        super().__init__()
        self.router = nn.Linear(12, 4, bias=False)
        self.experts = StackedSwiGLUExperts()

    def forward(self, x):
        logits = self.router(x)
        weights, index = torch.topk(logits.softmax(-1), 2, dim=-1)
        flat = x.reshape(-1, x.shape[-1])
        return self.experts(flat, index.reshape(flat.shape[0], 2), weights.reshape(flat.shape[0], 2)).reshape(x.shape)


def test_a_hand_written_moe_compiles_to_one_experts_op(tmp_path):
    import t2c

    torch.manual_seed(0)
    model = TinyMoE().eval()
    compiled = t2c.compile(model, (torch.randn(2, 9, 12),), passes="-O1", out=str(tmp_path / "moe"))
    assert compiled.ok is True  # the artifact against eager at two shapes
    ops = [n.op for n in compiled.graph.nodes]
    assert ops.count("experts") == 1, ops
    x = torch.randn(3, 5, 12)
    (got,) = compiled(x).values()
    torch.testing.assert_close(torch.as_tensor(got), model(x), atol=1e-4, rtol=1e-4)
