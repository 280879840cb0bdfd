"""t2c/kernels/int8_gemm.py against the IR op `qlinear`'s reference, run by the Triton interpreter
(tests/conftest.py sets TRITON_INTERPRET=1), then end to end in the Triton backend.

W8A8 in float32 must be bit-identical to the reference (torch.equal): the per-token quantization
(amax, division, round half to even, clamp), the exact int32 product and the scales in the
reference's order leave no rounding to choose. Weight-only follows FlashAttention's rule, as the
norm kernels do: the kernel's max error against the reference computed in float64 from the same
inputs is at most twice the error of the reference run by PyTorch on the inputs as they are (in
x's dtype), plus a floor of float32 rounding noise. The interpreter runs 16 x 32 x 32 tiles, so
M from 1 to 70, N = 45 and K = 70 or 96 cut every tile edge (and 70 leaves a partial K block).
What the interpreter cannot show (int8 tensor cores, no FMA contraction, correctly rounded
division on the GPU) is checked in the PTX the kernels compile to for sm_90, without a GPU.
End to end: Llama at -O2 (W8A8) and -O1,quantize-int8 (weight-only), and a biased MLP per group,
compiled to the Triton target with their qlinear nodes on this kernel and validated.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

import t2c
import zoo
from t2c.backends.triton.handwritten import handwritten_kernel
from t2c.ir.opdefs.quant import QLinearAttrs, qlinear as reference, quantize_tokens, quantize_weight
from t2c.kernels import int8_gemm

DTYPES = (torch.float32, torch.float16, torch.bfloat16)
W8A8 = QLinearAttrs("w8a8", 0)


def _rand(*shape, scale=1.0, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g) * scale


def _layer(n, k, group=0, bias=True, dtype=torch.float32, seed=1):
    """(int8 weight, float32 scale, bias in dtype or None) of a random float layer."""
    q, s = quantize_weight(_rand(n, k, scale=0.2, seed=seed), group)
    return q, s, (_rand(n, seed=seed + 1).to(dtype) if bias else None)


def assert_2x_pytorch(x, q, s, b, attrs, got):
    """FlashAttention's rule for weight_only, with the float64 reference as the exact result; dtype and shape too."""
    low = reference(x, q, s, b, attrs.mode, attrs.group)
    exact = reference(x.double(), q, s.double(), None if b is None else b.double(), attrs.mode, attrs.group)
    assert got.dtype == low.dtype == x.dtype and got.shape == low.shape
    err = (got.double() - exact).abs().max().item()
    err_torch = (low.double() - exact).abs().max().item()
    floor = 2 * torch.finfo(torch.float32).eps * max(1.0, exact.abs().max().item())
    assert err <= 2 * err_torch + floor, f"kernel error {err:.3g}, PyTorch's {err_torch:.3g}"


# W8A8: bit-identical ------------------------------------------------------------------------

@pytest.mark.parametrize("m", [1, 3, 16, 17, 33, 70])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_w8a8_is_bit_identical_to_the_reference(m, bias):
    x = _rand(m, 70, scale=3.0, seed=m)
    x[0, 5] = 40.0  # an outlier: the other features of its token quantize coarsely
    q, s, b = _layer(45, 70, bias=bias)
    got = int8_gemm.qlinear(x, q, s, b, attrs=W8A8)
    want = reference(x, q, s, b, "w8a8", 0)
    assert got.dtype == torch.float32 and got.shape == (m, 45)
    assert torch.equal(got, want), (got - want).abs().max()


def test_w8a8_leading_dims_wide_k_and_zero_rows():
    x = _rand(2, 3, 300, 2, seed=3)[..., 1]  # strided; K = 300: ten K tiles, the last partial
    x[1, 2] = 0.0  # an all-zero token: sx is the floor 1e-30 / 127, its row is the bias
    q, s, b = _layer(40, 300)
    got = int8_gemm.qlinear(x, q, s, b, attrs=W8A8)
    assert got.shape == (2, 3, 40) and torch.equal(got, reference(x, q, s, b, "w8a8", 0))
    assert torch.equal(got[1, 2], b)


def test_token_quantization_rounds_half_to_even_like_torch_round():
    # amax 127: sx is exactly 1, so x / sx are these halves; round-half-away would give 1, 3, -3, 5
    row = torch.tensor([0.5, 1.5, 2.5, -2.5, -0.5, 3.5, 4.5, 126.5, -127.0, 0.49999997])
    x = torch.stack([row, row * 0.25, torch.zeros(10), _rand(10, seed=4)])
    for block_k in (None, 4):  # the row in one block, and in three (the last partial)
        xq, sx = int8_gemm.quantize_tokens(x, block_k=block_k)
        rq, rs = quantize_tokens(x)
        assert xq.dtype == torch.int8 and sx.dtype == torch.float32
        assert torch.equal(xq.float(), rq) and torch.equal(sx, rs[:, 0])
    assert xq[0].tolist() == [0, 2, 2, -2, 0, 4, 4, 126, -127, 0]


@pytest.mark.parametrize("activation", ["none", "relu", "silu"])
def test_epilogue_activation_hook(activation):
    x = _rand(19, 70, seed=5)
    q, s, b = _layer(45, 70)
    y = reference(x, q, s, b, "w8a8", 0)
    got = int8_gemm.qlinear(x, q, s, b, attrs=W8A8, activation=activation)
    if activation == "silu":
        torch.testing.assert_close(got, F.silu(y), rtol=1e-6, atol=1e-6)
    else:
        assert torch.equal(got, F.relu(y) if activation == "relu" else y)


# weight-only: FlashAttention's rule ---------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("m", [1, 16, 17, 70])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "nobias"])
def test_weight_only_per_channel(dtype, m, bias):
    x = _rand(m, 70, scale=2.0, seed=m).to(dtype)
    q, s, b = _layer(45, 70, bias=bias, dtype=dtype)
    attrs = QLinearAttrs("weight_only", 0)
    assert_2x_pytorch(x, q, s, b, attrs, int8_gemm.qlinear(x, q, s, b, attrs=attrs))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("group", [16, 48])  # 48: a group that straddles the 32-wide K tiles
def test_weight_only_per_group(dtype, group):
    x = _rand(2, 9, 96, seed=group).to(dtype)
    q, s, b = _layer(45, 96, group=group, dtype=dtype)
    attrs = QLinearAttrs("weight_only", group)
    got = int8_gemm.qlinear(x, q, s, b, attrs=attrs)
    assert got.shape == (2, 9, 45)
    assert_2x_pytorch(x, q, s, b, attrs, got)


def test_weight_only_scale_is_applied_per_channel_and_per_group():
    """Distinct scales per channel and per group: a kernel that read the wrong one is far off."""
    x = _rand(5, 64, seed=6)
    q = torch.randint(-127, 128, (33, 64), generator=torch.Generator().manual_seed(7), dtype=torch.int8)
    for group, s in ((0, torch.arange(1, 34, dtype=torch.float32)), (16, torch.arange(1, 133, dtype=torch.float32).reshape(33, 4))):
        attrs = QLinearAttrs("weight_only", group)
        assert_2x_pytorch(x, q, s, None, attrs, int8_gemm.qlinear(x, q, s, attrs=attrs))


# the GPU code path, compiled for sm_90 without a GPU ---------------------------------------

SM90_SCRIPT = """
import json, os
os.environ.pop("TRITON_INTERPRET", None)  # the real JIT, before triton is imported
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from t2c.kernels import int8_gemm as G

def ptx(fn, signature, constexprs, config):
    sig = dict(signature, **{k: "constexpr" for k in constexprs})
    src = ASTSource(fn=fn, signature=sig, constexprs={(list(sig).index(k),): v for k, v in constexprs.items()})
    options = dict(G.LAUNCH_OPTIONS, num_warps=config.num_warps, num_stages=config.num_stages)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options).asm["ptx"]

gemm = {"X": "*i8", "W": "*i8", "S": "*fp32", "B": "*fp32", "SX": "*fp32", "Y": "*fp32",
        "M": "i32", "N": "i32", "K": "i32", "GROUP": "i32", "NUM_GROUPS": "i32", "M_KEY": "i32"}
flags = dict(W8A8=True, PER_GROUP=False, HAS_BIAS=True, ACT="none", DOT_PRECISION="ieee", UPCAST=False)
big = G.GPU_LARGE_M_CONFIGS[2]
w8a8 = ptx(G._qlinear_kernel, gemm, dict(flags, **big.kwargs), big)
small = G.GPU_SMALL_M_CONFIGS[0]
bf16 = dict(gemm, X="*bf16", B="*bf16", Y="*bf16")
wo = ptx(G._qlinear_kernel, bf16, dict(flags, W8A8=False, DOT_PRECISION="tf32", **small.kwargs), small)
quant = ptx(G._quantize_rows_kernel, {"X": "*fp32", "XQ": "*i8", "SX": "*fp32", "K": "i32"}, {"BLOCK_K": 1024}, small)
print(json.dumps({"w8a8": w8a8, "weight_only": wo, "quantize": quant}))
"""


def test_gpu_code_compiles_for_sm90_with_the_ieee_steps_kept():
    """What the interpreter cannot show: on NVIDIA hardware the W8A8 product runs on int8 tensor cores
    and no float step is contracted or approximated (Triton's `/` and its default FMA fusion would be)."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-c", SM90_SCRIPT], capture_output=True, text=True, env=env, timeout=300,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert proc.returncode == 0, proc.stderr[-3000:]
    ptx = json.loads(proc.stdout)
    assert ".s32.s8.s8" in ptx["w8a8"] and "cvt.rn.f32.s32" in ptx["w8a8"]  # wgmma int8 -> int32, then round to nearest
    assert "fma.rn.f32" not in ptx["w8a8"] and ptx["w8a8"].count("mul.rn.f32") > 0  # (acc * scale) * sx + bias
    assert ".bf16" in ptx["weight_only"] and "mma" in ptx["weight_only"]
    q = ptx["quantize"]
    assert "div.rn.f32" in q and "div.full" not in q and "div.approx" not in q and "fma" not in q
    assert "0f4B400000" in q and "0fCB400000" in q  # + 1.5 * 2^23, - 1.5 * 2^23: round half to even


# what it refuses ------------------------------------------------------------------------------

def test_refusals_name_what_is_unsupported():
    q, s, b = _layer(8, 32)
    x = _rand(3, 32)
    assert int8_gemm.supports(W8A8) and int8_gemm.supports(QLinearAttrs("weight_only", 16))
    assert not int8_gemm.supports(QLinearAttrs("w8a8", 16)) and not int8_gemm.supports(QLinearAttrs("w4", 0))
    with pytest.raises(NotImplementedError, match="float64"):
        int8_gemm.qlinear(x.double(), q, s, attrs=QLinearAttrs())
    with pytest.raises(NotImplementedError, match="w8a8 takes float32"):
        int8_gemm.qlinear(x.half(), q, s, attrs=W8A8)
    with pytest.raises(NotImplementedError, match="group"):
        int8_gemm.qlinear(x, q, s, attrs=QLinearAttrs("w8a8", 16))
    with pytest.raises(NotImplementedError, match="activation"):
        int8_gemm.qlinear(x, q, s, attrs=W8A8, activation="gelu")
    k = int8_gemm.MAX_W8A8_K + 1
    with pytest.raises(NotImplementedError, match="overflow"):
        int8_gemm.qlinear(torch.zeros(1, k), torch.zeros(1, k, dtype=torch.int8), torch.ones(1), attrs=W8A8)
    with pytest.raises(ValueError, match="does not match"):
        int8_gemm.qlinear(_rand(3, 31), q, s, attrs=W8A8)
    with pytest.raises(ValueError, match="scale must be"):
        int8_gemm.qlinear(x, q, s, attrs=QLinearAttrs("weight_only", 16))
    with pytest.raises(ValueError, match="bias"):
        int8_gemm.qlinear(x, q, s, b.half(), attrs=W8A8)
    assert int8_gemm.qlinear(torch.zeros(0, 4, 32), q, s, attrs=W8A8).shape == (0, 4, 8)


# the Triton backend: qlinear nodes on the hand-written kernel ---------------------------------

@pytest.mark.parametrize("passes,mode", [("-O1,quantize-int8", "weight_only"), ("-O2", "w8a8")])
def test_llama_int8_compiles_to_the_handwritten_kernel_and_validates(passes, mode, tmp_path):
    """-O2 is -O1 plus quantize-int8{mode=w8a8}; weight-only is -O1,quantize-int8 (README). The driver
    validates the loaded module against the IR interpreter at two shapes and judges the pass by its bar."""
    model, examples = zoo.build("llama", batch=1, seq=8)
    c = t2c.compile(model, examples, passes=passes, target="triton", out=str(tmp_path))
    counts = json.loads((tmp_path / "kernels.json").read_text())
    report = json.loads((tmp_path / "report.json").read_text())
    text = (tmp_path / "model.py").read_text()
    assert c.ok is True and report["validation"]["ok"] is True
    n = counts["handwritten"]["ops"]["qlinear"]
    assert n == 14 and "qlinear" not in counts["generic"]["ops"]  # 2 layers x (q, k, v, o, gate, up, down)
    assert text.count("_int8_gemm.qlinear(") == n and text.count(f'mode="{mode}"') == n
    for shape in report["validation"]["artifact_vs_ir"]:
        for out in shape["outputs"]:
            assert out["ok"] and out["cosine"] > 0.99999, out
    nodes = [node for node in c.graph.nodes if node.op == "qlinear"]
    assert len(nodes) == n and {node.attrs.mode for node in nodes} == {mode}
    assert all(handwritten_kernel(node) == ("t2c.kernels.int8_gemm", "qlinear") for node in nodes)


@pytest.mark.parametrize("passes,modes", [("-O1,quantize-int8{mode=w8a8}", [("w8a8", 0), ("w8a8", 0)]),
                                          ("-O1,quantize-int8{granularity=per_group,group=16}",
                                           [("weight_only", 16), ("weight_only", 0)])])  # K = 40: per channel
def test_biased_mlp_per_group_and_w8a8_on_the_handwritten_kernel(passes, modes, tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(48, 40), torch.nn.GELU(), torch.nn.Linear(40, 48)).eval()
    c = t2c.compile(model, {"input": _rand(2, 5, 48)}, passes=passes, target="triton", out=str(tmp_path))
    counts = json.loads((tmp_path / "kernels.json").read_text())
    report = json.loads((tmp_path / "report.json").read_text())
    nodes = [node for node in c.graph.nodes if node.op == "qlinear"]
    assert c.ok is True and counts["handwritten"]["ops"] == {"qlinear": 2}
    assert [(node.attrs.mode, node.attrs.group) for node in nodes] == modes and len(nodes[-1].inputs) == 4  # a bias
    for shape in report["validation"]["artifact_vs_ir"]:
        for out in shape["outputs"]:
            assert out["ok"] and out["cosine"] > 0.99999 and out["max_abs"] < 1e-3, out
