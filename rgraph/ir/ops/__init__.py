"""The op families; importing this package fills :data:`rgraph.ir.op.REGISTRY`."""

from rgraph.ir.ops import control, elementwise, linalg, nn, reduce, shape

__all__ = ["control", "elementwise", "linalg", "nn", "reduce", "shape"]
