"""fuse-activation rules one by one: what they refuse, and why (`--debug-rewrites` reasons)."""

from t2c.ir import parse_graph, verify
from t2c.passes import Pipeline, collect_near_misses

HEAD = 'graph g\ninput %0 "x" : f32[2,8]\ninput %1 "up" : f32[2,8]\nparam @b : f32[8]\n'


def run(body: str):
    g = parse_graph(HEAD + body)
    with collect_near_misses() as misses:
        g, records = Pipeline.parse("fuse-activation").run(g, verify_each=True)
    verify(g)
    return g.op_counts(), records[0].stats, misses


def test_wrong_tanh_constant_is_a_near_miss_with_the_polynomial():
    body = """%2 = full() {shape=[], value=0.5, dtype=f32} : f32[]
%3 = mul(%0, %2) : f32[2,8]
%4 = mul(%0, %0) : f32[2,8]
%5 = mul(%4, %0) : f32[2,8]
%6 = full() {shape=[], value=0.0447, dtype=f32} : f32[]
%7 = mul(%5, %6) : f32[2,8]
%8 = add(%0, %7) : f32[2,8]
%9 = full() {shape=[], value=0.7978845608028654, dtype=f32} : f32[]
%10 = mul(%9, %8) : f32[2,8]
%11 = tanh(%10) : f32[2,8]
%12 = full() {shape=[], value=1.0, dtype=f32} : f32[]
%13 = add(%12, %11) : f32[2,8]
%14 = mul(%13, %3) : f32[2,8]
output "y" = %14
"""
    counts, stats, misses = run(body)
    assert "gelu" not in counts and stats["gelu_tanh"] == 0
    assert any("gelu-tanh" in m and "0.03566" in m and "0.03567" in m for m in misses), misses
    # the same chain with the right constant (x*x*x spelling, operands swapped) fuses
    counts, stats, _ = run(body.replace("0.0447,", "0.044715,"))
    assert counts == {"gelu": 1} and stats["gelu_tanh"] == 1


def test_erf_gelu_needs_half():
    body = """%2 = full() {shape=[], value=0.7071067811865476, dtype=f32} : f32[]
%3 = mul(%0, %2) : f32[2,8]
%4 = erf(%3) : f32[2,8]
%5 = full() {shape=[], value=1.0, dtype=f32} : f32[]
%6 = add(%4, %5) : f32[2,8]
%7 = mul(%0, %6) : f32[2,8]
%8 = full() {shape=[], value=2.0, dtype=f32} : f32[]
%9 = div(%7, %8) {rounding_mode=none} : f32[2,8]
%10 = mul(%0, %6) : f32[2,8]
output "y" = %9
output "z" = %10
"""
    counts, stats, misses = run(body)
    # x * (1 + erf) / 2 is GELU; x * (1 + erf) without the half is not
    assert stats["gelu_erf"] == 1 and counts["gelu"] == 1 and counts["mul"] == 2
    assert any("constant is 1.0, not 0.5" in m for m in misses), misses


def test_shared_activation_is_not_gated():
    body = """%2 = silu(%0) : f32[2,8]
%3 = mul(%2, %1) : f32[2,8]
output "y" = %3
output "s" = %2
"""
    counts, stats, misses = run(body)
    assert "gated_act" not in counts and stats["gated_act"] == 0
    assert any("used elsewhere" in m for m in misses)


def test_bias_must_be_a_param_of_the_last_dim():
    body = """%2 = add(%0, @b) : f32[2,8]
%3 = gelu(%2) {approximate="tanh"} : f32[2,8]
%4 = add(%0, %1) : f32[2,8]
%5 = relu(%4) : f32[2,8]
output "y" = %3
output "z" = %5
"""
    counts, stats, _ = run(body)
    assert stats["bias_act"] == 1 and counts["relu"] == 1 and counts["bias_act"] == 1


def test_gated_before_bias():
    body = """%2 = add(%0, @b) : f32[2,8]
%3 = gelu(%2) {approximate="none"} : f32[2,8]
%4 = mul(%3, %1) : f32[2,8]
output "y" = %4
"""
    counts, stats, _ = run(body)
    assert counts == {"add": 1, "gated_act": 1} and stats["bias_act"] == 0
