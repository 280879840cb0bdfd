"""The t2c IR: typed SSA graphs, the op registry, text form, verifier and interpreter."""

from .core import Dim, DType, Graph, Node, NoAttrs, SymDim, TensorType, Value
from .interpreter import run_graph
from .ops import all_ops, define_op, get_op
from .parser import parse_graph
from .printer import print_graph
from .verifier import verify

__all__ = [
    "Dim", "DType", "Graph", "Node", "NoAttrs", "SymDim", "TensorType", "Value",
    "run_graph", "all_ops", "define_op", "get_op", "parse_graph", "print_graph", "verify",
]
