"""t2c/kernels/moe.py against the IR ops' references (`experts`, `qexperts`), run by the Triton
interpreter (tests/conftest.py sets TRITON_INTERPRET=1), and the Triton backend end to end on MoE models.

Rule (FlashAttention's, as tests/backends/test_triton_norm_kernel.py): the kernel's max error against
the op's reference computed exactly (float64, from the same inputs) is at most twice the error of the
reference run by PyTorch on the inputs as they are (in the kernel's dtype), plus a floor of float32
rounding noise. The exact reference is float64 rather than float32 because the op holds GEMMs: in
float32 both implementations round their dot products, in different orders.
w8a8 is integer arithmetic between two per-token quantisations; its reference is the float32 one
(the kernel computes the same integers and scales in the same order), and a one-step flip of a
quantised activation (a 1-ulp difference in the activation before the second quantisation) is the
only difference allowed.

Shapes are tiny: T not a multiple of the 16-row block, H and I not powers of two; ids include
out-of-range values (-1, E) and duplicate choices of one expert by one token.
"""

from __future__ import annotations

import functools
import json
import time

import pytest
import torch

import t2c
import zoo
from t2c.compiler import eager_outputs
from t2c.errors import VerifyError
from t2c.ir.opdefs.experts import ACTIVATIONS, ExpertsAttrs, experts_reference
from t2c.ir.opdefs.quant import QExpertsAttrs, dequantize, qexperts_reference, quantize_weight
from t2c.kernels import moe

DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _routing(t, k, e, seed=0, bad=True, dup=True):
    """[T, K] ids with out-of-range entries (-1 and E) and duplicate choices, [T, K] weights."""
    g = _gen(seed)
    idx = torch.randint(0, e, (t, k), generator=g)
    if bad:
        idx[1, 0] = -1
        idx[3, k - 1] = e
    if dup and k > 1:
        idx[2, :] = idx[2, 0]
    w = torch.rand(t, k, generator=g) + 0.1
    w[4, 0] = -0.5  # a negative weight: nothing in the op forbids it
    return idx, w


def _weights(e, hidden, inter, gated, layout, bias, dtype, seed=1):
    g = _gen(seed)
    u = 2 * inter if gated else inter
    w_up = torch.randn(e, u, hidden, generator=g) / hidden ** 0.5
    w_down = torch.randn(e, hidden, inter, generator=g) / inter ** 0.5
    if layout == "in_out":
        w_up, w_down = w_up.transpose(1, 2).contiguous(), w_down.transpose(1, 2).contiguous()
    b_up = torch.randn(e, u, generator=g) * 0.5 if bias else None
    b_down = torch.randn(e, hidden, generator=g) * 0.5 if bias else None
    cast = lambda t: None if t is None else t.to(dtype)  # noqa: E731
    return cast(w_up), cast(w_down), cast(b_up), cast(b_down)


def _double(t):
    return None if t is None else t.double()


def assert_2x_pytorch(got, exact, low):
    assert got.dtype == low.dtype and got.shape == low.shape
    err = (got.double() - exact).abs().max().item()
    err_torch = (low.double() - exact).abs().max().item()
    floor = 2 * torch.finfo(torch.float32).eps * max(1.0, exact.abs().max().item())
    assert err <= 2 * err_torch + floor, f"kernel error {err:.3g}, PyTorch's {err_torch:.3g} (floor {floor:.3g})"


def check_experts(t, hidden, inter, e, k, dtype, attrs, bias=False, weights_dtype=None, seed=0, **kw):
    idx, tw = _routing(t, k, e, seed=seed)
    tw = tw.to(weights_dtype or dtype)
    x = (torch.randn(t, hidden, generator=_gen(seed + 7)) * 1.5).to(dtype)
    w_up, w_down, b_up, b_down = _weights(e, hidden, inter, attrs.gated, attrs.layout, bias, dtype, seed + 1)
    got = moe.experts(x, idx, tw, w_up, w_down, b_up, b_down, attrs=attrs, **kw)
    low = experts_reference(x, idx, tw, w_up, w_down, b_up, b_down, attrs)
    exact = experts_reference(*map(_double, (x,)), idx, *map(_double, (tw, w_up, w_down, b_up, b_down)), a=attrs)
    assert_2x_pytorch(got, exact, low)
    return got, low


# experts: activations, gate options, layouts, dtypes ---------------------------------------

@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_every_activation_gated_and_not(activation):
    """Gated and ungated in two different dtypes per activation (each dtype four times in all)."""
    i = ACTIVATIONS.index(activation)
    alpha = 1.702 if activation == "silu" else 1.0
    check_experts(21, 40, 24, 4, 2, DTYPES[i % 3], ExpertsAttrs(activation=activation, alpha=alpha))
    check_experts(19, 36, 20, 4, 2, DTYPES[(i + 1) % 3], ExpertsAttrs(activation=activation, gated=False), bias=True, seed=3)


GATE_CASES = {
    "concat": dict(),
    "interleaved": dict(split="interleaved"),
    "limit": dict(limit=0.4),
    "gpt_oss": dict(split="interleaved", limit=0.4, up_offset=1.0, alpha=1.702),
    "up_offset_concat": dict(up_offset=-0.5),
}


@pytest.mark.parametrize("layout", ["out_in", "in_out"])
@pytest.mark.parametrize("gate", sorted(GATE_CASES))
def test_gate_options_layouts_and_biases(gate, layout):
    """Every gate option in both layouts, the dtype turning with the case (each dtype 3-4 times)."""
    dtype = DTYPES[(sorted(GATE_CASES).index(gate) + (layout == "in_out")) % 3]
    attrs = ExpertsAttrs(layout=layout, **GATE_CASES[gate])
    check_experts(21, 40, 24, 4, 2, dtype, attrs, bias=gate != "concat")


@pytest.mark.parametrize("e", [1, 4, 8])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_expert_and_slot_counts(e, k):
    """E = 1 puts every valid pair in one expert; K = 3 sums three slots a token."""
    check_experts(23, 44, 28, e, k, torch.float16, ExpertsAttrs(), bias=k == 2, seed=e + k)


@pytest.mark.parametrize("dispatch", ["dense", "sparse"])
def test_both_dispatch_values_compute_the_function(dispatch):
    got, _ = check_experts(21, 40, 24, 8, 2, torch.float32, ExpertsAttrs(dispatch=dispatch))
    other = "sparse" if dispatch == "dense" else "dense"
    idx, tw = _routing(21, 2, 8)
    x = (torch.randn(21, 40, generator=_gen(7)) * 1.5)
    w = _weights(8, 40, 24, True, "out_in", False, torch.float32, 1)
    assert torch.equal(got, moe.experts(x, idx, tw, *w, attrs=ExpertsAttrs(dispatch=other)))


def test_fp32_sums_slots_in_the_references_order():
    """float32: y * w per slot, summed into zero in ascending expert order, as index_add_ does:
    with every expert's FFN exact (identity weights, identity activation) the result is bit for bit."""
    t, h, e, k = 17, 24, 4, 3
    idx, tw = _routing(t, k, e, seed=5)
    x = torch.randn(t, h, generator=_gen(3)) * 1e3
    eye = torch.eye(h).expand(e, h, h).contiguous()
    attrs = ExpertsAttrs(activation="identity", gated=False)
    got = moe.experts(x, idx, tw, eye, eye, attrs=attrs)
    assert torch.equal(got, experts_reference(x, idx, tw, eye, eye, a=attrs))


def test_half_inputs_with_float32_routing_weights_and_bigger_blocks():
    check_experts(37, 40, 24, 4, 2, torch.bfloat16, ExpertsAttrs(), weights_dtype=torch.float32)
    check_experts(37, 40, 24, 4, 2, torch.float16, ExpertsAttrs(), weights_dtype=torch.float32, block_m=32)


def test_strided_weights_are_read_through_their_strides():
    idx, tw = _routing(21, 2, 4)
    x = torch.randn(21, 40, generator=_gen(7))
    w_up, w_down, _, _ = _weights(4, 40, 24, True, "out_in", False, torch.float32)
    attrs = ExpertsAttrs(layout="in_out")
    up_t, down_t = w_up.transpose(1, 2), w_down.transpose(1, 2)  # views, not contiguous
    assert not up_t.is_contiguous()
    got = moe.experts(x, idx, tw, up_t, down_t, attrs=attrs)
    exact = experts_reference(x.double(), idx, tw.double(), up_t.double(), down_t.double(), a=attrs)
    assert_2x_pytorch(got, exact, experts_reference(x, idx, tw, up_t, down_t, a=attrs))


def test_no_valid_choice_and_no_tokens():
    x = torch.randn(5, 40)
    w = _weights(4, 40, 24, True, "out_in", False, torch.float32)
    idx = torch.tensor([[-1, 4]] * 5)
    out = moe.experts(x, idx, torch.ones(5, 2), *w)
    assert torch.equal(out, torch.zeros_like(x))
    empty = moe.experts(x[:0], idx[:0], torch.ones(0, 2), *w)
    assert empty.shape == (0, 40) and empty.dtype == x.dtype


def test_alignment_groups_pairs_by_expert_in_padded_blocks():
    idx = torch.tensor([[2, 0], [2, 2], [-1, 0], [5, 1]])  # E = 3: ids -1 and 5 are dropped
    sorted_pair, block_expert, slots = moe.align(idx, 3, 4)
    pairs = idx.numel()
    blocks = sorted_pair.view(-1, 4).tolist()
    got = {}
    for b, e in enumerate(block_expert.tolist()):
        if e >= 0:
            got.setdefault(e, []).extend(p for p in blocks[b] if p != pairs)
        else:
            assert all(p == pairs for p in blocks[b])
    assert got == {0: [1, 5], 1: [7], 2: [0, 2, 3]}
    assert block_expert.tolist()[:3] == [0, 1, 2] and set(block_expert.tolist()[3:]) <= {-1}
    assert slots.tolist() == [[1, 0], [0, 1], [1, -1], [1, -1]]


def test_refusals():
    x = torch.randn(5, 40, dtype=torch.float64)
    w = _weights(4, 40, 24, True, "out_in", False, torch.float64)
    with pytest.raises(NotImplementedError, match="float64"):
        moe.experts(x, torch.zeros(5, 2, dtype=torch.long), torch.ones(5, 2, dtype=torch.float64), *w)
    assert moe.supports(ExpertsAttrs()) and moe.supports(QExpertsAttrs(mode="w8a8"))
    assert not moe.supports(QExpertsAttrs(mode="w8a8", group=8))
    xf = torch.randn(5, 40)
    wf = _weights(4, 40, 24, True, "out_in", False, torch.float32)
    with pytest.raises(VerifyError):
        moe.experts(xf, torch.zeros(5, 2, dtype=torch.long), -torch.ones(5, 2), *wf,
                    attrs=ExpertsAttrs(nonneg_weights=True))


# qexperts -------------------------------------------------------------------------------------

def _qcase(mode, group, gated, activation, bias, seed=0, t=21, hidden=48, inter=32, e=4, k=2):
    idx, tw = _routing(t, k, e, seed=seed)
    x = torch.randn(t, hidden, generator=_gen(seed + 7)) * 1.5
    w_up, w_down, b_up, b_down = _weights(e, hidden, inter, gated, "out_in", bias, torch.float32, seed + 1)
    q_up, s_up = quantize_weight(w_up, group)
    q_down, s_down = quantize_weight(w_down, group)
    attrs = QExpertsAttrs(activation=activation, gated=gated, mode=mode, group=group,
                          limit=0.5 if activation == "silu" and gated else 0.0)
    args = (x, idx, tw, q_up, s_up, q_down, s_down, b_up, b_down)
    return args, attrs


@pytest.mark.parametrize("group", [0, 16])
@pytest.mark.parametrize("gated,activation,bias", [(True, "silu", False), (False, "gelu", True), (True, "relu2", True)])
def test_qexperts_weight_only(group, gated, activation, bias):
    args, attrs = _qcase("weight_only", group, gated, activation, bias, seed=group)
    x, idx, tw, q_up, s_up, q_down, s_down, b_up, b_down = args
    got = moe.qexperts(*args, attrs=attrs)
    low = qexperts_reference(*args, a=attrs)
    ea = attrs.experts_attrs()
    exact = experts_reference(x.double(), idx, tw.double(), dequantize(q_up, s_up, group).double(),
                              dequantize(q_down, s_down, group).double(), _double(b_up), _double(b_down), ea)
    assert_2x_pytorch(got, exact, low)


@pytest.mark.parametrize("gated,activation,bias", [(True, "silu", False), (False, "gelu_tanh", True), (True, "identity", True)])
def test_qexperts_w8a8(gated, activation, bias):
    args, attrs = _qcase("w8a8", 0, gated, activation, bias, seed=3)
    x, idx, tw, q_up, s_up, q_down, s_down, b_up, b_down = args
    got = moe.qexperts(*args, attrs=attrs)
    want = qexperts_reference(*args, a=attrs)
    assert got.dtype == want.dtype and got.shape == want.shape
    err = (got - want).abs()
    floor = 4 * torch.finfo(torch.float32).eps * max(1.0, want.abs().max().item())
    # a flipped quantisation step of one activation changes an output by at most
    # sx2 * max|s_down * q_down| * max|w| per slot (sx2 = the row's amax / 127)
    step = 2 * 127 * s_down.max().item() * tw.abs().max().item() * idx.shape[1]
    step *= max(1.0, float(torch.quantile(want.abs().flatten(), 1.0))) / 127
    assert err.max().item() <= step, f"w8a8 error {err.max().item():.3g} > one quantisation step {step:.3g}"
    assert (err > floor).float().mean().item() <= 0.02, "w8a8: more than a rare quantisation flip differs"


def test_qexperts_refuses_half_x_and_grouped_w8a8():
    args, attrs = _qcase("weight_only", 0, True, "silu", False)
    with pytest.raises(NotImplementedError, match="float32"):
        moe.qexperts(args[0].half(), *args[1:], attrs=attrs)
    with pytest.raises(NotImplementedError):
        moe.qexperts(*args, attrs=QExpertsAttrs(mode="w8a8", group=16))


# the backend, end to end ----------------------------------------------------------------------

def test_zoo_mixtral_runs_its_experts_on_the_handwritten_kernel(tmp_path):
    model, examples = zoo.build("mixtral", batch=1, seq=8)
    c = t2c.compile(model, examples, passes="-O1", target="triton", out=str(tmp_path / "mixtral"))
    assert c.ok is True  # the driver's validation: module vs IR vs the Triton artifact
    counts = json.loads((tmp_path / "mixtral" / "kernels.json").read_text())
    n_experts = sum(n.op == "experts" for n in c.graph.nodes)
    assert n_experts >= 1 and counts["handwritten"]["ops"].get("experts") == n_experts
    assert "_moe.experts(" in (tmp_path / "mixtral" / "model.py").read_text()
    inputs = zoo.build("mixtral", batch=2, seq=5)[1]
    got, want = c(**inputs), eager_outputs(model, inputs)
    for name, tensor in got.items():
        torch.testing.assert_close(tensor, want[name], rtol=1e-4, atol=1e-4)



def test_zoo_mixtral_w8a8_runs_qexperts_on_the_handwritten_kernel(tmp_path):
    """quantize-int8 makes the experts qexperts; the artifact matches the IR interpreter (the op's reference).
    One mode end to end (the launcher's operands are the same in both; weight_only is covered above)."""
    passes, mode = "-O1,quantize-int8{mode=w8a8}", ("w8a8", 0)
    from t2c.ir.interpreter import run_graph

    model, examples = zoo.build("mixtral", batch=1, seq=8)
    c = t2c.compile(model, examples, passes=passes, target="triton", out=str(tmp_path / "q"), validate=False)
    counts = json.loads((tmp_path / "q" / "kernels.json").read_text())
    nodes = [n for n in c.graph.nodes if n.op == "qexperts"]
    assert nodes and {(n.attrs.mode, n.attrs.group) for n in nodes} == {mode}
    assert counts["handwritten"]["ops"].get("qexperts") == len(nodes) and counts["generic"]["nodes"] == 0
    for inputs in (examples, zoo.build("mixtral", batch=2, seq=5)[1]):
        got, want = c(**inputs), run_graph(c.graph, inputs)
        for name, tensor in got.items():
            torch.testing.assert_close(tensor, want[name], rtol=1e-4, atol=1e-4)

# Hugging Face MoE families (tests/models/test_moe_families.py builds them) under the Triton target.
# All 53 families of transformers 5.23 take ~15 s each here (about 13 minutes): one family per
# distinct combination of the experts attrs the capture gives them (activation, alpha, gated, split,
# limit, up_offset, layout, bias), found from the modules themselves (hf_experts.describe); of the
# families with one combination, the one with the fewest modules (a proxy for trace and run time).

def _family_module():
    import os
    import sys

    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "models"))
    import test_moe_families  # noqa: E402  (pytest's own name for it: the module is shared, not re-imported)

    return test_moe_families


def _experts_combination(model, fam) -> tuple:
    from t2c.frontends.hf_experts import describe

    found = set()
    for _, m in fam.experts_modules(model):
        a = describe(m)
        if a is not None:
            found.add((a.activation, a.alpha, a.gated, a.split, a.limit, a.up_offset, a.layout, bool(getattr(m, "has_bias", False))))
    return tuple(sorted(found))


@functools.cache
def representative_families() -> dict[str, tuple]:
    """{family: its experts attrs}, one family per distinct combination of experts attrs."""
    fam = _family_module()
    cheapest = {}  # combination -> (modules in the model, family): fewer modules trace and run faster
    for family in sorted(fam.moe_families()):
        model = fam.build(family)[0]
        combo = _experts_combination(model, fam)
        cost = (len(list(model.modules())), family)
        if combo and (combo not in cheapest or cost < cheapest[combo]):
            cheapest[combo] = cost
    return {family: combo for combo, (_, family) in cheapest.items()}


def test_representatives_cover_the_combinations_that_matter():
    chosen = representative_families()
    combos = {c for combo in chosen.values() for c in combo}
    assert len(chosen) >= 5
    assert {c[0] for c in combos} >= {"silu", "gelu", "gelu_tanh", "relu2"}
    assert {c[6] for c in combos} == {"out_in", "in_out"} and {c[3] for c in combos} == {"concat", "interleaved"}
    assert any(c[4] > 0 for c in combos) and any(c[5] for c in combos) and any(c[7] for c in combos)
    assert any(not c[2] for c in combos)


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(representative_families()))
def test_hf_family_on_the_triton_target(family, tmp_path):
    fam = _family_module()
    model, _ = fam.build(family)
    ids = torch.randint(0, model.config.vocab_size, fam.TRACE_SHAPE, generator=torch.Generator().manual_seed(fam.SEED))
    start = time.perf_counter()
    c = t2c.compile(model, {"input_ids": ids}, passes=fam.PIPELINE, target="triton", out=str(tmp_path / family),
                    validate=False)  # the driver's per-pass runs cost 5x the rest: checked against eager here
    counts = json.loads((tmp_path / family / "kernels.json").read_text())
    n_experts = sum(n.op == "experts" for n in c.graph.nodes)
    assert n_experts == len(fam.experts_modules(model))
    assert counts["handwritten"]["ops"].get("experts") == n_experts, counts["handwritten"]
    with torch.no_grad():
        want = model(input_ids=ids).logits
    err = (c(input_ids=ids)["logits"] - want).abs().max().item()
    assert err <= fam.TOL, f"{family}: logits max abs error {err:.3g} > {fam.TOL} ({time.perf_counter() - start:.0f} s)"
