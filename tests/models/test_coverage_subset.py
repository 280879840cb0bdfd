"""A fast subset of the coverage sweep (benchmarks/coverage.py) in `make test`.

Each selected architecture from `../shared/hf-test-configs/` is built exactly as the sweep builds it
(its model class at the tester's config, seed 0, use_cache off, the tester's inputs at batch 2),
compiled with `-O1` and t2c's validation, and its model.onnx checked in plain ONNX Runtime against
eager PyTorch at two shapes within 1e-4 (the sweep's own check, which it also gives the anchor).

Which architectures, by rule rather than by hand:
  * from the newest full sweep committed under benchmarks/results/ (coverage-*.json covering every
    config), the PER_KIND fastest architectures of each kind (decoder, encoder, base, other) that
    passed t2c there (fastest by the sweep's t2c seconds), and the T2C_ONLY fastest that t2c passed
    and torch.onnx.export did not;
  * plus FIXED: the architectures the coverage work (issue 11) makes pass, one per cause closed.
    Add an architecture here in the commit that fixes its cause; it stays in the subset for good.
"""

from __future__ import annotations

import glob
import importlib.util
import json
import os

import pytest


ROOT = os.path.join(os.path.dirname(__file__), "..", "..")
CONFIGS = os.path.join(ROOT, "tests", "data", "hf-test-configs")  # a copy of ../shared's, in the repo for CI
RESULTS = os.path.join(ROOT, "benchmarks", "results")

# The hook: architectures fixed by the coverage work join the subset here (one per fixed cause).
FIXED: list[str] = [
    "gemma2",  # ONNX Attention read a float mask's finfo.min as -inf (rows hidden by left padding gave zeros, eager the mean of v)
    "funnel",  # fold-shapes: a permute chain composing to a transpose of a square [.., n, n] was dropped (same type, not the same values)
    "big_bird",  # floor(seq/8) block sizes did not broadcast: the derived-dim export pins seq (its block-sparse plan needs it), said in a warning
    "mpt",  # a Max in a size (ALiBi table sliced from max(0, 2048 - seq)) did not broadcast: decided by the traced range, `seq <= 2047` recorded
    "mamba2",  # chunked scan under `seq % 8 == 0`: arange(0, seq/8 + 1) inferred ceiling(seq/8)+1 (step 1: end - start); the sweep's second shape obeys constraints
    "bamba",  # chunked scan, fewer tokens than a chunk: torch pinned one chunk (traced again longer), `seq + Mod(-seq, 16)` folded to 16*ceiling(seq/16)
    "jetmoe",  # experts' rows split by data-dependent sizes and concatenated: n0+n1+n2+n3 did not broadcast with batch*seq (the last size is the remainder)
    "luke",  # entity_ids / entity_attention_mask shared `seq` with the words: their own length label, entity_seq
    "reformer",  # chunks under torch's `seq % 4 == 0` guard, ids and mask traced apart: guard divisors and equal dims
    "longt5",  # torch's solver failed wording its fixes (Dim.AUTO now), ids and mask traced apart though labelled alike (one dim now)
    "fnet",  # complex64 FFT: one DFT matmul per transformed dim
    "dbrx",  # experts loop over the experts the routing hit (data-dependent guard): undecorated experts described by search
]
# How many of the fastest passing architectures of each kind the sweep's JSON contributes, and of those
# that t2c compiles while torch.onnx.export does not (what t2c must keep winning).
PER_KIND = {"decoder": 3, "encoder": 2, "base": 2, "other": 1}
T2C_ONLY = 1


def _sweep_module():
    spec = importlib.util.spec_from_file_location("t2c_benchmarks_coverage", os.path.join(ROOT, "benchmarks", "coverage.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def latest_full_sweep() -> dict | None:
    """The newest coverage result that ran every config (runs done with --only or --quick do not count)."""
    if not os.path.isdir(CONFIGS):
        return None
    n_configs = len([f for f in os.listdir(CONFIGS) if f.endswith(".json")])
    for path in sorted(glob.glob(os.path.join(RESULTS, "coverage-*.json")), key=lambda p: p.rsplit("-", 2)[-2:], reverse=True):
        with open(path) as f:
            data = json.load(f)
        if len(data.get("rows", [])) >= n_configs:
            return data
    return None


def selected() -> list[str]:
    """PER_KIND fastest t2c passes of each kind in the newest full sweep, the T2C_ONLY fastest of those the
    anchor failed, then FIXED."""
    sweep = latest_full_sweep()
    picked: list[str] = []
    if sweep is not None:
        passing = sorted((r for r in sweep["rows"] if (r.get("t2c") or {}).get("status") == "ok"), key=lambda r: (r["t2c"]["seconds"], r["arch"]))
        for kind, n in PER_KIND.items():
            picked += [r["arch"] for r in passing if r.get("kind") == kind][:n]
        t2c_only = [r["arch"] for r in passing if (r.get("anchor") or {}).get("status") not in (None, "ok") and r["arch"] not in picked]
        picked += t2c_only[:T2C_ONLY]
    return picked + [a for a in FIXED if a not in picked]


ARCHS = selected()


def test_the_subset_is_selected():
    assert latest_full_sweep() is not None, "no full coverage sweep under benchmarks/results/ (run benchmarks/coverage.py)"
    assert len(ARCHS) >= 4, ARCHS
    stale = [a for a in FIXED if not os.path.exists(os.path.join(CONFIGS, f"{a}.json"))]
    assert not stale, f"FIXED names architectures without a config: {stale}"


def build_arch(arch: str):
    """(sweep module, model, inputs) of one config, built as benchmarks/coverage.py builds it."""
    sweep = _sweep_module()
    entry = sweep.load_entry(os.path.join(CONFIGS, f"{arch}.json"))
    model = sweep.build_model(entry)
    assert model is not None, f"{arch}: {sweep.SKIP_MISSING}"
    return sweep, model, sweep.make_inputs(model, entry)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_architecture_compiles_and_matches_eager(arch, tmp_path):
    import torch

    import t2c

    sweep, model, inputs = build_arch(arch)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        compiled = t2c.compile(model, inputs, passes="-O1", out=str(tmp_path / arch))
        assert compiled.ok is True
        check = sweep.check_onnx(model, inputs, str(tmp_path / arch / "model.onnx"))
    finally:
        torch.set_num_threads(threads)
    assert check["ok"], f"{arch}: {check['error']}"
