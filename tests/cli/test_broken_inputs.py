"""Broken inputs a user hands `t2c compile`: each a one-line error, exit 2, and nothing left behind."""

from __future__ import annotations

import json
import os
import struct

import pytest
import torch
import transformers

from t2c.cli import main


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf") / "llama"
    cfg = transformers.LlamaConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4,
                                   num_key_value_heads=2, vocab_size=100)
    torch.manual_seed(0)
    transformers.LlamaForCausalLM(cfg).eval().save_pretrained(path)
    return path


def refused(capsys, tmp_path, *args) -> str:
    """Run t2c compile ARGS -o tmp_path/out: exit 2, one line on stderr, no output folder or scratch left."""
    before = set(os.listdir(tmp_path))
    code = main(["compile", *args, "-o", str(tmp_path / "out")])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert err.startswith("t2c: error: ") and err.count("\n") == 1, err
    assert set(os.listdir(tmp_path)) == before  # no out/, no .t2c-* scratch folder
    return err


def test_output_path_that_is_a_file(capsys, tmp_path, hf_folder):
    (tmp_path / "out").write_text("not a folder")
    code = main(["compile", str(hf_folder), "-o", str(tmp_path / "out")])
    assert code == 2 and "exists and is not a folder" in capsys.readouterr().err
    assert (tmp_path / "out").read_text() == "not a folder"


def test_folder_without_config(capsys, tmp_path):
    (tmp_path / "weights").mkdir()
    assert "without config.json" in refused(capsys, tmp_path, str(tmp_path / "weights"))


def test_config_naming_an_architecture_that_is_not_installed(capsys, tmp_path, hf_folder):
    folder = tmp_path / "unknown"
    folder.mkdir()
    config = json.loads((hf_folder / "config.json").read_text())
    config.update(model_type="no_such_family", architectures=["NoSuchFamilyForCausalLM"])
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "model.safetensors").write_bytes((hf_folder / "model.safetensors").read_bytes())
    assert "cannot read config.json" in refused(capsys, tmp_path, str(folder))


def test_safetensors_header_that_lies_about_sizes(capsys, tmp_path, hf_folder):
    folder = tmp_path / "liar"
    folder.mkdir()
    (folder / "config.json").write_text((hf_folder / "config.json").read_text())
    raw = (hf_folder / "model.safetensors").read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["shape"] = [header[name]["shape"][0] * 4] + header[name]["shape"][1:]  # 4x the bytes it has
    text = json.dumps(header).encode()
    (folder / "model.safetensors").write_bytes(struct.pack("<Q", len(text)) + text + raw[8 + n:])
    assert "cannot load" in refused(capsys, tmp_path, str(folder))


@pytest.mark.parametrize("kind", ["wrong_rank", "ids_past_vocab", "not_ids"])
def test_calibration_file_of_the_wrong_shape(capsys, tmp_path, hf_folder, kind):
    cal = tmp_path.parent / f"cal-{kind}-{os.getpid()}"
    if kind == "not_ids":
        cal = cal.with_suffix(".txt")
        cal.write_text("1 2 x\n")
    else:
        cal = cal.with_suffix(".pt")
        torch.save(torch.zeros(2, 3, 4, dtype=torch.long) if kind == "wrong_rank" else torch.full((2, 5), 5000), cal)
    err = refused(capsys, tmp_path, str(hf_folder), "--passes", "-O1,quantize-int8{mode=w8a8}", "--calibrate", str(cal))
    assert "calibration" in err
