"""Lowering of `linear_attention` (t2c/ir/opdefs/attention.py): O(n) matmuls, never an n x n tensor.

phi(x) = Elu(x) + 1. GQA repeats the k/v heads.

Non-causal: kv = phi(K)^T V [B,H,D,Dv], z = sum_j phi(K_j) [B,H,1,D];
out = (phi(Q) @ kv) / (phi(Q) @ z^T).

Causal, chunked (chunk C, the sequence padded at run time to a multiple of C;
padded keys get phi = 0 so they add nothing): with Q, K, V viewed as
[B,H,nc,C,*], each chunk combines
  - intra-chunk: A = (phi(Q_c) phi(K_c)^T) * tril (j <= i inside the chunk),
    numerator A @ V_c, denominator rowsum(A);
  - inter-chunk: the state of all earlier chunks, an exclusive CumSum over
    chunks of phi(K_c)^T V_c [B,H,nc,D,Dv] (and of sum phi(K_c) [B,H,nc,D]),
    numerator phi(Q_c) @ state, denominator phi(Q_c) . z_state.
Memory is O(n*C + n/C*D*Dv); no Loop is needed.
"""

from __future__ import annotations

from ...ir.core import DType
from .attention import repeat_heads
from .lowering import arg, lowers, out_dtype

CHUNK = 64  # causal chunk length; tests may patch it smaller


@lowers("linear_attention")
def _linear_attention(ctx, node):
    a, dt = node.attrs, out_dtype(node)
    cdt = DType.F32 if dt in (DType.F16, DType.BF16) else dt
    q_t, k_t, v_t = (node.inputs[i].type for i in range(3))
    q, k, v = (arg(ctx, node, i, cdt) for i in range(3))
    if q_t.shape[1] != k_t.shape[1]:
        k = repeat_heads(ctx, k, k_t, q_t.shape[1])
        v = repeat_heads(ctx, v, v_t, q_t.shape[1])
    one = ctx.const(1.0, cdt)
    fq = ctx.emit("Add", [ctx.emit("Elu", [q], alpha=1.0), one])
    fk = ctx.emit("Add", [ctx.emit("Elu", [k], alpha=1.0), one])
    out = _causal(ctx, fq, fk, v, CHUNK, cdt) if a.causal else _global(ctx, fq, fk, v)
    return [ctx.cast(out, cdt, dt)]


def _global(ctx, fq, fk, v):
    kv = ctx.emit("MatMul", [ctx.emit("Transpose", [fk], perm=[0, 1, 3, 2]), v])  # [B,H,D,Dv]
    z = ctx.emit("ReduceSum", [fk, ctx.ints([2])], keepdims=1)  # [B,H,1,D]
    num = ctx.emit("MatMul", [fq, kv])
    den = ctx.emit("MatMul", [fq, ctx.emit("Transpose", [z], perm=[0, 1, 3, 2])])  # [B,H,S,1]
    return ctx.emit("Div", [num, den])


def _causal(ctx, fq, fk, v, chunk: int, cdt: DType):
    seq = ctx.emit("Shape", [fq], start=2, end=3)
    c = ctx.ints([chunk])
    pad = ctx.emit("Mod", [ctx.emit("Sub", [c, ctx.emit("Mod", [seq, c])]), c])
    pads = ctx.emit("Concat", [ctx.ints([0] * 6), pad, ctx.ints([0])], axis=0)  # [B,H,S,D]: end of S only

    def chunks(x):  # [B,H,S,D] -> [B,H,nc,C,D], zero-padded
        x = ctx.emit("Pad", [x, pads], mode="constant")
        shp = ctx.emit("Concat", [ctx.ints([0, 0, -1, chunk]), ctx.emit("Shape", [x], start=3)], axis=0)
        return ctx.emit("Reshape", [x, shp])

    qc, kc, vc = chunks(fq), chunks(fk), chunks(v)
    kt = ctx.emit("Transpose", [kc], perm=[0, 1, 2, 4, 3])  # [B,H,nc,D,C]
    scores = ctx.emit("MatMul", [qc, kt])  # [B,H,nc,C,C]
    tril = ctx.const([[j <= i for j in range(chunk)] for i in range(chunk)], DType.BOOL, (chunk, chunk))
    attn = ctx.emit("Where", [tril, scores, ctx.const(0.0, cdt)])
    num = ctx.emit("MatMul", [attn, vc])  # [B,H,nc,C,Dv]
    den = ctx.emit("ReduceSum", [attn, ctx.ints([-1])], keepdims=1)  # [B,H,nc,C,1]

    axis = ctx.const(2, DType.I64)
    state = ctx.emit("CumSum", [ctx.emit("MatMul", [kt, vc]), axis], exclusive=1)  # [B,H,nc,D,Dv]
    zsum = ctx.emit("ReduceSum", [kc, ctx.ints([3])], keepdims=1)  # [B,H,nc,1,D]
    zstate = ctx.emit("CumSum", [zsum, axis], exclusive=1)
    num = ctx.emit("Add", [num, ctx.emit("MatMul", [qc, state])])
    den = ctx.emit("Add", [den, ctx.emit("MatMul", [qc, ctx.emit("Transpose", [zstate], perm=[0, 1, 2, 4, 3])])])
    out = ctx.emit("Div", [num, den])  # [B,H,nc,C,Dv]
    out = ctx.emit("Reshape", [out, ctx.emit("Concat", [ctx.ints([0, 0, -1]), ctx.emit("Shape", [out], start=4)], axis=0)])
    return ctx.emit("Slice", [out, ctx.ints([0]), seq, ctx.ints([2])])
