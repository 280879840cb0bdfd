"""Compiling Triton kernels for an sm_90 (H100/H200) target without a GPU, for the kernel tests.

A child process without the interpreter runs `HELPER` + a test's script: code paths the
interpreter accepts but the GPU compiler may not (runtime branches, scalar loop bounds, dtypes of
loop-carried values) are checked without a GPU. `compile_for_sm90(fn, consts, pointers, **options)`
builds the signature from the kernel's own arguments: constexprs from `consts`, pointers bf16
unless `pointers` names their type, `scale`/`softcap` fp32, other scalars i32.
"""

import os
import subprocess
import sys

HELPER = """
import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

def compile_for_sm90(fn, consts, pointers, **options):
    signature = {}
    for name, param in zip(fn.arg_names, fn.params):
        if param.is_constexpr:
            signature[name] = "constexpr"
        elif name.endswith("_ptr"):
            signature[name] = pointers.get(name, "*bf16")
        else:
            signature[name] = "fp32" if name in ("scale", "softcap") else "i32"
    src = ASTSource(fn=fn, signature=signature, constexprs={(fn.arg_names.index(k),): v for k, v in consts.items()})
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options=options)
"""


def run_for_sm90(script: str) -> subprocess.CompletedProcess:
    """Run HELPER + `script` in a child process with the real JIT (TRITON_INTERPRET=0)."""
    env = {**os.environ, "TRITON_INTERPRET": "0"}
    return subprocess.run([sys.executable, "-c", HELPER + script], capture_output=True, text=True, env=env, timeout=300)
