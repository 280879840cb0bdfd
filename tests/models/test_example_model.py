"""The tiny MoE example model: deterministic, exportable with dynamic dims, saveable."""

from __future__ import annotations

import importlib
import pathlib
import subprocess
import sys

import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def example():
    # Imported as `examples.tiny_moe_transformer`, the name its __main__ pickles classes under.
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("examples.tiny_moe_transformer")


@pytest.fixture(scope="module")
def built(example):
    return example.build()


@pytest.fixture(scope="module")
def exported(built):
    model, example_inputs = built
    dynamic = ({0: torch.export.Dim("batch", max=64), 1: torch.export.Dim("seq", max=4096)},)
    return torch.export.export(model, example_inputs, dynamic_shapes=dynamic, strict=False)


def test_build_is_deterministic(example):
    m1, (ids1,) = example.build()
    m2, (ids2,) = example.build()
    assert torch.equal(ids1, ids2)
    assert ids1.shape == (2, 16) and ids1.dtype == torch.int64
    s1, s2 = m1.state_dict(), m2.state_dict()
    assert s1.keys() == s2.keys()
    assert all(torch.equal(s1[k], s2[k]) for k in s1)


def test_forward_shape(built):
    model, (ids,) = built
    with torch.no_grad():
        logits = model(ids)
    assert logits.shape == (2, 16, 256)
    assert torch.isfinite(logits).all()


def test_structure(built):
    model, _ = built
    assert len(model.layers) == 2
    assert type(model.layers[0].mlp).__name__ == "SwiGLU"
    assert type(model.layers[1].mlp).__name__ == "MoE"
    assert len(model.layers[1].mlp.experts) == 4


def test_moe_routes_top2(example, built):
    # The combine matrix has exactly two non-zeros per token, summing to one.
    model, (ids,) = built
    moe = model.layers[1].mlp
    h = torch.randn(10, example.HIDDEN)
    probs = torch.softmax(moe.router(h), dim=-1)
    w, idx = torch.topk(probs, 2, dim=-1)
    combine = torch.zeros_like(probs).scatter(-1, idx, w / w.sum(-1, keepdim=True))
    assert ((combine != 0).sum(-1) == 2).all()
    torch.testing.assert_close(combine.sum(-1), torch.ones(10))


def test_exports_with_dynamic_dims(exported):
    shape = exported.graph_module.graph.find_nodes(op="placeholder")[-1].meta["val"].shape
    assert all(isinstance(d, torch.SymInt) for d in shape)
    # Dense MoE: nothing data-dependent may appear in the traced graph.
    targets = {str(n.target) for n in exported.graph.nodes if n.op == "call_function"}
    assert not any("nonzero" in t or "index_put" in t for t in targets)
    assert "aten.scaled_dot_product_attention.default" in targets


@pytest.mark.parametrize("shape", [(3, 40), (1, 1), (2, 16)])
def test_exported_matches_eager(built, exported, shape):
    model, _ = built
    ids = torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids)
        got = exported.module()(ids)
    assert got.shape == (*shape, 256)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_saved_file_round_trip(tmp_path, built):
    out = tmp_path / "sub" / "tiny_moe.pt"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "tiny_moe_transformer.py"), "--out", str(out)],
        capture_output=True, text=True, cwd=tmp_path, check=True,
    )
    assert str(out) in proc.stdout and len(proc.stdout.strip().splitlines()) == 1
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    saved = torch.load(out, weights_only=False)
    assert set(saved) == {"model", "example_inputs"}
    ids = saved["example_inputs"]["input_ids"]
    model, (want_ids,) = built
    assert torch.equal(ids, want_ids)
    with torch.no_grad():
        torch.testing.assert_close(saved["model"](ids), model(ids), atol=0, rtol=0)
