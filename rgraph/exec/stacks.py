"""A loop's small stacked outputs, kept from run to run with their rows' views made once.

A scan writes its per-step outputs (its ``ys``) into stacked arrays, step ``t`` into row
``t``, and its steps read rows and pieces of rows of them. Making a row's view costs about
50 ns, as much as a small step's numpy call costs in all. A hand-written step makes the
arrays once, for the longest sequence, with a list of each one's row views, and indexes
those lists. :class:`Stacks` does the same for a scan whose ``ys`` are small (those that
numpy's allocator gives, not an arena: see :func:`~rgraph.exec.arena.small`): per thread,
its arrays sized for the longest sequence so far and the lists of their rows' views.

They are reused only when free: when nothing references their memory but these lists
(the arena's test: a numpy view references the array that owns its memory). A caller
that keeps something made from them keeps it unchanged; the next run makes new ones.
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Sequence
from typing import Any

import numpy as np

from rgraph.exec.arena import size_class, small

Kind = tuple[tuple[int, ...], np.dtype]  # one row's shape, and the dtype
Source = tuple[int, Any]  # (the index of a stacked array, the index of a piece in it or None)


def references(arrays: Sequence[np.ndarray]) -> list[int]:
    """The arrays' reference counts. Equal to their counts when only their holder had
    them, nothing made from them is alive (a numpy view references the array that owns
    its memory): they are free to be written again."""
    return list(map(sys.getrefcount, arrays))


class _Stack:
    """Arrays for up to ``capacity`` steps with the row lists of ``sources``, in the
    order the steps visit them."""

    __slots__ = ("arrays", "capacity", "idle", "kinds", "rows", "sources")

    def __init__(
        self, kinds: Sequence[Kind], capacity: int, sources: Sequence[Source], reverse: bool
    ):
        self.kinds, self.capacity, self.sources = kinds, capacity, sources
        self.arrays = [np.empty((capacity, *shape), dtype) for shape, dtype in kinds]
        step = -1 if reverse else 1
        self.rows = [
            list((self.arrays[n] if index is None else self.arrays[n][index])[::step])
            for n, index in sources
        ]
        self.idle = references(self.arrays)

    def serves(self, kinds: Sequence[Kind], steps: int, sources: Sequence[Source]) -> bool:
        """Whether it holds these arrays, long enough, and nothing else uses them."""
        return (
            steps <= self.capacity
            and (kinds is self.kinds or kinds == self.kinds)
            and (sources is self.sources or sources == self.sources)
            and references(self.arrays) == self.idle
        )


class Stacks:
    """The stacked outputs of one scan, with their rows, per thread.

    >>> stacks = Stacks(reverse=False)
    >>> kinds = [((2,), np.dtype(np.float64))]
    >>> (y,), (rows,) = stacks.take(kinds, 3, [(0, None)])
    >>> y.shape, rows[1].shape
    ((3, 2), (2,))
    >>> rows[1][...] = 7.0
    >>> print(y[1])  # (print: the prompt would keep the row as _)
    [7. 7.]
    >>> del y
    >>> stacks.take(kinds, 2, [(0, None)])[1][0] is rows  # free again: the same rows
    True
    """

    def __init__(self, reverse: bool):
        self.reverse = reverse
        self._local = threading.local()
        self._seen: list[tuple[Sequence[Kind], Sequence[Source]]] = []

    def shared(
        self, kinds: Sequence[Kind], sources: Sequence[Source]
    ) -> tuple[Sequence[Kind], Sequence[Source]]:
        """``kinds`` and ``sources``, or equal ones given before: the objects to pass to
        :meth:`take`, which then knows them by identity. (A scan's kernel is made once per
        binding, each with lists of its own; comparing them costs more than a step.)"""
        for seen in self._seen:
            if seen[0] == kinds and seen[1] == sources:
                return seen
        if len(self._seen) < 8:  # (a bounded memory: a batch size changes rarely)
            self._seen.append((kinds, sources))
        return kinds, sources

    def take(
        self, kinds: Sequence[Kind], steps: int, sources: Sequence[Source]
    ) -> tuple[list[np.ndarray], list[list[np.ndarray]]] | None:
        """Arrays of ``steps`` rows of ``kinds``, and the rows of ``sources`` in them in the
        order the steps visit them (a list may run on past ``steps``); None when the arrays
        would not all be small.

        ``sources`` are ``(n, None)`` for the rows of array ``n``, ``(n, index)`` for those
        of the piece ``array[index]`` (``index`` starts with ``slice(None)``). The rows are
        views that the caller's run lets go of: a value the run returns must not be one
        of them, but a view of it.
        """
        stack = getattr(self._local, "stack", None)
        if stack is None or not stack.serves(kinds, steps, sources):
            capacity = size_class(steps) if steps else 0
            if not capacity or not all(small((capacity, *s), d) for s, d in kinds):
                return None
            stack = self._local.stack = _Stack(kinds, capacity, sources, self.reverse)
        if self.reverse:  # (the last rows: those its lists, last row first, begin with)
            skip = stack.capacity - steps
            return [a[skip:] for a in stack.arrays], stack.rows
        return [a[:steps] for a in stack.arrays], stack.rows
