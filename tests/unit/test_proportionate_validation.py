"""Exact passes are compared with the IR once per run of them, and one by one only when that fails.

compiler._run_passes: a compile compares the IR after every approximate pass and after the last
of each run of exact passes; a failing comparison runs that stretch again from the graph before
it, so the pass that changed the outputs is still the one named. `t2c check` (per_pass) compares
after every pass.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import pytest

import t2c
from t2c.errors import ValidationError
from t2c.passes import Pass, PassResult, register_pass
from t2c.passes import manager

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "examples"))
import zoo  # noqa: E402


@pytest.fixture
def breaking_pass():
    """An exact pass (by its claim) that doubles the first weight matrix: it changes the outputs."""

    @register_pass("test-break-exact")
    @dataclass(frozen=True)
    class _Break(Pass):
        exact = True

        def run(self, graph):
            name = next(n for n, t in graph.params.items() if t.dim() == 2 and t.is_floating_point())
            graph.params[name] = graph.params[name] * 2
            return PassResult(graph, True, {})

    yield "test-break-exact"
    manager._PASSES.pop("test-break-exact", None)


def _llama():
    model, examples = zoo.build("llama", batch=1, seq=8)
    return model, examples


def test_a_run_of_exact_passes_is_compared_once(tmp_path):
    model, examples = _llama()
    compiled = t2c.compile(model, examples, passes="cse,fuse-norm,dce", out=str(tmp_path / "o"))
    records = compiled.report["passes"]
    assert [("vs_eager" in r) for r in records] == [False, False, True]
    assert records[-1]["covers"] == ["cse", "fuse-norm", "dce"]


def test_the_exact_pass_that_broke_numerics_is_still_named(tmp_path, breaking_pass):
    model, examples = _llama()
    with pytest.raises(ValidationError) as err:
        t2c.compile(model, examples, passes=f"cse,{breaking_pass},dce", out=str(tmp_path / "o"))
    assert str(err.value).startswith(f"exact pass '{breaking_pass}' changed output 'logits'")
    records = err.value.report["passes"]  # the stretch was run again: one comparison per pass
    ok = [all(o["ok"] for c in r["vs_previous"] for o in c["outputs"]) for r in records]
    assert ok == [True, False, True] and "covers" not in records[-1]
    assert not (tmp_path / "o").exists()


def test_an_approximate_pass_is_compared_on_its_own(tmp_path):
    model, examples = zoo.build("mistral", batch=1, seq=8)
    compiled = t2c.compile(model, examples, passes="cse,lift-attention,window{size=4},dce", out=str(tmp_path / "o"), max_drift=10.0)
    records = compiled.report["passes"]
    # lift-attention is compared before the approximate window (its drift has a baseline), window alone, dce last
    assert [("vs_eager" in r) for r in records] == [False, True, True, True]
    assert records[1]["covers"] == ["cse", "lift-attention"] and "layers" in records[2]
