"""The main job, top to bottom: trace, run passes, lower, validate, write the folder.

    trace     the loaded module becomes an IR graph (dynamic batch/seq unless static)
    passes    one pass at a time, each result checked against eager (its drift); then the final IR's
              outputs at every shape, which validate compares the artifact with
    lower     the final IR becomes the target's artifact (the backend registry names the targets)
    validate  the artifact, loaded back by its backend, against the IR interpreter, at two shapes
    write     the artifact, model.t2c, report.json, report.html appear in OUT at once

Nothing is written to OUT unless every step succeeded: the files are made in a
temporary folder beside OUT and renamed into place at the end.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import torch

from . import __version__
from .backends import DEFAULT_TARGET, Backend, get_backend
from .errors import UserError, ValidationError
from .frontends.loaders import LoadedModel
from .frontends.torch_export import flatten_outputs, trace
from .fusion_report import fusion_report
from .ir import Graph, print_graph, run_graph, verify
from .drift import layer_drift, run_layers, worst_layers
from .passes.calibration import Calibration, calibrating, load_calibration
from .passes.manager import Pipeline
from .precision import Precision, choose as choose_precision, graph_inputs, inputs_in, module_in
from .precision import NAMES as _DTYPE_NAMES
from .ir.states import adapt_references
from .validate import HALF_DTYPES, DriftBar, OutputComparison, compare_all, judge_half_by_fp32, noisy_artifact, page_out_mapped, second_shape_candidates, shape_label, worst

@dataclass
class CompileOptions:
    """What `t2c compile` was asked to do. `target_options` are the chosen backend's own (by name)."""

    pipeline: Pipeline = field(default_factory=lambda: Pipeline.preset("O1"))
    target: str = DEFAULT_TARGET
    target_options: dict[str, Any] = field(default_factory=dict)
    static: bool = False
    validate: bool = True
    max_drift: float | None = None
    # Limits for approximate passes (None: each pass's own default, `Pass.drift_bar`).
    min_cosine: float | None = None
    min_sqnr: float | None = None
    min_token_agreement: float | None = None
    calibrate: str | None = None  # calibration inputs for passes that measure activations (passes/calibration.py)
    dtype: str | None = None  # float32 | float16 | bfloat16; None: the checkpoint's where the target runs it (precision.py)
    # Compare the IR after every pass (t2c check); otherwise a run of exact passes is compared once,
    # after its last pass, and pass by pass only when that comparison fails (_run_passes).
    per_pass: bool = False

    @property
    def backend(self) -> Backend:
        return get_backend(self.target)

    def backend_options(self) -> Any:
        """The backend's Options dataclass; UserError on unknown options or bad values."""
        return self.backend.make_options(self.target_options)

    def check(self) -> None:
        self.backend_options()

    def drift_bar(self, p) -> DriftBar:
        """The limits approximate pass `p` is judged by: the user's, else the pass's defaults (p None: the pipeline's)."""
        defaults: dict[str, float] = {}
        for q in [p] if p is not None else [q for q in self.pipeline.passes if not type(q).exact]:
            for key, value in type(q).drift_bar.items():  # the strictest default of the passes
                defaults[key] = max(defaults.get(key, value), value)
        given = {"min_cosine": self.min_cosine, "min_sqnr": self.min_sqnr, "min_token_agreement": self.min_token_agreement}
        return DriftBar(**{k: v if v is not None else defaults.get(k) for k, v in given.items()})


@dataclass
class CompileResult:
    """What a compile produced: the folder, the final IR and the report."""

    out_dir: str
    graph: Graph
    report: dict


Progress = Callable[[str, str], None]  # (stage, message)


def _quiet(stage: str, message: str) -> None:
    return None


@contextmanager
def _stage(report: dict, name: str, progress: Progress) -> Iterator[None]:
    progress(name, "start")
    t0 = time.perf_counter()
    yield
    seconds = time.perf_counter() - t0
    report["timings"][name] = round(seconds, 4)
    progress(name, f"done in {seconds:.2f}s")


def eager_outputs(module: torch.nn.Module, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        names, values = flatten_outputs(module(**inputs))
    return dict(zip(names, values))


def _second_shape(module: torch.nn.Module, graph: Graph, examples: dict[str, torch.Tensor]):
    """(inputs, eager outputs) at the first other shape the eager model accepts, or None.

    The dynamic dims promise other shapes work; a model may still refuse some (a
    position table as long as the example, inputs whose values obey rules), and
    that is the model's limit, not a failure to report as one.
    """
    for candidate in second_shape_candidates(graph, examples):
        if all(tuple(candidate[k].shape) == tuple(examples[k].shape) for k in examples):
            continue  # no dynamic dim: nothing new to learn at this shape
        try:
            return candidate, eager_outputs(module, candidate)
        except Exception:  # noqa: BLE001 - the model refuses this shape; try the next
            continue
    return None


def _traced_static(graph: Graph, dynamic: dict[str, dict[int, str]], examples: dict[str, torch.Tensor]) -> list[str]:
    """`seq = 128` for each dynamic label no input dim of the traced graph keeps symbolic."""
    kept = {d.expr for v in graph.inputs for d in v.type.shape if hasattr(d, "expr")}
    kept |= {s.rstrip("0123456789") for s in kept}
    out = {}
    for v in graph.inputs:
        for axis, label in dynamic.get(v.name, {}).items():
            if label not in kept and axis < v.type.rank and isinstance(v.type.shape[axis], int) and v.name in examples:
                out.setdefault(label, f"{label} = {v.type.shape[axis]}")
    return list(out.values())


def compile_loaded(loaded: LoadedModel, options: CompileOptions, out_dir: str, *, progress: Progress = _quiet) -> CompileResult:
    """Compile a loaded model into `out_dir`; raises ValidationError (exit 1) or UserError (exit 2)."""
    backend, target_options = options.backend, options.backend_options()
    report: dict[str, Any] = {
        "t2c_version": __version__, "model": loaded.source, "target": backend.name, "target_options": dataclasses.asdict(target_options),
        "pipeline": str(options.pipeline), "static": options.static, "timings": {},
    }
    if loaded.with_past is not None:  # generate() reads the cache interface from here
        report["with_past"] = loaded.with_past
    module = loaded.module.eval()
    examples = dict(loaded.example_inputs)

    with _stage(report, "trace", progress):
        dynamic = {} if options.static else loaded.dynamic_dims
        graph = trace(module, examples, dynamic, name=type(module).__name__)
        verify(graph)
    if graph.constraint_lines():  # what the inputs' dynamic dims must obey (`seq % 4 == 0`, `seq <= 2048`): other sizes are refused
        report["constraints"] = graph.constraint_lines()
    static = _traced_static(graph, dynamic, examples)
    if static:  # torch.export pinned a dim asked to be dynamic (BigBird's block-sparse plan fixes seq): say so
        report.setdefault("warnings", []).append(
            "traced with a static " + ", ".join(static) + " although asked dynamic: the model's code fixes it; other sizes need another compile")
    report["op_counts"] = {"traced": graph.op_counts()}
    report["node_count"] = {"traced": len(graph.nodes)}

    # precision: the checkpoint's dtype where the target computes it, else float32 (or --dtype);
    # a conversion is one more pass, cast-precision, placed where the graph is widest.
    precision = choose_precision(graph, options.pipeline, backend, options.dtype, options.validate)
    options = dataclasses.replace(options, pipeline=precision.place(options.pipeline))
    report["pipeline"] = str(options.pipeline)
    report["precision"] = precision.as_json()

    shapes, eager = [examples], []
    references: dict[str, list] = {}
    if options.validate:
        eager.append(eager_outputs(module, examples))
        second = _second_shape(module, graph, examples) if graph.symbols() else None
        if second is None and graph.symbols():
            report.setdefault("warnings", []).append(
                "validated at the traced shape only: the eager model refused every other shape t2c tried")
        elif second is not None:
            shapes.append(second[0])
            eager.append(second[1])
        references = _eager_references(module, precision, shapes, eager, report)
    traced_reference = eager  # the model in its own dtype: what the traced IR must reproduce
    eager = references.get(str(precision.primary), eager)

    calibration = Calibration(load_calibration(options.calibrate, graph), source=options.calibrate) if options.calibrate else Calibration()
    with _stage(report, "passes", progress), calibrating(calibration):
        graph, report["passes"], report["traced_vs_eager"] = _run_passes(graph, options, shapes, eager, progress, traced_reference)
        # What the artifact must reproduce, run while the weights are resident: lowering a >1 GiB
        # model pages out each weight it writes (backends/onnx/external.py) and validation pages out
        # the rest before the backend loads its own copy (validate.page_out_mapped).
        ir_runs = _ir_runs(graph, shapes) if options.validate else None
    if calibration.notes:
        report.setdefault("warnings", []).extend(calibration.notes)
    if graph.states and "with_past" in report:  # layers whose KV cache a decode state replaced
        states = {v.name: [str(d) for d in v.type.shape] for v in graph.inputs if v.name in graph.states}
        report["with_past"] = {**report["with_past"], "states": states}
    report["op_counts"]["final"] = graph.op_counts()
    report["node_count"]["final"] = len(graph.nodes)
    report["fusion"] = fusion_report(graph)

    with _stage(report, "lower", progress):
        artifact = backend.lower(graph, target_options)

    tmp = tempfile.mkdtemp(prefix=".t2c-", dir=_parent(out_dir))
    try:
        with _stage(report, "write", progress):
            backend.save(artifact, tmp, target_options)
            with open(os.path.join(tmp, "model.t2c"), "w", encoding="utf-8") as f:
                f.write(print_graph(graph))
        if options.validate:
            with _stage(report, "validate", progress):
                # The weights' file-mapped pages (a safetensors checkpoint, which the IR's params share) leave
                # resident memory before the backend loads its own copy: the two are never resident at once.
                page_out_mapped([*graph.params.values(), *module.parameters(), *module.buffers()])
                runner = backend.load(tmp, target_options)
                report["validation"] = _validate_artifact(runner, graph, shapes, options, report["passes"], precision, references, report["traced_vs_eager"],
                                                          ir_runs=ir_runs)
                del runner, ir_runs
        else:
            report["validation"] = {"ok": None, "skipped": True}
        if "vs_eager_dtypes" in report["validation"]:
            report["precision"]["references"] = report["validation"].pop("vs_eager_dtypes")
        _write_reports(report, tmp)
        validation = report["validation"]
        if options.validate and not validation["ok"]:
            raise ValidationError(validation["summary"], report=report)
        _replace_dir(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return CompileResult(out_dir, graph, report)


def _run_passes(graph: Graph, options: CompileOptions, shapes, eager, progress: Progress, traced_reference=()):
    """Run the pipeline; the IR is compared with eager (the drift so far) and with the IR before
    (what changed: exact passes must change nothing) after every approximate pass and after the
    last of each run of exact passes. Such a comparison covers the whole run of exact passes; only
    when it fails are they run again from the graph before them, one comparison per pass, so the
    one that broke numerics is named. `options.per_pass` compares after every pass (t2c check).

    Returns (graph, pass records, the traced IR against `traced_reference`: eager in the
    checkpoint's dtype, the frontend's own exactness)."""
    records = []
    passes = options.pipeline.passes
    traced_graph, fp32_runs = graph, {}

    def exact(i: int) -> bool:
        return i >= len(passes) or type(passes[i]).exact

    def compared(k: int, g: Graph, now, want) -> list[dict]:
        # A half-precision output the tolerance refuses: FlashAttention's rule against the traced IR
        # run in float32 (checked against eager before any pass), as for the artifact.
        if g.states:  # a decode state replaced a KV cache: the references' cache outputs as that state
            want = adapt_references(g, shapes[k], want)
        comparisons = compare_all(now, want)
        if any(not c.ok and want[c.name].dtype in HALF_DTYPES for c in comparisons) and k not in fp32_runs:
            fp32_runs[k] = run_graph(traced_graph, graph_inputs(traced_graph, shapes[k]), upcast=True)
        fp32 = fp32_runs.get(k)
        if fp32 is not None and g.states:
            fp32 = adapt_references(g, shapes[k], fp32)
        return [c.as_json() for c in _half_judged(comparisons, now, want, fp32)]

    def measure(i: int, g: Graph, entry: dict, before, layers_before):
        """Compare the IR after pass i with eager and with `before`; (outputs, layer results)."""
        current, layers_after, ops = _run_ir(g, shapes, not exact(i) or not exact(i + 1))
        if not exact(i):
            entry["bar"] = options.drift_bar(passes[i]).as_json()
            entry["layers"] = layer_drift(layers_before, layers_after, ops)
            entry["worst_layers"] = worst_layers(entry["layers"])
        entry["vs_eager"] = [{"shape": shape_label(inp), "outputs": compared(k, g, now, want)}
                             for k, (inp, now, want) in enumerate(zip(shapes, current, eager))]
        entry["vs_previous"] = [{"shape": shape_label(inp), "outputs": compared(k, g, now, b)}
                                for k, (inp, now, b) in enumerate(zip(shapes, current, before))]
        return current, layers_after

    previous, layers_before, _ = _run_ir(graph, shapes, bool(eager) and bool(passes) and not exact(0))
    traced = [
        {"shape": shape_label(inp), "outputs": [c.as_json() for c in compare_all(now, want)]}
        for inp, now, want in zip(shapes, previous, traced_reference)
    ]
    unchecked: list[int] = []  # exact passes run since the last comparison
    before_unchecked = graph
    for i, p in enumerate(passes):
        defer = bool(eager) and not options.per_pass and exact(i) and i + 1 < len(passes) and exact(i + 1)
        if defer and not unchecked:
            before_unchecked = graph.copy()  # to run this stretch of exact passes again if it fails
        graph, (record,) = Pipeline((p,)).run(graph, verify_each=True)
        entry = {
            "pass": record.name, "options": record.options_str, "exact": type(p).exact, "changed": record.changed,
            "stats": record.stats, "seconds": round(record.seconds, 6),
            "nodes_before": record.node_count_before, "nodes_after": record.node_count_after,
        }
        records.append(entry)
        progress("passes", f"{record.name}: {record.node_count_before} -> {record.node_count_after} nodes")
        if not eager:
            continue
        if defer:
            unchecked.append(i)
            continue
        current, layers_after = measure(i, graph, entry, previous, layers_before)
        stretch = unchecked + [i]
        unchecked = []
        if len(stretch) > 1:
            if all(o["ok"] for c in entry["vs_previous"] for o in c["outputs"]):
                entry["covers"] = [records[j]["pass"] for j in stretch]
            else:  # name the pass that broke numerics: the stretch again, one comparison each
                g, before = before_unchecked, previous
                for j in stretch:
                    g, _ = Pipeline((passes[j],)).run(g, verify_each=True)
                    before, _ = measure(j, g, records[j], before, None)
        previous, layers_before = current, layers_after
    return graph, records, traced


def _run_ir(graph: Graph, shapes, probe: bool):
    """(outputs per shape, layer results per shape or None, layer ops) from the interpreter."""
    if not shapes:
        return [], None, {}
    shapes = [graph_inputs(graph, inp) for inp in shapes]  # float inputs in the dtypes the graph now takes
    if not probe:
        return [run_graph(graph, inp) for inp in shapes], None, {}
    return run_layers(graph, shapes)


def _eager_references(module, precision: Precision, shapes, eager, report: dict) -> dict[str, list]:
    """{IR dtype name: eager outputs per shape} for each dtype precision.references() names.

    The checkpoint's is the model as loaded; the others run a copy converted with
    `module.to(dtype)` (float inputs converted alike). A reference the model cannot
    run in is left out, with a warning.
    """
    out = {str(precision.checkpoint): eager}
    for dtype in precision.references()[1:]:
        try:
            copy = module_in(module, dtype)
            out[str(dtype)] = [eager_outputs(copy, inputs_in(inp, dtype)) for inp in shapes]
            del copy
        except Exception as e:  # noqa: BLE001 - a reference is extra information, never the validation itself
            report.setdefault("warnings", []).append(f"no eager {dtype_name(str(dtype))} reference: the model did not run in {dtype_name(str(dtype))} ({type(e).__name__}: {str(e)[:120]})")
    return out


def _ir_runs(graph: Graph, shapes) -> list[tuple[dict, dict]]:
    """(inputs in the graph's dtypes, the interpreter's outputs) at every shape: what the artifact must reproduce."""
    runs = []
    for inp in shapes:
        inp = graph_inputs(graph, inp)
        runs.append((inp, run_graph(graph, inp)))
    return runs


def _validate_artifact(runner, graph: Graph, shapes, options: CompileOptions, pass_records,
                       precision: Precision | None = None, references: dict | None = None, traced=(), *, ir_runs=None) -> dict:
    """Artifact vs interpreter at every shape, plus the exactness of exact passes vs eager.

    `ir_runs` are `_ir_runs(graph, shapes)` when the caller ran the interpreter before loading the artifact.

    With eager references in several dtypes (precision.py), the artifact's outputs are also
    compared with each of them (`precision.references` in the report): measured, not judged;
    the judged drift is the passes' against the primary reference.
    """
    checks = []
    all_comparisons: list[OutputComparison] = []
    # Dynamically quantized activations: one float rounding difference upstream flips one
    # activation's rounding and the difference grows into quantization noise, so the artifact
    # is held to the approximate bar (cosine) instead of float tolerance (validate.noisy_artifact).
    noisy = noisy_artifact(graph, options.drift_bar(None))
    artifact_outputs = []
    for inp, want in ir_runs if ir_runs is not None else _ir_runs(graph, shapes):
        got = runner(**inp)
        artifact_outputs.append(got)
        comparisons = compare_all(got, want)
        if noisy is not None:
            comparisons = [noisy.judge(c) for c in comparisons]
        comparisons = _half_by_fp32(graph, inp, got, want, comparisons)
        all_comparisons += comparisons
        checks.append({"shape": shape_label(inp), "outputs": [c.as_json() for c in comparisons]})
    ok = all(c.ok for c in all_comparisons)
    summary = "ok"
    bad = worst(all_comparisons)
    if bad is not None:
        summary = f"the {options.target} artifact differs from the IR: output {bad.name!r} max abs error {bad.max_abs:.3g} > atol {bad.atol:g} (rtol {bad.rtol:g})"
        if bad.fp32_error is not None:
            summary += f", and by {bad.fp32_error:.3g} from a float32 run of the IR, more than twice the IR's own {bad.reference_fp32_error:.3g} + atol"
        if noisy is not None:
            summary = f"the {options.target} artifact differs from the IR beyond quantization noise: output {bad.name!r} cosine {bad.cosine:.6f} < {noisy.min_cosine:g}"
    drift_ok, drift_summary = _judge_traced(traced)
    if drift_ok:
        drift_ok, drift_summary = _judge_drift(pass_records, options)
    if ok and not drift_ok:
        summary = drift_summary
    result = {"ok": ok and drift_ok, "summary": summary, "artifact_vs_ir": checks, "max_drift": options.max_drift}
    if noisy is not None:
        result["artifact_policy"] = noisy.describe()
    if precision is not None and references and len(references) > 1:
        result["vs_eager_dtypes"] = [
            {"reference": f"eager {dtype_name(dtype)}" + (" (the checkpoint)" if dtype == str(precision.checkpoint) else ""),
             "dtype": dtype_name(dtype), "primary": dtype == str(precision.primary),
             "checks": [{"shape": shape_label(inp), "outputs": [c.as_json() for c in compare_all(got, adapt_references(graph, inp, want))]}
                        for inp, got, want in zip(shapes, artifact_outputs, outs)]}
            for dtype, outs in references.items()
        ]
    return result


def dtype_name(ir_name: str) -> str:
    """float32 for f32: the names `--dtype` takes."""
    return next((n for d, n in _DTYPE_NAMES.items() if str(d) == ir_name), ir_name)


def _half_by_fp32(graph: Graph, inp, got, want, comparisons: list[OutputComparison]) -> list[OutputComparison]:
    """Half-precision outputs the elementwise tolerance refuses, judged again by FlashAttention's rule
    against a float32 run of the IR (validate.judge_half_by_fp32); others unchanged."""
    if all(c.ok or want[c.name].dtype not in HALF_DTYPES for c in comparisons):
        return comparisons
    return _half_judged(comparisons, got, want, run_graph(graph, inp, upcast=True))


def _half_judged(comparisons: list[OutputComparison], got, want, fp32) -> list[OutputComparison]:
    """Each refused half-precision comparison judged by validate.judge_half_by_fp32 against `fp32`."""
    if fp32 is None:
        return comparisons
    return [judge_half_by_fp32(c, got[c.name], want[c.name], fp32[c.name])
            if not c.ok and want[c.name].dtype in HALF_DTYPES and got[c.name].shape == want[c.name].shape else c
            for c in comparisons]


def _judge_traced(traced) -> tuple[bool, str]:
    """The traced IR must reproduce eager PyTorch before any pass runs: otherwise a frontend
    conversion is wrong, or eager itself is not a function of its inputs (a top-k over tied
    scores, whose order torch leaves unspecified), and the artifact would differ from the
    model without any pass or lowering being at fault."""
    for check in traced:
        for out in check["outputs"]:
            if not out["ok"]:
                return False, (f"the traced IR differs from eager PyTorch before any pass: output {out['name']!r} by {float(out['max_abs']):.3g} "
                               f"(> atol {out['atol']:g}) at {check['shape']} (a frontend conversion, or a model whose eager result "
                               "is not determined by its inputs, e.g. top-k over tied router scores); please report it")
    return True, "ok"


def _exact_problem(rec: dict) -> str | None:
    """An exact pass must not change the IR's outputs beyond tolerance (against the IR before it)."""
    for check in rec.get("vs_previous", []) if rec["exact"] else []:
        for out in check["outputs"]:
            if not out["ok"]:
                return f"exact pass {rec['pass']!r} changed output {out['name']!r} by {out['max_abs']:.3g} (> atol {out['atol']:g}) at {check['shape']}"
    return None


def _drift_problem(rec: dict, max_drift: float | None) -> str | None:
    """The drift from eager after this pass, bounded by --max-drift when given."""
    for check in rec.get("vs_eager", []) if max_drift is not None else []:
        for out in check["outputs"]:
            if float(out["max_abs"]) > max_drift:
                return f"after pass {rec['pass']!r} output {out['name']!r} drifts {float(out['max_abs']):.3g} from eager > --max-drift {max_drift:g} at {check['shape']}"
    return None


def _bar_problem(rec: dict) -> str | None:
    """An approximate pass's bar (`rec["bar"]`: its defaults or the user's --min-cosine / --min-sqnr / --min-token-agreement)."""
    problem = DriftBar(**rec["bar"]).violation(rec) if "bar" in rec else None
    return None if problem is None else f"after pass {rec['pass']!r}: {problem}"


def _judge_drift(pass_records, options: "CompileOptions") -> tuple[bool, str]:
    """Every pass's exactness first, then the drift from eager against --max-drift, then the bars."""
    for judge in (_exact_problem, lambda rec: _drift_problem(rec, options.max_drift), _bar_problem):
        for rec in pass_records:
            problem = judge(rec)
            if problem is not None:
                return False, problem
    return True, "ok"


def judge_pass(rec: dict, max_drift: float | None) -> str | None:
    """What is wrong with this one pass (`t2c check`'s result per pass), or None. An exact pass is
    judged against the IR before it; an approximate one by its drift from eager and its bar (the
    drift an exact pass inherits from an earlier approximate one is not its own)."""
    if rec["exact"]:
        return _exact_problem(rec)
    return _drift_problem(rec, max_drift) or _bar_problem(rec)


def _write_reports(report: dict, folder: str) -> None:
    from .report_html import render_html

    with open(os.path.join(folder, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    with open(os.path.join(folder, "report.html"), "w", encoding="utf-8") as f:
        f.write(render_html(report))


def _parent(out_dir: str) -> str:
    parent = os.path.dirname(os.path.abspath(out_dir))
    os.makedirs(parent, exist_ok=True)
    return parent


def _replace_dir(tmp: str, out_dir: str) -> None:
    """Move the finished folder into place; an existing OUT is replaced only now."""
    final = os.path.abspath(out_dir)
    if os.path.exists(final):
        if not os.path.isdir(final):
            raise UserError(f"{out_dir} exists and is not a folder; choose another -o")
        old = final + f".old-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
