"""Outputs written into the caller's arrays: where each value of a run is made.

A caller that keeps arrays for some outputs (an optimiser, for the gradients it reads)
passes them as ``into``. Where an output is a view of a value its node makes with
``out=`` (through ``identity``, ``reshape``, and a ``split`` whose pieces all go into
consecutive memory, in order), that node writes straight into the caller's memory; the
other outputs are copied there after the run. Either way, the run returns the caller's
arrays themselves.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from rgraph.errors import FeedError
from rgraph.exec.memory import byte_bounds, owner
from rgraph.ir import dims
from rgraph.ir.graph import GraphIR
from rgraph.ir.op import get_op, normalize_axis


class Placement:
    """Where one set of caller's arrays receives a program's outputs, in one ``binding``.

    ``roots``: node index -> the array its kernel writes into (``out=``), a view of the
    caller's memory. ``pieces``: split node index -> the caller's arrays that its outputs
    are views of (the memory its input was written into), in order: the split need not
    cut them. ``copies``: (slot, array) for the outputs copied after the run.
    ``slots``: the slot of each output given (in the order of ``arrays``), whose values
    the run's results become.
    """

    __slots__ = (
        "_checked",
        "_owner_ids",
        "_owners",
        "arrays",
        "binding",
        "copies",
        "names",
        "others",
        "pieces",
        "roots",
        "slots",
        "steps",
    )

    def __init__(
        self,
        binding: dict[str, int],
        names: tuple[str, ...],
        arrays: tuple[np.ndarray, ...],
        slots: list[int],
        roots: dict[int, np.ndarray],
        pieces: dict[int, tuple[np.ndarray, ...]],
        copies: list[tuple[int, np.ndarray]],
    ):
        self.binding, self.names, self.arrays = binding, names, arrays
        self.slots, self.roots, self.pieces, self.copies = slots, roots, pieces, copies
        owners = {id(o): o for o in map(owner, arrays)}
        self._owners, self._owner_ids = list(owners.values()), set(owners)
        self._checked: tuple = ()  # the arrays last found apart from these (kept alive)
        self.steps: Any = None  # the interpreter's steps that write so
        self.others: list[str] = []  # the interpreter's outputs not given (their names)

    def matches(self, into: Mapping[str, Any]) -> bool:
        """Whether ``into`` gives these very arrays for these outputs."""
        return len(into) == len(self.names) and all(
            map(operator.is_, map(into.get, self.names), self.arrays)
        )

    def check_apart(self, whats: Sequence[str], arrays: Sequence[np.ndarray]) -> None:
        """Raise FeedError if one of ``arrays`` (``whats``: what each is) shares memory
        with the caller's: a run would overwrite what it still reads."""
        for what, a in zip(whats, arrays):
            if a.base is None and a.flags.owndata and id(a) not in self._owner_ids:
                continue  # memory numpy allocated for it alone
            for o in self._owners:
                if isinstance(o, np.ndarray) and not np.may_share_memory(o, a):
                    continue
                for name, d in zip(self.names, self.arrays):
                    if np.shares_memory(d, a):
                        raise FeedError(
                            f"the array given for output '{name}' shares memory with"
                            f" {what}: the run would overwrite what it reads"
                        )

    def check_params_apart(
        self, whats: Sequence[str], values: list[Any], slots: Sequence[int]
    ) -> None:
        """:meth:`check_apart` for a run's parameters (in ``values`` at ``slots``); a store
        passes the same arrays run after run, so the answer is kept for the arrays last
        checked."""
        seen = self._checked
        if len(seen) == len(slots) and all(map(operator.is_, map(values.__getitem__, slots), seen)):
            return
        arrays = [values[s] for s in slots]
        self.check_apart(whats, arrays)
        self._checked = tuple(arrays)

    def finish(self, values: list[Any]) -> None:
        """After the run: copy in the outputs no node wrote in place, and make the caller's
        arrays the run's results."""
        for slot, array in self.copies:
            np.copyto(array, values[slot])
        any(map(values.__setitem__, self.slots, self.arrays))  # (a loop in C)


def plan(
    graph: GraphIR,
    binding: Mapping[str, int],
    into: Mapping[str, Any],
    slot: Mapping[str, int],
    writes_in_place: Callable[[int], bool],
) -> Placement:
    """The placement of ``into`` (output name -> array) for a run of ``graph`` in
    ``binding``; ``writes_in_place(i)``: whether node ``i`` can write its value with
    ``out=`` into an array the caller gives. Raises FeedError for an array that does not
    fit its output, or that overlaps another."""
    types = graph.types()
    outputs = set(graph.outputs)
    names = tuple(into)
    arrays = tuple(into[name] for name in names)
    for name, array in zip(names, arrays):
        if name not in outputs:
            raise FeedError(
                f"an array is given for '{name}', which is not an output of graph"
                f" '{graph.name}' (outputs: {', '.join(graph.outputs)})"
            )
        t = types[name]
        shape = tuple(dims.evaluate(d, binding) for d in t.shape)
        if (
            not isinstance(array, np.ndarray)
            or array.dtype != t.np_dtype
            or array.shape != shape
            or not array.flags.writeable
            or not array.flags.c_contiguous
        ):
            got = (
                f"{'' if array.flags.writeable else 'read-only '}"
                f"{'' if array.flags.c_contiguous else 'non-contiguous '}"
                f"{array.dtype} array of shape {array.shape}"
                if isinstance(array, np.ndarray)
                else type(array).__name__
            )
            raise FeedError(
                f"the array given for output '{name}' ({t}) must be a writeable"
                f" C-contiguous {t.dtype} array of shape {shape}, got a {got}"
            )
    spans = sorted((*byte_bounds(a), name) for name, a in zip(names, arrays) if a.nbytes)
    for (_, end, first), (start, _, second) in itertools.pairwise(spans):
        if start < end:
            raise FeedError(f"the arrays given for outputs '{first}' and '{second}' share memory")

    maker = {o.name: i for i, n in enumerate(graph.nodes) for o in n.outputs}
    roots: dict[int, np.ndarray] = {}
    pieces: dict[int, dict[int, tuple[list[str], np.ndarray]]] = {}  # split -> piece -> ...
    joined: dict[int, list[str]] = {}  # split -> the outputs its pieces are, if joined
    placed: set[str] = set()

    def claim(starts: list[str], name: str, array: np.ndarray) -> None:
        """Follow ``name`` back through views to the node that makes it, to write it in
        ``array``: the memory of outputs ``starts``, placed if that node can."""
        while True:
            i = maker.get(name)
            if i is None:  # an input, a parameter or a constant: copied
                return
            node = graph.nodes[i]
            if node.op == "identity":
                name = node.inputs[0]
            elif node.op == "reshape":  # (row-major, as numpy's: a view of the same memory)
                name = node.inputs[0]
                array = array.reshape([dims.evaluate(d, binding) for d in types[name].shape])
            elif node.op == "split" and len(node.outputs) > 1:
                mine = pieces.setdefault(i, {})
                j = [o.name for o in node.outputs].index(name)
                if j in mine or len(mine) + 1 < len(node.outputs):
                    mine.setdefault(j, (starts, array))
                    return  # placed with the others, if all come
                mine[j] = (starts, array)
                whole = _joined(node, [mine[k][1] for k in range(len(mine))], types, binding)
                if whole is None:
                    return
                starts = [s for k in range(len(mine)) for s in mine[k][0]]
                joined[i] = starts
                name, array = node.inputs[0], whole
            else:
                if i not in roots and writes_in_place(i):
                    roots[i] = array
                    placed.update(starts)
                return

    for name, array in zip(names, arrays):
        claim([name], name, array)
    copies = [(slot[name], array) for name, array in zip(names, arrays) if name not in placed]
    slots = [slot[name] for name in names]
    cut = {
        i: tuple(pieces[i][k][1] for k in range(len(pieces[i])))
        for i, starts in joined.items()
        if placed.issuperset(starts)
    }
    return Placement(dict(binding), names, arrays, slots, roots, cut, copies)


def _joined(split, arrays, types, binding) -> np.ndarray | None:
    """One array over the consecutive memory of ``arrays`` (a split's pieces' arrays, in
    order), of the split's input shape; None if the pieces are not consecutive blocks of
    their input, or the arrays not consecutive in one buffer."""
    x = types[split.inputs[0]]
    shape = [dims.evaluate(d, binding) for d in x.shape]
    axis = normalize_axis(get_op("split").node_attrs(split).axis, len(shape))
    if any(size != 1 for size in shape[:axis]):
        return None  # the pieces are not blocks of the input's memory
    first = arrays[0]
    base = owner(first)
    if not isinstance(base, np.ndarray) or not base.flags.c_contiguous:
        return None
    lo = byte_bounds(first)[0]
    at = lo
    for a in arrays:
        if owner(a) is not base or byte_bounds(a)[0] != at:
            return None
        at += a.nbytes
    start = lo - byte_bounds(base)[0]
    memory = base.reshape(-1).view(np.uint8)[start : at - lo + start]
    return memory.view(first.dtype).reshape(shape)
