"""`t2c compile -O2` and the int8 options on the command line: the report, --calibrate, the drift bar's exit code."""

import json
import os

import pytest

from t2c.cli import main
from test_compile import ROOT, run  # the CLI runner the compile tests use

LLAMA = os.path.join(ROOT, "examples", "zoo.py") + ":llama"


def test_O2_compiles_and_reports_the_drift(tmp_path, capsys):
    code, out, err = run(capsys, "compile", LLAMA, "-O2", "-o", str(tmp_path / "o2"))
    assert code == 0, err
    assert "quantize-int8" in out and "lowest layer SQNR: model.layers." in out
    # -O2 is W8A8: without --calibrate, SmoothQuant's statistics come from generated inputs, and it says so
    assert "warning: quantize-int8{mode=w8a8}: no calibration data" in out
    report = json.loads((tmp_path / "o2" / "report.json").read_text())
    record = report["passes"][-1]
    assert record["pass"] == "quantize-int8" and not record["exact"] and record["stats"]["quantized_linear"] == 14
    assert record["options"] == "mode=w8a8"
    assert record["bar"]["min_cosine"] == 0.99 and len(record["worst_layers"]) == 3
    assert report["validation"]["ok"] is True
    assert "quantize-int8" in (tmp_path / "o2" / "report.html").read_text()


def test_w8a8_with_calibration_and_a_bar_it_misses(tmp_path, capsys):
    ids = tmp_path / "ids.txt"
    ids.write_text("1 5 9 13 17 21 25 29\n3 1 4 1 5 9 2 6 5 3 5\n")
    passes = "-O1,quantize-int8{mode=w8a8}"
    code, out, err = run(capsys, "compile", LLAMA, "--passes", passes, "--calibrate", str(ids), "-o", str(tmp_path / "w"))
    assert code == 0, err
    report = json.loads((tmp_path / "w" / "report.json").read_text())
    assert report["passes"][-1]["stats"]["calibration_batches"] == 2 and "warnings" not in report
    assert "quantized activations" in report["validation"]["artifact_policy"] or "cosine" in out
    code, out, err = run(capsys, "compile", LLAMA, "--passes", passes, "--min-cosine", "0.9999999", "-o", str(tmp_path / "strict"))
    assert code == 1 and "min-cosine" in err and not (tmp_path / "strict").exists()
    code, out, err = run(capsys, "compile", LLAMA, "--passes", passes, "--calibrate", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "x"))
    assert code == 2 and "does not exist" in err


@pytest.mark.parametrize("option", ["--min-cosine", "--min-sqnr", "--min-token-agreement", "--calibrate"])
def test_help_lists_the_int8_options(option, capsys):
    assert main(["compile", "--help"]) == 0
    assert option in capsys.readouterr().out
