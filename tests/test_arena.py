"""The arena: large values reuse memory across runs, and never memory a live array uses."""

from __future__ import annotations

import math
import threading
import weakref

import numpy as np
import pytest

import rgraph as rg
from rgraph.exec.arena import MIN_BYTES, Arena

RNG = np.random.default_rng(5)


def test_a_buffer_is_handed_out_again_only_once_nothing_uses_it():
    arena = Arena()
    n = MIN_BYTES // 8
    a = arena.empty((n,), np.float64)
    view = a[::2]  # a view of a view still holds the buffer
    del a
    b = arena.empty((n,), np.float64)
    assert not np.shares_memory(b, view)
    first = id(view.base)
    del view
    c = arena.empty((n // 2, 2), np.float64)  # fits in the first buffer: reused
    assert id(c.base) == first
    assert len(arena.buffers) == 2


def test_small_arrays_get_their_own_memory_and_others_the_smallest_free_buffer_that_fits():
    arena = Arena()
    small = arena.empty((4,), np.float32)
    assert small.base is None and not arena.buffers
    a, b, c = (arena.empty((k * MIN_BYTES,), np.uint8) for k in (2, 3, 8))
    ids = id(a.base), id(b.base), id(c.base)
    del a, b, c
    # A request of 1.5 units: the 2-unit buffer (the 3-unit one fits too, but is bigger).
    assert id(arena.empty((3 * MIN_BYTES // 2,), np.uint8).base) == ids[0]
    assert id(arena.empty((3 * MIN_BYTES // 2,), np.uint8).base) == ids[0]  # (freed again)


def capacity(units: float) -> int:
    """The bytes of the buffer a request of ``units`` arena units gets: the size class
    at or above it (steps of 2 ** (1/4))."""
    return int(2 ** (math.ceil(4 * math.log2(units * MIN_BYTES)) / 4))


def test_each_value_gets_the_buffer_it_had_in_the_run_before():
    arena = Arena()

    def run(units: float) -> list[int]:
        """A run of a step: two values alive together, then a third after them."""
        a = arena.empty((int(units * MIN_BYTES),), np.uint8)
        b = arena.empty((int(2 * units * MIN_BYTES),), np.uint8, "b")
        ids = [id(a.base), id(b.base)]
        del a, b
        ids.append(id(arena.empty((int(units * MIN_BYTES),), np.uint8).base))
        arena.trim()
        return ids

    first = run(8)
    assert first[2] == first[0]  # a's buffer is free again: the third value shares it
    # Shorter sequences: every value in the same buffer as before, however short.
    for units in (2, 5, 1.1, 8, 3):
        assert run(units) == first, units
    assert len(arena.buffers) == 2


def test_a_buffer_grows_for_all_the_values_that_share_it():
    arena = Arena()

    def run(units: float) -> None:
        for _ in range(3):  # one after the other: all in one buffer
            arena.empty((int(units * MIN_BYTES),), np.uint8)
        arena.trim()

    run(2)
    run(6)  # the first value outgrows the buffer: a larger one, for the other two too
    assert [b.nbytes // MIN_BYTES for b in arena.buffers] == [capacity(6) // MIN_BYTES]
    run(2)
    run(6)
    assert len(arena.buffers) == 1


def test_buffers_of_values_no_run_makes_any_more_are_held_up_to_half_the_budget():
    arena = Arena()

    def run(places: str, units: float) -> None:
        """A run: values from ``places``, alive together."""
        alive = [arena.empty((int(units * MIN_BYTES),), np.uint8, p) for p in places]
        del alive
        arena.trim()

    run("abc", 4)
    assert arena.budget == 3 * capacity(4)  # 12 units
    # Runs of another path through the program: other places, and sizes that the free
    # 4-unit buffers would hold with more than as much again to spare.
    run("defg", 1.9)
    assert arena.budget == 3 * capacity(4)  # (8 units in use now)
    # 20 units held, more than the budget and half of it (18): the sites asked for
    # longest ago are forgotten until it is not, a's buffer first.
    assert sorted(b.nbytes // MIN_BYTES for b in arena.buffers) == [2, 2, 2, 2, 4, 4]
    run("abc", 4)  # the first path again: a's buffer is made again, and d's goes
    assert sorted(b.nbytes // MIN_BYTES for b in arena.buffers) == [2, 2, 2, 4, 4, 4]


def test_free_buffers_stay_for_the_runs_to_come():
    arena = Arena()
    kept = arena.empty((MIN_BYTES,), np.uint8)
    arena.empty((2 * MIN_BYTES,), np.uint8)  # freed at once
    arena.trim()
    arena.trim()  # nothing asked for since: a later run of that length still finds it
    assert len(arena.buffers) == 2 and kept.base is arena.buffers[0]


def test_a_slightly_longer_value_reuses_the_buffer_of_a_shorter_one():
    arena = Arena()
    first = arena.empty((5 * MIN_BYTES,), np.uint8)
    buffer = id(first.base)
    assert first.base.nbytes == capacity(5) > 5.5 * MIN_BYTES
    del first
    arena.trim()
    assert id(arena.empty((int(5.5 * MIN_BYTES),), np.uint8).base) == buffer


def test_a_value_that_outgrows_its_free_buffer_lets_go_of_it_at_once():
    arena = Arena()
    for n in (1, 2, 4, 8):  # longer and longer sequences, one run each
        arena.empty((n * MIN_BYTES,), np.uint8)
        assert [b.nbytes // MIN_BYTES for b in arena.buffers] == [n]  # the last run's: gone
        arena.trim()


def _long_loop() -> rg.Graph:
    g = rg.Graph("long")
    xs = g.input("xs", ("T", "B", 64))
    w = g.param("w", (64, 64))

    def step(b, carry, x):
        h = b.tanh(b.matmul(carry[0], w) + x[0])
        return [h], [h * 2.0]

    (h,), (ys,) = g.scan(step, init=[g.full(shape=["B", 64])], xs=[xs])
    g.output(ys + 1.0, name="ys")
    g.output(h, name="h")
    g.output(g.sum(ys * ys), name="loss")
    return g


def _reference(x: np.ndarray, w: np.ndarray) -> np.ndarray:
    h, ys = np.zeros(x.shape[1:]), []
    for row in x:
        h = np.tanh(h @ w + row)
        ys.append(h * 2.0)
    return np.stack(ys) + 1.0


def test_outputs_kept_by_the_caller_survive_later_runs():
    g = _long_loop()
    prog = rg.compile(g, loss="loss")
    w = {"w": RNG.normal(size=(64, 64)) * 0.1}
    x1, x2 = RNG.normal(size=(2, 20, 16, 64))  # ys: 160 KiB, in the arena
    first = prog.run({"xs": x1}, w)
    kept = {k: v.copy() for k, v in first.outputs.items()} | {"w.grad": first.grads["w"].copy()}
    for _ in range(3):
        again = prog.run({"xs": x2}, w)
        np.testing.assert_array_equal(again["ys"], _reference(x2, w["w"]))
        for old in [*first.outputs.values(), *first.grads.values()]:
            for new in [*again.outputs.values(), *again.grads.values()]:
                assert not np.shares_memory(old, new)
    for name in ("ys", "h", "loss"):
        np.testing.assert_array_equal(first[name], kept[name])
    np.testing.assert_array_equal(first.grads["w"], kept["w.grad"])
    np.testing.assert_array_equal(first["ys"], _reference(x1, w["w"]))


def test_runs_in_two_threads_at_once_do_not_share_memory():
    g = _long_loop()
    prog = rg.compile(g, loss="loss")
    w = {"w": RNG.normal(size=(64, 64)) * 0.1}
    inputs = [RNG.normal(size=(12, 16, 64)) for _ in range(2)]
    wrong: list[str] = []

    def work(x: np.ndarray) -> None:
        want = _reference(x, w["w"])
        for _ in range(30):
            if not np.array_equal(prog.run({"xs": x}, w)["ys"], want):
                wrong.append("ys differs")

    threads = [threading.Thread(target=work, args=(x,)) for x in inputs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong


def _held(prog: rg.Program) -> list[np.ndarray]:
    """The buffers of ``prog``'s arena in this thread."""
    made = getattr(prog.interpreter.arenas._local, "arena", None)
    return made.buffers if made is not None else []  # (none until a value is large)


@pytest.mark.parametrize("lengths", [(30, 10, 20, 5, 30, 25), (5, 10, 20, 40, 80)])
def test_memory_held_between_runs_follows_the_sequences_now_coming(lengths):
    w = {"w": RNG.normal(size=(64, 64)) * 0.1}
    prog, alone = (rg.compile(_long_loop(), loss="loss") for _ in range(2))
    buffers: set[int] = set()
    for again in (False, True):
        for T in lengths:
            x = RNG.normal(size=(T, 16, 64))
            r = prog.run({"xs": x}, w)
            np.testing.assert_allclose(r["ys"], _reference(x, w["w"]), rtol=1e-12)
            del r
            if again:  # lengths seen before: no new memory
                assert {id(b) for b in _held(prog)} == buffers, T
        buffers = {id(b) for b in _held(prog)}
    # What stays held is what the longest sequence needs, and free buffers of other
    # lengths of up to half of that, not a set per length.
    alone.run({"xs": RNG.normal(size=(max(lengths), 16, 64))}, w)
    needed = sum(b.nbytes for b in _held(alone))
    assert sum(b.nbytes for b in _held(prog)) <= 1.5 * needed


def test_runs_that_alternate_sizes_keep_their_buffers():
    # Batches of varying lengths: each value keeps its buffer, instead of letting one go
    # at each miss and making it again the run after (fresh memory costs a page fault
    # per 4 KiB).
    arena = Arena()

    def run(units):
        big = arena.empty((8 * MIN_BYTES,), np.uint8)
        other = arena.empty((int(units * MIN_BYTES),), np.uint8)  # no room in a free 3
        del big, other
        arena.trim()

    run(3)
    run(1.2)
    held = [weakref.ref(b) for b in arena.buffers]  # (a weak reference leaves them free)
    for units in (3, 1.2, 3, 1.2):
        run(units)
        now = arena.buffers
        assert len(now) == len(held) and all(b() is a for b, a in zip(held, now)), units
        del now  # (a reference would keep them in use)


class _AlwaysReviewed(Arena):
    """An arena whose every trim goes through all its sites (no short cut)."""

    def trim(self) -> None:
        self._moved = True
        super().trim()


@pytest.mark.parametrize("seed", range(4))
def test_a_trim_that_skips_the_review_ends_where_the_review_would(seed):
    # Runs ask for values from a few places, some at other sizes than before, keeping
    # some alive while asking for others; a trim's short cut (nothing moved) must leave
    # the arena as the full review would: the same buffers for the same requests.
    rng = np.random.default_rng(seed)
    arenas = Arena(), _AlwaysReviewed()
    # Each arena's buffers, named by order of first sight (weakly: a reference would
    # keep them in use, and the id of one let go may come back for a new one).
    seen_buffers: list[list[weakref.ref]] = [[], []]

    def name(k: int, a: np.ndarray) -> int:
        known = seen_buffers[k]
        for i, ref in enumerate(known):
            if ref() is a.base:
                return i
        known.append(weakref.ref(a.base))
        return len(known) - 1

    for _ in range(60):
        plan = [
            (str(rng.integers(4)), float(rng.choice([1, 1.5, 2, 4])), bool(rng.integers(2)))
            for _ in range(rng.integers(1, 6))
        ]
        got = []
        for k, arena in enumerate(arenas):
            alive, given = [], []
            for place, units, keep in plan:
                a = arena.empty((int(units * MIN_BYTES),), np.uint8, place)
                given.append(name(k, a))
                if keep:
                    alive.append(a)
            del alive, a
            arena.trim()
            held = sorted(name(k, b[:0]) for b in arena.buffers)
            got.append((given, arena.budget, held))
        assert got[0] == got[1]
