"""The `t2c` command line: compile, check, inspect, opt, passes.

Exit codes: 0 success; 1 validation failed; 2 bad input or unsupported model,
with a one-line message that says what to do (`--debug` shows the traceback);
3 an internal error, which is a bug in t2c.
"""

from __future__ import annotations

import json
import os
import sys
import traceback

import click

from .backends import DEFAULT_TARGET, all_backends
from .backends.registry import option_fields
from .errors import T2CError, UserError
from .passes.manager import PRESETS


def _read_ir(path: str):
    """A verified graph from a `.t2c` file; IR that does not parse or verify is bad input (exit 2)."""
    from .errors import VerifyError
    from .ir import parse_graph, verify

    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"cannot read {path}: {e.strerror if isinstance(e, OSError) else 'not UTF-8 text'}") from e
    graph = parse_graph(text)
    try:
        verify(graph)
    except VerifyError as e:
        raise UserError(f"{path} does not verify: {e}; fix the IR text") from None
    return graph


def _load_graph(source: str, trust_model: bool, inputs: tuple[str, ...]):
    """An IR graph from a `.t2c` file, or traced from any model source the loaders accept."""
    if source.endswith(".t2c"):
        return _read_ir(source)
    from .frontends.loaders import InputSpec, load_model
    from .frontends.torch_export import trace_loaded

    specs = [InputSpec.parse(t) for t in inputs] or None
    loaded = load_model(source, trust_model=trust_model, inputs=specs)
    return trace_loaded(loaded)


def _pipeline(text: str):
    from .passes.manager import Pipeline

    return Pipeline.from_spec(text)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--debug", is_flag=True, help="Show tracebacks instead of one-line errors.")
@click.version_option(package_name="t2c")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """t2c: compile transformer models from PyTorch to ONNX and Triton."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


class _StageDisplay:
    """Progress on stderr while compiling; silent unless stderr is a terminal."""

    def __init__(self, enabled: bool):
        self.enabled = enabled

    def __call__(self, stage: str, message: str) -> None:
        if self.enabled:
            click.echo(f"[{stage}] {message}", err=True)


def preset_options(fn):
    """One `-O<n>` flag per preset that exists (manager.PRESETS), -O1 the default."""
    help_text = {"O0": "Cleanup passes only.", "O1": "Every exact pass (default).", "O2": "-O1 plus W8A8 int8: int8 weights, activations quantized per token (approximate; weight-only: --passes -O1,quantize-int8)."}
    for key in reversed(list(PRESETS)):
        names = ",".join(PRESETS[key])
        # Only -O1 names a default: flags sharing one destination would otherwise overwrite it with False.
        default = {"default": True} if key == "O1" else {}
        fn = click.option(f"-{key}", "level", flag_value=key, help=help_text.get(key, names), **default)(fn)
    return fn


def target_options(fn):
    """`--target` with the registered backends, and one flag per option of each backend."""
    backends = all_backends()
    seen: dict[str, list[str]] = {}
    for name, backend in backends.items():
        for f, hint in option_fields(backend):
            seen.setdefault(f.name, []).append(name)
    for opt_name, owners in reversed(list(seen.items())):
        backend = backends[owners[0]]
        f, hint = next((f, h) for f, h in option_fields(backend) if f.name == opt_name)
        choices = f.metadata.get("choices")
        kind = click.Choice(list(choices)) if choices else hint
        help_text = f"{f.metadata['help']} [--target {'/'.join(owners)}; default: {f.default}]"
        fn = click.option(f"--{opt_name.replace('_', '-')}", f"target_{opt_name}", type=kind, default=None, help=help_text)(fn)
    choice = click.Choice(list(backends))
    return click.option("--target", type=choice, default=DEFAULT_TARGET, show_default=True, help="What to emit.")(fn)


def _options(*decorators):
    """The options several commands share, applied in the order listed (as if written above the command)."""
    def apply(fn):
        for d in reversed(decorators):
            fn = d(fn)
        return fn
    return apply


model_options = _options(
    click.option("--input", "inputs", multiple=True, metavar="NAME=SHAPE[:DTYPE]", help="Example input for models that carry none."),
    click.option("--static", is_flag=True, help="Fix every dim to the example's shape."),
    click.option("--trust-model", is_flag=True, envvar="T2C_TRUST_MODEL", help="Allow loading files that can run code (.pt pickles, .pt2)."),
    click.option("--with-past", is_flag=True,
                 help="A causal LM with its KV cache as inputs and outputs (past_key_<i>/present_key_<i>...), for t2c generate."),
)

numerics_options = _options(
    click.option("--max-drift", type=float, default=None, help="Fail when an approximate pass changes an output by more than this."),
    click.option("--min-cosine", type=float, default=None, help="Fail when an approximate pass leaves an output's cosine with eager below this (int8 default: 0.99)."),
    click.option("--min-sqnr", type=float, default=None, metavar="DB", help="Fail when an approximate pass leaves a layer's SQNR below this many dB (int8 default: 10)."),
    click.option("--min-token-agreement", type=float, default=None, help="Fail when an approximate pass changes more next tokens of `logits` than this fraction allows (int8 default: 0.9)."),
    click.option("--calibrate", type=click.Path(dir_okay=False), default=None, metavar="FILE",
                 help="Calibration inputs for quantize-int8's SmoothQuant: a .pt of token-id tensors (or dicts of inputs), or a text file of ids, one sequence a line."),
    click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None,
                 help="Compute in this dtype (cast-precision: norms, softmax and reductions accumulate in float32). Default: the checkpoint's where the target runs it, else float32."),
)


def _compile_options(pipeline: str, target: str, given: dict, static: bool, validate: bool, **numerics):
    from .compiler import CompileOptions

    options = CompileOptions(
        pipeline=_pipeline(pipeline), target=target,
        target_options={k.removeprefix("target_"): v for k, v in given.items() if v is not None},
        static=static, validate=validate, **numerics,
    )
    options.check()
    return options


def _load(model: str, trust_model: bool, inputs: tuple[str, ...], with_past: bool = False, pipeline=None):
    from .frontends.loaders import InputSpec, load_model

    specs = [InputSpec.parse(t) for t in inputs] or None
    loaded = load_model(model, trust_model=trust_model, inputs=specs)
    if with_past:
        from .frontends.hf_past import loaded_with_past

        loaded = loaded_with_past(loaded, pipeline)
    return loaded


def _check_out_dir(out_dir: str) -> None:
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"{out_dir} exists and is not a folder; choose another -o")


@cli.command()
@click.argument("model")
@click.option("-o", "--out", "out_dir", default=None, help="Output folder (default: MODEL's name + '.t2c.out').")
@target_options
@preset_options
@click.option("--passes", "pipeline", default=None, metavar="PIPELINE", help="Run this pipeline instead of a preset.")
@model_options
@click.option("--no-validate", is_flag=True, help="Skip numerical validation (the report says so).")
@numerics_options
def compile(model, out_dir, target, level, pipeline, inputs, static, trust_model, with_past, no_validate, max_drift, min_cosine, min_sqnr, min_token_agreement, calibrate, dtype, **given) -> None:
    """Compile MODEL to a validated artifact in OUT (the target's files, model.t2c, report.json, report.html)."""
    from .compiler import compile_loaded

    options = _compile_options(pipeline or level, target, given, static, not no_validate, max_drift=max_drift, min_cosine=min_cosine,
                               min_sqnr=min_sqnr, min_token_agreement=min_token_agreement, calibrate=calibrate, dtype=dtype)
    out_dir = out_dir or _default_out(model)
    _check_out_dir(out_dir)
    loaded = _load(model, trust_model, inputs, with_past, options.pipeline)
    display = _StageDisplay(sys.stderr.isatty())
    result = compile_loaded(loaded, options, out_dir, progress=display)
    click.echo(summary_lines(result.report, out_dir))


@cli.command()
@click.argument("model")
@click.option("-p", "--passes", "pipeline", default="-O1", show_default=True, metavar="PIPELINE", help="The pipeline to check: a preset (-O1) or passes, as for compile --passes.")
@target_options
@model_options
@numerics_options
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False), default=None, metavar="FILE", help="Write JUnit XML: one test case per pass, the frontend and the artifact.")
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None, metavar="FILE", help="Write the results and the compile's report as JSON.")
@click.option("-o", "--out", "out_dir", default=None, help="Keep the artifact here when every check passes (default: none is kept).")
def check(model, pipeline, target, inputs, static, trust_model, with_past, max_drift, min_cosine, min_sqnr, min_token_agreement, calibrate, dtype, junit_path, json_path, out_dir, **given) -> None:
    """Check that PIPELINE reproduces MODEL, pass by pass: exit 0 when every check passes, 1 otherwise."""
    import tempfile

    from .check import cases_from_report, check_json, junit_xml, result_lines, write_atomically
    from .compiler import compile_loaded
    from .errors import ValidationError

    options = _compile_options(pipeline, target, given, static, True, max_drift=max_drift, min_cosine=min_cosine,
                               min_sqnr=min_sqnr, min_token_agreement=min_token_agreement, calibrate=calibrate, dtype=dtype,
                               per_pass=True)
    if out_dir is not None:
        _check_out_dir(out_dir)
    loaded = _load(model, trust_model, inputs, with_past, options.pipeline)
    with tempfile.TemporaryDirectory(prefix="t2c-check-") as scratch:
        try:
            report = compile_loaded(loaded, options, out_dir or os.path.join(scratch, "out"), progress=_StageDisplay(sys.stderr.isatty())).report
        except ValidationError as e:
            if e.report is None:
                raise
            report = e.report
    cases = cases_from_report(report, max_drift)
    if junit_path:
        write_atomically(junit_path, junit_xml(cases, f"t2c check {model} {report['pipeline']} --target {report['target']}"))
    if json_path:
        write_atomically(json_path, check_json(cases, report))
    click.echo(result_lines(cases))
    failed = [c for c in cases if not c.ok]
    if failed:
        raise ValidationError(f"{len(failed)} of {len(cases)} checks failed; the first: {failed[0].stage} {failed[0].name}: {failed[0].message}")


def _default_out(model: str) -> str:
    base = os.path.basename(os.path.normpath(model.split(":")[0])) or "model"
    return os.path.splitext(base)[0] + ".t2c.out"


def summary_lines(report: dict, out_dir: str) -> str:
    """What a compile did, in a few lines: artifact, passes, validation, where the report is."""
    from .backends import get_backend

    nodes = report["node_count"]
    backend = get_backend(report["target"])
    described = backend.describe(backend.options_from_report(report))
    lines = [f"wrote {os.path.join(out_dir, backend.artifact)} ({described}): {nodes['traced']} -> {nodes['final']} IR nodes"]
    if report.get("constraints"):  # the dynamic dims are not free: other sizes are refused at run time
        lines.append("  input constraints: " + ", ".join(report["constraints"]) + " (other sizes are refused at run time)")
    if report["passes"]:
        lines.append("  passes: " + ", ".join(f"{p['pass']} {p['nodes_before']}->{p['nodes_after']}" for p in report["passes"]))
    # An upcast of a half checkpoint to float32 is approximate only against the half model: its
    # error against each eager dtype is the precision line's, not a drift worth its own lines.
    approximate = [p for p in report["passes"] if not p["exact"] and not (p["pass"] == "cast-precision" and p["options"] == "dtype=f32")]
    if approximate and report["passes"][-1].get("vs_eager"):
        from .report_html import drift_summary

        d = drift_summary(report["passes"][-1])
        tokens = f", next-token agreement {d['argmax_agreement']:.1%}, KL {d['kl']:.2g}" if "argmax_agreement" in d else ""
        reference = "eager" if "precision" not in report else f"eager {report['precision'].get('primary', '')}".rstrip()
        lines.append(f"  drift from {reference} after approximate passes: max abs {d['max_abs']:.3g}, cosine {d['cosine']:.6f}{tokens}")
        worst = [w for p in approximate for w in p.get("worst_layers", [])]
        if worst:
            worst = sorted(worst, key=lambda w: float(w["sqnr_db"]))[:3]
            lines.append("  lowest layer SQNR: " + ", ".join(f"{w['layer']} {float(w['sqnr_db']):.1f} dB" for w in worst))
    if report.get("precision"):
        lines.extend("  " + line for line in precision_lines(report["precision"]))
    for warning in report.get("warnings", []):
        lines.append(f"  warning: {warning}")
    v = report["validation"]
    if v.get("ok") is None:
        lines.append("  validation: skipped (--no-validate)")
    else:
        shapes = ", ".join(c["shape"] for c in v["artifact_vs_ir"])
        outputs: dict[str, tuple[float, float]] = {}
        for c in v["artifact_vs_ir"]:
            for o in c["outputs"]:
                prev = outputs.get(o["name"], (0.0, o["atol"]))
                outputs[o["name"]] = (max(prev[0], float(o["max_abs"])), o["atol"])
        errs = ", ".join(f"{n} max abs {e:.2g} (atol {a:g})" for n, (e, a) in outputs.items())
        if v.get("artifact_policy"):  # quantized activations: judged by cosine with the IR, not atol
            cosines: dict[str, float] = {}
            for c in v["artifact_vs_ir"]:
                for o in c["outputs"]:
                    cosines[o["name"]] = min(cosines.get(o["name"], 1.0), float(o["cosine"]))
            errs = ", ".join(f"{n} cosine {c:.6f}" for n, c in cosines.items()) + f" ({v['artifact_policy']})"
        lines.append(f"  validation {'OK' if v['ok'] else 'FAILED'} at {shapes}: {errs}")
    lines.append(f"  report: {os.path.join(out_dir, 'report.html')}")
    return "\n".join(lines)


def precision_lines(precision: dict) -> list[str]:
    """The dtype the artifact computes in and why; its error against the eager model in each dtype measured."""
    ckpt, dtype = precision["checkpoint"], precision["dtype"]
    head = f"dtype: {dtype}" if ckpt == dtype else f"dtype: {ckpt} checkpoint compiled as {dtype}"
    lines = [f"{head}: {precision['reason']}"]
    refs = []
    for ref in precision.get("references", []):
        outs = [o for c in ref["checks"] for o in c["outputs"]]
        if outs:
            err = max(float(o["max_abs"]) for o in outs)
            cos = min(float(o["cosine"]) for o in outs)
            who = f"{ref['dtype']} (the checkpoint)" if ref["dtype"] == ckpt else ref["dtype"]
            refs.append(f"{who} max abs {err:.2g}, cosine {cos:.6f}")
    if refs:
        lines.append("artifact vs eager " + "; ".join(refs))
    return lines


@cli.command()
@click.argument("model")
@click.option("--after", "after", default=None, metavar="PIPELINE", help="Run these passes (or a preset, -O0/-O1) first.")
@click.option("--format", "fmt", type=click.Choice(["text", "json", "dot"]), default="text", show_default=True)
@click.option("--input", "inputs", multiple=True, metavar="NAME=SHAPE[:DTYPE]", help="Example input for models that carry none.")
@click.option("--trust-model", is_flag=True, envvar="T2C_TRUST_MODEL", help="Allow loading files that can run code (.pt pickles, .pt2).")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None, help="Write to this file instead of stdout.")
def inspect(model: str, after: str | None, fmt: str, inputs: tuple[str, ...], trust_model: bool, output: str | None) -> None:
    """Show the IR of MODEL (a model source or a .t2c file), optionally after passes."""
    from .ir import print_graph
    from .ir.dot import to_dot
    from .ir.summary import graph_summary

    graph = _load_graph(model, trust_model, inputs)
    records = []
    if after:
        graph, records = _pipeline(after).run(graph, verify_each=True)
    from .fusion_report import fusion_lines, fusion_report

    fusion = fusion_report(graph)
    if fmt == "text":
        header = "".join(f"# {line}\n" for line in fusion_lines(fusion))
        text = header + print_graph(graph, comments=True)
    elif fmt == "json":
        summary = graph_summary(graph)
        summary["fusion"] = fusion
        if records:
            summary["passes"] = [_record_json(r) for r in records]
        text = json.dumps(summary, indent=2) + "\n"
    else:
        text = to_dot(graph)
    _emit(text, output)


def _record_json(r) -> dict:
    return {"pass": r.name, "options": r.options_str, "changed": r.changed, "stats": r.stats, "seconds": round(r.seconds, 6), "nodes_before": r.node_count_before, "nodes_after": r.node_count_after}


def _emit(text: str, output: str | None) -> None:
    if output is None:
        click.echo(text, nl=False)
        return
    tmp = f"{output}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, output)


@cli.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("-p", "--passes", "pipeline", required=True, metavar="PIPELINE", help="e.g. 'cse,fold-shapes,dce' or -O1.")
@click.option("--verify-each", is_flag=True, help="Verify the IR after every pass.")
@click.option("--stats", is_flag=True, help="Print per-pass stats and timing to stderr.")
@click.option("--debug-rewrites", is_flag=True, help="Say on stderr why near-miss rewrites did not apply.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None)
def opt(file: str, pipeline: str, verify_each: bool, stats: bool, debug_rewrites: bool, output: str | None) -> None:
    """Run a pipeline on IR text: FILE.t2c in, IR text out."""
    from .ir import print_graph, verify
    from .passes import rewrite

    graph = _read_ir(file)
    with rewrite.collect_near_misses() as near_misses:
        graph, records = _pipeline(pipeline).run(graph, verify_each=verify_each)
    verify(graph)
    if debug_rewrites:
        for line in near_misses:
            click.echo(f"near-miss: {line}", err=True)
    if stats:
        for r in records:
            click.echo(f"{r.name:<16} {r.seconds * 1000:8.2f} ms  nodes {r.node_count_before} -> {r.node_count_after}  {r.stats}", err=True)
    _emit(print_graph(graph), output)


def _prompt_ids(text: str) -> list[int]:
    try:
        ids = [int(t) for t in text.replace(" ", ",").split(",") if t]
    except ValueError:
        raise UserError(f"--prompt-ids {text!r}: give token ids separated by commas, e.g. --prompt-ids 5,17,42") from None
    if not ids:
        raise UserError("--prompt-ids is empty: give token ids separated by commas, e.g. --prompt-ids 5,17,42")
    return ids


@cli.command()
@click.argument("out_dir", metavar="OUT")
@click.option("--prompt-ids", "prompts", multiple=True, required=True, metavar="IDS",
              help="Token ids of a prompt, comma-separated (5,17,42); once per sequence of a batch.")
@click.option("--max-new-tokens", type=click.IntRange(min=0), default=32, show_default=True)
@click.option("--eos-id", default=None, metavar="ID|none", help="Stop a sequence after this id (default: the model's eos_token_id; none: never).")
def generate(out_dir: str, prompts: tuple[str, ...], max_new_tokens: int, eos_id: str | None) -> None:
    """Greedy generation from a `t2c compile --with-past` folder: the new ids, one line per prompt."""
    from .api import load

    if not os.path.isdir(out_dir):
        raise UserError(f"{out_dir} is not a folder; give the -o folder of `t2c compile MODEL --with-past -o OUT`")
    sequences = [_prompt_ids(p) for p in prompts]
    eos: object = "config"
    if eos_id is not None:
        if eos_id.lower() == "none":
            eos = None
        elif eos_id.isdigit():
            eos = int(eos_id)
        else:
            raise UserError(f"--eos-id {eos_id!r}: give a token id or none")
    for ids in load(out_dir).generate(sequences, max_new_tokens, eos_token_id=eos):
        click.echo(" ".join(map(str, ids)))


@cli.command()
def passes() -> None:
    """List every pass with its options and what it does."""
    from .passes.manager import describe_passes

    click.echo(describe_passes())


def main(argv: list[str] | None = None) -> int:
    """Console entry point: runs the CLI, turning t2c errors into one line and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        cli.main(args=argv, prog_name="t2c", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("t2c: aborted", err=True)
        return 130
    except click.ClickException as e:
        e.show()
        return 2
    except T2CError as e:
        if debug:
            traceback.print_exc()
        click.echo(f"t2c: error: {_one_line(str(e))}", err=True)
        return e.exit_code
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - anything else is a bug in t2c, not bad input
        if debug:
            raise
        click.echo(f"t2c: internal error (a bug in t2c): {type(e).__name__}: {_one_line(str(e))[:300]}; rerun with --debug for the traceback", err=True)
        return 3
    return 0


def _one_line(message: str) -> str:
    return " ".join(message.split())


if __name__ == "__main__":
    sys.exit(main())
