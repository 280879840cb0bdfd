"""t2c/kernels/linear_attention.py against the IR op's reference, run by the Triton interpreter
(tests/conftest.py sets TRITON_INTERPRET=1), and Llama compiled with linear attention to the
Triton target.

Rule (FlashAttention's, as tests/backends/test_triton_norm_kernel.py): the kernel's max error
against the op's reference is at most twice the error of the reference run by PyTorch on the
inputs as they are (in their dtype: halves computed in float32, then rounded), plus a floor of
float32 rounding noise. The truth is the reference on the inputs widened to float64, so that
float32 cases measure PyTorch's own float32 error too instead of comparing a computation with
itself. Shapes are tiny and not multiples of the interpreter's 16-position chunks (or of the
Dv tile), so every case spans full, partial and (causal) diagonal chunks.
"""

from __future__ import annotations

import json

import pytest
import torch

import t2c
import zoo
from t2c.ir import run_graph
from t2c.ir.ops import EvalContext, get_op
from t2c.ir.opdefs.attention import LinearAttentionAttrs
from t2c.kernels import linear_attention as la

FP32, FP16, BF16 = torch.float32, torch.float16, torch.bfloat16
DTYPES = (FP32, FP16, BF16)


def _qkv(b=2, hq=2, hkv=1, s=37, d=24, dv=None, sk=None, dtype=FP32, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    sk = s if sk is None else sk
    q = (torch.randn(b, hq, s, d, generator=g) * scale).to(dtype)
    k = (torch.randn(b, hkv, sk, d, generator=g) * scale).to(dtype)
    v = torch.randn(b, hkv, sk, dv or d, generator=g).to(dtype)
    return q, k, v


def assert_2x_pytorch(attrs: LinearAttentionAttrs, q, k, v, got: torch.Tensor) -> None:
    """Shape, dtype and the 2x-PyTorch error rule of the kernel's result `got`."""
    op, ctx = get_op("linear_attention"), EvalContext({})
    truth = op.run(ctx, attrs, [q.double(), k.double(), v.double()])[0]
    low = op.run(ctx, attrs, [q, k, v])[0]
    assert got.dtype == low.dtype == q.dtype and got.shape == low.shape and got.is_contiguous()
    err = (got.double() - truth).abs().max().item()
    err_torch = (low.double() - truth).abs().max().item()
    floor = 2 * torch.finfo(torch.float32).eps * max(1.0, truth.abs().max().item())
    assert err <= 2 * err_torch + floor, f"kernel error {err:.3g}, PyTorch's {err_torch:.3g} (floor {floor:.3g})"


def _check(attrs, q, k, v, **kw):
    assert_2x_pytorch(attrs, q, k, v, la.linear_attention(q, k, v, attrs=attrs, **kw))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize("group", [1, 2, 4])
def test_matches_reference(dtype, causal, group):
    """37 positions: chunks of 16, 16 and 5; head dim 24 (padded to 32), Dv 20; query heads per KV head 1/2/4."""
    hkv = 2 if group < 4 else 1
    q, k, v = _qkv(hq=hkv * group, hkv=hkv, s=37, d=24, dv=20, dtype=dtype, seed=group)
    _check(LinearAttentionAttrs(causal=causal, kv_heads=hkv), q, k, v)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_feature_and_value_tiles_larger_chunks(causal):
    """D 80 in the default feature tiles of 64 (a loop of two, the second partial), Dv 40 in tiles
    of 16 (three programs per chunk, the last partial), chunks of 32."""
    q, k, v = _qkv(b=1, hq=4, hkv=2, s=45, d=80, dv=40, dtype=FP16, seed=3)
    _check(LinearAttentionAttrs(causal=causal, kv_heads=2), q, k, v, chunk=32, dv_tile=16)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_head_dims_past_256(causal):
    """No head-dim limit: D 260 (five feature tiles of 64, the last nearly empty) and Dv 72 (two value tiles)."""
    q, k, v = _qkv(b=1, hq=1, hkv=1, s=21, d=260, dv=72, dtype=BF16, seed=4)
    _check(LinearAttentionAttrs(causal=causal, kv_heads=1), q, k, v)


@pytest.mark.parametrize("s", [1, 7, 32], ids=["s1", "s7", "s32"])
def test_sequences_shorter_than_or_a_multiple_of_the_chunk(s):
    q, k, v = _qkv(b=1, hq=2, hkv=1, s=s, d=16, dtype=BF16, seed=s)
    for causal in (False, True):
        _check(LinearAttentionAttrs(causal=causal, kv_heads=1), q, k, v)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_more_chunks_than_one_prefix_step(causal):
    """290 positions: 19 chunks, so the prefix scan takes two steps of PREFIX_CHUNKS (the second partial)."""
    assert la.PREFIX_CHUNKS < 19 < 2 * la.PREFIX_CHUNKS
    q, k, v = _qkv(b=1, hq=2, hkv=1, s=290, d=16, dtype=FP32, seed=11)
    _check(LinearAttentionAttrs(causal=causal, kv_heads=1), q, k, v)


def test_non_causal_with_fewer_queries_than_keys():
    q, k, v = _qkv(b=2, hq=4, hkv=2, s=5, sk=40, d=16, dv=12, dtype=FP32, seed=5)
    _check(LinearAttentionAttrs(causal=False, kv_heads=2), q, k, v)


@pytest.mark.parametrize("causal", [False, True], ids=["full", "causal"])
def test_strided_inputs_and_large_magnitudes(causal):
    """q, k, v as views of a [B, S, H, D] projection (no copy), inputs up to |x| ~ 30: phi's exp
    branch underflows towards 0 and its linear branch dominates, without overflow or nan."""
    g = torch.Generator().manual_seed(7)
    b, s, h, d = 2, 21, 2, 16
    qkv = torch.randn(b, s, 3, h, d, generator=g) * 8.0
    q, k, v = (qkv[:, :, i].transpose(1, 2) for i in range(3))
    assert not q.is_contiguous()
    _check(LinearAttentionAttrs(causal=causal, kv_heads=h), q, k, v)


def test_mixed_input_dtypes_follow_q():
    """The reference widens each operand to q's compute dtype: bf16 q with float32 k and v."""
    q, _, _ = _qkv(b=1, hq=2, hkv=1, s=19, d=16, dtype=BF16, seed=8)
    _, k, v = _qkv(b=1, hq=2, hkv=1, s=19, d=16, dtype=FP32, seed=9)
    _check(LinearAttentionAttrs(causal=True, kv_heads=1), q, k, v)


def test_empty_and_keyless_inputs_match_the_reference():
    attrs = LinearAttentionAttrs(causal=False, kv_heads=1)
    q, k, v = _qkv(b=1, hq=1, hkv=1, s=3, sk=0, d=16)
    out = la.linear_attention(q, k, v, attrs=attrs)
    torch.testing.assert_close(out, get_op("linear_attention").run(EvalContext({}), attrs, [q, k, v])[0], equal_nan=True)
    assert out.isnan().all()  # 0 / 0, as the reference computes
    q, k, v = _qkv(b=0, hq=2, hkv=1, s=4, d=16)
    assert la.linear_attention(q, k, v, attrs=LinearAttentionAttrs(causal=True, kv_heads=1)).shape == (0, 2, 4, 16)


def test_refusals_name_the_reason():
    q, k, v = _qkv(b=1, hq=2, hkv=1, s=5, d=16)
    relu = LinearAttentionAttrs(feature="relu", kv_heads=1)
    assert la.supports(LinearAttentionAttrs(kv_heads=1)) and not la.supports(relu)
    with pytest.raises(NotImplementedError, match="feature map 'relu'"):
        la.linear_attention(q, k, v, attrs=relu)
    with pytest.raises(NotImplementedError, match="float64"):
        la.linear_attention(q.double(), k.double(), v.double(), attrs=LinearAttentionAttrs(kv_heads=1))
    with pytest.raises(ValueError, match="causal needs as many keys as queries"):
        la.linear_attention(q, *_qkv(b=1, hq=2, hkv=1, s=6, d=16)[1:], attrs=LinearAttentionAttrs(causal=True, kv_heads=1))
    with pytest.raises(ValueError, match="do not divide"):
        la.linear_attention(*_qkv(b=1, hq=3, hkv=2, s=5, d=16), attrs=LinearAttentionAttrs(kv_heads=2))
    for bad in ({"chunk": 24}, {"d_tile": 8}, {"dv_tile": 48}):
        with pytest.raises(ValueError, match="power of two"):
            la.linear_attention(q, k, v, attrs=LinearAttentionAttrs(kv_heads=1), **bad)


def test_interpreter_runs_one_config():
    """Every config autotune holds is run; the interpreter gets one, a GPU a few."""
    assert la.INTERPRETING and len(la._AUTOTUNE_CONFIGS) == 1 and la.CHUNK == 16


def test_llama_with_linear_attention_runs_the_kernel_and_agrees_with_the_ir(tmp_path):
    """The zoo's Llama, its attention replaced by causal linear attention (approximate: --max-drift),
    compiled to the Triton target: both layers' linear_attention nodes take this kernel, validation
    (artifact vs the IR interpreter) passes, and so does a 37-token input (three chunks)."""
    model, examples = zoo.build("llama", batch=1, seq=8)
    c = t2c.compile(model, examples, passes="lift-attention,linear-attention,dce", target="triton",
                    out=str(tmp_path / "llama"), max_drift=5)
    assert c.ok is True
    counts = json.loads((tmp_path / "llama" / "kernels.json").read_text())
    assert counts["handwritten"]["ops"] == {"linear_attention": 2}
    assert counts["generic"]["nodes"] == 0
    text = (tmp_path / "llama" / "model.py").read_text()
    assert text.count("_linear_attention.linear_attention(") == 2 and "causal=true" in text
    report = json.loads((tmp_path / "llama" / "report.json").read_text())
    assert report["validation"]["ok"] is True and report["validation"]["artifact_vs_ir"]
    passes = [p["pass"] for p in report["passes"]]
    assert passes == ["lift-attention", "linear-attention", "dce"]

    loaded = t2c.load(c.out_dir)
    inputs = zoo.build("llama", batch=2, seq=37)[1]
    got, want = loaded(**inputs), run_graph(c.graph, inputs)
    assert sorted(got) == sorted(want)
    for name, tensor in got.items():
        torch.testing.assert_close(tensor, want[name], rtol=1e-4, atol=1e-4)
