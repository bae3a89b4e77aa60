"""The IR: types, graphs and the op registry (verifier: :mod:`rgraph.ir.verify`)."""

from rgraph.ir import ops  # noqa: F401  (fills the op registry)
from rgraph.ir.graph import Const, GraphIR, Init, Node, Param, SourceLoc, Var
from rgraph.ir.op import REGISTRY, Op, get_op, register
from rgraph.ir.types import DTYPES, TensorType

__all__ = [
    "DTYPES",
    "REGISTRY",
    "Const",
    "GraphIR",
    "Init",
    "Node",
    "Op",
    "Param",
    "SourceLoc",
    "TensorType",
    "Var",
    "get_op",
    "register",
]
