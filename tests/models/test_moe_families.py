"""Every mixture-of-experts family of the installed transformers, compiled and run in plain ONNX Runtime.

The families are found in the library, not listed here: every modeling module
that decorates an experts class with `use_experts_implementation` (recognised
by the decorator's own `__init__`, the one it installs on every class it
wraps) and that defines a text-only `<X>ForCausalLM` (its forward takes
`input_ids` and no other modality). Each is built from a small config (2
layers, hidden <= 256, >= 8 experts, top-k small enough that a short input
leaves experts idle): the one transformers' own tests use
(`shared/hf-test-configs/<arch>.json`) when there is one, else the config
class's defaults with every size field shrunk, the fields found by name in the
config's signature. Its 2 layers are the window of the full-depth layout that
holds the first MoE layer.

Each family is compiled with `-O1,sparsify-moe`, every experts module must
become one `experts` op (sparse dispatch), and plain onnxruntime on
model.onnx must match eager PyTorch (the library's eager experts loop) within
1e-4 at two shapes, one so short that some experts receive no token (counted
from the routing the experts modules receive).

An experts module the capture cannot describe (t2c.frontends.hf_experts) is left
to the library and traced as plain ops; NOT_CAPTURED names the families where
that is expected, with why. They are held to the same numerics, and to capturing
exactly the modules the capture describes; a family that starts or stops being
captured fails until the list says so. `python tests/models/test_moe_families.py`
prints the table the README quotes.
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
import os
import pkgutil
import re
import sys
import tempfile
import time

import pytest
import torch
from torch import nn

import onnxruntime as ort
import transformers

import onnx  # noqa: E402

import t2c  # noqa: E402
from t2c.backends import get_backend  # noqa: E402
from t2c.frontends.hf_experts import captured_experts  # noqa: E402

HF_TEST_CONFIGS = os.path.join(os.path.dirname(__file__), "..", "data", "hf-test-configs")  # a copy of ../shared's, in the repo for CI
PIPELINE = "-O1,sparsify-moe"
TOL = 1e-4
SEED = 0
TRACE_SHAPE = (2, 8)  # batch and seq > 1, so torch.export keeps both dynamic
LONG_SHAPE = (2, 13)
MAX_HIDDEN, MIN_EXPERTS, LAYERS = 256, 8, 2


# Families whose experts modules the capture cannot describe: they compile with the experts as plain ops.
NOT_CAPTURED: dict[str, str] = {
    "inkling2": "softcapped SwiGLU (cap * tanh(gate / cap) * sigmoid(gate) * cap' * tanh(up / cap')): the experts op has no softcap",
}


# --- finding the families ---------------------------------------------------------------------------------------


@functools.cache
def _experts_init_code():
    """The code of the `__init__` that `use_experts_implementation` installs on every class it decorates."""
    from transformers.integrations.moe import use_experts_implementation

    class Probe(nn.Module):
        def __init__(self, config):
            super().__init__()

        def forward(self, *args):
            return None

    return use_experts_implementation(Probe).__init__.__code__


def is_experts_class(cls) -> bool:
    return inspect.isclass(cls) and getattr(cls.__init__, "__code__", None) is _experts_init_code()


OTHER_MODALITIES = re.compile(r"pixel|image|video|audio|speech|input_features|vision")


def is_text_causal_lm(cls) -> bool:
    """A `<X>ForCausalLM` that takes input_ids and no input of another modality."""
    if not (inspect.isclass(cls) and cls.__name__.endswith("ForCausalLM") and issubclass(cls, nn.Module)):
        return False
    params = inspect.signature(cls.forward).parameters
    return "input_ids" in params and not any(OTHER_MODALITIES.search(p) for p in params)


@functools.cache
def moe_families() -> dict[str, type]:
    """{family: its text-only causal LM class} for every family whose experts use the decorator.

    Only modeling files that name the decorator are imported (the same
    module-level test transformers' own `_can_set_experts_implementation`
    makes); the decorated classes are then recognised by their `__init__`.
    """
    import transformers.models as models

    found = {}
    for family in sorted(m.name for m in pkgutil.iter_modules(models.__path__) if m.ispkg):
        folder = os.path.join(models.__path__[0], family)
        for sub in sorted(m.name for m in pkgutil.iter_modules([folder]) if m.name.startswith("modeling_")):
            with open(os.path.join(folder, sub + ".py"), encoding="utf-8") as f:
                if "use_experts_implementation" not in f.read():
                    continue
            module = importlib.import_module(f"transformers.models.{family}.{sub}")
            own = [c for c in vars(module).values() if inspect.isclass(c) and c.__module__ == module.__name__]
            lms = [c for c in own if is_text_causal_lm(c)]
            if any(is_experts_class(c) for c in own) and lms:
                found[family] = lms[0]
    return found


def experts_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in model.named_modules() if is_experts_class(type(m))]


# --- a small config --------------------------------------------------------------------------------------------

EXPERT_COUNT = r"^(num|n)_(local_|routed_)?experts$|^moe_num_experts$"
TOP_K = r"experts_per_tok(en)?$|^moe_topk$|^top_k_experts$"
HIDDEN = r"(^|_)hidden_size$|^d_model$"
KV_HEADS = r"(key_value|key)_heads$"
HEADS = 4
# (field-name pattern, small value) for the config's int fields; the first pattern that matches decides.
# The layer count is not here: _layer_window sets it together with the per-layer fields.
SIZES = [
    (EXPERT_COUNT, MIN_EXPERTS),
    (TOP_K, 2),
    (HIDDEN, 64),
    (r"intermediate_size$", 32),
    (KV_HEADS, 2),
    (r"heads$", HEADS),
    (r"head_dim$", 16),
    (r"lora_rank$|lowrank$", 16),
    (r"^(n_group|num_expert_group)$", 2),
    (r"^topk_group$", 1),
    (r"vocab_size", 128),
    (r"^max_position_embeddings$", 512),
    (r"_iters$|_iterations$", 2),  # a loop count (deepseek_v4's Sinkhorn): every iteration is unrolled in the trace
]
LAYER_INDEX_LIST = re.compile(r"layers?(_ids|_indices)?$")  # a list of layer indices (mlp_only_layers, attn_layer_indices)


def _int_fields(config_cls) -> dict[str, int]:
    """The config's int-valued init fields and their defaults."""
    params = inspect.signature(config_cls.__init__).parameters
    return {n: p.default for n, p in params.items() if isinstance(p.default, int) and not isinstance(p.default, bool)}


def _load_test_config(family: str, config_cls) -> dict | None:
    path = os.path.join(HF_TEST_CONFIGS, f"{family}.json")
    if not os.path.exists(path):
        return None
    special = {"Infinity": float("inf"), "-Infinity": float("-inf"), "NaN": float("nan")}
    with open(path, encoding="utf-8") as f:
        entry = json.load(f, object_hook=lambda o: special.get(o["__float__"], o) if set(o) == {"__float__"} else o)
    config = entry["config"]
    return config if config.get("model_type") == config_cls.model_type else None


def _size_overrides(config_cls, base: dict, from_tests: bool) -> dict:
    """Shrink every size field (defaults); a test config keeps its sizes, only made to meet the limits."""
    out = {}
    fields = {**_int_fields(config_cls), **{k: v for k, v in base.items() if isinstance(v, int) and not isinstance(v, bool)}}
    for name, default in fields.items():
        value = base.get(name, default)
        pattern, small = next(((p, s) for p, s in SIZES if re.search(p, name)), (None, None))
        if pattern is None or not isinstance(value, int):
            continue
        if pattern == KV_HEADS and fields.get(name.replace("key_value", "attention")) == value:
            small = HEADS  # as many KV heads as heads (multi-head latent attention needs it)
        if pattern == EXPERT_COUNT:
            if value < MIN_EXPERTS or value > 4 * MIN_EXPERTS or (not from_tests and value != MIN_EXPERTS):
                out[name] = MIN_EXPERTS  # a test config's 128 experts only cost time
        elif value > small and (not from_tests or pattern == TOP_K or (pattern == HIDDEN and value > MAX_HIDDEN)):
            out[name] = small
    return out


def _token_id_overrides(config: dict, vocab: int) -> dict:
    """Special token ids of the full-size vocabulary would index past the small one."""
    out = {}
    for name, value in config.items():
        if name.endswith("token_id") and isinstance(value, int) and value >= vocab:
            out[name] = vocab - 1
        elif name.endswith("token_id") and isinstance(value, list) and any(isinstance(v, int) and v >= vocab for v in value):
            out[name] = [min(v, vocab - 1) for v in value]
    return out


def _moe_layer_indices(model: nn.Module) -> list[int]:
    found = set()
    for name, _ in experts_modules(model):
        m = re.search(r"layers\.(\d+)\.", name)
        found.add(int(m.group(1)) if m else -1)
    return sorted(found)


def _layer_window(config_cls, params: dict, lm_cls) -> dict:
    """num_hidden_layers = 2, per-layer fields cut to the 2-layer window that holds the first MoE layer.

    The window starts one layer before it when there is one, so a family with
    dense layers keeps one of each.
    """
    full = config_cls.from_dict(dict(params))
    depth = getattr(full, "num_hidden_layers", None)
    if not isinstance(depth, int) or depth <= LAYERS:
        return {}
    try:
        with torch.device("meta"):
            moe = _moe_layer_indices(lm_cls(full))
    except Exception:  # noqa: BLE001 - the defaults do not build at full depth (qwen4_exp's indexer has no sizes)
        return {"num_hidden_layers": LAYERS}
    start = max(0, min(moe[0] - 1, depth - LAYERS)) if moe else 0
    window = range(start, start + LAYERS)
    out = {"num_hidden_layers": LAYERS}
    defaults = _int_fields(config_cls)
    for name, value in full.to_dict().items():
        if re.fullmatch(r"num_\w+_layers", name) and name in defaults and name != "num_hidden_layers" and isinstance(value, int):
            out[name] = min(defaults[name], LAYERS - 1)  # a count of special layers (shared-KV, dense) in the full depth
        elif isinstance(value, list) and len(value) == depth:
            out[name] = value[start:start + LAYERS]
        elif isinstance(value, list) and LAYER_INDEX_LIST.search(name) and all(isinstance(v, int) for v in value):
            out[name] = [v - start for v in value if v in window]
        elif isinstance(value, dict) and value and all(str(k).isdigit() for k in value):  # per-layer settings keyed by index
            out[name] = {str(int(k) - start): v for k, v in value.items() if int(k) in window}
    return out


def small_config(family: str, lm_cls):
    """The family's small config (module docstring) and where it came from."""
    config_cls = lm_cls.config_class
    tests = _load_test_config(family, config_cls)
    params = dict(tests or {})
    params.update(_size_overrides(config_cls, params, tests is not None))
    vocab = params.get("vocab_size", _int_fields(config_cls).get("vocab_size"))
    params.update(_token_id_overrides({**config_cls().to_dict(), **params}, vocab))
    params.update(_layer_window(config_cls, params, lm_cls))
    return config_cls.from_dict(params), "hf-test-config" if tests is not None else "defaults"


@functools.cache
def build(family: str):
    """(model, source) for `family`: small config, fixed seed, eval mode, the library's eager experts loop."""
    lm_cls = moe_families()[family]
    config, source = small_config(family, lm_cls)
    config.use_cache = False
    torch.manual_seed(SEED)
    model = lm_cls(config).eval()
    # Every weight random, same seed: some inits leave experts or biases at zero, and the library's
    # 0.02 keeps activations too small to show an error. Norm scales stay near 1.
    gen = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dtype.is_floating_point:
                scale = torch.randn(p.shape, generator=gen) * 0.1
                p.copy_(scale + 1 if p.dim() == 1 and name.endswith("weight") else scale)
    if hasattr(model, "set_experts_implementation"):
        model.set_experts_implementation("eager")  # the reference: the library's own loop
    return model, source


# --- the check -------------------------------------------------------------------------------------------------


class RoutingCounter:
    """Counts, per experts module, which experts the routing handed tokens to."""

    def __init__(self, model: nn.Module):
        self.used: dict[str, set[int]] = {}
        self.handles = [m.register_forward_pre_hook(self._hook(name), with_kwargs=True) for name, m in experts_modules(model)]

    def _hook(self, name):
        def hook(module, args, kwargs):
            index = args[1] if len(args) > 1 else next(kwargs[k] for k in ("top_k_index", "router_indices", "selected_experts") if k in kwargs)
            self.used.setdefault(name, set()).update(int(i) for i in index.flatten().tolist())
        return hook

    def close(self):
        for h in self.handles:
            h.remove()


def short_shape(model: nn.Module) -> tuple[int, int]:
    """(1, seq) with seq * top-k < the fewest experts, so some expert is idle whatever the routing."""
    n_experts = min(m.num_experts if hasattr(m, "num_experts") else m.down_proj.shape[0] for _, m in experts_modules(model))
    k = next((v for n, v in model.config.to_dict().items() if re.search(TOP_K, n) and isinstance(v, int)), 2)
    return 1, max(2, (n_experts - 1) // max(k, 1))


def _artifacts(model, ids, out_dir: str, static: bool) -> tuple[dict[str, str], object]:
    """Compile once (standard flavor, validated by t2c), lower the same final IR for the ort flavor.

    Returns ({flavor: model.onnx path}, the final IR).
    """
    compiled = t2c.compile(model, {"input_ids": ids}, passes=PIPELINE, out=out_dir, static=static)
    assert compiled.ok is True
    backend = get_backend("onnx")
    options = backend.make_options({"flavor": "ort"})
    backend.save(backend.lower(compiled.graph, options), out_dir + "-ort", options)
    return {flavor: os.path.join(folder, "model.onnx") for flavor, folder in (("standard", out_dir), ("ort", out_dir + "-ort"))}, compiled.graph


def _session(path: str):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1  # tiny models: more threads only contend
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def check_family(family: str, out_dir: str) -> dict:
    """Build, compile, check both flavors at both shapes; returns facts for the table. Raises on any failure."""
    model, source = build(family)
    modules = experts_modules(model)
    config = model.config
    assert modules, f"{family}: the small config has no MoE layer"
    assert config.num_hidden_layers == LAYERS, f"{family}: {config.num_hidden_layers} layers"
    assert config.hidden_size <= MAX_HIDDEN, f"{family}: hidden {config.hidden_size}"
    n_experts = [m.down_proj.shape[0] for _, m in modules]
    assert min(n_experts) >= MIN_EXPERTS, f"{family}: {n_experts} experts"

    vocab = config.vocab_size
    ids = torch.randint(0, vocab, TRACE_SHAPE, generator=torch.Generator().manual_seed(SEED))
    with captured_experts(model) as status:  # what the frontend will capture (it decides again while tracing)
        captured = sum(v == "captured" for v in status.values())
    if family in NOT_CAPTURED:
        assert captured < len(modules), f"{family}: every experts module is captured now: remove it from NOT_CAPTURED"
    else:
        assert captured == len(modules), f"{family}: {len(modules) - captured} experts modules not captured: {status}"
    paths, graph = _artifacts(model, ids, out_dir, static=False)
    experts_ops = [n for n in graph.nodes if n.op == "experts"]
    assert len(experts_ops) == captured, f"{family}: {len(experts_ops)} experts ops for {captured} captured experts modules"
    assert all(n.attrs.dispatch == "sparse" for n in experts_ops)
    ort_moe = sum(n.op_type == "MoE" for n in onnx.load(paths["ort"], load_external_data=False).graph.node)

    sessions = {flavor: _session(path) for flavor, path in paths.items()}
    static = any(isinstance(d, int) for d in sessions["standard"].get_inputs()[0].shape)
    short = short_shape(model)
    idle = None
    # torch.export may have to fix a dim (a loop over sequence blocks, say): then the traced shape is the
    # second shape, and the short one gets an artifact of its own.
    for shape in (short, TRACE_SHAPE if static else LONG_SHAPE):
        ids = torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(SEED + 1))
        if static and shape == short:
            sessions_traced = sessions
            sessions = {flavor: _session(path) for flavor, path in _artifacts(model, ids, f"{out_dir}-short", static=True)[0].items()}
        elif static:
            sessions = sessions_traced
        counter = RoutingCounter(model)
        try:
            with torch.no_grad():
                want = model(input_ids=ids).logits
        finally:
            counter.close()
        if shape == short:
            idle = {name: sorted(set(range(m.down_proj.shape[0])) - counter.used.get(name, set())) for name, m in modules}
            assert all(idle.values()), f"{family}: every expert got a token at {shape}: {idle}"
        for flavor, session in sessions.items():
            (got,) = session.run(["logits"], {"input_ids": ids.numpy()})
            err = (torch.from_numpy(got) - want).abs().max().item()
            assert err <= TOL, f"{family} ({flavor} flavor) logits at {shape}: max abs error {err:.3g} > {TOL}"
    return {"source": source, "experts": n_experts[0], "moe_layers": len(modules), "captured": captured, "short": short,
            "idle": min(len(v) for v in idle.values()), "static": static, "ort_moe": ort_moe}


# --- the tests -------------------------------------------------------------------------------------------------


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: a second thread only adds contention
    yield
    torch.set_num_threads(before)


def test_families_are_found():
    families = moe_families()
    assert len(families) >= 10, sorted(families)  # transformers 5.x: dozens; a broken enumeration finds none
    assert "mixtral" in families and "qwen3_moe" in families
    stale = set(NOT_CAPTURED) - set(families)
    assert not stale, f"NOT_CAPTURED names families the installed transformers does not have: {sorted(stale)}"


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(moe_families()))
def test_family_compiles_and_matches_eager(family, tmp_path):
    check_family(family, str(tmp_path / family))


if __name__ == "__main__":  # the README's table
    torch.set_num_threads(1)
    selected = sys.argv[1].split(",") if len(sys.argv) > 1 else sorted(moe_families())
    for fam in selected:
        t0 = time.perf_counter()
        try:
            result = f"pass  {check_family(fam, tempfile.mkdtemp(prefix=f'moe-{fam}-'))}"
        except Exception as e:  # noqa: BLE001
            result = f"FAIL  {type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
        print(f"{fam:18s} {time.perf_counter() - t0:5.1f}s {result}", flush=True)
