"""Classify attention masks by evaluating them, not by matching their spellings (DESIGN §4).

A mask built only from shapes (arange, compare, cumsum, index, ... and constant
buffers) is a function of the sequence length alone. We evaluate that subgraph
at several lengths and fit the structural attrs of `attention` to what comes
out: none, causal, a sliding window (causal or bidirectional), block-local,
global tokens. The fit is accepted only if it reproduces the mask exactly at
every probed length; otherwise the mask stays an operand (still exact).

Probe lengths include small ones, odd ones, and each integer constant c found
in the mask's subgraph around c (c-1 .. c+2, 2c+1): a window of 4096 is a
constant 4096 somewhere in the subgraph, and only lengths past it reveal it.
A constant too large to probe (> `max_probe`) makes the classification refuse
rather than guess.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ..ir.core import DType, Graph, Node, SymDim, Value, dims_equal
from ..ir.opdefs.attention import AttentionAttrs, structural_mask
from ..ir.ops import EvalContext, get_op
from .patterns import cone

BASE_LENGTHS = (1, 2, 3, 5, 8, 13, 16, 17, 31, 64, 100)
# Additive masks use -inf or the dtype's most negative value for "masked".
MASKED_BELOW = -1e30


@dataclass(frozen=True)
class MaskClass:
    """What a mask operand turned out to be."""

    kind: str  # none | causal | sliding | band | block | global | input | unclassified
    attrs: AttentionAttrs | None = None  # the structural attrs (scale/kv_heads left default) when structural
    reason: str = ""


def _constants(nodes: list[Node]) -> set[int]:
    out = set()
    for n in nodes:
        if n.op == "full" and not n.attrs.shape and isinstance(n.attrs.value, (int, float)) and not isinstance(n.attrs.value, bool):
            v = n.attrs.value
            if float(v).is_integer() and 2 <= abs(v) <= 1 << 20:
                out.add(int(abs(v)))
    return out


def evaluate(graph: Graph, nodes: list[Node], value: Value, bindings: dict[str, int]) -> torch.Tensor:
    """Run the cone's references with the dynamic dims bound to `bindings`."""
    ctx = EvalContext(bindings)
    env: dict[Value, torch.Tensor] = {v: graph.params[n] for n, v in graph.param_values.items() if n in graph.params}
    with torch.no_grad():
        for node in nodes:
            outs = get_op(node.op).run(ctx, node.attrs, [env[v] for v in node.inputs])
            for o, t in zip(node.outputs, outs):
                env[o] = t
    return env[value]


def _visible(mask: torch.Tensor) -> torch.Tensor | None:
    """[Sq, Sk] bool from a bool or additive mask, if it is the same for every batch and head."""
    if mask.dtype == torch.bool:
        vis = mask
    elif mask.dtype.is_floating_point:
        finite_ok = (mask == 0) | (mask <= MASKED_BELOW) | torch.isneginf(mask)
        if not bool(finite_ok.all()):
            return None  # a real bias (ALiBi, relative positions): not structural
        vis = mask == 0
    else:
        return None
    if vis.dim() < 2:
        return None
    flat = vis.reshape(-1, vis.shape[-2], vis.shape[-1])
    if not bool((flat == flat[:1]).all()):
        return None
    return flat[0]


def _fit(vis: torch.Tensor) -> AttentionAttrs | None:
    """Structural attrs that explain one [L, L] mask exactly, or None.

    Global tokens are the leading rows/columns that see and are seen by all;
    in the rest, the farthest key to the left and right of each query gives the
    window, and the first query that no longer sees its predecessor a block.
    """
    sq, sk = vis.shape
    if sq != sk or sq == 0 or not bool(vis.any(-1).all()):
        return None  # different lengths, or a row that sees nothing: not a structure we lift
    for g in sorted({0, _leading_global(vis)}):
        rest = vis[g:, g:]
        if rest.numel() == 0:
            continue
        idx = torch.arange(rest.shape[1])
        i = torch.arange(rest.shape[0])
        first = torch.where(rest, idx, rest.shape[1]).amin(-1)
        last = torch.where(rest, idx, -1).amax(-1)
        left, right = int((i - first).max()), int((last - i).max())
        causal = right == 0 and sq > 1
        candidates = [AttentionAttrs(causal=causal, window=(left, -1 if causal else right), global_tokens=g)]
        block = _block_size(rest)
        if block:
            candidates.append(AttentionAttrs(causal=causal, block=block, global_tokens=g))
        for a in candidates:
            if torch.equal(structural_mask(sq, sk, a), vis):
                return a
    return None


def _leading_global(vis: torch.Tensor) -> int:
    g = 0
    while g < vis.shape[0] and bool(vis[g].all()) and bool(vis[:, g].all()):
        g += 1
    return g if g < vis.shape[0] else 0


def _block_size(vis: torch.Tensor) -> int:
    """The first i > 0 at which a query no longer sees its predecessor: a block boundary."""
    for i in range(1, vis.shape[0]):
        if not bool(vis[i, i - 1]):
            return i
    return 0


def _generalise(fits: list[tuple[int, AttentionAttrs]]) -> AttentionAttrs:
    """One set of attrs for every length, read off the longest probe (it shows the most).

    A bound that reaches across the whole longest probe is no bound (-1). The
    caller then checks these attrs against every probe.
    """
    length, a = max(fits, key=lambda f: f[0])
    left, right = a.window
    left = -1 if left >= length - 1 else left
    right = -1 if right >= length - 1 or a.causal else right
    return replace(a, window=(left, right))


def kind_of(a: AttentionAttrs) -> str:
    if a.global_tokens:
        return "global"
    if a.block:
        return "block"
    if a.window[0] >= 0 or a.window[1] >= 0:
        return "sliding" if a.causal else "band"
    return "causal" if a.causal else "none"


def classify(graph: Graph, mask: Value, seq_dims: tuple, *, max_probe: int = 8200, negate: bool = False) -> MaskClass:
    """Classify the mask operand of an attention whose query/key length dims are `seq_dims`.

    `negate`: `mask` is a bool mask whose true means "hidden" (`where(mask, -big, s)`); its negation is classified."""
    nodes = cone(graph, mask)
    if nodes is None:
        return MaskClass("input", reason="the mask depends on a model input (padding)")
    symbols = sorted({s for d in seq_dims if isinstance(d, SymDim) for s in d.symbols})
    static = all(isinstance(d, int) for d in seq_dims)
    if not static and (len(symbols) != 1 or any(isinstance(d, SymDim) and d.expr != symbols[0] for d in seq_dims)):
        return MaskClass("unclassified", reason="query and key lengths are not one dynamic dim")
    consts = _constants(nodes)
    if any(c + 2 > max_probe for c in consts):
        return MaskClass("unclassified", reason=f"a constant {max(consts)} in the mask is longer than max_probe={max_probe}")
    other = [s for s in _all_symbols(graph) if s not in symbols]
    if static:
        lengths = [seq_dims[0]]
    else:
        probe = set(BASE_LENGTHS)
        for c in consts:
            probe |= {c - 1, c, c + 1, c + 2, 2 * c + 1}
        lengths = sorted(x for x in probe if 1 <= x <= max_probe)
    fits, probes = [], []
    for length in lengths:
        for batch in (1, 2) if length <= 8 else (1,):
            bindings = {s: batch for s in other}
            if symbols:
                bindings[symbols[0]] = length
            try:
                value = evaluate(graph, nodes, mask, bindings)
            except (RuntimeError, IndexError, ValueError, KeyError) as e:
                return MaskClass("unclassified", reason=f"evaluating the mask at length {length} failed: {e}")
            if negate:
                value = ~value
            if value.dim() >= 2:  # a mask may leave its query or key axis to broadcasting
                sq, sk = seq_dims if static else (length, length)
                try:
                    value = value.expand(*value.shape[:-2], sq, sk)
                except RuntimeError:
                    return MaskClass("unclassified", reason=f"the mask does not broadcast to {sq}x{sk}")
            vis = _visible(value)
            if vis is None:
                return MaskClass("unclassified", reason="the mask is not a 0/-inf pattern shared by every batch and head")
            a = _fit(vis)
            if a is None:
                return MaskClass("unclassified", reason=f"no structure explains the mask at length {length}")
            fits.append((length, a))
            probes.append((length, vis))
    a = _generalise(fits)
    for length, vis in probes:  # the one set of attrs must reproduce every probe
        if not torch.equal(structural_mask(length, length, a), vis):
            return MaskClass("unclassified", reason=f"the fitted structure differs at length {length}")
    return MaskClass(kind_of(a), a)


PADDING_ANDS = ("bitwise_and", "logical_and")


def split_padding(graph: Graph, mask: Value, seq_dims: tuple, *, max_probe: int = 8200) -> tuple[MaskClass, Value] | None:
    """A bool mask `structure AND padding`: (the structure's class, the padding operand), or None.

    Hugging Face builds an encoder's or decoder's mask with an attention_mask input as the
    AND of a shape-only part (causal, sliding, or all true) and the input's padding row
    [B, 1, 1, Sk]. Split, the shape-only part becomes attrs by evaluation (`classify`) and
    only the row stays an operand: exact, since `attention` ANDs its structure with a bool
    mask, and the row is what padding-aware kernels take.
    """
    n = mask.producer
    if n is None or n.op not in PADDING_ANDS or len(n.inputs) != 2:
        return None
    shape_only, padding = n.inputs
    if cone(graph, shape_only) is None:
        shape_only, padding = padding, shape_only
    if cone(graph, shape_only) is None or cone(graph, padding) is not None:
        return None
    t = padding.type
    if t.dtype != DType.BOOL or t.rank != 4 or t.shape[1] != 1 or t.shape[2] != 1 or not dims_equal(t.shape[3], seq_dims[1]):
        return None
    mc = classify(graph, shape_only, seq_dims, max_probe=max_probe)
    return (mc, padding) if mc.attrs is not None else None


def _all_symbols(graph: Graph) -> list[str]:
    return graph.symbols()
