"""report.html: the validation report as a page a person would rather read than JSON."""

from __future__ import annotations

import html
import json


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return html.escape(str(v))


def _table(headers: list[str], rows: list[list]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{_cell(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _badge(ok) -> str:
    if ok is None:
        return '<span class="skip">not validated</span>'
    return '<span class="ok">OK</span>' if ok else '<span class="bad">FAILED</span>'


def drift_summary(pass_record: dict) -> dict:
    """Worst drift from eager after one pass, over every shape and output."""
    outs = [o for c in pass_record.get("vs_eager", []) for o in c["outputs"]]
    if not outs:
        return {"max_abs": float("nan"), "cosine": float("nan")}
    d = {"max_abs": max(float(o["max_abs"]) for o in outs), "cosine": min(float(o["cosine"]) for o in outs)}
    agree = [o["argmax_agreement"] for o in outs if "argmax_agreement" in o]
    if agree:
        d["argmax_agreement"] = min(agree)
        d["kl"] = max(o["kl"] for o in outs if "kl" in o)
    return d


def render_html(report: dict) -> str:
    """A standalone HTML page: summary, per-output errors, per-pass table, op counts."""
    v = report.get("validation", {})
    parts = [
        f"<h1>t2c report: {html.escape(str(report.get('model')))}</h1>",
        f"<p>{_badge(v.get('ok'))} {html.escape(str(v.get('summary', '')))}</p>",
        _table(["target", "target options", "pipeline", "t2c"], [[report.get("target"), ", ".join(f"{k}={v}" for k, v in report.get("target_options", {}).items()), report.get("pipeline"), report.get("t2c_version")]]),
        *(f"<p><b>warning:</b> {html.escape(w)}</p>" for w in report.get("warnings", [])),
        "<h2>Artifact vs IR interpreter</h2>",
        *([f"<p>{html.escape(v['artifact_policy'])}</p>"] if v.get("artifact_policy") else []),
    ]
    for check in v.get("artifact_vs_ir", []):
        parts.append(f"<h3>{html.escape(check['shape'])}</h3>")
        parts.append(_table(["output", "max abs", "max rel", "cosine", "atol", "rtol", "ok"], [[o["name"], o["max_abs"], o["max_rel"], o["cosine"], o["atol"], o["rtol"], "yes" if o["ok"] else "NO"] for o in check["outputs"]]))
    parts.append("<h2>Passes (IR after each pass vs eager)</h2>")
    rows = []
    for p in report.get("passes", []):
        d = drift_summary(p)
        rows.append([p["pass"] + (f"{{{p['options']}}}" if p.get("options") else ""), "exact" if p["exact"] else "approximate", p["nodes_before"], p["nodes_after"], f"{p['seconds'] * 1000:.1f} ms", d["max_abs"], d["cosine"], d.get("argmax_agreement", "-"), d.get("kl", "-"), json.dumps(p["stats"])])
    parts.append(_table(["pass", "kind", "nodes before", "nodes after", "time", "max abs vs eager", "min cosine", "next-token agreement", "KL", "stats"], rows))
    for p in report.get("passes", []):  # approximate passes: the bar they were judged by and per-layer SQNR
        if p.get("layers") is not None:
            bar = ", ".join(f"{k} {v:g}" for k, v in p.get("bar", {}).items() if v is not None) or "none (measured only)"
            parts.append(f"<h3>{html.escape(p['pass'])}: per-layer SQNR vs the IR before it (bar: {html.escape(bar)})</h3>")
            parts.append(_table(["layer", "op", "SQNR (dB)"], [[r["layer"], r["op"], r["sqnr_db"]] for r in p["layers"]]))
    counts = report.get("op_counts", {})
    ops = sorted(set(counts.get("traced", {})) | set(counts.get("final", {})))
    parts.append("<h2>Op counts</h2>")
    parts.append(_table(["op", "traced", "final"], [[op, counts.get("traced", {}).get(op, 0), counts.get("final", {}).get(op, 0)] for op in ops]))
    parts.append("<h2>Timings</h2>")
    parts.append(_table(["stage", "seconds"], [[k, v] for k, v in report.get("timings", {}).items()]))
    style = (
        "body{font-family:system-ui,sans-serif;margin:2em;max-width:70em}"
        "table{border-collapse:collapse;margin:0.5em 0 1.5em}td,th{border:1px solid #ccc;padding:0.25em 0.6em;text-align:left}"
        "th{background:#f3f3f3}.ok{color:#fff;background:#2a7;padding:0.1em 0.5em}.bad{color:#fff;background:#c33;padding:0.1em 0.5em}"
        ".skip{background:#ddd;padding:0.1em 0.5em}"
    )
    return f"<!doctype html><html><head><meta charset='utf-8'><title>t2c report</title><style>{style}</style></head><body>{''.join(parts)}</body></html>\n"
