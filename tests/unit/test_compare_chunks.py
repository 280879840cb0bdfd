"""validate.compare and token_drift work a chunk at a time (a large model's float64 logits would hold
GiBs at once); their results equal the whole-tensor formulas."""

from __future__ import annotations

import math

import torch

from t2c import validate


def test_chunked_compare_equals_the_whole_tensor_formulas(monkeypatch):
    monkeypatch.setattr(validate, "CHUNK_ELEMENTS", 1000)
    gen = torch.Generator().manual_seed(0)
    want = torch.randn(7, 613, generator=gen)
    got = want + torch.randn(7, 613, generator=gen) * 1e-3
    got[3, 5] = float("nan")  # NaN where the reference is not: infinite error, not ok
    c = validate.compare("x", got, want, (1e-2, 0.0))
    g, w = got.double().reshape(-1), want.double().reshape(-1)
    diff = (g - w).abs().nan_to_num(nan=math.inf)
    assert c.max_abs == math.inf and not c.ok
    gn, wn = g.nan_to_num(), w
    assert math.isclose(c.cosine, float(gn @ wn / (gn.norm() * wn.norm())), rel_tol=1e-12)
    assert math.isclose(validate.compare("x", want + 1e-3, want, (1e-2, 0.0)).max_abs, 1e-3, rel_tol=1e-3)
    assert validate.compare("x", want + 1e-3, want, (1e-2, 0.0)).ok
    assert float(diff[torch.isfinite(diff)].max()) < 0.01


def test_chunked_token_drift_equals_the_whole_tensor_formulas(monkeypatch):
    monkeypatch.setattr(validate, "CHUNK_ELEMENTS", 50)
    gen = torch.Generator().manual_seed(1)
    want = torch.randn(2, 9, 17, generator=gen)
    got = want + torch.randn(2, 9, 17, generator=gen) * 0.5
    agree, kl = validate.token_drift(got, want)
    g, w = got.double().reshape(-1, 17), want.double().reshape(-1, 17)
    assert agree == float((g.argmax(-1) == w.argmax(-1)).double().mean())
    log_p, log_q = w.log_softmax(-1), g.log_softmax(-1)
    assert math.isclose(kl, float((log_p.exp() * (log_p - log_q)).sum(-1).mean()), rel_tol=1e-12)
