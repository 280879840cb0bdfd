"""A small DeepSeekMoE-style decoder written the way tutorials and papers write it.

Fine-grained experts (16 small SwiGLU experts, each token routed to 4 of them by a
softmax gate, the top-4 weights renormalised), two shared experts every token
passes through, and the routed experts run by a loop over experts that gathers
each expert's tokens with `torch.where(idx == e)` and adds the weighted results
back with `index_add_` (DeepSeekMoE, Dai et al. 2024). Attention is causal with
RoPE and grouped-query heads; norms are RMSNorm written out.

    t2c compile examples/deepseek_moe.py:build -o deepseek-moe/
    t2c compile examples/deepseek_moe.py:build --passes -O0 -o deepseek-moe-unlifted/   # the loop kept as nonzero/index_add

`build()` is a t2c model factory: it returns `(model, example_inputs)`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 512
HIDDEN = 128
NUM_LAYERS = 2
NUM_HEADS = 4
NUM_KV_HEADS = 2
HEAD_DIM = 32
NUM_EXPERTS = 16
TOP_K = 4
EXPERT_INTERMEDIATE = 64
NUM_SHARED_EXPERTS = 2
DENSE_INTERMEDIATE = 256  # the first layer's MLP is dense, as in DeepSeekMoE
ROPE_THETA = 10000.0
EPS = 1e-6


class RMSNorm(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS))


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(HIDDEN, NUM_HEADS * HEAD_DIM, bias=False)
        self.kv_proj = nn.Linear(HIDDEN, 2 * NUM_KV_HEADS * HEAD_DIM, bias=False)
        self.o_proj = nn.Linear(NUM_HEADS * HEAD_DIM, HIDDEN, bias=False)
        inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, NUM_HEADS, HEAD_DIM).transpose(1, 2)
        k, v = self.kv_proj(x).view(b, s, 2, NUM_KV_HEADS, HEAD_DIM).permute(2, 0, 3, 1, 4)
        freqs = torch.outer(torch.arange(s, dtype=torch.float32), self.inv_freq)
        emb = torch.cat((freqs, freqs), dim=-1)
        q = q * emb.cos() + rotate_half(q) * emb.sin()
        k = k * emb.cos() + rotate_half(k) * emb.sin()
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, NUM_HEADS * HEAD_DIM))


class Expert(nn.Module):
    """One SwiGLU FFN: down(silu(gate(x)) * up(x))."""

    def __init__(self, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(HIDDEN, intermediate, bias=False)
        self.up_proj = nn.Linear(HIDDEN, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, HIDDEN, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DeepSeekMoE(nn.Module):
    """Shared experts on every token, plus the top-k of fine-grained routed experts."""

    def __init__(self):
        super().__init__()
        self.gate = nn.Linear(HIDDEN, NUM_EXPERTS, bias=False)
        self.experts = nn.ModuleList(Expert(EXPERT_INTERMEDIATE) for _ in range(NUM_EXPERTS))
        self.shared_experts = nn.ModuleList(Expert(EXPERT_INTERMEDIATE) for _ in range(NUM_SHARED_EXPERTS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        tokens = x.reshape(-1, h)
        scores = F.softmax(self.gate(tokens), dim=-1)
        weights, idx = torch.topk(scores, TOP_K, dim=-1)
        weights = weights / weights.sum(dim=-1, keepdim=True)
        routed = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            token, slot = torch.where(idx == e)
            routed.index_add_(0, token, expert(tokens[token]) * weights[token, slot, None])
        shared = sum(expert(tokens) for expert in self.shared_experts)
        return (routed + shared).reshape(b, s, h)


class Block(nn.Module):
    def __init__(self, moe: bool):
        super().__init__()
        self.attn_norm = RMSNorm(HIDDEN)
        self.attn = Attention()
        self.mlp_norm = RMSNorm(HIDDEN)
        self.mlp = DeepSeekMoE() if moe else Expert(DENSE_INTERMEDIATE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class DeepSeekMoEDecoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, HIDDEN)
        self.layers = nn.ModuleList(Block(moe=i > 0) for i in range(NUM_LAYERS))
        self.norm = RMSNorm(HIDDEN)
        self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))


def build(batch: int = 2, seq: int = 16) -> tuple[nn.Module, tuple[torch.Tensor]]:
    """The model in eval mode with seeded weights, and example input_ids [batch, seq]."""
    torch.manual_seed(0)
    model = DeepSeekMoEDecoder().eval()
    input_ids = torch.randint(0, VOCAB, (batch, seq), generator=torch.Generator().manual_seed(1))
    return model, (input_ids,)
