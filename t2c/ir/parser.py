"""Parse the IR text form (see `printer.py`) back into a `Graph`.

`parse_graph(print_graph(g))` is structurally equal to `g`; params come back
with their types but without data. Errors name the line and say what is wrong.
"""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from typing import Any, Union

from ..errors import IRParseError, VerifyError
from .core import Dim, DType, Graph, SymDim, TensorType, Value
from .ops import get_op

_VALUE = re.compile(r"%\d+|@[A-Za-z0-9_.\-]+")


class _Ident(str):
    """A bare word in attr position: a dtype or a symbolic dim, decided by the field type."""


def _scan(text: str) -> tuple[list[tuple[int, str, int]], int, bool]:
    """Every character outside string literals with the bracket depth it sits at
    (an opening bracket and its closing one share a depth), the final depth, and
    whether a string literal is left open."""
    events, depth, in_str, esc = [], 0, False, False
    for i, ch in enumerate(text):
        if in_str:
            if esc:
                esc = False
            elif ch == "\\":
                esc = True
            elif ch == '"':
                in_str = False
            continue
        if ch == '"':
            in_str = True
            continue
        if ch in ")]}":
            depth -= 1
        events.append((i, ch, depth))
        if ch in "([{":
            depth += 1
    return events, depth, in_str


def balanced(text: str) -> bool:
    """Brackets close in order and no string literal is left open."""
    events, depth, in_str = _scan(text)
    return depth == 0 and not in_str and all(d >= 0 for _, _, d in events)


def split_top(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` at bracket depth 0, outside strings."""
    cuts = [i for i, ch, d in _scan(text)[0] if ch == sep and d == 0]
    if not cuts:
        tail = text.strip()
        return [tail] if tail else []
    bounds = [-1] + cuts + [len(text)]
    return [text[lo + 1 : hi].strip() for lo, hi in zip(bounds, bounds[1:])]


def parse_literal(text: str) -> Any:
    t = text.strip()
    if t == "true":
        return True
    if t == "false":
        return False
    if t == "none":
        return None
    if t in ("inf", "-inf", "nan"):
        return float(t)
    if t.startswith('"'):
        return json.loads(t)
    if t.startswith("["):
        if not t.endswith("]"):
            raise ValueError(f"unclosed list {t!r}")
        inner = t[1:-1].strip()
        return tuple(parse_literal(p) for p in split_top(inner)) if inner else ()
    if re.fullmatch(r"-?\d+", t):
        return int(t)
    if re.fullmatch(r"-?(\d+\.\d*|\.\d+|\d+)([eE][-+]?\d+)?", t):
        return float(t)
    if not t:
        raise ValueError("empty value")
    return _Ident(t)


def _coerce(v: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is DType:
        return DType(v)
    if origin is tuple:
        elem = args[0] if args else Any
        return tuple(_coerce(x, elem) for x in v)
    if origin is Union:
        if v is None and type(None) in args:
            return None
        if isinstance(v, _Ident):
            if DType in args:
                return DType(v)
            if SymDim in args:
                return SymDim(v)
        if float in args and int not in args and isinstance(v, int) and not isinstance(v, bool):
            return float(v)
        return v
    if hint is float and isinstance(v, int) and not isinstance(v, bool):
        return float(v)
    if isinstance(v, _Ident):
        return SymDim(v) if hint in (Dim, SymDim, Any) else str(v)
    return v


def parse_attrs(cls: type, text: str) -> Any:
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for item in split_top(text):
        if not item:
            continue
        key, _, val = item.partition("=")
        key = key.strip()
        if key not in hints:
            raise ValueError(f"{cls.__name__} has no field {key!r}")
        kwargs[key] = _coerce(parse_literal(val), hints[key])
    names = {f.name for f in dataclasses.fields(cls)}
    missing = names - kwargs.keys()
    if missing:
        raise ValueError(f"missing attrs {sorted(missing)}")
    return cls(**kwargs)


def parse_type(text: str) -> TensorType:
    m = re.fullmatch(r"\s*([a-z0-9]+)\[(.*)\]\s*", text)
    if not m:
        raise ValueError(f"bad type {text!r}")
    dims: list[Dim] = []
    for d in split_top(m.group(2)) if m.group(2).strip() else []:
        dims.append(int(d) if re.fullmatch(r"-?\d+", d) else SymDim(d))
    return TensorType(DType(m.group(1)), tuple(dims))


def _matching(text: str, start: int, open_ch: str, close_ch: str) -> int:
    """Index of the bracket closing the one at `start`, skipping strings."""
    events = _scan(text)[0]
    depth = next((d for i, _, d in events if i == start), None)
    for i, ch, d in events:
        if i > start and ch == close_ch and d == depth:
            return i
    raise ValueError(f"unbalanced {open_ch}{close_ch}")


def parse_graph(text: str) -> Graph:
    """Parse IR text. Raises `IRParseError` naming the line that is wrong."""
    g = Graph()
    env: dict[str, Value] = {}
    saw_header = False
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            if line.startswith("graph "):
                g.name = line[6:].strip()
                saw_header = True
            elif line.startswith("input "):
                m = re.fullmatch(r'input (%\d+) (".*?") : (.+)', line)
                if not m:
                    raise ValueError("expected: input %N \"name\" : TYPE")
                _define(env, m.group(1), g.add_input(json.loads(m.group(2)), parse_type(m.group(3))))
            elif line.startswith("constraint "):
                m = re.fullmatch(r"constraint ([A-Za-z_][A-Za-z_0-9]*) % ([0-9]+) == 0", line)
                b = re.fullmatch(r"constraint ([A-Za-z_][A-Za-z_0-9]*) <= ([0-9]+)", line)
                if m:
                    g.constraints[m.group(1)] = int(m.group(2))
                elif b:
                    g.bounds[b.group(1)] = int(b.group(2))
                else:
                    raise ValueError("expected: constraint SYMBOL % N == 0, or constraint SYMBOL <= N")
            elif line.startswith("state "):
                m = re.fullmatch(r'state (".*?") (\{.*\})', line)
                if not m:
                    raise ValueError('expected: state "input name" {json}')
                g.states[json.loads(m.group(1))] = json.loads(m.group(2))
            elif line.startswith("param "):
                m = re.fullmatch(r"param (@[A-Za-z0-9_.\-]+) : (.+)", line)
                if not m:
                    raise ValueError("expected: param @name : TYPE")
                _define(env, m.group(1), g.add_param(m.group(1)[1:], None, parse_type(m.group(2))))
            elif line.startswith("output "):
                m = re.fullmatch(r'output (".*?") = (%\d+|@[A-Za-z0-9_.\-]+)', line)
                if not m:
                    raise ValueError('expected: output "name" = %N')
                g.set_output(json.loads(m.group(1)), _use(env, m.group(2)))
            elif line.startswith("%"):
                _parse_node(g, env, line)
            else:
                raise ValueError("expected graph, input, constraint, state, param, output or a node")
        except IRParseError:
            raise
        except (ValueError, KeyError, TypeError, VerifyError) as e:
            raise IRParseError(f"line {lineno}: {e}: {line[:120]}") from None
    if not saw_header:
        raise IRParseError("not t2c IR text: the first line must be 'graph NAME'")
    return g


def _define(env: dict[str, Value], name: str, v: Value) -> None:
    if name in env:
        raise ValueError(f"{name} is defined twice")
    env[name] = v


def _use(env: dict[str, Value], name: str) -> Value:
    try:
        return env[name]
    except KeyError:
        raise ValueError(f"{name} is used before it is defined") from None


def _parse_node(g: Graph, env: dict[str, Value], line: str) -> None:
    lhs, sep, rhs = line.partition(" = ")
    if not sep:
        raise ValueError("expected '%N = op(...)'")
    results = [r.strip() for r in lhs.split(",")]
    m = re.match(r"([a-z_][a-z0-9_.]*)\(", rhs)
    if not m:
        raise ValueError("expected an op name and '('")
    op = m.group(1)
    close = _matching(rhs, m.end() - 1, "(", ")")
    operand_text = rhs[m.end() : close].strip()
    operands = [_use(env, t.strip()) for t in operand_text.split(",")] if operand_text else []
    rest = rhs[close + 1 :].strip()
    attrs_text = ""
    if rest.startswith("{"):
        end = _matching(rest, 0, "{", "}")
        attrs_text = rest[1:end]
        rest = rest[end + 1 :].strip()
    if not rest.startswith(":"):
        raise ValueError("expected ': TYPE' after the op")
    types = [parse_type(t) for t in split_top(rest[1:])]
    if len(types) != len(results):
        raise ValueError(f"{len(results)} results but {len(types)} types")
    opdef = get_op(op)
    attrs = parse_attrs(opdef.attrs, attrs_text)
    node = g.add_node(op, operands, attrs, types)
    for r, v in zip(results, node.outputs):
        _define(env, r, v)
