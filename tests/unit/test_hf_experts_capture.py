"""Every experts class that transformers decorates with `use_experts_implementation`, captured at its boundary.

The classes are found in the installed library (modeling files that use the
decorator, then the classes whose instances carry the decorator's flags), built
standalone from a permissive config, and given random weights. For each one the
frontend's description (flags, act_fn type, gate attributes) must pass the probe
and `t2c::experts` must reproduce the library's eager loop, or the class must be
one t2c knowingly leaves to the library (a post-expert norm, a softcapped gate).
"""

from __future__ import annotations

import importlib
import os
import pkgutil

import pytest
import torch

import transformers

from t2c.frontends.hf_experts import _captured_forward, _probe_agrees, describe, is_experts_module  # noqa: E402

# Left to the library on purpose: their gates are not one of the experts op's (the module
# docstring of t2c/ir/opdefs/experts.py): a norm after each expert, a tanh-softcapped SwiGLU.
NOT_DESCRIBED = {"MuseSparkExperts": "post-expert norm", "Inkling2Experts": "softcapped SwiGLU"}


class PermissiveConfig:
    """Answers any config field an experts class reads, by what its name says; small sizes."""

    _experts_implementation = "eager"

    def __getattr__(self, key: str):
        k = key.lower()
        if key.startswith("__"):
            raise AttributeError(key)
        if "latent" in k:  # optional projections around the experts (nemotron_h): absent
            return None
        for words, value in (
            (("per_tok", "topk", "top_k"), 2), (("shared",), 1), (("experts",), 8), (("hidden_size",), 24),
            (("intermediate",), 16), (("act",), "silu"), (("limit",), 2.0), (("alpha",), 1.702),
            (("softcap",), 3.0), (("eps",), 1e-6), (("bias",), False),
        ):
            if any(w in k for w in words):
                return value
        raise AttributeError(key)


def modeling_classes(mentions: str | None = None):
    """Every class defined in the installed transformers' modeling files (those whose text has
    `mentions`, when given); a family whose optional dependencies are missing is passed over."""
    root = os.path.dirname(transformers.models.__file__)
    for info in pkgutil.iter_modules([root]):
        folder = os.path.join(root, info.name)
        for fname in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            if not (fname.startswith("modeling_") and fname.endswith(".py")):
                continue
            if mentions is not None:
                with open(os.path.join(folder, fname), encoding="utf-8") as f:
                    if mentions not in f.read():
                        continue
            try:
                module = importlib.import_module(f"transformers.models.{info.name}.{fname[:-3]}")
            except Exception:  # noqa: BLE001 - a family whose optional dependencies are missing
                continue
            yield from (obj for obj in vars(module).values() if isinstance(obj, type) and obj.__module__ == module.__name__)


def decorated_classes() -> list[type]:
    """The experts classes of the installed transformers (found by the decorator's use, confirmed by its flags)."""
    return [cls for cls in modeling_classes("use_experts_implementation")
            if "has_gate" in getattr(getattr(cls.__init__, "__code__", None), "co_freevars", ())]


CLASSES = decorated_classes()


def test_the_library_has_decorated_experts():
    assert len(CLASSES) >= 30  # transformers 5.x: 60+; a drop means the enumeration broke


@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_experts_class_is_captured_exactly(cls):
    torch.manual_seed(0)
    module = cls(PermissiveConfig()).eval()
    with torch.no_grad():
        for name, p in module.named_parameters():
            p.copy_(torch.randn(p.shape) * (0.1 if "norm" in name else 1.0))
    assert is_experts_module(module)
    attrs = describe(module)
    if cls.__name__ in NOT_DESCRIBED:
        assert attrs is None or not _probe_agrees(module, attrs), f"{cls.__name__} is now captured: update NOT_DESCRIBED"
        return
    assert attrs is not None, f"{cls.__name__} is not described"
    assert _probe_agrees(module, attrs)
    up = module.gate_up_proj if module.has_gate else module.up_proj
    hidden = up.shape[1] if module.is_transposed else up.shape[2]
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(13, hidden, generator=gen)
    idx = torch.stack([torch.randperm(up.shape[0], generator=gen)[:2] for _ in range(13)])
    w = torch.rand(13, 2, generator=gen)
    with torch.no_grad():
        want = module(x, idx, w)
        got = _captured_forward(module, attrs)(x, idx, w)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
