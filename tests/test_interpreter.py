"""The numpy interpreter: feed checking, error reporting, freeing, dtype discipline.

Bad feeds fail before anything runs, with a FeedError naming the input and what was
expected; a failing kernel becomes an ExecutionError naming the node, its op, its inputs'
shapes and the user's line; intermediate values are released after their last use; a
float32 graph computes in float32 throughout.
"""

from __future__ import annotations

import sys
import weakref
from pathlib import Path

import numpy as np
import pytest

import rgraph as rg
from rgraph.errors import ExecutionError, FeedError
from rgraph.ir import REGISTRY, dims
from rgraph.ir.op import undispatched

THIS_FILE = Path(__file__).name


def here() -> int:
    """The line number of the line that calls ``here()``."""
    return sys._getframe(1).f_lineno


def feeds_graph() -> rg.Program:
    g = rg.Graph("feeds")
    x = g.input("x", ("T", 2))
    y = g.input("y", ("T", "D"))
    W = g.param("W", (2, 3))
    g.output(x @ W, name="xw")
    g.output(y * 2.0, name="y2")
    return rg.compile(g)


GOOD = {"x": np.zeros((4, 2)), "y": np.ones((4, 5))}
PARAMS = {"W": np.ones((2, 3))}


def test_good_feeds_run():
    out = feeds_graph().run(GOOD, PARAMS).outputs
    assert out["xw"].shape == (4, 3) and out["y2"].shape == (4, 5)
    np.testing.assert_array_equal(out["y2"], 2 * np.ones((4, 5)))


def test_missing_feed_names_the_input():
    with pytest.raises(FeedError, match=r"missing feed for input 'y'") as info:
        feeds_graph().run({"x": GOOD["x"]}, PARAMS)
    assert "y: f64[T,D]" in str(info.value)  # and says what it should be


def test_wrong_dtype_names_both_dtypes():
    bad = {**GOOD, "x": GOOD["x"].astype(np.float32)}
    with pytest.raises(FeedError) as info:
        feeds_graph().run(bad, PARAMS)
    msg = str(info.value)
    assert "'x'" in msg and "float64" in msg and "float32" in msg


def test_wrong_shape_names_both_shapes():
    bad = {**GOOD, "x": np.zeros((4, 3))}
    with pytest.raises(FeedError) as info:
        feeds_graph().run(bad, PARAMS)
    msg = str(info.value)
    assert "'x'" in msg and "f64[T,2]" in msg and "(4, 3)" in msg
    with pytest.raises(FeedError, match=r"'x' must have rank 2"):
        feeds_graph().run({**GOOD, "x": np.zeros(4)}, PARAMS)


def test_inconsistent_symbolic_dim_names_the_dim_and_both_feeds():
    bad = {"x": np.zeros((4, 2)), "y": np.zeros((6, 5))}
    with pytest.raises(FeedError) as info:
        feeds_graph().run(bad, PARAMS)
    msg = str(info.value)
    assert "'T'" in msg and "T=4 from input 'x' axis 0" in msg
    assert "'y'" in msg and "size 6" in msg


def test_product_dims_are_checked_against_their_factors():
    g = rg.Graph("product")
    x = g.input("x", ("T", "B", 2))
    flat = g.input("flat", ("B*T", 2))
    g.output(g.reshape(x, shape=["T*B", 2]) + flat, name="y")
    prog = rg.compile(g)
    out = prog.run({"x": np.ones((3, 2, 2)), "flat": np.ones((6, 2))}).outputs["y"]
    assert out.shape == (6, 2)
    with pytest.raises(FeedError, match=r"'flat' axis 0 has size 5, but dim 'B\*T' is 6"):
        prog.run({"x": np.ones((3, 2, 2)), "flat": np.ones((5, 2))})


def test_unknown_feed_name_is_refused():
    with pytest.raises(FeedError, match=r"\['z'\] are not inputs of graph 'feeds'"):
        feeds_graph().run({**GOOD, "z": np.zeros(1)}, PARAMS)


def test_missing_and_malformed_params():
    with pytest.raises(FeedError, match=r"no 'W' \(f64\[2,3\]\)"):
        feeds_graph().run(GOOD, {})
    with pytest.raises(FeedError, match=r"param 'W' must be float64, got float32"):
        feeds_graph().run(GOOD, {"W": np.ones((2, 3), np.float32)})
    with pytest.raises(FeedError, match=r"param 'W' must have shape f64\[2,3\], got \(3, 2\)"):
        feeds_graph().run(GOOD, {"W": np.ones((3, 2))})


def test_python_lists_are_converted_but_arrays_are_not_cast():
    prog = feeds_graph()
    out = prog.run({"x": [[1, 2]], "y": [[1.0]]}, PARAMS).outputs
    np.testing.assert_array_equal(out["xw"], [[3.0, 3.0, 3.0]])
    with pytest.raises(FeedError, match="int64"):
        prog.run({"x": np.array([[1, 2]]), "y": [[1.0]]}, PARAMS)


def test_kernel_failure_names_node_op_shapes_and_line():
    g = rg.Graph("lookup")
    E = g.param("E", (5, 3))
    ids = g.input("ids", ("T",), "int64")
    line = here() + 1
    emb = g.row_pluck(E, ids)
    g.output(g.tanh(emb), name="out")
    prog = rg.compile(g)
    with pytest.raises(ExecutionError) as info:
        prog.run({"ids": np.array([1, 7, 2])}, {"E": np.zeros((5, 3))})
    msg = str(info.value)
    assert f"node '{emb.name} = row_pluck(E, ids)'" in msg
    assert f"{THIS_FILE}:{line}" in msg
    assert "E: float64[5, 3]" in msg and "ids: int64[3]" in msg
    assert "IndexError" in msg and "index 7" in msg
    assert isinstance(info.value.__cause__, IndexError)


# --- memory: values are freed after their last use ---------------------------------------


def chain_graph(*, keep_a: bool = False) -> rg.Graph:
    g = rg.Graph("free")
    x = g.input("x", (1000,))
    a = g.op("tanh", x, _name="a")
    b = g.op("exp", a, _name="b")
    c = g.op("neg", b, _name="c")
    if keep_a:
        g.output(a)
    g.output(c)
    return g


def test_plan_frees_each_value_after_its_last_use():
    interp = rg.Interpreter(chain_graph().ir)
    frees = interp._plan_frees()
    slot = interp.slot
    steps = [n.outputs[0].name for n in interp.graph.nodes]
    assert steps == ["a", "b", "c"]
    assert slot["x"] in frees[0]  # x dies after tanh
    assert slot["a"] in frees[1]  # a dies after exp
    assert slot["b"] in frees[2]
    assert all(slot["c"] not in f for f in frees)  # outputs are kept
    kept = rg.Interpreter(chain_graph(keep_a=True).ir)
    assert all(kept.slot["a"] not in f for f in kept._plan_frees())


@pytest.mark.parametrize("keep_a", [False, True])
def test_an_intermediate_array_is_released_after_its_last_use(monkeypatch, keep_a):
    refs: dict[str, weakref.ref] = {}
    alive_when_neg_ran: list[bool] = []
    tanh_cls, neg_cls = type(REGISTRY["tanh"]), type(REGISTRY["neg"])
    real_tanh, real_neg = tanh_cls.fn, neg_cls.fn

    def tanh(x):
        out = real_tanh(x)
        refs["a"] = weakref.ref(out)
        return out

    def neg(x):
        alive_when_neg_ran.append(refs["a"]() is not None)
        return real_neg(x)

    monkeypatch.setattr(tanh_cls, "fn", staticmethod(tanh))
    monkeypatch.setattr(neg_cls, "fn", staticmethod(neg))
    interp = rg.Interpreter(chain_graph(keep_a=keep_a).ir)
    xv = np.linspace(-1, 1, 1000)
    out = interp.run({"x": xv})
    np.testing.assert_allclose(out["c"], -np.exp(np.tanh(xv)), rtol=1e-15)
    # ``a`` is an intermediate: gone before neg runs. Kept as an output: still alive.
    assert alive_when_neg_ran == [keep_a]


# --- dtype discipline --------------------------------------------------------------------


def float32_graph() -> rg.Graph:
    g = rg.Graph("f32")
    x = g.input("x", ("B", 3), "float32")
    t = g.input("t", ("B",), "int32")
    m = g.input("m", ("B",), "float32")
    ids = g.input("ids", ("B",), "int64")
    E = g.param("E", (5, 3), "float32", init="uniform")
    W = g.param("W", (3, 4), "float32", init="uniform", low=-0.5, high=0.5)
    b = g.param("b", (4,), "float32")
    h = g.sigmoid(x @ W + b) * 2.0 - 1.0 + g.relu(g.row_pluck(E, ids) @ W) / 3.0
    h2 = g.log_softmax(h) + g.softmax(h) + g.exp(h * 0.1) + g.log(g.sigmoid(h))
    p1, p2 = g.split(g.concat([h2, -h2], axis=1), axis=1, sizes=[4, 4])
    hm = g.mean(p1, axes=[0], keepdims=True) + p2 + g.sum(h, axes=[1], keepdims=True)
    loss = g.softmax_cross_entropy(hm, t, mask=m) + g.mean(hm.tanh()) + g.mean(hm.T[0:2])
    g.output(h2, name="h2")
    g.output(loss, name="loss")
    return g


def float32_feeds(B: int = 6) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {
        "x": rng.normal(size=(B, 3)).astype(np.float32),
        "t": (np.arange(B) % 4).astype(np.int32),
        "m": np.array([1, 1, 0, 1, 1, 1][:B], np.float32),
        "ids": np.arange(B) % 5,
    }


def test_a_float32_graph_runs_in_float32_end_to_end():
    g = float32_graph()
    prog = rg.compile(g, loss="loss")
    params = rg.init_params(g, 0)
    assert {p.dtype for p in params.values()} == {np.dtype(np.float32)}
    res = prog.run(float32_feeds(), params)
    assert res.outputs["loss"].dtype == np.float32
    assert res.outputs["h2"].dtype == np.float32
    assert set(res.grads) == {"E", "W", "b"}
    for name, grad in res.grads.items():
        assert grad.dtype == np.float32, name
        assert grad.shape == params[name].shape
        assert np.all(np.isfinite(grad)) and np.any(grad != 0), name


def test_every_intermediate_of_a_float32_program_has_its_declared_type():
    g = float32_graph()
    prog = rg.compile(g, loss="loss")
    feeds, params = float32_feeds(), rg.init_params(g, 0)
    types = prog.ir.types()
    everything = prog.ir.replace(outputs=tuple(types))
    values = rg.Interpreter(everything).run(feeds, params)
    binding = {"B": 6}
    for name, value in values.items():
        want = types[name]
        shape = tuple(dims.evaluate(d, binding) if isinstance(d, str) else d for d in want.shape)
        assert (value.dtype.name, value.shape) == (want.dtype, shape), name


# --- loop bodies: compiled with their loop, values written into reused buffers ----------


def _numpy_loop(xs, reverse=False):
    """The loop of the test below, step by step in numpy."""
    a, c, e = np.full((2, 3), 0.1), np.full((2, 3), 0.2), np.full((2, 3), 0.3)
    ys = np.empty_like(xs)
    for t in reversed(range(len(xs))) if reverse else range(len(xs)):
        z = np.tanh(np.concatenate([xs[t], c], axis=-1) * 1.5)
        new_a = z[..., :3]  # a view of z
        new_c = new_a * 0.5 + a * 0.25  # reads the old a after z is made
        new_e = new_c + c  # reads the old c after the new one is made
        ys[t] = new_e * 2.0
        a, c, e = new_a, new_c, new_e
    return a, c, e, ys


@pytest.mark.parametrize("reverse", [False, True])
def test_loop_buffers_never_hold_a_value_that_lives_into_the_next_step(reverse):
    g = rg.Graph("views")
    xs = g.input("xs", ("T", 2, 3))

    def step(b, carry, x):
        a, c, _ = carry
        z = b.tanh(b.concat([x[0], c], axis=-1) * 1.5)
        new_a, _ = b.split(z, axis=-1, sizes=[3, 3])
        new_c = new_a * 0.5 + a * 0.25
        new_e = new_c + c
        return [new_a, new_c, new_e], [new_e * 2.0]

    init = [g.full(shape=[2, 3], value=v) for v in (0.1, 0.2, 0.3)]
    (a, c, e), ys = g.scan(step, init=init, xs=[xs], reverse=reverse)
    for value, name in ((a, "a"), (c, "c"), (e, "e"), (ys[0], "ys")):
        g.output(value, name=name)
    feeds = {"xs": np.random.default_rng(0).normal(size=(6, 2, 3))}
    got = rg.compile(g).run(feeds).outputs
    want = _numpy_loop(feeds["xs"], reverse)
    for name, w in zip(("a", "c", "e", "ys"), want):
        np.testing.assert_allclose(got[name], w, rtol=1e-15, atol=0)
    # The same graph in debug mode takes the step-by-step path: the same values.
    debug = rg.compile(g, check_finite=True).run(feeds).outputs
    for name in ("a", "c", "e", "ys"):
        np.testing.assert_array_equal(debug[name], got[name])


def test_loop_plan_writes_outputs_in_place_and_keeps_carries_fresh():
    from rgraph.exec.interpreter import _out_plan

    g = rg.Graph("plan")
    xs = g.input("xs", ("T", 4))

    def step(b, carry, x):
        z = b.tanh(carry[0] + x[0])  # -> reshape (a view) -> the carry
        return [b.reshape(z, shape=[4])], [z * 2.0]

    g.scan(step, init=[g.full(shape=[4])], xs=[xs])
    body = next(n for n in g.ir.nodes if n.op == "scan").bodies["body"]
    plan = _out_plan(body, num_carry=1)
    ops = {body.nodes[i].op: j for i, j in plan.items()}
    assert "tanh" not in ops  # the carry is a view of it
    assert "add" in ops and ops["add"] is None  # a buffer of its own
    assert ops["eltmul"] == 0  # written straight into ys[0][t]


def test_loop_plan_writes_a_carry_that_is_also_a_y_straight_into_ys():
    from rgraph.exec.interpreter import _out_plan

    g = rg.Graph("carry_y")
    xs = g.input("xs", ("T", 4))

    def step(b, carry, x):
        h = b.tanh(carry[0] * 0.5 + x[0])
        return [h], [h]

    (last,), (hs,) = g.scan(step, init=[g.full(shape=[4], value=0.25)], xs=[xs])
    g.output(last, name="last")
    g.output(hs, name="hs")
    prog = rg.compile(g)
    body = next(n for n in prog.ir.nodes if n.op == "scan").bodies["body"]
    ops = {body.nodes[i].op: j for i, j in _out_plan(body, num_carry=1).items()}
    assert ops["tanh"] == 0  # the carry, written once into ys[0][t]
    assert ops["add"] is None  # lives within the step: a reused buffer
    x = np.random.default_rng(3).normal(size=(5, 4))
    out = prog.run({"xs": x}).outputs
    h, want = np.full(4, 0.25), []
    for row in x:
        h = np.tanh(h * 0.5 + row)
        want.append(h)
    np.testing.assert_array_equal(out["hs"], np.stack(want))
    np.testing.assert_array_equal(out["last"], want[-1])


def _carried_gradients(reverse):
    """A loop like a backward one: carries made once a step, after every read of the old
    ones, and one (``late``) made before the old one's last read."""
    g = rg.Graph("carried")
    xs = g.input("xs", ("T", 2, 3))

    def step(b, carry, x):
        dh, dc, late = carry
        s = dh + x[0]
        new_dc = (dc + s) * 0.5  # after the last read of dc
        new_late = s * 3.0  # before the old late's last read, below
        new_dh = b.tanh(new_dc + new_late) * late  # after the last read of dh
        return [new_dh, new_dc, new_late], [s]

    init = [g.full(shape=[2, 3], value=v) for v in (0.1, 0.2, 0.3)]
    (dh, dc, late), (ss,) = g.scan(step, init=init, xs=[xs], reverse=reverse)
    for value, name in ((dh, "dh"), (dc, "dc"), (late, "late"), (ss, "s")):
        g.output(value, name=name)
    return g


def _numpy_carried(xs, reverse):
    dh, dc, late = np.full((2, 3), 0.1), np.full((2, 3), 0.2), np.full((2, 3), 0.3)
    ss = np.empty_like(xs)
    for t in reversed(range(len(xs))) if reverse else range(len(xs)):
        s = dh + xs[t]
        dc = (dc + s) * 0.5
        dh, late = np.tanh(dc + s * 3.0) * late, s * 3.0
        ss[t] = s
    return {"dh": dh, "dc": dc, "late": late, "s": ss}


@pytest.mark.parametrize("reverse", [False, True])
def test_carries_made_after_their_last_read_keep_one_buffer(reverse):
    from rgraph.exec.interpreter import _out_plan

    g = _carried_gradients(reverse)
    prog = rg.compile(g)
    body = next(n for n in prog.ir.nodes if n.op == "scan").bodies["body"]
    plan = _out_plan(body, num_carry=3)
    made = {name: i for i, n in enumerate(body.nodes) for name in (o.name for o in n.outputs)}
    dh, dc, late = body.outputs[:3]
    assert plan.get(made[dh], 0) is None and plan.get(made[dc], 0) is None  # a buffer each
    assert made[late] not in plan  # its old value is read after it is made: new arrays
    rng = np.random.default_rng(5)
    first_x = rng.normal(size=(6, 2, 3))
    first = prog.run({"xs": first_x}).outputs
    kept = {name: arr.copy() for name, arr in first.items()}
    for xs in (first_x, rng.normal(size=(4, 2, 3)), rng.normal(size=(1, 2, 3))):
        got = prog.run({"xs": xs}).outputs
        for name, want in _numpy_carried(xs, reverse).items():
            np.testing.assert_allclose(got[name], want, rtol=1e-15, atol=0, err_msg=name)
    for name, arr in first.items():  # the first run's final carries: still the caller's
        np.testing.assert_array_equal(arr, kept[name], err_msg=name)


def test_a_carry_that_is_also_given_out_as_it_was_gets_new_arrays():
    g = rg.Graph("given_out")
    xs = g.input("xs", ("T", 3))

    def step(b, carry, x):
        return [b.tanh(carry[0] + x[0])], [carry[0]]  # ys[t]: the carry before step t

    (last,), (before,) = g.scan(step, init=[g.full(shape=[3], value=0.5)], xs=[xs])
    g.output(last, name="last")
    g.output(before, name="before")
    xs = np.random.default_rng(6).normal(size=(4, 3))
    out = rg.compile(g, optimize=False).run({"xs": xs}).outputs  # (optimised: a shift)
    c, want = np.full(3, 0.5), []
    for row in xs:
        want.append(c)
        c = np.tanh(c + row)
    np.testing.assert_array_equal(out["before"], np.stack(want))
    np.testing.assert_array_equal(out["last"], c)


def test_loops_and_graphs_without_nodes_run():
    g = rg.Graph("empty")
    xs = g.input("xs", ("T", 2))
    (last,), (ys,) = g.scan(
        lambda b, c, x: ([x[0] * 2.0], [x[0] * 3.0]), init=[g.full(shape=[2])], xs=[xs]
    )
    g.output(last, name="last")
    g.output(ys, name="ys")
    prog = rg.compile(g)
    body = next(n for n in prog.ir.nodes if n.op == "scan").bodies["body"]
    assert not body.nodes  # everything left the loop
    x = np.arange(6.0).reshape(3, 2)
    out = prog.run({"xs": x}).outputs
    np.testing.assert_array_equal(out["last"], x[-1] * 2.0)
    np.testing.assert_array_equal(out["ys"], x * 3.0)
    h = rg.Graph("identity_only")
    h.output(h.input("x", (2,)), name="x")
    np.testing.assert_array_equal(rg.Interpreter(h.ir).run({"x": x[0]})["x"], x[0])


# --- concats whose inputs are written straight into their array -------------------------


def concat_graph(axis: int, why: str | None = None) -> rg.Graph:
    """``concat(a * b, tanh(c), x)``: two inputs made for the concat alone, one fed."""
    g = rg.Graph("joined")
    a, b, c = (g.input(n, ("T", 3)) for n in "abc")
    x = g.input("x", ("T", 3))
    prod, t = a * b, g.tanh(c)
    parts = [prod, t, x]
    if why == "used_twice":
        g.output(prod + 1.0, name="other")
    if why == "output":
        g.output(t, name="t")
    if why == "same_input":
        parts = [prod, t, prod]
    if why == "reversed":  # the array must exist before the first made, not the first read
        parts = [t, prod, x]
    if why == "nested":  # a concat filled in place is not itself written into another
        parts = [g.concat(prod, t, axis=axis), x]
    g.output(g.concat(*parts, axis=axis), name="y")
    return g


def concat_feeds(T: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(T)
    return {n: rng.standard_normal((T, 3)) for n in "abcx"}


def concat_want(f: dict[str, np.ndarray], axis: int, why: str | None) -> np.ndarray:
    parts = [f["a"] * f["b"], np.tanh(f["c"]), f["x"]]
    if why == "same_input":
        parts[2] = parts[0]
    if why == "reversed":
        parts[:2] = parts[1::-1]
    if why == "nested":
        parts = [np.concatenate(parts[:2], axis=axis), parts[2]]
    return np.concatenate(parts, axis=axis)


@pytest.mark.parametrize("axis", [0, 1, -1])
@pytest.mark.parametrize("why", [None, "used_twice", "output", "same_input", "reversed", "nested"])
def test_values_made_for_a_concat_alone_are_written_into_its_array(axis, why):
    if why == "nested" and axis == 0:
        pytest.skip("2*T + T rows: sizes of different symbols do not add up")
    ir = concat_graph(axis, why).ir
    interp = rg.Interpreter(ir)
    names = {ir.nodes[i].outputs[0].name for i in interp._joined}
    made = {n.op: n.outputs[0].name for n in ir.nodes}
    want_joined = {
        "eltmul": {made["eltmul"], made["tanh"]},
        "used_twice": {made["tanh"]},
        "output": {made["eltmul"]},
        "same_input": {made["tanh"]},
    }
    assert names == want_joined["eltmul" if why in (None, "reversed", "nested") else why]
    kept = []
    for T in (4, 2, 4):  # bindings change; earlier results stay as they were
        feeds = concat_feeds(T)
        out = interp.run(feeds)
        np.testing.assert_array_equal(out["y"], concat_want(feeds, axis, why))
        kept.append((out["y"], concat_want(feeds, axis, why)))
    for got, want in kept:
        np.testing.assert_array_equal(got, want)
    debug = rg.Interpreter(ir, check_finite=True)
    assert not debug._joined  # debug mode checks every value: no unset array
    np.testing.assert_array_equal(debug.run(concat_feeds(3))["y"], interp.run(concat_feeds(3))["y"])


def test_an_identity_runs_as_its_input_with_no_call():
    g = rg.Graph("ids")
    x = g.input("x", (2, 3))
    y = g.identity(x.tanh())
    g.output(y * 2.0, name="a")
    g.output(y, name="b")
    interp = rg.Interpreter(g.ir)
    x0 = np.linspace(-1.0, 1.0, 6).reshape(2, 3)
    out = interp.run({"x": x0})
    np.testing.assert_array_equal(out["b"], np.tanh(x0))
    np.testing.assert_array_equal(out["a"], np.tanh(x0) * 2.0)
    lines = interp._flat.source.splitlines()
    identities = [i for i, n in enumerate(g.ir.nodes) if n.op == "identity"]
    assert len(identities) == 3  # the one asked for and one per output name
    for i in identities:
        line = lines[interp._flat.first_line - 1 + i]
        assert f"k{i}(" not in line and " = v" in line, line


def test_a_plain_2d_product_is_numpy_dot_itself_unless_its_out_may_be_strided():
    g = rg.Graph("dots")
    x = g.input("x", ("B", 3))
    w, v = g.param("w", (3, 4), init="uniform"), g.param("v", (3, 2), init="uniform")
    plain = x @ w
    joined = x @ v  # made only for the concat: written into its columns 4:6 (strided)
    g.output(g.concat([plain.tanh(), joined], axis=1), name="y")
    g.output(
        g.matmul(x, w, transpose_b=False).sum()
        + g.matmul(w, x, transpose_a=True, transpose_b=True).sum(),
        name="s",
    )
    interp = rg.Interpreter(g.ir)
    params = rg.init_params(g, 2)
    xv = np.random.default_rng(5).normal(size=(5, 3))
    out = interp.run({"x": xv}, params)
    want = np.concatenate([np.tanh(xv @ params["w"]), xv @ params["v"]], axis=1)
    np.testing.assert_allclose(out["y"], want, rtol=1e-14)
    np.testing.assert_allclose(out["s"], 2 * (xv @ params["w"]).sum(), rtol=1e-13)
    kernels = {g.ir.nodes[st.node].outputs[0].name: st.kernel for st in interp._steps({"B": 5})}
    products = [n for n in g.ir.nodes if n.op == "matmul"]
    plain_name, joined_name, again, flagged = (n.outputs[0].name for n in products)
    dot = undispatched(np.dot)  # np.dot without its __array_function__ dispatch
    assert kernels[plain_name] is dot and kernels[again] is dot
    assert kernels[joined_name] is not dot and kernels[flagged] is not dot


def test_feeds_of_shapes_checked_before_are_still_refused_when_wrong():
    # A run remembers the dims that feeds of its shapes bound; later feeds of other
    # shapes, dtypes or names are checked in full, and refused as before.
    g = rg.Graph("remember")
    x = g.input("x", ("T", "B"))
    y = g.input("y", ("T", "B"))
    g.input("unused", ("B",))
    g.output((x * y).sum(axes=[0]), name="s")
    interp = rg.Interpreter(g.ir)
    a, b = np.ones((3, 2)), np.full((3, 2), 2.0)
    np.testing.assert_array_equal(interp.run({"x": a, "y": b})["s"], [6.0, 6.0])
    np.testing.assert_array_equal(interp.run({"x": a, "y": 3 * b})["s"], [18.0, 18.0])
    with pytest.raises(FeedError, match="dim 'T' is 3"):
        interp.run({"x": a, "y": np.ones((4, 2))})
    with pytest.raises(FeedError, match="must be float64, got float32"):
        interp.run({"x": a, "y": b.astype(np.float32)})
    with pytest.raises(FeedError, match="missing feed for input 'y'"):
        interp.run({"x": a})
    with pytest.raises(FeedError, match=r"\['z'\] are not inputs"):
        interp.run({"x": a, "y": b, "z": b})
    with pytest.raises(FeedError, match="'unused' axis 0 has size 5"):
        interp.run({"x": a, "y": b, "unused": np.ones(5)})
    out = interp.run({"x": a, "y": b, "unused": np.ones(2)})  # checked, then remembered
    np.testing.assert_array_equal(out["s"], [6.0, 6.0])
    np.testing.assert_array_equal(interp.run({"x": a, "y": b, "unused": np.ones(2)})["s"], [6, 6])
    assert len(interp._bindings) == 2


def test_values_of_dim_sizes_alone_are_computed_once_per_binding(monkeypatch):
    # full, full_like and numel read no values, and a sum of a mask of ones reads only
    # them: each binding computes them once, later runs reuse the values, and what a
    # caller gets is its own copy.
    from rgraph.ir.ops import elementwise, reduce

    fills = []

    def counted(shape, dtype, value):
        fills.append(shape)
        return np.full(shape, value, dtype)

    monkeypatch.setattr(reduce, "filled", counted)
    monkeypatch.setattr(elementwise, "filled", counted)
    g = rg.Graph("sizes")
    x = g.input("x", ("T", 3))
    count = g.full(shape=["T", 3], value=1.0).sum()
    g.output(x * count / x.numel(), name="scaled")
    g.output(count, name="count")
    g.output(g.full_like(x, value=0.0), name="zeros")
    interp = rg.Interpreter(g.ir)
    for T in (2, 2, 4, 2, 4, 2):
        x0 = np.random.default_rng(T).normal(size=(T, 3))
        out = interp.run({"x": x0})
        np.testing.assert_array_equal(out["scaled"], x0 * (3.0 * T) / (3.0 * T))
        assert out["count"] == 3.0 * T
        np.testing.assert_array_equal(out["zeros"], np.zeros((T, 3)))
        out["count"][...] = -1.0  # (its own copy: later runs are not changed)
        out["zeros"][...] = -1.0
    assert sorted(fills) == [(2, 3), (2, 3), (4, 3), (4, 3)]  # full and full_like, per T
