"""The second validation shape: chosen so that the eager model accepts it (regressions of exit-3 errors).

Found by benchmarks/coverage.py: (1) with an attention_mask next to input_ids, torch.export
kept two symbols for the batch axis (`batch`, `batch2`) and the second one grew like a
sequence, so the inputs disagreed on the batch; (2) a model whose position table is exactly
as long as the example cannot take a longer sequence; (3) random values break inputs that obey
rules (bounding boxes with x0 <= x1). Each used to end in an internal error (exit 3).
"""

import json
import os
import tempfile

import torch

import t2c
import zoo

CONFIGS = os.path.join(os.path.dirname(__file__), "..", "data", "hf-test-configs")


def _shapes(compiled):
    return [c["shape"] for c in compiled.report["validation"]["artifact_vs_ir"]]


def test_mask_and_ids_grow_their_batch_together(tmp_path):
    model, ex = zoo.bert(batch=2, seq=8)
    ids = ex["input_ids"]
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "token_type_ids": torch.zeros_like(ids)}
    compiled = t2c.compile(model, inputs, out=str(tmp_path / "bert"))
    assert compiled.ok is True
    assert _shapes(compiled)[1] == "input_ids=3x13, attention_mask=3x13, token_type_ids=3x13"


def test_a_model_that_cannot_go_longer_is_validated_shorter(tmp_path):
    model, ex = zoo.bert(batch=2, seq=16, max_positions=16)  # the example uses every position
    compiled = t2c.compile(model, ex, out=str(tmp_path / "short"))
    assert compiled.ok is True and _shapes(compiled)[1] == "input_ids=3x15"


def test_inputs_with_rules_are_tiled_from_the_example(tmp_path):
    import transformers

    entry = json.load(open(os.path.join(CONFIGS, "layoutlm.json")))
    folder = tempfile.mkdtemp()
    json.dump(entry["config"], open(os.path.join(folder, "config.json"), "w"))
    torch.manual_seed(0)
    model = getattr(transformers, entry["model_class"])(transformers.AutoConfig.from_pretrained(folder)).eval()
    g = torch.Generator().manual_seed(0)
    x0, y0 = torch.randint(0, 500, (2, 8, 1), generator=g), torch.randint(0, 500, (2, 8, 1), generator=g)
    inputs = {"input_ids": torch.randint(0, 90, (2, 8), generator=g), "bbox": torch.cat([x0, y0, x0 + 10, y0 + 10], -1)}
    compiled = t2c.compile(model, inputs, out=str(tmp_path / "layoutlm"))
    assert compiled.ok is True and len(_shapes(compiled)) == 2
