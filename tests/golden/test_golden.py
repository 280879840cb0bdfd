"""Golden tests: `<pass>/<case>.before.t2c` through the pass must print as `<case>.after.t2c`.

See README.md for the layout, the `# pipeline:` line and `T2C_UPDATE_GOLDEN=1`.
Beyond the text, every case checks that both graphs verify and that the
interpreter gives identical outputs before and after (params declared in the
text get random data; symbolic dims are bound to two different sizes).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from t2c.ir import Graph, parse_graph, print_graph, run_graph, verify
from t2c.passes import Pipeline, collect_near_misses

HERE = Path(__file__).parent
CLEANUP = {"dce", "cse", "fold-shapes"}
CASES = sorted(HERE.glob("*/*.before.t2c"))
UPDATE = os.environ.get("T2C_UPDATE_GOLDEN") == "1"
PIPELINE_LINE = "# pipeline:"
NEAR_MISS_LINE = "# near-miss:"
# Passes with no rewrite rules (nothing to refuse): their negative cases are pinned by the text alone.
RULELESS = {"cse", "dce", "window", "sparsify-moe"}


def pipeline_for(path: Path, text: str) -> Pipeline:
    """The `# pipeline: ...` first line if there is one, else the pass named by the folder."""
    first = text.splitlines()[0] if text else ""
    if first.startswith(PIPELINE_LINE):
        return Pipeline.parse(first[len(PIPELINE_LINE) :])
    return Pipeline.parse(path.parent.name)


def random_tensor(shape: tuple[int, ...], dtype: torch.dtype, gen: torch.Generator) -> torch.Tensor:
    if dtype.is_floating_point:
        return torch.randn(shape, generator=gen).to(dtype)
    if dtype == torch.bool:
        return torch.randint(0, 2, shape, generator=gen).bool()
    # small non-negative ints, so integer inputs are also valid indices
    return torch.randint(0, 3, shape, generator=gen).to(dtype)


def fill_params(g: Graph, gen: torch.Generator) -> None:
    for name, v in g.param_values.items():
        if name not in g.params:
            g.params[name] = random_tensor(v.type.concrete_shape({}), v.type.dtype.torch, gen)


def random_inputs(g: Graph, base: int, gen: torch.Generator) -> list[torch.Tensor]:
    bindings = {s: base + 2 * i for i, s in enumerate(g.symbols())}
    return [random_tensor(v.type.concrete_shape(bindings), v.type.dtype.torch, gen) for v in g.inputs]


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        return torch.equal(a.isnan(), b.isnan()) and torch.equal(a.nan_to_num(0.0), b.nan_to_num(0.0))
    return torch.equal(a, b)


@pytest.mark.parametrize("before", CASES, ids=[f"{p.parent.name}/{p.name.removesuffix('.before.t2c')}" for p in CASES])
def test_golden(before: Path) -> None:
    after = before.with_name(before.name.replace(".before.t2c", ".after.t2c"))
    text = before.read_text()
    pipeline = pipeline_for(before, text)
    graph = parse_graph(text)
    verify(graph)

    gen = torch.Generator().manual_seed(0)
    fill_params(graph, gen)
    inputs = [random_inputs(graph, base, gen) for base in (2, 5)]
    expected_outputs = [run_graph(graph, xs) for xs in inputs]

    with collect_near_misses() as misses:
        result, _ = pipeline.run(graph, verify_each=True)
    got = print_graph(result)

    if UPDATE:
        after.write_text(got)
    assert after.exists(), f"{after.name} is missing; run with T2C_UPDATE_GOLDEN=1 to write it, then check it by eye"
    expected = parse_graph(after.read_text())
    verify(expected)
    assert got == print_graph(expected)

    # A rule that refuses must refuse for the stated reason: each `# near-miss:` line is one
    # `t2c opt --debug-rewrites` line, and a negative case of a rule-based pass must state one.
    pinned = [line[len(NEAR_MISS_LINE):].strip() for line in text.splitlines() if line.startswith(NEAR_MISS_LINE)]
    for line in pinned:
        assert line in misses, f"expected near-miss {line!r}; got {misses}"
    negative = print_graph(parse_graph(text)) == got
    if negative and not all(p.name in RULELESS for p in pipeline.passes):
        assert pinned, f"a negative case must pin why its rule refused ({NEAR_MISS_LINE} ...); the near-misses were {misses}"

    # Cleanup passes must not change a bit; other exact passes (lifting, fusion) compute the
    # same function in another order, so agree to float tolerance; approximate passes change
    # the function on purpose and are judged by the numerics tests instead.
    if not all(p.exact for p in pipeline.passes):
        return
    bitwise = all(p.name in CLEANUP for p in pipeline.passes)
    for xs, want in zip(inputs, expected_outputs):
        outs = run_graph(result, xs)
        for name, t in want.items():
            if bitwise:
                assert same(outs[name], t), f"output {name!r} changed"
            else:
                assert torch.allclose(outs[name], t, atol=1e-5, rtol=1e-5, equal_nan=True), f"output {name!r} changed"
