"""The Triton attention kernel (t2c/kernels/attention.py) against the IR op's reference, in the interpreter.

Error rule (FlashAttention's): the kernel's max error against the IR reference in
float64 is at most twice plain PyTorch's, computing the same formula in the
kernel's dtype, plus a 1e-6 floor. Shapes are small and not multiples of the
16-wide interpreter tiles; each option is covered by a few combinations, not the
full product.
"""

import math

import pytest
import torch

from t2c.ir.opdefs.attention import AttentionAttrs, attention_operands, attention_reference, structural_mask
from t2c.ir.opdefs.rope import rope_reference
from t2c.kernels.attention import GPU_CONFIGS, attention, attention_key_tile_visits, key_tiles, prune_gpu_configs

from sm90 import run_for_sm90

FP32, FP16, BF16 = torch.float32, torch.float16, torch.bfloat16


def _attrs(**kw) -> AttentionAttrs:
    kw.setdefault("kv_heads", 1)
    kw.setdefault("scale", 0.3)
    return AttentionAttrs(**kw)


def _rope_cache(s: int, r: int, interleaved: bool, dtype, shape_prefix=(1, 1)) -> tuple[torch.Tensor, torch.Tensor]:
    """Full-layout cos/sin [*shape_prefix, s, r] for positions 0..s-1."""
    freq = 1.0 / (10000 ** (torch.arange(0, r, 2, dtype=torch.float64) / r))
    ang = torch.arange(s, dtype=torch.float64)[:, None] * freq[None, :]
    ang = ang.repeat_interleave(2, dim=-1) if interleaved else torch.cat((ang, ang), dim=-1)
    shape = tuple(shape_prefix) + (s, r)
    return ang.cos().reshape(shape).to(dtype), ang.sin().reshape(shape).to(dtype)


def _operands(a: AttentionAttrs, b=2, hq=2, s=37, d=32, dv=None, dtype=FP32, mask=None, seed=0):
    """(q, k, v, mask?, cos?, sin?) in the IR op's order; `mask` is a callable (b, hq, s, dtype) -> mask tensor."""
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(b, hq, s, d, generator=g).to(dtype)
    k = torch.randn(b, a.kv_heads, s, d, generator=g).to(dtype)
    v = torch.randn(b, a.kv_heads, s, dv or d, generator=g).to(dtype)
    ops = [q, k, v]
    if mask is not None:
        ops.append(mask(b, hq, s, dtype, g))
    if a.rope != "none":
        ops.extend(_rope_cache(s, a.rotary_dim, a.rope == "interleaved", dtype))
    return ops


def _plain_torch(ops, a: AttentionAttrs) -> torch.Tensor:
    """The op's formula in eager PyTorch, every step in the operands' own dtype (the baseline of the error rule)."""
    q, k, v, mask, cos, sin = attention_operands(ops, a)
    if a.rope != "none":
        q = rope_reference(q, cos, sin, a.rope == "interleaved", a.rotary_dim)
        k = rope_reference(k, cos, sin, a.rope == "interleaved", a.rotary_dim)
    group = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    s = (q @ k.transpose(-1, -2)) * a.scale
    if a.softcap > 0:
        s = a.softcap * torch.tanh(s / a.softcap)
    visible = structural_mask(q.shape[2], k.shape[2], a).expand(s.shape)
    if mask is not None:
        if mask.dtype == torch.bool:
            visible = visible & mask
        else:
            s = s + mask.to(s.dtype)
    p = torch.softmax(s.masked_fill(~visible, -math.inf), dim=-1).nan_to_num(0.0)
    return p @ v


def _check(ops, a: AttentionAttrs) -> None:
    """The kernel's result has the reference's shape and dtype and obeys the 2x-PyTorch error rule."""
    out = attention(*ops, attrs=a)
    wide = [t if t.dtype == torch.bool else t.double() for t in ops]
    truth = attention_reference(*attention_operands(wide, a)[:4], a, *attention_operands(wide, a)[4:])
    assert out.shape == truth.shape and out.dtype == ops[0].dtype
    err = (out.double() - truth).abs().max().item()
    torch_err = (_plain_torch(ops, a).double() - truth).abs().max().item()
    assert err <= 2 * torch_err + 1e-6, f"kernel error {err:.3g} vs PyTorch {torch_err:.3g} in {ops[0].dtype}"


STRUCTURES = [  # (attrs, hq, dtype): every mask kind, GQA ratios 1/2/4, dtypes rotated over them
    (_attrs(kv_heads=2), 2, FP32),
    (_attrs(causal=True, kv_heads=1), 2, FP16),
    (_attrs(causal=True, kv_heads=1), 4, BF16),
    (_attrs(window=(5, 3), kv_heads=2), 4, FP32),
    (_attrs(window=(20, 0), kv_heads=1), 1, BF16),
    (_attrs(causal=True, window=(6, -1), kv_heads=1), 4, FP16),
    (_attrs(causal=True, window=(17, 17), kv_heads=2), 2, FP32),
    (_attrs(block=8, kv_heads=1), 2, BF16),
    (_attrs(block=5, window=(2, 2), kv_heads=1), 1, FP32),
    (_attrs(global_tokens=3, window=(4, 4), kv_heads=1), 2, FP16),
    (_attrs(global_tokens=18, window=(2, 1), kv_heads=2), 2, FP32),
    (_attrs(global_tokens=2, causal=True, window=(3, -1), kv_heads=1), 4, BF16),
    (_attrs(global_tokens=4, block=8, kv_heads=1), 2, FP32),
]


@pytest.mark.parametrize("a,hq,dtype", STRUCTURES)
def test_structural_masks(a, hq, dtype):
    _check(_operands(a, hq=hq, dtype=dtype), a)


@pytest.mark.parametrize("dtype", [FP32, FP16, BF16])
@pytest.mark.parametrize("s", [13, 40])
def test_dtypes_and_lengths(dtype, s):
    a = _attrs(causal=True, window=(9, -1), kv_heads=1)
    _check(_operands(a, b=1, hq=2, s=s, dtype=dtype), a)


@pytest.mark.parametrize("d,dv,dtype", [(16, 16, FP32), (64, 64, FP16), (40, 40, BF16), (80, 80, FP32), (32, 24, FP16)])
def test_head_dims(d, dv, dtype):
    a = _attrs(causal=True, scale=d ** -0.5)
    _check(_operands(a, b=1, hq=1, s=21, d=d, dv=dv, dtype=dtype), a)


@pytest.mark.parametrize("a,dtype", [
    (_attrs(softcap=1.5, scale=1.0, kv_heads=1), FP32),
    (_attrs(softcap=5.0, scale=1.0, causal=True, kv_heads=1), FP16),
    (_attrs(softcap=50.0, scale=1.0, window=(4, 0), causal=True, kv_heads=1), BF16),
])
def test_softcap(a, dtype):
    _check(_operands(a, hq=2, dtype=dtype), a)


def _additive_full(b, hq, s, dtype, g):
    return (torch.randn(b, 1, s, s, generator=g) * 2).to(dtype)


def _additive_padding(b, hq, s, dtype, g):
    """Key padding as Hugging Face builds it: finfo.min on padded keys, [B, 1, 1, Sk]."""
    m = torch.zeros(b, 1, 1, s)
    m[0, ..., s - 5:] = torch.finfo(dtype).min
    return m.to(dtype)


def _bool_padding(b, hq, s, dtype, g):
    keep = torch.ones(b, 1, 1, s, dtype=torch.bool)
    keep[-1, ..., : s // 3] = False
    return keep


def _bool_per_head_with_empty_rows(b, hq, s, dtype, g):
    keep = torch.rand(b, hq, s, s, generator=g) > 0.4
    keep[0, 0, 3] = False  # a row that sees no key gives zeros
    return keep


def _additive_2d(b, hq, s, dtype, g):
    return torch.randn(s, s, generator=g).to(dtype)


@pytest.mark.parametrize("mask,a,dtype", [
    (_additive_full, _attrs(kv_heads=1), FP32),
    (_additive_full, _attrs(causal=True, window=(7, -1), kv_heads=2), BF16),
    (_additive_padding, _attrs(causal=True, kv_heads=1), FP16),
    (_additive_padding, _attrs(global_tokens=2, window=(3, 3), kv_heads=1), FP32),
    (_bool_padding, _attrs(kv_heads=2), FP16),
    (_bool_padding, _attrs(window=(4, 4), kv_heads=1), BF16),
    (_bool_per_head_with_empty_rows, _attrs(causal=True, kv_heads=1), FP32),
    (_additive_2d, _attrs(block=6, kv_heads=1), FP32),
])
def test_mask_operand(mask, a, dtype):
    _check(_operands(a, hq=2, dtype=dtype, mask=mask), a)


@pytest.mark.parametrize("rope,r,d,a_kw,mask,dtype", [
    ("half", 32, 32, {"causal": True}, None, FP32),
    ("half", 16, 32, {"kv_heads": 2}, _bool_padding, FP16),
    ("half", 24, 40, {"window": (5, -1), "causal": True}, None, BF16),
    ("interleaved", 64, 64, {}, None, FP16),
    ("interleaved", 8, 32, {"causal": True, "kv_heads": 2}, _additive_full, FP32),
    ("interleaved", 20, 40, {"global_tokens": 2, "window": (3, 3)}, None, BF16),
])
def test_rope_prologue(rope, r, d, a_kw, mask, dtype):
    a = _attrs(rope=rope, rotary_dim=r, scale=d ** -0.5, **a_kw)
    _check(_operands(a, hq=2, d=d, dtype=dtype, mask=mask), a)


def test_rope_paired_cache_and_broadcast_shapes():
    """cache="paired" (a claim the reference checks) and a [S, r] cos/sin that broadcasts over batch and heads."""
    a = _attrs(rope="half", rotary_dim=16, rope_cache="paired", rope_positions="length", causal=True, kv_heads=1)
    q, k, v, cos, sin = _operands(a, hq=2, s=19, d=32)
    _check([q, k, v, cos[0, 0], sin[0, 0]], a)
    with pytest.raises(Exception, match="paired"):
        attention(q, k, v, torch.rand_like(cos), sin, attrs=a)


@pytest.mark.parametrize("sq,sk,a,with_mask", [
    (13, 29, _attrs(causal=True, window=(5, -1), kv_heads=1), False),
    (29, 13, _attrs(global_tokens=2, window=(3, 3), kv_heads=1), True),
    (21, 40, _attrs(block=8, kv_heads=1), True),
])
def test_query_and_key_lengths_differ(sq, sk, a, with_mask):
    """The reference accepts Sq != Sk (i and j in one index space); so does the kernel."""
    g = torch.Generator().manual_seed(1)
    ops = [torch.randn(2, 2, sq, 32, generator=g), torch.randn(2, 1, sk, 32, generator=g), torch.randn(2, 1, sk, 32, generator=g)]
    if with_mask:
        ops.append(torch.randn(2, 1, sq, sk, generator=g))
    _check(ops, a)


def test_non_contiguous_inputs():
    """Strides are honoured: q, k, v as [B, S, H, D] tensors seen through a transpose."""
    a = _attrs(causal=True, window=(6, -1), kv_heads=2)
    q, k, v = (t.transpose(1, 2).contiguous().transpose(1, 2) for t in _operands(a, hq=4, s=23))
    assert not q.is_contiguous()
    _check([q, k, v], a)


def test_unsupported_inputs_raise_not_implemented():
    a = _attrs()
    q, k, v = _operands(a, b=1, hq=1, s=5, d=16, dtype=torch.float64)
    with pytest.raises(NotImplementedError, match="float64"):
        attention(q, k, v, attrs=a)
    q, k, v = _operands(a, b=1, hq=1, s=5, d=512)
    with pytest.raises(NotImplementedError, match="head dims"):
        attention(q, k, v, attrs=a)


@pytest.mark.parametrize("a", [
    _attrs(causal=True),
    _attrs(causal=True, window=(40, -1)),
    _attrs(window=(24, 24)),
    _attrs(block=16),
    _attrs(global_tokens=5, causal=True, window=(40, -1)),
])
def test_key_tiles_are_skipped(a):
    """The kernel loads only the key tiles the structure allows and masks only the cut ones: its own
    counts equal key_tiles', which are O(W + G) per query block."""
    s = 200
    ops = _operands(a, b=1, hq=1, s=s, d=16)
    visits, block_m, block_n = attention_key_tile_visits(*ops, attrs=a)
    plans = [key_tiles(m * block_m, (m + 1) * block_m, s, s, a, block_n) for m in range(visits.shape[1])]
    assert visits[0].tolist() == [[p.tiles, p.masked_tiles] for p in plans]
    left, right = a.window
    if left >= 0 or a.block:  # rows that are not global see W + block_m keys around the block, plus the G global keys
        reach = a.block if a.block else (max(left, 0) + max(right, 0) + block_m)
        bound = -(-reach // block_n) + 1 + -(-a.global_tokens // block_n)
        global_blocks = -(-a.global_tokens // block_m)
        assert max(p.tiles for p in plans[global_blocks:]) <= bound < -(-s // block_n)
    # the element mask only where the structure cuts a tile: the band's two edges and the global keys
    assert max(p.masked_tiles for p in plans) <= 2 * -(-block_m // block_n) + 2 + -(-a.global_tokens // block_n)
    assert sum(p.tiles - p.masked_tiles for p in plans) > 0
    _check(ops, a)


@pytest.mark.parametrize("seed", range(4))
def test_key_tiles_cover_every_visible_key_and_full_tiles_are_full(seed):
    """For random structures and query blocks, against the reference's structural mask: keys outside the
    visited tiles are invisible to the whole block, and the unmasked tiles are visible to all of it."""
    g = torch.Generator().manual_seed(seed)

    def pick(*xs):
        return xs[int(torch.randint(len(xs), (1,), generator=g))]

    for _ in range(40):
        sq, sk = pick(37, 64, 80), pick(37, 64, 80)
        a = _attrs(causal=pick(False, True), window=(pick(-1, 0, 3, 17), pick(-1, 0, 5, 30)), block=pick(0, 0, 8, 12),
                   global_tokens=pick(0, 0, 3, 20))
        bm, bn = pick(16, 32), pick(16, 32)
        vis = structural_mask(sq, sk, a)
        for m0 in range(0, sq, bm):
            p = key_tiles(m0, m0 + bm, sq, sk, a, bn)
            rows = vis[m0:m0 + bm]
            visited = torch.zeros(sk, dtype=torch.bool)
            visited[: p.global_stop] = True
            visited[max(p.lo, 0): max(p.hi, 0)] = True
            assert not (rows.any(0) & ~visited).any(), (a, m0, p)
            assert p.full_lo <= p.full_hi and (p.full_lo - p.lo) % bn == 0 and (p.full_hi - p.full_lo) % bn == 0
            assert p.full_lo == p.full_hi or p.lo <= p.full_lo < p.full_hi <= p.hi, (a, m0, p)
            assert rows[:, p.full_lo: p.full_hi].all(), (a, m0, p)


def test_key_tiles_are_linear_in_length():
    """Over a million tokens a 512-wide causal window visits the same handful of tiles per query block."""
    a = _attrs(causal=True, window=(511, -1), global_tokens=4)
    s, bm, bn = 1 << 20, 128, 64
    plans = [key_tiles(m, m + bm, s, s, a, bn) for m in range(bm, s, 997 * bm)]
    assert max(p.tiles for p in plans) <= (511 + bm + bn) // bn + 1
    assert max(p.masked_tiles for p in plans) <= 2 * bm // bn + 1 + 1
    assert key_tiles(0, bm, s, s, a, bn).tiles == bm // bn  # the global rows: every key up to themselves


def test_gpu_autotune_keeps_the_small_tile_only_where_big_ones_may_not_fit():
    """Every kept config is compiled on the GPU: the 32x32 fallback only for fp32 or head dims over 128."""
    def kept(dtype, block_d):
        q = torch.empty(1, dtype=dtype)
        return [(c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"]) for c in prune_gpu_configs(GPU_CONFIGS, {"q_ptr": q}, BLOCK_D=block_d, BLOCK_DV=block_d)]
    assert (32, 32) not in kept(BF16, 128) and len(kept(BF16, 128)) == len(GPU_CONFIGS) - 1
    assert (32, 32) in kept(FP32, 64) and (32, 32) in kept(FP16, 256)


# The kernel compiled for an sm_90 (H100/H200) target without a GPU (sm90.py says why).
COMPILE_FOR_SM90 = """
from t2c.kernels.attention import _attention_fwd

consts = dict(GROUP=2, HEAD_D=80, HEAD_DV=64, BLOCK_D=128, BLOCK_DV=64, CAUSAL=True, LEFT=511, RIGHT=-1,
              LOCAL_BLOCK=0, GLOBAL=4, HAS_SOFTCAP=True, MASK_KIND=2, ROPE=2, ROTARY_DIM=40,
              DOT_PRECISION="tf32", UPCAST=False, COUNT_VISITS=True, BLOCK_M=128, BLOCK_N=64)
# _attention_fwd.fn: the @triton.jit function under the autotuner
kernel = compile_for_sm90(_attention_fwd.fn, consts, {"mask_ptr": "*u8", "visits_ptr": "*i32"}, num_warps=8, num_stages=3)
assert "mma" in kernel.asm["ptx"], "no tensor-core instructions in the PTX"
print("shared", kernel.metadata.shared)
"""


def test_kernel_compiles_for_sm90_without_a_gpu():
    proc = run_for_sm90(COMPILE_FOR_SM90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) <= 227 * 1024  # fits an H100/H200 SM's shared memory
