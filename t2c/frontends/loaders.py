"""Model sources -> `(nn.Module, example_inputs, dynamic_dims)`.

`load_model(source)` accepts the four sources of DESIGN §8:

- a Hugging Face model folder (`config.json` + `*.safetensors`),
- a torch.export archive (`.pt2`),
- a `torch.save`d module (`.pt` / `.pth`), bare or as
  `{"model": module, "example_inputs": tuple | dict}`,
- a factory `package.module:function` or `path/to/file.py:function` returning
  `(model, example_inputs)`.

Safety (DESIGN §9). A model file can be a program. Safetensors folders and
`weights_only=True` loads read data only, so they load by default. Pickled
modules and `.pt2` archives run code when loaded: they are refused unless the
caller trusts the model (`--trust-model` or `T2C_TRUST_MODEL=1`). A safe load
that fails is only followed by an unsafe one when the file is a well-formed
pickle that the safe loader refused for its globals, never for a corrupt file.

Factories import and run user code, but that code is what the user named on
the command line to be run, exactly like `python file.py`; so a factory needs
no `--trust-model`.

Every failure a user can fix ends in a one-line `UserError` (exit 2).
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import inspect
import io
import os
import pickle
import pickletools
import re
import sys
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from t2c.errors import UserError

__all__ = [
    "ExportedModule", "InputSpec", "LoadedModel", "default_dynamic_dims", "load_model",
    "trust_from_env",
]

ACCEPTED_SOURCES = (
    "a Hugging Face model folder (config.json + *.safetensors), a torch.export archive (.pt2), "
    "a torch.save'd module (.pt/.pth), or a factory module:function / file.py:function"
)
TRUST_HINT = "pass --trust-model (or T2C_TRUST_MODEL=1) if you trust it"
INPUT_HINT = "pass --input NAME=SHAPE[:DTYPE], e.g. --input input_ids=1x128:i64"
FACTORY_HINT = "pass a module:function factory or an HF folder"
MAX_MESSAGE = 300
DEFAULT_SEQ_LEN = 128
DEFAULT_DECODER_LEN = 16  # an encoder-decoder's default decoder_input_ids length
SPEC_INT_HIGH = 100  # random ids stay small so they are valid for any vocabulary
SEED = 0  # example inputs are reproducible from run to run

_DTYPES: dict[str, torch.dtype] = {
    "f64": torch.float64, "float64": torch.float64,
    "f32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "f16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "i64": torch.int64, "int64": torch.int64, "long": torch.int64,
    "i32": torch.int32, "int32": torch.int32, "int": torch.int32,
    "i16": torch.int16, "int16": torch.int16,
    "i8": torch.int8, "int8": torch.int8,
    "u8": torch.uint8, "uint8": torch.uint8,
    "bool": torch.bool,
}
_SPEC_FORM = "--input NAME=SHAPE[:DTYPE], e.g. input_ids=1x128:i64 or x=2x16x64:f32"
_SPEC_RE = re.compile(r"^([A-Za-z_]\w*)=(\d+(?:x\d+)*)(?::(\w+))?$")
_MODULE_PATH_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def _fail(message: str) -> UserError:
    """A `UserError` whose message is one line of at most MAX_MESSAGE characters.

    Messages embed exception texts and file contents we do not control; the
    CLI promises one line, so whitespace (newlines included) is collapsed here.
    """
    text = " ".join(str(message).split())
    if len(text) > MAX_MESSAGE:
        text = text[: MAX_MESSAGE - 3] + "..."
    return UserError(text)


def _describe(exc: BaseException) -> str:
    """`Type: message` of an exception, for embedding in a one-line error."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------- input specs


@dataclass
class InputSpec:
    """One `--input NAME=SHAPE[:DTYPE]`: the name, shape and dtype of an example input."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @staticmethod
    def parse(text: str) -> "InputSpec":
        """Parse `NAME=SHAPE[:DTYPE]` (`input_ids=1x128:i64`, `x=2x16x64`).

        The dtype defaults to f32, except for names ending in `ids` or `mask`,
        which are integer inputs in every transformer and default to i64.
        """
        match = _SPEC_RE.match(text.strip()) if isinstance(text, str) else None
        if match is None:
            raise _fail(f"bad --input {text!r}: expected {_SPEC_FORM}")
        name, shape_text, dtype_text = match.groups()
        shape = tuple(int(d) for d in shape_text.split("x"))
        if any(d == 0 for d in shape):
            raise _fail(f"bad --input {text!r}: every dimension must be at least 1")
        if dtype_text is None:
            dtype = torch.int64 if name.endswith(("ids", "mask")) else torch.float32
        elif dtype_text.lower() in _DTYPES:
            dtype = _DTYPES[dtype_text.lower()]
        else:
            known = ", ".join(k for k in _DTYPES if len(k) <= 4)
            raise _fail(f"bad --input {text!r}: unknown dtype {dtype_text!r} (use one of {known})")
        return InputSpec(name, shape, dtype)

    def example(self, generator: torch.Generator, int_high: int = SPEC_INT_HIGH) -> torch.Tensor:
        """A random tensor of this spec: randn for floats, ints in [0, int_high) otherwise.

        Masks are all ones and token types all zeros, the values a real batch
        without padding has; random values there would be out of range.
        """
        if self.dtype == torch.bool or self.name.endswith("mask"):
            return torch.ones(self.shape, dtype=self.dtype)
        if self.name.endswith("token_type_ids"):
            return torch.zeros(self.shape, dtype=self.dtype)
        if self.dtype.is_floating_point:
            return torch.randn(self.shape, generator=generator).to(self.dtype)
        return torch.randint(0, max(int_high, 1), self.shape, generator=generator, dtype=self.dtype)


# --------------------------------------------------------------------------- result


@dataclass
class LoadedModel:
    """What every loader hands to the frontend (DESIGN §1).

    `module(**example_inputs)` runs the model; `example_inputs` is in
    forward-signature order; `dynamic_dims` maps input name -> {axis: "batch"|"seq"}.
    """

    module: torch.nn.Module
    example_inputs: dict[str, torch.Tensor]
    dynamic_dims: dict[str, dict[int, str]]
    source: str
    kind: str  # "hf" | "pt2" | "pt" | "factory"
    hf_config: object | None = None
    exported: object | None = None
    with_past: dict | None = None  # the KV-cache interface when compiled --with-past (hf_past.py)


# Inputs whose axis 1 is not a sequence: images [B, C, H, W] (and their masks [B, H, W]),
# audio features [B, n_mels, frames] (Whisper's encoder needs exactly its frame count).
BATCH_ONLY_INPUTS = ("pixel_values", "pixel_mask", "input_features", "image", "images")


def default_dynamic_dims(example_inputs: dict[str, Any]) -> dict[str, dict[int, str]]:
    """Which axes of each input are dynamic, and under which label.

    - rank 2 and 3: axis 0 is "batch" and axis 1 "seq" (token ids, masks,
      embeddings [B, S, H]); inputs named `decoder_*` (an encoder-decoder's
      decoder side) take "decoder_seq" instead, a length of their own, and so
      do the inputs of any other token sequence that has ids of its own
      and mask (`entity_ids`, `entity_attention_mask`, `entity_position_ids`:
      "entity_seq"); `global_attention_mask` without `global_ids` stays "seq";
    - rank >= 4, and inputs named like images or audio features
      (BATCH_ONLY_INPUTS: `pixel_values` [B, C, H, W], `input_features`
      [B, n_mels, frames]): axis 0 only; their other axes are channels and
      sizes the weights fix (a patch grid matched to a position table);
    - rank 1: "batch" only when its example says so (size >= 2): a size-1
      vector is more likely a per-model scale than a batch of one.

    Size-1 example dims of dynamic axes qualify too: torch.export would
    specialise them, so the frontend repeats those examples to size 2 before
    tracing.
    """
    dims: dict[str, dict[int, str]] = {}
    for name, value in example_inputs.items():
        if not isinstance(value, torch.Tensor):
            continue
        if value.dim() >= 4 or (value.dim() >= 2 and name in BATCH_ONLY_INPUTS):
            axes = {0: "batch"}
        elif value.dim() >= 2:
            axes = {0: "batch", 1: _sequence_label(name, example_inputs)}
        elif value.dim() == 1 and value.shape[0] >= 2:
            axes = {0: "batch"}
        else:
            axes = {}
        if axes:
            dims[name] = axes
    return dims


def _sequence_label(name: str, example_inputs: dict[str, Any]) -> str:
    """`P_seq` for an input `P_...` when `P_ids` (or `P_input_ids`) and `P_attention_mask` are inputs
    too: a sequence of its own. Else "seq" (`position_ids` is one per token, not a sequence)."""
    if name.startswith("decoder_"):
        return "decoder_seq"
    prefix = name.split("_", 1)[0]
    has_ids = f"{prefix}_ids" in example_inputs or f"{prefix}_input_ids" in example_inputs
    return f"{prefix}_seq" if "_" in name and has_ids and f"{prefix}_attention_mask" in example_inputs else "seq"


def trust_from_env() -> bool:
    """True when `T2C_TRUST_MODEL` is set to 1 (or true/yes): the env form of --trust-model."""
    return os.environ.get("T2C_TRUST_MODEL", "").strip().lower() in ("1", "true", "yes")


# --------------------------------------------------------------------------- entry point


def load_model(source: str, *, trust_model: bool = False,
               inputs: list[InputSpec] | None = None) -> LoadedModel:
    """Load `source` into an eval-mode module with example inputs and dynamic dims.

    `trust_model` (or `T2C_TRUST_MODEL=1`) allows sources that run code when
    loaded: pickled modules and `.pt2` archives. `inputs` gives example inputs
    for sources that carry none (a bare module, an HF folder); examples saved
    with the source take precedence over them.
    """
    trust = trust_model or trust_from_env()
    source = os.fspath(source)
    path = Path(source)
    if path.is_dir():
        loaded = _load_hf_folder(source, path, trust, inputs)
    elif path.is_file():
        loaded = _load_file(source, path, trust, inputs)
    elif _looks_like_factory(source):
        loaded = _load_factory(source, inputs)
    else:
        raise _fail(f"{source}: no such file or directory; expected {ACCEPTED_SOURCES}")
    loaded.module.eval()
    return loaded


def _load_file(source: str, path: Path, trust: bool, inputs: list[InputSpec] | None) -> LoadedModel:
    """Dispatch a model file on its extension; anything else is not a model source."""
    suffix = path.suffix.lower()
    if path.stat().st_size == 0:
        raise _fail(f"{source}: the file is empty")
    if suffix == ".pt2":
        return _load_exported(source, path, trust, inputs)
    if suffix in (".pt", ".pth"):
        return _load_torch_file(source, path, trust, inputs)
    if suffix == ".safetensors":
        raise _fail(f"{source}: a safetensors file holds weights only; pass its folder "
                    f"(with config.json) or {FACTORY_HINT}")
    raise _fail(f"{source}: unknown model file type {suffix or '(no extension)'!r}; "
                f"expected {ACCEPTED_SOURCES}")


# --------------------------------------------------------------------------- example inputs


def _forward_params(module: torch.nn.Module) -> tuple[list[str], bool, bool]:
    """(named parameters of forward, takes *args, takes **kwargs)."""
    try:
        params = inspect.signature(module.forward).parameters.values()
    except (TypeError, ValueError):
        return [], True, True
    names = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    var_pos = any(p.kind == p.VAR_POSITIONAL for p in params)
    var_kw = any(p.kind == p.VAR_KEYWORD for p in params)
    return names, var_pos, var_kw


def name_examples(module: torch.nn.Module, examples: Any, where: str) -> dict[str, Any]:
    """Example inputs as a dict in forward-signature order.

    A tuple is matched to forward's parameters by position; a dict is checked
    against their names. Names are what the frontend passes to torch.export
    as kwargs, so every one must be a parameter forward accepts.
    """
    params, var_pos, var_kw = _forward_params(module)
    if isinstance(examples, torch.Tensor):
        examples = (examples,)
    if isinstance(examples, list):
        examples = tuple(examples)
    if isinstance(examples, tuple):
        if len(examples) > len(params):
            extra = "takes *args" if var_pos else f"takes only ({', '.join(params)})"
            raise _fail(f"{where}: {len(examples)} example inputs but forward {extra}; "
                        f"give the example inputs as a dict name -> tensor")
        named = dict(zip(params, examples))
    elif isinstance(examples, dict):
        named = dict(examples)
        unknown = [k for k in named if not isinstance(k, str) or (k not in params and not var_kw)]
        if unknown:
            raise _fail(f"{where}: forward has no parameter {unknown[0]!r}; "
                        f"it takes ({', '.join(params)})")
    else:
        raise _fail(f"{where}: example inputs must be a tuple or a dict name -> tensor, "
                    f"not {type(examples).__name__}")
    ordered = {name: named[name] for name in params if name in named}
    ordered.update((k, v) for k, v in named.items() if k not in ordered)
    return ordered


def _examples_from_specs(specs: list[InputSpec],
                         int_high: int = SPEC_INT_HIGH) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(SEED)
    return {spec.name: spec.example(generator, int_high) for spec in specs}


def _finish(module: torch.nn.Module, examples: dict[str, Any], source: str, kind: str,
            **extra: Any) -> LoadedModel:
    return LoadedModel(module=module, example_inputs=examples,
                       dynamic_dims=default_dynamic_dims(examples), source=source, kind=kind,
                       **extra)


def _module_with_examples(module: Any, examples: Any, inputs: list[InputSpec] | None,
                          source: str, kind: str) -> LoadedModel:
    """Common tail of .pt and factory sources: check the module, name its examples."""
    if not isinstance(module, torch.nn.Module):
        raise _fail(f"{source}: expected a torch.nn.Module, got {type(module).__name__}")
    if examples is None:
        if not inputs:
            raise _fail(f"{source}: the module comes without example inputs; {INPUT_HINT}")
        examples = _examples_from_specs(inputs)
    return _finish(module, name_examples(module, examples, source), source, kind)


# --------------------------------------------------------------------------- Hugging Face folders


def _load_hf_folder(source: str, folder: Path, trust: bool,
                    inputs: list[InputSpec] | None) -> LoadedModel:
    """Build the model from config.json and load its safetensors weights, offline."""
    if not (folder / "config.json").is_file():
        raise _fail(f"{source}: a directory without config.json is not a Hugging Face model "
                    f"folder; expected {ACCEPTED_SOURCES}")
    use_safetensors = _hf_weight_format(source, folder, trust)
    transformers = _import_transformers()
    try:
        config = transformers.AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except Exception as exc:
        raise _fail(f"{source}: cannot read config.json: {_describe(exc)}") from exc
    _disable_kv_cache(config)
    model_class = _hf_model_class(transformers, config)
    try:
        with _quiet_hf_progress(transformers):
            model = model_class.from_pretrained(
                str(folder), config=config, local_files_only=True,
                use_safetensors=use_safetensors)
    except Exception as exc:
        raise _fail(f"{source}: cannot load {model_class.__name__}: {_describe(exc)}") from exc
    examples = _hf_examples(source, config, inputs, model)
    return _finish(model, name_examples(model, examples, source), source, "hf",
                   hf_config=config)


def _hf_weight_format(source: str, folder: Path, trust: bool) -> bool:
    """True for safetensors weights; pickled .bin weights only with trust."""
    if any(folder.glob("*.safetensors")) or (folder / "model.safetensors.index.json").is_file():
        return True
    if any(folder.glob("*.bin")) or (folder / "pytorch_model.bin.index.json").is_file():
        if not trust:
            raise _fail(f"{source}: holds only pytorch_model.bin weights, a pickle that can run "
                        f"code when loaded; {TRUST_HINT}, or convert them to safetensors")
        return False
    raise _fail(f"{source}: config.json but no *.safetensors weights")


def _import_transformers() -> Any:
    try:
        import transformers
    except ImportError as exc:
        raise _fail("loading a Hugging Face folder needs transformers: "
                    "pip install 't2c[hf]'") from exc
    return transformers


def _disable_kv_cache(config: Any) -> None:
    # A KV cache makes forward return cache objects torch.export cannot trace
    # as plain outputs; compiled models are single forward passes.
    configs = [config]
    if hasattr(config, "get_text_config"):
        configs.append(config.get_text_config())
    for cfg in configs:
        if hasattr(cfg, "use_cache"):
            cfg.use_cache = False


def _hf_model_class(transformers: Any, config: Any) -> Any:
    """The class named by config.architectures[0] when transformers has it, else AutoModel."""
    architectures = getattr(config, "architectures", None) or []
    candidate = getattr(transformers, architectures[0], None) if architectures else None
    if isinstance(candidate, type) and hasattr(candidate, "from_pretrained"):
        return candidate
    return transformers.AutoModel


@contextlib.contextmanager
def _quiet_hf_progress(transformers: Any) -> Iterator[None]:
    # The weight-loading progress bar would land in the middle of CLI output.
    hf_logging = transformers.utils.logging
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _hf_examples(source: str, config: Any, inputs: list[InputSpec] | None,
                 model: torch.nn.Module | None = None) -> dict[str, torch.Tensor]:
    """`inputs` specs if given, else default inputs for what the model's forward takes.

    - `input_ids` of 1 x 128 random token ids (fewer when the position table is shorter);
    - an encoder-decoder (forward takes `decoder_input_ids`, `config.is_encoder_decoder`):
      also `decoder_input_ids` of 1 x 16;
    - a vision encoder (forward takes `pixel_values`, no `input_ids`): `pixel_values`
      1 x num_channels x image_size x image_size from the (vision) config;
    - a speech encoder-decoder (forward takes `input_features`, no `input_ids`, the config
      gives `num_mel_bins` and `max_source_positions`, Whisper-style): `input_features`
      1 x num_mel_bins x (2 * max_source_positions), the frames its conv front end halves.
    Anything else needs `--input`.
    """
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    vocab_size = getattr(text_config, "vocab_size", None)
    if inputs:
        return _examples_from_specs(inputs, min(vocab_size or SPEC_INT_HIGH, SPEC_INT_HIGH))
    params = set(_forward_params(model)[0]) if model is not None else {"input_ids"}
    generator = torch.Generator().manual_seed(SEED)
    examples: dict[str, torch.Tensor] = {}
    if "input_ids" not in params and "pixel_values" in params:
        examples["pixel_values"] = _hf_pixel_values(source, config, generator)
    elif "input_ids" not in params and "input_features" in params:
        examples["input_features"] = _hf_input_features(source, config, generator)
    elif "input_ids" in params or model is None:
        if not vocab_size:
            raise _fail(f"{source}: the config has no vocab_size to make example token ids; "
                        f"{INPUT_HINT}")
        # Tiny test models may have fewer than 128 positions.
        max_positions = getattr(text_config, "max_position_embeddings", None) or DEFAULT_SEQ_LEN
        seq_len = min(DEFAULT_SEQ_LEN, max_positions)
        examples["input_ids"] = torch.randint(0, vocab_size, (1, seq_len), generator=generator, dtype=torch.int64)
    else:
        raise _fail(f"{source}: t2c has no default inputs for {type(model).__name__} "
                    f"(forward takes {', '.join(sorted(params)[:6])}, ...); {INPUT_HINT}")
    if "decoder_input_ids" in params and getattr(config, "is_encoder_decoder", False):
        if not vocab_size:
            raise _fail(f"{source}: the config has no vocab_size to make example decoder ids; "
                        f"{INPUT_HINT}")
        limit = getattr(config, "max_target_positions", None) or getattr(text_config, "max_position_embeddings", None)
        dec_len = min(DEFAULT_DECODER_LEN, limit or DEFAULT_DECODER_LEN)
        examples["decoder_input_ids"] = torch.randint(0, vocab_size, (1, dec_len), generator=generator, dtype=torch.int64)
    return examples


def _sub_config(config: Any, name: str) -> Any:
    sub = getattr(config, name, None)
    return sub if sub is not None and not isinstance(sub, dict) else config


def _hf_pixel_values(source: str, config: Any, generator: torch.Generator) -> torch.Tensor:
    vision = _sub_config(config, "vision_config")
    size = getattr(vision, "image_size", None)
    if isinstance(size, dict):  # {"height": h, "width": w}
        size = (size.get("height"), size.get("width"))
    h, w = (size, size) if isinstance(size, int) else tuple(size or (None, None))[:2]
    if not (isinstance(h, int) and isinstance(w, int)):
        raise _fail(f"{source}: the config gives no image_size for example pixel_values; "
                    f"pass --input pixel_values=1x3xHxW")
    channels = getattr(vision, "num_channels", None) or 3
    return torch.randn((1, channels, h, w), generator=generator)


def _hf_input_features(source: str, config: Any, generator: torch.Generator) -> torch.Tensor:
    mels = getattr(config, "num_mel_bins", None)
    positions = getattr(config, "max_source_positions", None)
    if not (isinstance(mels, int) and isinstance(positions, int)):
        raise _fail(f"{source}: t2c cannot tell the shape of input_features from the config; "
                    f"pass --input input_features=1xFEATURESxFRAMES")
    return torch.randn((1, mels, 2 * positions), generator=generator)


# --------------------------------------------------------------------------- .pt2 archives


class ExportedModule(torch.nn.Module):
    """An unlifted ExportedProgram module, called by input name.

    `ExportedProgram.module()` only accepts its inputs the way they were
    exported (positional stay positional) and raises on `train()`/`eval()`;
    this wrapper gives it the `module(**example_inputs)` contract of every
    other source. The graph's train/eval mode was fixed at export time.
    """

    def __init__(self, inner: torch.nn.Module, positional: list[str], keyword: list[str]):
        super().__init__()
        self.inner = inner
        self.positional = tuple(positional)
        self.keyword = tuple(keyword)

    def forward(self, **named: Any) -> Any:
        args = [named[name] for name in self.positional]
        kwargs = {name: named[name] for name in self.keyword}
        return self.inner(*args, **kwargs)

    def train(self, mode: bool = True) -> "ExportedModule":
        # Do not recurse: the exported inner module refuses train()/eval().
        self.training = mode
        return self


def _load_exported(source: str, path: Path, trust: bool,
                   inputs: list[InputSpec] | None) -> LoadedModel:
    """Load a torch.export archive; it runs code when loaded, so only with trust."""
    # Checking the zip container reads no pickles; it tells a corrupt file
    # apart from a real archive before the trust question is asked.
    if not zipfile.is_zipfile(path):
        raise _fail(f"{source}: not a torch.export archive (a .pt2 file is a zip archive)")
    if not trust:
        raise _fail(f"{source}: a torch.export archive can run code when loaded; {TRUST_HINT}")
    try:
        exported = torch.export.load(str(path))
    except Exception as exc:
        raise _fail(f"{source}: cannot load the torch.export archive: {_describe(exc)}") from exc
    positional, keyword = _exported_arg_names(source, exported)
    module = ExportedModule(exported.module(), positional, keyword)
    examples = _exported_examples(source, exported, positional, keyword, inputs)
    return _finish(module, examples, source, "pt2", exported=exported)


def _exported_arg_names(source: str, exported: Any) -> tuple[list[str], list[str]]:
    """Names of the program's positional and keyword inputs, in call order."""
    in_spec = exported.call_spec.in_spec
    # children() replaced the children_specs attribute in newer torch.
    if callable(getattr(in_spec, "children", None)):
        args_spec, kwargs_spec = in_spec.children()
    else:
        args_spec, kwargs_spec = in_spec.children_specs
    keyword = list(kwargs_spec.context or [])
    n_positional = args_spec.num_children
    names = list(exported.graph_signature.user_inputs)
    if len(names) != n_positional + len(keyword):
        raise _fail(f"{source}: the exported program takes nested inputs (lists or dicts of "
                    f"tensors); t2c needs one tensor per argument")
    return names[:n_positional], keyword


def _exported_examples(source: str, exported: Any, positional: list[str], keyword: list[str],
                       inputs: list[InputSpec] | None) -> dict[str, Any]:
    order = positional + keyword
    saved = getattr(exported, "example_inputs", None)
    if saved is not None:
        args, kwargs = saved
        named = dict(zip(positional, args)) | dict(kwargs)
    elif inputs:
        named = _examples_from_specs(inputs)
        unknown = [name for name in named if name not in order]
        if unknown:
            raise _fail(f"{source}: the exported program has no input {unknown[0]!r}; "
                        f"it takes ({', '.join(order)})")
    else:
        raise _fail(f"{source}: the archive holds no example inputs; {INPUT_HINT}")
    missing = [name for name in order if name not in named]
    if missing:
        raise _fail(f"{source}: no example for input {missing[0]!r}; {INPUT_HINT}")
    return {name: named[name] for name in order}


# --------------------------------------------------------------------------- .pt files


def _load_torch_file(source: str, path: Path, trust: bool,
                     inputs: list[InputSpec] | None) -> LoadedModel:
    """Load a torch.save'd file: weights_only first, a pickled module only with trust."""
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols of files it then refuses;
            # the refusal is reported below, in one line.
            warnings.simplefilter("ignore")
            obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        refused_globals = _refused_pickle_globals(path, exc)
        if refused_globals is None:
            raise _fail(f"{source}: not a readable PyTorch file (corrupt, truncated or another "
                        f"format): {_corrupt_reason(exc)}") from exc
        if not trust:
            what = ", ".join(refused_globals[:3])
            raise _fail(f"{source}: holds pickled Python objects ({what}) that can run code "
                        f"when loaded; {TRUST_HINT}")
        obj = _unsafe_torch_load(source, path)
    else:
        raise _not_a_module(source, obj)
    model, examples = obj, None
    if isinstance(obj, dict) and "model" in obj:
        model, examples = obj["model"], obj.get("example_inputs")
    return _module_with_examples(model, examples, inputs, source, "pt")


def _not_a_module(source: str, obj: Any) -> UserError:
    """The error for a file that weights_only could read: it is data, not a model."""
    if isinstance(obj, dict):
        return _fail(f"{source}: a state dict has no architecture; {FACTORY_HINT}")
    return _fail(f"{source}: holds a {type(obj).__name__}, not a module; {FACTORY_HINT}")


def _refused_pickle_globals(path: Path, exc: Exception) -> list[str] | None:
    """The globals a pickle imports, when that is why weights_only refused it.

    None means the file is corrupt or not a pickle at all: then an unsafe
    load must not be tried, even with trust. The check reads the opcodes with
    pickletools and executes nothing.
    """
    if not isinstance(exc, pickle.UnpicklingError):
        return None
    try:
        return _scan_pickles(_pickle_stream(path)) or None
    except Exception:  # any parse failure means "not a well-formed pickle"
        return None


def _corrupt_reason(exc: Exception) -> str:
    # torch's weights_only message suggests retrying with weights_only=False,
    # the wrong advice for a file that is not a pickle at all.
    if isinstance(exc, pickle.UnpicklingError):
        return "its contents are not a valid pickle"
    first_sentence = _describe(exc).split(". ")[0]
    return first_sentence[:160]


def _pickle_stream(path: Path) -> Any:
    """The pickle bytes of a torch file: data.pkl of a zip archive, or the raw file."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            data_pkl = next(n for n in archive.namelist() if n.endswith("data.pkl"))
            return io.BytesIO(archive.read(data_pkl))
    return path.open("rb")


# The legacy torch.save format is several pickles in a row (magic number,
# protocol, sys info, the object); the object's globals are in the fourth.
_MAX_PICKLES = 4
_STRING_OPS = {"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE",
               "SHORT_BINSTRING", "BINSTRING", "STRING"}


def _scan_pickles(stream: Any) -> list[str]:
    """Globals imported by the first pickles of `stream`; raises if one is malformed."""
    with stream:
        for _ in range(_MAX_PICKLES):
            names = _pickle_globals(pickletools.genops(stream))
            if names:
                return names
    return []


def _pickle_globals(opcodes: Iterator[tuple[Any, Any, Any]]) -> list[str]:
    """`module.name` of each GLOBAL / STACK_GLOBAL of one pickle, for the error message.

    STACK_GLOBAL takes its two names from the stack, often through the memo,
    so pushed strings and memo entries are followed (other values are not).
    """
    names: list[str] = []
    stack: list[str | None] = []
    memo: dict[Any, str | None] = {}
    for opcode, arg, _pos in opcodes:
        op = opcode.name
        if op in _STRING_OPS:
            stack.append(str(arg))
        elif op in ("MEMOIZE", "PUT", "BINPUT", "LONG_BINPUT"):
            memo[len(memo) if op == "MEMOIZE" else arg] = stack[-1] if stack else None
        elif op in ("GET", "BINGET", "LONG_BINGET"):
            stack.append(memo.get(arg))
        elif op in ("GLOBAL", "INST"):
            names.append(str(arg).replace(" ", "."))
        elif op == "STACK_GLOBAL":
            module, name = (stack[-2:] if len(stack) >= 2 else [None, None])
            names.append(f"{module}.{name}" if module and name else "?")
    return names


def _unsafe_torch_load(source: str, path: Path) -> Any:
    """torch.load with weights_only=False: the caller trusts this file."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=False)
    except Exception as exc:
        raise _fail(f"{source}: cannot load the pickled module: {_describe(exc)}") from exc


# --------------------------------------------------------------------------- factories


def _looks_like_factory(source: str) -> bool:
    target, sep, function = source.rpartition(":")
    return bool(sep and target and function)


def _load_factory(source: str, inputs: list[InputSpec] | None) -> LoadedModel:
    """Import `module:function` or `file.py:function` and call it for (model, example_inputs)."""
    target, _, function_name = source.rpartition(":")
    if not function_name.isidentifier():
        raise _fail(f"{source}: {function_name!r} is not a function name; expected "
                    f"module:function or file.py:function")
    if target.endswith(".py"):
        search_dir, load = _factory_file(source, target)
    elif _MODULE_PATH_RE.match(target):
        search_dir, load = os.getcwd(), lambda: importlib.import_module(target)
    else:
        raise _fail(f"{source}: no such file or directory, and {target!r} is not a module "
                    f"path; expected {ACCEPTED_SOURCES}")
    # The factory's own imports (sibling files, the project it lives in) resolve
    # from its directory, as they would under `python file.py`.
    with _on_sys_path(search_dir):
        module = _run_user_code(source, f"importing {target}", load)
        factory = getattr(module, function_name, None)
        if not callable(factory):
            raise _fail(f"{source}: {target} has no function {function_name!r}")
        result = _run_user_code(source, f"calling {function_name}()", factory)
    if not (isinstance(result, tuple) and len(result) == 2):
        raise _fail(f"{source}: {function_name}() must return (model, example_inputs), "
                    f"got {type(result).__name__}")
    model, examples = result
    return _module_with_examples(model, examples, inputs, source, "factory")


def _factory_file(source: str, file_name: str) -> tuple[str, Any]:
    """(directory, loader) for a factory file; the module gets a unique private name."""
    path = Path(file_name).resolve()
    if not path.is_file():
        raise _fail(f"{source}: no such file {file_name}")
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:8]
    stem = re.sub(r"\W", "_", path.stem)
    module_name = f"_t2c_factory_{stem}_{digest}"

    def load() -> Any:
        spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(spec)
        # Registered before running so dataclasses and pickling inside it work.
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            sys.modules.pop(module_name, None)
            raise
        return module

    return str(path.parent), load


def _run_user_code(source: str, what: str, fn: Any) -> Any:
    try:
        return fn()
    except UserError:
        raise
    except Exception as exc:
        raise _fail(f"{source}: {what} failed: {_describe(exc)}") from exc


@contextlib.contextmanager
def _on_sys_path(directory: str) -> Iterator[None]:
    added = directory not in sys.path
    if added:
        sys.path.insert(0, directory)
    try:
        yield
    finally:
        if added and directory in sys.path:
            sys.path.remove(directory)
