"""Linear attention over a KV cache, decoded from a recurrent state instead (`linear-attention` on a
`--with-past` graph).

Causal linear attention needs only two running sums of the past, not the past itself:

    S = sum_j keep_j phi(k_j)^T v_j   [D, Dv]      z = sum_j keep_j phi(k_j)   [D]

(keep_j = 0 on padding). Both are kept in one tensor per layer, the state [batch, kv_heads, D, Dv+1]
= sum_j keep_j phi(k_j)^T [v_j, 1], so its last column is z. A step over `seq` new tokens is

    out_i  = (phi(q_i) S_past + sum_{j<=i new} (phi(q_i).phi(k_j)) keep_j [v_j, 1]) split into num | den
    out_i  = num / den        (0 where no key is visible yet: den = 0)
    S_next = S_past + sum_{j new} keep_j phi(k_j)^T [v_j, 1]

which is what linear attention over the whole cache computes, in O(1) memory and time per token
however long the context. The rewrite turns each attention over `cat(past_key, k_new)` /
`cat(past_value, v_new)` (a graph input and the cache output `present_*`, as
frontends/hf_past.py traces them) into that step: the inputs `past_key_<i>`/`past_value_<i>` become
`past_state_<i>`, the outputs `present_key_<i>`/`present_value_<i>` become `present_state_<i>`.
keep comes from the attention's own mask: the last query's row over the new keys (that row sees
every real key, so it is the key padding).

The graph records each state input (`Graph.states`): which KV inputs it replaces and which input is
the key padding (`attention_mask`, [batch, past+seq]). Validation builds states from KV inputs,
and eager's KV outputs into states, from that record (t2c/ir/states.py), so the graph is compared
with eager and with the IR before it as for any pass.
"""

from __future__ import annotations

from ..ir.core import DType, Graph, Node, TensorType, Value, dim_sub, dims_equal
from ..ir.opdefs.attention import attention_operands
from ..ir.opdefs.creation import FullAttrs
from ..ir.opdefs.pointwise import CastAttrs
from ..ir.opdefs.shape import AxisAttrs, DiagonalAttrs, PadAttrs, PermuteAttrs, ShapeAttrs, SliceAttrs
from ..ir.states import STATE_KIND
from .rewrite import Rewriter


class CacheAttention:
    """An attention over `cat(past, new)` keys and values whose concatenations are the cache outputs."""

    def __init__(self, node: Node, past_k: Value, past_v: Value, k_new: Value, v_new: Value, keep_input: Value | None):
        self.node, self.past_k, self.past_v, self.k_new, self.v_new, self.keep_input = node, past_k, past_v, k_new, v_new, keep_input


def over_cache(graph: Graph, node: Node) -> bool:
    """Whether `node` attends over more keys than queries (the keys of a KV cache)."""
    return not dims_equal(node.inputs[0].type.shape[-2], node.inputs[1].type.shape[-2])


def match_cache_attention(graph: Graph, node: Node) -> CacheAttention | str:
    """The cache structure around `node`, or why it is not one this rewrite can carry into a state."""
    q, k, v, mask, _, _ = attention_operands(node.inputs, node.attrs)
    halves = []
    for operand, what in ((k, "keys"), (v, "values")):
        cat = operand.producer
        if cat is None or cat.op != "cat" or len(cat.inputs) != 2 or cat.attrs.dim not in (2, -2):
            return f"its {what} are not a concatenation of a cache input and new {what}"
        past = cat.inputs[0]
        if not graph.is_input(past) or len(past.uses) != 1:
            return f"its {what}' cache is not a graph input read only by the concatenation"
        outputs = [n for n, o in graph.outputs if o is operand]
        if len(outputs) != 1 or operand.users != [node]:
            return f"its {what} are not returned once as the present cache and read by this attention alone (a rolling cache, or reused)"
        halves.append((past, cat.inputs[1]))
    if mask is not None and (mask.type.dtype != DType.BOOL or mask.type.rank != 4):
        return "its mask is additive or not [batch, heads, queries, keys] (it may carry biases a state cannot hold)"
    sk = k.type.shape[-2]
    keep = [i for i in graph.inputs if i.type.rank == 2 and not i.type.dtype.is_float and dims_equal(i.type.shape[1], sk)]
    if mask is not None and len(keep) != 1:
        return "no single integer input spans the cache and the new tokens (the attention_mask that says which keys are padding)"
    (past_k, k_new), (past_v, v_new) = halves
    return CacheAttention(node, past_k, past_v, k_new, v_new, keep[0] if mask is not None else None)


def _renamed(name: str, old: str, new: str) -> str:
    return name.replace(old, new, 1) if old in name else f"{name}_{new}"


def linearize_over_cache(graph: Graph, rw: Rewriter, m: CacheAttention, feature: str) -> None:
    """Replace the attention of `m` by a linear-attention step over a state (module docstring)."""
    node = m.node
    q, _, _, mask, _, _ = attention_operands(node.inputs, node.attrs)
    out_type = node.outputs[0].type
    b, hq, sq, d = q.type.shape
    _, hkv, _, dv = m.v_new.type.shape
    sk = node.inputs[1].type.shape[-2]
    g = hq // hkv
    f32 = DType.F32

    def ins(op, inputs, attrs=None):
        return rw.insert(op, inputs, attrs, before=node).outputs[0]

    consts: dict[float, Value] = {}

    def const(value: float) -> Value:
        if value not in consts:
            consts[value] = ins("full", [], FullAttrs(shape=(), value=value, dtype=f32))
        return consts[value]

    def as_f32(x):
        return x if x.type.dtype == f32 else ins("cast", [x], CastAttrs(f32))

    def phi(x):  # elu(x) + 1 = x + 1 where x > 0, else exp(x)
        if feature != "elu1":
            raise ValueError(f"no state form for feature map {feature!r}")
        return ins("where", [ins("gt", [x, const(0.0)]), ins("add", [x, const(1.0)]), ins("exp", [x])])

    state_type = TensorType(f32, (b, hkv, d, dv + 1))
    state = Value(state_type, None, 0, _renamed(m.past_k.name, "key", "state"))
    fk = phi(as_f32(m.k_new))
    if mask is not None:  # the last query's row over the new keys: which new keys are real tokens
        row = ins("slice", [mask], SliceAttrs(dim=2, start=dim_sub(sq, 1), end=sq))
        row = ins("slice", [row], SliceAttrs(dim=3, start=dim_sub(sk, sq), end=sk))
        if mask.type.shape[1] != 1:
            row = ins("slice", [row], SliceAttrs(dim=1, start=0, end=1))
        keep = ins("permute", [ins("cast", [row], CastAttrs(f32))], PermuteAttrs((0, 1, 3, 2)))
        fk = ins("mul", [fk, keep])
    v1 = ins("pad", [as_f32(m.v_new)], PadAttrs(pads=(0, 1), value=1.0))  # [v, 1]: the last column sums phi(k)
    fk_t = ins("permute", [fk], PermuteAttrs((0, 1, 3, 2)))
    present = ins("add", [state, ins("matmul", [fk_t, v1])])
    fq = ins("reshape", [phi(as_f32(q))], ShapeAttrs((b, hkv, g, sq, d)))  # query heads grouped by their KV head
    inter = ins("matmul", [fq, ins("unsqueeze", [state], AxisAttrs(2))])
    scores = ins("tril", [ins("matmul", [fq, ins("unsqueeze", [fk_t], AxisAttrs(2))])], DiagonalAttrs(0))
    total = ins("add", [inter, ins("matmul", [scores, ins("unsqueeze", [v1], AxisAttrs(2))])])
    num = ins("slice", [total], SliceAttrs(dim=4, start=0, end=dv))
    den = ins("slice", [total], SliceAttrs(dim=4, start=dv, end=dv + 1))
    den = ins("where", [ins("eq", [den, const(0.0)]), const(1.0), den])  # a row that sees no key yet: 0, not 0/0
    out = ins("reshape", [ins("div", [num, den])], ShapeAttrs((b, hq, sq, dv)))
    if out_type.dtype != f32:
        out = ins("cast", [out], CastAttrs(out_type.dtype))

    cat_k, cat_v = node.inputs[1], node.inputs[2]
    names = {id(cat_k): None, id(cat_v): None}
    for n, o in graph.outputs:
        if id(o) in names:
            names[id(o)] = n
    present_name = _renamed(names[id(cat_k)], "key", "state")
    graph.outputs = [(present_name, present) if o is cat_k else (n, o) for n, o in graph.outputs if o is not cat_v]
    graph.inputs = [state if i is m.past_k else i for i in graph.inputs if i is not m.past_v]
    graph.states[state.name] = {
        "kind": STATE_KIND, "feature": feature, "keys": m.past_k.name, "values": m.past_v.name,
        "keep": m.keep_input.name if m.keep_input is not None else None,
        "present": present_name, "present_keys": names[id(cat_k)], "present_values": names[id(cat_v)],
    }
    rw.replace_node(node, [out])
