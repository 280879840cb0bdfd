"""The split-K decode attention kernel (t2c/kernels/decode_attention.py) in the interpreter.

Decode steps over a KV cache: few queries (1 to 5), more keys, not multiples of the 16-key tiles
and crossing the 4 splits the interpreter uses; GQA ratios 1/2/4; no mask, a bool mask causal in
the cache's frame with left padding (rows that see no key give 0), an additive mask; softcap;
fp32, fp16 and bf16. The error rule is the flash kernel's (test_triton_attention_kernel.py):
at most twice plain PyTorch's error in the same dtype against a float64 reference. `attention`
routes such calls here, and calls with structure or more rows to the flash kernel.
"""

import pytest
import torch

from t2c.ir.opdefs.attention import AttentionAttrs
from t2c.kernels import decode_attention as decode
from t2c.kernels.attention import attention

from sm90 import run_for_sm90
from test_triton_attention_kernel import _check

FP32, FP16, BF16 = torch.float32, torch.float16, torch.bfloat16


def _cache_mask(b: int, sq: int, sk: int, pad: int) -> torch.Tensor:
    """[B, 1, Sq, Sk] bool: query i is key position Sk - Sq + i (causal in the cache's frame); the
    last sequence's first `pad` keys are padding."""
    i = torch.arange(sq)[:, None] + (sk - sq)
    j = torch.arange(sk)[None, :]
    mask = (j <= i).expand(b, 1, sq, sk).clone()
    mask[-1, :, :, :pad] = False
    return mask


def _ops(b, hq, hkv, sq, sk, d, dtype, mask, seed=0):
    g = torch.Generator().manual_seed(seed)
    ops = [torch.randn(b, hq, sq, d, generator=g).to(dtype), torch.randn(b, hkv, sk, d, generator=g).to(dtype),
           torch.randn(b, hkv, sk, d, generator=g).to(dtype)]
    if mask == "bool":
        ops.append(_cache_mask(b, sq, sk, pad=min(sk, 21)))
    elif mask == "additive":
        ops.append(torch.randn(b, 1, sq, sk, generator=g).to(dtype))
    return ops


@pytest.mark.parametrize("hq,hkv,sq,sk,d,dtype,mask,softcap", [
    (2, 2, 1, 2, 32, FP32, None, 0.0),  # the first step after a one-token prompt
    (4, 2, 1, 37, 32, FP16, "bool", 0.0),
    (4, 1, 1, 100, 64, BF16, "bool", 0.0),
    (8, 2, 3, 70, 48, FP32, "additive", 0.0),
    (2, 1, 5, 41, 16, FP32, "bool", 5.0),
    (4, 4, 2, 64, 128, FP16, None, 2.0),
    (2, 1, 1, 200, 32, BF16, "additive", 0.0),
])
def test_decode_steps_obey_the_error_rule(hq, hkv, sq, sk, d, dtype, mask, softcap):
    a = AttentionAttrs(scale=d ** -0.5, kv_heads=hkv, softcap=softcap)
    ops = _ops(2, hq, hkv, sq, sk, d, dtype, mask)
    assert decode.applies(ops[0], ops[1], a)
    _check(ops, a)  # through `attention`, which routes it here


def test_rows_that_see_no_key_give_zeros_and_splits_are_used():
    a = AttentionAttrs(scale=0.25, kv_heads=1)
    ops = _ops(2, 2, 1, 1, 50, 16, FP32, "bool")
    ops[3][-1] = False  # the last sequence sees nothing
    out = decode.decode_attention(*ops, a)
    assert torch.equal(out[-1], torch.zeros_like(out[-1])) and out[0].abs().sum() > 0
    assert decode._splits(2, 50, torch.device("cpu")) == 4  # 50 keys: 4 chunks of 16-key tiles


def test_attention_routes_only_decode_steps_here(monkeypatch):
    """Unstructured attention with at most 64 query rows per KV head and more keys than queries
    comes here; the rest (structure, a prefill) goes to the flash kernel."""
    calls = []
    real = decode.decode_attention
    monkeypatch.setattr(decode, "decode_attention", lambda *args: calls.append(1) or real(*args))
    g = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(1, 4, 1, 16, generator=g), torch.randn(1, 2, 30, 16, generator=g), torch.randn(1, 2, 30, 16, generator=g)
    attention(q, k, v, attrs=AttentionAttrs(scale=0.25, kv_heads=2))
    assert calls == [1]
    for a in (AttentionAttrs(scale=0.25, kv_heads=2, window=(4, -1)), AttentionAttrs(scale=0.25, kv_heads=2, causal=True)):
        attention(q, k, v, attrs=a)  # structure: the flash kernel
    attention(torch.randn(1, 4, 29, 16, generator=g), k, v, attrs=AttentionAttrs(scale=0.25, kv_heads=2))
    assert calls == [1, 1]  # 2 heads x 29 queries = 58 rows per KV head: one tile here
    big = [torch.randn(1, 4, 33, 16, generator=g), torch.randn(1, 2, 90, 16, generator=g), torch.randn(1, 2, 90, 16, generator=g)]
    attention(*big, attrs=AttentionAttrs(scale=0.25, kv_heads=2))
    attention(k.repeat(1, 2, 1, 1), k, v, attrs=AttentionAttrs(scale=0.25, kv_heads=2))
    assert calls == [1, 1]  # 66 rows per KV head, and Sq == Sk (a prompt): the flash kernel


# Both kernels compiled for an sm_90 (H100/H200) target without a GPU (sm90.py says why).
COMPILE_FOR_SM90 = """
from t2c.kernels.decode_attention import _decode_combine, _decode_split

split = compile_for_sm90(_decode_split, dict(GROUP=4, HEAD_D=128, HEAD_DV=128, BLOCK_M=16, BLOCK_N=64, BLOCK_D=128,
                                             BLOCK_DV=128, HAS_SOFTCAP=True, MASK_KIND=2, DOT_PRECISION="tf32", UPCAST=False),
                         {"mask_ptr": "*u8", "acc_ptr": "*fp32", "ml_ptr": "*fp32"}, num_warps=4, num_stages=2)
assert "mma" in split.asm["ptx"], "no tensor-core instructions in the PTX"
compile_for_sm90(_decode_combine, dict(GROUP=4, HEAD_DV=128, BLOCK_M=16, BLOCK_DV=128), {"acc_ptr": "*fp32", "ml_ptr": "*fp32"},
                 num_warps=4, num_stages=2)
print("shared", split.metadata.shared)
"""


def test_kernels_compile_for_sm90_without_a_gpu():
    proc = run_for_sm90(COMPILE_FOR_SM90)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert int(proc.stdout.split()[-1]) <= 227 * 1024
