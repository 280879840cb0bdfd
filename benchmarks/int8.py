"""INT8 benchmark: t2c's quantize-int8 (weight-only and W8A8, both ONNX flavors) against fp32 and
against ONNX Runtime's own `quantize_dynamic` applied to the fp32 export, in one run.

Per model (MiniLM with its real weights; zoo models from small configs):
  * file size (model.onnx + external data) and its ratio to t2c's fp32 -O1 file;
  * ONNX Runtime latency (CPUExecutionProvider, ORT_ENABLE_ALL, --threads intra-op
    threads), median of interleaved round-robin runs at each --shapes batch x seq;
  * accuracy against fp32 eager PyTorch: for MiniLM the cosine of mean-pooled
    sentence embeddings over examples/sentences.py's 40 real sentences (mean and
    worst); for the zoo, each output's cosine and, for `logits`, next-token
    agreement, on seeded random ids.

Variants: fp32 (t2c -O1 standard / ort, torch.onnx.export), t2c weight-only (-O1,quantize-int8;
standard / ort), t2c W8A8 (SmoothQuant calibrated on examples/sentences.py's
CALIBRATION sentences for MiniLM, generated inputs for the zoo; standard / ort),
t2c W8A8 with int8 embeddings (skip="router,lm_head"), and ORT
quantize_dynamic (per tensor, the default, and per channel) on the torch.onnx
export. `--kernels` adds one matmul at a time: every int8 form the ort flavor
could use, its latency and its error against t2c's reference of the same mode.
`--lowerings` A/Bs the ort flavor's W8A8 qlinear overlay (QuantizeLinear +
MatMulIntegerToFloat, quant.py) against the standard lowering it replaces, on
cpu_latency.py's base Llama-style and BERT-style models (--lowering-hidden, one
input 1 x --lowering-seq): both -O2 --flavor ort, outputs compared bit for bit,
-O1 --flavor ort alongside.

    .venv/bin/python benchmarks/int8.py                      # minilm + llama, bert
    .venv/bin/python benchmarks/int8.py --models minilm --kernels
    .venv/bin/python benchmarks/int8.py --quick              # minilm only, 1x128, 10 rounds
    .venv/bin/python benchmarks/int8.py --models none --lowerings --repeat 60

Prints tables and writes benchmarks/results/int8-<host>-<date>.json.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
import traceback
import warnings

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "examples"))
sys.path.insert(0, HERE)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

import sentences  # noqa: E402
import zoo  # noqa: E402
from anchors import torch_onnx_export  # noqa: E402
from cpu_latency import make_session, short_error  # noqa: E402

import t2c  # noqa: E402
from t2c.frontends.torch_export import flatten_outputs  # noqa: E402

W8A8 = "-O1,quantize-int8{mode=w8a8}"
W8A8_EMB = '-O1,quantize-int8{mode=w8a8,skip="router,lm_head"}'
VARIANTS = {  # name -> (builder kind, pipeline or option, flavor)
    "fp32 t2c std": ("t2c", "-O1", "standard"),
    "fp32 t2c ort": ("t2c", "-O1", "ort"),
    "fp32 torch.onnx": ("torch", None, None),
    "wo t2c std": ("t2c", "-O1,quantize-int8", "standard"),
    "wo t2c ort": ("t2c", "-O1,quantize-int8", "ort"),
    "w8a8 t2c std": ("t2c", W8A8, "standard"),
    "w8a8 t2c ort": ("t2c", W8A8, "ort"),
    "w8a8+emb t2c ort": ("t2c", W8A8_EMB, "ort"),
    "ORT qdyn": ("qdyn", False, None),
    "ORT qdyn per-ch": ("qdyn", True, None),
}
FP32 = "fp32 t2c std"


def folder_size(path: str) -> int:
    """model file plus the external data files beside it that share its name."""
    folder, base = os.path.dirname(path), os.path.basename(path)
    return sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder) if f.startswith(base))


# --------------------------------------------------------------------------- building


def build(kind: str, arg, flavor, model, example, workdir: str, name: str, calibrate: str | None, artifacts: dict) -> str:
    if kind == "t2c":
        out = os.path.join(workdir, f"{name}-{arg}-{flavor}".replace("/", "_").replace('"', "").replace(",", "_"))
        passes_calib = calibrate if "w8a8" in arg else None
        t2c.compile(model, example, passes=arg, flavor=flavor, out=out, validate=False, calibrate=passes_calib)
        return os.path.join(out, "model.onnx")
    if kind == "torch":
        return torch_onnx_export(model, example, os.path.join(workdir, f"{name}-torch.onnx"))
    from onnxruntime.quantization import quantize_dynamic

    src = artifacts.get("fp32 torch.onnx")
    if src is None:
        raise RuntimeError("needs the torch.onnx export, which failed")
    dst = os.path.join(workdir, f"{name}-qdyn{'-pc' if arg else ''}.onnx")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quantize_dynamic(src, dst, per_channel=bool(arg))
    return dst


# --------------------------------------------------------------------------- accuracy


def first_output(session, names, feed) -> dict[str, np.ndarray]:
    outs = session.run(None, {n: feed[n] for n in names})
    return {o.name: v for o, v in zip(session.get_outputs(), outs)} | {"#0": outs[0]}


def accuracy_minilm(session, names, ids, eager_emb) -> dict:
    embs = []
    for seq in ids:
        out = first_output(session, names, {"input_ids": np.array([seq], np.int64)})["#0"]
        embs.append(torch.from_numpy(out).mean(1)[0])
    cos = torch.nn.functional.cosine_similarity(torch.stack(embs).double(), eager_emb.double(), dim=-1)
    return {"embedding_cosine_mean": float(cos.mean()), "embedding_cosine_min": float(cos.min()), "sentences": len(ids)}


def accuracy_outputs(session, names, feed, eager: dict[str, torch.Tensor]) -> dict:
    outs = session.run(None, {n: feed[n] for n in names})
    result = {}
    for (oname, want), got in zip(eager.items(), outs):
        g, w = torch.from_numpy(np.asarray(got)).double().flatten(), want.double().flatten()
        entry = {"cosine": float(torch.nn.functional.cosine_similarity(g, w, dim=0))}
        if oname == "logits":
            entry["next_token_agreement"] = float((torch.from_numpy(np.asarray(got)).argmax(-1) == want.argmax(-1)).double().mean())
        result[oname] = entry
    return result


# --------------------------------------------------------------------------- latency


def interleaved(runners: dict, rounds: int, warmup: int, stat=statistics.median) -> dict[str, float]:
    """ms per runner (the median, or `stat`, of its rounds); one call of each per round, rotating the start."""
    names = list(runners)
    for _ in range(warmup):
        for n in names:
            runners[n]()
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(rounds):
        for n in names[r % len(names):] + names[: r % len(names)]:
            t0 = time.perf_counter()
            runners[n]()
            samples[n].append(time.perf_counter() - t0)
    return {n: stat(s) * 1e3 for n, s in samples.items()}


# --------------------------------------------------------------------------- the ort W8A8 overlay, A/B


def bench_lowerings(args) -> list[dict]:
    """-O2 --flavor ort with and without the qlinear overlay (the standard W8A8 lowering), and -O1, interleaved."""
    from cpu_latency import load_model
    from t2c.backends.onnx.flavors import FLAVORS

    overlay = FLAVORS["ort"].overlay
    rows = []
    for name in ("llama", "bert"):
        model, _ = load_model(name, "base", args.lowering_hidden)
        vocab = model.config.vocab_size
        example = {"input_ids": torch.randint(0, vocab, (2, 16), generator=torch.Generator().manual_seed(1))}
        feed = {"input_ids": torch.randint(0, vocab, (1, args.lowering_seq), generator=torch.Generator().manual_seed(0)).numpy()}
        sessions, outs = {}, {}
        with tempfile.TemporaryDirectory() as workdir:
            for label, passes, keep in (("-O2 ort overlay", "-O2", True), ("-O2 standard W8A8", "-O2", False), ("-O1", "-O1", True)):
                saved = overlay.pop("qlinear") if not keep else None
                try:
                    out = os.path.join(workdir, label.replace(" ", "_"))
                    t2c.compile(model, example, passes=passes, flavor="ort", out=out, validate=False)
                finally:
                    if saved is not None:
                        overlay["qlinear"] = saved
                sess, names = make_session(os.path.join(out, "model.onnx"), threads=args.threads)
                sessions[label] = (sess, names)
                outs[label] = sess.run(None, feed)
        identical = all(np.array_equal(a, b) for a, b in zip(outs["-O2 ort overlay"], outs["-O2 standard W8A8"]))
        ms = interleaved({k: (lambda s=s, n=n: s.run(None, {x: feed[x] for x in n})) for k, (s, n) in sessions.items()}, args.repeat, args.warmup)
        base = ms["-O2 standard W8A8"]
        rows.append({"model": name, "hidden": args.lowering_hidden, "seq": args.lowering_seq, "identical": identical, "ms": ms,
                     "overlay_over_standard": ms["-O2 ort overlay"] / base, "over_O1": {k: v / ms["-O1"] for k, v in ms.items()}})
        print(f"{name}: " + ", ".join(f"{k} {v:.2f} ms" for k, v in ms.items())
              + f"; overlay / standard W8A8 {ms['-O2 ort overlay'] / base:.3f}; bit-identical {identical}", flush=True)
    return rows


# --------------------------------------------------------------------------- one model


def bench_model(name: str, args, workdir: str) -> dict:
    model, example = zoo.build(name)
    model.eval()
    row: dict = {"model": name, "weights": "real" if name == "minilm" else "random (small config)", "variants": {}}
    calibrate = None
    if name == "minilm":
        ids = sentences.tokenize(sentences.SENTENCES)
        with torch.no_grad():
            eager_emb = torch.stack([model(input_ids=torch.tensor([s])).last_hidden_state.mean(1)[0] for s in ids])
        calibrate = os.path.join(workdir, "calibration.txt")
        with open(calibrate, "w") as f:
            f.write("\n".join(" ".join(map(str, s)) for s in sentences.tokenize(sentences.CALIBRATION)) + "\n")
        row["calibration"] = f"{len(sentences.CALIBRATION)} sentences (examples/sentences.py CALIBRATION)"
    else:
        acc_ids = {"input_ids": torch.randint(0, model.config.vocab_size, (2, 64), generator=torch.Generator().manual_seed(0))}
        with torch.no_grad():
            names, values = flatten_outputs(model(**acc_ids))
        eager = dict(zip(names, values))
        row["calibration"] = "generated inputs (no --calibrate)"
    artifacts: dict[str, str] = {}
    for variant in args.variants:
        kind, arg, flavor = VARIANTS[variant]
        rec: dict = {}
        t0 = time.perf_counter()
        try:
            artifacts[variant] = build(kind, arg, flavor, model, example, workdir, name, calibrate, artifacts)
            rec["build_s"] = round(time.perf_counter() - t0, 1)
            rec["size_bytes"] = folder_size(artifacts[variant])
        except Exception as e:  # noqa: BLE001 - a benchmark records failures and goes on
            rec["error"] = "build: " + short_error(e)
            if os.environ.get("T2C_BENCH_DEBUG"):
                traceback.print_exc()
        row["variants"][variant] = rec
        print(f"  built {name} {variant}: {rec.get('size_bytes', rec.get('error'))}", file=sys.stderr, flush=True)
    fp32 = row["variants"].get(FP32, {}).get("size_bytes")
    sessions = {}
    for variant, path in artifacts.items():
        rec = row["variants"][variant]
        if fp32:
            rec["size_ratio_vs_fp32"] = rec["size_bytes"] / fp32
        try:
            sess, names = make_session(path, args.threads)
            sessions[variant] = (sess, names)
            if name == "minilm":
                rec["accuracy"] = accuracy_minilm(sess, names, ids, eager_emb)
            else:
                rec["accuracy"] = accuracy_outputs(sess, names, {k: v.numpy() for k, v in acc_ids.items()}, eager)
        except Exception as e:  # noqa: BLE001
            rec["error"] = "run: " + short_error(e)
    for shape in args.shapes:
        b, s = (int(n) for n in shape.split("x"))
        feed = {"input_ids": torch.randint(0, model.config.vocab_size, (b, s), generator=torch.Generator().manual_seed(1)).numpy()}
        runners = {v: (lambda se=se, na=na: se.run(None, {n: feed[n] for n in na})) for v, (se, na) in sessions.items()}
        for v, ms in interleaved(runners, args.repeat, args.warmup).items():
            row["variants"][v].setdefault("latency_ms", {})[shape] = ms
    return row


# --------------------------------------------------------------------------- kernels


def bench_kernels(args) -> list[dict]:
    """One matmul x[T, K] @ W[N, K]^T at a time: each int8 form, its latency, its error vs t2c's reference of that mode."""
    import onnxruntime as ort
    from onnx import TensorProto as TP
    from onnx import helper
    from onnx import numpy_helper as nh

    from t2c.backends.onnx import lower
    from t2c.ir import DType, Graph, TensorType, run_graph
    from t2c.ir.opdefs import quant as Q

    rows = []
    for t, k, n in [(256, 384, 1536), (256, 1536, 384), (256, 512, 512)]:
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(t, k, generator=gen)
        w = torch.randn(n, k, generator=gen) * 0.05
        q, s = Q.quantize_weight(w)

        def t2c_model(mode):
            g = Graph()
            g.set_output("y", g.add_node("qlinear", [g.add_input("x", TensorType(DType.F32, ("t", k))), g.add_param("w", q), g.add_param("s", s)], Q.QLinearAttrs(mode)).output)
            return lower(g), run_graph(g, {"x": x})["y"]

        def onnx_model(nodes, inits, ms=False):
            graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TP.FLOAT, [None, k])], [helper.make_tensor_value_info("y", TP.FLOAT, None)], inits)
            opsets = [helper.make_opsetid("", 23)] + ([helper.make_opsetid("com.microsoft", 1)] if ms else [])
            m = helper.make_model(graph, opset_imports=opsets)
            m.ir_version = 10
            return m

        wo_model, wo_ref = t2c_model("weight_only")
        a8_model, a8_ref = t2c_model("w8a8")
        wq_t = q.T.contiguous().numpy()
        forms = {
            "fp32 MatMul": (onnx_model([helper.make_node("MatMul", ["x", "wT"], ["y"])], [nh.from_array(w.T.contiguous().numpy(), "wT")]), "weight_only"),
            "t2c weight-only (Cast*scale, folded)": (wo_model, "weight_only"),
            "DequantizeLinear + MatMul": (onnx_model([helper.make_node("DequantizeLinear", ["wq", "ws"], ["wd"], axis=1), helper.make_node("MatMul", ["x", "wd"], ["y"])],
                                                     [nh.from_array(wq_t, "wq"), nh.from_array(s.numpy(), "ws")]), "weight_only"),
            "t2c w8a8 (u8s8 MatMulInteger)": (a8_model, "w8a8"),
            "DynamicQuantizeLinear + MatMulInteger (per tensor)": (onnx_model([
                helper.make_node("DynamicQuantizeLinear", ["x"], ["xq", "xs", "xz"]), helper.make_node("MatMulInteger", ["xq", "wq", "xz"], ["acc"]),
                helper.make_node("Cast", ["acc"], ["accf"], to=TP.FLOAT), helper.make_node("Mul", ["xs", "ws"], ["sc"]), helper.make_node("Mul", ["accf", "sc"], ["y"])],
                [nh.from_array(wq_t, "wq"), nh.from_array(s.numpy(), "ws")]), "w8a8"),
            "com.microsoft DynamicQuantizeMatMul (per tensor)": (onnx_model([helper.make_node("DynamicQuantizeMatMul", ["x", "wq", "ws"], ["y"], domain="com.microsoft")],
                                                                          [nh.from_array(wq_t, "wq"), nh.from_array(s.numpy(), "ws")], ms=True), "w8a8"),
        }
        for acc in (0, 4):
            bs = 128 if k % 128 == 0 else 32
            qb, sb = Q.quantize_weight(w, bs)
            ub = (qb.to(torch.int32) + 128).to(torch.uint8).reshape(n, k // bs, bs).numpy()
            node = helper.make_node("MatMulNBits", ["x", "B", "S", "Z"], ["y"], domain="com.microsoft", K=k, N=n, bits=8, block_size=bs, accuracy_level=acc)
            zp = np.full((n, k // bs), 128, np.uint8).reshape(-1)
            forms[f"com.microsoft MatMulNBits bits=8 block={bs} acc={acc}"] = (onnx_model([node], [nh.from_array(ub, "B"), nh.from_array(sb.numpy().reshape(-1), "S"), nh.from_array(zp, "Z")], ms=True), ("group", bs))
        results = {}
        runners = {}
        for label, (m, ref_kind) in forms.items():
            try:
                so = ort.SessionOptions()
                so.intra_op_num_threads = args.threads or 1
                so.log_severity_level = 3
                sess = ort.InferenceSession(m.SerializeToString(), so, providers=["CPUExecutionProvider"])
                y = torch.from_numpy(sess.run(None, {"x": x.numpy()})[0])
                if isinstance(ref_kind, tuple):  # block-wise weights: their own weight-only reference
                    qb, sb = Q.quantize_weight(w, ref_kind[1])
                    ref = torch.nn.functional.linear(x, Q.dequantize(qb, sb, ref_kind[1]))
                else:
                    ref = wo_ref if ref_kind == "weight_only" else a8_ref
                d = (y - ref).abs().max()
                results[label] = {"max_abs_vs_reference": float(d), "max_rel_vs_reference": float(d / ref.abs().max()),
                                  "reference": "weight-only" if ref_kind != "w8a8" else "w8a8 per-token"}
                runners[label] = lambda sess=sess: sess.run(None, {"x": x.numpy()})
            except Exception as e:  # noqa: BLE001
                results[label] = {"error": short_error(e)}
        # One op at a time is short enough for the machine's noise to dominate a median: the
        # fastest of the rounds is what the kernel can do (the median is kept too).
        for label, ms in interleaved(runners, max(args.repeat, 20), 3, stat=min).items():
            results[label]["ms"] = ms
        for label, ms in interleaved(runners, max(args.repeat, 20), 0).items():
            results[label]["median_ms"] = ms
        rows.append({"shape": f"x[{t},{k}] @ W[{n},{k}]^T", "forms": results})
    return rows


# --------------------------------------------------------------------------- output


def fmt(v, spec=".3f"):
    return format(v, spec) if isinstance(v, (int, float)) and not isinstance(v, bool) else ("-" if v is None else str(v))


def print_tables(rows: list[dict], kernels: list[dict], shapes: list[str]) -> None:
    for r in rows:
        print(f"\n{r['model']} ({r['weights']}; SmoothQuant calibration: {r['calibration']})")
        acc_head = "emb cos mean/min" if r["model"] == "minilm" else "cos / next-tok"
        header = f"{'variant':<18} {'size MB':>8} {'x fp32':>7} " + " ".join(f"{'ms ' + s:>11}" for s in shapes) + f"  {acc_head}"
        print(header)
        print("-" * len(header))
        for v, rec in r["variants"].items():
            if "error" in rec and "size_bytes" not in rec:
                print(f"{v:<18} {rec['error'][:100]}")
                continue
            acc = rec.get("accuracy", {})
            if "embedding_cosine_mean" in acc:
                a = f"{acc['embedding_cosine_mean']:.5f} / {acc['embedding_cosine_min']:.5f}"
            else:
                first = next(iter(acc.values()), {})
                a = f"{fmt(first.get('cosine'), '.5f')} / {fmt(first.get('next_token_agreement'), '.3f')}"
            lat = " ".join(f"{fmt(rec.get('latency_ms', {}).get(s), '.2f'):>11}" for s in shapes)
            print(f"{v:<18} {rec.get('size_bytes', 0) / 1e6:>8.2f} {fmt(rec.get('size_ratio_vs_fp32'), '.3f'):>7} {lat}  {a}{'  ' + rec['error'][:60] if 'error' in rec else ''}")
        vs = r["variants"]
        ours, theirs = vs.get("w8a8 t2c ort", {}), vs.get("ORT qdyn", {})
        if "accuracy" in ours and "accuracy" in theirs:
            key = "embedding_cosine_mean" if r["model"] == "minilm" else None
            a_ours = ours["accuracy"][key] if key else next(iter(ours["accuracy"].values()))["cosine"]
            a_theirs = theirs["accuracy"][key] if key else next(iter(theirs["accuracy"].values()))["cosine"]
            lat = [ours.get("latency_ms", {}).get(s, float("nan")) / theirs.get("latency_ms", {}).get(s, float("nan")) for s in shapes]
            print(f"  t2c w8a8 (ort) vs ORT quantize_dynamic: accuracy {a_ours:.5f} vs {a_theirs:.5f}; latency ratio "
                  + ", ".join(f"{s} {x:.2f}x" for s, x in zip(shapes, lat)))
    for k in kernels:
        print(f"\nkernel {k['shape']} (one thread; fastest of the rounds)")
        for label, rec in k["forms"].items():
            if "error" in rec:
                print(f"  {label:<52} {rec['error'][:80]}")
            else:
                print(f"  {label:<52} {rec['ms']:7.3f} ms  max rel err vs {rec['reference']} reference {rec['max_rel_vs_reference']:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="minilm,llama,bert", help="comma list: minilm and zoo models (examples/zoo.py); none: kernels only")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma list from {list(VARIANTS)}")
    parser.add_argument("--shapes", default="1x128,8x128", help="latency inputs, batch x seq")
    parser.add_argument("--repeat", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (0: its default)")
    parser.add_argument("--kernels", action="store_true", help="also time each int8 matmul form alone")
    parser.add_argument("--quick", action="store_true", help="minilm only, 1x128, 10 rounds")
    parser.add_argument("--lowerings", action="store_true", help="A/B the ort flavor's W8A8 qlinear overlay against the standard lowering")
    parser.add_argument("--lowering-hidden", type=int, default=256)
    parser.add_argument("--lowering-seq", type=int, default=256)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    if args.quick:
        args.models, args.shapes, args.repeat = "minilm", "1x128", 10
    args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in args.variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; choose from {list(VARIANTS)}")
    if FP32 not in args.variants:
        args.variants.insert(0, FP32)
    if any(VARIANTS[v][0] == "qdyn" for v in args.variants) and "fp32 torch.onnx" not in args.variants:
        args.variants.append("fp32 torch.onnx")
    args.shapes = [s.strip() for s in args.shapes.split(",") if s.strip()]
    torch.set_num_threads(max(args.threads, 1))
    t_run = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory() as workdir:
        for name in [m.strip() for m in args.models.split(",") if m.strip() and m.strip() != "none"]:
            try:
                rows.append(bench_model(name, args, workdir))
            except Exception as e:  # noqa: BLE001
                traceback.print_exc()
                rows.append({"model": name, "error": short_error(e), "variants": {}, "weights": "", "calibration": ""})
    kernels = bench_kernels(args) if args.kernels else []
    lowerings = bench_lowerings(args) if args.lowerings else []
    print_tables(rows, kernels, args.shapes)
    os.makedirs(args.out, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(args.out, f"int8-{platform.node() or 'host'}-{stamp}.json")
    meta = {"date": stamp, "machine": platform.machine(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "args": {k: v for k, v in vars(args).items()}, "run_s": round(time.perf_counter() - t_run, 1),
            "loadavg_end": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
            "note": "latency: median ms, ONNX Runtime CPUExecutionProvider, ORT_ENABLE_ALL, variants interleaved round-robin; "
                    "accuracy vs fp32 eager PyTorch; size = model.onnx + external data"}
    for mod in ("onnxruntime", "onnx", "transformers"):
        try:
            meta[mod] = __import__(mod).__version__
        except Exception:  # noqa: BLE001
            pass
    with open(path, "w") as f:
        json.dump({"meta": meta, "models": rows, "kernels": kernels, "lowerings": lowerings}, f, indent=2, default=str)
    print(f"\nwrote {path}")


if __name__ == "__main__":
    main()
