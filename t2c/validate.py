"""Validation: compare outputs, apply the tolerance policy, build the report.

Two comparisons on the same inputs, at the traced shape and at another
batch/sequence shape (DESIGN §7):
  * the artifact against the IR interpreter after all passes (must agree to
    the dtype's tolerance), and
  * the IR after each pass against the eager model (the drift that pass causes;
    exact passes must stay within tolerance, approximate ones are measured and
    judged only against the user's `--max-drift`).
"""

from __future__ import annotations

import bisect
import ctypes
import math
import mmap
import re
import sys
from dataclasses import asdict, dataclass, replace
from typing import Iterable, Iterator, Mapping

import torch

from .ir.core import Graph, SymDim

# DESIGN §7: fp32 exact passes atol 1e-4 / rtol 1e-4; fp16/bf16 atol 1e-2 / rtol 1.6e-2.
TOLERANCES = {
    torch.float64: (1e-4, 1e-4),
    torch.float32: (1e-4, 1e-4),
    torch.float16: (1e-2, 1.6e-2),
    torch.bfloat16: (1e-2, 1.6e-2),
}


@dataclass
class OutputComparison:
    """How one output of a candidate compares with its reference.

    For language-model logits (outputs named `logits`) it also holds the
    next-token agreement (fraction of positions whose argmax is the same) and
    the mean KL divergence KL(reference || candidate) of the softmax
    distributions: what an approximate rewrite does to generation.
    """

    name: str
    max_abs: float
    max_rel: float
    cosine: float
    atol: float
    rtol: float
    ok: bool
    argmax_agreement: float | None = None
    kl: float | None = None
    # Half-precision outputs the elementwise tolerance refuses (`judge_half_by_fp32`): the candidate's
    # and the reference's max abs error against a float32 run of the same IR.
    fp32_error: float | None = None
    reference_fp32_error: float | None = None

    def as_json(self) -> dict:
        optional = ("argmax_agreement", "kl", "fp32_error", "reference_fp32_error")
        return {k: _finite(v) for k, v in asdict(self).items() if v is not None or k not in optional}


LOGITS_OUTPUTS = ("logits",)


CHUNK_ELEMENTS = 1 << 20  # compared a chunk at a time: float64 copies of a large model's logits would hold GiBs


def token_drift(got: torch.Tensor, want: torch.Tensor) -> tuple[float, float]:
    """(argmax agreement, mean KL(want || got)) over every position of [..., vocab] logits."""
    g = got.detach().reshape(-1, got.shape[-1])
    w = want.detach().reshape(-1, want.shape[-1])
    rows = max(1, CHUNK_ELEMENTS // max(1, g.shape[-1]))
    agree, kl = 0.0, 0.0
    for start in range(0, g.shape[0], rows):
        gc, wc = g[start:start + rows].to(torch.float64), w[start:start + rows].to(torch.float64)
        agree += float((gc.argmax(-1) == wc.argmax(-1)).to(torch.float64).sum())
        log_p, log_q = torch.log_softmax(wc, -1), torch.log_softmax(gc, -1)
        kl += float((log_p.exp() * (log_p - log_q)).sum())
    n = max(1, g.shape[0])
    return agree / n, max(kl / n, 0.0)


def _finite(v):
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


def tolerance_for(dtype: torch.dtype) -> tuple[float, float]:
    """(atol, rtol) for outputs of this dtype; integers and bools must match exactly."""
    return TOLERANCES.get(dtype, (0.0, 0.0))


def compare(name: str, got: torch.Tensor, want: torch.Tensor, tolerance: tuple[float, float] | None = None) -> OutputComparison:
    """Compare one output. Shapes must match; NaN where the reference is not NaN fails."""
    atol, rtol = tolerance or tolerance_for(want.dtype)
    if tuple(got.shape) != tuple(want.shape):
        return OutputComparison(name, math.inf, math.inf, 0.0, atol, rtol, False)
    g_all, w_all = got.detach().reshape(-1), want.detach().reshape(-1)
    if g_all.numel() == 0:
        return OutputComparison(name, 0.0, 0.0, 1.0, atol, rtol, True)
    max_abs = max_rel = dot = g_sq = w_sq = 0.0
    ok = True
    for start in range(0, g_all.numel(), CHUNK_ELEMENTS):
        g = g_all[start:start + CHUNK_ELEMENTS].to(torch.float64)
        w = w_all[start:start + CHUNK_ELEMENTS].to(torch.float64)
        both_nan = torch.isnan(g) & torch.isnan(w)
        diff = torch.where(both_nan, torch.zeros_like(g), (g - w).abs())
        diff = torch.where(torch.isnan(diff), torch.full_like(diff, math.inf), diff)
        max_abs = max(max_abs, float(diff.max()))
        max_rel = max(max_rel, float((diff / w.abs().clamp_min(max(atol, 1e-12))).max()))
        gn, wn = torch.nan_to_num(g), torch.nan_to_num(w)
        dot += float(gn @ wn)
        g_sq += float(gn @ gn)
        w_sq += float(wn @ wn)
        ok = ok and bool((diff <= atol + rtol * w.abs().nan_to_num(0.0)).all())
    denom = math.sqrt(g_sq) * math.sqrt(w_sq)
    cosine = dot / denom if denom > 0 else (1.0 if g_sq == w_sq else 0.0)
    result = OutputComparison(name, max_abs, max_rel, cosine, atol, rtol, ok)
    if name in LOGITS_OUTPUTS and want.dim() >= 1 and want.dtype.is_floating_point:
        result.argmax_agreement, result.kl = token_drift(got, want)
    return result


HALF_DTYPES = (torch.float16, torch.bfloat16)


def judge_half_by_fp32(c: OutputComparison, got: torch.Tensor, want: torch.Tensor, fp32: torch.Tensor) -> OutputComparison:
    """FlashAttention's rule for a half-precision output the elementwise tolerance refuses.

    Two bf16 computations of one function that round in a different order (a kernel accumulating
    in float32, the interpreter's bf16 ops) differ by a few units in the last place of the values
    they summed: a logit near zero from a 2048-wide dot product of terms near 4 differs by ~0.06,
    far above atol 1e-2 for that element. The candidate passes if its max abs error against a
    float32 run of the IR (`fp32`) is at most twice the reference's own, plus atol.
    """
    err = float((got.detach().double() - fp32.double()).abs().max()) if got.numel() else 0.0
    ref_err = float((want.detach().double() - fp32.double()).abs().max()) if want.numel() else 0.0
    ok = math.isfinite(err) and err <= 2 * ref_err + c.atol
    return replace(c, ok=ok, fp32_error=err, reference_fp32_error=ref_err)


def compare_all(got: Mapping[str, torch.Tensor], want: Mapping[str, torch.Tensor]) -> list[OutputComparison]:
    """Compare every reference output; a missing output is a failure."""
    out = []
    for name, w in want.items():
        if name not in got:
            out.append(OutputComparison(name, math.inf, math.inf, 0.0, *tolerance_for(w.dtype), False))
        else:
            out.append(compare(name, got[name], w))
    return out


def worst(comparisons: list[OutputComparison]) -> OutputComparison | None:
    """The failing output with the largest error relative to its tolerance."""
    failing = [c for c in comparisons if not c.ok]
    if not failing:
        return None
    return max(failing, key=lambda c: c.max_abs / max(c.atol, 1e-12) if math.isfinite(c.max_abs) else math.inf)


@dataclass(frozen=True)
class DriftBar:
    """Limits on what approximate passes may change (None: not judged).

    min_cosine: every output's cosine similarity with eager; min_sqnr: every changed
    layer's SQNR in dB against the IR before the pass (t2c/drift.py);
    min_token_agreement: the next-token (argmax) agreement of `logits` outputs.
    """

    min_cosine: float | None = None
    min_sqnr: float | None = None
    min_token_agreement: float | None = None

    def as_json(self) -> dict:
        return asdict(self)

    def violation(self, record: dict) -> str | None:
        """Why a pass record (compiler._run_passes) breaks this bar, or None."""
        for check in record.get("vs_eager", []):
            for out in check["outputs"]:
                cosine = float(out["cosine"])
                if self.min_cosine is not None and not cosine >= self.min_cosine:
                    return f"output {out['name']!r} cosine {cosine:.6f} with eager < --min-cosine {self.min_cosine:g} at {check['shape']}"
                agree = out.get("argmax_agreement")
                if self.min_token_agreement is not None and agree is not None and agree < self.min_token_agreement:
                    return f"output {out['name']!r} next-token agreement {agree:.1%} < --min-token-agreement {self.min_token_agreement:g} at {check['shape']}"
        layers = record.get("layers") or []
        if self.min_sqnr is not None and layers:
            worst = sorted(layers, key=lambda r: float(r["sqnr_db"]))
            if float(worst[0]["sqnr_db"]) < self.min_sqnr:
                named = ", ".join(f"{r['layer']} {float(r['sqnr_db']):.1f} dB" for r in worst[:3])
                return f"layer SQNR below --min-sqnr {self.min_sqnr:g} dB (worst: {named})"
        return None


@dataclass(frozen=True)
class NoisyArtifact:
    """How an artifact with dynamically quantized activations is compared with the IR.

    Op by op the runtime computes the IR's integers exactly; through a model, a float
    rounding difference upstream (a norm, a softmax) can move one activation across a
    rounding boundary, and that difference then spreads as quantization noise of the
    quantization's own size. So each output must agree with the IR in cosine (and the
    next token, for logits) instead of to float tolerance.
    """

    min_cosine: float
    min_token_agreement: float | None

    def judge(self, c: OutputComparison) -> OutputComparison:
        ok = c.cosine >= self.min_cosine and (
            self.min_token_agreement is None or c.argmax_agreement is None or c.argmax_agreement >= self.min_token_agreement)
        return OutputComparison(c.name, c.max_abs, c.max_rel, c.cosine, c.atol, c.rtol, ok, c.argmax_agreement, c.kl)

    def describe(self) -> str:
        tokens = f", next-token agreement >= {self.min_token_agreement:g}" if self.min_token_agreement is not None else ""
        return f"dynamically quantized activations: each output's cosine with the IR >= {self.min_cosine:g}{tokens} (not atol)"


NOISY_OPS = ("qlinear", "qexperts")
DEFAULT_NOISY_COSINE = 0.99


def noisy_artifact(graph: Graph, bar: DriftBar) -> NoisyArtifact | None:
    """The comparison policy for graphs whose activations are quantized at run time (w8a8); None for the rest."""
    if not any(n.op in NOISY_OPS and getattr(n.attrs, "mode", "") == "w8a8" for n in graph.nodes):
        return None
    return NoisyArtifact(bar.min_cosine if bar.min_cosine is not None else DEFAULT_NOISY_COSINE, bar.min_token_agreement)


def second_shape_candidates(graph: Graph, examples: Mapping[str, torch.Tensor], seed: int = 0) -> Iterator[dict[str, torch.Tensor]]:
    """Inputs at a second shape, the most telling first; the compiler validates at the first the model accepts.

    1. every dynamic dim grown (batch + 1, others x 1.5 + 1, not round numbers), values drawn
       like the examples' (integers from the example's range, so ids stay ids and masks 0/1;
       floats with its mean and std);
    2. the same sizes with the examples' own values tiled (models whose inputs obey rules
       random values break: bounding boxes with x0 <= x1, ids that index a table);
    3. batch + 1 and the other dims one shorter, values tiled (models that cannot go longer
       than the traced length: a position table exactly that long).
    A symbol's growth follows the label it was traced under: `batch`, `batch2` (the same
    axis, when torch.export kept two symbols for it) all grow as a batch. A symbol the graph
    constrains (`seq % 4 == 0`) moves to the nearest multiple in the same direction, and
    one it bounds (`seq <= 2048`) stops at the bound.
    """
    grown = _sizes(graph, examples, lambda label, n: n + 1 if label == "batch" else n + n // 2 + 1)
    yield _random_inputs(graph, examples, grown, seed)
    yield _tiled_inputs(graph, examples, grown)
    shrunk = _sizes(graph, examples, lambda label, n: n + 1 if label == "batch" else max(1, n - 1))
    yield _tiled_inputs(graph, examples, shrunk)


def _sizes(graph: Graph, examples: Mapping[str, torch.Tensor], rule) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for v in graph.inputs:
        for d, n in zip(v.type.shape, examples[v.name].shape):
            if isinstance(d, SymDim) and d.expr in d.symbols and d.expr not in sizes:
                size = rule(re.sub(r"\d+$", "", d.expr), n)
                m = graph.constraints.get(d.expr)
                bound = graph.bounds.get(d.expr)
                if bound is not None:  # never past the graph's bound (`seq <= 2048`)
                    size = min(size, bound)
                if m:  # grown: round up (within the bound); shrunk: round down, never below one multiple
                    up = -(-size // m) * m
                    size = up if size >= n and (bound is None or up <= bound) else max(m, size // m * m)
                sizes[d.expr] = size
    return sizes


def _random_inputs(graph: Graph, examples: Mapping[str, torch.Tensor], sizes: dict[str, int], seed: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    out = {}
    for v in graph.inputs:
        ex = examples[v.name]
        shape = v.type.concrete_shape(sizes)
        if ex.dtype == torch.bool:
            out[v.name] = torch.randint(0, 2, shape, generator=g).bool()
        elif not ex.dtype.is_floating_point:
            lo, hi = int(ex.min()), int(ex.max())
            out[v.name] = torch.randint(lo, hi + 1, shape, generator=g, dtype=ex.dtype)
        else:
            mean, std = float(ex.float().mean()), float(ex.float().std()) if ex.numel() > 1 else 1.0
            out[v.name] = (torch.randn(shape, generator=g) * std + mean).to(ex.dtype)
    return out


def _tiled_inputs(graph: Graph, examples: Mapping[str, torch.Tensor], sizes: dict[str, int]) -> dict[str, torch.Tensor]:
    """Each example cropped or repeated along every axis to the new sizes (its values, in their order)."""
    out = {}
    for v in graph.inputs:
        t = examples[v.name]
        for axis, m in enumerate(v.type.concrete_shape(sizes)):
            if t.shape[axis] != m:
                t = t.index_select(axis, torch.arange(m) % t.shape[axis])
        out[v.name] = t
    return out


def shape_label(inputs: Mapping[str, torch.Tensor]) -> str:
    return ", ".join(f"{k}={'x'.join(map(str, t.shape))}" for k, t in inputs.items())


# madvise(2) advice: reclaim these pages now (Linux 5.4+; older kernels refuse it and nothing happens).
MADV_PAGEOUT = 21
_NOT_FILES = ("/dev/", "/memfd:", "/SYSV")  # shared memory: paging it out would write it to swap


def page_out_mapped(tensors: Iterable[object]) -> int:
    """Take the file-mapped pages of `tensors` out of this process's resident memory; bytes advised.

    transformers maps a safetensors checkpoint's weights from the file (its pages join the RSS as
    they are read), and the IR's params share that memory. Before the backend loads its own copy
    of the weights (ONNX Runtime: the whole of model.onnx.data), the compiler pages these out so
    the two copies are never resident at once; lowering a spilled model pages out each param once
    it is written (backends/onnx/external.py). Nothing is freed or changed, and the caller's
    tensors stay valid: a page read again comes back from the file (MADV_PAGEOUT never discards
    data, unlike MADV_DONTNEED on a private mapping). Tensors in anonymous memory (built in
    Python, read into memory) are left alone. Linux only; elsewhere, or when /proc/self/maps
    cannot be read, nothing happens.
    """
    if not sys.platform.startswith("linux"):
        return 0
    storages: dict[int, int] = {}  # start -> bytes
    for t in tensors:
        if isinstance(t, torch.Tensor) and t.device.type == "cpu" and t.layout == torch.strided:
            s = t.untyped_storage()
            if s.nbytes():
                storages[s.data_ptr()] = max(storages.get(s.data_ptr(), 0), s.nbytes())
    if not storages:
        return 0
    try:
        with open("/proc/self/maps", encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        return 0
    files = []  # (start, end) of the mappings of regular files, in address order
    for line in lines:
        parts = line.split(maxsplit=5)
        if len(parts) == 6 and parts[4] != "0" and parts[5].startswith("/") and not parts[5].startswith(_NOT_FILES):
            start, end = (int(x, 16) for x in parts[0].split("-"))
            files.append((start, end))
    page = mmap.PAGESIZE
    ranges = []
    starts = [s for s, _ in files]
    for ptr, nbytes in storages.items():
        i = max(bisect.bisect_right(starts, ptr) - 1, 0)
        while i < len(files) and files[i][0] < ptr + nbytes:
            lo, hi = max(files[i][0], ptr), min(files[i][1], ptr + nbytes)
            if lo < hi:  # rounded out to whole pages, which stay inside the (page-aligned) mapping
                ranges.append((lo - lo % page, -(-hi // page) * page))
            i += 1
    if not ranges:
        return 0
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    except (OSError, AttributeError):
        return 0
    advised, end = 0, 0
    for lo, hi in sorted(ranges):  # merged, so each page is advised once
        lo = max(lo, end)
        if lo < hi and libc.madvise(lo, hi - lo, MADV_PAGEOUT) == 0:
            advised += hi - lo
        end = max(end, hi)
    return advised
