"""Models called with an attention_mask: lift-attention splits Hugging Face's mask into its
structure (causal, sliding window, or none) and the padding row, and the compiled ONNX still
matches eager within 1e-4 in both flavors, with padding in the batch.

What the split buys is checked too: Llama's and GPT-2's attention stay `causal`, Mistral keeps
its window (so its blocked O(n*w) form), and under the ort flavor BERT/MiniLM run on
MultiHeadAttention with a key-padding mask.
"""

import os
from collections import Counter

import onnx
import onnxruntime as ort
import pytest
import torch

import t2c
import zoo

# family: (layers, structure the attention must keep, ort kernel for the padded attention)
CASES = {
    "bert": (2, dict(causal=False, window=(-1, -1)), "MultiHeadAttention"),
    "minilm": (6, dict(causal=False, window=(-1, -1)), "MultiHeadAttention"),
    "llama": (2, dict(causal=True, window=(-1, -1)), None),
    "gpt2": (2, dict(causal=True, window=(-1, -1)), None),
    "mistral": (2, dict(causal=True, window=(7, -1)), None),
}


def _inputs(batch: int, seq: int, vocab: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(batch * 100 + seq)
    ids = torch.randint(0, vocab, (batch, seq), generator=gen)
    mask = torch.ones(batch, seq, dtype=torch.long)
    mask[0, seq // 2 :] = 0  # right padding on the first row; the others are full
    return {"input_ids": ids, "attention_mask": mask}


@pytest.mark.parametrize("flavor", ["standard", "ort"])
@pytest.mark.parametrize("family", list(CASES))
def test_padded_model_compiles_exactly(family, flavor, tmp_path):
    layers, structure, kernel = CASES[family]
    model, _ = zoo.build(family)
    vocab = model.config.vocab_size
    compiled = t2c.compile(model, _inputs(2, 16, vocab), passes="-O1", flavor=flavor, out=str(tmp_path / "out"))
    assert compiled.ok is True

    lift = next(p for p in compiled.report["passes"] if p["pass"] == "lift-attention")
    assert lift["stats"].get("mask_padding_split") == layers, lift["stats"]
    attentions = [n for n in compiled.graph.nodes if n.op == "attention"]
    assert len(attentions) == layers
    for n in attentions:
        assert n.attrs.causal == structure["causal"] and n.attrs.window == structure["window"], n.attrs
        assert n.inputs[3].type.shape[1:3] == (1, 1)  # the operand is the padding row, not a [S, S] mask

    path = os.path.join(tmp_path, "out", "model.onnx")
    ops = Counter(n.op_type for n in onnx.load(path, load_external_data=False).graph.node)
    assert ops.get(kernel, 0) == (layers if flavor == "ort" and kernel else 0), ops
    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for batch, seq in [(2, 16), (3, 45)]:
        feeds = _inputs(batch, seq, vocab)
        got = dict(zip(names, session.run(names, {k: v.numpy() for k, v in feeds.items()})))
        with torch.no_grad():
            want = model(**feeds)
        for name, value in got.items():
            err = (torch.from_numpy(value) - want[name]).abs().max().item()
            assert err <= 1e-4, f"{family} {flavor} {name} at {batch}x{seq}: {err}"
