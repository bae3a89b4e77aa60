"""Outputs written into the caller's arrays (``into``, ``grads_into``, an optimiser's
``gradient_buffers``): the values of a plain run, in the caller's memory, and clear
errors for arrays that cannot take them."""

from __future__ import annotations

import numpy as np
import pytest

import rgraph as rg
from rgraph.errors import FeedError
from rgraph.exec.placement import plan

SENTENCES = [[3, 1, 2, 4], [2, 2], [1, 3, 3, 1, 4]]


def language_model(kind="lstm", dtype="float64"):
    g = rg.Graph("lm")
    rg.nn.language_model(g, vocab=5, kind=kind, hidden_sizes=[6, 5], letter_size=3, dtype=dtype)
    return g


def laid_out(kind="lstm", dtype="float64"):
    """A training program, its packed store, and an optimiser that took one step."""
    g = language_model(kind, dtype)
    program = rg.compile(g, ["loss"], loss="loss")
    params = program.pack(rg.init_params(g, 0))
    opt = rg.RMSProp(lr=0.05)
    batch = rg.train.pad_sequences(SENTENCES, dtype=dtype)
    opt.step(params, program.run(batch, params).grads)
    return program, params, opt, batch


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_gradients_written_into_the_optimisers_buffers_are_those_of_a_plain_run(kind, dtype):
    program, params, opt, batch = laid_out(kind, dtype)
    plain = program.run(batch, params)
    buffers = opt.gradient_buffers()
    assert set(buffers) == set(program.wrt)
    placed = program.run(batch, params, grads_into=buffers)
    for name in program.wrt:
        assert placed.grads[name] is buffers[name]
        assert np.array_equal(placed.grads[name], plain.grads[name]), name
    assert placed.outputs["loss"] == plain.outputs["loss"]
    # The products and sums that make the gradients write them there: only the
    # embedding's scatter (which cannot write in place) is copied.
    interp = program.interpreter
    binding = {"T": batch["tokens"].shape[0], "B": batch["tokens"].shape[1]}
    into = {f"{w}.grad": buffers[w] for w in program.wrt}
    placement = plan(program.ir, binding, into, interp.slot, interp._writes_in_place)
    copied = {name for name in into if interp.slot[name] in {s for s, _ in placement.copies}}
    assert copied == {"Wil.grad"}
    assert len(placement.roots) >= 4
    if kind == "lstm":  # the stacked gates' gradients: their splits cut nothing
        assert len(placement.pieces) >= 4


def test_the_pieces_of_a_split_written_in_place_are_the_callers_arrays():
    g = rg.Graph("pieces")
    x = g.input("x", (6, 2))
    a, b, c = g.split(g.tanh(x), axis=0, sizes=[2, 3, 1])
    for value, name in ((a, "a"), (b, "b"), (c, "c")):
        g.output(value, name=name)
    interp = rg.compile(g).interpreter
    buf = np.zeros(14)
    into = {"a": buf[1:5].reshape(2, 2), "b": buf[5:11].reshape(3, 2), "c": buf[11:13]}
    into["c"] = into["c"].reshape(1, 2)
    feeds = {"x": np.random.default_rng(2).normal(size=(6, 2))}
    placement = plan(interp.graph, {}, into, interp.slot, interp._writes_in_place)
    ((_, given),) = placement.pieces.items()  # the split cuts nothing: its pieces are these
    assert [id(arr) for arr in given] == [id(into[name]) for name in "abc"]
    out = interp.run(feeds, into=into)
    want = np.tanh(feeds["x"])
    assert out["a"] is into["a"] and out["b"] is into["b"] and out["c"] is into["c"]
    np.testing.assert_array_equal(buf[1:13], want.reshape(-1))
    assert buf[0] == 0 and buf[13] == 0


def test_arrays_whose_memory_does_not_follow_the_pieces_are_copied_into():
    program, params, _, batch = laid_out()
    plain = program.run(batch, params).grads
    # Each gradient in its own array, in reverse order of the store: no split's pieces
    # are consecutive, so what a split makes is copied in; the rest is made in place.
    into = {w: np.empty_like(params[w]) for w in reversed(program.wrt)}
    result = program.run(batch, params, grads_into=into)
    for name in program.wrt:
        assert result.grads[name] is into[name]
        assert np.array_equal(into[name], plain[name]), name
    # A second run into the same arrays gives the same values again.
    again = program.run(batch, params, grads_into=into)
    for name in program.wrt:
        assert np.array_equal(again.grads[name], plain[name]), name


def test_some_outputs_into_arrays_and_the_others_as_usual():
    program, params, _, batch = laid_out()
    plain = program.run(batch, params).grads
    into = {"Whd": np.empty_like(params["Whd"])}
    result = program.run(batch, params, grads_into=into)
    assert result.grads["Whd"] is into["Whd"]
    for name in program.wrt:
        assert np.array_equal(result.grads[name], plain[name]), name


def linear():
    g = rg.Graph("linear")
    x = g.input("x", (2, 3))
    W, V = g.param("W", (3, 4)), g.param("V", (3, 4))
    g.output(g.sum((x @ W) * (x @ V)), name="loss")
    program = rg.compile(g, ["loss"], loss="loss")
    return program, {"W": np.ones((3, 4)), "V": np.full((3, 4), 2.0)}


def test_linear_gradients_into_arrays_of_one_buffer():
    program, params = linear()
    buf = np.zeros(40)
    x = buf[:6].reshape(2, 3)
    x[...] = np.arange(6.0).reshape(2, 3)
    into = {"W": buf[10:22].reshape(3, 4), "V": buf[22:34].reshape(3, 4)}  # (apart from x)
    plain = program.run({"x": x}, params).grads
    result = program.run({"x": x}, params, grads_into=into)
    assert result.grads["W"] is into["W"] and result.grads["V"] is into["V"]
    assert np.array_equal(into["W"], plain["W"]) and np.array_equal(into["V"], plain["V"])
    assert np.array_equal(buf[:6].reshape(2, 3), np.arange(6.0).reshape(2, 3))
    assert not buf[6:10].any() and not buf[34:].any()  # nothing written beside them


@pytest.mark.parametrize(
    ("into", "match"),
    [
        ({"U": np.zeros((3, 4))}, r"grads_into names \['U'\], which are not parameters"),
        (
            {"W": np.zeros((4, 3))},
            r"output 'W.grad' \(f64\[3,4\]\) must be a writeable C-contiguous float64 array"
            r" of shape \(3, 4\)",
        ),
        ({"W": np.zeros((3, 4), np.float32)}, r"got a float32 array of shape \(3, 4\)"),
        ({"W": np.zeros((4, 3)).T}, r"got a non-contiguous float64 array"),
        ({"W": [[0.0] * 4] * 3}, r"got a list"),
    ],
)
def test_arrays_that_do_not_fit_their_gradients(into, match):
    program, params = linear()
    with pytest.raises(FeedError, match=match):
        program.run({"x": np.ones((2, 3))}, params, grads_into=into)


def test_read_only_and_overlapping_arrays():
    program, params = linear()
    feeds = {"x": np.ones((2, 3))}
    ro = np.zeros((3, 4))
    ro.flags.writeable = False
    with pytest.raises(FeedError, match=r"got a read-only float64 array"):
        program.run(feeds, params, grads_into={"W": ro})
    buf = np.zeros(20)
    both = {"W": buf[:12].reshape(3, 4), "V": buf[8:20].reshape(3, 4)}
    with pytest.raises(FeedError, match=r"outputs 'W.grad' and 'V.grad' share memory"):
        program.run(feeds, params, grads_into=both)


def test_arrays_that_share_memory_with_what_the_run_reads():
    program, params = linear()
    buf = np.zeros(30)
    x = buf[:6].reshape(2, 3)
    with pytest.raises(FeedError, match=r"output 'W.grad' shares memory with input 'x'"):
        program.run({"x": x}, params, grads_into={"W": buf[:12].reshape(3, 4)})
    with pytest.raises(FeedError, match=r"output 'V.grad' shares memory with parameter 'W'"):
        program.run({"x": np.ones((2, 3))}, params, grads_into={"V": params["W"]})
    # The parameters are checked again when the store gives other arrays.
    fine = {"V": np.zeros((3, 4))}
    program.run({"x": np.ones((2, 3))}, params, grads_into=fine)
    with pytest.raises(FeedError, match=r"shares memory with parameter 'V'"):
        program.run({"x": np.ones((2, 3))}, {**params, "V": fine["V"]}, grads_into=fine)
    assert np.array_equal(params["W"], np.ones((3, 4)))  # (untouched)


# --- the optimiser's side ------------------------------------------------------------


def grads_at(step, shapes, dtype=np.float64):
    rng = np.random.default_rng(100 + step)
    out = {}
    for name, shape in shapes.items():
        g = rng.normal(0.0, 3.0, shape)
        g.flat[0] = 9.0 + step  # beyond a clip value of 5
        out[name] = g.astype(dtype)
    return out


SHAPES = {"W": (3, 4), "b": (4,), "E": (5, 2)}


@pytest.mark.parametrize(
    "make",
    [
        lambda: rg.RMSProp(lr=0.01, clipval=5.0),
        lambda: rg.RMSProp(lr=0.01, clip_norm=2.0),
        lambda: rg.SGD(lr=0.1, momentum=0.9),
        lambda: rg.Adam(lr=0.01),
    ],
)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_step_on_its_own_buffers_is_the_step_on_the_same_gradients(make, dtype):
    rng = np.random.default_rng(5)
    start = {k: rng.normal(size=s).astype(dtype) for k, s in SHAPES.items()}
    ours, theirs = make(), make()
    pa = {k: v.copy() for k, v in start.items()}
    pb = {k: v.copy() for k, v in start.items()}
    assert ours.gradient_buffers() is None  # nothing laid out yet
    ours.step(pa, grads_at(0, SHAPES, dtype))
    theirs.step(pb, grads_at(0, SHAPES, dtype))
    buffers = ours.gradient_buffers()
    for step in range(1, 6):
        grads = grads_at(step, SHAPES, dtype)
        into = ours.gradient_buffers()
        assert all(into[k] is buffers[k] for k in SHAPES)  # the same arrays, step after step
        for k in SHAPES:
            into[k][...] = grads[k]
        a, b = ours.step(pa, into), theirs.step(pb, grads)
        assert (a.step, a.ratio_clipped, a.grad_norm) == (b.step, b.ratio_clipped, b.grad_norm)
        for k in SHAPES:
            assert np.array_equal(pa[k], pb[k]), (step, k)
    for slot, table in theirs.slots.items():
        for k in SHAPES:
            assert np.array_equal(ours.slots[slot][k], table[k])


def test_stats_held_across_a_run_into_the_buffers_keep_their_step():
    opt, params = rg.RMSProp(clipval=5.0), {k: np.zeros(s) for k, s in SHAPES.items()}
    opt.step(params, grads_at(0, SHAPES))
    held = []
    for step in range(1, 5):
        into = opt.gradient_buffers()  # (measures what held stats need, before writing)
        for k, g in grads_at(step, SHAPES).items():
            into[k][...] = g
        held.append(opt.step(params, into))
    for step, stats in enumerate(held, start=1):
        grads = grads_at(step, SHAPES)
        assert stats.grad_norm == rg.global_norm(grads)
        beyond = sum(int(np.count_nonzero(np.abs(g) > 5.0)) for g in grads.values())
        assert stats.ratio_clipped == beyond / 26 > 0


class PlainOptimizer:
    """An optimiser that offers no buffers: the trainer then copies as before."""

    def __init__(self, inner):
        self.inner = inner

    def step(self, params, grads):
        return self.inner.step(params, grads)


def test_a_trainer_writing_into_the_buffers_trains_as_one_that_copies(monkeypatch):
    batches = [
        rg.train.pad_sequences(b)
        for b in (SENTENCES, SENTENCES[:2], [[1, 2, 3]], SENTENCES, [[4, 4], [1, 2]], SENTENCES)
    ]
    ours = rg.Trainer(language_model(), rg.RMSProp(lr=0.05), seed=3)
    theirs = rg.Trainer(language_model(), PlainOptimizer(rg.RMSProp(lr=0.05)), seed=3)
    gathers = []
    gather = rg.exec.optim._Group.gather
    monkeypatch.setattr(
        rg.exec.optim._Group, "gather", lambda self, gs: gathers.append(1) or gather(self, gs)
    )
    for batch in batches:
        a, b = ours.step(batch), theirs.step(batch)
        assert (a.loss, a.nll, a.grad_norm, a.ratio_clipped) == (
            b.loss,
            b.nll,
            b.grad_norm,
            b.ratio_clipped,
        )
    for k in ours.params:
        assert np.array_equal(ours.params[k], theirs.params[k]), k
    # The copying trainer gathers at every step; ours only at the first (no layout yet).
    assert len(gathers) == 1 + len(batches)


def test_many_sets_of_arrays_in_turn_each_get_the_values():
    # An interpreter keeps the plans of a few sets of arrays per binding; a new set makes
    # the oldest go, and runs into the new arrays must write there (not where it wrote).
    program, params, _, batch = laid_out()
    plain = program.run(batch, params).grads
    for _ in range(7):
        flat = np.full(sum(params[w].size for w in program.wrt), np.nan)
        into, at = {}, 0
        for w in sorted(program.wrt, key=lambda w: params[w].__array_interface__["data"][0]):
            into[w] = flat[at : at + params[w].size].reshape(params[w].shape)
            at += params[w].size
        result = program.run(batch, params, grads_into=into)
        for name in program.wrt:
            assert result.grads[name] is into[name]
            assert np.array_equal(into[name], plain[name]), name
