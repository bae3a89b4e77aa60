"""The op families; importing this package fills :data:`rgraph.ir.op.REGISTRY`."""

from rgraph.ir.ops import elementwise, linalg, nn, reduce, shape

__all__ = ["elementwise", "linalg", "nn", "reduce", "shape"]
