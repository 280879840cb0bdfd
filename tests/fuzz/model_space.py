"""The fuzzer's model space: a small frozen `Spec` of a transformer, a hypothesis strategy over
specs, and a builder that turns a spec into a plain PyTorch module written the way papers and
tutorials write it (nn.Linear, SDPA or softmax(QK^T)V written out, RoPE as rotate-half or
interleaved pairs, RMSNorm written out, a torch.where / index_add_ expert loop), with weights
drawn from the spec's seed, so a spec alone reproduces the model bit for bit.

    spec = Spec(...); model, inputs = build(spec); fresh = inputs_at(spec, batch=3, seq=11)
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from hypothesis import strategies as st
from torch import nn

VOCAB = 64
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass(frozen=True)
class Spec:
    """One model of the space. Every field is plain data (JSON round-trips it: `to_json` / `from_json`)."""

    seed: int = 0
    layers: int = 1
    hidden: int = 32
    heads: int = 2
    kv_heads: int = 2          # divides heads (GQA / MQA when fewer)
    head_dim: int = 16
    norm: str = "rms"          # rms (written out) | layer (nn.LayerNorm)
    placement: str = "pre"     # pre | post (norm after the residual add)
    rope: str = "none"         # none | rotate_half | interleaved
    rotary_fraction: float = 1.0  # 1.0 | 0.5 (partial rotary: the first half of each head rotates)
    activation: str = "silu"   # gelu | gelu_tanh | silu | relu
    gated: bool = True         # act(gate(x)) * up(x), else act(up(x))
    experts: int = 0           # 0: dense MLP; 2-4: a routed MoE
    top_k: int = 1
    shared_expert: bool = False
    mask: str = "causal"       # causal | none | padding | causal+padding
    attn_impl: str = "sdpa"    # sdpa | eager (matmul, scale, mask, softmax, matmul)
    bias: bool = False         # q/k/v/o and MLP linears with biases
    batch: int = 1
    seq: int = 5
    dtype: str = "float32"     # float32 | float16 | bfloat16

    @property
    def padded(self) -> bool:
        return "padding" in self.mask

    @property
    def causal(self) -> bool:
        return "causal" in self.mask

    @property
    def rotary_dim(self) -> int:
        return int(self.head_dim * self.rotary_fraction) // 2 * 2

    @property
    def size(self) -> int:
        """A rough cost of one compile (for the backends whose runtime is slow)."""
        return self.layers * self.batch * self.seq * self.hidden * max(1, self.experts)

    def to_json(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, d: dict) -> "Spec":
        return cls(**d)

    def __str__(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True)


@st.composite
def specs(draw) -> Spec:
    """Tiny transformers (hidden <= 64, <= 2 layers, seq <= 13) over every axis of the space."""
    heads = draw(st.sampled_from([1, 2, 3, 4]))
    kv_heads = draw(st.sampled_from([d for d in range(1, heads + 1) if heads % d == 0]))
    head_dim = draw(st.sampled_from([8, 12, 16]))
    rope = draw(st.sampled_from(["none", "rotate_half", "interleaved"]))
    experts = draw(st.sampled_from([0, 0, 2, 3, 4]))
    return Spec(
        seed=draw(st.integers(0, 2**16)),
        layers=draw(st.integers(1, 2)),
        hidden=draw(st.sampled_from([16, 24, 32, 48, 64])),
        heads=heads,
        kv_heads=kv_heads,
        head_dim=head_dim,
        norm=draw(st.sampled_from(["rms", "layer"])),
        placement=draw(st.sampled_from(["pre", "post"])),
        rope=rope,
        rotary_fraction=draw(st.sampled_from([1.0, 0.5])) if rope != "none" else 1.0,
        activation=draw(st.sampled_from(["gelu", "gelu_tanh", "silu", "relu"])),
        gated=draw(st.booleans()),
        experts=experts,
        top_k=draw(st.integers(1, min(2, experts))) if experts else 1,
        shared_expert=draw(st.booleans()) if experts else False,
        mask=draw(st.sampled_from(["causal", "none", "padding", "causal+padding"])),
        attn_impl=draw(st.sampled_from(["sdpa", "eager"])),
        bias=draw(st.booleans()),
        batch=draw(st.integers(1, 3)),
        seq=draw(st.integers(2, 13)),
        dtype=draw(st.sampled_from(["float32", "float32", "float16", "bfloat16"])),
    )


# ---- the model, written as a tutorial would -------------------------------------------------


def _act(name: str, x: torch.Tensor) -> torch.Tensor:
    if name == "gelu":
        return F.gelu(x)
    if name == "gelu_tanh":
        return F.gelu(x, approximate="tanh")
    if name == "silu":
        return F.silu(x)
    return F.relu(x)


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(x.dtype)


def _norm(spec: Spec) -> nn.Module:
    return RMSNorm(spec.hidden) if spec.norm == "rms" else nn.LayerNorm(spec.hidden, eps=1e-5)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def rotate_interleaved(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((-x2, x1), dim=-1).flatten(-2)


class Rotary(nn.Module):
    """cos/sin from inverse frequencies at positions 0..S-1, applied to the first `rotary_dim` dims."""

    def __init__(self, spec: Spec):
        super().__init__()
        self.kind, self.rd = spec.rope, spec.rotary_dim
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, self.rd, 2, dtype=torch.float32) / self.rd))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = q.shape[-2]
        freqs = torch.outer(torch.arange(s, device=q.device, dtype=torch.float32), self.inv_freq.float())
        if self.kind == "rotate_half":
            emb, rot = torch.cat((freqs, freqs), dim=-1), rotate_half
        else:
            emb, rot = freqs.repeat_interleave(2, dim=-1), rotate_interleaved
        cos, sin = emb.cos().to(q.dtype), emb.sin().to(q.dtype)

        def apply(x):
            if self.rd == x.shape[-1]:
                return x * cos + rot(x) * sin
            xr, xp = x[..., : self.rd], x[..., self.rd:]
            return torch.cat((xr * cos + rot(xr) * sin, xp), dim=-1)

        return apply(q), apply(k)


class Attention(nn.Module):
    def __init__(self, spec: Spec):
        super().__init__()
        self.spec = spec
        h, d = spec.hidden, spec.head_dim
        self.q_proj = nn.Linear(h, spec.heads * d, bias=spec.bias)
        self.k_proj = nn.Linear(h, spec.kv_heads * d, bias=spec.bias)
        self.v_proj = nn.Linear(h, spec.kv_heads * d, bias=spec.bias)
        self.o_proj = nn.Linear(spec.heads * d, h, bias=spec.bias)
        self.rotary = Rotary(spec) if spec.rope != "none" else None

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        sp = self.spec
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, sp.heads, sp.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, s, sp.kv_heads, sp.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, s, sp.kv_heads, sp.head_dim).transpose(1, 2)
        if self.rotary is not None:
            q, k = self.rotary(q, k)
        if sp.kv_heads != sp.heads:  # repeat_kv, as Hugging Face writes it
            n = sp.heads // sp.kv_heads
            k = k[:, :, None].expand(b, sp.kv_heads, n, s, sp.head_dim).reshape(b, sp.heads, s, sp.head_dim)
            v = v[:, :, None].expand(b, sp.kv_heads, n, s, sp.head_dim).reshape(b, sp.heads, s, sp.head_dim)
        allowed = None  # bool [B or 1, 1, S, S]: which keys each query may see
        if sp.causal and sp.padded:
            causal = torch.ones(s, s, dtype=torch.bool, device=x.device).tril()
            allowed = causal[None, None] & attention_mask[:, None, None, :].bool()
        elif sp.padded:
            allowed = attention_mask[:, None, None, :].bool()
        if sp.attn_impl == "sdpa":
            if allowed is None:
                out = F.scaled_dot_product_attention(q, k, v, is_causal=sp.causal)
            else:  # a finite additive mask (Hugging Face's): a fully masked row averages v
                bias = torch.zeros(allowed.shape, dtype=q.dtype, device=x.device)
                bias = bias.masked_fill(~allowed, torch.finfo(q.dtype).min)
                out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(sp.head_dim)
            if allowed is None and sp.causal:
                causal = torch.full((s, s), torch.finfo(scores.dtype).min, device=x.device).triu(1)
                scores = scores + causal
            elif allowed is not None:
                scores = scores.masked_fill(~allowed, torch.finfo(scores.dtype).min)
            probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
            out = torch.matmul(probs, v)
        return self.o_proj(out.transpose(1, 2).reshape(b, s, sp.heads * sp.head_dim))


class MLP(nn.Module):
    def __init__(self, spec: Spec, inner: int):
        super().__init__()
        self.activation, self.gated = spec.activation, spec.gated
        if spec.gated:
            self.gate_proj = nn.Linear(spec.hidden, inner, bias=spec.bias)
        self.up_proj = nn.Linear(spec.hidden, inner, bias=spec.bias)
        self.down_proj = nn.Linear(inner, spec.hidden, bias=spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.gated:
            return self.down_proj(_act(self.activation, self.gate_proj(x)) * self.up_proj(x))
        return self.down_proj(_act(self.activation, self.up_proj(x)))


class MoE(nn.Module):
    """Softmax router (in float32), top-k, renormalised when k > 1; the experts run by a loop that
    gathers each expert's tokens with torch.where and adds them back with index_add_; an optional
    shared expert every token passes through."""

    def __init__(self, spec: Spec):
        super().__init__()
        self.top_k = spec.top_k
        self.router = nn.Linear(spec.hidden, spec.experts, bias=False)
        self.experts = nn.ModuleList(MLP(spec, 2 * spec.hidden) for _ in range(spec.experts))
        self.shared = MLP(spec, 2 * spec.hidden) if spec.shared_expert else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, s, h = x.shape
        tokens = x.reshape(-1, h)
        logits = F.linear(tokens.float(), self.router.weight.float())
        probs = torch.softmax(logits, dim=-1)
        weights, ids = torch.topk(probs, self.top_k, dim=-1)
        if self.top_k > 1:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        weights = weights.to(x.dtype)
        out = torch.zeros_like(tokens)
        for e, expert in enumerate(self.experts):
            rows, slot = torch.where(ids == e)
            out.index_add_(0, rows, expert(tokens[rows]) * weights[rows, slot, None])
        if self.shared is not None:
            out = out + self.shared(tokens)
        return out.reshape(b, s, h)


class Block(nn.Module):
    def __init__(self, spec: Spec):
        super().__init__()
        self.placement = spec.placement
        self.attn_norm, self.mlp_norm = _norm(spec), _norm(spec)
        self.attn = Attention(spec)
        self.mlp = MoE(spec) if spec.experts else MLP(spec, 2 * spec.hidden)

    def forward(self, x: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
        if self.placement == "pre":
            x = x + self.attn(self.attn_norm(x), attention_mask)
            return x + self.mlp(self.mlp_norm(x))
        x = self.attn_norm(x + self.attn(x, attention_mask))
        return self.mlp_norm(x + self.mlp(x))


class FuzzModel(nn.Module):
    """Embedding, `layers` blocks, a final norm and an LM head; returns the logits tensor."""

    def __init__(self, spec: Spec):
        super().__init__()
        self.spec = spec
        self.embed = nn.Embedding(VOCAB, spec.hidden)
        self.blocks = nn.ModuleList(Block(spec) for _ in range(spec.layers))
        self.norm = _norm(spec)
        self.lm_head = nn.Linear(spec.hidden, VOCAB, bias=False)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(input_ids)
        for block in self.blocks:
            x = block(x, attention_mask)
        return self.lm_head(self.norm(x))


def build(spec: Spec) -> tuple[nn.Module, dict[str, torch.Tensor]]:
    """The spec's model (weights from its seed, in its dtype, eval mode) and example inputs at (batch, seq)."""
    torch.manual_seed(spec.seed)
    model = FuzzModel(spec)
    with torch.no_grad():  # norms with non-trivial weights, so a dropped scale shows
        for m in model.modules():
            if isinstance(m, (RMSNorm, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                if getattr(m, "bias", None) is not None:
                    m.bias.uniform_(-0.2, 0.2)
    model = model.to(DTYPES[spec.dtype]).eval()
    return model, inputs_at(spec, spec.batch, spec.seq, seed=spec.seed)


def inputs_at(spec: Spec, batch: int, seq: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """Token ids (and, for padding masks, a 0/1 attention_mask whose rows end in 0..seq-1 zeros;
    the first row always has some padding when seq > 1) at the given shape."""
    g = torch.Generator().manual_seed(seed + 7919 * seq + batch)
    inputs = {"input_ids": torch.randint(0, VOCAB, (batch, seq), generator=g)}
    if spec.padded:
        mask = torch.ones(batch, seq, dtype=torch.int64)
        for row in range(batch):
            pad = int(torch.randint(0, seq, (1,), generator=g)) if row else max(1, seq // 3) if seq > 1 else 0
            if pad:
                mask[row, seq - pad:] = 0
        inputs["attention_mask"] = mask
    return inputs
