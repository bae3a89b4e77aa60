"""Optimisers: RecurrentJS's RMSProp, SGD with momentum, Adam; and gradient clipping.

An optimiser updates a *parameter store* (a dict name -> ``np.ndarray``, as
:func:`rgraph.init_params` makes) **in place** from the gradients a
:class:`~rgraph.Program` returns, so the store keeps the same array objects from step to
step. Per-parameter state (RMSProp's cache, Adam's moments, SGD's velocity) is created
lazily, as zeros of the parameter's dtype, the first time a parameter gets a gradient; a
float32 store stays float32.

A training loop:

>>> import numpy as np, rgraph as rg
>>> g = rg.Graph("fit")
>>> x = g.input("x", (3, "B")); y = g.input("y", (1, "B"))
>>> W = g.param("W", (1, 3)); b = g.param("b", (1, 1))
>>> d = W @ x + b - y
>>> loss = g.output(g.mean(d * d), name="loss")
>>> prog = rg.compile(g, loss=loss)
>>> params = rg.init_params(g)
>>> X = np.random.default_rng(0).normal(size=(3, 32)); Y = np.array([[1.0, 2.0, 3.0]]) @ X
>>> opt = rg.Adam(lr=0.1)
>>> for _ in range(300):
...     result = prog.run({"x": X, "y": Y}, params)
...     stats = opt.step(params, result.grads)
>>> bool(result["loss"] < 1e-4), params["W"].round(2).tolist()
(True, [[1.0, 2.0, 3.0]])

The whole state is plain data (str, int, float, bool and ``np.ndarray``), so training can
resume exactly, e.g. from a model file:

>>> state = opt.state_dict()
>>> state["kind"], state["step"], sorted(state["slots"])
('adam', 300, ['m', 'v'])
>>> again = rg.Optimizer.from_state_dict(state)  # an Adam, bit for bit the same state

Clipping by value or by global norm works with any optimiser, as pure functions
(:func:`clip_by_value`, :func:`clip_by_global_norm`) or with the ``clip_norm=`` option.
"""

from __future__ import annotations

import bisect
import functools
import math
import operator
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np

from rgraph.errors import OptimizerError, OptimizerStateError
from rgraph.exec.memory import byte_bounds, owner

__all__ = [
    "SGD",
    "Adam",
    "Optimizer",
    "RMSProp",
    "StepStats",
    "clip_by_global_norm",
    "clip_by_value",
    "global_norm",
]

_STATE_KEYS = ("kind", "hyper", "step", "slots")
_SHAPE, _STRIDES, _DTYPE = (operator.attrgetter(a) for a in ("shape", "strides", "dtype"))
_WRITEABLE = operator.attrgetter("flags.writeable")
_F64 = np.dtype(np.float64)


# --- clipping helpers ---------------------------------------------------------------------


def global_norm(grads: Mapping[str, Any]) -> float:
    """The L2 norm of all gradients taken together, accumulated in float64.

    >>> import numpy as np
    >>> global_norm({"a": np.array([3.0]), "b": np.array([[4.0, 0.0]])})
    5.0
    """
    return _norm(grads.values())


def _norm(grads: Iterable[Any]) -> float:
    """:func:`global_norm` of the gradients in this order (one ``np.dot`` each, in float64)."""
    total = 0.0
    for g in grads:
        # (np.asarray(g, dtype=np.float64) is g when g is a float64 ndarray; a.dot(a) is
        # np.dot(a, a), without the dispatch.)
        a = (g if type(g) is np.ndarray and g.dtype == _F64 else np.asarray(g, _F64)).ravel()
        total += float(a.dot(a))
    return math.sqrt(total)


def clip_by_value(grads: Mapping[str, Any], limit: float) -> dict[str, np.ndarray]:
    """Clip every gradient element to ``[-limit, limit]``.

    Pure: returns a new dict of new arrays (of the same dtypes) and leaves ``grads`` as it
    was. NaNs stay NaN.

    Parameters
    ----------
    grads
        Name -> gradient array, e.g. ``Program.run(...).grads``.
    limit
        A positive number.

    Examples
    --------
    >>> import numpy as np
    >>> clip_by_value({"w": np.array([-7.0, 0.5, 6.0])}, 5.0)["w"].tolist()
    [-5.0, 0.5, 5.0]
    """
    c = _positive("clip_by_value", "limit", limit)
    return {name: np.clip(np.asarray(g), -c, c) for name, g in grads.items()}


def clip_by_global_norm(
    grads: Mapping[str, Any], max_norm: float
) -> tuple[dict[str, np.ndarray], float]:
    """Scale all gradients together so that their global norm is at most ``max_norm``.

    If the global norm ``n`` (see :func:`global_norm`) exceeds ``max_norm``, every gradient
    is multiplied by ``max_norm / n``; otherwise they are returned unchanged. This keeps the
    direction of the whole update, unlike clipping each element. Pure: returns a new dict
    of new arrays (of the same dtypes). A non-finite norm (a NaN or infinite gradient) is
    returned as it is, with the gradients unscaled: finding where it came from is the job
    of ``rg.compile(..., check_finite=True)``.

    Parameters
    ----------
    grads
        Name -> gradient array, e.g. ``Program.run(...).grads``.
    max_norm
        A positive number.

    Returns
    -------
    (clipped, norm)
        The clipped gradients and the global norm *before* clipping.

    Examples
    --------
    >>> import numpy as np
    >>> clipped, norm = clip_by_global_norm({"a": np.array([3.0]), "b": np.array([4.0])}, 1.0)
    >>> norm, clipped["a"].tolist(), clipped["b"].tolist()
    (5.0, [0.6000000000000001], [0.8])
    """
    limit = _positive("clip_by_global_norm", "max_norm", max_norm)
    norm = global_norm(grads)
    scale = _norm_scale(norm, limit)
    if scale is None:
        return {name: np.array(g, copy=True) for name, g in grads.items()}, norm
    return {name: np.asarray(g) * scale for name, g in grads.items()}, norm


def _norm_scale(norm: float | None, max_norm: float | None) -> float | None:
    """The factor global-norm clipping multiplies by, or None to leave gradients alone."""
    if max_norm is None or not math.isfinite(norm) or norm <= max_norm:
        return None
    return max_norm / norm


# --- hyperparameter checks ----------------------------------------------------------------


def _number(where: str, name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise OptimizerError(f"{where}: {name} must be a number, got {value!r}")
    return float(value)


def _checked(where: str, name: str, value: Any, ok: Callable[[float], bool], need: str) -> float:
    v = _number(where, name, value)
    if not ok(v):
        raise OptimizerError(f"{where}: {name} must be {need}, got {v!r}")
    return v


def _nonneg(where: str, name: str, value: Any) -> float:
    return _checked(where, name, value, lambda v: 0.0 <= v < math.inf, "finite and >= 0")


def _positive(where: str, name: str, value: Any) -> float:
    return _checked(where, name, value, lambda v: 0.0 < v < math.inf, "finite and > 0")


def _unit(where: str, name: str, value: Any) -> float:
    return _checked(where, name, value, lambda v: 0.0 <= v < 1.0, "in [0, 1)")


def _limit(where: str, name: str, value: Any) -> float | None:
    """A clipping threshold: positive, or None / inf for no clipping."""
    if value is None:
        return None
    v = _checked(where, name, value, lambda v: v > 0.0, "> 0 (or None for no clipping)")
    return None if v == math.inf else v


def _flag(where: str, name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise OptimizerError(f"{where}: {name} must be True or False, got {value!r}")
    return bool(value)


def _names(names: Iterable[str], limit: int = 8) -> str:
    names = sorted(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _describe(a: np.ndarray) -> str:
    return f"{a.dtype}{list(a.shape)}"


# --- flat state ---------------------------------------------------------------------------

# NumPy 1.x computes a 0-d float32 array times a Python float in float64 (value-based
# casting), a 1-d slice of a flat buffer in float32: 0-d parameters take the flat path only
# with NumPy 2's weak Python scalars (NEP 50), where both are float32.
_WEAK_SCALARS = np.lib.NumpyVersion(np.__version__) >= "2.0.0"


def _spans(arrays: Iterable[np.ndarray]) -> tuple[list[int], list[int]] | None:
    """The byte ranges of ``arrays`` (empty ones left out), sorted: starts and ends; None if
    two of them overlap."""
    spans = sorted(byte_bounds(a) for a in arrays if a.nbytes)
    los, his = [lo for lo, _ in spans], [hi for _, hi in spans]
    if any(lo < end for lo, end in zip(los[1:], his)):
        return None
    return los, his


def _hits(los: list[int], his: list[int], a: np.ndarray) -> bool:
    """Whether ``a``'s byte range meets one of the disjoint sorted ranges ``los, his``."""
    if not a.nbytes:
        return False
    lo, hi = byte_bounds(a)
    i = bisect.bisect_left(los, hi) - 1  # the last range starting below hi: the widest end
    return i >= 0 and his[i] > lo


# Parameters of this many bytes or more are updated in place, one by one, the others (if
# C-contiguous) in a flat copy, all at once. A numpy call costs about a microsecond besides
# its work, so small parameters are cheaper together; for a big one its dozen calls cost
# less than copying it in and out, and its vectors stay in the cache.
_BIG_BYTES = 1 << 16
# The updates go through their vectors in pieces of at most this many bytes: vectors much
# bigger than the cache then stay in it for all the passes of an update (twice as fast at 8
# MB); smaller pieces would cost more calls than they save.
_PIECE_BYTES = 1 << 20


# A group's gradients of another dtype than float64 up to this many bytes (in float64)
# are copied to float64 at once for the norm; bigger ones one parameter at a time.
_WIDE_BYTES = 1 << 19


def _bytes(a: np.ndarray) -> memoryview:
    """The memory of C-contiguous ``a`` as a 1-d memoryview of bytes: ``m[:] = other`` is a
    plain copy, a fraction of a numpy call's cost on a small array."""
    return memoryview(a.reshape(-1).view(np.uint8))


class _Group:
    """The parameters of one dtype in a :class:`_Layout`, their state and work buffers.

    The state of all of them is one buffer per slot (``opt.slots`` holds views of it), and a
    step copies all their gradients into one flat vector ``g`` in the same order: once, for
    the norm and the update, which then read contiguous memory (a gradient is often a
    transposed view, some ten times slower to go through); gradients a program wrote into
    ``buffers`` (views of ``g``: :meth:`Optimizer.gradient_buffers`) are there already. The
    small C-contiguous parameters are copied into a flat vector ``w``, updated there with
    ``opt._update`` at once, and copied back, byte for byte through memoryviews (a third of
    the cost of numpy copies); the others are updated in place, one by one. The update
    rules are elementwise, so on a piece of a concatenation they compute what they compute
    parameter by parameter, bit for bit. They compute in scratch arrays kept from step to
    step, not in temporaries (big fresh memory comes with page faults, which can cost more
    than the arithmetic on it).
    """

    __slots__ = (
        "buffers",
        "copies",
        "g",
        "index",
        "pieces",
        "state",
        "vectors",
        "views",
        "w",
        "wide",
    )

    def __init__(
        self,
        index: list[int],
        ws: list[np.ndarray],
        olds: Mapping[str, list[np.ndarray | None]],
        every: bool,
    ) -> None:
        """``index``: the positions in the step's order of this dtype's parameters ``ws``;
        ``olds``: per slot, their state so far (None: none yet, zeros); ``every``: they are
        all the step's parameters."""
        chains = _adjacent(ws)
        chained = {j for chain in chains for j in chain}
        copied = [
            j
            for j, w in enumerate(ws)
            if j not in chained and w.nbytes < _BIG_BYTES and w.flags.c_contiguous
        ]
        in_place = [j for j in range(len(ws)) if j not in chained and j not in copied]
        order = copied + [j for chain in chains for j in chain] + in_place  # of the flat vectors
        dtype, n = ws[0].dtype, sum(ws[j].size for j in copied)
        total = sum(w.size for w in ws)
        in_order = order == list(range(len(ws)))
        self.index = None if every and in_order else [index[j] for j in order]
        self.w, self.g = np.empty(n, dtype), np.empty(total, dtype)  # flat copies
        # g in float64 for the norm, if g is not float64 and small: a big g is converted
        # piece by piece in the norm (a float64 copy of all of it costs more memory
        # traffic than the norm's arithmetic).
        small = total * _F64.itemsize <= _WIDE_BYTES
        self.wide = np.empty(total, _F64) if dtype != _F64 and small else None
        wide = self.g if self.wide is None else self.wide
        self.state = state = {slot: np.zeros(total, dtype) for slot in olds}
        self.views: list[dict[str, np.ndarray]] = [{} for _ in ws]  # slot -> state array
        self.vectors = {}  # position -> its gradient's piece of wide (or of g)
        self.buffers = {}  # position -> its gradient's piece of g, of its shape
        self.copies = []  # (piece of w, copied parameter), as bytes
        runs = [(self.w, 0, n)]  # (what holds w, its range of the flat vectors)
        heads = {chain[0]: chain for chain in chains}
        start = 0
        for j in order:
            w = ws[j]
            stop = start + w.size
            for slot, buf in state.items():
                self.views[j][slot] = view = buf[start:stop].reshape(w.shape)
                old = olds[slot][j]
                if old is not None:
                    view[...] = old
            self.vectors[index[j]] = wide[start:stop]
            self.buffers[index[j]] = self.g[start:stop].reshape(w.shape)
            if stop <= n:
                self.copies.append((_bytes(self.w[start:stop]), _bytes(w)))
            elif j in heads:  # the chain's memory, as one vector
                size = sum(ws[k].size for k in heads[j])
                whole = np.lib.stride_tricks.as_strided(w.reshape(-1), (size,), (w.itemsize,))
                runs.append((whole, start, start + size))
            elif j not in chained:
                runs.append((w, start, stop))
            start = stop

        # The update's pieces: runs of the flat w and of the other parameters in place.
        step = max(1, _PIECE_BYTES // dtype.itemsize)
        cuts = []  # (piece of w, its range of the flat vectors)
        for w, lo, hi in runs:
            if w.flags.c_contiguous:
                flat = w.reshape(-1)
                cuts += [
                    (flat[a - lo : a - lo + step], a, min(a + step, hi))
                    for a in range(lo, hi, step)
                ]
            else:  # whole: flat, its elements would not be in the state's order
                cuts.append((w, lo, hi))
        longest = max((w.size for w, _, _ in cuts), default=0)
        t1, t2 = np.empty(longest, dtype), np.empty(longest, dtype)
        self.pieces = [  # (w, g, state, scratch), all of the same shape
            (
                w,
                self.g[lo:hi].reshape(w.shape),
                {slot: buf[lo:hi].reshape(w.shape) for slot, buf in state.items()},
                (t1[: w.size].reshape(w.shape), t2[: w.size].reshape(w.shape)),
            )
            for w, lo, hi in cuts
        ]

    def gather(self, grads: Sequence[np.ndarray]) -> None:
        """Copy this group's gradients (of the step's ``grads``) into ``g``."""
        mine = grads if self.index is None else [grads[i] for i in self.index]
        np.concatenate(mine, axis=None, out=self.g)

    def update(self, opt: Optimizer, scale: float | None) -> None:
        """Update the parameters and state in place with ``opt._update`` from the gradients
        :meth:`gather` copied, times ``scale`` if any (which ``g`` then holds). What is
        clipped is not counted: :meth:`_Layout.clipped` counts it from ``g`` if asked."""
        if scale is not None:
            self.g *= scale
        for flat, w in self.copies:
            flat[:] = w
        for w, g, state, scratch in self.pieces:
            opt._update(w, g, state, scratch, count=False)
        for flat, w in self.copies:
            w[:] = flat


class _Layout:
    """The state of the parameters of one step, as flat buffers, to update them all at once.

    Made by a step whose gradients name parameters (and in whose order) that the last step's
    did not: the state of these parameters moves (its values unchanged) into one flat buffer
    per slot and dtype, and ``opt.slots[slot][name]`` becomes a view of it. Later steps whose
    parameter store, gradients and state still match skip most of :meth:`Optimizer._check`
    and update every parameter of a dtype in a few numpy calls.

    Only made when the per-parameter update would give the same bits: the parameters and
    their state share no memory with each other or with the gradients (else the order of
    the updates would matter), each is contiguous, and the update rule is elementwise.
    """

    __slots__ = (
        "buffers",
        "dtypes",
        "exact",
        "groups",
        "his",
        "los",
        "names",
        "owners",
        "params",
        "scratch",
        "shapes",
        "slot_names",
        "strides",
        "total",
        "vectors",
        "views",
    )

    def norm(self) -> float:
        """:func:`_norm` of the gradients the groups gathered, bit for bit: the same dots of
        the same values (in float64, in the step's order); a vector of another dtype goes
        through a float64 scratch array, one at a time (or all at once, small groups'
        ``wide``)."""
        for group in self.groups:
            if group.wide is not None:
                np.copyto(group.wide, group.g)
        total = 0.0
        for vec in self.vectors:
            if vec.dtype is not _F64:
                wide = self.scratch[: vec.size]
                np.copyto(wide, vec)
                vec = wide
            total += float(vec.dot(vec))
        return math.sqrt(total)

    def clipped(self, limit: float) -> float:
        """The fraction of the gradients the groups' last update clipped to ``[-limit,
        limit]``: those beyond it, as the update saw them (NaNs are not)."""
        beyond = sum(
            int(np.count_nonzero(group.g > limit)) + int(np.count_nonzero(group.g < -limit))
            for group in self.groups
        )
        return beyond / self.total if self.total else 0.0

    def apart(self, g: np.ndarray, allocations: set[int]) -> bool:
        """Whether gradient ``g`` surely shares no memory with what a step writes.

        ``allocations``: the ids of arrays this step found to own memory of their own (not
        a parameter's or the state's), to which it adds; a gradient that is a view of one
        of them needs no other look (gradients are often views of a few buffers).
        """
        if not self.exact:
            if id(g.base) in allocations:
                return True
            mine = owner(g)
            if isinstance(mine, np.ndarray) and id(mine) not in self.owners and mine.flags.owndata:
                allocations.add(id(mine))
                return True  # its own allocation, not that of a parameter or the state
        return not _hits(self.los, self.his, g)

    @classmethod
    def build(
        cls, opt: Optimizer, work: list[tuple[str, np.ndarray, np.ndarray]]
    ) -> _Layout | None:
        names = tuple(name for name, _, _ in work)
        ws = [w for _, w, _ in work]
        slot_names = opt.slot_names
        tables = {slot: opt.slots.get(slot, {}) for slot in slot_names}
        written = ws + [t[n] for t in tables.values() for n in names if t.get(n) is not None]
        if not _WEAK_SCALARS and any(w.ndim == 0 for w in ws):
            return None
        if not all(isinstance(a, np.ndarray) for a in written):
            return None
        if not all(a.flags.c_contiguous or a.flags.f_contiguous for a in written):
            return None  # (so no array overlaps itself)
        spans = _spans(written)
        if spans is None or any(_hits(*spans, g) for _, _, g in work):
            return None

        by_dtype: dict[np.dtype, list[int]] = {}
        for i, w in enumerate(ws):
            by_dtype.setdefault(w.dtype, []).append(i)
        new: dict[str, list[Any]] = {slot: [None] * len(names) for slot in slot_names}
        groups = []
        for index in by_dtype.values():
            olds = {slot: [tables[slot].get(names[i]) for i in index] for slot in slot_names}
            group = _Group(index, [ws[i] for i in index], olds, len(by_dtype) == 1)
            for j, i in enumerate(index):
                for slot in slot_names:
                    new[slot][i] = group.views[j][slot]
            groups.append(group)
        buffers = [b for group in groups for b in group.state.values()]
        spans = _spans(ws + buffers)
        if spans is None:  # pragma: no cover - new buffers overlap nothing
            return None
        owners = [owner(w) for w in ws]

        layout = cls()
        layout.names = names
        layout.params = tuple(ws)
        layout.shapes = tuple(w.shape for w in ws)
        layout.strides = tuple(w.strides for w in ws)
        layout.dtypes = tuple(w.dtype for w in ws)
        layout.slot_names = slot_names
        layout.groups = groups
        vectors = {i: vec for group in groups for i, vec in group.vectors.items()}
        layout.vectors = [vectors[i] for i in range(len(names))]  # in the step's order
        buffers = {i: a for group in groups for i, a in group.buffers.items()}
        layout.buffers = tuple(buffers[i] for i in range(len(names)))
        narrow = [v.size for v in layout.vectors if v.dtype is not _F64]
        layout.scratch = np.empty(max(narrow, default=0), _F64)
        layout.total = sum(w.size for w in ws)
        layout.owners = {id(o) for o in owners} | {id(b) for b in buffers}
        layout.exact = not all(
            isinstance(o, np.ndarray) and o.flags.owndata and _within(w, o)
            for w, o in zip(ws, owners)
        )
        layout.los, layout.his = spans
        for slot in slot_names:
            for name, view in zip(names, new[slot]):  # in the order the old step made them
                opt.slots.setdefault(slot, {})[name] = view
        layout.views = {slot: tuple(new[slot]) for slot in slot_names}
        return layout


def _adjacent(ws: Sequence[np.ndarray]) -> list[list[int]]:
    """Runs of at least two of the C-contiguous arrays ``ws`` that follow each other in the
    memory of one owner (a packed parameter store, see :mod:`rgraph.exec.packing`): as
    indices into ``ws``, each run in memory order. The update goes through a run as one
    vector, in place, with no copy."""
    found = []
    for j, w in enumerate(ws):
        mine = owner(w)
        if w.flags.c_contiguous and w.size and isinstance(mine, np.ndarray):
            found.append((id(mine), byte_bounds(w), j))
    found.sort()
    chains, chain = [], []
    for k, (held_by, (lo, _), j) in enumerate(found):
        if chain and (held_by != found[k - 1][0] or lo != found[k - 1][1][1]):
            chains.append(chain)
            chain = []
        chain.append(j)
    chains.append(chain)
    return [c for c in chains if len(c) > 1]


def _within(a: np.ndarray, held_by: np.ndarray) -> bool:
    lo, hi = byte_bounds(a)
    olo, ohi = byte_bounds(held_by)
    return not a.nbytes or olo <= lo <= hi <= ohi


def _scratch(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Two new arrays like ``w`` for an update to compute in."""
    return np.empty_like(w), np.empty_like(w)


@functools.lru_cache(maxsize=64)
def _increment(dtype: np.dtype, decay: float, clipval: float) -> np.generic:
    """RMSProp's cache increment ``(1 - decay) * g * g`` for ``g = clipval``, in ``dtype``.

    Rounding is monotone, so an increment below it comes from a ``|g|`` below ``clipval``:
    when the largest increment is below it, no element is clipped, and one pass over the
    increments (at hand) has told so, without counting. (Computed on a 1-d array, as RMSProp
    computes the increments; NumPy 1 computes a 0-d array's in float64, like a scalar's.)
    """
    c = np.full(1, clipval, dtype)
    return (c * (1.0 - decay) * c)[0]


# --- the optimisers -----------------------------------------------------------------------


class StepStats:
    """What one :meth:`Optimizer.step` reports.

    Attributes
    ----------
    step
        The number of the step just taken (1 for the first).
    ratio_clipped
        The fraction of gradient elements clipped by value (RMSProp's ``clipval``;
        RecurrentJS's ``ratio_clipped``); 0.0 for optimisers that do not clip by value.
    grad_norm
        The global L2 norm of the gradients as given, before any clipping.

    The update never needs the count, nor the norm without ``clip_norm``, so each is
    computed when first read, from the optimiser's copy of the gradients: a training
    loop that never reads them does not pay for them (counting the clipped elements of
    config B's 225,608 took two passes over them at every step). The optimiser computes
    them before its next step overwrites that copy, if these stats are still held then.
    """

    __slots__ = ("__weakref__", "_norm", "_ratio", "step")

    def __init__(
        self,
        step: int,
        ratio_clipped: float | Callable[[], float],
        grad_norm: float | Callable[[], float],
    ) -> None:
        self.step = step
        self._ratio = ratio_clipped  # or what computes it
        self._norm = grad_norm

    @property
    def ratio_clipped(self) -> float:
        return self._figure("_ratio")

    @property
    def grad_norm(self) -> float:
        return self._figure("_norm")

    def _figure(self, slot: str) -> float:
        """The value in ``slot``, computed now if it holds what computes it."""
        value = getattr(self, slot)
        if callable(value):
            value = value()
            setattr(self, slot, value)
        return value

    def __repr__(self) -> str:
        return (
            f"StepStats(step={self.step}, ratio_clipped={self.ratio_clipped}, "
            f"grad_norm={self.grad_norm})"
        )

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StepStats):
            return NotImplemented
        mine = (self.step, self.ratio_clipped, self.grad_norm)
        return mine == (other.step, other.ratio_clipped, other.grad_norm)

    __hash__ = None  # type: ignore[assignment]

    def __reduce__(self) -> tuple:
        return StepStats, (self.step, self.ratio_clipped, self.grad_norm)


class Optimizer:
    """Base class: the step loop, lazy per-parameter state, and state export/import.

    A subclass sets ``kind``, ``hyper_names`` and ``slot_names``, validates its
    hyperparameters in ``_set_hyper`` and updates one parameter in ``_update``.

    ``state_dict()`` returns plain data::

        {"kind": "rmsprop" | "sgd" | "adam",
         "hyper": {name: float | bool},      # None thresholds are stored as inf
         "step": int,                        # steps taken so far
         "slots": {slot: {param: np.ndarray}}}  # copies, each of its param's shape/dtype

    and ``load_state_dict(state)`` / ``Optimizer.from_state_dict(state)`` restore it exactly.

    Speed: a model has many small parameters, so a step updates all parameters of a dtype at
    once. The state of the parameters of a step lives in one flat buffer per slot and dtype,
    and ``slots[slot][name]`` is a view of it (editing it in place edits the state;
    assigning another array of the right shape and dtype replaces it). Steps with the same
    parameter arrays and gradient names, shapes and dtypes (in the same order) as the last
    one skip most checks, not any whose failure would raise; the gradients and the small
    parameters are copied into flat vectors, updated there with the same elementwise rule
    (the big ones, and any not C-contiguous, in place) and copied back, so the results are
    the bits of the per-parameter update (see ``_Group``). When the set of parameters
    changes, their state moves (the same values) to new buffers and ``slots`` holds new
    arrays: keep ``opt.slots``, not its arrays, across steps. Steps where memory is shared
    (a gradient that is a parameter, one array under two names) are done one parameter
    after the other, as are those of subclasses with their own ``_update``.
    """

    kind: ClassVar[str] = ""
    hyper_names: ClassVar[tuple[str, ...]] = ()
    _kinds: ClassVar[dict[str, type[Optimizer]]] = {}

    step_count: int
    slots: dict[str, dict[str, np.ndarray]]
    _layout: _Layout | None = None  # the flat state of the last step's parameters
    # The last step's stats, if their norm or clipped ratio is still to be computed from
    # the layout's copy of the gradients (see StepStats).
    _unmeasured: weakref.ref[StepStats] | None = None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("kind"):
            Optimizer._kinds[cls.kind] = cls

    def __init__(self, **hyper: Any) -> None:
        self._set_hyper(hyper)
        self.step_count = 0
        self.slots = {}

    def __getstate__(self) -> dict[str, Any]:
        # Copies (copy, deepcopy, pickle) do not share the flat buffers: their state arrays
        # are copied apart, and their first step lays them out anew.
        state = self.__dict__.copy()
        state.pop("_layout", None)
        state.pop("_unmeasured", None)
        return state

    # -- what subclasses provide ------------------------------------------------------------

    @property
    def slot_names(self) -> tuple[str, ...]:
        """The names of the per-parameter state arrays this optimiser keeps."""
        return ()

    def _set_hyper(self, hyper: dict[str, Any]) -> None:
        raise NotImplementedError

    def _update(
        self,
        w: np.ndarray,
        g: np.ndarray,
        state: dict[str, np.ndarray],
        scratch: tuple[np.ndarray, np.ndarray] | None = None,
        count: bool = True,
    ) -> int:
        """Update ``w`` and its ``state`` in place from ``g`` (which stays as it is); return
        how many elements of ``g`` were clipped (0 unless ``count``). ``scratch``: two
        arrays of ``w``'s shape and dtype to compute in, or None to allocate them (the
        per-parameter step passes none)."""
        raise NotImplementedError

    def _clip_limit(self) -> float | None:
        """The limit ``_update`` clips gradient elements to (``[-limit, limit]``), if any."""
        return None

    # -- hyperparameters --------------------------------------------------------------------

    @property
    def hyper(self) -> dict[str, Any]:
        """The hyperparameters as plain data (a None threshold is given as ``inf``)."""
        out = {}
        for name in self.hyper_names:
            value = getattr(self, name)
            out[name] = math.inf if value is None else value
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.hyper_names)
        return f"{type(self).__name__}({args}) at step {self.step_count}"

    # -- stepping ---------------------------------------------------------------------------

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, Any]) -> StepStats:
        """Update, in place, every parameter that has a gradient in ``grads``.

        Parameters
        ----------
        params
            The parameter store, name -> array; its arrays are modified in place.
        grads
            Name -> gradient (``Program.run(...).grads``), each of its parameter's shape;
            a gradient of another float dtype is cast to the parameter's. Parameters
            without a gradient are left alone. ``grads`` is not modified.

        Returns
        -------
        StepStats
            The step number, ``ratio_clipped`` and the pre-clip gradient norm.

        Raises
        ------
        OptimizerError
            A gradient names no parameter or has another shape, or a parameter is not a
            writeable float array. Checked for all parameters before any is changed.
        OptimizerStateError
            Existing state of a parameter does not match its shape or dtype.
        """
        self._settle()  # before this step overwrites the last one's gradients
        layout = self._layout
        checked = None if layout is None else self._fast_check(layout, params, grads)
        if checked is None:
            work = self._check(params, grads)
            layout = self._relayout(params, grads, work)
            if layout is None:
                return self._step_each(work)
            checked = [g for _, _, g in work], False
        gs, in_place = checked
        if not in_place:  # (else they are where the update reads them)
            for group in layout.groups:
                group.gather(gs)
        norm = None if self.clip_norm is None else layout.norm()
        scale = _norm_scale(norm, self.clip_norm)
        self.step_count += 1
        for group in layout.groups:
            group.update(self, scale)
        limit = self._clip_limit()
        stats = StepStats(
            self.step_count,
            0.0 if limit is None else functools.partial(layout.clipped, limit),
            layout.norm if norm is None else norm,
        )
        if norm is None or limit is not None:
            self._unmeasured = weakref.ref(stats)
        return stats

    def gradient_buffers(self) -> dict[str, np.ndarray] | None:
        """Arrays the next step's gradients can be written into, which it then reads
        where they are (no copy, no checks of them): give them to
        :meth:`~rgraph.Program.run` as ``grads_into``, and the result's gradients to
        :meth:`step`. None until a step has laid out the parameters' state (see
        :class:`_Layout`: the first step, and one whose parameters or gradients change).

        Call it before each run that writes into them: it first measures what the last
        step's :class:`StepStats` still need of that step's gradients. The arrays are the
        optimiser's, and a step may scale them in place (``clip_norm``).

        >>> import numpy as np, rgraph as rg
        >>> opt, params = rg.SGD(lr=0.5), {"w": np.zeros(2)}
        >>> opt.gradient_buffers() is None
        True
        >>> _ = opt.step(params, {"w": np.ones(2)})
        >>> into = opt.gradient_buffers(); into["w"][...] = [2.0, 4.0]
        >>> _ = opt.step(params, into); params["w"].tolist()
        [-1.5, -2.5]
        """
        self._settle()
        layout = self._layout
        return None if layout is None else dict(zip(layout.names, layout.buffers))

    def _settle(self) -> None:
        """Measure the figures of the last step's stats, if someone holds them still,
        before its gradients are overwritten."""
        if self._unmeasured is not None:
            stats = self._unmeasured()
            if stats is not None:
                stats.grad_norm  # noqa: B018 - computes them
                stats.ratio_clipped  # noqa: B018
            self._unmeasured = None

    def _step_each(self, work: list[tuple[str, np.ndarray, np.ndarray]]) -> StepStats:
        """The step one parameter after the other, for what the flat path does not take."""
        norm = _norm(g for _, _, g in work)
        scale = _norm_scale(norm, self.clip_norm)
        self.step_count += 1
        clipped = total = 0
        for name, w, g in work:
            if scale is not None:
                g = g * scale
            clipped += self._update(w, g, self._state(name, w))
            total += g.size
        return StepStats(
            step=self.step_count,
            ratio_clipped=clipped / total if total else 0.0,
            grad_norm=norm,
        )

    def _fast_check(
        self, layout: _Layout, params: Mapping[str, np.ndarray], grads: Mapping[str, Any]
    ) -> tuple[Sequence[np.ndarray], bool] | None:
        """The gradients (cast to their parameters' dtypes) if ``params``, ``grads`` and the
        state are laid out as ``layout`` and pass every check of :meth:`_check`; else None.
        With them, whether they are the layout's own buffers (:meth:`gradient_buffers`),
        where the update reads them.

        None also when a gradient may share memory with what the step writes (a parameter
        or the state): the flat update reads all gradients before writing anything, the
        per-parameter one parameter after the other. On None, :meth:`_check` runs (and
        raises whatever error there is, in its order).
        """
        if type(params) is not dict or type(grads) is not dict:
            return None
        names = layout.names
        if len(grads) != len(names) or tuple(grads) != names:
            return None
        if not all(map(operator.is_, map(params.get, names), layout.params)):
            return None
        if self.slot_names != layout.slot_names:
            return None
        slots = self.slots
        for slot, views in layout.views.items():
            table = slots.get(slot)
            if views and (
                table is None or not all(map(operator.is_, map(table.get, names), views))
            ):
                return None
        ws = layout.params  # (an array's shape, strides and flags can change in place)
        if (
            tuple(map(_SHAPE, ws)) != layout.shapes
            or tuple(map(_STRIDES, ws)) != layout.strides
            or tuple(map(_DTYPE, ws)) != layout.dtypes
            or not all(map(_WRITEABLE, ws))
        ):
            return None
        if all(map(operator.is_, grads.values(), layout.buffers)):
            return layout.buffers, True
        gs = []
        owners, exact = layout.owners, layout.exact
        allocations: set[int] = set()  # (of owners that gs keeps alive: ids stay unique)
        for grad, shape, dtype in zip(grads.values(), layout.shapes, layout.dtypes):
            g = grad if type(grad) is np.ndarray else np.asarray(grad)
            if g.shape != shape:
                return None
            if g.dtype is not dtype and g.dtype != dtype:
                g = g.astype(dtype)  # a new array: nothing the step writes
            elif (
                exact or g.base is not None or id(g) in owners or not g.flags.owndata
            ) and not layout.apart(g, allocations):
                return None
            gs.append(g)
        return gs, False

    def _relayout(
        self,
        params: Mapping[str, np.ndarray],
        grads: Mapping[str, Any],
        work: list[tuple[str, np.ndarray, np.ndarray]],
    ) -> _Layout | None:
        """Move the state of the parameters in ``work`` into flat buffers (see
        :class:`_Layout`) and return the layout; or None (and no change) if this step must
        go one parameter after the other."""
        self._layout = None
        if (
            type(params) is not dict
            or type(grads) is not dict
            or type(self)._update not in _ELEMENTWISE_UPDATES
            or type(self)._state is not Optimizer._state
            or type(self)._check is not Optimizer._check
        ):
            return None
        layout = _Layout.build(self, work)
        self._layout = layout
        return layout

    def _check(
        self, params: Mapping[str, np.ndarray], grads: Mapping[str, Any]
    ) -> list[tuple[str, np.ndarray, np.ndarray]]:
        where = f"{type(self).__name__}.step"
        unknown = [name for name in grads if name not in params]
        if unknown:
            raise OptimizerError(
                f"{where}: gradients for {_names(unknown)}, which are not in the parameter "
                f"store (it has {_names(params)})"
            )
        work = []
        for name, grad in grads.items():
            w = params[name]
            if not isinstance(w, np.ndarray) or w.dtype.kind != "f":
                got = _describe(w) if isinstance(w, np.ndarray) else type(w).__name__
                raise OptimizerError(
                    f"{where}: parameter '{name}' must be a float numpy array, got {got}"
                )
            if not w.flags.writeable:
                raise OptimizerError(
                    f"{where}: parameter '{name}' is read-only; optimisers update the "
                    "parameter arrays in place"
                )
            g = np.asarray(grad)
            if g.shape != w.shape:
                raise OptimizerError(
                    f"{where}: gradient of '{name}' is {_describe(g)} but the parameter is "
                    f"{_describe(w)}"
                )
            if g.dtype != w.dtype:
                g = g.astype(w.dtype)
            for slot in self.slot_names:
                s = self.slots.get(slot, {}).get(name)
                if s is not None and (s.shape != w.shape or s.dtype != w.dtype):
                    raise OptimizerStateError(
                        f"{where}: {self.kind} state '{slot}' of '{name}' is {_describe(s)} "
                        f"but the parameter is {_describe(w)}"
                    )
            work.append((name, w, g))
        return work

    def _state(self, name: str, w: np.ndarray) -> dict[str, np.ndarray]:
        """The state arrays of one parameter, created as zeros on first use."""
        state = {}
        for slot in self.slot_names:
            table = self.slots.setdefault(slot, {})
            if name not in table:
                table[name] = np.zeros(w.shape, dtype=w.dtype)
            state[slot] = table[name]
        return state

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The whole optimiser state as plain data; arrays are copies.

        Examples
        --------
        >>> import numpy as np, rgraph as rg
        >>> opt = rg.SGD(lr=0.1, momentum=0.9)
        >>> _ = opt.step({"w": np.zeros(2)}, {"w": np.ones(2)})
        >>> opt.state_dict()
        {'kind': 'sgd', 'hyper': {'lr': 0.1, 'momentum': 0.9, 'nesterov': False, \
'weight_decay': 0.0, 'clip_norm': inf}, 'step': 1, 'slots': {'velocity': {'w': array([1., 1.])}}}
        """
        return {
            "kind": self.kind,
            "hyper": self.hyper,
            "step": int(self.step_count),
            "slots": {
                slot: {name: a.copy() for name, a in self.slots.get(slot, {}).items()}
                for slot in self.slot_names
            },
        }

    def load_state_dict(
        self, state: Mapping[str, Any], params: Mapping[str, np.ndarray] | None = None
    ) -> None:
        """Replace this optimiser's hyperparameters, step count and state with ``state``.

        Everything is checked before anything changes. The arrays are copied.

        Parameters
        ----------
        state
            What :meth:`state_dict` returned (perhaps read back from a file).
        params
            If given, the parameter store the state will be used with: every state array
            must belong to one of its parameters and have that parameter's shape and
            dtype. (Without it, the same is checked at the next :meth:`step`.)

        Raises
        ------
        OptimizerStateError
            The state is of another kind of optimiser, misses or has unknown entries, has
            bad hyperparameters, or an array that is not a float array of the right shape
            and dtype; the message names the slot and parameter.
        """
        kind = type(self).__name__
        if not isinstance(state, Mapping):
            raise OptimizerStateError(
                f"{kind} state must be a mapping with keys {list(_STATE_KEYS)}, "
                f"got {type(state).__name__}"
            )
        _exact_keys(f"{kind} state", state, _STATE_KEYS)
        if state["kind"] != self.kind:
            raise OptimizerStateError(
                f"optimizer state is for kind {state['kind']!r}, but this is a {kind} "
                f"(kind {self.kind!r}); Optimizer.from_state_dict(state) builds the "
                "optimizer the state is for"
            )
        hyper = state["hyper"]
        if not isinstance(hyper, Mapping):
            raise OptimizerStateError(f"{kind} state: 'hyper' must be a mapping")
        _exact_keys(f"{kind} state 'hyper'", hyper, self.hyper_names)
        try:
            probe = type(self)(**hyper)
        except OptimizerError as e:
            raise OptimizerStateError(f"{kind} state: bad hyperparameter: {e}") from e
        step = state["step"]
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
            raise OptimizerStateError(f"{kind} state: 'step' must be an int, got {step!r}")
        if step < 0:
            raise OptimizerStateError(f"{kind} state: 'step' must be >= 0, got {step}")
        slots = state["slots"]
        if not isinstance(slots, Mapping):
            raise OptimizerStateError(f"{kind} state: 'slots' must be a mapping")
        _exact_keys(f"{kind} state 'slots'", slots, probe.slot_names)
        new_slots = _checked_slots(kind, slots, probe.slot_names, params)

        self._set_hyper(dict(hyper))
        self.step_count = int(step)
        self.slots = new_slots
        self._layout = None

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Any], params: Mapping[str, np.ndarray] | None = None
    ) -> Optimizer:
        """A new optimiser with exactly the state of ``state`` (see :meth:`load_state_dict`).

        Called on :class:`Optimizer` itself, it builds whichever kind ``state["kind"]``
        names; called on a subclass, the state must be of that kind.

        Examples
        --------
        >>> import numpy as np, rgraph as rg
        >>> opt = rg.RMSProp(lr=0.02)
        >>> _ = opt.step({"w": np.zeros(2)}, {"w": np.ones(2)})
        >>> rg.Optimizer.from_state_dict(opt.state_dict())
        RMSProp(lr=0.02, regc=1e-06, clipval=5.0, decay=0.999, eps=1e-08, clip_norm=None) at step 1
        """
        target: type[Optimizer] = cls
        if not cls.kind:
            kind = state.get("kind") if isinstance(state, Mapping) else None
            if kind not in Optimizer._kinds:
                raise OptimizerStateError(
                    f"optimizer state has kind {kind!r}; known kinds: {_names(Optimizer._kinds)}"
                )
            target = Optimizer._kinds[kind]
        opt = target()
        opt.load_state_dict(state, params)
        return opt


def _exact_keys(what: str, mapping: Mapping[str, Any], expected: Iterable[str]) -> None:
    expected = list(expected)
    missing = [k for k in expected if k not in mapping]
    unknown = [k for k in mapping if k not in expected]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"misses {_names(missing)}")
        if unknown:
            parts.append(f"has unknown {_names(map(str, unknown))}")
        raise OptimizerStateError(
            f"{what} {' and '.join(parts)}; expected exactly {_names(expected) or 'nothing'}"
        )


def _checked_slots(
    kind: str,
    slots: Mapping[str, Any],
    slot_names: tuple[str, ...],
    params: Mapping[str, np.ndarray] | None,
) -> dict[str, dict[str, np.ndarray]]:
    """Validated copies of the state arrays (native byte order, C-contiguous, writeable)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    seen: dict[str, tuple[str, np.ndarray]] = {}  # param -> (first slot, its array)
    for slot in slot_names:
        table = slots[slot]
        if not isinstance(table, Mapping):
            raise OptimizerStateError(
                f"{kind} state: slot '{slot}' must map parameter names to arrays"
            )
        out[slot] = {}
        for name, a in table.items():
            where = f"{kind} state '{slot}' of '{name}'"
            if not isinstance(name, str):
                raise OptimizerStateError(
                    f"{kind} state: slot '{slot}' has a non-string key {name!r}"
                )
            if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
                got = _describe(a) if isinstance(a, np.ndarray) else type(a).__name__
                raise OptimizerStateError(f"{where} must be a float numpy array, got {got}")
            a = np.array(a, dtype=a.dtype.newbyteorder("="), order="C", copy=True)
            if params is not None:
                if name not in params:
                    raise OptimizerStateError(
                        f"{where}: there is no parameter '{name}' in the parameter store"
                    )
                w = np.asarray(params[name])
                if a.shape != w.shape or a.dtype != w.dtype:
                    raise OptimizerStateError(
                        f"{where} is {_describe(a)} but the parameter is {_describe(w)}"
                    )
            if name in seen:
                first, b = seen[name]
                if a.shape != b.shape or a.dtype != b.dtype:
                    raise OptimizerStateError(
                        f"{where} is {_describe(a)} but its '{first}' is {_describe(b)}"
                    )
            else:
                seen[name] = (slot, a)
            out[slot][name] = a
    for slot in slot_names:
        lacking = [name for name in seen if name not in out[slot]]
        if lacking:
            raise OptimizerStateError(
                f"{kind} state: slot '{slot}' lacks {_names(lacking)}, which other slots have"
            )
    return out


class RMSProp(Optimizer):
    """RMSProp exactly as RecurrentJS's ``Solver``.

    Per parameter element, with ``g`` its gradient::

        cache = decay * cache + (1 - decay) * g * g      # the *unclipped* g
        g     = clip(g, -clipval, clipval)                # counted in ratio_clipped
        w    += -lr * g / sqrt(cache + eps) - regc * w

    ``regc`` is RecurrentJS's L2 regularisation: it shrinks ``w`` directly, not scaled by
    ``lr``. Only parameters with a gradient are updated (and decayed).

    Parameters
    ----------
    lr
        Learning rate (the demo's 0.01).
    regc
        L2 regularisation strength (the demo's 1e-6).
    clipval
        Clip each gradient element to ``[-clipval, clipval]`` after updating the cache
        (the demo's 5); None for no clipping.
    decay
        Decay rate of the squared-gradient cache (RecurrentJS's ``decay_rate``).
    eps
        Added to the cache inside the square root (RecurrentJS's ``smooth_eps``).
    clip_norm
        If given, first scale all gradients so that their global norm is at most this
        (see :func:`clip_by_global_norm`); the cache then sees the scaled gradients.

    Examples
    --------
    >>> import numpy as np, rgraph as rg
    >>> params = {"w": np.array([1.0, -2.0])}
    >>> opt = rg.RMSProp(lr=0.01, regc=0.0, clipval=5.0)
    >>> stats = opt.step(params, {"w": np.array([10.0, 0.5])})
    >>> stats.ratio_clipped
    0.5
    >>> params["w"].round(4).tolist(), opt.slots["cache"]["w"].tolist()
    ([0.8419, -2.3162], [0.10000000000000009, 0.0002500000000000002])
    """

    kind = "rmsprop"
    hyper_names = ("lr", "regc", "clipval", "decay", "eps", "clip_norm")

    def __init__(
        self,
        lr: float = 0.01,
        *,
        regc: float = 1e-6,
        clipval: float | None = 5.0,
        decay: float = 0.999,
        eps: float = 1e-8,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(
            lr=lr, regc=regc, clipval=clipval, decay=decay, eps=eps, clip_norm=clip_norm
        )

    @property
    def slot_names(self) -> tuple[str, ...]:
        return ("cache",)

    def _set_hyper(self, hyper: dict[str, Any]) -> None:
        where = "RMSProp"
        self.lr = _nonneg(where, "lr", hyper["lr"])
        self.regc = _nonneg(where, "regc", hyper["regc"])
        self.clipval = _limit(where, "clipval", hyper["clipval"])
        self.decay = _unit(where, "decay", hyper["decay"])
        self.eps = _positive(where, "eps", hyper["eps"])
        self.clip_norm = _limit(where, "clip_norm", hyper["clip_norm"])

    def _clip_limit(self) -> float | None:
        return self.clipval

    def _update(
        self,
        w: np.ndarray,
        g: np.ndarray,
        state: dict[str, np.ndarray],
        scratch: tuple[np.ndarray, np.ndarray] | None = None,
        count: bool = True,
    ) -> int:
        t1, t2 = _scratch(w) if scratch is None else scratch
        cache = state["cache"]
        cache *= self.decay
        np.multiply(g, 1.0 - self.decay, out=t1)
        t1 *= g
        cache += t1
        clipped = 0
        c = self.clipval
        top = t1.max() if c is not None and t1.size else None  # NaN if a g is NaN
        # (on a 0-d array NumPy 1 rounds otherwise than _increment: counted in any case)
        if top is not None and not (t1.ndim and top < _increment(t1.dtype, self.decay, c)):
            np.clip(g, -c, c, out=t1)
            if count:  # the elements clip changed, less the NaNs it left (NaN != NaN)
                clipped = int(np.count_nonzero(t1 != g))
                if top != top:
                    clipped -= int(np.count_nonzero(np.isnan(g)))
            g = t1
        # w += -lr * g / sqrt(cache + eps) - regc * w, in this order
        np.multiply(g, -self.lr, out=t1)
        np.add(cache, self.eps, out=t2)
        np.sqrt(t2, out=t2)
        t1 /= t2
        if self.regc:
            t1 -= np.multiply(w, self.regc, out=t2)
        w += t1
        return clipped


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov and weight decay.

    The PyTorch formulation, per parameter::

        g  = g + weight_decay * w
        v  = momentum * v + g                       # if momentum
        w -= lr * v                                 # or, nesterov: lr * (g + momentum * v)

    Without momentum it is plain ``w -= lr * g`` and keeps no state.

    Parameters
    ----------
    lr
        Learning rate.
    momentum
        Momentum factor (0 for none).
    nesterov
        Use Nesterov momentum (needs ``momentum > 0``).
    weight_decay
        L2 penalty added to the gradient.
    clip_norm
        If given, first clip the gradients to this global norm (:func:`clip_by_global_norm`).

    Examples
    --------
    >>> import numpy as np, rgraph as rg
    >>> params = {"w": np.array([1.0, 2.0])}
    >>> opt = rg.SGD(lr=0.1, momentum=0.5)
    >>> for _ in range(2):
    ...     _ = opt.step(params, {"w": np.array([1.0, -1.0])})
    >>> params["w"].tolist()   # steps of 0.1, then 0.1 * (0.5 * 1 + 1)
    [0.75, 2.25]
    """

    kind = "sgd"
    hyper_names = ("lr", "momentum", "nesterov", "weight_decay", "clip_norm")

    def __init__(
        self,
        lr: float = 0.01,
        *,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            clip_norm=clip_norm,
        )

    @property
    def slot_names(self) -> tuple[str, ...]:
        return ("velocity",) if self.momentum else ()

    def _set_hyper(self, hyper: dict[str, Any]) -> None:
        where = "SGD"
        lr = _nonneg(where, "lr", hyper["lr"])
        momentum = _nonneg(where, "momentum", hyper["momentum"])
        nesterov = _flag(where, "nesterov", hyper["nesterov"])
        if nesterov and momentum == 0.0:
            raise OptimizerError(f"{where}: nesterov=True needs momentum > 0")
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.weight_decay = _nonneg(where, "weight_decay", hyper["weight_decay"])
        self.clip_norm = _limit(where, "clip_norm", hyper["clip_norm"])

    def _update(
        self,
        w: np.ndarray,
        g: np.ndarray,
        state: dict[str, np.ndarray],
        scratch: tuple[np.ndarray, np.ndarray] | None = None,
        count: bool = True,
    ) -> int:
        t1, t2 = _scratch(w) if scratch is None else scratch
        if self.weight_decay:
            g = np.add(g, np.multiply(w, self.weight_decay, out=t1), out=t1)
        if self.momentum:
            v = state["velocity"]
            v *= self.momentum
            v += g
            g = np.add(g, np.multiply(v, self.momentum, out=t2), out=t1) if self.nesterov else v
        w -= np.multiply(g, self.lr, out=t2)
        return 0


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with bias correction and optional weight decay.

    Per parameter, at step ``t`` (1, 2, ...)::

        g    = g + weight_decay * w                 # unless decoupled_weight_decay
        m    = beta1 * m + (1 - beta1) * g
        v    = beta2 * v + (1 - beta2) * g**2
        mhat = m / (1 - beta1**t);  vhat = v / (1 - beta2**t)
        w   -= lr * mhat / (sqrt(vhat) + eps)

    With ``decoupled_weight_decay=True`` (AdamW), the decay is instead applied to the
    weights, ``w *= 1 - lr * weight_decay``, before the update. ``t`` is the optimiser's
    step count: a parameter that first gets a gradient at a later step is bias-corrected
    with that step's ``t``.

    Parameters
    ----------
    lr
        Learning rate (step size).
    beta1, beta2
        Decay rates of the first and second moment estimates.
    eps
        Added to ``sqrt(vhat)``.
    weight_decay
        L2 penalty (added to the gradient, or decoupled; see above).
    decoupled_weight_decay
        Apply ``weight_decay`` to the weights directly (AdamW).
    clip_norm
        If given, first clip the gradients to this global norm (:func:`clip_by_global_norm`).

    Examples
    --------
    >>> import numpy as np, rgraph as rg
    >>> params = {"w": np.array([1.0, 2.0])}
    >>> opt = rg.Adam(lr=0.1)
    >>> _ = opt.step(params, {"w": np.array([3.0, -0.5])})
    >>> params["w"].round(6).tolist()   # the first step moves each weight by about lr
    [0.9, 2.1]
    """

    kind = "adam"
    hyper_names = (
        "lr",
        "beta1",
        "beta2",
        "eps",
        "weight_decay",
        "decoupled_weight_decay",
        "clip_norm",
    )

    def __init__(
        self,
        lr: float = 0.001,
        *,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            clip_norm=clip_norm,
        )

    @property
    def slot_names(self) -> tuple[str, ...]:
        return ("m", "v")

    def _set_hyper(self, hyper: dict[str, Any]) -> None:
        where = "Adam"
        self.lr = _nonneg(where, "lr", hyper["lr"])
        self.beta1 = _unit(where, "beta1", hyper["beta1"])
        self.beta2 = _unit(where, "beta2", hyper["beta2"])
        self.eps = _positive(where, "eps", hyper["eps"])
        self.weight_decay = _nonneg(where, "weight_decay", hyper["weight_decay"])
        self.decoupled_weight_decay = _flag(
            where, "decoupled_weight_decay", hyper["decoupled_weight_decay"]
        )
        self.clip_norm = _limit(where, "clip_norm", hyper["clip_norm"])

    def _update(
        self,
        w: np.ndarray,
        g: np.ndarray,
        state: dict[str, np.ndarray],
        scratch: tuple[np.ndarray, np.ndarray] | None = None,
        count: bool = True,
    ) -> int:
        t1, t2 = _scratch(w) if scratch is None else scratch
        t = self.step_count
        if self.weight_decay:
            if self.decoupled_weight_decay:
                w *= 1.0 - self.lr * self.weight_decay
            else:
                g = np.add(g, np.multiply(w, self.weight_decay, out=t1), out=t1)
        m, v = state["m"], state["v"]
        m *= self.beta1
        m += np.multiply(g, 1.0 - self.beta1, out=t2)
        v *= self.beta2
        v += np.multiply(np.square(g, out=t2), 1.0 - self.beta2, out=t2)
        delta = np.divide(m, 1.0 - self.beta1**t, out=t1)  # mhat
        delta *= self.lr
        root = np.divide(v, 1.0 - self.beta2**t, out=t2)  # vhat
        np.sqrt(root, out=root)
        root += self.eps
        delta /= root
        w -= delta
        return 0


_ELEMENTWISE_UPDATES = frozenset({RMSProp._update, SGD._update, Adam._update})
