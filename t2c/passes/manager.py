"""The pass registry, pipeline strings, presets, and the loop that runs a pipeline.

A pass is a frozen dataclass that subclasses `Pass` and is registered by name
with `@register_pass("name")`; its fields are its options (int, float, bool or
str, each with a default). A pipeline is a comma-separated list of passes,
each optionally followed by options in braces:

    fold-shapes{max_elements=1024},cse,dce

`Pipeline.parse(text)` checks names, options and ordering constraints and
fails with a `UserError` that lists what is valid; `str(pipeline)` prints the
canonical form (options in field order, defaults left out), so
`Pipeline.parse(str(p)) == p`.
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import time
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar

from ..errors import UserError, VerifyError
from ..ir.core import Graph
from ..ir.parser import balanced, split_top
from ..ir.verifier import verify

OPTION_TYPES = (int, float, bool, str)

# The presets, in one place. A preset is a list of pass names run in order with
# default options. Approximate attention rewrites (window, linear attention) are never
# in a preset: the user names them.
_CLEANUP = ("fold-shapes", "cse", "dce")  # fold first: it leaves duplicate constants for cse and dead nodes for dce
# Every exact pass: cleanup first (tidier matches), lift attention before fuse-rope (which
# folds RoPE into the lifted op), the activation and norm fusions, then dce for what they left dead.
# lift-moe comes right after cleanup: it needs cse's merged duplicates (each expert's
# `weights[..., None]`), it must see each expert's FFN as linear / act / linear before
# fuse-activation fuses those into gated_act / bias_act, and lifting first takes the
# expert loop's data-dependent dims (nonzero, per-expert rows) out of every later pass's way.
# lift-linear-attention next to lift-attention: hand-written linear attention (elu + 1
# feature maps, products, a normaliser) becomes one op before the fusions see its pieces.
# sparsify-moe last among the rewrites: each expert on its own tokens, measured faster than
# the dense form at every size benchmarks/moe.py runs (E 8-64, k 1-8, 512-8192 tokens).
_EXACT = ("fold-shapes", "cse", "lift-moe", "lift-attention", "lift-linear-attention", "fuse-rope", "fuse-activation", "fuse-norm", "sparsify-moe", "dce")
# -O2: -O1 plus W8A8 int8 (int8 weights per output channel, activations quantized per token
# at run time, SmoothQuant on --calibrate or generated inputs), the one approximate pass a
# preset holds, judged by its own default bar (QuantizeInt8.drift_bar). W8A8 rather than
# weight-only: ONNX Runtime folds weight-only int8 back to float at load (fp32 speed), W8A8
# runs integer matmuls (benchmarks/cpu_latency.py, README's INT8 section). merge-linears is
# in no preset: one matmul for Q/K/V and gate/up measured no faster on ONNX Runtime's CPU
# provider (W8A8: 1.07-1.10x the time on the Llama-style model, 0.99-1.05x on the BERT-style one).
# Items are pipeline items (`name{options}`). A preset is listed, and offered by the CLI,
# only once it does what it says.
PRESETS: dict[str, tuple[str, ...]] = {
    "O0": _CLEANUP,
    "O1": _EXACT,
    "O2": _EXACT + ("quantize-int8{mode=w8a8}",),
}


@dataclass
class PassResult:
    """What one pass returns: the graph (possibly the same object, mutated), whether it changed, counts."""

    graph: Graph
    changed: bool
    stats: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PassRecord:
    """One pass run by `Pipeline.run`, for progress display and report.json."""

    name: str
    options_str: str
    changed: bool
    stats: dict[str, int]
    seconds: float
    node_count_before: int
    node_count_after: int


class Pass:
    """Base of every pass. Subclasses are frozen dataclasses registered with `register_pass`.

    Class attributes: `name` (set by `register_pass`), `exact` (does the pass keep
    the function exactly), `after` (passes that must come earlier in a pipeline
    when both are in it), `option_aliases` (pipeline spelling -> field name, for
    options whose natural name is a Python keyword, e.g. `{"global": "global_tokens"}`),
    `drift_bar` (approximate passes: the default limits the compile judges their
    drift from eager by, `min_cosine` / `min_sqnr` / `min_token_agreement`; the
    user's flags override them; empty: measured, judged only against the user's),
    `needs_float32` (the pass works on float32 weights only: the compile then keeps
    or makes the graph float32, t2c/precision.py).
    """

    name: ClassVar[str] = ""
    exact: ClassVar[bool] = True
    after: ClassVar[tuple[str, ...]] = ()
    option_aliases: ClassVar[dict[str, str]] = {}
    drift_bar: ClassVar[dict[str, float]] = {}
    needs_float32: ClassVar[bool] = False

    def run(self, graph: Graph) -> PassResult:
        raise NotImplementedError

    def options_str(self) -> str:
        """Non-default options as `key=value,...`, in field order."""
        parts = []
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            if value != f.default or type(value) is not type(f.default):
                parts.append(f"{_spelling(type(self), f.name)}={_format_option(value)}")
        return ",".join(parts)

    def __str__(self) -> str:
        opts = self.options_str()
        return f"{self.name}{{{opts}}}" if opts else self.name


_PASSES: dict[str, type[Pass]] = {}


def register_pass(name: str) -> Callable[[type], type]:
    """Class decorator: register a frozen-dataclass `Pass` subclass under `name`."""
    if not re.fullmatch(r"[a-z][a-z0-9\-]*", name):
        raise ValueError(f"pass name {name!r} must be lower-case words joined by '-'")

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and issubclass(cls, Pass)):
            raise TypeError(f"pass {name}: {cls!r} must subclass Pass")
        if not (dataclasses.is_dataclass(cls) and cls.__dataclass_params__.frozen):  # type: ignore[attr-defined]
            raise TypeError(f"pass {name}: {cls.__name__} must be a frozen dataclass")
        if name in _PASSES and _PASSES[name] is not cls:
            raise ValueError(f"pass {name!r} is already registered")
        for opt, hint in _option_types(cls).items():
            if hint not in OPTION_TYPES:
                raise TypeError(f"pass {name}: option {opt} must be int, float, bool or str, got {hint}")
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING:
                raise TypeError(f"pass {name}: option {f.name} needs a default")
        for alias, field_name in cls.option_aliases.items():
            if field_name not in _option_types(cls):
                raise TypeError(f"pass {name}: option alias {alias!r} names no option {field_name!r}")
        cls.name = name
        _PASSES[name] = cls
        return cls

    return deco


def all_passes() -> dict[str, type[Pass]]:
    """Every registered pass, by name, sorted."""
    _ensure_loaded()
    return dict(sorted(_PASSES.items()))


def get_pass(name: str) -> type[Pass]:
    """The pass class registered as `name`; `UserError` listing the valid names otherwise."""
    _ensure_loaded()
    try:
        return _PASSES[name]
    except KeyError:
        raise UserError(f"unknown pass {name!r}; valid passes: {', '.join(sorted(_PASSES))}") from None


def describe_passes() -> str:
    """Every pass with its kind, its doc, and its options with types and defaults (for `t2c passes`)."""
    blocks = []
    for name, cls in all_passes().items():
        kind = "exact" if cls.exact else "approximate"
        lines = [f"{name}  ({kind})"]
        doc = inspect.getdoc(cls) or ""
        lines.extend(f"    {line}".rstrip() for line in doc.splitlines())
        if cls.after:
            lines.append(f"    runs after: {', '.join(cls.after)}")
        hints = _option_types(cls)
        fields = dataclasses.fields(cls)
        if fields:
            lines.append("    options:")
            for f in fields:
                lines.append(f"      {_spelling(cls, f.name)}: {hints[f.name].__name__} = {_format_option(f.default)}")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks) + "\n"


@dataclass(frozen=True)
class Pipeline:
    """An ordered list of configured passes; parse from and print to the pipeline string."""

    passes: tuple[Pass, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "passes", tuple(self.passes))
        self.check_order()

    @classmethod
    def parse(cls, text: str) -> "Pipeline":
        """Parse `name,name{key=value,...},...`; `UserError` on unknown names, options or bad values.

        A preset name (`-O1`) among the items stands for its passes.
        """
        text = text.strip()
        if not text:
            return cls(())
        if not balanced(text):
            raise UserError(f"pipeline {text!r} has unbalanced braces or quotes")
        passes: list[Pass] = []
        for item in split_top(text):
            if item.strip().lstrip("-") in PRESETS:  # a preset inside a pipeline: `-O1,window{size=512}`
                passes.extend(preset_passes(item.strip().lstrip("-")))
            else:
                passes.append(_parse_item(item, text))
        return cls(tuple(passes))

    @classmethod
    def from_spec(cls, spec: "str | Pipeline | None") -> "Pipeline":
        """A preset name (`-O1`, `O2`) or a pipeline string; None means -O1 (the CLI's default)."""
        if spec is None:
            return cls.preset("O1")
        if isinstance(spec, Pipeline):
            return spec
        text = spec.strip()
        if text.lstrip("-") in PRESETS:
            return cls.preset(text)
        return cls.parse(text)

    @classmethod
    def preset(cls, level: str | int) -> "Pipeline":
        """The pipeline of a preset: `"O0"`, `"-O1"`, `"2"` or `2` all work."""
        key = str(level).lstrip("-")
        key = key if key.startswith("O") else f"O{key}"
        if key not in PRESETS:
            raise UserError(f"unknown preset {level!r}; valid presets: {', '.join('-' + k for k in PRESETS)}")
        return cls(preset_passes(key))

    def __str__(self) -> str:
        return ",".join(str(p) for p in self.passes)

    def __len__(self) -> int:
        return len(self.passes)

    def __add__(self, other: "Pipeline") -> "Pipeline":
        return Pipeline(self.passes + other.passes)

    def check_order(self) -> None:
        """`UserError` when a pass declares `after=(x,)`, x is in the pipeline, and no x precedes it."""
        names = [p.name for p in self.passes]
        for i, p in enumerate(self.passes):
            for before in p.after:
                if before in names and before not in names[:i]:
                    raise UserError(
                        f"pass {p.name} must run after {before}, but the pipeline has {before} later: "
                        f"{','.join(names)}; move {before} before {p.name}"
                    )

    def run(
        self,
        graph: Graph,
        *,
        verify_each: bool = False,
        on_pass: Callable[[PassRecord], None] | None = None,
    ) -> tuple[Graph, list[PassRecord]]:
        """Run the passes in order; returns the final graph and one record per pass.

        `verify_each` verifies the input and the graph after every pass, raising a
        `VerifyError` that names the pass that broke it. `on_pass` is called with
        each record as soon as its pass finishes.
        """
        if verify_each:
            try:
                verify(graph)
            except VerifyError as e:
                raise VerifyError(f"the input graph does not verify: {e}") from None
        records: list[PassRecord] = []
        for p in self.passes:
            before = len(graph.nodes)
            start = time.perf_counter()
            result = p.run(graph)
            seconds = time.perf_counter() - start
            graph = result.graph
            if verify_each:
                try:
                    verify(graph)
                except VerifyError as e:
                    raise VerifyError(f"after pass {p}: {e}") from None
            record = PassRecord(p.name, p.options_str(), result.changed, dict(result.stats), seconds, before, len(graph.nodes))
            records.append(record)
            if on_pass is not None:
                on_pass(record)
        return graph, records


# -- helpers -----------------------------------------------------------------------


def _option_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _spelling(cls: type, field_name: str) -> str:
    """How option `field_name` is spelled in pipeline strings (its alias, if it has one)."""
    for alias, name in cls.option_aliases.items():  # type: ignore[attr-defined]
        if name == field_name:
            return alias
    return field_name


def _format_option(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, str):
        # bare words print bare; anything that could confuse the pipeline grammar is quoted
        return value if re.fullmatch(r"[A-Za-z0-9_.\-/:+]+", value) else json.dumps(value)
    return str(value)


def preset_passes(key: str) -> tuple[Pass, ...]:
    """The configured passes of preset `key` ("O1"): its items parsed like pipeline items."""
    return tuple(_parse_item(item, ",".join(PRESETS[key])) for item in PRESETS[key])


def _parse_item(item: str, text: str) -> Pass:
    m = re.fullmatch(r"\s*([A-Za-z0-9_\-]+)\s*(?:\{(.*)\})?\s*", item, re.S)
    if not m:
        raise UserError(f"bad pipeline item {item!r} in {text!r}; expected name or name{{key=value,...}}")
    cls = get_pass(m.group(1))
    hints = {_spelling(cls, name): hint for name, hint in _option_types(cls).items()}
    kwargs: dict[str, Any] = {}
    for opt in split_top(m.group(2) or ""):
        if not opt:
            continue
        key, sep, raw = opt.partition("=")
        key = key.strip()
        if key not in hints:
            valid = ", ".join(hints) or "none"
            raise UserError(f"pass {cls.name} has no option {key!r}; valid options: {valid}")
        if not sep:
            raise UserError(f"option {key} of pass {cls.name} needs a value: {key}=VALUE")
        if key in kwargs:
            raise UserError(f"option {key} of pass {cls.name} is given twice")
        kwargs[key] = _parse_option(cls.name, key, hints[key], raw.strip())
    return cls(**{cls.option_aliases.get(k, k): v for k, v in kwargs.items()})


def _parse_option(pass_name: str, key: str, hint: type, raw: str) -> Any:
    def bad() -> UserError:
        return UserError(f"option {key} of pass {pass_name} must be {hint.__name__}, got {raw!r}")

    if hint is bool:
        if raw in ("true", "false"):
            return raw == "true"
        raise bad()
    if hint is int:
        if re.fullmatch(r"[-+]?\d+", raw):
            return int(raw)
        raise bad()
    if hint is float:
        try:
            return float(raw)
        except ValueError:
            raise bad() from None
    if raw.startswith('"'):
        try:
            value = json.loads(raw)
        except ValueError:
            raise bad() from None
        if not isinstance(value, str):
            raise bad()
        return value
    if not raw or not re.fullmatch(r"[^\s{}=,\"]+", raw):
        raise bad()
    return raw


_loaded = False


def _ensure_loaded() -> None:
    """Import the package so that every built-in pass has registered itself."""
    global _loaded
    if not _loaded:
        _loaded = True
        from .. import passes  # noqa: F401
