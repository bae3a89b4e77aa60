"""Reductions over axes, and the broadcasts that are their VJPs."""

from __future__ import annotations

import math

import numpy as np
from pydantic import Field

from rgraph.errors import ShapeError
from rgraph.ir import dims
from rgraph.ir.cost import Cost, elements, nbytes
from rgraph.ir.op import (
    Attrs,
    Op,
    broadcast_shapes,
    filled,
    like,
    normalize_axis,
    register,
    require_float,
    shift_axis,
)
from rgraph.ir.types import Dim, DType, make_type


class ReduceAttrs(Attrs):
    axes: tuple[int, ...] | None = None  # None: all axes
    keepdims: bool = False


def _axes(a: ReduceAttrs, rank: int) -> tuple[int, ...]:
    if a.axes is None:
        return tuple(range(rank))
    axes = tuple(sorted({normalize_axis(ax, rank) for ax in a.axes}))
    if len(axes) != len(a.axes):
        raise ShapeError(f"axes {list(a.axes)} name an axis twice")
    return axes


def _reduced_shape(shape, axes, keepdims):
    if keepdims:
        return tuple(1 if i in axes else d for i, d in enumerate(shape))
    return tuple(d for i, d in enumerate(shape) if i not in axes)


class Reduce(Op):
    Attrs = ReduceAttrs

    def infer(self, ins, a):
        x = ins[0]
        require_float(x, f"{self.name} input")
        return [like(x, _reduced_shape(x.shape, _axes(a, x.rank), a.keepdims))]

    def cost(self, ins, outs, a):
        return Cost(elements(ins[:1]), nbytes(outs))  # one FLOP per input element

    def batched_attrs(self, a, ins, stacked, steps):
        if a.axes is None:
            return None
        return {"axes": [shift_axis(ax) for ax in a.axes], "keepdims": a.keepdims}

    def _spread(self, g, a, x, ct):
        """``ct`` broadcast back over the reduced axes of ``x``."""
        if not a.keepdims:
            ct = g.expand_dims(ct, axes=list(_axes(a, x.ndim)))
        return g.broadcast_like(ct, x)


@register
class Sum(Reduce):
    """Sum over ``axes`` (all when omitted)."""

    name = "sum"
    writes_out = True

    def kernel(self, a, ctx):
        axes, keepdims = a.axes, a.keepdims
        return lambda x, out=None: x.sum(axis=axes, keepdims=keepdims, out=out)

    def vjp(self, g, a, ins, outs, cts):
        return [self._spread(g, a, ins[0], cts[0])]


@register
class Mean(Reduce):
    """Mean over ``axes`` (all when omitted)."""

    name = "mean"

    def kernel(self, a, ctx):
        axes, keepdims = a.axes, a.keepdims
        return lambda x: x.mean(axis=axes, keepdims=keepdims)

    def vjp(self, g, a, ins, outs, cts):
        x = ins[0]
        return [self._spread(g, a, x, cts[0]) / g.numel(x, axes=a.axes)]


@register
class Numel(Op):
    """The number of elements over ``axes`` of ``x``, as a scalar of ``x``'s dtype."""

    name = "numel"
    flops_per_element = 0  # reads shapes only
    reads_values = False
    Attrs = ReduceAttrs

    def infer(self, ins, a):
        _axes(a, ins[0].rank)
        return [like(ins[0], ())]

    def kernel(self, a, ctx):
        def numel(x):
            axes = range(x.ndim) if a.axes is None else a.axes
            return np.asarray(math.prod(x.shape[ax] for ax in axes), dtype=x.dtype)

        return numel

    def vjp(self, g, a, ins, outs, cts):
        return [None]


class ExpandDimsAttrs(Attrs):
    axes: tuple[int, ...]


@register
class ExpandDims(Op):
    """Insert axes of size 1 at ``axes`` (positions in the output)."""

    name = "expand_dims"
    flops_per_element = 0  # moves data only
    Attrs = ExpandDimsAttrs

    def infer(self, ins, a):
        x = ins[0]
        rank = x.rank + len(a.axes)
        axes = {normalize_axis(ax, rank) for ax in a.axes}
        if len(axes) != len(a.axes):
            raise ShapeError(f"axes {list(a.axes)} name an axis twice")
        dims = iter(x.shape)
        return [like(x, tuple(1 if i in axes else next(dims) for i in range(rank)))]

    def kernel(self, a, ctx):
        axes = sorted(a.axes)

        def expand(x):
            rank = x.ndim + len(axes)
            where = {ax % rank for ax in axes}
            dims = iter(x.shape)
            return x.reshape([1 if i in where else next(dims) for i in range(rank)])

        return expand

    def batched_attrs(self, a, ins, stacked, steps):
        return {"axes": [shift_axis(ax) for ax in a.axes]}

    def vjp(self, g, a, ins, outs, cts):
        return [g.reshape(cts[0], shape=list(ins[0].shape))]


@register
class BroadcastLike(Op):
    """``x`` broadcast (numpy rules) to the shape of ``ref``."""

    name = "broadcast_like"
    flops_per_element = 0  # moves data only
    arity = (2, 2)

    def infer(self, ins, a):
        x, ref = ins
        if broadcast_shapes(x.shape, ref.shape) != ref.shape:
            raise ShapeError(f"{x} does not broadcast to the shape of {ref}")
        return [make_type(x.dtype, ref.shape)]

    def kernel(self, a, ctx):
        return lambda x, ref: np.array(np.broadcast_to(x, ref.shape))

    def batched_attrs(self, a, ins, stacked, steps):
        ok = stacked[1] and (ins[0].rank == ins[1].rank if stacked[0] else True)
        return {} if ok else None

    def vjp(self, g, a, ins, outs, cts):
        return [cts[0], None]


class FullAttrs(Attrs):
    shape: tuple[Dim, ...]
    value: float = Field(default=0.0, allow_inf_nan=True)
    dtype: DType = "float64"


@register
class Full(Op):
    """A tensor of ``shape`` (symbolic dims allowed) filled with ``value`` (initial states)."""

    name = "full"
    flops_per_element = 0  # fills memory only
    arity = (0, 0)
    Attrs = FullAttrs
    uses_dims = True

    def infer(self, ins, a):
        return [make_type(a.dtype, a.shape)]

    def kernel(self, a, ctx):
        shape = tuple(dims.evaluate(d, ctx.dims) for d in a.shape)
        dtype = np.dtype(a.dtype)
        return lambda: filled(shape, dtype, a.value)

    def vjp(self, g, a, ins, outs, cts):
        return []
