"""The backend registry: a compile target is registered by name, like a pass, with its own options.

A `Backend` says how to lower a graph to its artifact, save that artifact into a
folder, and load the folder back as a callable model; its options are a frozen
dataclass (`Options`) whose fields carry their help text and allowed values in
the field metadata. `compiler.py`, `api.py` and `cli.py` know only this module:
the CLI offers `--target` with the registered names and one flag per backend
option, report.json records them (`target`, `target_options`), `t2c.load`
reopens a folder through the backend that wrote it.

    @register_backend
    class MyBackend(Backend):
        name = "mine"
        artifact = "model.bin"
        Options = MyOptions
        def lower(self, graph, options): ...
        def save(self, artifact, folder, options): ...
        def load(self, folder, options): ...
"""

from __future__ import annotations

import dataclasses
import typing
from typing import Any, Callable, ClassVar, Mapping

import torch

from ..errors import UserError
from ..ir.core import Graph

Runner = Callable[..., dict[str, torch.Tensor]]  # runner(**inputs) -> {output name: tensor}
DEFAULT_TARGET = "onnx"  # what `t2c compile` and `t2c.compile` emit unless told otherwise
OPTION_TYPES = (int, float, bool, str)


def option(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A backend option field: its default, one line of help, and the values it allows (if a fixed set)."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices})


@dataclasses.dataclass(frozen=True)
class NoOptions:
    """Options of a backend that has none."""


class Backend:
    """Base of every backend. Subclasses are registered with `@register_backend`.

    Class attributes: `name` (the `--target` value), `artifact` (the file a
    summary names), `Options` (a frozen dataclass of the target's options; its
    `__post_init__` raises UserError on bad values), `doc` (one line),
    `float_dtypes` (the float dtypes its runtime computes, IR names; a checkpoint in
    another is compiled as float32 unless `--dtype` says otherwise) and
    `missing_dtypes` (why each other one is missing, for messages and the report).
    """

    name: ClassVar[str] = ""
    artifact: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    doc: ClassVar[str] = ""
    float_dtypes: ClassVar[tuple[str, ...]] = ("f32", "f16", "bf16")
    missing_dtypes: ClassVar[dict[str, str]] = {}

    def missing_dtype_reason(self, dtype: str) -> str:
        """Why this target does not compute `dtype` (an IR dtype name), in a few words."""
        return self.missing_dtypes.get(dtype, f"target {self.name} does not compute {dtype}")

    def lower(self, graph: Graph, options: Any) -> Any:
        """The artifact for `graph` (in memory); raises UserError for graphs the target cannot take."""
        raise NotImplementedError

    def save(self, artifact: Any, folder: str, options: Any) -> None:
        """Write the artifact's files into `folder` (which exists)."""
        raise NotImplementedError

    def load(self, folder: str, options: Any) -> Runner:
        """A callable model over the files `save` wrote: runner(**inputs) -> {output name: tensor}."""
        raise NotImplementedError

    def describe(self, options: Any) -> str:
        """A few words on the options, for the compile summary (`opset 23, standard`)."""
        return ", ".join(f"{k} {v}" for k, v in dataclasses.asdict(options).items())

    # -- options ---------------------------------------------------------------------------
    def make_options(self, given: Mapping[str, Any] | None = None) -> Any:
        """The Options from `given` (name -> value; None values are left at their defaults)."""
        given = {k: v for k, v in (given or {}).items() if v is not None}
        fields = {f.name for f in dataclasses.fields(self.Options)}
        unknown = sorted(set(given) - fields)
        if unknown:
            valid = ", ".join(sorted(fields)) or "none"
            raise UserError(f"target {self.name} has no option {', '.join(unknown)}; its options: {valid}")
        for f in dataclasses.fields(self.Options):
            choices = f.metadata.get("choices")
            if f.name in given and choices and given[f.name] not in choices:
                raise UserError(f"option {f.name} of target {self.name} must be one of {', '.join(choices)}, got {given[f.name]!r}")
        return self.Options(**given)

    def options_from_report(self, report: Mapping[str, Any]) -> Any:
        """The Options a report recorded (report.json's `target_options`)."""
        recorded = report.get("target_options", {})
        return self.make_options({f.name: recorded.get(f.name) for f in dataclasses.fields(self.Options)})


_BACKENDS: dict[str, Backend] = {}


def register_backend(cls: type) -> type:
    """Class decorator: register one instance of a `Backend` subclass under its `name`."""
    if not (isinstance(cls, type) and issubclass(cls, Backend)) or not cls.name:
        raise TypeError(f"{cls!r} must subclass Backend and set a name")
    if not (dataclasses.is_dataclass(cls.Options) and cls.Options.__dataclass_params__.frozen):  # type: ignore[attr-defined]
        raise TypeError(f"backend {cls.name}: Options must be a frozen dataclass")
    hints = typing.get_type_hints(cls.Options)
    for f in dataclasses.fields(cls.Options):
        if hints[f.name] not in OPTION_TYPES or f.default is dataclasses.MISSING or "help" not in f.metadata:
            raise TypeError(f"backend {cls.name}: option {f.name} needs a type in {OPTION_TYPES}, a default and help (use option())")
    if cls.name in _BACKENDS and type(_BACKENDS[cls.name]) is not cls:
        raise ValueError(f"backend {cls.name!r} is already registered")
    _BACKENDS[cls.name] = cls()
    return cls


def all_backends() -> dict[str, Backend]:
    """Every registered backend, by name."""
    _ensure_loaded()
    return dict(sorted(_BACKENDS.items()))


def get_backend(name: str) -> Backend:
    """The backend registered as `name`; UserError listing the registered ones otherwise."""
    _ensure_loaded()
    try:
        return _BACKENDS[name]
    except KeyError:
        raise UserError(f"unknown target {name!r}; choose one of {', '.join(sorted(_BACKENDS))}") from None


def option_fields(backend: Backend) -> list[tuple[dataclasses.Field, type]]:
    """(field, type) of every option of `backend`, in declaration order (for the CLI)."""
    hints = typing.get_type_hints(backend.Options)
    return [(f, hints[f.name]) for f in dataclasses.fields(backend.Options)]


_loaded = False


def _ensure_loaded() -> None:
    """Import the built-in backends so that they have registered themselves."""
    global _loaded
    if not _loaded:
        _loaded = True
        from . import onnx  # noqa: F401
        from . import triton  # noqa: F401
