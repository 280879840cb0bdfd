"""quantize-int8: float32 weights become symmetric int8 (`qlinear`, `qembedding`, `qexperts`).

What is quantized (t2c/ir/opdefs/quant.py has the semantics):
  * `linear(x, W, b?)` and `matmul(x, W)` with a 2-D float32 param W (GPT-2's
    Conv1D) become `qlinear`: int8 weights per output channel, or per group of
    `group` input features (weight_only; a layer whose input width is no
    multiple of `group` falls back to per channel, counted in stats);
  * `experts` (MoE) become `qexperts`, every expert's two projections quantized
    alike (weights re-laid out to [E, out, in]);
  * `embedding` tables become `qembedding` (one scale per row) unless skipped.

mode=weight_only: only the weights are int8; the products stay float.
mode=w8a8: the activations are quantized too, per token, at run time (dynamic
symmetric scales), and the products are integer. Before that, SmoothQuant
(`smooth` = alpha, 0 turns it off) moves activation outliers into the
weights: for the linears that read one tensor X, per input channel j,
    s_j = max|X_j|^alpha / max|W_j|^(1-alpha),   X' = X / s,   W' = W * s,
with max|X_j| measured on calibration inputs (`t2c compile --calibrate FILE`;
without it, generated inputs, and the compile report warns). X / s is folded
into the norm that makes X when only those linears read it, else it is a `mul`.

What stays float (`skip`, a comma-separated list): `embedding` (lookup
tables), `router` (a linear whose result reaches a top-k through
softmax/sigmoid and elementwise ops: the routing decision), `lm_head` (the last
linear before the output named `logits`), and any module path or weight name
matching one of the other items (fnmatch globs, e.g. `*.layer.0.*`). Default
`embedding,router,lm_head`; `skip=""` quantizes everything.

Approximate: the compile report measures the drift (per-layer SQNR, per-output
cosine, next-token agreement). Runs after the fusion passes and sparsify-moe
(they match the float ops this pass replaces).

Options: mode (weight_only | w8a8), granularity (per_channel | per_group),
group (>= 16, per_group only), smooth (0..1, w8a8 only), skip.
Stats: quantized_linear, quantized_embedding, quantized_experts,
per_channel_fallback, smoothed_inputs, smooth_folded_into_norm,
calibration_batches, kept_float, weight_bytes_before, weight_bytes_after.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass

import torch

from ..errors import UserError
from ..ir.core import DType, Graph, Node, Value
from ..ir.opdefs.quant import MODES, QExpertsAttrs, QLinearAttrs, quantize_weight
from ..ir.probe import run_with_probes
from .calibration import calibration_batches
from .manager import Pass, PassResult, register_pass
from .rewrite import Match, RewriteContext, Rewriter, RewriteRule, apply_rules

GRANULARITIES = ("per_channel", "per_group")
KEYWORDS = ("embedding", "router", "lm_head")
# Ops a routing score or the logits may pass through on the way to top-k / the output.
_ELEMENTWISE = ("cast", "reshape", "squeeze", "unsqueeze", "permute", "slice", "add", "sub", "mul", "div", "neg",
                "softmax", "log_softmax", "sigmoid", "tanh", "clamp", "exp")


def _reaches(v: Value, stop, depth: int = 6) -> bool:
    """Whether some path of elementwise/shape ops from `v` ends at a node for which `stop(node)` holds."""
    frontier, seen = [v], set()
    for _ in range(depth):
        nxt = []
        for val in frontier:
            for user in val.users:
                if stop(user):
                    return True
                if user.op in _ELEMENTWISE and user not in seen:
                    seen.add(user)
                    nxt.extend(user.outputs)
        frontier = nxt
    return False


def is_router(node: Node) -> bool:
    """A linear whose result reaches a top-k through softmax/sigmoid and elementwise ops: it picks experts."""
    return _reaches(node.outputs[0], lambda n: n.op == "topk")


def is_lm_head(node: Node, graph: Graph) -> bool:
    """A linear whose result becomes the graph output `logits` through elementwise/shape ops only."""
    logits = {v for name, v in graph.outputs if name == "logits"}
    if not logits:
        return False
    if node.outputs[0] in logits:
        return True
    frontier = [node.outputs[0]]
    for _ in range(6):
        nxt = []
        for val in frontier:
            for user in val.users:
                if user.op in _ELEMENTWISE:
                    if any(o in logits for o in user.outputs):
                        return True
                    nxt.extend(user.outputs)
        frontier = nxt
    return False


@dataclass(frozen=True)
class _Config:
    """What the rules need of the pass's options."""

    mode: str
    group: int  # 0: per channel
    keywords: tuple[str, ...]
    patterns: tuple[str, ...]

    def skipped_by_pattern(self, node: Node, weight: Value) -> str | None:
        names = [n for n in (node.meta.get("module"), weight.name) if n]
        for p in self.patterns:
            if any(fnmatch.fnmatchcase(n, p) for n in names):
                return p
        return None

    def group_for(self, k) -> int:
        return self.group if self.group and isinstance(k, int) and k % self.group == 0 else 0


def _float32_param(ctx: RewriteContext, v: Value) -> str | None:
    """None when `v` is a float32 param with data, else why it cannot be quantized."""
    if v.type.dtype != DType.F32:
        return f"weight @{v.name} is {v.type.dtype}, not f32"
    if v.name not in ctx.graph.params:
        return f"weight @{v.name} has no data (IR text carries types only)"
    return None


@dataclass(frozen=True)
class QuantizeLinear(RewriteRule):
    """`linear(x, W, b?)` / `matmul(x, W)` with a 2-D float32 param W -> `qlinear`."""

    config: _Config
    name = "quantize-linear"
    stat = "quantized_linear"

    def match(self, node, ctx):
        if node.op == "linear":
            transposed = False
        elif node.op == "matmul" and node.inputs[1].type.rank == 2 and node.inputs[0].type.rank >= 2:
            transposed = True
        else:
            return None
        w = node.inputs[1]
        if not ctx.graph.is_param(w):
            return None
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        return Match(node, {"x": node.inputs[0], "w": w, "bias": bias, "transposed": transposed})

    def check(self, m, ctx):
        node, cfg = m.root, self.config
        if "router" in cfg.keywords and is_router(node):
            return "a router (its result picks experts through top-k) stays float (skip=router)"
        if "lm_head" in cfg.keywords and is_lm_head(node, ctx.graph):
            return "the LM head (it makes the output 'logits') stays float (skip=lm_head)"
        pattern = cfg.skipped_by_pattern(node, m["w"])
        if pattern is not None:
            return f"skipped by skip pattern {pattern!r}"
        if m["x"].type.dtype != DType.F32:
            return f"input is {m['x'].type.dtype}, not f32"
        reason = _float32_param(ctx, m["w"])
        if reason is not None:
            return reason
        if any(u.op == "embedding" for u in m["w"].users):
            return f"weight @{m['w'].name} is also an embedding table (tied); it stays float"
        return None

    def rewrite(self, m, ctx):
        node, cfg, rw = m.root, self.config, ctx.rewriter
        w = ctx.graph.params[m["w"].name]
        w = w.T if m["transposed"] else w
        x = m["x"]
        smooth = ctx.data.get("smooth", {}).get(x)
        if smooth is not None:
            s, x = smooth
            w = w * s
        group = cfg.group_for(w.shape[1])
        if cfg.group and not group:
            ctx.count("per_channel_fallback")
        q, scale = quantize_weight(w, group)
        stem = m["w"].name
        ins = [x, rw.add_param(f"{stem}.int8_", q), rw.add_param(f"{stem}.scale_", scale)]
        if m["bias"] is not None:
            ins.append(m["bias"])
        new = rw.insert("qlinear", ins, QLinearAttrs(cfg.mode, group), before=node)
        rw.replace_node(node, new.outputs)


@dataclass(frozen=True)
class QuantizeEmbedding(RewriteRule):
    """`embedding(W, ids)` with a float32 param table -> `qembedding` (a scale per row)."""

    config: _Config
    name = "quantize-embedding"
    stat = "quantized_embedding"

    def match(self, node, ctx):
        if node.op != "embedding" or not ctx.graph.is_param(node.inputs[0]) or node.inputs[0].type.rank != 2:
            return None
        return Match(node, {"w": node.inputs[0], "ids": node.inputs[1]})

    def check(self, m, ctx):
        if "embedding" in self.config.keywords:
            return "lookup tables stay float (skip=embedding)"
        pattern = self.config.skipped_by_pattern(m.root, m["w"])
        if pattern is not None:
            return f"skipped by skip pattern {pattern!r}"
        return _float32_param(ctx, m["w"])

    def rewrite(self, m, ctx):
        rw = ctx.rewriter
        q, scale = ctx.cached("qembedding", m["w"], lambda: quantize_weight(ctx.graph.params[m["w"].name]))
        stem = m["w"].name
        wq = ctx.cached("qembedding_params", m["w"], lambda: (rw.add_param(f"{stem}.int8_", q), rw.add_param(f"{stem}.scale_", scale)))
        new = rw.insert("qembedding", [*wq, m["ids"]], before=m.root)
        rw.replace_node(m.root, new.outputs)


@dataclass(frozen=True)
class QuantizeExperts(RewriteRule):
    """`experts` with float32 param weights -> `qexperts` (weights [E, out, in], scales per expert and channel/group)."""

    config: _Config
    name = "quantize-experts"
    stat = "quantized_experts"

    def match(self, node, ctx):
        if node.op != "experts" or not all(ctx.graph.is_param(v) for v in node.inputs[3:5]):
            return None
        return Match(node)

    def check(self, m, ctx):
        node = m.root
        for w in node.inputs[3:5]:
            pattern = self.config.skipped_by_pattern(node, w)
            if pattern is not None:
                return f"skipped by skip pattern {pattern!r}"
            reason = _float32_param(ctx, w)
            if reason is not None:
                return reason
        if node.inputs[0].type.dtype != DType.F32:
            return f"input is {node.inputs[0].type.dtype}, not f32"
        return None

    def rewrite(self, m, ctx):
        node, cfg, rw = m.root, self.config, ctx.rewriter
        a = node.attrs
        ups, downs = (ctx.graph.params[v.name] for v in node.inputs[3:5])
        if a.layout == "in_out":  # [E, in, out] -> [E, out, in]
            ups, downs = ups.transpose(1, 2), downs.transpose(1, 2)
        group = cfg.group_for(ups.shape[2]) if cfg.group_for(downs.shape[2]) else 0
        if cfg.group and not group:
            ctx.count("per_channel_fallback")
        ins = list(node.inputs[:3])
        for v, w in zip(node.inputs[3:5], (ups, downs)):
            q, scale = quantize_weight(w, group)
            ins += [rw.add_param(f"{v.name}.int8_", q), rw.add_param(f"{v.name}.scale_", scale)]
        ins += list(node.inputs[5:])
        new = rw.insert("qexperts", ins, QExpertsAttrs.from_experts(a, cfg.mode, group), before=node)
        rw.replace_node(node, new.outputs)


@register_pass("quantize-int8")
@dataclass(frozen=True)
class QuantizeInt8(Pass):
    """Quantize float32 weights to int8: linears, MoE experts and (unless skipped) embeddings (approximate).

    mode=weight_only: int8 weights, float products. mode=w8a8: int8 weights and
    per-token dynamic int8 activations (integer products), after SmoothQuant
    (smooth=alpha, 0 off) calibrated on `t2c compile --calibrate FILE`.
    granularity=per_channel (a scale per output channel) or per_group (a scale
    per `group` input features; weight_only). skip: comma-separated keywords
    (embedding, router, lm_head) and module/weight-name globs that stay float;
    default "embedding,router,lm_head". See t2c/passes/quantize_int8.py.
    """

    mode: str = "weight_only"
    granularity: str = "per_channel"
    group: int = 128
    smooth: float = 0.5
    skip: str = "embedding,router,lm_head"

    exact = False
    after = ("lift-moe", "lift-attention", "fuse-rope", "fuse-activation", "fuse-norm", "sparsify-moe")
    # Outputs within 0.99 cosine of eager, no layer's noise above a tenth of its signal
    # (10 dB), nine next tokens in ten unchanged: what the compile holds int8 to by default.
    drift_bar = {"min_cosine": 0.99, "min_sqnr": 10.0, "min_token_agreement": 0.9}
    needs_float32 = True  # a half checkpoint is compiled as float32 when this pass is in the pipeline

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise UserError(f"option mode of pass quantize-int8 must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.granularity not in GRANULARITIES:
            raise UserError(f"option granularity of pass quantize-int8 must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        if self.granularity == "per_group" and self.mode != "weight_only":
            raise UserError("quantize-int8: granularity=per_group is for mode=weight_only (w8a8 scales weights per channel)")
        if self.granularity == "per_group" and (self.group < 16 or self.group & (self.group - 1)):
            raise UserError(f"option group of pass quantize-int8 must be a power of two >= 16, got {self.group}")
        if not 0.0 <= self.smooth <= 1.0:
            raise UserError(f"option smooth of pass quantize-int8 must be in [0, 1] (0: no SmoothQuant), got {self.smooth}")

    def config(self) -> _Config:
        items = [s.strip() for s in self.skip.split(",") if s.strip()]
        return _Config(
            self.mode, self.group if self.granularity == "per_group" else 0,
            tuple(i for i in items if i in KEYWORDS), tuple(i for i in items if i not in KEYWORDS),
        )

    def run(self, graph: Graph) -> PassResult:
        cfg = self.config()
        rules = [QuantizeLinear(cfg), QuantizeEmbedding(cfg), QuantizeExperts(cfg)]
        rw = Rewriter(graph)
        data: dict = {}
        before = _param_bytes(graph)
        extra = {"smoothed_inputs": 0, "smooth_folded_into_norm": 0, "calibration_batches": 0}
        if self.mode == "w8a8" and self.smooth > 0:
            extra.update(self._smooth(graph, rw, rules[0], data))
        stats = apply_rules(graph, rules, rewriter=rw, data=data, max_sweeps=1)
        graph.remove_unused_params()
        ctx = RewriteContext(graph, rw, data)
        kept = 0
        for node in graph.nodes:
            for rule in rules:
                m = rule.match(node, ctx)
                kept += m is not None
        stats.update(extra)
        stats.setdefault("per_channel_fallback", 0)
        stats.update({"kept_float": kept, "weight_bytes_before": before, "weight_bytes_after": _param_bytes(graph)})
        changed = any(stats[r.stat] for r in rules)
        return PassResult(graph, changed, stats)

    # -- SmoothQuant --------------------------------------------------------------------

    def _smooth(self, graph: Graph, rw: Rewriter, rule: QuantizeLinear, data: dict) -> dict:
        """Per input tensor of the linears to quantize: s from calibration, X / s folded or inserted, W * s later."""
        ctx = RewriteContext(graph, rw, data)
        groups: dict[Value, list[tuple[Node, torch.Tensor]]] = {}
        for node in graph.nodes:
            m = rule.match(node, ctx)
            if m is None or rule.check(m, ctx) is not None:
                continue
            w = graph.params[m["w"].name]
            groups.setdefault(m["x"], []).append((node, w.T if m["transposed"] else w))
        if not groups:
            return {}
        batches, _ = calibration_batches(graph, "quantize-int8{mode=w8a8}")
        amax: dict[Value, torch.Tensor] = {}
        for i, batch in enumerate(batches):
            try:
                _, seen = run_with_probes(graph, batch, list(groups))
            except Exception as e:  # noqa: BLE001 - a batch the model cannot run is bad input
                raise UserError(f"calibration batch {i} does not run through the model: {type(e).__name__}: {str(e)[:200]}") from None
            for x, t in seen.items():
                a = t.detach().abs().reshape(-1, t.shape[-1]).amax(0).to(torch.float32)
                amax[x] = a if x not in amax else torch.maximum(amax[x], a)
        alpha = self.smooth
        smooth: dict[Value, tuple[torch.Tensor, Value]] = {}
        moved: dict[Value, Value] = {}  # results of norms replaced by a smoothed copy
        folded = 0
        for x, members in groups.items():
            x = moved.get(x, x)
            wmax = torch.stack([w.abs().amax(0) for _, w in members]).amax(0).to(torch.float32)
            xmax = amax[x]
            s = xmax.pow(alpha) / wmax.pow(1 - alpha)
            s = torch.where((xmax > 0) & (wmax > 0), s, torch.ones_like(s)).clamp(1e-5, 1e5)
            replaced = _fold_into_norm(graph, rw, x, s, [n for n, _ in members])
            if replaced is not None:
                moved.update(replaced)
                folded += 1
                smooth[replaced[x]] = (s, replaced[x])
            else:
                first = min((n for n, _ in members), key=graph.nodes.index)
                inv = rw.add_param("smooth_inv_", (1.0 / s).to(torch.float32))
                smooth[x] = (s, rw.insert("mul", [x, inv], before=first).output)
        data["smooth"] = smooth
        return {"smoothed_inputs": len(groups), "smooth_folded_into_norm": folded, "calibration_batches": len(batches)}


def _fold_into_norm(graph: Graph, rw: Rewriter, x: Value, s: torch.Tensor, readers: list[Node]) -> dict[Value, Value] | None:
    """Divide the weight (and bias) of the norm making x by s, when only `readers` read x.

    Returns {old result: new result} for the replaced norm, or None when x is not such a norm's result."""
    norm = x.producer
    if norm is None or any(x is o for o in graph.output_values()) or {u for u, _ in x.uses} != set(readers):
        return None
    if not ((norm.op in ("layer_norm", "rms_norm") and x.index == 0) or (norm.op == "add_norm" and x.index == 0)):
        return None
    first_param = 2 if norm.op == "add_norm" else 1
    params = list(norm.inputs[first_param:])
    if not params or not all(graph.is_param(p) and p.name in graph.params and p.type.dtype == DType.F32 and p.type.rank == 1 for p in params):
        return None
    new_params = [rw.add_param(f"{p.name}.smoothed_", (graph.params[p.name] / s).to(torch.float32)) for p in params]
    new = rw.insert(norm.op, list(norm.inputs[:first_param]) + new_params, norm.attrs, before=norm,
                    output_types=[v.type for v in norm.outputs])
    old = list(norm.outputs)
    rw.replace_node(norm, new.outputs)
    return dict(zip(old, new.outputs))


def _param_bytes(graph: Graph) -> int:
    return sum(t.numel() * t.element_size() for name, t in graph.params.items() if name in graph.param_values)
