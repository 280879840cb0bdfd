"""Independent check of the main job: every zoo model compiles, and ONNX Runtime on model.onnx
matches eager PyTorch within 1e-4 at two shapes (the MoE models included)."""

import os

import onnxruntime as ort
import pytest
import torch

import t2c
import zoo

FAMILIES = ["gpt2", "llama", "mistral", "bert", "mixtral", "minilm", "example"]


@pytest.mark.parametrize("family", FAMILIES)
def test_compiled_onnx_matches_eager(family, tmp_path):
    model, examples = zoo.build(family)
    compiled = t2c.compile(model, examples, passes="-O1", out=str(tmp_path / family))
    assert compiled.ok is True
    # Independent of t2c's own runtime wrapper: plain onnxruntime on the file.
    session = ort.InferenceSession(os.path.join(tmp_path, family, "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    vocab = model.config.vocab_size if hasattr(model, "config") else 256
    for shape in [(2, 16), (3, 45)]:
        ids = torch.randint(0, vocab, shape, generator=torch.Generator().manual_seed(3))
        results = dict(zip(names, session.run(names, {"input_ids": ids.numpy()})))
        with torch.no_grad():
            want = model(input_ids=ids)
        want = {"output": want} if isinstance(want, torch.Tensor) else want
        for name, got in results.items():
            err = (torch.from_numpy(got) - want[name]).abs().max().item()
            assert err <= 1e-4, f"{family} {name} {shape}: {err}"
