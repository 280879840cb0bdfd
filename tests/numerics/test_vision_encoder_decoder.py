"""Vision encoders and encoder-decoders compiled end to end: plain ONNX Runtime vs eager PyTorch at two shapes.

Vision encoders (`pixel_values` [B, C, H, W]: a strided conv2d patch embedding) keep
only the batch dynamic: the image size is fixed by the position table. Encoder-decoders
take `input_ids` and `decoder_input_ids`, whose lengths are two symbols (`seq`,
`decoder_seq`); every attention, cross-attention included, is lifted to `attention`.
Whisper's encoder takes `input_features` [B, n_mels, frames] through two conv1d.
"""

import os

import onnxruntime as ort
import pytest
import torch

import t2c
import zoo

TOL = 1e-4


def _check(name, tmp_path, shapes):
    model, examples = zoo.build(name)
    out = str(tmp_path / name)
    compiled = t2c.compile(model, examples, passes="-O1", out=out)
    assert compiled.ok is True
    ir = open(os.path.join(out, "model.t2c")).read()
    session = ort.InferenceSession(os.path.join(out, "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    for inputs in shapes(model):
        results = dict(zip(names, session.run(names, {k: v.numpy() for k, v in inputs.items()})))
        with torch.no_grad():
            want = model(**inputs)
        for key, got in results.items():
            err = (torch.from_numpy(got) - want[key]).abs().max().item()
            assert err <= TOL, f"{name} {key} at {[tuple(v.shape) for v in inputs.values()]}: {err}"
    return ir


def _gen(seed):
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("name", ["vit", "clip_vision"])
def test_vision_encoder(name, tmp_path):
    def shapes(model):
        size = model.config.image_size
        return [{"pixel_values": torch.randn(b, 3, size, size, generator=_gen(b))} for b in (1, 3)]

    ir = _check(name, tmp_path, shapes)
    assert 'input %0 "pixel_values" : f32[batch,3,32,32]' in ir
    assert ir.count(" = conv(") == 1 and ir.count(" = attention(") == 2 and " softmax(" not in ir


@pytest.mark.parametrize("name", ["bart", "whisper"])
def test_encoder_decoder(name, tmp_path):
    vocab = 128

    def shapes(model):
        out = []
        for b, s, d in [(1, 5, 3), (3, 21, 11)]:
            inputs = {"decoder_input_ids": torch.randint(0, vocab, (b, d), generator=_gen(b))}
            if name == "whisper":
                inputs = {"input_features": torch.randn(b, 16, 60, generator=_gen(s)), **inputs}
            else:
                inputs = {"input_ids": torch.randint(0, vocab, (b, s), generator=_gen(s)), **inputs}
            out.append(inputs)
        return out

    ir = _check(name, tmp_path, shapes)
    # 2 encoder layers (self-attention), 2 decoder layers (causal self-attention + cross-attention)
    attention = [line for line in ir.splitlines() if " = attention(" in line]
    assert len(attention) == 6 and " softmax(" not in ir
    assert sum("causal=true" in line for line in attention) == 2
    assert sum(line.endswith(",decoder_seq,16]") for line in attention) == 4
    assert '"decoder_input_ids" : i64[batch,decoder_seq]' in ir
    if name == "whisper":
        assert '"input_features" : f32[batch,16,60]' in ir and ir.count(" = conv(") == 2
    else:
        assert '"input_ids" : i64[batch,seq]' in ir
