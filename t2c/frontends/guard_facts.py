"""What torch.export's guards say about the dynamic dims, beyond what its shapes say.

A trace holds guards on the sizes it saw (`Eq((seq + pad) // 64, 1)`, `Eq(Mod(seq, 4), 0)`,
`Eq(mask_len // 4, seq // 4)`), and torch's later shapes lean on them while the IR, which only
sees the shapes, cannot. Each fact read here is a consequence of the guards, stated in the IR:

* pins (`pin_breaking_sizes`, `pinned_bounds`, `on_pinned_range`): a Python loop over a size
  computed from a dynamic dim (`for i in range(padded_len // chunk)`, the chunked delta rule of Gated
  DeltaNet layers) unrolls as many times as the example has chunks; the trace guards
  `(seq + pad) // 64 == 1` and its later shapes say 1. First the examples are grown past the pin and
  exported again (`_unpinned` in torch_export): a Mamba-2 scan whose chunk count follows the data then
  traces generally. A pin no longer example breaks is a bound: if the guard holds for every size from
  1 up to m, the graph gets the constraint `seq <= m` (checked at run time) and each size torch
  computes from `seq` takes its simplest form on [1, m] (a constant or `a*seq + b`, checked at every
  point), so `seq + (64 - seq % 64) % 64` is 64 there, as torch's later shapes say;
* divisors (`guard_divisors`): a dim the guards only allow at multiples of W is read as W * root
  (constraint `seq % W == 0`), as a derived Dim is;
* equal dims (`equal_dims`): two inputs' lengths a guard makes equal (`mask_len // 4 == seq // 4`
  with both multiples of 4) are one.
"""

from __future__ import annotations

import functools
import math

import sympy
import torch

from ..ir.core import Dim, SymDim, dim_from_sympy, eval_dim

DIVISOR_PROBES = 128  # sizes at which guard_divisors evaluates the guards that divide
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


def guard_divisors(ep) -> dict[sympy.Symbol, int]:
    """{s: W} for each dynamic dim s that torch's guards only allow at multiples of W > 1.

    Reformer views `seq` tokens as `seq // 4` chunks of `seq // (seq // 4)` and multiplies them back:
    that is `seq` only because torch also holds `seq % 4 == 0`, spelt as such or as
    `seq == (seq // 4) * (seq // (seq // 4))`. The guards of one dim that divide (Mod, //) are
    evaluated at 2..DIVISOR_PROBES (torch's own lower bound is 2); W is the gcd of the sizes that
    pass them all, a consequence of the guards. With s written `W * root`, torch's expressions then
    simplify as torch simplified them (`(4*r // 4) * (4*r // r)` is `4*r`).
    """
    env = shape_env(ep)
    replaced = {k: v for k, v in (getattr(env, "replacements", None) or {}).items() if v.is_Integer}  # a static batch of 2
    by_symbol: dict[sympy.Symbol, list[sympy.Expr]] = {}
    for guard in getattr(env, "guards", None) or []:
        g = guard.expr.xreplace(replaced)
        names = {type(e).__name__ for e in sympy.preorder_traversal(g)}
        if len(g.free_symbols) == 1 and names & {"Mod", "PythonMod", "FloorDiv"}:
            by_symbol.setdefault(next(iter(g.free_symbols)), []).append(g)
    out: dict[sympy.Symbol, int] = {}
    for s, guards in by_symbol.items():
        if not isinstance(s, sympy.Symbol):
            continue
        allowed = [v for v in range(2, DIVISOR_PROBES + 1) if all(_true_at(g, s, v) for g in guards)]
        w = functools.reduce(math.gcd, allowed, 0)
        if w > 1:
            out[s] = w
    return out


def _true_at(g: sympy.Expr, s: sympy.Symbol, v: int) -> bool:
    try:
        return bool(g.xreplace({s: sympy.Integer(v)}))
    except Exception:  # noqa: BLE001 - a guard that does not evaluate there: no evidence against v
        return True


def equal_dims(ep, divisors: dict[sympy.Symbol, int]) -> dict[sympy.Symbol, sympy.Symbol]:
    """{y: x} for two dynamic dims a guard makes equal without torch merging them.

    Reformer's mask and ids are separate inputs; torch holds `mask_len // 4 == ids_len // 4` and
    both `% 4 == 0`, so they are one length, and its shapes mix the two. A guard `f(x) == f(y)`
    (one function, strictly increasing on the multiples of W that both are held to) says x == y.
    """
    env = shape_env(ep)
    out: dict[sympy.Symbol, sympy.Symbol] = {}
    for guard in getattr(env, "guards", None) or []:
        g = guard.expr
        if not isinstance(g, sympy.Eq) or any(len(side.free_symbols) != 1 for side in g.args):
            continue
        (x,), (y,) = (side.free_symbols for side in g.args)
        if x == y or y in out or not (isinstance(x, sympy.Symbol) and isinstance(y, sympy.Symbol)):
            continue
        w = divisors.get(x, 1)
        if divisors.get(y, 1) != w:  # x % 4 == 0 with y free: y // 4 == x // 4 allows y = x + 1
            continue
        try:
            fx = [int(g.args[0].xreplace({x: sympy.Integer(w * k)})) for k in range(1, 33)]
            fy = [int(g.args[1].xreplace({y: sympy.Integer(w * k)})) for k in range(1, 33)]
        except Exception:  # noqa: BLE001 - a side that does not evaluate: no conclusion
            continue
        if fx == fy and all(a < b for a, b in zip(fx, fx[1:])):
            out[y] = out.get(x, x)
    return out


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
