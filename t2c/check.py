"""`t2c check`: a compile's verdicts as one test result per stage, for CI systems.

A compile already compares the IR with eager after every pass and the artifact with
the IR at two shapes (DESIGN §7); `t2c check` reads those comparisons from the
report and gives each stage its own result, so a CI dashboard shows *which* pass
broke numerics instead of one red compile:

    frontend   t2c.frontend  "traced IR vs eager"          the conversion, before any pass
    pass       t2c.pass      "03 fuse-norm", "05 window{size=512}"
               exact passes: the IR after the pass against the IR before it, at the tolerance;
               approximate ones: their drift from eager against their bar and --max-drift
    backend    t2c.backend   "onnx artifact vs IR"         the written artifact against the IR

A failure's message names the worst output and the shape it was seen at. The
judgement is the compile's own (compiler.judge_pass, _judge_traced): the check passes
exactly when `t2c compile` with the same options would.
"""

from __future__ import annotations

import json
import os
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class CheckCase:
    stage: str  # "frontend" | "pass" | "backend" | "validation"
    name: str
    ok: bool
    message: str  # the failure, one line; for a pass that passed, what it measured
    seconds: float = 0.0

    @property
    def classname(self) -> str:
        return f"t2c.{self.stage}"


def _worst(checks: list[dict]) -> tuple[dict, str] | None:
    """(output, shape) of the largest max abs error among the outputs that failed, or None."""
    failed = [(o, c["shape"]) for c in checks for o in c["outputs"] if not o["ok"]]
    return max(failed, key=lambda f: float(f[0]["max_abs"])) if failed else None


def _largest(checks: list[dict]) -> str:
    outs = [(o, c["shape"]) for c in checks for o in c["outputs"]]
    if not outs:
        return "not compared"
    o, shape = max(outs, key=lambda f: float(f[0]["max_abs"]))
    return f"largest difference: output {o['name']!r} max abs {float(o['max_abs']):.3g} at {shape}"


def cases_from_report(report: dict, max_drift: float | None) -> list[CheckCase]:
    """The check's results, read from a compile's report (report.json)."""
    from .compiler import _judge_traced, judge_pass

    cases = []
    traced = report.get("traced_vs_eager", [])
    ok, problem = _judge_traced(traced)
    cases.append(CheckCase("frontend", "traced IR vs eager", ok, _largest(traced) if ok else problem, report["timings"].get("trace", 0.0)))
    for i, rec in enumerate(report["passes"]):
        name = f"{i:02d} {rec['pass']}" + (f"{{{rec['options']}}}" if rec["options"] else "")
        problem = judge_pass(rec, max_drift)
        measured = _largest(rec.get("vs_previous" if rec["exact"] else "vs_eager", []))
        cases.append(CheckCase("pass", name, problem is None, measured if problem is None else problem, rec["seconds"]))
    validation = report["validation"]
    worst = _worst(validation.get("artifact_vs_ir", []))
    target = report["target"]
    if worst is None:
        message = _largest(validation.get("artifact_vs_ir", []))
    else:
        o, shape = worst
        message = f"output {o['name']!r} max abs {float(o['max_abs']):.3g} > atol {o['atol']:g} at {shape}"
    cases.append(CheckCase("backend", f"{target} artifact vs IR", worst is None, message, report["timings"].get("validate", 0.0)))
    if not validation["ok"] and all(c.ok for c in cases):
        # The compile failed on something no single stage owns (e.g. drift that exact passes
        # accumulated past --max-drift): one more result, so the check never passes a failed compile.
        cases.append(CheckCase("validation", "pipeline", False, validation["summary"]))
    return cases


def junit_xml(cases: list[CheckCase], suite: str) -> str:
    """JUnit XML (the schema GitHub, GitLab and Jenkins read): one testsuite, one testcase per result."""
    root = ET.Element("testsuites")
    failures = sum(not c.ok for c in cases)
    total_s = sum(c.seconds for c in cases)
    ts = ET.SubElement(root, "testsuite", name=suite, tests=str(len(cases)), failures=str(failures), errors="0", time=f"{total_s:.3f}")
    for c in cases:
        tc = ET.SubElement(ts, "testcase", classname=c.classname, name=c.name, time=f"{c.seconds:.3f}")
        if c.ok:
            ET.SubElement(tc, "system-out").text = c.message
        else:
            ET.SubElement(tc, "failure", message=c.message, type="NumericsMismatch").text = c.message
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def check_json(cases: list[CheckCase], report: dict) -> str:
    doc = {"ok": all(c.ok for c in cases), "model": report.get("model"), "pipeline": report.get("pipeline"),
           "target": report.get("target"), "cases": [asdict(c) for c in cases], "report": report}
    return json.dumps(doc, indent=2) + "\n"


def write_atomically(path: str, text: str) -> None:
    """Write `path` whole or not at all (a CI step never reads half a file)."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def result_lines(cases: list[CheckCase]) -> str:
    width = max(len(c.name) for c in cases)
    lines = [f"{'PASS' if c.ok else 'FAIL'}  {c.stage:<8} {c.name:<{width}}  {c.message}" for c in cases]
    failed = sum(not c.ok for c in cases)
    lines.append(f"t2c check: {len(cases) - failed} passed, {failed} failed")
    return "\n".join(lines)
