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


def test_free_memory_is_held_up_to_what_the_busiest_run_had_in_use():
    arena = Arena()
    one = [arena.empty((k * MIN_BYTES,), np.uint8) for k in (2, 3, 8)]  # a run: 13 in use
    del one
    arena.trim()
    busiest = capacity(2) + capacity(3) + capacity(8)
    assert arena.budget == busiest
    arena.empty((2 * MIN_BYTES,), np.uint8)  # a quieter run: the budget stays
    arena.trim()
    assert arena.budget == busiest
    for k in (2, 3, 8):  # the next run uses all three (one after the other)
        arena.empty((k * MIN_BYTES,), np.uint8)
    four = arena.empty((4 * MIN_BYTES,), np.uint8)  # a miss: 13 + 4 is within the slack
    assert sorted(b.nbytes // MIN_BYTES for b in arena.buffers) == [2, 3, 4, 8]
    del four
    # A bigger miss (no free buffer fits 9): 17 + 9 is over the budget and its slack
    # (13 + 13 / 2), so free buffers go, largest first, until it is not: the 8, no more.
    nine = arena.empty((9 * MIN_BYTES,), np.uint8)
    assert sorted(b.nbytes // MIN_BYTES for b in arena.buffers) == [2, 3, 4, 9]
    del nine
    fresh = Arena()  # before any run has ended, nothing free is held across a miss
    kept = fresh.empty((2 * MIN_BYTES,), np.uint8)
    fresh.empty((3 * MIN_BYTES,), np.uint8)  # freed at once
    fresh.empty((8 * MIN_BYTES,), np.uint8)  # a miss: the free 3 goes
    assert sorted(b.nbytes // MIN_BYTES for b in fresh.buffers) == [2, 8]
    assert kept.base is fresh.buffers[0]


def test_free_buffers_stay_for_later_runs_within_the_budget():
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


def test_a_miss_lets_go_of_free_buffers_of_earlier_runs():
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


@pytest.mark.parametrize("lengths", [(30, 10, 20, 5, 30, 25), (5, 10, 20, 40, 80)])
def test_memory_held_between_runs_follows_the_sequences_now_coming(lengths):
    g = _long_loop()
    prog = rg.compile(g, loss="loss")
    w = {"w": RNG.normal(size=(64, 64)) * 0.1}
    arena = prog.interpreter.empty.__self__._local
    longest = 0
    for T in lengths:
        x = RNG.normal(size=(T, 16, 64))
        r = prog.run({"xs": x}, w)
        np.testing.assert_allclose(r["ys"], _reference(x, w["w"]), rtol=1e-12)
        del r
        longest = max(longest, T)
        made = getattr(arena, "arena", None)  # (none until a value is large enough)
        held = sum(b.nbytes for b in made.buffers) if made is not None else 0
        # A run's large values are six (T, B, 64) arrays at most: what stays held is one
        # such set for the longest sequence seen (in size classes up to 2 ** (1/4)
        # larger) and free buffers of up to half of that, not one set per length.
        assert held <= 1.5 * 2**0.25 * 6 * longest * 16 * 64 * 8, (T, held)


def test_runs_that_alternate_sizes_keep_their_buffers():
    # Batches of varying lengths need buffers of several size classes: the slack held
    # beyond the busiest run keeps them, instead of letting one go at each miss and
    # making it again the run after (fresh memory costs a page fault per 4 KiB).
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
