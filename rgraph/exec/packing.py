"""Parameter stores packed into one buffer per dtype, laid out for a compiled program.

After ``merge_pieces`` a program reads stacked gate weights as one concatenation of
parameters, made again at every run. When those parameters are adjacent pieces of one
buffer, the concatenation is a view of it (:func:`tiled`) and costs no copy; and an
optimiser updates adjacent parameters as one vector, without gathering them.
:func:`pack` lays a store out so.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from rgraph.errors import FeedError
from rgraph.ir.graph import GraphIR
from rgraph.ir.op import get_op


def tiled(arrays: Sequence[np.ndarray], axis: int) -> np.ndarray | None:
    """The read-only view that ``np.concatenate(arrays, axis)`` equals, if the arrays are
    consecutive blocks along ``axis`` of one array's memory; else None.

    >>> w = np.arange(12.0).reshape(4, 3)
    >>> v = tiled([w[:1], w[1:]], 0)
    >>> v.shape, np.shares_memory(v, w), v.flags.writeable
    ((4, 3), True, False)
    >>> tiled([w[1:], w[:1]], 0) is None  # not in order: no view equals the concatenation
    True
    """
    first = arrays[0]
    base = first.base
    if base is None or not -first.ndim <= axis < first.ndim:
        return None
    axis %= first.ndim
    shape, strides, dtype = list(first.shape), first.strides, first.dtype
    address = start = first.__array_interface__["data"][0]
    length = 0
    for a in arrays:
        if (
            type(a) is not np.ndarray
            or a.base is not base
            or a.dtype != dtype
            or a.strides != strides
            or a.ndim != len(shape)
            or not a.size
            or any(n != m for i, (n, m) in enumerate(zip(a.shape, shape)) if i != axis)
            or a.__array_interface__["data"][0] != address
        ):
            return None
        address += a.shape[axis] * strides[axis]
        length += a.shape[axis]
    shape[axis] = length
    # The blocks share their other dims and strides and follow each other: the view's
    # elements are theirs, all in memory that ``base`` (kept alive by the view) owns.
    view = np.lib.stride_tricks.as_strided(first, tuple(shape), strides, writeable=False)
    assert view.__array_interface__["data"][0] == start
    return view


def param_joins(graph: GraphIR) -> list[tuple[tuple[str, ...], int]]:
    """The concatenations of parameters in ``graph``'s top level that :func:`pack` lays out
    as views: each as (parameter names, axis), no parameter in two."""
    params = {p.name: p for p in graph.params}
    concat = get_op("concat")
    taken: set[str] = set()
    joins = []
    for node in graph.nodes:
        names = node.inputs
        if (
            node.op != "concat"
            or not all(name in params and name not in taken for name in names)
            or len(set(names)) != len(names)
            or not all(isinstance(d, int) for name in names for d in params[name].type.shape)
        ):
            continue
        axis = concat.node_attrs(node).axis % params[names[0]].type.rank
        joins.append((tuple(names), axis))
        taken.update(names)
    return joins


def pack(params: Mapping[str, np.ndarray], graph: GraphIR) -> dict[str, np.ndarray]:
    """A copy of the parameter store ``params`` in one buffer per dtype, laid out so that
    ``graph``'s concatenations of parameters are views (see :func:`tiled`).

    Every array is a view of its dtype's buffer with the value and type of the array it
    copies, C-contiguous except the pieces of a concatenation along an axis ``k > 0``;
    parameters of the store that ``graph`` does not have are copied too.

    Raises
    ------
    FeedError
        A parameter of ``graph`` is missing or has another shape or dtype.
    """
    types = {p.name: p.type for p in graph.params}
    arrays: dict[str, np.ndarray] = {}
    for name, value in params.items():
        arr = np.asarray(value)
        t = types.get(name)
        if t is not None and (arr.dtype != t.np_dtype or arr.shape != tuple(t.shape)):
            raise FeedError(
                f"param '{name}' must be {t}, got {arr.dtype}{list(arr.shape)} (packing the store)"
            )
        arrays[name] = arr
    missing = [name for name in types if name not in arrays]
    if missing:
        raise FeedError(f"the parameter store has no {', '.join(map(repr, missing))}")

    # Blocks, each (its names, the axis they stack along): the joins, then single arrays.
    joins = param_joins(graph)
    joined = {name for names, _ in joins for name in names}
    blocks = joins + [((name,), 0) for name in arrays if name not in joined]
    sizes: dict[np.dtype, int] = {}
    for names, _ in blocks:
        dtype = arrays[names[0]].dtype
        sizes[dtype] = sizes.get(dtype, 0) + sum(arrays[n].size for n in names)
    buffers = {dtype: np.empty(size, dtype) for dtype, size in sizes.items()}
    starts = dict.fromkeys(sizes, 0)
    packed: dict[str, np.ndarray] = {}
    for names, axis in blocks:
        first = arrays[names[0]]
        dtype = first.dtype
        shape = list(first.shape)
        if shape:
            shape[axis] = sum(arrays[n].shape[axis] for n in names)
        size = sum(arrays[n].size for n in names)
        block = buffers[dtype][starts[dtype] : starts[dtype] + size].reshape(shape)
        starts[dtype] += size
        at = 0
        for name in names:
            width = arrays[name].shape[axis] if shape else 1
            piece = block[(slice(None),) * axis + (slice(at, at + width),)] if shape else block
            piece[...] = arrays[name]
            packed[name] = piece
            at += width
    return {name: packed[name] for name in arrays}
