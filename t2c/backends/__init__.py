"""Backends: turn an IR graph into something a runtime executes.

`t2c.backends.onnx` lowers a graph to an ONNX model (see DESIGN.md §6). Each
backend is checked against the IR interpreter (`t2c.ir.run_graph`), whose op
references are the semantics every lowering reproduces.
"""
