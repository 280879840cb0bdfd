"""The blocked form of `attention`: banded structure in O(n * (W + G)), never an Sq x Sk tensor.

For a plan of form "blocked" (t2c/plans/attention.py): a sliding window bounded
on both sides (causal or not) or block-local attention, each optionally with G
global tokens. The sequence is padded at run time to a multiple of the block
size Bk, Q is viewed in blocks [.., nb, Bk, D], and each query block attends to
the key blocks the plan lists (offsets -n..+m), gathered side by side into
[.., nb, nOff*Bk, D] with one Gather. The exact IR rule is applied as an
additive 0/-inf bias [nb, Bk, nOff*Bk] computed from absolute positions (query
blk*Bk + r, key (blk+o)*Bk + c), which also drops the padding keys; a broadcast
Add is much faster in onnxruntime than a broadcast Where, and the bias is built
once per graph and shared by every layer. Global tokens add a score slab against
keys 0..G-1 (the band excludes those keys so nothing counts twice), and the
first G query rows, which see every key, are computed separately ([.., G, Sk])
and replace the blocked rows.

Grouped-query attention is computed without repeating K and V: the `group`
query heads of each KV head are viewed as an axis of their own, q as
[B, Hkv, group, S, D], and the key blocks [B, Hkv, 1, nb, nOff*Bk, D] broadcast
over it in the MatMuls (the plan's `group`; with one query head per KV head the
group axis is left out).

A mask operand must be a key-padding row (the plan's mask "row"): [B|1, 1|Hq,
1, Sk], bool or additive; it is laid out in blocks like the keys. Other masks
with banded structure raise LoweringError (the dense form takes them only when
the structure is not banded).
"""

from __future__ import annotations

from ...ir.core import DType, dims_equal
from .attention import AttentionCall, arange, band_rule, compute_dtype, i64, scores, seq_len, zero_nan
from .context import LoweringError

BIG = 1 << 62  # "to the end" for Slice


def lower_blocked(ctx, call: AttentionCall) -> str:
    p, dt = call.plan, call.dtype
    cdt = compute_dtype(dt)
    bk, offs, n_glob, grp = p.block_size, p.key_offsets, p.global_tokens, p.group
    grouped = grp > 1
    # q-like tensors: [B, H, S, D], or [B, Hkv, group, S, D] when grouped; sa is their seq axis
    sa = 3 if grouped else 2
    mask = _padding_rows(ctx, call, cdt)  # [mb, mkv, (mgrp,) S] additive, or None

    q = ctx.cast(call.q, call.q_t.dtype, cdt)
    k = ctx.cast(call.k, call.k_t.dtype, cdt)
    v = ctx.cast(call.v, call.v_t.dtype, cdt)
    if grouped:
        q = ctx.emit("Reshape", [q, ctx.ints([0, p.kv_heads, grp, -1, p.head_dim])])

    seq = ctx.dim1(call.q_t.shape[-2])  # [1]; shared by every attention node of the graph
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
    window_idx = ctx.emit("Add", [ctx.emit("Unsqueeze", [arange(ctx, nb), ctx.ints([1])]), ctx.const(list(range(n_off)), DType.I64, (1, n_off))])

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

    def per_group(x, axes):
        """A K/V-side tensor made to broadcast over the query-group axis (unchanged when not grouped)."""
        return ctx.emit("Unsqueeze", [x, ctx.ints(axes)]) if grouped else x

    qb = blocks(pad_seq(q, sa + 2, sa, 0, pad), sa + 2, sa)  # [.., nb, Bk, D]
    kb, vb = (per_group(key_blocks(x, 4, 2), [2]) for x in (k, v))  # [B, Hkv, (1,) nb, nOff*Bk, D]
    kt = list(range(sa + 1)) + [sa + 2, sa + 1]  # swap the last two axes of a block tensor
    s = scores(ctx, qb, kb, p, cdt, kt)  # [.., nb, Bk, nOff*Bk]

    bias, qpos = _band_bias(ctx, call, seq, pad, cdt)  # [nb, Bk, nOff*Bk] 0 / -inf, [nb, Bk, 1]
    if mask is not None:  # [mb, .., S] -> [mb, .., nb, 1, nOff*Bk]
        mb = key_blocks(mask, sa + 1, sa)
        s = ctx.emit("Add", [s, ctx.emit("Unsqueeze", [mb, ctx.ints([sa + 1])])])
    s = ctx.emit("Add", [s, bias])

    if n_glob > 0:
        kg = ctx.emit("Slice", [k, ctx.ints([0]), ctx.ints([n_glob]), ctx.ints([2])])  # [B, Hkv, G', D]
        vg = ctx.emit("Slice", [v, ctx.ints([0]), ctx.ints([n_glob]), ctx.ints([2])])
        slab = [2, 3] if grouped else [2]  # broadcast over (the group and) the query blocks
        kg_b = ctx.emit("Unsqueeze", [kg, ctx.ints(slab)])
        sg = scores(ctx, qb, kg_b, p, cdt, kt)  # [.., nb, Bk, G']
        if mask is not None:
            mg = ctx.emit("Slice", [mask, ctx.ints([0]), ctx.ints([n_glob]), ctx.ints([sa])])  # [mb, .., G']
            sg = ctx.emit("Add", [sg, ctx.emit("Unsqueeze", [mg, ctx.ints([sa, sa + 1])])])
        if p.causal:
            gpos = ctx.const(list(range(n_glob)), DType.I64, (1, 1, n_glob))
            gpos = ctx.emit("Slice", [gpos, ctx.ints([0]), seq_len(ctx, kg, 2), ctx.ints([2])])
            sg = ctx.emit("Add", [sg, _bias(ctx, ctx.emit("LessOrEqual", [gpos, qpos]), cdt)])  # [nb, Bk, G']
        s = ctx.emit("Concat", [s, sg], axis=-1)

    probs = ctx.emit("Softmax", [s], axis=-1)
    if mask is not None:  # the structure always shows a query itself; only a mask can hide every key
        probs = zero_nan(ctx, probs, cdt)
    if n_glob > 0:
        width = ctx.ints([n_off * bk])
        p_band = ctx.emit("Slice", [probs, ctx.ints([0]), width, ctx.ints([-1])])
        p_glob = ctx.emit("Slice", [probs, width, ctx.ints([BIG]), ctx.ints([-1])])
        out = ctx.emit("Add", [ctx.emit("MatMul", [p_band, vb]),
                               ctx.emit("MatMul", [p_glob, ctx.emit("Unsqueeze", [vg, ctx.ints(slab)])])])
    else:
        out = ctx.emit("MatMul", [probs, vb])  # [.., nb, Bk, Dv]
    out = ctx.emit("Reshape", [out, ctx.emit("Concat", [ctx.ints([0] * sa + [-1]), ctx.emit("Shape", [out], start=sa + 2)], axis=0)])
    out = ctx.emit("Slice", [out, ctx.ints([0]), seq, ctx.ints([sa])])  # drop the padding rows

    if n_glob > 0:  # the first G queries see every key: [.., G', Sk], O(G*n)
        qg = ctx.emit("Slice", [q, ctx.ints([0]), ctx.ints([n_glob]), ctx.ints([sa])])
        sq = scores(ctx, qg, per_group(k, [2]), p, cdt, list(range(sa)) + [sa + 1, sa])
        if mask is not None:
            sq = ctx.emit("Add", [sq, ctx.emit("Unsqueeze", [mask, ctx.ints([sa])])])
        if p.causal:
            gi = ctx.emit("Unsqueeze", [arange(ctx, seq_len(ctx, qg, sa)), ctx.ints([1])])
            sq = ctx.emit("Add", [sq, _bias(ctx, ctx.emit("LessOrEqual", [arange(ctx, seq), gi]), cdt)])
        pg = zero_nan(ctx, ctx.emit("Softmax", [sq], axis=-1), cdt)
        out_g = ctx.emit("MatMul", [pg, per_group(v, [2])])
        rest = ctx.emit("Slice", [out, ctx.ints([n_glob]), ctx.ints([BIG]), ctx.ints([sa])])
        out = ctx.emit("Concat", [out_g, rest], axis=sa)
    if grouped:  # [B, Hkv, group, S, Dv] -> [B, Hq, S, Dv]: query head h = kv * group + g
        out = ctx.emit("Reshape", [out, ctx.ints([0, p.q_heads, -1, p.v_head_dim])])
    return ctx.cast(out, cdt, dt)


def _padding_rows(ctx, call: AttentionCall, cdt):
    """The mask operand as additive key-padding rows, [mb, mh, S] or, grouped, [mb, mkv, mgrp, S]; None without one."""
    if call.mask is None:
        return None
    p, m_t = call.plan, call.mask_t
    mb, mh, _, sk = p.mask_shape
    if not (p.mask == "row" and dims_equal(sk, call.k_t.shape[-2]) and mh in (1, p.q_heads)):
        raise LoweringError(
            f"attention with window/block/global structure takes only a padding-style mask "
            f"broadcastable as [batch, 1, 1, seq] (or [batch, heads, 1, seq]); got {list(p.mask_shape)}"
        )
    m = call.mask
    if m_t.rank < 4:
        m = ctx.emit("Unsqueeze", [m, ctx.ints(list(range(4 - m_t.rank)))])
    if p.mask_bool:
        m = ctx.emit("Where", [m, ctx.const(0.0, cdt), ctx.const(float("-inf"), cdt)])
    else:
        m = ctx.cast(m, m_t.dtype, cdt)
    m = ctx.emit("Squeeze", [m, ctx.ints([2])])  # [mb, mh, S]
    if p.group > 1:  # the heads axis as (KV head, query group), like q
        heads = [p.kv_heads, p.group] if mh == p.q_heads else [1, 1]
        m = ctx.emit("Reshape", [m, ctx.ints([0] + heads + [-1])])
    return m


def _bias(ctx, visible, cdt):
    """A bool visibility tensor as an additive 0 / -inf bias (Add broadcasts faster than Where)."""
    return ctx.emit("Where", [visible, ctx.const(0.0, cdt), ctx.const(float("-inf"), cdt)])


def _band_bias(ctx, call: AttentionCall, seq, pad, cdt):
    """The structural bias [nb, Bk, nOff*Bk] of the blocked form and the query positions [nb, Bk, 1].

    Built from absolute positions, query blk*Bk + r and key (blk + lo)*Bk + c: the
    IR's band rule, causality, padding keys (< 0 or >= seq) and, with global tokens,
    keys < G (those are scored in the global slab). Computed once per graph for
    each distinct structure: every layer's attention shares it.
    """
    p = call.plan
    bk, offs = p.block_size, p.key_offsets
    key = ("band_bias", seq, bk, offs, p.window, p.block, p.global_tokens, p.causal, cdt)
    if key in ctx.shared:
        return ctx.shared[key]
    n_off, lo = len(offs), min(offs)
    nb = ctx.emit("Div", [ctx.emit("Add", [seq, pad]), ctx.ints([bk])])
    blk = ctx.emit("Unsqueeze", [arange(ctx, nb), ctx.ints([1, 2])])  # [nb,1,1]
    start = ctx.emit("Mul", [blk, i64(ctx, bk)])
    qpos = ctx.emit("Add", [start, ctx.const(list(range(bk)), DType.I64, (1, bk, 1))])  # [nb,Bk,1]
    kpos = ctx.emit("Add", [start, ctx.const([lo * bk + c for c in range(n_off * bk)], DType.I64, (1, 1, n_off * bk))])
    conds = [band_rule(ctx, qpos, kpos, p), ctx.emit("Less", [kpos, ctx.emit("Squeeze", [seq, ctx.ints([0])])])]
    if lo < 0:
        conds.append(ctx.emit("GreaterOrEqual", [kpos, i64(ctx, 0)]))
    if p.global_tokens > 0:
        conds.append(ctx.emit("GreaterOrEqual", [kpos, i64(ctx, p.global_tokens)]))
    if p.causal:
        conds.append(ctx.emit("LessOrEqual", [kpos, qpos]))
    from .attention import all_of

    ctx.shared[key] = (_bias(ctx, all_of(ctx, conds), cdt), qpos)
    return ctx.shared[key]
