"""Memory for large arrays, kept from one run to the next.

A training step makes the same large intermediates at every run (per-step outputs of
loops, activations of all steps at once, their gradients). Fresh memory for each costs a
page fault per 4 KiB page on first touch, which on a virtual machine can cost more than
the arithmetic done on the page. An :class:`Arena` hands out views of buffers that
earlier arrays left free instead.

A buffer is free when nothing but the arena references it: numpy views keep a reference
to the array that owns their memory, so while any array made from a buffer is alive (a
value of the running program, an output the caller kept) the buffer is not handed out
again. Reuse never changes a value anyone can see.

A run asks for the same values in the same order as the run before; only their leading
axis (a sequence length, a block of rows) may differ. So each request has a *site*: the
n-th request since the run began from one place (a node of a program, named by the
caller), or else of one kind (dtype and the shape after the leading axis). A site gets
the buffer it had last time, as a hand-written step preallocates one array per value
for the longest sequence. Buffers are sized a little beyond the request, so that the
longest sequence's buffers serve the others.
"""

from __future__ import annotations

import functools
import math
import sys
import threading
from collections.abc import Hashable
from typing import Any

import numpy as np

MIN_BYTES = 1 << 16  # smaller arrays come from numpy's allocator: reused without faults
Site = tuple[Hashable, int]  # the n-th request from a place (or of a kind) in a run


class _Slot:
    """A buffer that some sites share (their values' lives do not overlap): it grows, for
    all of them at once, when a site's value no longer fits."""

    __slots__ = ("buffer", "run")

    def __init__(self, buffer: np.ndarray):
        self.buffer = buffer
        self.run = -1  # the last run that gave it to a site it was home to before


def small(shape: tuple[int, ...], dtype: np.dtype) -> bool:
    """Whether an array of ``shape`` and ``dtype`` comes from numpy's allocator, not an
    arena (``MIN_BYTES``)."""
    return math.prod(shape) * dtype.itemsize < MIN_BYTES


class Arena:
    """Buffers for one thread's runs; :meth:`empty` is ``np.empty`` from them.

    >>> arena = Arena()
    >>> a = arena.empty((100, 100), np.float64)
    >>> b = arena.empty((100, 100), np.float64)  # a is alive: another buffer
    >>> a_buffer = id(a.base)
    >>> b.base is a.base, len(arena.buffers)
    (False, 2)
    >>> del a
    >>> id(arena.empty((100, 90), np.float64).base) == a_buffer  # free again
    True
    """

    def __init__(self) -> None:
        # The slot each site had last, and the last run that asked for it.
        self._homes: dict[Site, tuple[_Slot, int]] = {}
        self._slots: list[_Slot] = []
        self._asked: dict[Hashable, int] = {}  # requests from each place in this run
        self._runs = 0
        # The most bytes any run's sites had; slots of sites no run asks for any more
        # are held up to half as much again (batches of another kind may come back).
        self.budget = 0
        self._moved = False  # whether a site of this run changed or grew its slot
        self._used = 0  # the bytes of the slots this run gave to their sites (if none moved)

    @property
    def buffers(self) -> list[np.ndarray]:
        """The buffers held, free or in use."""
        return [slot.buffer for slot in self._slots]

    def empty(self, shape: tuple[int, ...], dtype: Any, place: Hashable = None) -> np.ndarray:
        """An uninitialised array of ``shape`` and ``dtype`` asked for from ``place`` (by
        default, its kind stands for it): in its site's slot of last time if that is free
        (grown if it is too small), else in the smallest free slot of ``size`` to twice
        as many bytes (a small value in a large buffer would leave the next large value
        without one), else in a new slot."""
        dtype = np.dtype(dtype)
        size = math.prod(shape) * dtype.itemsize
        if size < MIN_BYTES:
            return np.empty(shape, dtype)
        if place is None:
            place = (dtype.str, tuple(shape[1:]))
        return self.take(place, size, dtype, tuple(shape))

    def take(self, place: Hashable, size: int, dtype: np.dtype, shape: tuple) -> np.ndarray:
        """:meth:`empty` of ``size >= MIN_BYTES`` bytes, all given: a program's request,
        prepared once (:meth:`ThreadArenas.maker`)."""
        asked = self._asked
        n = asked.get(place, 0)
        asked[place] = n + 1
        site = (place, n)
        home = self._homes.get(site)
        slot = home[0] if home is not None else None
        # References to a free buffer here: its slot's and getrefcount's argument; any
        # more is an array made from it.
        if slot is None or sys.getrefcount(slot.buffer) > 2:
            self._moved = True
            slot = self._fit(size)
            if slot is None:
                slot = _Slot(np.empty(size_class(size), np.uint8))
                self._slots.append(slot)
        elif slot.buffer.nbytes < size:
            self._moved = True
            slot.buffer = np.empty(size_class(size), np.uint8)  # (the old buffer is free: let go)
        elif slot.run != self._runs:
            slot.run = self._runs
            self._used += slot.buffer.nbytes
        self._homes[site] = (slot, self._runs)
        return np.ndarray(shape, dtype, slot.buffer)  # (a view: its base is the buffer)

    def _fit(self, size: int) -> _Slot | None:
        """The smallest free slot of ``size`` to ``2 * size`` bytes (None: none)."""
        best = None
        for slot in self._slots:
            nbytes = slot.buffer.nbytes
            if (
                size <= nbytes < 2 * size
                and (best is None or nbytes < best.buffer.nbytes)
                and sys.getrefcount(slot.buffer) == 2
            ):
                best = slot
        return best

    def trim(self) -> None:
        """End a run (a run calls it at its end, or where it fails). Sites this run did
        not ask for are forgotten, those asked for longest ago first, while the slots
        held are more than half as much again as the budget; slots no site has go."""
        run, homes = self._runs, self._homes
        self._runs += 1
        self._asked.clear()
        in_use, self._used = self._used, 0
        if not self._moved:
            # Each site asked for got its slot of before: the slots held are the last
            # trim's, which left no more than the limit, and the budget only grows, so
            # there is nothing to let go (the usual run, in a few microseconds).
            self.budget = max(self.budget, in_use)
            return
        self._moved = False
        sites: dict[int, int] = {}  # slot -> how many sites it is home to
        used: dict[int, int] = {}  # slot -> its bytes, if this run asked for it
        for slot, asked in homes.values():
            sites[id(slot)] = sites.get(id(slot), 0) + 1
            if asked == run:
                used[id(slot)] = slot.buffer.nbytes
        self.budget = max(self.budget, sum(used.values()))
        held = sum(slot.buffer.nbytes for slot in self._slots if id(slot) in sites)
        limit = self.budget + self.budget // 2
        for site, (slot, asked) in sorted(homes.items(), key=lambda item: item[1][1]):
            if held <= limit or asked == run:
                break
            del homes[site]
            sites[id(slot)] -= 1
            if not sites[id(slot)]:
                held -= slot.buffer.nbytes
        self._slots = [slot for slot in self._slots if sites.get(id(slot))]


def size_class(size: int) -> int:
    """The size class at or above ``size`` (bytes, or steps; classes 2 ** (1/4) apart): the
    same value of a slightly longer sequence fits in it next time."""
    return max(int(2 ** (math.ceil(4 * math.log2(size)) / 4)), size)


class ThreadArenas:
    """One :class:`Arena` per thread: runs in two threads never share a buffer."""

    def __init__(self) -> None:
        self._local = threading.local()

    def empty(self, shape: tuple[int, ...], dtype: Any, place: Hashable = None) -> np.ndarray:
        dtype = np.dtype(dtype)
        if small(shape, dtype):  # (as Arena.empty, sooner)
            return np.empty(shape, dtype)
        return self._arena().empty(shape, dtype, place)

    def _arena(self) -> Arena:
        arena = getattr(self._local, "arena", None)
        if arena is None:
            arena = self._local.arena = Arena()
        return arena

    def maker(self, shape: tuple[int, ...], dtype: Any, place: Hashable) -> Any:
        """``empty(shape, dtype, place)`` as a call of no arguments, for an array a program
        makes at every run: its size worked out once, a small one straight from numpy.

        >>> make = ThreadArenas().maker((2, 3), np.float32, "x")
        >>> make().shape, make().dtype
        ((2, 3), dtype('float32'))
        """
        dtype, shape = np.dtype(dtype), tuple(shape)
        if small(shape, dtype):
            return functools.partial(np.empty, shape, dtype)
        size, local = math.prod(shape) * dtype.itemsize, self._local

        def make() -> np.ndarray:
            try:
                arena = local.arena
            except AttributeError:
                arena = self._arena()
            return arena.take(place, size, dtype, shape)

        return make

    def trim(self) -> None:
        """:meth:`Arena.trim` of this thread's arena."""
        arena = getattr(self._local, "arena", None)
        if arena is not None:
            arena.trim()
