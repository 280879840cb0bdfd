"""`t2c check`: one result per stage (frontend, each pass, the artifact), JUnit and JSON, exit codes."""

from __future__ import annotations

import json
import os
import re
import shlex
import xml.etree.ElementTree as ET


from t2c.check import cases_from_report
from t2c.cli import main
from t2c.passes import PRESETS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
EXAMPLE = os.path.join(ROOT, "examples", "tiny_moe_transformer.py") + ":build"
ZOO = os.path.join(ROOT, "examples", "zoo.py")


def run(capsys, *args):
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def junit_cases(path) -> list[ET.Element]:
    suite = ET.parse(path).getroot().find("testsuite")
    cases = suite.findall("testcase")
    assert int(suite.get("tests")) == len(cases)
    assert int(suite.get("failures")) == sum(c.find("failure") is not None for c in cases)
    return cases


def test_a_passing_pipeline_gives_one_passing_case_per_pass(capsys, tmp_path):
    junit, js = tmp_path / "ci" / "t2c.xml", tmp_path / "t2c.json"
    code, out, err = run(capsys, "check", EXAMPLE, "-p", "-O1", "--junit", str(junit), "--json", str(js))
    assert code == 0, err
    cases = junit_cases(junit)
    names = [(c.get("classname"), c.get("name")) for c in cases]
    want_passes = [("t2c.pass", f"{i:02d} {p}") for i, p in enumerate(PRESETS["O1"])]
    assert names == [("t2c.frontend", "traced IR vs eager")] + want_passes + [("t2c.backend", "onnx artifact vs IR")]
    assert all(c.find("failure") is None for c in cases)
    doc = json.loads(js.read_text())
    assert doc["ok"] is True and len(doc["cases"]) == len(cases) and doc["report"]["validation"]["ok"] is True
    assert out.strip().splitlines()[-1] == f"t2c check: {len(cases)} passed, 0 failed"
    assert sorted(os.listdir(tmp_path)) == ["ci", "t2c.json"]  # no artifact kept without -o


def test_the_pass_that_breaks_numerics_is_the_failing_case(capsys, tmp_path):
    junit = tmp_path / "t2c.xml"
    code, out, err = run(capsys, "check", f"{ZOO}:mistral", "-p", "lift-attention,window{size=2},dce",
                         "--max-drift", "1e-3", "--junit", str(junit), "-o", str(tmp_path / "art"))
    assert code == 1
    failed = [c for c in junit_cases(junit) if c.find("failure") is not None]
    assert [c.get("name") for c in failed] == ["01 window{size=2}"]
    message = failed[0].find("failure").get("message")
    assert re.search(r"output 'logits' drifts [0-9.e-]+ from eager > --max-drift 0.001 at input_ids=\d+x\d+", message), message
    assert "1 of 5 checks failed" in err and err.count("\n") == 1
    assert not (tmp_path / "art").exists()  # a failed check keeps no artifact


def test_bad_input_exits_2_and_writes_nothing(capsys, tmp_path):
    junit = tmp_path / "t2c.xml"
    code, _, err = run(capsys, "check", str(tmp_path / "missing.py") + ":build", "--junit", str(junit))
    assert code == 2 and "no such file" in err
    code, _, err = run(capsys, "check", EXAMPLE, "--junit", str(tmp_path))
    assert code == 2 and "is a directory" in err
    assert os.listdir(tmp_path) == []


def _record(name, exact, vs_previous_ok=True, drift=0.0):
    out = lambda ok, err: {"name": "logits", "max_abs": err, "atol": 1e-5, "ok": ok}  # noqa: E731
    return {"pass": name, "options": "", "exact": exact, "seconds": 0.01,
            "vs_previous": [{"shape": "input_ids=2x8", "outputs": [out(vs_previous_ok, 0.0 if vs_previous_ok else 0.25)]}],
            "vs_eager": [{"shape": "input_ids=2x8", "outputs": [out(True, drift)]}]}


def _report(passes, validation_ok=True, summary="ok"):
    traced = [{"shape": "input_ids=2x8", "outputs": [{"name": "logits", "max_abs": 0.0, "atol": 1e-5, "ok": True}]}]
    return {"traced_vs_eager": traced, "passes": passes, "target": "onnx", "timings": {},
            "validation": {"ok": validation_ok, "summary": summary, "artifact_vs_ir": traced}}


def test_an_exact_pass_that_changes_outputs_fails_with_the_output_and_shape():
    cases = cases_from_report(_report([_record("cse", True), _record("fuse-norm", True, vs_previous_ok=False)], False), None)
    assert [c.ok for c in cases] == [True, True, False, True]
    assert cases[2].message == "exact pass 'fuse-norm' changed output 'logits' by 0.25 (> atol 1e-05) at input_ids=2x8"


def test_an_exact_pass_is_not_blamed_for_drift_it_inherits():
    records = [_record("window", False, drift=0.5), _record("dce", True, drift=0.5)]
    cases = cases_from_report(_report(records, False, "drift"), 0.1)
    assert [(c.name, c.ok) for c in cases[1:3]] == [("00 window", False), ("01 dce", True)]


def test_a_failed_compile_no_stage_owns_still_fails_the_check():
    cases = cases_from_report(_report([_record("cse", True)], False, "exact passes drifted 0.2 > --max-drift 0.1"), None)
    assert cases[-1].stage == "validation" and not cases[-1].ok and "max-drift" in cases[-1].message


def test_the_example_ci_workflow_runs_as_written(capsys, tmp_path, monkeypatch):
    """examples/ci/github-actions.yml's `t2c check` step, with its env, run here from the repo root."""
    text = open(os.path.join(ROOT, "examples", "ci", "github-actions.yml"), encoding="utf-8").read()
    env = dict(re.findall(r"^\s+(MODEL|PIPELINE): (.+)$", text, re.M))
    (command,) = re.findall(r"^\s+run: (t2c check .+)$", text, re.M)
    argv = [os.path.expandvars(a) for a in shlex.split(command.replace('"$MODEL"', env["MODEL"]).replace('"$PIPELINE"', env["PIPELINE"]))]
    monkeypatch.chdir(tmp_path)
    argv[2] = os.path.join(ROOT, argv[2])  # the workflow runs in the project's checkout
    code, out, err = run(capsys, *argv[1:])
    assert code == 0, err
    assert len(junit_cases(tmp_path / "t2c-check.xml")) == len(PRESETS["O1"]) + 2
    assert json.loads((tmp_path / "t2c-check.json").read_text())["ok"] is True
