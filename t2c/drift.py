"""Per-layer drift of an approximate pass: the SQNR of every layer's result, before vs after the pass.

A layer is a node of a heavy op (linear and its int8 forms, embeddings, experts,
attention). Both graphs run on the same inputs with their layers' results
probed (`t2c.ir.probe`); layers are paired by their source module and their
rank among the layer nodes of that module (a pass that replaces `linear` by
`qlinear` keeps both, and copies the module onto the new node). For each pair

    SQNR (dB) = 10 log10( sum(before^2) / sum((after - before)^2) )

so it measures everything the pass changed up to that layer, accumulated
through the layers before it (what a quantization debugger compares). An
unchanged layer has infinite SQNR and is not listed; the lowest are named.

An experts layer (MoE) is measured over the tokens whose router chose the same
experts before and after the pass (its `top_k_index`, compared as sets). A
token whose top-k changed (a near tie in the float router, tipped by the noise
of the layers before) gets another expert's output: not noise of this layer but
a different discrete choice, which alone can put the SQNR of a layer whose
quantization is 40 dB clean below 6 dB (the fuzzer's w8a8-moe-expert-sqnr: one
token of nine, router probabilities 0.4401 vs 0.4394). Such tokens are counted
in the row (`rerouted_tokens` of `tokens`, at the shape with the most), and
their effect still reaches every later layer and the outputs' cosine and
next-token agreement. When no token kept its experts, the SQNR is over all.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import torch

from .ir.core import Graph, Value
from .ir.interpreter import run_graph
from .ir.probe import run_with_probes

LAYER_OPS = ("linear", "qlinear", "matmul", "embedding", "qembedding", "experts", "qexperts", "attention", "linear_attention")
ROUTED_OPS = ("experts", "qexperts")  # operand 1: top_k_index [T, K], the experts each token's result comes from
INF_DB = math.inf
ROUTE = "top_k_index"  # probed results hold a routed layer's top_k_index under the key (layer name, ROUTE)


def layer_values(graph: Graph) -> dict[str, tuple[str, Value]]:
    """{layer name: (op, result)} for every layer node (a matmul counts when its second operand is a param)."""
    counts: dict[str, int] = {}
    found: list[tuple[str, int, str, Value]] = []
    for node in graph.nodes:
        if node.op not in LAYER_OPS or (node.op == "matmul" and not graph.is_param(node.inputs[1])):
            continue
        scope = node.meta.get("module") or ""
        rank = counts.get(scope, 0)
        counts[scope] = rank + 1
        found.append((scope, rank, node.op, node.outputs[0]))
    out = {}
    for scope, rank, op, v in found:
        name = scope if scope and counts[scope] == 1 else f"{scope or op}[{rank}]"
        out[name] = (op, v)
    return out


def run_layers(graph: Graph, shapes: Sequence[Mapping[str, torch.Tensor]]):
    """(outputs per shape, {layer: tensor} per shape, {layer: op}) from one interpreter run per shape.

    A routed layer's (experts) top_k_index is probed too, under the key (layer, ROUTE)."""
    layers = layer_values(graph)
    if not layers:
        return [run_graph(graph, inp) for inp in shapes], [{} for _ in shapes], {}
    routes = {name: v.producer.inputs[1] for name, (op, v) in layers.items() if op in ROUTED_OPS}
    values = [v for _, v in layers.values()] + list(routes.values())
    outs, probed = [], []
    for inp in shapes:
        o, seen = run_with_probes(graph, inp, values)
        outs.append(o)
        found = {name: seen[v] for name, (_, v) in layers.items()}
        found.update({(name, ROUTE): seen[r] for name, r in routes.items()})
        probed.append(found)
    return outs, probed, {name: op for name, (op, _) in layers.items()}


def sqnr_db(ref: torch.Tensor, got: torch.Tensor) -> float:
    """10 log10(signal / noise) of `got` against `ref`, in float64; inf when they are equal."""
    r, g = ref.detach().to(torch.float64), got.detach().to(torch.float64)
    noise = float(((g - r) ** 2).sum())
    if noise == 0.0:
        return INF_DB
    signal = float((r**2).sum())
    return 10.0 * math.log10(signal / noise) if signal > 0 else -INF_DB


def same_experts(before: torch.Tensor, after: torch.Tensor) -> torch.Tensor:
    """[T] bool: whether each token's top_k_index [T, K] names the same experts before and after (as sets)."""
    return (before.sort(-1).values == after.sort(-1).values).all(-1)


def layer_drift(before: Sequence[dict], after: Sequence[dict], ops: Mapping[str, str]) -> list[dict]:
    """Per changed layer (in graph order): name, op after the pass, lowest SQNR over the shapes.

    A routed layer (experts) is measured over the tokens routed alike; a row says how many were not."""
    rows = []
    for name, op in ops.items():
        worst, rerouted = INF_DB, None
        for b, a in zip(before, after):
            if name in b and name in a and b[name].shape == a[name].shape:
                ref, got = b[name], a[name]
                rb, ra = b.get((name, ROUTE)), a.get((name, ROUTE))
                if rb is not None and ra is not None and rb.shape == ra.shape and rb.dim() == 2 and ref.shape[:1] == rb.shape[:1]:
                    kept = same_experts(rb, ra)
                    if rerouted is None or int((~kept).sum()) > rerouted[0]:
                        rerouted = (int((~kept).sum()), int(kept.numel()))
                    if bool(kept.any()):
                        ref, got = ref[kept], got[kept]
                worst = min(worst, sqnr_db(ref, got))
        if worst < INF_DB or (rerouted is not None and rerouted[0]):
            row = {"layer": name, "op": op, "sqnr_db": round(worst, 2) if math.isfinite(worst) else str(worst)}
            if rerouted is not None and rerouted[0]:
                row["rerouted_tokens"], row["tokens"] = rerouted
            rows.append(row)
    return rows


def worst_layers(rows: list[dict], n: int = 3) -> list[dict]:
    """The n layers with the lowest SQNR, lowest first."""
    return sorted(rows, key=lambda r: float(r["sqnr_db"]))[:n]
