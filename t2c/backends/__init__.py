"""Backends: turn an IR graph into an artifact a runtime executes, registered by name (registry.py).

`t2c.backends.onnx` is the ONNX target (see DESIGN.md §6). Each backend is
checked against the IR interpreter (`t2c.ir.run_graph`), whose op references
are the semantics every lowering reproduces, and reads the backend-neutral
plans (`t2c.plans`) instead of analysing the graph.
"""

from .registry import DEFAULT_TARGET, Backend, Runner, all_backends, get_backend, option, register_backend

__all__ = ["DEFAULT_TARGET", "Backend", "Runner", "all_backends", "get_backend", "option", "register_backend"]
