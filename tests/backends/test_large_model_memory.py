"""The weights resident once while compiling a large model (issue 15, "models over 2 GiB").

transformers maps a safetensors checkpoint's weights from the file, and the IR's params share
that memory. `validate.page_out_mapped` takes such file-mapped pages out of resident memory
(MADV_PAGEOUT: the data stays, a page read again comes back from the file); lowering a spilled
model pages out each param once it is written to model.onnx.data, and validation pages out the
rest before ONNX Runtime loads its own copy of the weights, so the two are never resident at once.
The peak itself is benchmarks/large_model.py's (a 2.2 GiB Llama); here the mechanism is checked
on a small checkpoint with the spill threshold lowered: what is resident of the checkpoint's
mapping (/proc/self/smaps) when lowering ends and when ONNX Runtime loads, and that the
validation is the same as with nothing paged out.
"""

from __future__ import annotations

import json
import mmap
import os
import shutil
import subprocess
import sys
import tempfile

import torch

from t2c.validate import page_out_mapped

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MIB = 1 << 20


def _resident(addr: int) -> int:
    """Bytes of this process's mapping that holds `addr` resident in its memory (Rss in /proc/self/smaps)."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if not head.endswith(":"):  # a mapping's first line: start-end perms offset dev inode path
                start, end = (int(x, 16) for x in head.split("-"))
                inside = start <= addr < end
            elif inside and head == "Rss:":
                return int(line.split()[1]) * 1024
    raise AssertionError(f"no mapping holds {addr:#x}")


def _on_disk(path) -> bool:
    """False on tmpfs / ramfs, whose pages are memory (paging them out needs swap)."""
    path = os.path.realpath(path)
    best, kind = "", ""
    with open("/proc/mounts") as f:
        for line in f:
            _, mount, fs = line.split()[:3]
            if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
                best, kind = mount, fs
    return kind not in ("tmpfs", "ramfs")


def _disk_dir(tmp_path) -> str:
    """tmp_path, or a scratch folder in the repository when tmp_path is in memory (tmpfs)."""
    return str(tmp_path) if _on_disk(tmp_path) else tempfile.mkdtemp(prefix=".t2c-test-", dir=ROOT)


def test_page_out_drops_file_pages_and_keeps_the_data(tmp_path):
    folder = _disk_dir(tmp_path)
    try:
        path = os.path.join(folder, "weights.bin")
        want = torch.randn(16 * MIB // 4, generator=torch.Generator().manual_seed(0))
        want.numpy().tofile(path)
        with open(path, "rb+") as f:  # a private mapping, as safetensors maps a checkpoint
            mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        t = torch.frombuffer(mm, dtype=torch.float32)
        views = [t[: t.numel() // 2], t[t.numel() // 2:].view(64, -1)]  # the params share one mapping
        assert torch.equal(t, want)  # read: every page resident
        addr = t.untyped_storage().data_ptr()
        assert _resident(addr) == t.nbytes
        anon = torch.randn(4 * MIB // 4)
        advised = page_out_mapped([*views, anon, "not a tensor"])
        assert 16 * MIB <= advised < 16 * MIB + 2 * mmap.PAGESIZE  # the mapping only, not the anonymous tensor
        assert _resident(addr) < t.nbytes // 4
        assert torch.equal(t, want)  # the data comes back from the file
        assert page_out_mapped([anon]) == 0 and page_out_mapped([]) == 0
        del t, views
        mm.close()
    finally:
        if folder != str(tmp_path):
            shutil.rmtree(folder, ignore_errors=True)


COMPILE_SCRIPT = r"""
import json, os, sys
import t2c.backends.onnx as onnx_backend
import t2c.backends.onnx.external as external
import t2c.compiler as compiler
from t2c.frontends.loaders import InputSpec, load_model
from t2c.passes.manager import Pipeline

folder, out = sys.argv[1], sys.argv[2]
onnx_backend.lower.__kwdefaults__["external_threshold"] = 4 << 20  # spill, as a model past 1 GiB does

def resident(name):
    # bytes of the mappings of file `name` resident in this process (/proc/self/smaps)
    total, inside = 0, False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split()[0]
            if not head.endswith(":"):
                inside = line.rstrip().endswith(name)
            elif inside and head == "Rss:":
                total += int(line.split()[1]) * 1024
    return total

seen = {}
lower, load = onnx_backend.OnnxBackend.lower, onnx_backend.OnnxBackend.load
def lower_and_look(self, graph, options):
    artifact = lower(self, graph, options)
    seen["after_lower"] = resident("model.safetensors")
    return artifact
def load_and_look(self, folder, options):
    seen["at_ort_load"] = resident("model.safetensors")
    return load(self, folder, options)
onnx_backend.OnnxBackend.lower, onnx_backend.OnnxBackend.load = lower_and_look, load_and_look

loaded = load_model(folder, inputs=[InputSpec.parse("input_ids=1x32:i64")])
params = list(loaded.module.parameters())
sums = [float(p.detach().double().sum()) for p in params]
results = {"weights": sum(p.numel() * p.element_size() for p in params), "after_read": resident("model.safetensors")}
for page_out in (True, False):
    if not page_out:  # the same compile with nothing paged out
        external.page_out_mapped = compiler.page_out_mapped = lambda tensors: 0
    seen.clear()
    report = compiler.compile_loaded(loaded, compiler.CompileOptions(pipeline=Pipeline(())), os.path.join(out, str(page_out))).report
    results[str(page_out)] = {**seen, "validation": report["validation"], "intact": sums == [float(p.detach().double().sum()) for p in params],
                              "data": os.path.getsize(os.path.join(out, str(page_out), "model.onnx.data"))}
print(json.dumps(results))
"""


def test_compile_keeps_one_copy_of_mapped_weights_resident(tmp_path):
    """A Llama checkpoint (~38 MiB float32) compiled with the spill threshold at 4 MiB: after
    lowering and when ONNX Runtime loads, (almost) none of the checkpoint's mapping is resident;
    the params' values are intact and the validation report is the one a compile that pages
    nothing out writes (the same comparisons on the same numbers)."""
    import transformers

    folder = _disk_dir(tmp_path)
    try:
        cfg = transformers.LlamaConfig(hidden_size=256, intermediate_size=704, num_hidden_layers=2, num_attention_heads=4,
                                       num_key_value_heads=4, vocab_size=16000, tie_word_embeddings=False)
        torch.manual_seed(0)
        transformers.LlamaForCausalLM(cfg).eval().save_pretrained(os.path.join(folder, "llama"))
        env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
        proc = subprocess.run([sys.executable, "-c", COMPILE_SCRIPT, os.path.join(folder, "llama"), os.path.join(folder, "out")],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 0, proc.stderr[-3000:]
        results = json.loads(proc.stdout.strip().splitlines()[-1])
    finally:
        if folder != str(tmp_path):
            shutil.rmtree(folder, ignore_errors=True)
    weights, r, plain = results["weights"], results["True"], results["False"]
    assert weights > 32 * MIB and r["data"] > weights * 0.9  # the weights went to model.onnx.data
    assert results["after_read"] > weights * 0.9  # reading the params made them resident
    assert r["after_lower"] < weights / 4, r  # each param paged out once written to model.onnx.data
    assert r["at_ort_load"] < weights / 10, r  # the rest before ONNX Runtime loads its copy
    assert plain["at_ort_load"] > weights * 0.9, plain  # (nothing paged out: all of it)
    assert r["intact"] and plain["intact"]
    assert r["validation"]["ok"] is True
    assert r["validation"] == plain["validation"]
