"""The "fully fused" check: per layer, is every attention, rope, norm and activation fused?

A layer is fully fused when none of the primitive ops that the fusion passes
absorb is left in it: no `sdpa` or `softmax` (attention not lifted), no `rsqrt`,
`mean` or `var` (a norm written out), no `neg` (a rotate-half RoPE), no `erf`,
`tanh` or `sigmoid` (an activation written out). A mixture-of-experts router's
scores are not leftovers: routers stay ordinary ops by design (DESIGN §3), so
a softmax or sigmoid that feeds a `topk` (or normalises a top-k's values) and a
sigmoid that makes a per-token scalar gate ([..., 1], a shared expert's gate)
are not counted. Layers are the module paths' numbered prefixes
(`model.layers.3`), as in `t2c inspect --format dot`.
"""

from __future__ import annotations

from .ir.core import Graph, Node
from .ir.summary import node_layer

LEFTOVERS = {
    "sdpa": "attention", "softmax": "softmax",
    "rsqrt": "norm", "mean": "norm", "var": "norm",
    "neg": "rope",
    "erf": "activation", "tanh": "activation", "sigmoid": "activation",
}
FUSED_OPS = ("attention", "linear_attention", "layer_norm", "rms_norm", "add_norm", "gelu", "silu", "gated_act", "bias_act", "experts")


def fusion_report(graph: Graph) -> dict:
    """{"layers": {layer: {"fully_fused", "unfused": {kind: [ops]}, "fused": {op: n}}}, "fully_fused": bool}."""
    layers: dict[str, dict] = {}
    for node in graph.nodes:
        layer = node_layer(node)
        if layer is None:
            continue
        entry = layers.setdefault(layer, {"fully_fused": True, "unfused": {}, "fused": {}})
        kind = LEFTOVERS.get(node.op)
        if kind is not None and not _routing(node):
            entry["fully_fused"] = False
            ops = entry["unfused"].setdefault(kind, [])
            if node.op not in ops:
                ops.append(node.op)
        if node.op in FUSED_OPS:
            entry["fused"][node.op] = entry["fused"].get(node.op, 0) + 1
        if node.op == "attention" and node.attrs.__dict__.get("rope", "none") != "none":
            entry["fused"]["rope"] = entry["fused"].get("rope", 0) + 1
    return {"fully_fused": bool(layers) and all(e["fully_fused"] for e in layers.values()), "layers": layers}


def fusion_lines(report: dict) -> list[str]:
    """One line per layer, for `t2c inspect` and the compile summary."""
    lines = []
    for layer, e in report["layers"].items():
        fused = ", ".join(f"{op} {n}" for op, n in sorted(e["fused"].items())) or "nothing"
        if e["fully_fused"]:
            lines.append(f"{layer}: fully fused ({fused})")
        else:
            missing = "; ".join(f"{kind}: {', '.join(ops)}" for kind, ops in e["unfused"].items())
            lines.append(f"{layer}: NOT fully fused, left {missing} (fused: {fused})")
    return lines


# Ops a router's scores pass through between the score and its top-k (or after it).
_ROUTER_PATH = ("cast", "add", "mul", "div", "reshape", "expand", "unsqueeze", "slice", "index", "where", "full")


def _routing(node: Node, depth: int = 6) -> bool:
    """Whether a softmax/sigmoid computes MoE routing scores or a per-token gate, not an attention or activation."""
    if node.op not in ("softmax", "sigmoid"):
        return False
    out = node.outputs[0]
    if node.op == "sigmoid" and out.type.rank >= 1 and out.type.shape[-1] == 1:
        return True  # a scalar gate per token (Qwen-MoE's shared expert)
    frontier, seen = [out], set()
    for _ in range(depth):  # forward to a topk
        nxt = []
        for v in frontier:
            for user in v.users:
                if user.op == "topk":
                    return True
                if user.op in _ROUTER_PATH and user not in seen:
                    seen.add(user)
                    nxt.extend(user.outputs)
        frontier = nxt
    v = node.inputs[0]  # or backward from a topk's values (top-k, then softmax)
    for _ in range(depth):
        p = v.producer
        if p is None:
            return False
        if p.op == "topk":
            return v.index == 0
        if p.op not in _ROUTER_PATH:
            return False
        v = p.inputs[0]
    return False
