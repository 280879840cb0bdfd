"""Model files that are programs are refused without trust; bad files end in one line.

DESIGN §9: pickled modules and .pt2 archives run code when loaded, so t2c
refuses them unless the user trusts the model, and never turns a corrupt file
into a traceback.
"""

import pathlib
import pickle

import pytest
import torch

from t2c.errors import UserError
from t2c.frontends.loaders import load_model, trust_from_env


@pytest.fixture(autouse=True)
def no_env_trust(monkeypatch):
    # A developer's shell with T2C_TRUST_MODEL=1 must not weaken these tests.
    monkeypatch.delenv("T2C_TRUST_MODEL", raising=False)


class _TouchOnUnpickle:
    """Unpickling this creates `marker`: proof that the file's code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _one_line_error(source, **kwargs) -> str:
    with pytest.raises(UserError) as info:
        load_model(str(source), **kwargs)
    message = str(info.value)
    assert "\n" not in message and message.strip() == message and message
    assert len(message) <= 300
    return message


def _tiny_module():
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))


def test_evil_pickle_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as f:
        pickle.dump(_TouchOnUnpickle(str(marker)), f)

    message = _one_line_error(evil)

    assert "--trust-model" in message
    assert "pathlib.Path.touch" in message  # names what the pickle would import
    assert not marker.exists()


def test_pickled_module_is_refused_without_trust(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(_tiny_module(), path)
    message = _one_line_error(path)
    assert "--trust-model" in message and "can run code" in message


def test_pt2_is_refused_before_loading(tmp_path, monkeypatch):
    module = _tiny_module()
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(module, (torch.randn(2, 4),)), str(path))

    def must_not_load(*args, **kwargs):
        raise AssertionError("torch.export.load ran without trust")

    monkeypatch.setattr(torch.export, "load", must_not_load)
    message = _one_line_error(path)
    assert "--trust-model" in message and "can run code" in message


def test_pt2_loads_with_trust(tmp_path):
    module = _tiny_module().eval()
    x = torch.randn(3, 4)
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(module, (x,)), str(path))

    loaded = load_model(str(path), trust_model=True)

    assert loaded.kind == "pt2" and loaded.exported is not None
    assert list(loaded.example_inputs) == ["input"]
    torch.testing.assert_close(loaded.module(**loaded.example_inputs), module(x))
    assert loaded.dynamic_dims == {"input": {0: "batch", 1: "seq"}}


def test_state_dict_is_refused_with_factory_hint(tmp_path):
    path = tmp_path / "weights.pt"
    torch.save(_tiny_module().state_dict(), path)
    message = _one_line_error(path)
    assert "state dict has no architecture" in message
    assert "module:function" in message


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    assert "empty" in _one_line_error(path)
    _one_line_error(path, trust_model=True)


def test_truncated_pt_is_not_retried_unsafely(tmp_path, monkeypatch):
    full = tmp_path / "full.pt"
    torch.save(_tiny_module(), full)
    data = full.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])

    real_load = torch.load

    def safe_only(*args, weights_only=None, **kwargs):
        assert weights_only is True, "an unsafe load was tried on a corrupt file"
        return real_load(*args, weights_only=weights_only, **kwargs)

    monkeypatch.setattr(torch, "load", safe_only)
    message = _one_line_error(cut, trust_model=True)
    assert "not a readable PyTorch file" in message


@pytest.mark.parametrize("trust", [False, True])
def test_random_bytes(tmp_path, trust):
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes((i * 197 + 13) % 256 for i in range(4096)))
    _one_line_error(path, trust_model=trust)


def test_text_file_named_model_pt(tmp_path):
    path = tmp_path / "model.pt"
    path.write_text("this is not a model\nsecond line\n")
    _one_line_error(path)


def test_corrupt_pt2(tmp_path):
    path = tmp_path / "model.pt2"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    assert "not a torch.export archive" in _one_line_error(path, trust_model=True)


def test_directory_without_config(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"")
    assert "config.json" in _one_line_error(tmp_path)


def test_hf_folder_with_only_bin_weights_needs_trust(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "bert"}')
    (tmp_path / "pytorch_model.bin").write_bytes(b"\x80\x04N.")
    message = _one_line_error(tmp_path)
    assert "--trust-model" in message and "safetensors" in message


def test_nonexistent_path(tmp_path):
    assert "no such file" in _one_line_error(tmp_path / "missing.pt")


def test_unknown_file_kind_lists_accepted_kinds(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"\x08\x07")
    message = _one_line_error(path)
    assert ".pt2" in message and "module:function" in message


def test_env_var_counts_as_trust(monkeypatch, tmp_path):
    assert not trust_from_env()
    monkeypatch.setenv("T2C_TRUST_MODEL", "1")
    assert trust_from_env()

    module = _tiny_module()
    path = tmp_path / "model.pt"
    torch.save({"model": module, "example_inputs": {"input": torch.randn(2, 4)}}, path)
    assert load_model(str(path)).kind == "pt"

    monkeypatch.setenv("T2C_TRUST_MODEL", "0")
    assert not trust_from_env()
