"""`t2c compile --with-past` on a Hugging Face folder, then `t2c generate` on what it wrote."""

import json

import pytest

import zoo
from t2c.cli import main
from t2c.frontends.torch_export import label_expr
from t2c.errors import UserError


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    model, _ = zoo.build("llama")
    model.save_pretrained(str(root / "llama"))
    assert main(["compile", str(root / "llama"), "--with-past", "-o", str(root / "past")]) == 0
    assert main(["compile", str(root / "llama"), "-o", str(root / "plain")]) == 0
    return root, model


def test_generate_prints_one_line_per_prompt(folders, capsys):
    root, model = folders
    code, out, err = run(capsys, "generate", str(root / "past"), "--prompt-ids", "5,17,42", "--prompt-ids", "1,2", "--max-new-tokens", "6", "--eos-id", "none")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 2 and all(len(line.split()) == 6 for line in lines)
    from t2c import load

    assert [list(map(int, line.split())) for line in lines] == load(str(root / "past")).generate([[5, 17, 42], [1, 2]], 6, eos_token_id=None)
    report = json.loads((root / "past" / "report.json").read_text())
    assert report["with_past"]["layers"] == model.config.num_hidden_layers


@pytest.mark.parametrize("args, message", [
    (["--prompt-ids", "5,x"], "give token ids separated by commas"),
    (["--prompt-ids", ","], "--prompt-ids is empty"),
    (["--prompt-ids", "5", "--eos-id", "end"], "give a token id or none"),
    (["--prompt-ids", "5000"], "outside the model's vocabulary of 128"),
])
def test_bad_generate_input_is_one_line_and_exit_2(folders, capsys, args, message):
    root, _ = folders
    code, _, err = run(capsys, "generate", str(root / "past"), *args)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err


def test_generate_needs_a_with_past_folder(folders, capsys):
    root, _ = folders
    code, _, err = run(capsys, "generate", str(root / "plain"), "--prompt-ids", "5")
    assert code == 2 and "compiled without a KV cache" in err and "--with-past" in err
    code, _, err = run(capsys, "generate", str(root / "missing"), "--prompt-ids", "5")
    assert code == 2 and "is not a folder" in err


def test_check_with_past_passes_every_stage(folders, capsys, tmp_path):
    root, _ = folders
    code, out, err = run(capsys, "check", str(root / "llama"), "--with-past", "--json", str(tmp_path / "c.json"))
    assert code == 0, err
    doc = json.loads((tmp_path / "c.json").read_text())
    assert doc["report"]["with_past"]["layers"] == 2 and out.strip().endswith("0 failed")


def test_label_expr_is_a_sum_of_labels():
    assert str(label_expr("past+seq")) == "past + seq"
    with pytest.raises(UserError, match="names joined by"):
        label_expr("past*seq")


def test_a_mask_of_the_wrong_length_is_refused(folders):
    """attention_mask is [batch, past+seq]: another length is a one-line UserError, not a runtime crash."""
    import torch

    from t2c import load

    root, _ = folders
    c = load(str(root / "past"))
    past = {f"past_{kv}_{i}": torch.zeros(1, 2, 3, 16) for i in range(2) for kv in ("key", "value")}
    ids, positions = torch.tensor([[5, 6]]), torch.tensor([[3, 4]])
    assert c(input_ids=ids, attention_mask=torch.ones(1, 5, dtype=torch.long), position_ids=positions, **past)["logits"].shape == (1, 2, 128)
    with pytest.raises(UserError, match=r"attention_mask has 4 along axis 1; the compiled model takes past\+seq = 5"):
        c(input_ids=ids, attention_mask=torch.ones(1, 4, dtype=torch.long), position_ids=positions, **past)


def test_linear_attention_state_from_the_command_line(folders, capsys):
    """`t2c compile --with-past --passes -O1,linear-attention`, then `t2c generate` on it: the folder's
    model.t2c keeps the state lines, its report names the states, and the ids match the Python API."""
    root, model = folders
    out = root / "linear"
    assert main(["compile", str(root / "llama"), "--with-past", "--passes", "-O1,linear-attention", "-o", str(out)]) == 0
    capsys.readouterr()
    code, printed, err = run(capsys, "generate", str(out), "--prompt-ids", "5,17,42", "--max-new-tokens", "5", "--eos-id", "none")
    assert code == 0, err
    from t2c import load

    loaded = load(str(out))
    assert list(map(int, printed.split())) == loaded.generate([5, 17, 42], 5, eos_token_id=None)
    states = json.loads((out / "report.json").read_text())["with_past"]["states"]
    heads, dim = model.config.num_key_value_heads, model.config.hidden_size // model.config.num_attention_heads
    assert states == {f"past_state_{i}": ["batch", str(heads), str(dim), str(dim + 1)] for i in range(model.config.num_hidden_layers)}
    assert 'state "past_state_0"' in (out / "model.t2c").read_text()
