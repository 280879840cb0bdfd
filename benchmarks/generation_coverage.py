"""Which causal LMs `--with-past` compiles and decodes right: every `*ForCausalLM` / `*LMHeadModel` in ../shared/hf-test-configs.

For each such architecture (the tiny config transformers' own tests use, random weights, seed 0), in
a child process with a time limit: `t2c.compile(model, ..., with_past=True)` at -O1 (validated, as
any compile), then greedy decoding of --tokens tokens from the artifact against transformers'
`generate` on the same prompts, at batch 1 and at batch 2 with prompts of different lengths
(left-padded). Each architecture ends as one of:

  ok             compiled, validated, and the ids equal eager generate's
  differs        compiled and validated, the ids differ (a bug to look at)
  refused        t2c said why it cannot (exit 2: a cache that is not keys and values, ...)
  failed         validation failed (exit 1) or an internal error (exit 3)
  eager-failed   transformers' own generate failed on the model
  missing        the installed transformers lacks the family
  timeout

Prints a table of the causes and writes benchmarks/results/generation_coverage-<host>-<date>.json.

    .venv/bin/python benchmarks/generation_coverage.py [--only llama,gpt2] [--timeout 180] [--tokens 8]
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
CONFIGS = os.path.join(ROOT, "tests", "data", "hf-test-configs")  # the repo's copy of ../shared/hf-test-configs
PROMPTS = [[5, 17, 42, 7, 9], [3, 1, 4]]
sys.path.insert(0, HERE)
from _results import header, write  # noqa: E402  (benchmarks/_results.py)

WORKER = r"""
import json, sys, traceback
sys.path.insert(0, {here!r}); sys.path.insert(0, {root!r})
import torch
from coverage import build_model, load_entry
entry = load_entry({path!r})
result = {{"arch": entry["arch"]}}
def done(status, **kw):
    result.update(status=status, **kw)
    print("RESULT " + json.dumps(result)); sys.exit(0)
model = build_model(entry)
if model is None:
    done("missing")
import t2c
from t2c.errors import T2CError
prompts = [[t % model.config.vocab_size for t in p] for p in {prompts!r}]
def eager(batch):
    longest = max(map(len, batch))
    ids = torch.tensor([[0] * (longest - len(p)) + p for p in batch])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in batch])
    model.config.use_cache = True
    with torch.no_grad():
        # plain greedy search: the logits processors a generation_config may carry (forced end or start
        # tokens, penalties, suppressed ids) are not what a with-past artifact computes
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens={tokens}, min_new_tokens={tokens},
                             do_sample=False, num_beams=1, eos_token_id=None, pad_token_id=0, forced_eos_token_id=None,
                             forced_bos_token_id=None, repetition_penalty=1.0, no_repeat_ngram_size=0,
                             suppress_tokens=None, begin_suppress_tokens=None, bad_words_ids=None)
    return out[:, longest:].tolist()
try:
    c = t2c.compile(model, {{"input_ids": torch.tensor([prompts[0]] * 2)}}, out={out!r}, with_past=True)
except T2CError as e:
    done("refused" if e.exit_code == 2 else "failed", error=f"{{type(e).__name__}}: {{str(e).splitlines()[0][:300]}}")
except Exception as e:
    done("failed", error=f"internal {{type(e).__name__}}: {{str(e).splitlines()[0][:300] if str(e) else ''}}")
try:
    want = [eager([prompts[0]])[0], *eager(prompts)]
except Exception as e:
    done("eager-failed", error=f"{{type(e).__name__}}: {{str(e).splitlines()[0][:300] if str(e) else ''}}")
got = [c.generate(prompts[0], {tokens}, eos_token_id=None), *c.generate(prompts, {tokens}, eos_token_id=None)]
done("ok" if got == want else "differs", rolling=c.report["with_past"]["rolling"], got=got, want=want)
"""


def run(arch: str, timeout: int, tokens: int, tmp: str) -> dict:
    script = WORKER.format(here=HERE, root=ROOT, path=os.path.join(CONFIGS, f"{arch}.json"), prompts=PROMPTS,
                           tokens=tokens, out=os.path.join(tmp, arch))
    env = {**os.environ, "PYTHONPATH": ROOT, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    try:
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"arch": arch, "status": "timeout"}
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    if line is None:
        tail = (proc.stderr.strip().splitlines() or [""])[-1]
        return {"arch": arch, "status": "failed", "error": f"crashed ({proc.returncode}): {tail[:300]}"}
    return json.loads(line[len("RESULT "):])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", default=None)
    ap.add_argument("--timeout", type=int, default=180)
    ap.add_argument("--tokens", type=int, default=8)
    ap.add_argument("--out", default=os.path.join(HERE, "results"))
    args = ap.parse_args()
    archs = []
    for name in sorted(os.listdir(CONFIGS)):
        if name.endswith(".json"):
            with open(os.path.join(CONFIGS, name)) as f:
                entry = json.load(f)
            if entry["model_class"].endswith(("ForCausalLM", "LMHeadModel")):
                archs.append(entry["arch"])
    if args.only:
        archs = [a for a in archs if a in args.only.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="t2c-gen-coverage-") as tmp:
        for arch in archs:
            r = run(arch, args.timeout, args.tokens, tmp)
            rows.append(r)
            print(f"{arch:<22} {r['status']:<12} {r.get('error', '')[:150]}", flush=True)
    counts = collections.Counter(r["status"] for r in rows)
    print("\n" + ", ".join(f"{k} {v}" for k, v in counts.most_common()) + f" (of {len(rows)})")
    doc = {**header("generation_coverage"), "tokens": args.tokens, "prompts": PROMPTS, "counts": dict(counts), "archs": rows}
    write(doc, args.out)


if __name__ == "__main__":
    main()
