"""A tiny decoder-only transformer with grouped-query attention, RoPE and one MoE layer.

Written in plain PyTorch so it reads as a teaching example and exercises the
parts of t2c that real models need: RMSNorm spelled out with torch ops (for
fuse-norm), rotary embeddings in the rotate-half form (for fuse-rope),
grouped-query attention through `scaled_dot_product_attention` with the KV
heads repeated by expand + reshape (for lift-attention), and a top-2-of-4
mixture-of-experts MLP (for the MoE passes).

    python examples/tiny_moe_transformer.py --out examples/build/tiny_moe.pt
    t2c compile examples/tiny_moe_transformer.py:build

`build()` is a t2c model factory: it returns `(model, example_inputs)`.
"""

from __future__ import annotations

import argparse
import pathlib

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 256
HIDDEN = 128
NUM_LAYERS = 2
NUM_HEADS = 8
NUM_KV_HEADS = 2
HEAD_DIM = 16
INTERMEDIATE = 256
EXPERT_INTERMEDIATE = 128
NUM_EXPERTS = 4
TOP_K = 2
ROPE_THETA = 10000.0
EPS = 1e-6


class RMSNorm(nn.Module):
    """x / rms(x) * weight, written out so the traced graph shows the pattern fuse-norm matches."""

    def __init__(self, dim: int, eps: float = EPS):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


class Attention(nn.Module):
    """Causal grouped-query self-attention with rotary position embeddings."""

    def __init__(self):
        super().__init__()
        self.q_proj = nn.Linear(HIDDEN, NUM_HEADS * HEAD_DIM, bias=False)
        self.k_proj = nn.Linear(HIDDEN, NUM_KV_HEADS * HEAD_DIM, bias=False)
        self.v_proj = nn.Linear(HIDDEN, NUM_KV_HEADS * HEAD_DIM, bias=False)
        self.o_proj = nn.Linear(NUM_HEADS * HEAD_DIM, HIDDEN, bias=False)
        # A buffer, not a parameter: it is fixed, and non-persistent so state dicts stay weights-only.
        inv_freq = 1.0 / (ROPE_THETA ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float32) / HEAD_DIM))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, _ = x.shape
        q = self.q_proj(x).view(batch, seq, NUM_HEADS, HEAD_DIM).transpose(1, 2)
        k = self.k_proj(x).view(batch, seq, NUM_KV_HEADS, HEAD_DIM).transpose(1, 2)
        v = self.v_proj(x).view(batch, seq, NUM_KV_HEADS, HEAD_DIM).transpose(1, 2)

        # cos/sin from the sequence length, so the traced graph works for any seq.
        positions = torch.arange(seq, device=x.device, dtype=torch.float32)
        freqs = torch.outer(positions, self.inv_freq)  # [seq, head_dim/2]
        emb = torch.cat((freqs, freqs), dim=-1)  # [seq, head_dim]
        cos, sin = emb.cos().to(x.dtype), emb.sin().to(x.dtype)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin

        # Repeat each KV head for its group of query heads: [b, kv, 1, s, d] -> [b, kv*g, s, d].
        groups = NUM_HEADS // NUM_KV_HEADS
        k = k[:, :, None].expand(batch, NUM_KV_HEADS, groups, seq, HEAD_DIM).reshape(batch, NUM_HEADS, seq, HEAD_DIM)
        v = v[:, :, None].expand(batch, NUM_KV_HEADS, groups, seq, HEAD_DIM).reshape(batch, NUM_HEADS, seq, HEAD_DIM)

        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(out.transpose(1, 2).reshape(batch, seq, NUM_HEADS * HEAD_DIM))


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)), the MLP of Llama-style models."""

    def __init__(self, hidden: int, intermediate: int):
        super().__init__()
        self.gate_proj = nn.Linear(hidden, intermediate, bias=False)
        self.up_proj = nn.Linear(hidden, intermediate, bias=False)
        self.down_proj = nn.Linear(intermediate, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoE(nn.Module):
    """Top-k routed mixture of SwiGLU experts, in a dense form that torch.export traces.

    Every expert runs on every token and the results are combined with a dense
    [tokens, experts] weight matrix that is zero outside each token's top-k.
    That keeps every shape independent of the routing (no nonzero, boolean
    indexing or loops over tokens), so the model exports with dynamic batch
    and sequence dims. t2c's MoE passes recognise this dense form, lift it to
    the `experts` op (lift-moe) and turn it into sparse dispatch (sparsify-moe),
    where each expert only sees the tokens routed to it.
    """

    def __init__(self):
        super().__init__()
        self.router = nn.Linear(HIDDEN, NUM_EXPERTS, bias=False)
        self.experts = nn.ModuleList(SwiGLU(HIDDEN, EXPERT_INTERMEDIATE) for _ in range(NUM_EXPERTS))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, seq, hidden = x.shape
        h = x.reshape(batch * seq, hidden)
        probs = torch.softmax(self.router(h), dim=-1)  # [tokens, experts]
        topk_weights, topk_idx = torch.topk(probs, TOP_K, dim=-1)
        topk_weights = topk_weights / topk_weights.sum(dim=-1, keepdim=True)
        combine = torch.zeros_like(probs).scatter(-1, topk_idx, topk_weights)  # [tokens, experts]
        expert_out = torch.stack([expert(h) for expert in self.experts], dim=1)  # [tokens, experts, hidden]
        out = (combine.unsqueeze(-1) * expert_out).sum(dim=1)
        return out.reshape(batch, seq, hidden)


class Block(nn.Module):
    """Pre-norm decoder block: x + attn(norm(x)), then + mlp(norm(x))."""

    def __init__(self, use_moe: bool):
        super().__init__()
        self.input_layernorm = RMSNorm(HIDDEN)
        self.self_attn = Attention()
        self.post_attention_layernorm = RMSNorm(HIDDEN)
        self.mlp = MoE() if use_moe else SwiGLU(HIDDEN, INTERMEDIATE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x))
        return x + self.mlp(self.post_attention_layernorm(x))


class TinyMoETransformer(nn.Module):
    """Embedding, two decoder blocks (the second with an MoE MLP), final norm, LM head."""

    def __init__(self):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, HIDDEN)
        self.layers = nn.ModuleList(Block(use_moe=(i == NUM_LAYERS - 1)) for i in range(NUM_LAYERS))
        self.norm = RMSNorm(HIDDEN)
        self.lm_head = nn.Linear(HIDDEN, VOCAB, bias=False)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        x = self.embed_tokens(input_ids)
        for layer in self.layers:
            x = layer(x)
        return self.lm_head(self.norm(x))  # [batch, seq, vocab]


def build() -> tuple[nn.Module, tuple[torch.Tensor]]:
    """The model in eval mode with seeded weights, and example input_ids of shape [2, 16]."""
    torch.manual_seed(0)
    model = TinyMoETransformer().eval()
    input_ids = torch.randint(0, VOCAB, (2, 16), dtype=torch.int64)
    return model, (input_ids,)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="examples/build/tiny_moe.pt", help="where to torch.save the model")
    args = parser.parse_args(argv)
    model, (input_ids,) = build()
    path = pathlib.Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"model": model, "example_inputs": {"input_ids": input_ids}}, path)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"wrote {path}: tiny MoE transformer ({n_params} params), example input_ids {list(input_ids.shape)}")


if __name__ == "__main__":
    # Pickled modules name their classes by module; classes defined in `__main__`
    # could not be unpickled anywhere else. Import this file as
    # `examples.tiny_moe_transformer` so the saved model loads from the repository root.
    import sys

    sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
    from examples.tiny_moe_transformer import main as _main

    _main()
