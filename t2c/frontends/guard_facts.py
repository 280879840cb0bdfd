"""Sizes torch.export's guards pin to the example's, and the bound under which such a trace holds.

A Python loop over a size computed from a dynamic dim (`for i in range(padded_len // chunk)`, the
chunked delta rule of Gated DeltaNet layers) unrolls as many times as the example has chunks:
the trace holds a guard `(seq + pad) // 64 == 1` and its later shapes say 1 where the earlier
ones say `(seq + pad) // 64`. Such a program is valid only where the guard holds.

Two ways out, in order:
1. `pin_breaking_sizes`: the examples are grown past the pin and exported again (`_unpinned` in
   torch_export); a Mamba-2 scan whose chunk count follows the data then traces generally.
2. `pinned_bounds`: a pin that no longer example breaks is taken as what it is, a bound. If the
   guard holds for every size from 1 up to some m (the example included), the graph gets the
   constraint `seq <= m`, checked at run time, and `on_pinned_range` rewrites each size torch
   computes from `seq` to the simplest form it has on [1, m] (a constant or `a*seq + b`,
   checked at every point), so that `seq + (64 - seq % 64) % 64` is 64 there as torch's later
   shapes say.
"""

from __future__ import annotations

import functools

import sympy
import torch

from ..ir.core import Dim, SymDim, dim_from_sympy, eval_dim

MAX_PINNED_BOUND = 1 << 14  # a pin holding further than this is not a loop's chunk count: leave it


def shape_env(ep):
    """The ShapeEnv torch.export traced `ep` with (None for a program without symbolic inputs)."""
    for node in ep.graph.nodes:
        val = node.meta.get("val") if node.op == "placeholder" else None
        env = getattr(getattr(val, "fake_mode", None), "shape_env", None)
        if env is not None:
            return env
    return None


def size_guards(env) -> list[tuple[sympy.Expr, sympy.Integer]]:
    """(size, N) for each guard `size == N` of the trace: size computed from one dynamic dim, not a remainder."""
    out = []
    for guard in getattr(env, "guards", None) or []:
        g = guard.expr
        if not isinstance(g, sympy.Eq):
            continue
        lhs, rhs = g.args
        if lhs.is_Integer:
            lhs, rhs = rhs, lhs
        if rhs.is_Integer and len(lhs.free_symbols) == 1 and not isinstance(lhs, sympy.Symbol) and type(lhs).__name__ not in ("Mod", "PythonMod"):
            out.append((lhs, rhs))
    return out


def _holds(lhs: sympy.Expr, rhs: sympy.Integer, v: int) -> bool | None:
    (s,) = lhs.free_symbols
    try:
        return bool(lhs.xreplace({s: sympy.Integer(v)}) == rhs)
    except Exception:  # noqa: BLE001 - an expression that does not evaluate: not a pin we can read
        return None


def _breaking_probe(lhs: sympy.Expr, rhs: sympy.Integer, start: int) -> int | None:
    """The shortest probed value > `start` of lhs's one symbol at which `lhs == rhs` fails (None: it holds at all)."""
    probes = sorted({start + k for k in range(1, 33)} | {2 ** k + 1 for k in range(1, 17) if 2 ** k + 1 > start})
    for v in probes:
        holds = _holds(lhs, rhs, v)
        if holds is None:
            return None
        if not holds:
            return v
    return None


def _example_symbols(ep, examples: dict[str, torch.Tensor], dynamic_dims: dict[str, dict[int, str]]) -> dict[sympy.Symbol, tuple[str, int]]:
    """{torch symbol: (label, example size)} for each dynamic input dim that is a plain symbol."""
    user_names = set(ep.graph_signature.user_inputs)
    user = [n for n in ep.graph.nodes if n.op == "placeholder" and n.name in user_names]
    out: dict[sympy.Symbol, tuple[str, int]] = {}
    for ph, (name, t) in zip(user, examples.items()):
        val = ph.meta.get("val")
        for axis, label in dynamic_dims.get(name, {}).items():
            if isinstance(val, torch.Tensor) and val.dim() > axis and isinstance(val.shape[axis], torch.SymInt):
                expr = val.shape[axis].node.expr
                if isinstance(expr, sympy.Symbol):
                    out.setdefault(expr, (label, t.shape[axis]))
    return out


def pin_breaking_sizes(ep, examples: dict[str, torch.Tensor], dynamic_dims: dict[str, dict[int, str]]) -> dict[str, int]:
    """{label: n} for each dynamic dim for which a guard `size == N` (see `size_guards`) holds at the
    example's size and fails at a longer one, n the shortest probed."""
    env = shape_env(ep)
    if env is None:
        return {}
    by_symbol = _example_symbols(ep, examples, dynamic_dims)
    found: dict[str, int] = {}
    for lhs, rhs in size_guards(env):
        (s,) = lhs.free_symbols
        if s not in by_symbol:
            continue
        label, n = by_symbol[s]
        v = _breaking_probe(lhs, rhs, n)
        if v is not None:
            found[label] = min(found.get(label, v), v)
    return found


def pins_hold_from_one(ep) -> bool:
    """Whether every guard `size == N` that some size breaks holds at size 1 (its bound can start there)."""
    env = shape_env(ep)
    return env is None or all(_holds(lhs, rhs, 1) for lhs, rhs in size_guards(env) if _breaking_probe(lhs, rhs, 0) is not None)


def pinned_bounds(ep, symbols: dict[sympy.Symbol, sympy.Expr]) -> dict[str, int]:
    """{label: m} for each input dim (torch symbol -> its IR symbol in `symbols`) that a guard
    `size == N` pins: the guard holds for every size in [1, m] and fails at m + 1.

    A pin that fails at some size below the example's cannot be stated as `label <= m` and is
    left out (the conversion then reports the mismatch it causes)."""
    env = shape_env(ep)
    if env is None:
        return {}
    out: dict[str, int] = {}
    for lhs, rhs in size_guards(env):
        (s,) = lhs.free_symbols
        named = symbols.get(s)
        if not isinstance(named, sympy.Symbol):  # a derived dim (W * root) or not an input's
            continue
        breaks = _breaking_probe(lhs, rhs, 0)  # a guard that holds at every probe pins nothing
        if breaks is None or breaks > MAX_PINNED_BOUND:
            continue
        m = 0
        while m < breaks and _holds(lhs, rhs, m + 1):
            m += 1
        if m > 0:
            out[named.name] = min(out.get(named.name, m), m)
    return out


def on_pinned_range(d: Dim, bounds: dict[str, int]) -> Dim:
    """`d` in its simplest form on the pinned range of its one symbol: a constant, or `a*label + b`,
    when that equals `d` at every size in [1, m]; else `d` unchanged."""
    if not isinstance(d, SymDim) or len(d.symbols) != 1:
        return d
    (label,) = d.symbols
    m = bounds.get(label)
    return d if m is None else _simplest_on_range(d, label, m)


@functools.lru_cache(maxsize=4096)
def _simplest_on_range(d: SymDim, label: str, m: int) -> Dim:
    values = [eval_dim(d, {label: v}) for v in range(1, m + 1)]
    slope = values[1] - values[0] if m > 1 else 0
    if any(values[i] != values[0] + slope * i for i in range(m)):
        return d
    offset = values[0] - slope
    return dim_from_sympy(slope * sympy.Symbol(label, integer=True, positive=True) + offset)
