"""Packed parameter stores: ``tiled`` views, ``pack``, runs and training on packed stores.

A packed store holds every parameter of a dtype in one buffer, the pieces of each
top-level concatenation of parameters adjacent, so that the concatenation is a view
(:func:`rgraph.exec.packing.tiled`). Results must be bit for bit those of an unpacked
store, whatever the caller does to the store between runs.
"""

import functools
import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rgraph as rg
from rgraph.errors import FeedError
from rgraph.exec.interpreter import ParamJoin
from rgraph.exec.packing import pack, param_joins, tiled

VOCAB = 12
LOSS_OUTPUTS = ["loss", "nll", "count"]


def address(a):
    return a.__array_interface__["data"][0]


def bits(a):
    """The exact bits of ``a`` (so -0.0 != 0.0 and NaNs compare), with dtype and shape."""
    a = np.asarray(a)
    return a.dtype.str, a.shape, np.ascontiguousarray(a).tobytes()


def owner(a):
    while a.base is not None:
        a = a.base
    return a


def unpacked(store):
    """Copies of the store's arrays, each owning its memory."""
    return {name: np.array(value, copy=True) for name, value in store.items()}


def assert_same_results(a, b):
    assert a.outputs.keys() == b.outputs.keys() and a.grads.keys() == b.grads.keys()
    for name in a.outputs:
        assert bits(a.outputs[name]) == bits(b.outputs[name]), name
    for name in a.grads:
        assert bits(a.grads[name]) == bits(b.grads[name]), name


def param_join_kernels(program, feeds, binding):
    """The ParamJoin kernels that the run of ``feeds`` went through (white box: the
    interpreter's steps prepared for the dims ``binding``)."""
    steps = program._for(feeds).interpreter._prepared[tuple(sorted(binding.items()))]
    return [s.kernel for s in steps if isinstance(s.kernel, ParamJoin)]


# --- tiled ------------------------------------------------------------------------------


def assert_view_of_concat(pieces, axis, owner_array):
    view = tiled(pieces, axis)
    assert view is not None
    want = np.concatenate(pieces, axis=axis)
    assert view.shape == want.shape and view.dtype == want.dtype
    assert np.array_equal(view, want)
    assert np.shares_memory(view, owner_array)
    assert not view.flags.writeable
    with pytest.raises(ValueError):
        view[(0,) * view.ndim] = -1.0
    return view


def test_tiled_row_blocks_are_a_read_only_view_of_the_buffer():
    w = np.arange(24.0).reshape(6, 4)
    view = assert_view_of_concat([w[:1], w[1:4], w[4:]], 0, w)
    assert address(view) == address(w)
    # A view, not a snapshot: it shows later values of the buffer.
    w[5, 3] = 100.0
    assert view[5, 3] == 100.0
    # Part of the buffer, and a negative axis.
    assert_view_of_concat([w[1:3], w[3:5]], -2, w)


def test_tiled_column_blocks_are_a_view():
    w = np.arange(24.0).reshape(4, 6)
    view = assert_view_of_concat([w[:, :2], w[:, 2:5], w[:, 5:]], 1, w)
    assert view.strides == w.strides
    assert_view_of_concat([w[1:3, 1:2], w[1:3, 2:4]], -1, w)


def test_tiled_along_a_middle_axis_of_a_3d_array():
    a = np.arange(2 * 5 * 3.0).reshape(2, 5, 3)
    view = assert_view_of_concat([a[:, :1], a[:, 1:4], a[:, 4:]], 1, a)
    assert view.shape == (2, 5, 3)


def test_tiled_is_none_when_no_view_equals_the_concatenation():
    w = np.arange(24.0).reshape(6, 4)
    assert tiled([w[2:], w[:2]], 0) is None  # out of order
    assert tiled([w[:2], w[3:]], 0) is None  # a gap
    assert tiled([w[:3], w[2:]], 0) is None  # overlapping
    assert tiled([w[:2], w[2:2], w[2:]], 0) is None  # an empty piece
    assert tiled([w[0:0], w[:2], w[2:]], 0) is None  # (at the start: at the right address)
    assert tiled([w[:, 1:], w[:, :1]], 1) is None  # columns out of order
    assert tiled([w[:2], w[2:]], 1) is None  # consecutive rows, but not along axis 1
    assert tiled([w[:2], w[2:]], 2) is None  # no such axis
    own = np.zeros((2, 3))
    assert own.base is None and tiled([own], 0) is None  # owning its memory: no base


def test_tiled_is_none_for_pieces_of_different_arrays_even_if_adjacent():
    buf = np.arange(8.0)
    # Two arrays with bases of their own that happen to be adjacent in memory.
    x = np.lib.stride_tricks.as_strided(buf, (4,), (8,))
    y = np.lib.stride_tricks.as_strided(buf[4:], (4,), (8,))
    assert address(y) == address(x) + 32 and x.base is not y.base
    assert tiled([x, y], 0) is None
    # Two separate allocations.
    p, q = np.arange(6.0), np.arange(6.0)
    assert tiled([p[:3], q[3:]], 0) is None


def test_tiled_is_none_for_another_dtype_or_other_strides():
    buf = np.zeros(8)
    other_dtype = buf[4:].view(np.int64)  # same itemsize, same base, adjacent
    assert other_dtype.base is buf[:4].base
    assert tiled([buf[:4], other_dtype], 0) is None

    buf = np.arange(12.0)
    p = buf[:6].reshape(2, 3)  # strides (24, 8)
    q = buf[6:].reshape(3, 2).T  # (2, 3) strides (8, 16), right after p in memory
    assert p.base is q.base and address(q) == address(p) + 48 and p.strides != q.strides
    assert tiled([p, q], 0) is None
    # The other dims must agree too.
    w = np.arange(24.0).reshape(4, 6)
    assert tiled([w[:2, :3], w[2:, :]], 0) is None


@st.composite
def split_arrays(draw):
    ndim = draw(st.integers(1, 3))
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=ndim, max_size=ndim)))
    axis = draw(st.integers(0, ndim - 1))
    layout = draw(st.sampled_from(["C", "F", "strided", "reversed"]))
    size = int(np.prod(shape))
    if layout == "C":
        a = np.arange(size, dtype=np.float64).reshape(shape)
    elif layout == "F":
        a = np.arange(size, dtype=np.float64).reshape(shape[::-1]).T
    elif layout == "strided":
        a = np.arange(2 * size, dtype=np.float64).reshape(*shape[:-1], 2 * shape[-1])[..., ::2]
    else:
        a = np.arange(size, dtype=np.float64).reshape(shape)[::-1]
    n = shape[axis]
    cuts = sorted(draw(st.sets(st.integers(1, n - 1), max_size=n - 1))) if n > 1 else []
    bounds = [0, *cuts, n]
    pieces = [a[(slice(None),) * axis + (slice(lo, hi),)] for lo, hi in itertools.pairwise(bounds)]
    order = draw(st.permutations(range(len(pieces))))
    return a, axis, pieces, order


@settings(max_examples=150, deadline=None)
@given(split_arrays())
def test_tiled_property_consecutive_pieces_are_viewed_and_never_a_wrong_view(case):
    a, axis, pieces, order = case
    view = tiled(pieces, axis)
    assert view is not None
    assert np.array_equal(view, np.concatenate(pieces, axis=axis))
    assert np.array_equal(view, a)  # the pieces make up the whole array
    assert np.shares_memory(view, a) and not view.flags.writeable

    permuted = [pieces[i] for i in order]
    got = tiled(permuted, axis)
    if got is not None:  # a view, if any, must be the concatenation in the given order
        assert np.array_equal(got, np.concatenate(permuted, axis=axis))
    if list(order) != sorted(order):
        assert got is None  # distinct blocks out of memory order: no view can be right


# --- pack --------------------------------------------------------------------------------


@functools.cache
def lstm_graph():
    g = rg.Graph("m")
    rg.nn.language_model(g, vocab=VOCAB, kind="lstm", hidden_sizes=[6, 5], letter_size=4)
    return g


@functools.cache
def lstm_program():
    return rg.compile(lstm_graph(), ["loss"], loss="loss")


def lstm_store(seed=0):
    return rg.init_params(lstm_graph(), seed)


def lm_feeds(steps, batch, seed):
    rng = np.random.default_rng(seed)
    mask = np.ones((steps, batch))
    mask[steps // 2 :, 0] = 0.0  # one padded sequence
    return {
        "tokens": rng.integers(0, VOCAB, (steps, batch)).astype(np.int32),
        "targets": rng.integers(0, VOCAB, (steps, batch)).astype(np.int32),
        "mask": mask,
    }


def test_pack_copies_the_values_into_one_buffer_per_dtype():
    program = lstm_program()
    store = lstm_store()
    store["extra_f64"] = np.arange(5.0)
    store["extra_i32"] = np.arange(7, dtype=np.int32).reshape(7, 1)
    store["extra_f32"] = np.float32(2.5) * np.ones((2, 3), np.float32)
    original = {name: bits(v) for name, v in store.items()}
    arrays = dict(store)

    packed = pack(store, program.ir)
    assert program.pack(store).keys() == packed.keys()

    assert list(packed) == list(store)
    for name, value in packed.items():
        assert type(value) is np.ndarray
        assert bits(value) == original[name], name  # same values, dtype and shape
        assert not np.shares_memory(value, store[name]), name  # a copy
    # The given store is not touched.
    assert all(store[n] is arrays[n] for n in store)
    assert {name: bits(v) for name, v in store.items()} == original

    # One buffer per dtype, exactly the size of that dtype's arrays; no two arrays overlap.
    by_dtype = {}
    for name, value in packed.items():
        by_dtype.setdefault(value.dtype, []).append(name)
    assert set(by_dtype) == {np.dtype(np.float64), np.dtype(np.int32), np.dtype(np.float32)}
    for dtype, names in by_dtype.items():
        buffers = {id(owner(packed[n])) for n in names}
        assert len(buffers) == 1, dtype
        buffer = owner(packed[names[0]])
        assert buffer.dtype == dtype and buffer.size == sum(packed[n].size for n in names)
    assert "extra_f64" in by_dtype[np.dtype(np.float64)]
    for a, b in itertools.combinations(packed, 2):
        assert not np.shares_memory(packed[a], packed[b]), (a, b)


def test_pack_makes_every_concatenation_of_parameters_a_view():
    program = lstm_program()
    joins = param_joins(program.ir)
    # The LSTM's stacked gate weights and biases: both layers, x and h weights, biases.
    assert len(joins) == 6
    assert {n for names, _ in joins for n in names} == {
        f"{w}{gate}{part}{layer}"
        for layer in (0, 1)
        for gate in "ifoc"
        for w, part in (("W", "x"), ("W", "h"), ("b", ""))
    }
    store = lstm_store()
    packed = program.pack(store)
    for names, axis in joins:
        view = tiled([packed[n] for n in names], axis)
        assert view is not None, names
        assert np.array_equal(view, np.concatenate([store[n] for n in names], axis=axis))
    # Unpacked, the same pieces make no view.
    names, axis = joins[0]
    assert tiled([store[n] for n in names], axis) is None


def test_pack_reports_a_missing_or_mistyped_param_by_name():
    program = lstm_program()
    store = lstm_store()
    del store["Wih0"]
    with pytest.raises(FeedError, match="Wih0"):
        program.pack(store)

    store = lstm_store()
    store["bd"] = np.zeros(VOCAB + 1)
    with pytest.raises(FeedError, match="bd"):
        program.pack(store)

    store = lstm_store()
    store["Whd"] = store["Whd"].astype(np.float32)
    with pytest.raises(FeedError, match="Whd"):
        program.pack(store)

    # A param the graph does not have may be of any type: it is just copied.
    store = lstm_store()
    store["unused"] = np.zeros((3, 3), np.float32)
    assert bits(program.pack(store)["unused"]) == bits(store["unused"])


# --- runs on packed stores ---------------------------------------------------------------


@functools.cache
def reference_program():
    """Another compilation of the LSTM program, run only on unpacked stores: its
    concatenations of parameters are always fresh copies, whatever it ran before."""
    return rg.compile(lstm_graph(), ["loss"], loss="loss")


def reference(feeds, store, program=None):
    copies = unpacked(store)
    assert all(v.base is None for v in copies.values())
    return (program or reference_program()).run(feeds, copies)


@pytest.mark.parametrize("steps", [3, 7])
def test_runs_on_a_packed_store_are_bit_identical(steps):
    program = lstm_program()
    store = lstm_store(seed=1)
    packed = program.pack(store)
    feeds = lm_feeds(steps, 3, seed=steps)
    binding = {"T": steps, "B": 3}
    want = reference(feeds, store)

    assert_same_results(program.run(feeds, store), want)
    joins = param_join_kernels(program, feeds, binding)
    assert len(joins) == 6 and all(k.last[1] is None for k in joins)  # copies

    fast = program.run(feeds, packed)
    assert all(k.last[1] is not None for k in joins)  # views of the packed buffer
    assert_same_results(fast, want)
    assert set(fast.grads) == set(store)
    assert_same_results(program.run(feeds, packed), want)  # and again (memoised views)


def test_a_packed_store_changed_in_place_runs_with_its_new_values():
    program = lstm_program()
    packed = program.pack(lstm_store(seed=2))
    feeds = lm_feeds(5, 2, seed=3)
    first = program.run(feeds, packed)
    assert_same_results(first, reference(feeds, packed))
    for step in range(2):  # as an optimiser does, between runs
        for w in packed.values():
            w[...] *= 1.5
        packed["bd"][step] += 0.25
        got = program.run(feeds, packed)
        assert_same_results(got, reference(feeds, packed))
        assert not np.array_equal(got.outputs["loss"], first.outputs["loss"])


def test_a_replaced_array_of_a_packed_store_falls_back_to_a_copy():
    program = lstm_program()
    store = lstm_store(seed=4)
    packed = program.pack(store)
    feeds = lm_feeds(4, 2, seed=5)
    assert_same_results(program.run(feeds, packed), reference(feeds, store))

    replaced = dict(packed)
    replaced["Wfx0"] = store["Wfx0"] * 2.0  # a new array, outside the buffer
    replaced["bc1"] = packed["bc1"] + 0.5  # another
    want = reference(feeds, replaced)
    assert_same_results(program.run(feeds, replaced), want)
    assert not np.array_equal(want.outputs["loss"], reference(feeds, store).outputs["loss"])
    # Back to the packed arrays, and to another packed store: each its own values.
    assert_same_results(program.run(feeds, packed), reference(feeds, store))
    other = program.pack(replaced)
    assert_same_results(program.run(feeds, other), want)
    assert_same_results(program.run(feeds, packed), reference(feeds, store))
    assert_same_results(program.run(feeds, replaced), want)


def column_graph():
    """Concatenations along axis 1, and two that share a parameter (only one is packed)."""
    g = rg.Graph("cols")
    x = g.input("x", ("B", 3))
    a, b = g.param("a", (3, 2), init="uniform"), g.param("b", (3, 4), init="uniform")
    c = g.param("c", (2, 6), init="uniform")
    h = g.tanh(x @ g.concat([a, b], axis=1))  # (B, 6)
    k = g.concat([b[0:2], c], axis=1)  # not of params only: b sliced
    m = g.concat([g.concat([a, b], axis=1), c], axis=0)  # (5, 6): a concat and a param
    n = g.concat([b, a], axis=1)  # of params, but a and b are packed for the first
    loss = g.sum(h * h) + g.sum(g.tanh(h @ m.T)) + g.sum(k * k) + g.sum(g.tanh(x @ n))
    g.output(loss, name="loss")
    return g


def test_column_concatenations_on_a_packed_store_are_bit_identical():
    g = column_graph()
    program = rg.compile(g, ["loss"], loss="loss")
    oracle = rg.compile(g, ["loss"], loss="loss")  # run on unpacked stores only
    assert param_joins(program.ir) == [(("a", "b"), 1)]
    store = rg.init_params(g, 3)
    packed = program.pack(store)
    assert not packed["a"].flags.c_contiguous  # columns of one block
    assert tiled([packed["a"], packed["b"]], 1) is not None
    feeds = {"x": np.random.default_rng(0).normal(size=(4, 3))}
    assert_same_results(program.run(feeds, packed), reference(feeds, store, oracle))
    for w in packed.values():
        w[...] *= -0.5
    assert_same_results(program.run(feeds, packed), reference(feeds, packed, oracle))


def concat_output_graph(form):
    g = rg.Graph("out")
    a, b = g.param("a", (2, 3)), g.param("b", (1, 3))
    c = g.concat([a, b], axis=0)
    x = g.input("x", (3,))
    g.output(g.sum(c * x), name="s")  # the concat is also read by the graph
    if form == "unnamed":
        return g, g.output(c).name
    value = {"named": c, "transposed": c.T, "sliced": c[0:2]}[form]
    return g, g.output(value, name="y").name


@pytest.mark.parametrize("into", [False, True])
@pytest.mark.parametrize("form", ["unnamed", "named", "transposed", "sliced"])
@pytest.mark.parametrize("packed", [False, True])
def test_an_output_made_of_a_concatenation_of_params_is_a_copy(form, packed, into):
    g, out = concat_output_graph(form)
    program = rg.compile(g, [out, "s"], loss="s" if into else None)
    store = {"a": np.arange(6.0).reshape(2, 3), "b": np.array([[7.0, 8.0, 9.0]])}
    if packed:
        store = program.pack(store)
    before = {name: v.copy() for name, v in store.items()}
    feeds = {"x": np.ones(3)}
    # (gradients written into the caller's arrays: the other outputs are checked alone)
    grads = {"a": np.empty((2, 3)), "b": np.empty((1, 3))} if into else None

    def output() -> np.ndarray:
        return program.run(feeds, store, grads_into=grads).outputs[out]

    y = output()
    kept = y.copy()
    aliased = np.shares_memory(y, store["a"]) or np.shares_memory(y, store["b"])
    assert not aliased, "the returned output is a view of the parameter store"
    y[...] = -1.0  # the caller's array: writeable, and not the parameters
    assert all(np.array_equal(store[n], before[n]) for n in store)

    y = output()
    assert np.array_equal(y, kept)
    for w in store.values():
        w[...] *= 3.0  # an optimiser step
    assert np.array_equal(y, kept)  # a returned output does not change
    assert np.array_equal(output(), kept * 3.0)


# --- training ----------------------------------------------------------------------------

SENTENCES = [[3, 1, 2, 5], [2, 2], [1, 11, 3, 1, 7], [4, 9, 10, 6]]
BATCHES = [
    rg.train.pad_sequences(SENTENCES[:3]),  # padded
    rg.train.pad_sequences([SENTENCES[0], SENTENCES[3]]),  # no padding: the mask=1 program
    rg.train.pad_sequences(SENTENCES[1:]),
]


def test_trainer_packs_a_dict_store_in_place():
    g = lstm_graph()
    store = lstm_store(seed=5)
    original = {name: bits(v) for name, v in store.items()}
    arrays = dict(store)
    trainer = rg.Trainer(g, rg.RMSProp(lr=0.05), params=store)
    assert trainer.params is store
    assert list(store) == list(original)
    assert all(store[n] is not arrays[n] for n in store)  # replaced by packed copies
    assert {name: bits(v) for name, v in store.items()} == original
    assert len({id(owner(v)) for v in store.values()}) == 1
    assert all(owner(v) is not v for v in store.values())
    for names, axis in param_joins(trainer.program.ir):
        assert tiled([store[n] for n in names], axis) is not None


def test_training_a_packed_store_is_bit_identical_to_an_unpacked_loop():
    g = lstm_graph()
    store = lstm_store(seed=6)
    manual = unpacked(store)
    trainer = rg.Trainer(g, rg.RMSProp(lr=0.05), params=store)

    program = rg.compile(g, LOSS_OUTPUTS, loss="loss", specialize={"mask": 1.0})
    opt = rg.RMSProp(lr=0.05)
    assert all(v.base is None for v in manual.values())  # really unpacked
    for feeds in BATCHES:
        report = trainer.step(feeds)
        r = program.run(feeds, manual)
        opt.step(manual, r.grads)
        assert report.loss == float(r.outputs["loss"])
        assert report.nll == float(r.outputs["nll"])
    assert trainer.params is store
    for name in manual:
        assert bits(store[name]) == bits(manual[name]), name
    start = lstm_store(seed=6)
    assert any(not np.array_equal(store[n], start[n]) for n in store)  # it trained
    assert len({id(owner(v)) for v in store.values()}) == 1  # still the packed arrays
