"""Flavor `ort`: `attention` on ONNX Runtime's com.microsoft attention kernels (an overlay).

Two kernels, each used only where its documented semantics are exactly the IR's
(t2c/ir/opdefs/attention.py), decided from the attention plan before anything is
emitted; every other attention returns None and lowers as in `standard`
(attention.py). Both take and return [B, S, H*D] tensors, so q, k, v
[B, H, S, D] are transposed and merged here and the output split back; the
transposes cancel against the model's own in ONNX Runtime's transpose optimizer.

* GroupQueryAttention: causal self-attention with an unlimited left reach and no
  mask operand (the decoder case), any Hq that is a multiple of Hkv, optional
  softcap (applied to the scaled scores before masking, as in the IR), and a
  head size that is a multiple of 8 (the kernel refuses others at run time). The
  kernel is always causal: with no KV cache, `seqlens_k` = S - 1 for every batch
  row and `total_sequence_length` = S make query i see keys 0..i. Rotary stays a
  separate RotaryEmbedding (do_rotary = 0): GQA's cos/sin caches are indexed by
  position, while the IR's cos/sin are per-token tensors that may come from any
  position ids. Its `local_window_size` is not used: the kernel still computes
  every causal score (O(n^2)), where the blocked form (blocked_attention.py) is
  O(n*w).
* MultiHeadAttention: attention with no structure (encoders), Hq == Hkv, no
  softcap, and no mask, an additive float mask (passed as `attention_bias`
  expanded to [B or 1, H or 1, Sq, Sk]; finfo.min moved one step up, which the
  kernel would read as -inf, and a row of -inf, which it softmaxes to NaN, set to
  zeros as the IR defines) or a bool key-padding mask [B|1, 1, 1, Sk]
  (the padding mask of an encoder with an attention_mask input). The bool mask
  goes in as `key_padding_mask` [B, Sk] (int32, 1 = attend) with
  `mask_filter_value` = -inf, so masked keys get exactly zero weight; a batch row
  whose keys are all padding would softmax to NaN, so its output is set to zeros,
  as the IR defines. Other bool masks are not passed: made additive, a fully
  masked row would give NaN where the IR gives zeros.

Only float32: the kernels' float16 paths were not measured here. Measured
against `standard` between the head split and merge a traced model has
(benchmarks/ort_kernels.py, ONNX Runtime CPU, batch 1, sequence 512, one
thread, two runs): GroupQueryAttention 0.77-0.91x and MultiHeadAttention 0.88-0.97x the
time of the Attention op.
"""

from __future__ import annotations

from ...ir.core import DType, dims_equal
from ...ir.opdefs.attention import attention_operands
from ...plans import AttentionPlan
from .attention import AttentionCall, attention_call, kernel_bias, plan_of
from .context import ONNX_DTYPE
from .flavors import MS_DOMAIN, overlay


def ort_attention_kernel(node) -> str | None:
    """The com.microsoft op that computes `node` exactly, or None."""
    q, k, v = (node.inputs[i].type for i in range(3))
    if any(t.rank != 4 or t.dtype != DType.F32 for t in (q, k, v)):
        return None
    if not all(isinstance(t.shape[3], int) for t in (q, k, v)):
        return None
    p = plan_of(node)
    if not p.same_length or p.head_dim != p.v_head_dim:
        return None
    if p.causal_only and p.mask == "none" and p.head_dim % 8 == 0:
        return "GroupQueryAttention"
    mask = attention_operands(node.inputs, node.attrs)[3]
    mask_ok = mask is None or (
        dims_equal(p.mask_shape[3], k.shape[2]) and (_bias_broadcasts(p, mask.type, q) or _key_padding(p, q))
    )
    unstructured = not p.causal and p.window == (-1, -1) and p.block == 0 and p.global_tokens == 0
    if unstructured and p.group == 1 and p.softcap == 0 and mask_ok:
        return "MultiHeadAttention"
    return None


@overlay("ort", "attention")
def _ort_attention(ctx, node):
    kernel = ort_attention_kernel(node)
    if kernel is None:
        return None
    return [lower_ort_attention(ctx, attention_call(ctx, node), kernel)]


def lower_ort_attention(ctx, call: AttentionCall, kernel: str) -> str:
    """The ONNX name of the attention's output [B, Hq, S, Dv], computed by `kernel`."""
    p = call.plan
    hq, hkv, dv = p.q_heads, p.kv_heads, p.v_head_dim
    q, k, v = (_merge_heads(ctx, x, t) for x, t in ((call.q, call.q_t), (call.k, call.k_t), (call.v, call.v_t)))
    if kernel == "GroupQueryAttention":
        seq = ctx.emit("Cast", [ctx.emit("Shape", [q], start=1, end=2)], to=ONNX_DTYPE[DType.I32])  # [S]
        batch = ctx.emit("Shape", [q], start=0, end=1)  # [B]
        seqlens_k = ctx.emit("Expand", [ctx.emit("Sub", [seq, ctx.const([1], DType.I32)]), batch])
        total = ctx.emit("Squeeze", [seq, ctx.ints([0])])
        attrs = {"num_heads": hq, "kv_num_heads": hkv, "scale": float(p.scale)}
        if p.softcap > 0:
            attrs["softcap"] = float(p.softcap)
        out = ctx.emit(kernel, [q, k, v, "", "", seqlens_k, total], domain=MS_DOMAIN, **attrs)
    elif call.mask is not None and p.mask_bool:
        keep = _key_padding_mask(ctx, call.mask, p, call.q_t)  # [B, Sk] int32
        out = ctx.emit(kernel, [q, k, v, "", keep], domain=MS_DOMAIN, num_heads=hq, scale=float(p.scale), mask_filter_value=float("-inf"))
        any_key = ctx.emit("Unsqueeze", [ctx.emit("ReduceMax", [keep, ctx.ints([1])], keepdims=1), ctx.ints([2])])  # [B, 1, 1]
        out = ctx.emit("Where", [ctx.cast(any_key, DType.I32, DType.BOOL), out, ctx.const(0.0, DType.F32)])
    else:
        inputs = [q, k, v]
        if call.mask is not None:
            inputs += ["", "", _attention_bias(ctx, call.mask, call.mask_t, p, call.q_t)]
        out = ctx.emit(kernel, inputs, domain=MS_DOMAIN, num_heads=hq, scale=float(p.scale))
        if call.mask is not None:  # a query row the bias hides with -inf softmaxes to NaN here; the IR gives zeros
            out = ctx.emit("Where", [ctx.emit("IsNaN", [out]), ctx.const(0.0, DType.F32), out])
    split = ctx.emit("Reshape", [out, ctx.ints([0, 0, hq, dv])])
    return ctx.emit("Transpose", [split], perm=[0, 2, 1, 3])


def _bias_broadcasts(p: AttentionPlan, m_t, q_t) -> bool:
    """A float32 mask that broadcasts to MultiHeadAttention's attention_bias [B|1, H|1, Sq|1, Sk]."""
    if m_t.dtype != DType.F32 or m_t.rank > 4:
        return False
    b, h, sq, _ = p.mask_shape
    return (
        (b == 1 or dims_equal(b, q_t.shape[0]))
        and (h == 1 or dims_equal(h, q_t.shape[1]))
        and (sq == 1 or dims_equal(sq, q_t.shape[2]))
    )


def _key_padding(p: AttentionPlan, q_t) -> bool:
    """A bool mask of one row of keys per batch element: [B|1, 1, 1, Sk] (or fewer leading dims)."""
    if not p.mask_bool or p.mask != "row" or len(p.mask_shape) != 4:
        return False  # (a mask of rank > 4 has no [B, H, Sq, Sk] reading)
    b, h, _, _ = p.mask_shape
    return (b == 1 or dims_equal(b, q_t.shape[0])) and h == 1


def _key_padding_mask(ctx, m: str, p: AttentionPlan, q_t) -> str:
    """The bool key-padding mask as MultiHeadAttention's key_padding_mask: int32 [B, Sk], 1 = attend."""
    b = p.mask_shape
    rows = ctx.emit("Reshape", [m, ctx.shape([b[0], b[3]])])
    if not dims_equal(b[0], q_t.shape[0]):  # one row for every batch element
        rows = ctx.emit("Expand", [rows, ctx.shape([q_t.shape[0], b[3]])])
    return ctx.cast(rows, DType.BOOL, DType.I32)


def _merge_heads(ctx, x: str, t) -> str:
    """[B, H, S, D] -> [B, S, H*D]."""
    x = ctx.emit("Transpose", [x], perm=[0, 2, 1, 3])
    return ctx.emit("Reshape", [x, ctx.ints([0, 0, t.shape[1] * t.shape[3]])])


def _attention_bias(ctx, m: str, m_t, p: AttentionPlan, q_t) -> str:
    """An additive mask broadcast to [B|1, H|1, Sq, Sk], the shapes MultiHeadAttention takes."""
    m = kernel_bias(ctx, m, DType.F32)  # the kernel reads finfo.min as -inf; the IR adds it (attention.kernel_bias)
    if m_t.rank < 4:
        m = ctx.emit("Unsqueeze", [m, ctx.ints(list(range(4 - m_t.rank)))])
    if dims_equal(p.mask_shape[2], q_t.shape[2]):
        return m
    bh = ctx.emit("Shape", [m], start=0, end=2)  # B|1, H|1 stay as they are
    want = ctx.emit("Concat", [bh, ctx.dim1(q_t.shape[2]), ctx.emit("Shape", [m], start=3, end=4)], axis=0)
    return ctx.emit("Expand", [m, want])
