"""Shared test setup: examples/ importable, offline Hugging Face, deterministic torch."""

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
# CI has no GPU: Triton kernels run in the interpreter (set before anything imports triton)
os.environ.setdefault("TRITON_INTERPRET", "1")
