"""Matrix products."""

from __future__ import annotations

import numpy as np

from rgraph.errors import ShapeError
from rgraph.ir.cost import Cost, Poly, elements, nbytes
from rgraph.ir.op import (
    Attrs,
    Op,
    batches_elementwise,
    broadcast_shapes,
    register,
    require_float,
    same_dtype,
    undispatched,
)
from rgraph.ir.types import make_type

_dot = undispatched(np.dot)


class MatmulAttrs(Attrs):
    transpose_a: bool = False
    transpose_b: bool = False


def _into(out: np.ndarray | None, value: np.ndarray) -> np.ndarray:
    """``value``, copied into ``out`` if one is given."""
    if out is None:
        return value
    out[...] = value
    return out


@register
class Matmul(Op):
    """``op(a) @ op(b)`` where ``op`` optionally swaps the last two axes.

    Both inputs have rank >= 2; leading (batch) axes broadcast. RecurrentJS's ``mul``.
    """

    name = "matmul"
    arity = (2, 2)
    Attrs = MatmulAttrs

    def infer(self, ins, a):
        x, y = ins
        dtype = same_dtype(ins)
        require_float(x, "matmul input")
        if x.rank < 2 or y.rank < 2:
            raise ShapeError(f"matmul needs inputs of rank >= 2, got {x} and {y}")
        m, k1 = x.shape[-2:][:: -1 if a.transpose_a else 1]
        k2, n = y.shape[-2:][:: -1 if a.transpose_b else 1]
        if k1 != k2:
            raise ShapeError(
                f"inner dims differ: {k1!r} vs {k2!r} (lhs {x}, rhs {y},"
                f" transpose_a={a.transpose_a}, transpose_b={a.transpose_b})"
            )
        batch = broadcast_shapes(x.shape[:-2], y.shape[:-2])
        return [make_type(dtype, (*batch, m, n))]

    writes_out = True
    specializes = True

    def kernel(self, a, ctx):
        ta, tb = a.transpose_a, a.transpose_b
        ranks = [t.rank for t in ctx.inputs]
        if ranks == [2, 2] and not (ta or tb) and ctx.contiguous_out:
            return _dot  # numpy's cheapest call, called straight from the schedule

        def product(x, y, out=None):
            if ta:
                x = x.swapaxes(-1, -2)
            if tb:
                y = y.swapaxes(-1, -2)
            if y.ndim == 2:
                if x.ndim == 2:  # numpy's cheapest call for one product (out: C-ordered)
                    if out is None or out.flags.c_contiguous:
                        return _dot(x, y, out)
                    return _into(out, _dot(x, y))
                # A stack of rows times one matrix is one product: numpy would make one
                # BLAS call per batch entry (T calls of (1, k) @ (k, n) at batch 1).
                rows = x.reshape(-1, x.shape[-1])
                shape = (*x.shape[:-1], y.shape[-1])
                if out is None or not out.flags.c_contiguous:
                    return _into(out, _dot(rows, y).reshape(shape))
                _dot(rows, y, out.reshape(rows.shape[0], y.shape[-1]))
                return out
            return np.matmul(x, y, out=out)

        return product

    def batched_attrs(self, a, ins, stacked, steps):
        return self.dump_attrs(a) if batches_elementwise(ins, stacked) else None

    def cost(self, ins, outs, a):
        x = ins[0]
        k = x.shape[-2] if a.transpose_a else x.shape[-1]
        return Cost(elements(outs) * Poly.of_dim(k) * 2, nbytes(outs))  # 2*m*n*k per batch

    def vjp(self, g, a, ins, outs, cts):
        x, y = ins
        ct = cts[0]
        ta, tb = a.transpose_a, a.transpose_b
        if ta:
            dx = g.matmul(y, ct, transpose_a=tb, transpose_b=True)
        else:
            dx = g.matmul(ct, y, transpose_b=not tb)
        if tb:
            dy = g.matmul(ct, x, transpose_a=True, transpose_b=ta)
        else:
            dy = g.matmul(x, ct, transpose_a=not ta)
        return [dx, dy]
