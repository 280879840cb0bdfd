"""Differential fuzzer: random tiny transformers (tests/fuzz/model_space.py) through a random pipeline
and target, each compile held to three references at a fresh input shape.

For each drawn case:
1. `t2c.compile` must succeed with `compiled.ok is True` (its own validation: traced IR vs eager,
   every exact pass, the artifact vs the interpreter at two shapes, the drift bar);
2. at a shape the compile never saw (batch + 2, seq + 4, a new padding pattern) the artifact must
   agree with the IR interpreter (`t2c.ir.run_graph` on the final graph) and with eager PyTorch:
   exact pipelines to the project's tolerance (fp32 1e-4; fp16/bf16 1e-2 / 1.6e-2, else
   FlashAttention's rule: at most twice eager-in-half's error against eager float32, plus atol),
   approximate ones by cosine with eager >= the bar the compile was given.

Any exception other than t2c's `UserError` / `ValidationError` is a bug (an internal error).
A `ValidationError` is always a failure: the pipelines and bars are chosen so that a correct
compile passes. A `UserError` is accepted only for the refusals listed in `ACCEPTED_REFUSALS`.

`T2C_FUZZ_EXAMPLES` sets the number of examples (default: what `make test` can afford);
`T2C_FUZZ_MODE=fuzz` (what `make fuzz` sets) draws fresh random examples, saves each new failure,
shrunk, under tests/fuzz/failures/<hash>.json (run it with `tests/fuzz/reproduce.py FILE`), and
lets failures already saved there pass so that one run can find several bugs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import sys
import tempfile
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.control import current_build_context
from hypothesis.database import DirectoryBasedExampleDatabase

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TRITON_INTERPRET", "1")

from model_space import Spec, build, inputs_at, specs  # noqa: E402

import t2c  # noqa: E402
from t2c.errors import UserError, ValidationError  # noqa: E402
from t2c.ir import DType, run_graph  # noqa: E402
from t2c.precision import module_in  # noqa: E402

HERE = Path(__file__).resolve().parent
FAILURES = HERE / "failures"
EXAMPLES = int(os.environ.get("T2C_FUZZ_EXAMPLES", "6"))
FUZZING = os.environ.get("T2C_FUZZ_MODE", "") == "fuzz"

# Bars for the approximate pipelines: the compile is given them (min_cosine) and the independent
# check applies the same one against eager at the fresh shape. quantize-int8 brings its own
# default bar (cosine 0.99, SQNR 10 dB); the attention rewrites have none (README: judged only by
# the limits you pass), so the fuzzer sets one that a correct rewrite of these tiny models clears
# (measured over random specs; a broken rewrite, e.g. a wrong window or a lost normaliser, does not).
WINDOW_COSINE = 0.5
LINEAR_COSINE = 0.3
INT8_COSINE = 0.99

# UserError refusals accepted as a documented outcome: (message pattern, why). None. The refusals the
# README documents are all outside the space or avoided by construction: `--dtype bfloat16` with
# onnx (the fuzzer never passes --dtype: a bf16 model compiles as float32 for onnx, which is checked),
# quantize-int8 on half weights (-O2 / int8 compile a half model as float32 by the precision policy,
# checked), input shapes that break a constraint (the fresh shape obeys the graph's constraints: the
# models have none), unsafe model files (the fuzzer compiles modules). So every UserError is a failure.
ACCEPTED_REFUSALS: list[tuple[str, str]] = []


@dataclass(frozen=True)
class Case:
    """One fuzz case: a model spec, a pipeline, a target and its flavor (onnx), and the window size."""

    spec: Spec
    pipeline: str
    target: str = "onnx"
    flavor: str | None = "standard"

    @property
    def approximate(self) -> str | None:
        """The approximate pass in the pipeline (window, linear-attention, int8), or None."""
        if "window" in self.pipeline:
            return "window"
        if "linear-attention" in self.pipeline:
            return "linear-attention"
        if "quantize-int8" in self.pipeline or self.pipeline == "-O2":
            return "int8"
        return None

    @property
    def w8a8(self) -> bool:
        return self.pipeline == "-O2" or "w8a8" in self.pipeline

    def to_json(self) -> dict:
        return {"spec": self.spec.to_json(), "pipeline": self.pipeline, "target": self.target, "flavor": self.flavor}

    @classmethod
    def from_json(cls, d: dict) -> "Case":
        return cls(Spec.from_json(d["spec"]), d["pipeline"], d["target"], d.get("flavor"))

    def compile_kwargs(self) -> dict:
        kw: dict = {"passes": self.pipeline, "target": self.target}
        if self.flavor is not None:
            kw["flavor"] = self.flavor
        if self.approximate == "window":
            kw["min_cosine"] = WINDOW_COSINE
        elif self.approximate == "linear-attention":
            kw["min_cosine"] = LINEAR_COSINE
        return kw

    def __str__(self) -> str:
        flavor = f" --flavor {self.flavor}" if self.flavor else ""
        return f"{self.pipeline} --target {self.target}{flavor} on {self.spec}"


# Triton runs under TRITON_INTERPRET=1 on this CPU: only small models, where a compile stays seconds.
TRITON_MAX_SIZE = 2 * 6 * 32


@st.composite
def cases(draw) -> Case:
    spec = draw(specs())
    pipeline = draw(st.sampled_from([
        "-O0", "-O1", "-O2", "window", "-O1,linear-attention",
        "-O1,quantize-int8{mode=w8a8}", "-O1,quantize-int8{mode=weight_only}"]))
    if pipeline == "window":
        pipeline = f"-O1,window{{size={draw(st.integers(1, 16))}}}"
    targets = ["onnx/standard", "onnx/ort"] + (["triton"] if spec.size <= TRITON_MAX_SIZE else [])
    target = draw(st.sampled_from(targets))
    if target == "triton":
        return Case(spec, pipeline, "triton", None)
    return Case(spec, pipeline, "onnx", target.split("/")[1])


# ---- the comparisons ------------------------------------------------------------------------

FP32_TOL = (1e-4, 1e-4)
HALF_TOL = (1e-2, 1.6e-2)


def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    d = (a.double() - b.double()).abs()
    both_nan = torch.isnan(a) & torch.isnan(b)
    d = torch.where(both_nan, torch.zeros_like(d), d).nan_to_num(math.inf)
    return float(d.max()) if d.numel() else 0.0


def _close(got: torch.Tensor, want: torch.Tensor, tol: tuple[float, float]) -> bool:
    atol, rtol = tol
    d = (got.double() - want.double()).abs()
    both_nan = torch.isnan(got) & torch.isnan(want)
    d = torch.where(both_nan, torch.zeros_like(d), d).nan_to_num(math.inf)
    return bool((d <= atol + rtol * want.double().abs().nan_to_num(0.0)).all())


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().reshape(-1).nan_to_num(), b.double().reshape(-1).nan_to_num()
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else float(a.norm() == b.norm())


def assert_matches(what: str, got: torch.Tensor, want: torch.Tensor, fp32: torch.Tensor | None) -> None:
    """`got` within tolerance of `want` (the dtype's); a half `want` may instead pass FlashAttention's
    rule against `fp32` (a float32 run of the same function): error <= 2 x want's own + atol."""
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    half = want.dtype in (torch.float16, torch.bfloat16)
    tol = HALF_TOL if half else FP32_TOL
    if _close(got, want, tol):
        return
    if half and fp32 is not None:
        err, ref = _max_abs(got, fp32), _max_abs(want, fp32)
        assert err <= 2 * ref + tol[0], (f"{what}: max abs {_max_abs(got, want):.3g} over tolerance, and against float32 "
                                         f"{err:.3g} > 2 x {ref:.3g} + {tol[0]}")
        return
    raise AssertionError(f"{what}: max abs {_max_abs(got, want):.3g} > atol {tol[0]} + rtol {tol[1]} "
                         f"(cosine {cosine(got, want):.6f})")


def fresh_inputs(spec: Spec) -> dict[str, torch.Tensor]:
    """A shape no compile validated at (t2c's second shape is batch + 1, seq x 1.5 + 1)."""
    return inputs_at(spec, spec.batch + 2, spec.seq + 4, seed=spec.seed + 1)


def window_size(case: Case) -> int | None:
    m = re.search(r"window\{size=(\d+)", case.pipeline)
    return int(m.group(1)) if m else None


def check(case: Case, out_dir: str | None = None) -> str:
    """Compile `case` and hold it to eager, the interpreter and its own validation; raise on any
    disagreement. Returns "ok" or "refused: ..." for an accepted UserError."""
    spec = case.spec
    model, examples = build(spec)
    with tempfile.TemporaryDirectory(prefix="t2c-fuzz-") as tmp:
        try:
            compiled = t2c.compile(model, examples, out=out_dir or os.path.join(tmp, "out"), **case.compile_kwargs())
        except UserError as e:
            reason = accepted_refusal(case, e)
            if reason is None:
                raise
            return f"refused: {reason}"
        assert compiled.ok is True, f"t2c's own validation: {compiled.report.get('validation', {}).get('summary')}"

        inputs = fresh_inputs(spec)
        with torch.no_grad():
            got = compiled(**inputs)["output"]
            ir = run_graph(compiled.graph, inputs)["output"]
            ir32 = run_graph(compiled.graph, inputs, upcast=True)["output"] if ir.dtype in (torch.float16, torch.bfloat16) else None
            eager_native = model(**inputs)
            # eager float32 on the same (half) weights: FlashAttention's reference, and the eager a
            # float32 artifact of a half model computes (onnx runs bf16 as fp32; int8 quantizes fp32)
            eager32 = module_in(model, DType.F32)(**inputs) if spec.dtype != "float32" else None
        eager = eager32 if eager32 is not None and got.dtype == torch.float32 else eager_native

        # the artifact against the interpreter on the final IR
        if case.w8a8:
            c = cosine(got, ir)
            assert c >= INT8_COSINE, f"artifact vs interpreter (w8a8): cosine {c:.6f} < {INT8_COSINE}"
        else:
            assert_matches("artifact vs interpreter", got, ir, ir32)

        # the artifact against eager
        approx = case.approximate
        w = window_size(case)
        if approx == "window" and w is not None and w >= spec.seq + 4:
            approx = None  # the window covers every position: the rewrite is exact (README, pass table)
        if approx is None:
            assert_matches("artifact vs eager", got, eager, eager32)
        else:
            bar = {"window": WINDOW_COSINE, "linear-attention": LINEAR_COSINE, "int8": INT8_COSINE}[approx]
            c = cosine(got, eager32 if eager32 is not None else eager)
            assert c >= bar, f"artifact vs eager ({approx}): cosine {c:.6f} < bar {bar}"
    return "ok"


def accepted_refusal(case: Case, error: UserError) -> str | None:
    """The documented refusal `error` is, or None when it is not one (then it is a failure)."""
    for pattern, why in ACCEPTED_REFUSALS:
        if re.search(pattern, str(error)):
            return why
    return None


# ---- reproducers ----------------------------------------------------------------------------


def fingerprint(case: Case, error: BaseException | str) -> str:
    """What makes two failures the same bug: the error's type, its message's first line with numbers
    blanked, and the target (not the pipeline: one lowering bug shows under many). `error` may be a saved
    "Type: message" string."""
    if isinstance(error, BaseException):
        error = f"{type(error).__name__}: {error}"
    kind_name, _, message = error.partition(": ")
    message = re.sub(r"[-+]?\d[\d.e+-]*", "N", message.splitlines()[0] if message else "")
    return f"{kind_name}|{message[:160]}|{case.target}"


OPEN_BUGS = HERE / "open_bugs"  # committed reproducers of bugs found and not fixed yet (see each file's "bug")


def known_fingerprints() -> set[str]:
    """Failures saved by earlier fuzz runs and the open bugs: fuzz mode lets these pass to find others."""
    files = [*FAILURES.glob("*.json"), *OPEN_BUGS.glob("*.json")]
    return {json.loads(p.read_text()).get("fingerprint", "") for p in files}


def save_reproducer(case: Case, error: BaseException) -> Path:
    record = case.to_json()
    record["fingerprint"] = fingerprint(case, error)
    record["error"] = f"{type(error).__name__}: {error}"
    record["traceback"] = "".join(traceback.format_exception(type(error), error, error.__traceback__))[-4000:]
    digest = hashlib.sha1(json.dumps(case.to_json(), sort_keys=True).encode()).hexdigest()[:12]
    FAILURES.mkdir(exist_ok=True)
    path = FAILURES / f"{digest}.json"
    path.write_text(json.dumps(record, indent=2) + "\n")
    return path


# make test: derandomized (the same examples every run), no database. Fuzz mode: fresh randomness, and
# hypothesis's example database under failures/ (gitignored) so that a rerun replays what failed.
@settings(max_examples=EXAMPLES, deadline=None, derandomize=not FUZZING,
          database=DirectoryBasedExampleDatabase(str(FAILURES / ".hypothesis")) if FUZZING else None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large], print_blob=True)
@given(case=cases())
def test_compiled_model_matches_eager_and_interpreter(case: Case):
    event(f"pipeline {re.sub(r'{.*?}', '', case.pipeline)}, target {case.target}")
    try:
        result = check(case)
    except Exception as error:
        if not FUZZING:
            raise
        if fingerprint(case, error) in known_fingerprints():
            event("known failure (saved earlier)")
            return
        if current_build_context().is_final:  # hypothesis replays the shrunk example last: save that one
            path = save_reproducer(case, error)
            print(f"\nreproducer saved: {path} (run: .venv/bin/python tests/fuzz/reproduce.py {path})")
        raise
    event(result.split(":")[0])
