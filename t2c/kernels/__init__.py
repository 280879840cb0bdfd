"""Hand-written Triton kernels for the heavy semantic ops, one family per file (see each module's docstring)."""
