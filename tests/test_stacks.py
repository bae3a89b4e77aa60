"""A scan's small stacked outputs are kept from run to run with their rows, never while
anything made from them is alive."""

from __future__ import annotations

import threading
import weakref

import numpy as np
import pytest

import rgraph as rg
from rgraph.exec.stacks import Stacks

RNG = np.random.default_rng(11)
F64 = np.dtype(np.float64)


def _rnn(reverse: bool = False) -> rg.Graph:
    """h' = tanh(x_t + h W), returning the final h (a row of hs) and hs."""
    g = rg.Graph("rnn")
    xs = g.input("xs", ("T", "B", 3))
    h0 = g.input("h0", ("B", 3))
    W = g.param("W", (3, 3), init="uniform", low=-1.0, high=1.0)
    (hT,), (hs,) = g.scan(
        lambda b, c, x: ([h := b.tanh(x[0] + c[0] @ W)], [h]), init=[h0], xs=[xs], reverse=reverse
    )
    g.output(hT, name="hT")
    g.output(hs, name="hs")
    return g


def _numpy(xs, h0, W, reverse=False):
    h, hs = h0, np.zeros_like(xs)
    for t in range(len(xs) - 1, -1, -1) if reverse else range(len(xs)):
        h = hs[t] = np.tanh(xs[t] + h @ W)
    return h, hs


def _feeds(T: int, B: int = 2) -> dict[str, np.ndarray]:
    return {"xs": RNG.normal(size=(T, B, 3)), "h0": RNG.normal(size=(B, 3))}


@pytest.mark.parametrize("keep", [("hT", "hs"), ("hT",)])
@pytest.mark.parametrize("reverse", [False, True])
def test_outputs_kept_by_the_caller_are_not_overwritten_by_later_runs(reverse, keep):
    prog = rg.compile(_rnn(reverse))
    params = rg.init_params(_rnn(), seed=1)
    kept = []
    for T in (5, 3, 5, 7, 2, 7):
        feeds = _feeds(T)
        out = prog.run(feeds, params).outputs
        want = dict(zip(("hT", "hs"), _numpy(feeds["xs"], feeds["h0"], params["W"], reverse)))
        kept.append(({k: out[k] for k in keep}, want))
        del out
        for got, w in kept:  # (the final carry is a row of hs: kept apart alone too)
            for k in keep:
                np.testing.assert_allclose(got[k], w[k], rtol=1e-12, atol=0)


@pytest.mark.parametrize("reverse", [False, True])
def test_runs_of_any_length_reuse_the_rows_and_match_numpy(reverse):
    prog = rg.compile(_rnn(reverse))
    params = rg.init_params(_rnn(), seed=2)
    for T in (6, 2, 6, 5, 1, 9, 4):
        feeds = _feeds(T)
        out = prog.run(feeds, params).outputs
        hT, hs = _numpy(feeds["xs"], feeds["h0"], params["W"], reverse)
        np.testing.assert_allclose(out["hT"], hT, rtol=1e-12, atol=0)
        np.testing.assert_allclose(out["hs"], hs, rtol=1e-12, atol=0)
        del out  # (nothing kept: the next run may reuse the stack)


def test_free_arrays_are_handed_out_again_with_the_same_rows():
    stacks = Stacks(reverse=True)
    kinds = [((2,), F64), ((), F64)]
    sources = [(0, None), (0, (slice(None), slice(1, 2)))]
    (y, s), (rows, pieces) = stacks.take(kinds, 4, sources)
    assert y.shape == (4, 2) and s.shape == (4,)
    # Reverse: the rows come last step first.
    assert [np.shares_memory(r, y[t]) for r, t in zip(rows, (3, 2, 1, 0))] == [True] * 4
    assert all(p.shape == (1,) and np.shares_memory(p, y[t, 1:]) for p, t in zip(pieces, (3, 2)))
    base = weakref.ref(y.base)  # (a reference would keep it in use)
    del y, s
    (y, _s), (again, _) = stacks.take(kinds, 3, sources)  # shorter: the last three rows
    assert y.base is base() and again is rows  # (whose steps, backward, the list begins)
    assert [np.shares_memory(r, y[t]) for r, t in zip(again, (2, 1, 0))] == [True] * 3
    (other, _), _ = stacks.take(kinds, 3, sources)  # y and _s are alive: new arrays
    assert not np.shares_memory(other, y)
    assert stacks.take([((MIN_ROW,), F64)], 2, [(0, None)]) is None  # not small


def test_equal_kinds_and_sources_are_the_objects_first_given():
    stacks = Stacks(reverse=False)
    kinds, sources = [((2,), F64)], [(0, None), (0, (slice(None), slice(0, 1)))]
    assert stacks.shared(kinds, sources) == (kinds, sources)
    equal = ([((2,), np.dtype("float64"))], [(0, None), (0, (slice(None), slice(0, 1)))])
    got = stacks.shared(*equal)
    assert got[0] is kinds and got[1] is sources
    other = stacks.shared([((3,), F64)], sources)
    assert other[0] is not kinds and other[0] == [((3,), F64)]


def test_the_kernels_of_every_length_take_with_the_same_kinds_and_sources(monkeypatch):
    seen = set()
    take = Stacks.take

    def spy(self, kinds, steps, sources):
        seen.add((id(kinds), id(sources)))
        return take(self, kinds, steps, sources)

    monkeypatch.setattr(Stacks, "take", spy)
    prog = rg.compile(_rnn())
    params = rg.init_params(_rnn(), seed=3)
    for T in (4, 2, 6):  # (a kernel per length: lists of its own, equal to the others')
        prog.run(_feeds(T), params)
    assert len(seen) == 1


MIN_ROW = 1 << 14  # float64 elements: two rows of them are more than an arena's minimum


def test_threads_running_one_program_at_once_get_their_own_stacks():
    prog = rg.compile(_rnn())
    params = rg.init_params(_rnn(), seed=3)
    inputs = [_feeds(T) for T in (8, 6)]
    wrong: list[int] = []

    def work(k: int) -> None:
        feeds = inputs[k]
        want = _numpy(feeds["xs"], feeds["h0"], params["W"])[1]
        for _ in range(200):
            if not np.array_equal(prog.run(feeds, params).outputs["hs"], want):
                wrong.append(k)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
