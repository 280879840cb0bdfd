"""Lowering of the semantic `attention` op (t2c/ir/opdefs/attention.py), in three forms.

1. No structure, or causal only (a plain lower triangle, Sq == Sk): the opset-23
   `Attention` op, which carries scale, softcap (applied before the mask, as in
   the IR), GQA and a bool/float mask.
2. Banded structure (a sliding window bounded on both sides, causal or not,
   block-local attention, each optionally with global tokens): the *blocked*
   form, which never materialises an Sq x Sk tensor. The sequence is padded at
   run time to a multiple of the block size Bk (the window's reach, at most
   MAX_BLOCK), Q is viewed as [B,H,nb,Bk,D] and each query block attends to
   the key blocks its band can reach (offsets -n..+m), concatenated into
   [B,H,nb,nOff*Bk,D]. The exact IR rule
   is applied as a -inf mask computed from absolute positions (query
   blk*Bk + r, key (blk+o)*Bk + c), which also drops the padding keys. Global
   tokens add a score slab against keys 0..G-1 (the band excludes those keys so
   nothing counts twice), and the first G query rows, which see every key, are
   computed separately ([B,H,G,Sk]) and replace the blocked rows. Memory and
   time scale as n*(nOff*Bk + G). The structural mask is an additive 0/-inf
   bias [nb,Bk,nOff*Bk] (a broadcast Add is much faster in onnxruntime than a
   broadcast Where), built once per graph and shared by every layer. A padding
   mask [B,1,1,Sk] (or [B,Hq,1,Sk]) is laid out in blocks like the keys; other
   mask shapes with banded structure raise LoweringError.
3. Anything else (a window unbounded on one side, Sq != Sk with structure,
   masks the blocked form does not take): explicit dense math with the
   structural mask built from Range/compare ops.

With rope fused (rope != "none"), q and k are rotated first by the `rope`
lowering (rope.py) and the attention is then lowered as above. Flavor `ort`
first tries ONNX Runtime's GroupQueryAttention / MultiHeadAttention
(ort_attention.py), which take the cases they compute exactly.

Scores are computed in f32 for f16/bf16 inputs, as the IR reference does; rows
that see no key give zeros.
"""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

from ...ir.core import DType, Value, dims_equal
from ...ir.opdefs.attention import attention_operands, has_structure
from .attention import _repeat_heads
from .context import ONNX_DTYPE, LoweringError
from .lowering import arg, lowers, out_dtype
from .ort_attention import lower_ort_attention, ort_attention_kernel
from .rope import lower_rope

BIG = 1 << 62  # "to the end" for Slice


@lowers("attention")
def _attention(ctx, node):
    if node.attrs.rope != "none":
        node = _with_rope_applied(ctx, node)
    if ctx.flavor == "ort":
        kernel = ort_attention_kernel(node)
        if kernel is not None:
            return [lower_ort_attention(ctx, node, kernel)]
    a = node.attrs
    q_t, k_t = node.inputs[0].type, node.inputs[1].type
    same_len = dims_equal(q_t.shape[-2], k_t.shape[-2])
    if not has_structure(a) or (_causal_only(a) and same_len):
        return [_attention_op(ctx, node)]
    band = band_plan(a)
    if band is not None and same_len:
        return [_blocked(ctx, node, *band)]
    return [_dense(ctx, node)]


def _with_rope_applied(ctx, node):
    """A stand-in for `node` whose q and k are the rotated tensors (lowered by rope.py) and whose rope is "none"."""
    q, k, v, mask, cos, sin = attention_operands(node.inputs, node.attrs)
    interleaved, rd = node.attrs.rope == "interleaved", node.attrs.rotary_dim
    rotated = []
    for x in (q, k):
        x2 = Value(x.type)  # not in the graph: only named in ctx
        ctx.bind(x2, lower_rope(ctx, ctx.name(x), x, cos, sin, interleaved, rd))
        rotated.append(x2)
    inputs = tuple(rotated) + (v,) + ((mask,) if mask is not None else ())
    return SimpleNamespace(op=node.op, inputs=inputs, outputs=node.outputs, attrs=replace(node.attrs, rope="none", rotary_dim=0))


def _causal_only(a) -> bool:
    """causal with an unlimited left reach and no blocks: the structural rule is j <= i (globals change nothing)."""
    return a.causal and a.window[0] < 0 and a.block == 0


# Blocks no larger than this: a window of W then costs keys W + Bk per query instead
# of 2W (block i-1 and i), at the price of more, smaller key slices.
MAX_BLOCK = 128


def band_plan(a) -> tuple[int, tuple[int, ...]] | None:
    """(block size Bk, key-block offsets) for the blocked form, or None when the band is unbounded."""
    left, right = a.window
    if a.block > 0:  # i // b == j // b: only the query's own block (a window only narrows it)
        return a.block, (0,)
    reach_r = 0 if a.causal else right
    if left < 0 or reach_r < 0:
        return None
    bk = min(max(left, reach_r) + 1, MAX_BLOCK)
    n_left, n_right = -(-left // bk), -(-reach_r // bk)  # blocks the band reaches on each side
    return bk, tuple(range(-n_left, n_right + 1))


# -- the Attention op --------------------------------------------------------------------


def _attention_op(ctx, node):
    a, dt = node.attrs, out_dtype(node)
    inputs = [arg(ctx, node, i) for i in range(3)]
    if len(node.inputs) > 3:
        m_t = node.inputs[3].type
        m = arg(ctx, node, 3)
        if m_t.dtype != DType.BOOL:
            m = ctx.cast(m, m_t.dtype, dt)
        if m_t.rank < 4:
            m = ctx.emit("Unsqueeze", [m, ctx.ints(list(range(4 - m_t.rank)))])
        if m_t.rank < 2 or not dims_equal(m_t.shape[-2], node.inputs[0].type.shape[-2]):
            # onnxruntime wants the mask's query dim spelled out (a [B,1,1,Sk] padding mask is not taken)
            sq = ctx.emit("Shape", [inputs[0]], start=2, end=3)
            m = ctx.emit("Expand", [m, ctx.emit("Concat", [ctx.ints([1, 1]), sq, ctx.ints([1])], axis=0)])
        inputs.append(m)
    attrs = {"is_causal": int(a.causal), "scale": float(a.scale)}
    if a.softcap > 0:
        attrs["softcap"] = float(a.softcap)
    if dt in (DType.F16, DType.BF16):
        attrs["softmax_precision"] = ONNX_DTYPE[DType.F32]
    return ctx.emit("Attention", inputs, **attrs)


# -- shared pieces -----------------------------------------------------------------------


def _compute_dtype(dt: DType) -> DType:
    return DType.F32 if dt in (DType.F16, DType.BF16) else dt


def _qkv(ctx, node, cdt):
    """q, k, v cast to the compute dtype, k/v heads repeated to q's (GQA)."""
    q_t, k_t, v_t = (node.inputs[i].type for i in range(3))
    q, k, v = (arg(ctx, node, i, cdt) for i in range(3))
    if q_t.shape[1] != k_t.shape[1]:
        k = _repeat_heads(ctx, k, k_t, q_t.shape[1])
        v = _repeat_heads(ctx, v, v_t, q_t.shape[1])
    return q, k, v


def _scores(ctx, q, k, a, cdt, kt_perm):
    """scale * q @ k^T, soft-capped."""
    s = ctx.emit("MatMul", [q, ctx.emit("Transpose", [k], perm=kt_perm)])
    s = ctx.emit("Mul", [s, ctx.const(float(a.scale), cdt)])
    if a.softcap > 0:
        cap = ctx.const(float(a.softcap), cdt)
        s = ctx.emit("Mul", [ctx.emit("Tanh", [ctx.emit("Div", [s, cap])]), cap])
    return s


def _and(ctx, conds):
    conds = [c for c in conds if c is not None]
    if not conds:
        return None
    out = conds[0]
    for c in conds[1:]:
        out = ctx.emit("And", [out, c])
    return out


def _i64(ctx, v: int) -> str:
    return ctx.const(v, DType.I64)


def _base(ctx, i, j, a):
    """The band rule of the IR (window bounds and block-local), or None when it is always true."""
    left, right = a.window
    conds = []
    if left >= 0:
        conds.append(ctx.emit("GreaterOrEqual", [j, ctx.emit("Sub", [i, _i64(ctx, left)])]))
    if right >= 0:
        conds.append(ctx.emit("LessOrEqual", [j, ctx.emit("Add", [i, _i64(ctx, right)])]))
    if a.block > 0:
        b = _i64(ctx, a.block)
        conds.append(ctx.emit("Equal", [ctx.floordiv(i, b), ctx.floordiv(j, b)]))
    return _and(ctx, conds)


def _mask_where(ctx, scores, visible, cdt):
    if visible is None:
        return scores
    return ctx.emit("Where", [visible, scores, ctx.const(float("-inf"), cdt)])


def _zero_nan(ctx, probs, cdt):
    """softmax of an all -inf row is NaN; the IR gives zeros there."""
    return ctx.emit("Where", [ctx.emit("IsNaN", [probs]), ctx.const(0.0, cdt), probs])


def _user_mask_additive(ctx, node, cdt):
    """The mask operand as an additive [.., Sk] float tensor of rank 4 (bool: 0 / -inf), or None."""
    if len(node.inputs) <= 3:
        return None, None
    m_t = node.inputs[3].type
    m = arg(ctx, node, 3)
    if m_t.rank < 4:
        m = ctx.emit("Unsqueeze", [m, ctx.ints(list(range(4 - m_t.rank)))])
    if m_t.dtype == DType.BOOL:
        m = ctx.emit("Where", [m, ctx.const(0.0, cdt), ctx.const(float("-inf"), cdt)])
    else:
        m = ctx.cast(m, m_t.dtype, cdt)
    shape = (1,) * (4 - m_t.rank) + tuple(m_t.shape)
    return m, shape


def _seq_len(ctx, x, axis):
    return ctx.emit("Shape", [x], start=axis, end=axis + 1)  # [1] int64


def _range(ctx, n1):
    """Range(0, n) as int64 [n] for a [1] int64 tensor n."""
    n = ctx.emit("Squeeze", [n1, ctx.ints([0])])
    return ctx.emit("Range", [_i64(ctx, 0), n, _i64(ctx, 1)])


# -- dense -------------------------------------------------------------------------------


def _dense(ctx, node):
    """Full [B,H,Sq,Sk] scores with the structural mask from Range/compare ops."""
    a, dt = node.attrs, out_dtype(node)
    cdt = _compute_dtype(dt)
    q, k, v = _qkv(ctx, node, cdt)
    s = _scores(ctx, q, k, a, cdt, [0, 1, 3, 2])
    i = ctx.emit("Unsqueeze", [_range(ctx, _seq_len(ctx, q, 2)), ctx.ints([1])])
    j = _range(ctx, _seq_len(ctx, k, 2))
    visible = _base(ctx, i, j, a)
    if a.global_tokens > 0 and visible is not None:
        g = _i64(ctx, a.global_tokens)
        visible = ctx.emit("Or", [visible, ctx.emit("Or", [ctx.emit("Less", [i, g]), ctx.emit("Less", [j, g])])])
    if a.causal:
        visible = _and(ctx, [visible, ctx.emit("LessOrEqual", [j, i])])
    if len(node.inputs) > 3:
        m_t, m = node.inputs[3].type, arg(ctx, node, 3)
        if m_t.dtype == DType.BOOL:
            visible = _and(ctx, [visible, m])
        else:
            s = ctx.emit("Add", [s, ctx.cast(m, m_t.dtype, cdt)])
    s = _mask_where(ctx, s, visible, cdt)
    probs = _zero_nan(ctx, ctx.emit("Softmax", [s], axis=-1), cdt)
    return ctx.cast(ctx.emit("MatMul", [probs, v]), cdt, dt)


# -- blocked -----------------------------------------------------------------------------


def _blocked(ctx, node, bk: int, offs: tuple[int, ...]):
    a, dt = node.attrs, out_dtype(node)
    cdt = _compute_dtype(dt)
    n_glob = a.global_tokens
    mask, m_shape = _user_mask_additive(ctx, node, cdt)
    if mask is not None:
        k_len = node.inputs[1].type.shape[-2]
        q_heads = node.inputs[0].type.shape[1]
        if not (m_shape[2] == 1 and dims_equal(m_shape[3], k_len) and m_shape[1] in (1, q_heads)):
            raise LoweringError(
                f"attention with window/block/global structure takes only a padding-style mask "
                f"broadcastable as [batch, 1, 1, seq] (or [batch, heads, 1, seq]); got {list(m_shape)}"
            )
    q, k, v = _qkv(ctx, node, cdt)

    seq = ctx.dim1(node.inputs[0].type.shape[-2])  # [1]; shared by every attention node of the graph
    bk_c = ctx.ints([bk])
    pad = ctx.emit("Mod", [ctx.emit("Sub", [bk_c, ctx.emit("Mod", [seq, bk_c])]), bk_c])  # (Bk - S % Bk) % Bk
    front = -min(offs) * bk
    back = ctx.emit("Add", [pad, ctx.ints([max(offs) * bk])])
    n_off = len(offs)

    def pad_seq(x, rank, axis, before, after):
        zeros = ctx.ints([0])
        pads = [ctx.ints([before]) if d == axis else zeros for d in range(rank)]
        pads += [after if d == axis else zeros for d in range(rank)]
        return ctx.emit("Pad", [x, ctx.emit("Concat", pads, axis=0)], mode="constant")

    def blocks(x, rank, axis):
        """[.., S', *tail] -> [.., S'/Bk, Bk, *tail] (Bk a constant, the rest copied or inferred)."""
        tail = ctx.emit("Shape", [x], start=axis + 1) if axis + 1 < rank else None
        parts = [ctx.ints([0] * axis + [-1, bk])] + ([tail] if tail else [])
        shp = ctx.emit("Concat", parts, axis=0) if len(parts) > 1 else parts[0]
        return ctx.emit("Reshape", [x, shp])

    nb = ctx.emit("Div", [ctx.emit("Add", [seq, pad]), bk_c])  # [1] query blocks
    # key block indices [nb, nOff]: query block b reads padded key blocks b .. b+nOff-1
    window_idx = ctx.emit("Add", [ctx.emit("Unsqueeze", [_range(ctx, nb), ctx.ints([1])]), ctx.const(list(range(n_off)), DType.I64, (1, n_off))])

    def key_blocks(x, rank, axis):
        """[.., S, *tail] -> [.., nb, nOff*Bk, *tail]: for each query block, its key blocks side by side.

        One Gather of the blocks each query block reaches (a single copy), then a free reshape.
        """
        xb = blocks(pad_seq(x, rank, axis, front, back), rank, axis)  # [.., nb + nOff - 1, Bk, ..]
        if n_off == 1:
            return xb
        g = ctx.emit("Gather", [xb, window_idx], axis=axis)  # [.., nb, nOff, Bk, ..]
        parts = [ctx.emit("Shape", [g], start=0, end=axis + 1), ctx.ints([-1])]
        if axis + 3 < rank + 2:
            parts.append(ctx.emit("Shape", [g], start=axis + 3))
        return ctx.emit("Reshape", [g, ctx.emit("Concat", parts, axis=0)])

    qb = blocks(pad_seq(q, 4, 2, 0, pad), 4, 2)  # [B,H,nb,Bk,D]
    kb, vb = key_blocks(k, 4, 2), key_blocks(v, 4, 2)  # [B,H,nb,nOff*Bk,D]
    s = _scores(ctx, qb, kb, a, cdt, [0, 1, 2, 4, 3])  # [B,H,nb,Bk,nOff*Bk]

    bias, qpos = _band_bias(ctx, node, seq, pad, bk, offs, cdt)  # [nb,Bk,nOff*Bk] 0 / -inf
    if mask is not None:  # [mb,mh,1,S] -> [mb,mh,nb,1,nOff*Bk]
        mb = key_blocks(ctx.emit("Squeeze", [mask, ctx.ints([2])]), 3, 2)
        s = ctx.emit("Add", [s, ctx.emit("Unsqueeze", [mb, ctx.ints([3])])])
    s = ctx.emit("Add", [s, bias])

    if n_glob > 0:
        kg = ctx.emit("Slice", [k, ctx.ints([0]), ctx.ints([n_glob]), ctx.ints([2])])  # [B,H,G',D]
        vg = ctx.emit("Slice", [v, ctx.ints([0]), ctx.ints([n_glob]), ctx.ints([2])])
        kg5 = ctx.emit("Unsqueeze", [kg, ctx.ints([2])])  # [B,H,1,G',D]
        sg = _scores(ctx, qb, kg5, a, cdt, [0, 1, 2, 4, 3])  # [B,H,nb,Bk,G']
        if mask is not None:
            mg = ctx.emit("Slice", [mask, ctx.ints([0]), ctx.ints([n_glob]), ctx.ints([3])])  # [mb,mh,1,G']
            sg = ctx.emit("Add", [sg, ctx.emit("Unsqueeze", [mg, ctx.ints([2])])])
        if a.causal:
            gpos = ctx.const(list(range(n_glob)), DType.I64, (1, 1, n_glob))
            gpos = ctx.emit("Slice", [gpos, ctx.ints([0]), _seq_len(ctx, kg, 2), ctx.ints([2])])
            sg = ctx.emit("Add", [sg, _bias(ctx, ctx.emit("LessOrEqual", [gpos, qpos]), cdt)])  # [nb,Bk,G']
        s = ctx.emit("Concat", [s, sg], axis=-1)

    probs = ctx.emit("Softmax", [s], axis=-1)
    if mask is not None:  # the structure always shows a query itself; only a mask can hide every key
        probs = _zero_nan(ctx, probs, cdt)
    if n_glob > 0:
        width = ctx.ints([n_off * bk])
        p_band = ctx.emit("Slice", [probs, ctx.ints([0]), width, ctx.ints([-1])])
        p_glob = ctx.emit("Slice", [probs, width, ctx.ints([BIG]), ctx.ints([-1])])
        out = ctx.emit("Add", [ctx.emit("MatMul", [p_band, vb]),
                               ctx.emit("MatMul", [p_glob, ctx.emit("Unsqueeze", [vg, ctx.ints([2])])])])
    else:
        out = ctx.emit("MatMul", [probs, vb])  # [B,H,nb,Bk,Dv]
    out = ctx.emit("Reshape", [out, ctx.emit("Concat", [ctx.ints([0, 0, -1]), ctx.emit("Shape", [out], start=4)], axis=0)])
    out = ctx.emit("Slice", [out, ctx.ints([0]), seq, ctx.ints([2])])  # drop the padding rows

    if n_glob > 0:  # the first G queries see every key: [B,H,G',Sk], O(G*n)
        qg = ctx.emit("Slice", [q, ctx.ints([0]), ctx.ints([n_glob]), ctx.ints([2])])
        sq = _scores(ctx, qg, k, a, cdt, [0, 1, 3, 2])
        if mask is not None:
            sq = ctx.emit("Add", [sq, mask])
        if a.causal:
            gi = ctx.emit("Unsqueeze", [_range(ctx, _seq_len(ctx, qg, 2)), ctx.ints([1])])
            sq = ctx.emit("Add", [sq, _bias(ctx, ctx.emit("LessOrEqual", [_range(ctx, seq), gi]), cdt)])
        pg = _zero_nan(ctx, ctx.emit("Softmax", [sq], axis=-1), cdt)
        out_g = ctx.emit("MatMul", [pg, v])
        rest = ctx.emit("Slice", [out, ctx.ints([n_glob]), ctx.ints([BIG]), ctx.ints([2])])
        out = ctx.emit("Concat", [out_g, rest], axis=2)
    return ctx.cast(out, cdt, dt)


def _bias(ctx, visible, cdt):
    """A bool visibility tensor as an additive 0 / -inf bias (Add broadcasts faster than Where)."""
    return ctx.emit("Where", [visible, ctx.const(0.0, cdt), ctx.const(float("-inf"), cdt)])


def _band_bias(ctx, node, seq, pad, bk, offs, cdt):
    """The structural bias [nb, Bk, nOff*Bk] of the blocked form and the query positions [nb, Bk, 1].

    Built from absolute positions, query blk*Bk + r and key (blk + lo)*Bk + c: the
    IR's band rule, causality, padding keys (< 0 or >= seq) and, with global tokens,
    keys < G (those are scored in the global slab). Computed once per graph for
    each distinct structure: every layer's attention shares it.
    """
    a = node.attrs
    key = (seq, bk, offs, a.window, a.block, a.global_tokens, a.causal, cdt)
    cache = ctx.__dict__.setdefault("_t2c_band_bias", {})
    if key in cache:
        return cache[key]
    n_off, lo = len(offs), min(offs)
    nb = ctx.emit("Div", [ctx.emit("Add", [seq, pad]), ctx.ints([bk])])
    blk = ctx.emit("Unsqueeze", [_range(ctx, nb), ctx.ints([1, 2])])  # [nb,1,1]
    start = ctx.emit("Mul", [blk, _i64(ctx, bk)])
    qpos = ctx.emit("Add", [start, ctx.const(list(range(bk)), DType.I64, (1, bk, 1))])  # [nb,Bk,1]
    kpos = ctx.emit("Add", [start, ctx.const([lo * bk + c for c in range(n_off * bk)], DType.I64, (1, 1, n_off * bk))])
    conds = [_base(ctx, qpos, kpos, a), ctx.emit("Less", [kpos, ctx.emit("Squeeze", [seq, ctx.ints([0])])])]
    if lo < 0:
        conds.append(ctx.emit("GreaterOrEqual", [kpos, _i64(ctx, 0)]))
    if a.global_tokens > 0:
        conds.append(ctx.emit("GreaterOrEqual", [kpos, _i64(ctx, a.global_tokens)]))
    if a.causal:
        conds.append(ctx.emit("LessOrEqual", [kpos, qpos]))
    cache[key] = (_bias(ctx, _and(ctx, conds), cdt), qpos)
    return cache[key]
