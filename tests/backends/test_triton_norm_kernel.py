"""t2c/kernels/norm.py against the IR ops' references (layer_norm, rms_norm, add_norm), run by
the Triton interpreter (tests/conftest.py sets TRITON_INTERPRET=1).

Rule (FlashAttention's): for every result, the kernel's max error against the op's reference
computed in float32 from the same inputs is at most twice the error of the reference run by
PyTorch on the inputs as they are (in the kernel's dtype), plus a floor of float32 rounding
noise (float32 cases, where PyTorch's error is zero). Shapes are tiny, hidden sizes are not
powers of two, and some cases read the row in several blocks (block_n < N, last one partial).
"""

from __future__ import annotations

import pytest
import torch
import triton
import triton.language as tl

from t2c.ir.ops import EvalContext, get_op
from t2c.ir.opdefs.add_norm import AddNormAttrs
from t2c.ir.opdefs.nn import NormAttrs, RMSNormAttrs
from t2c.kernels import norm

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _rand(*shape, dtype, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=g) * scale).to(dtype)


def _up(t):
    return None if t is None else t.float()


def assert_2x_pytorch(op_name, attrs, inputs, outputs):
    """The FlashAttention rule for each of the op's results; also its dtype and shape."""
    op, ctx = get_op(op_name), EvalContext({})
    present = [t for t in inputs if t is not None]
    if any(t is None for t in inputs):  # an absent operand in the middle (layer_norm's bias only)
        ref32 = op.reference(ctx, attrs, *map(_up, inputs))
        ref_low = op.reference(ctx, attrs, *inputs)
        ref32, ref_low = (ref32,), (ref_low,)
    else:
        ref32 = op.run(ctx, attrs, [t.float() for t in present])
        ref_low = op.run(ctx, attrs, present)
    outputs = outputs if isinstance(outputs, tuple) else (outputs,)
    assert len(outputs) == len(ref_low)
    for got, low, exact in zip(outputs, ref_low, ref32):
        assert got.dtype == low.dtype and got.shape == low.shape
        err = (got.float() - exact).abs().max().item()
        err_torch = (low.float() - exact).abs().max().item()
        floor = 2 * torch.finfo(torch.float32).eps * max(1.0, exact.abs().max().item())
        assert err <= 2 * err_torch + floor, f"{op_name}: kernel error {err:.3g}, PyTorch's {err_torch:.3g}"


# layer_norm ------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("params", ["none", "weight", "weight_bias", "bias"])
def test_layer_norm(dtype, params):
    n = 100
    x = _rand(7, n, dtype=dtype, scale=3.0) + 1.5  # an offset mean: the centred variance matters
    w = _rand(n, dtype=dtype, seed=1) if "weight" in params else None
    b = _rand(n, dtype=dtype, seed=2) if "bias" in params else None
    attrs = NormAttrs((n,), 1e-5)
    inputs = [x, w, b] if b is not None else [x, w] if w is not None else [x]
    assert_2x_pytorch("layer_norm", attrs, inputs, norm.layer_norm(*inputs, attrs=attrs))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_layer_norm_leading_dims_blocks_and_two_normalized_dims(dtype):
    x = _rand(2, 3, 48, dtype=dtype)
    w, b = _rand(48, dtype=dtype, seed=1), _rand(48, dtype=dtype, seed=2)
    attrs = NormAttrs((48,), 1e-6)
    assert_2x_pytorch("layer_norm", attrs, [x, w, b], norm.layer_norm(x, w, b, attrs=attrs, block_n=16))
    x2 = x.reshape(2, 3, 4, 12)
    attrs2 = NormAttrs((4, 12), 1e-5)
    w2, b2 = w.reshape(4, 12), b.reshape(4, 12)
    assert_2x_pytorch("layer_norm", attrs2, [x2, w2, b2], norm.layer_norm(x2, w2, b2, attrs=attrs2, block_n=32))


def test_layer_norm_float32_weight_on_half_input():
    x = _rand(7, 100, dtype=torch.bfloat16)
    w, b = _rand(100, dtype=torch.float32, seed=1), _rand(100, dtype=torch.float32, seed=2)
    attrs = NormAttrs((100,), 1e-5)
    assert_2x_pytorch("layer_norm", attrs, [x, w, b], norm.layer_norm(x, w, b, attrs=attrs))


# rms_norm --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("weight", [False, True], ids=["no_weight", "weight"])
@pytest.mark.parametrize("eps", [None, 1e-6], ids=["eps_default", "eps_1e-6"])
def test_rms_norm(dtype, weight, eps):
    n = 100
    # small inputs: mean(x^2) ~ 1e-6, so the default eps (float32's, 1.2e-7) shows in the result
    x = _rand(7, n, dtype=dtype, scale=1e-3)
    w = _rand(n, dtype=dtype, seed=1) if weight else None
    attrs = RMSNormAttrs((n,), eps)
    inputs = [x, w] if weight else [x]
    assert_2x_pytorch("rms_norm", attrs, inputs, norm.rms_norm(*inputs, attrs=attrs, block_n=32))


@pytest.mark.filterwarnings("ignore:Mismatch dtype between input and weight")
def test_rms_norm_mixed_weight_dtype_and_two_normalized_dims():
    x = _rand(7, 4, 12, dtype=torch.float16)
    w = _rand(4, 12, dtype=torch.float32, seed=1)
    attrs = RMSNormAttrs((4, 12), None)
    assert_2x_pytorch("rms_norm", attrs, [x, w], norm.rms_norm(x, w, attrs=attrs))


# add_norm --------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("kind,params", [("layer", "weight_bias"), ("layer", "weight"), ("layer", "none"),
                                         ("rms", "weight"), ("rms", "none")])
def test_add_norm(dtype, kind, params):
    n = 48
    x = _rand(7, n, dtype=dtype, scale=2.0)
    residual = _rand(7, n, dtype=dtype, seed=3, scale=4.0) + 1.0
    w = _rand(n, dtype=dtype, seed=1) if "weight" in params else None
    b = _rand(n, dtype=dtype, seed=2) if "bias" in params else None
    attrs = AddNormAttrs(kind, (n,), 1e-5 if kind == "layer" else None)
    inputs = [x, residual] + [t for t in (w, b) if t is not None]
    assert_2x_pytorch("add_norm", attrs, inputs, norm.add_norm(*inputs, attrs=attrs, block_n=16))


@pytest.mark.parametrize("kind", ["layer", "rms"])
def test_add_norm_rounds_the_half_sum_before_normalising(kind):
    """The reference normalises x + residual rounded to bfloat16: the kernel's sum is torch's,
    bit for bit, and the norm reads that rounded sum."""
    x = _rand(2, 3, 100, dtype=torch.bfloat16)
    residual = _rand(2, 3, 100, dtype=torch.bfloat16, seed=3, scale=30.0)
    w = _rand(100, dtype=torch.bfloat16, seed=1)
    attrs = AddNormAttrs(kind, (100,), 1e-6)
    y, total = norm.add_norm(x, residual, w, attrs=attrs)
    assert torch.equal(total, x + residual)
    assert_2x_pytorch("add_norm", attrs, [x, residual, w], (y, total))


def test_add_norm_promotes_and_broadcasts_like_torch_add():
    x = _rand(2, 5, 48, dtype=torch.bfloat16)
    residual = _rand(48, dtype=torch.float32, seed=3)  # broadcast over rows; the sum is float32
    w, b = _rand(48, dtype=torch.float32, seed=1), _rand(48, dtype=torch.float32, seed=2)
    attrs = AddNormAttrs("layer", (48,), 1e-5)
    y, total = norm.add_norm(x, residual, w, b, attrs=attrs)
    assert total.dtype == torch.float32 and total.shape == (2, 5, 48)
    assert_2x_pytorch("add_norm", attrs, [x, residual, w, b], (y, total))
    ids = torch.arange(-300, 300, 5).reshape(5, 24).repeat(1, 2)[:, :48]  # int64: cast to bf16 (rounds)
    xb = _rand(5, 48, dtype=torch.bfloat16)
    y, total = norm.add_norm(xb, ids, w, b, attrs=attrs)
    assert torch.equal(total, xb + ids)
    assert_2x_pytorch("add_norm", attrs, [xb, ids, w, b], (y, total))
    x1 = _rand(1, 48, dtype=torch.float16)  # the input is the broadcast one
    residual1 = _rand(3, 48, dtype=torch.float16, seed=4)
    attrs_rms = AddNormAttrs("rms", (48,), None)
    assert_2x_pytorch("add_norm", attrs_rms, [x1, residual1], norm.add_norm(x1, residual1, attrs=attrs_rms))


# edges and refusals ----------------------------------------------------------------------

def test_empty_inputs_give_empty_results():
    x = torch.empty(0, 48, dtype=torch.float16)
    assert norm.layer_norm(x, attrs=NormAttrs((48,), 1e-5)).shape == (0, 48)
    assert norm.rms_norm(x, attrs=RMSNormAttrs((48,), None)).shape == (0, 48)
    y, total = norm.add_norm(x, x, attrs=AddNormAttrs("rms", (48,), None))
    assert y.shape == total.shape == (0, 48) and y.dtype == torch.float16


def test_unsupported_inputs_are_refused_by_name():
    x = torch.randn(3, 48)
    with pytest.raises(NotImplementedError, match="float64"):
        norm.layer_norm(x.double(), attrs=NormAttrs((48,), 1e-5))
    with pytest.raises(NotImplementedError, match="float64"):
        norm.add_norm(x.half(), torch.ones(3, 48, dtype=torch.float64), attrs=AddNormAttrs("rms", (48,), None))
    with pytest.raises(ValueError, match="takes no bias"):
        norm.add_norm(x, x, torch.ones(48), torch.zeros(48), attrs=AddNormAttrs("rms", (48,), None))
    with pytest.raises(ValueError, match="needs an eps"):
        norm.add_norm(x, x, attrs=AddNormAttrs("layer", (48,), None))
    with pytest.raises(ValueError, match="normalized_shape"):
        norm.rms_norm(x, attrs=RMSNormAttrs((40,), None))
    with pytest.raises(ValueError, match="weight of shape"):
        norm.rms_norm(x, torch.ones(40), attrs=RMSNormAttrs((48,), None))
    with pytest.raises(ValueError, match="power of two"):
        norm.rms_norm(x, attrs=RMSNormAttrs((48,), None), block_n=24)


@triton.jit
def _round_to_bf16_kernel(X, Y, N, BLOCK: tl.constexpr):
    cols = tl.arange(0, BLOCK)
    mask = cols < N
    tl.store(Y + cols, norm._round_to(tl.load(X + cols, mask=mask), tl.bfloat16), mask=mask)


def test_bf16_rounding_is_torchs_round_to_nearest_even():
    """The interpreter truncates float32 -> bfloat16; the kernels' own rounding must not."""
    one_ulp = 2.0 ** -7
    values = torch.tensor([
        1.0 + one_ulp / 2,            # tie, rounds down to the even 1.0
        1.0 + 3 * one_ulp / 2,        # tie, rounds up to the even 1 + 2 ulp
        1.0 + 0.75 * one_ulp, -2.3, 3.14159, 1e-39, -1e-40,  # above half; ordinary; subnormals
        3.3895e38, 3.3999e38, float("inf"), float("-inf"), float("nan"),  # bf16's max; past it: inf
    ], dtype=torch.float32)
    out = torch.empty(values.shape, dtype=torch.bfloat16)
    _round_to_bf16_kernel[(1,)](values, out, values.numel(), BLOCK=16)
    expected = values.bfloat16()
    assert torch.equal(out.view(torch.int16)[:-1], expected.view(torch.int16)[:-1])
    assert out[-1].isnan()
