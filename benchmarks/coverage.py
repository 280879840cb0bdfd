"""Coverage: every text architecture in transformers' own test configs, through t2c and through torch.onnx.export.

For each architecture in ../shared/hf-test-configs/ (one JSON each: `model_class`, `kind`,
`input_keys`, `seq_len`, the tester's `config`; see its README), in one run:

  build   `getattr(transformers, model_class)(config)` with use_cache off, torch.manual_seed(0),
          eval mode; inputs named by `input_keys` at batch 2 x `seq_len`, drawn as transformers'
          testers draw them (token ids over the vocabulary, a random 0/1 attention mask whose first
          column is 1, token types over type_vocab_size, bboxes, xpath ids, entity ids, lengths).
          A family the installed transformers lacks is "skipped: not in the installed transformers".
  t2c     `t2c.compile(model, inputs, passes="-O1", out=...)` with validation on, as `t2c compile`
          does: ok, "validation failed" (ValidationError, exit 1), "error" (UserError, exit 2) or
          "internal error" (anything else, exit 3), with the one-line error and the innermost t2c
          frame; then its model.onnx gets the anchor's check below. A compile that t2c validated but
          that differs from eager there is "wrong vs eager" (t2c validates its passes against the IR
          before them and the artifact against the IR, not the traced IR against eager).
  anchor  `torch.onnx.export(model, ..., dynamo=True)` (benchmarks/anchors.py), then the check: plain
          ONNX Runtime against eager at the example's shape and at t2c's second validation shape
          (every dynamic axis of the ONNX graph grown: batch+1, seq*1.5+1; attention masks keep their
          first column 1, as the testers' do), within 1e-4 like t2c: ok, "export failed", "ORT failed"
          or "mismatch".

Each architecture runs in a subprocess of its own (torch threads 1) with a time budget per tool
(--timeout, enforced by an alarm in the worker) and a hard limit for the whole subprocess
(2 * --timeout + 60 s) and a memory cap (--max-rss-gib, polled), --jobs of them at a time.
Failures are grouped by cause: a normalised first line (the unsupported op's name, 'torch.export:
data-dependent guard', an internal error's type and innermost t2c function, ...).

    .venv/bin/python benchmarks/coverage.py [--only llama,bert] [--jobs 2] [--timeout 240] [--no-anchor] [--quick]
    .venv/bin/python benchmarks/coverage.py --merge a.json,b.json     # one result from runs done in parts

Prints one line per architecture, then the grouped causes, and writes
benchmarks/results/coverage-<host>-<date>.json (with the git commit it ran at).
"""

from __future__ import annotations

import argparse
import collections
import concurrent.futures
import datetime
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _proc import rss_bytes  # noqa: E402  (benchmarks/_proc.py)

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIGS = os.path.join(ROOT, "tests", "data", "hf-test-configs")  # the repo's copy of ../shared/hf-test-configs
SEED = 0
BATCH = 2
TOL = 1e-4
# --quick: a fixed sample across kinds and known failure causes.
QUICK = ["llama", "gpt2", "bert", "t5", "mistral", "qwen2", "distilbert", "clip", "mamba", "deepseek_v3", "albert", "mpt"]
SKIP_MISSING = "skipped: not in the installed transformers"
FAILED_T2C = ("validation failed", "wrong vs eager", "error", "internal error", "timeout", "out of memory", "crashed")


# --------------------------------------------------------------------------- building a model

def load_entry(path: str) -> dict:
    special = {"Infinity": float("inf"), "-Infinity": float("-inf"), "NaN": float("nan")}
    with open(path, encoding="utf-8") as f:
        return json.load(f, object_hook=lambda o: special.get(o["__float__"], o) if set(o) == {"__float__"} else o)


def list_archs(configs: str) -> list[str]:
    return sorted(f[:-5] for f in os.listdir(configs) if f.endswith(".json"))


def kind_of(entry: dict) -> str:
    """decoder / encoder / encoder-decoder / base / other (the config's `kind`, encoder/* folded)."""
    return entry["kind"].split("/")[0]


def build_model(entry: dict):
    """The model at the tester's config (fixed seed, use_cache off, eval), or None when the family is missing."""
    import torch
    import transformers
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    cls = getattr(transformers, entry["model_class"], None)
    if cls is None or entry["config"].get("model_type") not in CONFIG_MAPPING:
        return None
    folder = tempfile.mkdtemp(prefix="t2c-coverage-config-")
    try:
        with open(os.path.join(folder, "config.json"), "w") as f:
            json.dump(entry["config"], f)
        config = transformers.AutoConfig.from_pretrained(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    config.use_cache = False
    torch.manual_seed(SEED)
    return cls(config).eval()


def _cfg(config, *names, default=None):
    """An int field of the config, else of its text config, else of any sub-config (FastSpeech2's model_config)."""
    from transformers import PretrainedConfig

    subs = [getattr(config, "text_config", None)] + [v for v in vars(config).values() if isinstance(v, PretrainedConfig)]
    for n in names:
        for c in [config] + subs:
            v = getattr(c, n, None) if c is not None else None
            if isinstance(v, int) and not isinstance(v, bool):
                return v
    return default


AVOID_IDS = re.compile(r"(image|video|audio|vision|boi|eoi|boa|eoa|img|speech|protein)_?.*token_(id|index)$")


def make_inputs(model, entry: dict) -> dict:
    """The tensors named by `input_keys`, batch 2 x seq_len, drawn like transformers' testers draw them."""
    import torch

    config = model.config
    g = torch.Generator().manual_seed(SEED)
    b, s = BATCH, entry["seq_len"]
    vocab = _cfg(config, "vocab_size", default=99)
    types = _cfg(config, "type_vocab_size", default=2)

    def ids(shape, high):
        return torch.randint(0, max(int(high), 1), shape, generator=g)

    # Token ids that switch on another modality's path (an image token without pixels) are swapped for another id.
    avoid = {v for k, v in config.to_dict().items() if AVOID_IDS.search(k) and isinstance(v, int) and 0 <= v < vocab}
    inputs = {}
    for key in entry["input_keys"]:
        if key == "input_ids":
            t = ids((b, s), vocab)
            for a in sorted(avoid):
                t = torch.where(t == a, (t + 1) % vocab, t)
            for a in sorted(avoid):  # a second pass for neighbouring avoided ids
                t = torch.where(t == a, (t + 1) % vocab, t)
        elif key == "attention_mask":
            t = ids((b, s), 2)
            t[:, 0] = 1  # at least one token attended to, also under a causal mask
        elif key == "token_type_ids" and isinstance(getattr(config, "type_vocab_sizes", None), (list, tuple)):
            sizes = config.type_vocab_sizes  # TAPAS: one column per token type (segment, column, row, rank, ...)
            t = torch.stack([ids((b, s), n) for n in sizes], -1)
        elif key == "token_type_ids":
            t = ids((b, s), types)
        elif key == "bbox":
            t = _ordered_boxes(ids((b, s, 4), _cfg(config, "max_2d_position_embeddings", default=1000)))
        elif key == "xpath_tags_seq":
            t = ids((b, s, _cfg(config, "max_depth", default=10)), _cfg(config, "max_xpath_tag_unit_embeddings", default=20))
        elif key == "xpath_subs_seq":
            t = ids((b, s, _cfg(config, "max_depth", default=10)), _cfg(config, "max_xpath_subs_unit_embeddings", default=30))
        elif key == "global_attention_mask":
            t = torch.zeros((b, s), dtype=torch.long)
            t[:, -1] = 1
        elif key == "lengths":
            t = s - ids((b,), 2)
        elif key == "input_pronunciation_ids":
            t = ids((b, s), _cfg(config, "pronunciation_vocab_size", default=vocab))
        elif key == "input_shape_ids":
            t = ids((b, s), _cfg(config, "shape_vocab_size", default=vocab))
        elif key == "entity_ids":
            t = ids((b, 3), _cfg(config, "entity_vocab_size", default=10))
        elif key == "entity_attention_mask":
            t = torch.ones((b, 3), dtype=torch.long)
        elif key == "entity_token_type_ids":
            t = ids((b, 3), types)
        elif key == "entity_position_ids":
            t = ids((b, 3, 5), s)
        elif key == "protein_input_ids":
            pc = getattr(config, "protein_encoder_config", None)
            t = ids((b, s), getattr(pc, "vocab_size", None) or vocab)
        elif key.endswith("attention_mask"):
            t = torch.ones((b, s), dtype=torch.long)
        elif key == "use_cache":
            continue  # not a tensor; the cache is off in the config
        else:
            t = ids((b, s), 2)
        inputs[key] = t
    return inputs


# --------------------------------------------------------------------------- the worker (one architecture)

class Budget(BaseException):
    """The tool ran past its time budget (a BaseException, so that no `except Exception` on the way turns it into an error)."""


def _alarm(seconds: int):
    def handler(signum, frame):
        raise Budget(f"ran past its {seconds}s budget")

    signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)


def _t2c_frame(tb) -> str | None:
    """The innermost frame inside the t2c package: `t2c/path.py:line in function`."""
    where = None
    for frame in traceback.extract_tb(tb):
        path = frame.filename.replace(os.sep, "/")
        i = path.rfind("/t2c/")
        if i >= 0 and "/benchmarks/" not in path:
            where = f"{path[i + 1:]}:{frame.lineno} in {frame.name}"
    return where


def first_line(e: BaseException) -> str:
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return " ".join(lines[0].split())[:400] if lines else ""


def run_t2c(model, inputs: dict, out_dir: str) -> dict:
    """`t2c.compile(..., passes="-O1")` with validation, then the same check against eager the anchor gets."""
    import t2c
    from t2c.errors import T2CError, ValidationError

    rec: dict = {}
    t0 = time.perf_counter()
    try:
        compiled = t2c.compile(model, inputs, passes="-O1", out=out_dir)
    except Budget:
        raise
    except Exception as e:  # noqa: BLE001 - a coverage sweep records every failure
        code = 1 if isinstance(e, ValidationError) else (e.exit_code if isinstance(e, T2CError) else 3)
        status = {1: "validation failed", 2: "error"}.get(code, "internal error")
        rec.update(status=status, exit_code=code, error_type=type(e).__name__, error=first_line(e), where=_t2c_frame(e.__traceback__))
        if code == 3:
            rec["traceback"] = traceback.format_exception(type(e), e, e.__traceback__)[-12:]
        rec["seconds"] = round(time.perf_counter() - t0, 2)
        return rec
    rec["seconds"] = round(time.perf_counter() - t0, 2)
    report = compiled.report
    path = os.path.join(out_dir, "model.onnx")
    rec.update(exit_code=0, node_counts={**report.get("node_count", {}), "onnx": _onnx_nodes(path)})
    rec["report_ir_vs_eager_max_abs"] = _report_drift(report)  # t2c's own inputs (its second-shape masks are random)
    check = check_onnx(model, inputs, path)
    rec.update(status="ok" if check["ok"] else "wrong vs eager", max_abs=check["max_abs"], second_shape=check["second_shape"])
    if not check["ok"]:
        rec["error"] = f"validation passed, but {check['error']}"
    return rec


def _report_drift(report: dict) -> float | None:
    """The largest difference from eager of the IR after the last pass, as the compile report measured it."""
    passes = report.get("passes") or []
    errs = [float(o["max_abs"]) for c in (passes[-1].get("vs_eager", []) if passes else []) for o in c["outputs"]]
    return max(errs) if errs else None


def _onnx_nodes(path: str) -> int | None:
    try:
        import onnx

        return len(onnx.load(path, load_external_data=False).graph.node)
    except Exception:  # noqa: BLE001
        return None


def _constraints(path: str) -> tuple[dict[str, int], dict[str, int]]:
    """({label: W} for `label % W == 0`, {label: N} for `label <= N`) from the report.json beside `path`, if any."""
    multiples: dict[str, int] = {}
    bounds: dict[str, int] = {}
    try:
        with open(os.path.join(os.path.dirname(path), "report.json")) as f:
            lines = json.load(f).get("constraints") or []
    except (OSError, ValueError):
        return multiples, bounds
    for line in lines:
        m = re.fullmatch(r"\s*(\w+)\s*%\s*(\d+)\s*==\s*0\s*", line)
        if m:
            multiples[m.group(1)] = int(m.group(2))
        m = re.fullmatch(r"\s*(\w+)\s*<=\s*(\d+)\s*", line)
        if m:
            bounds[m.group(1)] = int(m.group(2))
    return multiples, bounds


def _obey(label: str, size: int, n: int, constraints: tuple[dict[str, int], dict[str, int]] | None) -> int:
    """`size` moved as t2c's validation moves it: to a multiple the graph needs (up when growing, down when
    shrinking, never below one multiple), never past its bound."""
    multiples, bounds = constraints or ({}, {})
    bound, m = bounds.get(label), multiples.get(label)
    if bound is not None:
        size = min(size, bound)
    if m:
        up = -(-size // m) * m
        size = up if size >= n and (bound is None or up <= bound) else max(m, size // m * m)
    return size


def second_shape(session, examples: dict, seed: int = 0, grow: bool = True, constraints: tuple[dict[str, int], dict[str, int]] | None = None) -> dict:
    """Inputs at t2c's second validation shape for an ONNX graph: every dynamic axis changes (axis 0 -> n+1,
    others -> n*1.5+1, or n*3/4 with grow=False, for models whose position table is no longer than the
    example), values drawn like the example's (as t2c.validate.second_shape_candidates draws them), except
    that they keep the testers' constraints: attention masks keep their first column 1 (no fully masked
    query row, whose output is the implementation's choice) and boxes keep x0 <= x1, y0 <= y1; and the
    graph's own `constraints` (`seq % 8 == 0`, `seq <= 2047`, from t2c's report), as t2c's validation does."""
    import torch

    sizes: dict[str, int] = {}
    for i in session.session.get_inputs():
        ex = examples[i.name]
        for axis, (d, n) in enumerate(zip(i.shape, ex.shape)):
            if isinstance(d, str):
                if d not in sizes:
                    sizes[d] = _obey(d, n + 1 if axis == 0 else (n + n // 2 + 1 if grow else max(2, n * 3 // 4)), n, constraints)
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i in session.session.get_inputs():
        ex = examples[i.name]
        shape = [sizes[d] if isinstance(d, str) else n for d, n in zip(i.shape, ex.shape)]
        if ex.dtype == torch.bool:
            t = torch.randint(0, 2, shape, generator=g).bool()
        elif not ex.dtype.is_floating_point:
            t = torch.randint(int(ex.min()), int(ex.max()) + 1, shape, generator=g, dtype=ex.dtype)
        else:
            std = float(ex.float().std()) if ex.numel() > 1 else 1.0
            t = (torch.randn(shape, generator=g) * std + float(ex.float().mean())).to(ex.dtype)
        if i.name == "attention_mask" and t.dim() == 2 and bool((ex[:, 0] != 0).all()):
            t[:, 0] = 1
        if i.name == "bbox" and t.shape[-1] == 4:
            t = _ordered_boxes(t)
        out[i.name] = t
    return out


def _ordered_boxes(t):
    import torch

    x = torch.sort(t[..., 0::2], dim=-1).values
    y = torch.sort(t[..., 1::2], dim=-1).values
    return torch.stack([x[..., 0], y[..., 0], x[..., 1], y[..., 1]], -1)


def check_onnx(model, inputs: dict, path: str) -> dict:
    """Plain ONNX Runtime on `path` against eager at the example's shape and a second shape, 1e-4.

    The second shape grows every dynamic axis; where eager itself rejects that (a position table as long
    as the example), sequence axes shrink instead; where eager rejects both, only the example's shape is
    checked (`second_shape` says so). Returns {ok, max_abs, error, second_shape}; raises when ONNX Runtime
    cannot load or run the graph."""
    import torch

    from t2c.backends.onnx import OnnxSession
    from t2c.frontends.torch_export import flatten_outputs
    from t2c.validate import compare

    session = OnnxSession(path)
    # Graph inputs follow the forward arguments the exporter kept (one that is never read may be dropped).
    first = {k: v for k, v in inputs.items() if k in session.input_names}
    checks = [(first, None)]
    second = "none: eager rejects both"
    constraints = _constraints(path)
    for grow in (True, False):
        feed = second_shape(session, first, grow=grow, constraints=constraints)
        try:
            with torch.no_grad():
                want = flatten_outputs(model(**_full_feed(inputs, feed)))
        except Exception:  # noqa: BLE001 - the model does not take this shape; try the other one
            continue
        checks.append((feed, want))
        second = "grown" if grow else "shrunk (eager rejects the grown one)"
        break
    worst = 0.0
    for i, (feed, want) in enumerate(checks):
        label = ",".join("x".join(map(str, t.shape)) for t in feed.values())
        try:
            got = list(session(**feed).values())
        except Exception as e:  # noqa: BLE001 - say at which shape
            raise RuntimeError(f"at {'the example shape' if i == 0 else 'the second shape'} {label}: {first_line(e)}") from e
        if want is None:
            with torch.no_grad():
                want = flatten_outputs(model(**_full_feed(inputs, feed)))
        names, values = want
        if len(got) != len(values):
            return {"ok": False, "max_abs": None, "error": f"{len(got)} outputs for eager's {len(values)} ({names})", "second_shape": second}
        for name, g_, w in zip(names, got, values):
            c = compare(name, g_, w, (TOL, TOL))
            worst = max(worst, c.max_abs)
            if not c.ok:
                return {"ok": False, "max_abs": worst, "error": f"output {name!r} differs from eager by {c.max_abs:.3g} > {TOL:g} at {label}",
                        "second_shape": second}
    return {"ok": True, "max_abs": worst, "error": None, "second_shape": second}


def run_anchor(model, inputs: dict, path: str) -> dict:
    """torch.onnx.export(dynamo=True) as benchmarks/anchors.py does it, then check_onnx."""
    sys.path.insert(0, HERE)
    from anchors import torch_onnx_export

    rec: dict = {}
    t0 = time.perf_counter()
    try:
        torch_onnx_export(model, inputs, path)
    except Budget:
        raise
    except Exception as e:  # noqa: BLE001
        rec.update(status="export failed", error_type=type(e).__name__, error=exporter_error(e), seconds=round(time.perf_counter() - t0, 2))
        return rec
    rec.update(seconds=round(time.perf_counter() - t0, 2), node_counts={"onnx": _onnx_nodes(path)})
    try:
        check = check_onnx(model, inputs, path)
    except Budget:
        raise
    except Exception as e:  # noqa: BLE001
        rec.update(status="ORT failed", error_type=type(e).__name__, error=f"{type(e).__name__}: {first_line(e)}")
        return rec
    rec.update(status="ok" if check["ok"] else "mismatch", max_abs=check["max_abs"], second_shape=check["second_shape"])
    if not check["ok"]:
        rec["error"] = check["error"]
    return rec


def _full_feed(inputs: dict, feed: dict) -> dict:
    """Eager's inputs for an ONNX feed: inputs the exported graph dropped (it does not read them) regrown to the
    feed's batch and sequence, so eager sees consistent shapes."""
    import torch

    ref = feed.get("input_ids", next(iter(feed.values())))
    b0, s0 = inputs.get("input_ids", next(iter(inputs.values()))).shape[:2]
    out = {}
    for k, t in inputs.items():
        if k in feed:
            out[k] = feed[k]
            continue
        shape = list(t.shape)
        if shape and shape[0] == b0:
            shape[0] = ref.shape[0]
        if len(shape) > 1 and shape[1] == s0 and ref.dim() > 1:
            shape[1] = ref.shape[1]
        out[k] = t if list(t.shape) == shape else torch.randint(int(t.min()), int(t.max()) + 1, shape, dtype=t.dtype)
    return out


def exporter_error(e: Exception) -> str:
    """The line of torch.onnx's error report that says what failed (as benchmarks/export.py reads it)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(e))
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    cause = next((ln for ln in lines if ln.startswith("<class")), lines[0] if lines else "")
    return f"{type(e).__name__}: {' '.join(cause.split())[:400]}"


def worker(arch: str, configs: str, result_path: str, timeout: int, anchor: bool) -> None:
    import warnings

    warnings.simplefilter("ignore")
    import torch

    torch.set_num_threads(1)
    entry = load_entry(os.path.join(configs, f"{arch}.json"))
    rec = {"arch": arch, "model_class": entry["model_class"], "kind": kind_of(entry), "config_kind": entry["kind"],
           "secondary": entry.get("secondary", False), "seq_len": entry["seq_len"], "input_keys": entry["input_keys"]}

    def save(**extra):
        rec.update(extra)
        tmp = result_path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(rec, f, default=str)
        os.replace(tmp, result_path)

    save(running="build")
    t0 = time.perf_counter()
    try:
        model = build_model(entry)
        if model is None:
            save(status=SKIP_MISSING, running=None)
            return
        inputs = make_inputs(model, entry)
        with torch.no_grad():
            model(**inputs)
    except Exception as e:  # noqa: BLE001 - the harness, not a tool: say so
        save(status=f"skipped: eager failed: {type(e).__name__}: {first_line(e)[:200]}", running=None)
        return
    rec["build_seconds"] = round(time.perf_counter() - t0, 2)
    rec["params"] = sum(p.numel() for p in model.parameters())
    rec["input_shapes"] = {k: list(v.shape) for k, v in inputs.items()}
    work = tempfile.mkdtemp(prefix=f"t2c-coverage-{arch}-")
    try:
        save(running="t2c")
        _alarm(timeout)
        try:
            rec["t2c"] = run_t2c(model, inputs, os.path.join(work, "t2c"))
        except Budget as e:
            rec["t2c"] = {"status": "timeout", "error": str(e), "seconds": timeout}
        finally:
            signal.alarm(0)
        save(running="anchor" if anchor else None)
        if anchor:
            _alarm(timeout)
            try:
                rec["anchor"] = run_anchor(model, inputs, os.path.join(work, "anchor.onnx"))
            except Budget as e:
                rec["anchor"] = {"status": "timeout", "error": str(e), "seconds": timeout}
            finally:
                signal.alarm(0)
        save(running=None)
    finally:
        shutil.rmtree(work, ignore_errors=True)


# --------------------------------------------------------------------------- the parent: processes, causes, table

def run_arch(arch: str, args, tmp: str) -> dict:
    """One architecture in its own subprocess: hard time limit, memory cap; what it saved, completed on a kill."""
    result_path = os.path.join(tmp, f"{arch}.json")
    log_path = os.path.join(tmp, f"{arch}.log")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", arch, "--configs", args.configs,
           "--result", result_path, "--timeout", str(args.timeout)] + (["--no-anchor"] if args.no_anchor else [])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONWARNINGS": "ignore"}
    limit = 2 * args.timeout + 60
    cap = int(args.max_rss_gib * (1 << 30))
    killed = None
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT, start_new_session=True)
        peak = 0
        while proc.poll() is None:
            rss = rss_bytes(proc.pid)
            peak = max(peak, rss)
            if rss > cap:
                killed = f"out of memory: over {args.max_rss_gib:g} GiB resident"
            elif time.perf_counter() - t0 > limit:
                killed = f"timeout: the subprocess ran past {limit}s"
            if killed:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
                break
            time.sleep(0.5)
    rec = {"arch": arch}
    if os.path.exists(result_path):
        with open(result_path) as f:
            rec = json.load(f)
    rec["wall_seconds"] = round(time.perf_counter() - t0, 1)
    rec["peak_rss_mib"] = round(peak / (1 << 20))
    running = rec.pop("running", None)
    if killed or proc.returncode not in (0, None) or running:
        why = killed or f"crashed: exit {proc.returncode}" + (f" (signal {-proc.returncode})" if proc.returncode and proc.returncode < 0 else "")
        status = why.split(":")[0]
        with open(log_path, errors="replace") as f:
            tail = [ln.rstrip() for ln in f.readlines()[-8:]]
        if running in ("t2c", "anchor"):
            rec[running] = {"status": status, "error": why, "log_tail": tail}
            if running == "t2c" and not args.no_anchor:
                rec["anchor"] = {"status": "not run", "error": "the subprocess was stopped during t2c"}
        elif running == "build" or "status" not in rec and "t2c" not in rec:
            rec["status"] = f"skipped: harness {why}"
            rec["log_tail"] = tail
    return rec


def failed(tool_rec: dict | None) -> bool:
    return tool_rec is not None and tool_rec.get("status") != "ok"


NUMBERS = re.compile(r"\b\d+(?:\.\d+)?(?:e-?\d+)?\b")


def normalise(text: str) -> str:
    text = re.sub(r" at [^ ]+ \([^)]*\)$", "", text)  # t2c's "at module (file:line)"
    text = re.sub(r"0x[0-9a-f]+", "0x..", text)
    text = re.sub(r"'[^']*/[^']*'", "'...'", text)
    text = NUMBERS.sub("N", text)
    return " ".join(text.split())[:140]


def t2c_cause(r: dict) -> str:
    status, err = r.get("status"), r.get("error") or ""
    if status in ("timeout", "out of memory", "crashed", "not run"):
        return status
    if status == "wrong vs eager":
        return "wrong vs eager (t2c's validation passed)"
    if status == "validation failed":
        m = re.search(r"exact pass '([^']+)'", err)
        return f"validation: exact pass {m.group(1)} changed the output" if m else "validation: the ONNX artifact differs from the IR"
    if status == "error":
        if r.get("error_type") == "UnsupportedOpError":
            m = re.search(r"(<built-in function \w+>|\baten[.:]+[\w.]+|\boperator\.\w+|\b[\w.]+::\w+)", err)
            head = err.split(" at ")[0]
            return f"unsupported op: {m.group(1)}" if m else f"unsupported: {normalise(head)}"
        if "torch.export" in err:
            if re.search(r"data.dependent|GuardOnDataDependent|unbacked", err, re.I):
                return "torch.export: data-dependent guard"
            rest = err.split(": ", 1)[1] if ": " in err else err
            return f"torch.export: {normalise(rest)[:110]}"
        return f"error: {normalise(err)}"
    if status == "internal error":
        if (r.get("where") or "").endswith("in eager_outputs"):
            return f"internal error: eager rejects the inputs of t2c's second validation shape (compiler.py:eager_outputs): {normalise(err)[:80]}"
        where = r.get("where") or "outside t2c"
        where = re.sub(r":\d+ in ", ":", where)
        return f"internal error: {r.get('error_type')} in {where}"
    return f"{status}: {normalise(err)}"


def anchor_cause(r: dict) -> str:
    status, err = r.get("status"), r.get("error") or ""
    if status in ("timeout", "out of memory", "crashed", "not run", "mismatch"):
        return status
    if re.search(r"data.dependent|GuardOnDataDependent|unbacked", err, re.I):
        return f"{status}: data-dependent guard"
    if status == "ORT failed":
        m = re.search(r"at (the \w+ shape).*?running (\w+) node", err)
        return f"ORT failed at {m.group(1)}: {m.group(2)} node" if m else f"ORT failed: {normalise(err)[:100]}"
    m = re.search(r"No ONNX function found for <OpOverload\(op='([\w.]+)'", err)
    if m:
        return f"{status}: no ONNX function for {m.group(1)}"
    m = re.search(r"<class '([\w.]+)'>: (.*)", err)
    if m:
        return f"{status}: {m.group(1).rsplit('.', 1)[-1]}: {normalise(m.group(2))[:100]}"
    return f"{status}: {normalise(err)[:120]}"


def summarise(rows: list[dict], anchor: bool) -> dict:
    def counts(tool):
        c = collections.Counter()
        for r in rows:
            c[r[tool]["status"] if tool in r else (r.get("status") or "missing")] += 1
        return dict(c.most_common())

    ran = [r for r in rows if "t2c" in r]
    summary: dict = {"architectures": len(rows), "ran": len(ran), "skipped": {r["arch"]: r.get("status") for r in rows if "t2c" not in r}}
    summary["t2c"] = counts("t2c")
    causes = collections.defaultdict(list)
    for r in ran:
        if failed(r["t2c"]):
            r["t2c"]["cause"] = t2c_cause(r["t2c"])
            causes[r["t2c"]["cause"]].append(r["arch"])
    summary["t2c_causes"] = dict(sorted(causes.items(), key=lambda kv: (-len(kv[1]), kv[0])))
    summary["t2c_internal_errors"] = {r["arch"]: f"{r['t2c'].get('error_type')}: {r['t2c'].get('error')} [{r['t2c'].get('where')}]"
                                      for r in ran if r["t2c"].get("status") == "internal error"}
    if anchor:
        summary["anchor"] = counts("anchor")
        acauses = collections.defaultdict(list)
        for r in ran:
            if failed(r.get("anchor")):
                r["anchor"]["cause"] = anchor_cause(r["anchor"])
                acauses[r["anchor"]["cause"]].append(r["arch"])
        summary["anchor_causes"] = dict(sorted(acauses.items(), key=lambda kv: (-len(kv[1]), kv[0])))
        ok = lambda r, tool: r.get(tool, {}).get("status") == "ok"  # noqa: E731
        summary["both_ok"] = sorted(r["arch"] for r in ran if ok(r, "t2c") and ok(r, "anchor"))
        summary["t2c_only"] = sorted(r["arch"] for r in ran if ok(r, "t2c") and not ok(r, "anchor"))
        summary["anchor_only"] = sorted(r["arch"] for r in ran if ok(r, "anchor") and not ok(r, "t2c"))
        summary["both_failed"] = sorted(r["arch"] for r in ran if not ok(r, "t2c") and not ok(r, "anchor"))
    return summary


def print_table(rows: list[dict], summary: dict, anchor: bool) -> None:
    print(f"\n{'arch':<26} {'kind':<8} {'t2c':<18} {'s':>6} {'nodes':>9}  {'anchor':<14} {'s':>6}  error (t2c | anchor)")
    for r in rows:
        t, a = r.get("t2c") or {}, r.get("anchor") or {}
        if not t:
            print(f"{r['arch']:<26} {r.get('kind', '?'):<8} {r.get('status', '?')}")
            continue
        nodes = t.get("node_counts") or {}
        nodes = f"{nodes.get('traced', '')}->{nodes.get('final', '')}" if nodes else ""
        err = " | ".join(x for x in ((t.get("cause") or "") and t.get("error", "")[:70], (a.get("cause") or "") and a.get("error", "")[:60]) if x)
        print(f"{r['arch']:<26} {r['kind']:<8} {t.get('status', ''):<18} {t.get('seconds', ''):>6} {nodes:>9}  "
              f"{a.get('status', '-'):<14} {a.get('seconds', ''):>6}  {err}")
    total = summary["architectures"]
    print(f"\nt2c:    {summary['t2c'].get('ok', 0)} of {total} ok  {summary['t2c']}")
    if anchor:
        print(f"anchor: {summary['anchor'].get('ok', 0)} of {total} ok  {summary['anchor']}")
        print(f"both ok {len(summary['both_ok'])}, t2c only {len(summary['t2c_only'])} {summary['t2c_only']}, "
              f"anchor only {len(summary['anchor_only'])}, both failed {len(summary['both_failed'])}")
    if summary["skipped"]:
        print(f"skipped: {summary['skipped']}")
    print("\nt2c failures by cause:")
    for cause, archs in summary["t2c_causes"].items():
        print(f"  {len(archs):3d}  {cause}: {', '.join(archs)}")
    if summary["t2c_internal_errors"]:
        print("\nt2c internal errors (exit 3):")
        for arch, msg in summary["t2c_internal_errors"].items():
            print(f"  {arch}: {msg[:220]}")
    if anchor:
        print("\nanchor failures by cause:")
        for cause, archs in summary["anchor_causes"].items():
            print(f"  {len(archs):3d}  {cause}: {', '.join(archs)}")


def git_commit() -> dict:
    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True, timeout=30).stdout.rstrip()
        except Exception:  # noqa: BLE001
            return ""
    # What differs from the commit in the code that ran (porcelain lines are "XY path").
    changed = [ln[3:] for ln in git("status", "--porcelain").splitlines() if ln[3:].startswith(("t2c/", "benchmarks/anchors.py", "benchmarks/coverage.py"))]
    return {"commit": git("rev-parse", "HEAD").strip(), "uncommitted": changed}


def meta_info(args) -> dict:
    import torch
    import transformers

    import t2c

    meta = {"date": datetime.datetime.now().strftime("%Y%m%d-%H%M%S"), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "torch": torch.__version__, "transformers": transformers.__version__, "t2c": t2c.__version__, **git_commit(),
            "jobs": args.jobs, "timeout_s": args.timeout, "max_rss_gib": args.max_rss_gib, "anchor": not args.no_anchor,
            "pipeline": "-O1", "tolerance": TOL, "batch": BATCH, "seed": SEED, "configs": os.path.abspath(args.configs)}
    try:
        import onnxruntime

        meta["onnxruntime"] = onnxruntime.__version__
    except ImportError:
        pass
    return meta


def save(rows: list[dict], summary: dict, meta: dict, out: str, tag: str = "coverage") -> str:
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"{tag}-{platform.node() or 'host'}-{meta['date']}.json")
    with open(path, "w") as f:
        json.dump({"meta": meta, "summary": summary, "rows": rows}, f, indent=1, default=str)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=None, help="comma-separated architectures (config file names)")
    parser.add_argument("--quick", action="store_true", help=f"a fixed sample: {','.join(QUICK)}")
    parser.add_argument("--jobs", type=int, default=2, help="architectures at a time, one subprocess each")
    parser.add_argument("--timeout", type=int, default=240, help="seconds per tool per architecture (the subprocess gets 2x + 60)")
    parser.add_argument("--max-rss-gib", type=float, default=6.0, help="kill an architecture's subprocess above this resident memory")
    parser.add_argument("--no-anchor", action="store_true", help="t2c only")
    parser.add_argument("--configs", default=CONFIGS)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    parser.add_argument("--merge", default=None, help="comma-separated result JSONs to merge (later files win); runs nothing")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--result", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, ROOT)  # the t2c of this checkout, ahead of an editable install of another one
    if args.worker:
        worker(args.worker, args.configs, args.result, args.timeout, not args.no_anchor)
        return
    if args.merge:
        merge(args)
        return
    archs = list_archs(args.configs)
    if args.only:
        wanted = args.only.split(",")
        unknown = sorted(set(wanted) - set(archs))
        if unknown:
            parser.error(f"no config for {unknown}; see {args.configs}")
        archs = [a for a in archs if a in wanted]
    elif args.quick:
        archs = [a for a in archs if a in QUICK]
    meta = meta_info(args)
    rows = []
    t0 = time.perf_counter()
    lock = threading.Lock()
    with tempfile.TemporaryDirectory(prefix="t2c-coverage-") as tmp, concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        futures = {pool.submit(run_arch, a, args, tmp): a for a in archs}
        for i, fut in enumerate(concurrent.futures.as_completed(futures), 1):
            r = fut.result()
            with lock:
                rows.append(r)
            t, a = r.get("t2c") or {}, r.get("anchor") or {}
            print(f"[{i}/{len(archs)} {time.perf_counter() - t0:6.0f}s] {r['arch']:<24} t2c {t.get('status', r.get('status', '?')):<16} "
                  f"anchor {a.get('status', '-'):<14} {(t.get('error') or a.get('error') or '')[:90]}", flush=True)
    rows.sort(key=lambda r: r["arch"])
    meta["wall_seconds"] = round(time.perf_counter() - t0, 1)
    summary = summarise(rows, not args.no_anchor)
    print_table(rows, summary, not args.no_anchor)
    print(f"\nwrote {save(rows, summary, meta, args.out)}")


def merge(args) -> None:
    """Rows of several runs, later files winning per architecture; the summary recomputed.

    A row of a --no-anchor run keeps the anchor result an earlier file has for its architecture
    (torch.onnx.export does not change with t2c's commits), marked `anchor_from`: t2c re-run at a
    new commit is compared with the anchor without exporting everything again."""
    by_arch, metas = {}, []
    for path in args.merge.split(","):
        with open(path) as f:
            data = json.load(f)
        metas.append({**data["meta"], "file": os.path.basename(path)})
        for r in data["rows"]:
            r.setdefault("commit", data["meta"].get("commit"))
            earlier = by_arch.get(r["arch"])
            if r.get("anchor") is None and earlier is not None and earlier.get("anchor") is not None:
                r["anchor"] = earlier["anchor"]
                r["anchor_from"] = earlier.get("anchor_from") or earlier["commit"]
            by_arch[r["arch"]] = r
    rows = [by_arch[a] for a in sorted(by_arch)]
    anchor = all(r.get("anchor") is not None for r in rows if "t2c" in r)
    meta = {**metas[-1], "date": datetime.datetime.now().strftime("%Y%m%d-%H%M%S"), "merged_from": metas,
            "wall_seconds": sum(m.get("wall_seconds", 0) for m in metas)}
    meta["commits"] = sorted({m.get("commit") for m in metas})
    summary = summarise(rows, anchor)
    print_table(rows, summary, anchor)
    print(f"\nwrote {save(rows, summary, meta, args.out)}")


if __name__ == "__main__":
    main()
