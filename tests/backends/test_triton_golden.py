"""Every golden IR graph (tests/golden/*/*.t2c, before and after each pass) through the Triton backend vs the interpreter.

The golden graphs are small and varied (every pass's input and output: unfused norms and
attention, MoE loops with data-dependent sizes, int8, casts, dead code): a broad check that
model.py's code generation, fusion and generic path compute what the IR means. Params and
inputs are random (integers in [0, 4)), dynamic dims batch = 2 and every other symbol 8; the
tolerance is validation's for the output's dtype.
"""

from __future__ import annotations

import glob
import os

import pytest
import torch

from t2c.backends.triton import lower, save
from t2c.backends.triton.runtime import load_runner
from t2c.ir import run_graph
from t2c.ir.core import SymDim, eval_dim
from t2c.ir.parser import parse_graph

GOLDEN = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "golden")
GRAPHS = sorted(os.path.relpath(p, GOLDEN) for p in glob.glob(os.path.join(GOLDEN, "*", "*.t2c")))
TOLERANCE = {torch.float32: (1e-4, 1e-4), torch.float16: (1e-2, 1.6e-2), torch.bfloat16: (1e-2, 1.6e-2)}


def _random(shape, dtype, gen):
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype)
    return torch.randint(0, 4, shape, generator=gen).to(dtype)


def _instantiate(text: str):
    graph = parse_graph(text)
    gen = torch.Generator().manual_seed(0)
    for name, v in graph.param_values.items():
        graph.params[name] = _random([d if isinstance(d, int) else 4 for d in v.type.shape], v.type.dtype.torch, gen)
    sizes: dict[str, int] = {}
    inputs = {}
    for v in graph.inputs:
        for d in v.type.shape:
            if isinstance(d, SymDim):
                for s in sorted(d.symbols):
                    sizes.setdefault(s, 2 if s == "batch" else 8)
        inputs[v.name] = _random([eval_dim(d, sizes) for d in v.type.shape], v.type.dtype.torch, gen)
    return graph, inputs


def test_the_golden_graphs_are_found():
    assert len(GRAPHS) > 100


@pytest.mark.parametrize("name", GRAPHS)
def test_golden_graph_matches_the_interpreter(name, tmp_path):
    with open(os.path.join(GOLDEN, name), encoding="utf-8") as f:
        graph, inputs = _instantiate(f.read())
    want = run_graph(graph, inputs)
    save(lower(graph), str(tmp_path))
    got = load_runner(str(tmp_path))(**inputs)
    assert sorted(got) == sorted(want)
    for out, w in want.items():
        assert got[out].dtype == w.dtype and got[out].shape == w.shape, out
        if w.is_floating_point():
            atol, rtol = TOLERANCE.get(w.dtype, (1e-4, 1e-4))
            torch.testing.assert_close(got[out], w, atol=atol, rtol=rtol, equal_nan=True)
        else:
            assert torch.equal(got[out], w), out
