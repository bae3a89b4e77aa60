"""Ops that move data without arithmetic: reshape, transpose, concat, split, slice, shift."""

from __future__ import annotations

import operator

import numpy as np
from pydantic import Field

from rgraph.errors import ShapeError
from rgraph.ir import dims
from rgraph.ir.op import (
    Attrs,
    Op,
    like,
    normalize_axis,
    register,
    same_dtype,
    shift_axis,
    undispatched,
)
from rgraph.ir.types import Dim

_concatenate = undispatched(np.concatenate)


def _resolve(shape, binding) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else dims.evaluate(d, binding) for d in shape)


class ReshapeAttrs(Attrs):
    shape: tuple[int | Dim, ...]


@register
class Reshape(Op):
    """Same elements, new shape; dims may be symbolic (``["T*B", 20]``), one may be -1."""

    name = "reshape"
    flops_per_element = 0  # moves data only
    Attrs = ReshapeAttrs
    uses_dims = True

    def infer(self, ins, a):
        x = ins[0]
        target = list(a.shape)
        holes = [i for i, d in enumerate(target) if d == -1]
        if len(holes) > 1 or any(isinstance(d, int) and d < -1 for d in target):
            raise ShapeError(f"reshape target {target} may hold at most one -1 and no other <0")
        total = dims.product(x.shape)
        known = dims.product(d for d in target if d != -1)
        if holes:
            rest = dims.divide(total, known)
            if rest is None:
                raise ShapeError(
                    f"cannot reshape {x} to {target}: {total} is not a multiple of {known}"
                )
            target[holes[0]] = rest
        elif known != total:
            raise ShapeError(
                f"cannot reshape {x} ({total} elements) to {target} ({known} elements)"
            )
        return [like(x, tuple(target))]

    def kernel(self, a, ctx):
        shape = _resolve(a.shape, ctx.dims)
        return lambda x: x.reshape(shape)

    def batched_attrs(self, a, ins, stacked, steps):
        return {"shape": [steps, *a.shape]}

    def vjp(self, g, a, ins, outs, cts):
        return [g.reshape(cts[0], shape=list(ins[0].shape))]


class TransposeAttrs(Attrs):
    perm: tuple[int, ...] | None = None  # None: reverse the axes


def _perm(a, rank):
    perm = tuple(range(rank))[::-1] if a.perm is None else a.perm
    if sorted(perm) != list(range(rank)):
        raise ShapeError(f"perm {list(perm)} is not a permutation of the {rank} axes")
    return perm


@register
class Transpose(Op):
    """Permute axes (``perm``; reversed when omitted)."""

    name = "transpose"
    flops_per_element = 0  # moves data only
    Attrs = TransposeAttrs

    def infer(self, ins, a):
        x = ins[0]
        return [like(x, tuple(x.shape[p] for p in _perm(a, x.rank)))]

    def kernel(self, a, ctx):
        perm = a.perm
        return lambda x: x.transpose(perm)

    def batched_attrs(self, a, ins, stacked, steps):
        return {"perm": [0, *(p + 1 for p in _perm(a, ins[0].rank))]}

    def vjp(self, g, a, ins, outs, cts):
        perm = _perm(a, ins[0].ndim)
        return [g.transpose(cts[0], perm=list(np.argsort(perm).tolist()))]


class AxisAttrs(Attrs):
    axis: int = 0


def _total(parts: list[Dim]) -> Dim:
    """The sum of sizes along one axis; symbolic sizes must all be the same dim."""
    if all(isinstance(p, int) for p in parts):
        return sum(parts)
    if len(set(parts)) == 1:
        return dims.product([len(parts), parts[0]])
    raise ShapeError(f"cannot add sizes {parts} along one axis (symbolic sizes must be equal)")


def _off_axis_0(self: Op, a: AxisAttrs | SplitAttrs, ins: list, dim: str) -> bool:
    """``Op.rowwise`` of an op that joins or cuts along ``a.axis``: rows stay apart
    unless that is axis 0."""
    return normalize_axis(a.axis, ins[0].rank) != 0


@register
class Concat(Op):
    """Join inputs along ``axis``; all other dims must agree."""

    name = "concat"
    flops_per_element = 0  # moves data only
    arity = (1, None)
    Attrs = AxisAttrs

    def infer(self, ins, a):
        dtype = same_dtype(ins)
        rank = ins[0].rank
        axis = normalize_axis(a.axis, rank)
        for t in ins[1:]:
            others = [d for i, d in enumerate(t.shape) if i != axis]
            if t.rank != rank or others != [d for i, d in enumerate(ins[0].shape) if i != axis]:
                raise ShapeError(
                    f"concat along axis {a.axis}: {ins[0]} and {t} differ off that axis"
                )
        shape = list(ins[0].shape)
        shape[axis] = _total([t.shape[axis] for t in ins])
        return [like(ins[0], tuple(shape), dtype)]

    writes_out = True

    def kernel(self, a, ctx):
        axis = a.axis
        return lambda *xs, out=None: _concatenate(xs, axis, out)

    def batched_attrs(self, a, ins, stacked, steps):
        return {"axis": shift_axis(a.axis)} if all(stacked) else None

    rowwise = _off_axis_0

    def vjp(self, g, a, ins, outs, cts):
        if len(ins) == 1:
            return [cts[0]]
        axis = normalize_axis(a.axis, ins[0].ndim)
        return list(g.split(cts[0], axis=a.axis, sizes=[x.shape[axis] for x in ins]))


class SplitAttrs(Attrs):
    axis: int = 0
    sizes: tuple[Dim, ...] = Field(min_length=1)


@register
class Split(Op):
    """Cut ``x`` along ``axis`` into pieces of ``sizes`` (one output per size)."""

    name = "split"
    flops_per_element = 0  # moves data only
    Attrs = SplitAttrs
    uses_dims = True

    def infer(self, ins, a):
        x = ins[0]
        axis = normalize_axis(a.axis, x.rank)
        if _total(list(a.sizes)) != x.shape[axis]:
            raise ShapeError(
                f"split sizes {list(a.sizes)} do not add up to dim {x.shape[axis]!r} of {x}"
            )
        outs = []
        for size in a.sizes:
            shape = list(x.shape)
            shape[axis] = size
            outs.append(like(x, tuple(shape)))
        return outs

    def batched_attrs(self, a, ins, stacked, steps):
        return {"axis": shift_axis(a.axis), "sizes": list(a.sizes)}

    rowwise = _off_axis_0

    def views(self, a, ctx):
        ends = np.cumsum(_resolve(a.sizes, ctx.dims)).tolist()
        return [_along(a.axis, slice(lo, hi)) for lo, hi in zip([0, *ends[:-1]], ends)]

    def kernel(self, a, ctx):
        # Basic slicing (views, far cheaper than np.split), the indices made once.
        index = self.views(a, ctx)
        if len(index) == 1:
            return lambda x: (x[index[0]],)
        return operator.itemgetter(*index)

    def vjp(self, g, a, ins, outs, cts):
        parts = [ct if ct is not None else g.full_like(o, value=0.0) for ct, o in zip(cts, outs)]
        return [g.concat(parts, axis=a.axis)]


class SliceAttrs(Attrs):
    axis: int = 0
    start: int | None = None
    stop: int | None = None
    step: int = Field(default=1, ge=1)


def _along(axis: int, index: slice) -> tuple:
    """An index taking ``index`` along ``axis`` and everything elsewhere, for any rank
    (a negative axis counts from the end)."""
    if axis >= 0:
        return (*(slice(None),) * axis, index)
    return (Ellipsis, index, *(slice(None),) * (-axis - 1))


def _sliced(t, a):
    axis = normalize_axis(a.axis, t.rank)
    dim = t.shape[axis]
    if isinstance(dim, int):
        if a.stop is not None and a.stop > dim:  # the kernel refuses it too
            raise ShapeError(
                f"slice stop {a.stop} is past dim {dim} of axis {a.axis}:"
                " give a stop of at most the dim, or none for the end"
            )
        size = len(range(*slice(a.start, a.stop, a.step).indices(dim)))
    elif (a.start or 0) >= 0 and a.stop is not None and a.stop >= 0:
        size = -(-max(a.stop - (a.start or 0), 0) // a.step)
    elif a.start is not None and a.start < 0 and a.stop is None:  # the last -start
        size = (-a.start + a.step - 1) // a.step
    else:
        raise ShapeError(
            f"cannot slice symbolic dim {dim!r} with start={a.start}, stop={a.stop}:"
            " give non-negative start and stop, or a negative start and no stop"
        )
    shape = list(t.shape)
    shape[axis] = size
    return like(t, tuple(shape))


@register
class Slice(Op):
    """``x[start:stop:step]`` along ``axis`` (step >= 1)."""

    name = "slice"
    flops_per_element = 0  # moves data only
    Attrs = SliceAttrs

    def infer(self, ins, a):
        return [_sliced(ins[0], a)]

    def batched_attrs(self, a, ins, stacked, steps):
        return {**a.model_dump(), "axis": shift_axis(a.axis)}

    def kernel(self, a, ctx):
        index = _along(a.axis, slice(a.start, a.stop, a.step))
        axis, stop = a.axis, a.stop
        if stop is None:
            return operator.itemgetter(index)

        def take(x):
            if stop > x.shape[axis]:
                raise IndexError(f"slice stop {stop} is past dim {x.shape[axis]} of axis {axis}")
            return x[index]

        return take

    def vjp(self, g, a, ins, outs, cts):
        return [g.slice_grad(cts[0], ins[0], **a.model_dump())]


@register
class SliceGrad(Op):
    """Zeros shaped like ``ref`` with ``g`` written at ``[start:stop:step]`` along ``axis``."""

    name = "slice_grad"
    flops_per_element = 0  # moves data only
    arity = (2, 2)
    Attrs = SliceAttrs

    def infer(self, ins, a):
        upd, ref = ins
        same_dtype(ins)
        if _sliced(ref, a) != upd:
            raise ShapeError(f"{upd} is not the shape of slice {a} of {ref}")
        return [ref]

    def kernel(self, a, ctx):
        index = _along(a.axis, slice(a.start, a.stop, a.step))

        def scatter(upd, ref):
            out = np.zeros_like(ref)
            out[index] = upd
            return out

        return scatter

    def vjp(self, g, a, ins, outs, cts):
        return [g.slice(cts[0], **a.model_dump()), None]


class ShiftAttrs(Attrs):
    reverse: bool = False


@register
class Shift(Op):
    """``xs`` delayed by one step along axis 0, ``first`` entering at the start:
    ``out[0] = first`` and ``out[t] = xs[t - 1]``; with ``reverse``, ``out[-1] = first``
    and ``out[t] = xs[t + 1]``.

    The states a loop's steps start from are the states its steps end with, one step
    later: a loop then returns the latter only (see ``pack_loop_io``).
    """

    name = "shift"
    flops_per_element = 0  # moves data only
    arity = (2, 2)
    Attrs = ShiftAttrs
    writes_out = True

    def infer(self, ins, a):
        xs, first = ins
        same_dtype(ins)
        if xs.rank < 1 or xs.shape[1:] != first.shape:
            raise ShapeError(f"shift takes steps of {first} stacked along axis 0, got {xs}")
        return [xs]

    def kernel(self, a, ctx):
        def shift(xs, first, out=None):
            if out is None:
                out = np.empty(xs.shape, xs.dtype)
            if len(out):
                if a.reverse:
                    out[:-1] = xs[1:]
                    out[-1] = first
                else:
                    out[1:] = xs[:-1]
                    out[0] = first
            return out

        return shift

    def vjp(self, g, a, ins, outs, cts):
        first = ins[1]
        ct = cts[0]
        d_xs = g.shift(ct, g.full_like(first, value=0.0), reverse=not a.reverse)
        edge = g.slice(ct, axis=0, start=-1) if a.reverse else g.slice(ct, axis=0, start=0, stop=1)
        return [d_xs, g.reshape(edge, shape=list(first.shape))]
