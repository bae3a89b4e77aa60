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
"""

from __future__ import annotations

import functools
import math
import sys
import threading
from collections.abc import Callable
from typing import Any

import numpy as np

MIN_BYTES = 1 << 16  # smaller arrays come from numpy's allocator: reused without faults
# Free buffers held beyond the busiest run's use: half of it, at most this many bytes.
# Batches of varying lengths need buffers of a few size classes, more than any one run
# uses; without the slack each miss lets go of a free buffer that the next batch makes
# again (config B: 20-80 page faults per step, 1-2% of it). Capped, so that large models
# hold a few MB more, not half as much again.
SLACK_BYTES = 1 << 22


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
        self.buffers: list[np.ndarray] = []  # bytes, each owned by the arena alone when free
        self.peak = 0  # the most bytes of buffers in use at once since the last trim
        # The most any run had in use at once: more (beyond a slack) is held only while in use.
        self.budget = 0

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        """An uninitialised array of ``shape`` and ``dtype``: in the smallest free buffer
        that holds it with less than as much again to spare, else in a new buffer (a
        small value in a large buffer would leave the next large value without one)."""
        dtype = np.dtype(dtype)
        size = math.prod(shape) * dtype.itemsize
        if size < MIN_BYTES:
            return np.empty(shape, dtype)
        best, used = self._fit(size)
        if best is None:
            # A size class a little larger than asked (steps of 2 ** (1/4)): the same
            # value of a slightly longer sequence fits in it next time. Free buffers go,
            # largest first, beyond what the busiest run had in use and a slack.
            capacity = int(2 ** (math.ceil(4 * math.log2(size)) / 4))
            self._shrink_to(self.budget + min(self.budget // 2, SLACK_BYTES) - capacity)
            best = np.empty(max(capacity, size), np.uint8)
            self.buffers.append(best)
        self.peak = max(self.peak, used + best.nbytes)
        return best[:size].view(dtype).reshape(shape)

    def _fit(self, size: int) -> tuple[np.ndarray | None, int]:
        """The smallest free buffer of ``size`` to ``2 * size`` bytes (None: none), and the
        bytes of the buffers in use, in one pass."""
        best, used = None, 0
        for b in self.buffers:
            # References to a free buffer here: the list, the loop's variable and
            # getrefcount's argument; any more is an array made from it.
            n = b.nbytes
            if sys.getrefcount(b) > 3:
                used += n
            elif size <= n < 2 * size and (best is None or n < best.nbytes):
                best = b
        return best, used

    def _shrink_to(self, limit: int) -> None:
        """Let go of free buffers, largest first, until the arena holds at most ``limit``
        bytes (or holds only buffers in use)."""
        excess = sum(b.nbytes for b in self.buffers) - limit
        if excess <= 0:
            return
        free = sorted((b for b in self.buffers if sys.getrefcount(b) == 3), key=lambda b: -b.nbytes)
        drop = set()
        for b in free:
            if excess <= 0:
                break
            drop.add(id(b))
            excess -= b.nbytes
        del free
        self.buffers = [b for b in self.buffers if id(b) not in drop]

    def trim(self) -> None:
        """End a run (a run calls it at its end): the budget of free memory to hold is the
        most any run had in use at once (and a slack, see ``SLACK_BYTES``), so that
        sequences of every length seen so far find their buffers (fresh memory costs a
        page fault per 4 KiB)."""
        self.budget = max(self.budget, self.peak)
        self.peak = 0


class ThreadArenas:
    """One :class:`Arena` per thread: runs in two threads never share a buffer."""

    def __init__(self) -> None:
        self._local = threading.local()

    def empty(self, shape: tuple[int, ...], dtype: Any) -> np.ndarray:
        dtype = np.dtype(dtype)
        if small(shape, dtype):  # (as Arena.empty, sooner)
            return np.empty(shape, dtype)
        arena = getattr(self._local, "arena", None)
        if arena is None:
            arena = self._local.arena = Arena()
        return arena.empty(shape, dtype)

    def trim(self) -> None:
        """:meth:`Arena.trim` of this thread's arena."""
        arena = getattr(self._local, "arena", None)
        if arena is not None:
            arena.trim()


def allocator(empty: Callable[..., np.ndarray], shape: tuple[int, ...], dtype: Any) -> Any:
    """``empty(shape, dtype)`` as a call of no arguments, for an array made at every run:
    a small one comes straight from numpy, decided once rather than at each call.

    >>> make = allocator(ThreadArenas().empty, (2, 3), np.float32)
    >>> make().shape, make().dtype
    ((2, 3), dtype('float32'))
    """
    dtype = np.dtype(dtype)
    if small(shape, dtype):
        return functools.partial(np.empty, shape, dtype)
    return functools.partial(empty, shape, dtype)
