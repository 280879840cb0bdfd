"""Checkpoint dtypes end to end: zoo models saved as bfloat16, float16 and float32 Hugging Face
folders (save_pretrained writes the dtype into config.json; the loader keeps it) compiled by
`t2c compile` with the onnx target, and the artifacts checked with plain ONNX Runtime.

  * float32 and float16 checkpoints keep their dtype (ONNX Runtime's CPU provider computes both);
  * a bfloat16 checkpoint (no bf16 kernels there) is compiled as float32, cast-precision first,
    and the report and the summary line say so; its artifact is the float32 model of its
    weights (bf16 -> f32 is exact);
  * a float16 artifact holds FlashAttention's rule: its error against the float32 model of the
    same weights is at most twice eager PyTorch's own in float16 (plus a rounding step).
"""

import json
import os

import onnxruntime as ort
import pytest
import torch

import zoo
from t2c.cli import main
from t2c.frontends.loaders import load_model

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
OUTPUT = {"llama": "logits", "bert": "last_hidden_state"}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{(family, dtype name): Hugging Face folder of that zoo model saved in that dtype}."""
    root = tmp_path_factory.mktemp("ckpt")
    out = {}
    for family in OUTPUT:
        model, _ = zoo.build(family)
        for name, dtype in DTYPES.items():
            path = root / f"{family}-{name}"
            model.to(dtype).save_pretrained(str(path))
            out[family, name] = str(path)
    return out


def compile_cli(capsys, folder, out, *flags):
    code = main(["compile", folder, "-o", str(out), *flags])
    stdout, stderr = capsys.readouterr()
    return code, stdout, stderr


def eager(module, ids, dtype=None):
    """The module's outputs (in `dtype` when given: module.to converts it in place)."""
    m = module if dtype is None else module.to(dtype)
    with torch.no_grad():
        return m(input_ids=ids)


def artifact(out, name, ids):
    session = ort.InferenceSession(os.path.join(out, "model.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    result = dict(zip(names, session.run(names, {"input_ids": ids.numpy()})))
    return torch.from_numpy(result[name]).float()


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("family", list(OUTPUT))
def test_checkpoint_dtype_compiles_and_validates(family, dtype, folders, tmp_path, capsys):
    folder = folders[family, dtype]
    loaded = load_model(folder)
    assert next(loaded.module.parameters()).dtype == DTYPES[dtype]  # the loader keeps the checkpoint's dtype
    out = tmp_path / "out"
    code, stdout, stderr = compile_cli(capsys, folder, out)
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    prec = report["precision"]
    assert prec["checkpoint"] == dtype and prec["explicit"] is False
    assert report["validation"]["ok"] is True
    half = dtype == "float16"
    tolerance = (1e-2, 1.6e-2) if half else (1e-4, 1e-4)
    assert {(o["atol"], o["rtol"]) for c in report["validation"]["artifact_vs_ir"] for o in c["outputs"]} == {tolerance}
    if dtype == "bfloat16":
        assert prec["dtype"] == "float32" and prec["converted"] is True and prec["primary"] == "float32"
        assert "no bfloat16 arithmetic kernels" in prec["reason"]
        assert report["passes"][0]["pass"] == "cast-precision" and report["passes"][0]["options"] == "dtype=f32"
        assert "dtype: bfloat16 checkpoint compiled as float32: ONNX Runtime's CPU provider has no bfloat16" in stdout
        refs = {r["dtype"]: r for r in prec["references"]}
        assert set(refs) == {"bfloat16", "float32"} and refs["float32"]["primary"] is True
        assert all(float(o["max_abs"]) <= 1e-4 for c in refs["float32"]["checks"] for o in c["outputs"])
    else:
        assert prec["dtype"] == dtype and prec["converted"] is False
        assert "cast-precision" not in report["pipeline"]
        assert f"dtype: {dtype}: the checkpoint's, which target onnx computes" in stdout

    # Independent of t2c's runner: ONNX Runtime on model.onnx at a shape the compile did not trace.
    ids = torch.randint(0, zoo.VOCAB, (3, 21), generator=torch.Generator().manual_seed(5))
    got = artifact(str(out), OUTPUT[family], ids)
    want32 = eager(loaded.module, ids, torch.float32)[OUTPUT[family]].float()  # the float32 model of these weights
    err = (got - want32).abs().max().item()
    if half:
        eager16 = eager(loaded.module, ids, torch.float16)[OUTPUT[family]].float()
        torch_err = (eager16 - want32).abs().max().item()
        step = want32.abs().max().item() * 2**-10  # one float16 rounding step at the output's scale
        assert err <= 2 * torch_err + step, (err, torch_err)
    else:
        assert err <= 1e-4, err


def test_bf16_checkpoint_to_float16_on_request(folders, tmp_path, capsys):
    folder = folders["llama", "bfloat16"]
    out = tmp_path / "out"
    code, stdout, stderr = compile_cli(capsys, folder, out, "--dtype", "float16")
    assert code == 0, stderr
    report = json.loads((out / "report.json").read_text())
    prec = report["precision"]
    assert (prec["checkpoint"], prec["dtype"], prec["explicit"], prec["reason"]) == ("bfloat16", "float16", True, "--dtype float16")
    cast = report["passes"][-1]
    assert cast["pass"] == "cast-precision" and cast["options"] == "dtype=f16"
    assert cast["stats"]["params_converted"] > 0
    assert "dtype: bfloat16 checkpoint compiled as float16: --dtype float16" in stdout
    # The fused ops (attention, rope, norms) run in float16 in the final IR.
    final = (out / "model.t2c").read_text()
    assert "attention(" in final and ": f16[" in final
    ids = torch.randint(0, zoo.VOCAB, (2, 19), generator=torch.Generator().manual_seed(6))
    loaded = load_model(folder)
    want32 = eager(loaded.module, ids, torch.float32)["logits"]
    eager16 = eager(loaded.module, ids, torch.float16)["logits"].float()
    got = artifact(str(out), "logits", ids)
    err, torch_err = (got - want32).abs().max().item(), (eager16 - want32).abs().max().item()
    assert err <= 2 * torch_err + want32.abs().max().item() * 2**-10, (err, torch_err)


def test_bf16_for_onnx_is_refused_in_one_line(folders, tmp_path, capsys):
    code, stdout, stderr = compile_cli(capsys, folders["bert", "bfloat16"], tmp_path / "out", "--dtype", "bfloat16")
    assert code == 2 and not (tmp_path / "out").exists()
    (line,) = stderr.strip().splitlines()
    assert line.startswith("t2c: error: --dtype bfloat16: ONNX Runtime's CPU provider has no bfloat16")
    assert "use --dtype float32 or float16" in line
