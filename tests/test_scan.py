"""The ``scan`` loop: forward against numpy loops, gradients against finite differences,
the backward as a generated reverse scan, the verifier on scan IR given as data, and
build-time errors at the user's line.

Every numpy reference here is a plain Python loop over time written independently of
rgraph; every gradient is checked by :func:`rgraph.gradcheck` (central differences).
"""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest

import rgraph as rg
from rgraph.errors import ExecutionError, GraphError, ShapeError, UndefinedValueError
from rgraph.ir.graph import GraphIR
from rgraph.ir.verify import problems, verify

THIS_FILE = "test_scan.py"


def line() -> int:
    """The line number of the caller (to find it again in error messages)."""
    return sys._getframe(1).f_lineno


def close(actual, expected, what: str = "") -> None:
    np.testing.assert_allclose(actual, expected, rtol=1e-12, atol=1e-14, err_msg=what)


# --- a small RNN-like body, symbolic T and B ---------------------------------------------


def build_rnn(reverse: bool = False, steps="T", batch="B"):
    """h_t = tanh(x_t @ W.T + h_{t-1} @ U.T + b); y_t = h_t * v (v an input)."""
    g = rg.Graph("rnn")
    xs = g.input("xs", (steps, batch, 3))
    h0 = g.input("h0", (batch, 4))
    v = g.input("v", (4,))
    W = g.param("W", (4, 3), init="uniform", low=-0.5, high=0.5)
    U = g.param("U", (4, 4), init="uniform", low=-0.5, high=0.5)
    b = g.param("b", (4,), init="uniform", low=-0.5, high=0.5)

    def step(body, carry, x):
        h = body.tanh(x[0] @ W.T + carry[0] @ U.T + b)
        return [h], [h * v]

    (hT,), (ys,) = g.scan(step, init=[h0], xs=[xs], reverse=reverse)
    g.output(hT, name="hT")
    g.output(ys, name="ys")
    return g


def rnn_numpy(p, xs, h0, v, reverse=False):
    h = h0.copy()
    ys = np.zeros((*xs.shape[:2], 4))
    order = range(xs.shape[0] - 1, -1, -1) if reverse else range(xs.shape[0])
    for t in order:
        h = np.tanh(xs[t] @ p["W"].T + h @ p["U"].T + p["b"])
        ys[t] = h * v
    return h, ys


def rnn_feeds(rng, steps, batch):
    return {
        "xs": rng.standard_normal((steps, batch, 3)),
        "h0": rng.standard_normal((batch, 4)),
        "v": rng.standard_normal(4),
    }


def test_forward_matches_numpy_at_two_lengths_on_one_program():
    g = build_rnn()
    prog = rg.compile(g)
    params = rg.init_params(g, seed=1)
    rng = np.random.default_rng(0)
    for steps, batch in [(4, 2), (7, 3)]:
        feeds = rnn_feeds(rng, steps, batch)
        out = prog.run(feeds, params).outputs
        hT, ys = rnn_numpy(params, feeds["xs"], feeds["h0"], feeds["v"])
        assert out["ys"].shape == (steps, batch, 4)
        close(out["hT"], hT, f"hT at T={steps}")
        close(out["ys"], ys, f"ys at T={steps}")


def test_reverse_iterates_from_the_last_step_and_keeps_ys_in_time_order():
    g = build_rnn(reverse=True)
    params = rg.init_params(g, seed=2)
    feeds = rnn_feeds(np.random.default_rng(1), 5, 2)
    out = rg.compile(g).run(feeds, params).outputs
    hT, ys = rnn_numpy(params, feeds["xs"], feeds["h0"], feeds["v"], reverse=True)
    close(out["hT"], hT)
    close(out["ys"], ys)
    forward_h, _ = rnn_numpy(params, feeds["xs"], feeds["h0"], feeds["v"])
    assert not np.allclose(out["hT"], forward_h)  # the direction matters for this data


# --- steps that cut a row into views -------------------------------------------------------


def build_cut_rows(reverse: bool = False):
    """A body that splits the row it reads (x_t = [a, b]) and the row it writes (z = h @ U,
    a y, cut into [p, q]), then plucks rows of a table by index k_t:
    h' = tanh(a * p + b * q + table[k_t]); ys: z and h'."""
    g = rg.Graph("cut")
    xs = g.input("xs", ("T", "B", 4))
    ks = g.input("ks", ("T", "B"), dtype="int64")
    h0 = g.input("h0", ("B", 2))
    U = g.param("U", (2, 4), init="uniform", low=-1.0, high=1.0)
    table = g.param("table", (3, 2), init="uniform", low=-1.0, high=1.0)

    def step(body, carry, x):
        a, b = body.split(x[0], axis=1, sizes=[2, 2])
        z = carry[0] @ U
        p, q = body.split(z, axis=-1, sizes=[2, 2])
        h = body.tanh(a * p + b * q + body.row_pluck(table, x[1]))
        return [h], [z, h]

    (hT,), (zs, hs) = g.scan(step, init=[h0], xs=[xs, ks], reverse=reverse)
    for v, name in ((hT, "hT"), (zs, "zs"), (hs, "hs")):
        g.output(v, name=name)
    return g


def cut_rows_numpy(p, xs, ks, h0, reverse=False):
    h, zs, hs = h0.copy(), np.zeros((*xs.shape[:2], 4)), np.zeros((*xs.shape[:2], 2))
    for t in range(xs.shape[0] - 1, -1, -1) if reverse else range(xs.shape[0]):
        z = h @ p["U"]
        h = np.tanh(xs[t, :, :2] * z[:, :2] + xs[t, :, 2:] * z[:, 2:] + p["table"][ks[t]])
        zs[t], hs[t] = z, h
    return h, zs, hs


@pytest.mark.parametrize("optimize", [True, False])
@pytest.mark.parametrize("reverse", [False, True])
def test_steps_that_cut_the_rows_they_read_and_write_match_numpy(reverse, optimize):
    g = build_cut_rows(reverse)
    params = rg.init_params(g, seed=3)
    rng = np.random.default_rng(4)
    prog = rg.compile(g, optimize=optimize)
    for steps, batch in [(5, 2), (3, 1)]:
        feeds = {
            "xs": rng.standard_normal((steps, batch, 4)),
            "ks": rng.integers(0, 3, (steps, batch)),
            "h0": rng.standard_normal((batch, 2)),
        }
        out = prog.run(feeds, params).outputs
        want = cut_rows_numpy(params, feeds["xs"], feeds["ks"], feeds["h0"], reverse)
        for name, w in zip(("hT", "zs", "hs"), want):
            close(out[name], w, f"{name} at T={steps}")


def test_a_step_that_cuts_rows_makes_no_call_and_errors_after_it_name_their_node():
    g = build_cut_rows()
    (scan,) = [n for n in g.ir.nodes if n.op == "scan"]
    body = rg.Interpreter(scan.bodies["body"], loop_body=True)
    body.loop({"B": 1}, 1, 2)
    cut = [line for line in body._loop.source.splitlines() if line.endswith(": iterated")]
    assert len(cut) == 2 and all(line.strip().startswith("pass") for line in cut)
    # The lines keep their places, so an error names its node and step: unoptimised, the
    # pluck stays in the loop.
    params = rg.init_params(g, seed=3)
    xs, ks = np.ones((4, 1, 4)), np.array([[0], [1], [7], [2]])  # row 7 of 3: step 2 fails
    with pytest.raises(ExecutionError) as info:
        rg.compile(g, optimize=False).run({"xs": xs, "ks": ks, "h0": np.zeros((1, 2))}, params)
    message = str(info.value)
    assert "at scan step 2:" in message and "= row_pluck(" in message, message
    assert "out of range" in message


def test_no_xs_with_a_length():
    """A geometric sequence: carry c_{t+1} = a * c_t + 1, ys the carry before the update."""
    g = rg.Graph("geom")
    c0 = g.input("c0", (2,))
    a = g.input("a", (2,))
    (cT,), (ys,) = g.scan(lambda b, c, x: ([c[0] * a + 1.0], [c[0]]), init=[c0], length=6)
    g.output(cT, name="cT")
    g.output(ys, name="ys")
    assert ys.shape == (6, 2)
    feeds = {"c0": np.array([0.5, -2.0]), "a": np.array([0.9, 1.5])}
    out = rg.compile(g).run(feeds).outputs
    c, expected = feeds["c0"].copy(), []
    for _ in range(6):
        expected.append(c.copy())
        c = c * feeds["a"] + 1.0
    close(out["cT"], c)
    close(out["ys"], np.stack(expected))


def test_no_xs_with_a_symbolic_length_bound_by_another_input():
    g = rg.Graph("count")
    g.input("clock", ("T",))  # only binds T
    c0 = g.input("c0", ())
    (cT,), (ys,) = g.scan(lambda b, c, x: ([c[0] * 2.0], [c[0] + 0.5]), init=[c0], length="T")
    g.output(cT, name="cT")
    g.output(ys, name="ys")
    prog = rg.compile(g)
    for steps in (1, 4):
        out = prog.run({"clock": np.zeros(steps), "c0": np.array(3.0)}).outputs
        close(out["cT"], 3.0 * 2.0**steps)
        close(out["ys"], 3.0 * 2.0 ** np.arange(steps) + 0.5)


def test_several_carries_and_ys_with_an_int_carry_passing_through():
    """Carries (s, n, k, m): a running sum, an int passed through unchanged, an int step
    counter, and a running max; ys: s, s * x, and the counter."""
    g = rg.Graph("multi")
    xs = g.input("xs", ("T", 3))
    k0 = g.input("k0", (), "int64")
    n0 = g.input("n0", (2,), "int32")
    s0 = g.input("s0", (3,))

    def step(b, carry, x):
        s, n, k, m = carry
        s_new = s + x[0]
        k_new = k + b.const(1, "int64")
        m_new = b.relu(x[0] - m) + m  # max(m, x)
        return [s_new, n, k_new, m_new], [s_new, s_new * x[0], k_new]

    (sT, nT, kT, mT), (ys_s, ys_sx, ys_k) = g.scan(
        step, init=[s0, n0, k0, s0 * 0.0 - 100.0], xs=[xs]
    )
    assert (nT.dtype, kT.dtype, ys_k.dtype) == ("int32", "int64", "int64")
    assert ys_k.shape == ("T",)
    for v, name in [(sT, "sT"), (nT, "nT"), (kT, "kT"), (mT, "mT")]:
        g.output(v, name=name)
    for v, name in [(ys_s, "ys_s"), (ys_sx, "ys_sx"), (ys_k, "ys_k")]:
        g.output(v, name=name)
    rng = np.random.default_rng(3)
    feeds = {
        "xs": rng.standard_normal((5, 3)),
        "k0": np.array(10, dtype=np.int64),
        "n0": np.array([7, -3], dtype=np.int32),
        "s0": rng.standard_normal(3),
    }
    out = rg.compile(g).run(feeds).outputs
    sums = feeds["s0"] + np.cumsum(feeds["xs"], axis=0)
    close(out["sT"], sums[-1])
    close(out["ys_s"], sums)
    close(out["ys_sx"], sums * feeds["xs"])
    close(out["mT"], feeds["xs"].max(axis=0))
    np.testing.assert_array_equal(out["nT"], [7, -3])
    assert out["nT"].dtype == np.int32
    assert out["kT"] == 15 and out["kT"].dtype == np.int64
    np.testing.assert_array_equal(out["ys_k"], [11, 12, 13, 14, 15])


def build_pass_through():
    """Carries whose new value is not computed in the body: an outer value (``w``, a
    captured param), the step's input ``x_t`` and the carry itself; a y that is the carry
    before the update (a body input), and one computed value."""
    g = rg.Graph("pass")
    xs = g.input("xs", ("T", 3))
    a0 = g.input("a0", (3,))
    b0 = g.input("b0", (3,))
    c0 = g.input("c0", (3,))
    d0 = g.input("d0", (3,))
    w = g.param("w", (3,), init="uniform", low=0.5, high=1.5)

    def step(b, carry, x):
        a, bb, c, d = carry
        # a <- w (outer), bb <- x_t (body input), c <- c (itself), d accumulates
        return [w, x[0], c, d * w + bb * x[0]], [a, d * c]

    (aT, bT, cT, dT), (ys_a, ys_dc) = g.scan(step, init=[a0, b0, c0, d0], xs=[xs])
    for v, name in [(aT, "aT"), (bT, "bT"), (cT, "cT"), (dT, "dT"), (ys_a, "ys_a")]:
        g.output(v, name=name)
    g.output(ys_dc, name="ys_dc")
    return g


def pass_through_numpy(p, f):
    a, b, c, d = f["a0"], f["b0"], f["c0"], f["d0"]
    ys_a, ys_dc = [], []
    for x in f["xs"]:
        ys_a.append(a)
        ys_dc.append(d * c)
        a, b, c, d = p["w"], x, c, d * p["w"] + b * x
    return {"aT": a, "bT": b, "cT": c, "dT": d, "ys_a": np.stack(ys_a), "ys_dc": np.stack(ys_dc)}


def pass_through_feeds(steps=4):
    rng = np.random.default_rng(4)
    return {k: rng.standard_normal((steps, 3) if k == "xs" else 3) for k in PASS_INPUTS}


PASS_INPUTS = ("xs", "a0", "b0", "c0", "d0")


def test_carry_outputs_that_are_outer_values_or_body_inputs():
    g = build_pass_through()
    params = rg.init_params(g, seed=5)
    feeds = pass_through_feeds()
    out = rg.compile(g).run(feeds, params).outputs
    expected = pass_through_numpy(params, feeds)
    for name, value in expected.items():
        close(out[name], value, name)
    close(out["aT"], params["w"])
    close(out["bT"], feeds["xs"][-1])
    close(out["cT"], feeds["c0"])


def test_pass_through_carries_gradcheck():
    g = build_pass_through()
    rg.gradcheck(
        g, pass_through_feeds(), rg.init_params(g, seed=5), wrt=["w", *PASS_INPUTS], atol=1e-7
    )


def test_fan_out_around_a_scan_gradcheck():
    """W is an initial carry, a captured weight and used after the loop; xs is given
    twice and used after the loop; every use contributes to the gradient."""
    g = rg.Graph("fan")
    xs = g.input("xs", ("T", 3))
    W = g.param("W", (3,), init="uniform", low=-1.0, high=1.0)

    def step(b, carry, x):
        h = b.tanh(carry[0] * W + x[0] * x[1] + W * W)
        return [h, carry[1] * h], [h * x[0]]

    (hT, pT), (ys,) = g.scan(step, init=[W, W * 2.0], xs=[xs, xs])
    g.output(g.sum(ys * xs) + g.sum(hT * W) + g.sum(pT), name="L")
    feeds = {"xs": np.random.default_rng(15).standard_normal((4, 3))}
    rg.gradcheck(g, feeds, rg.init_params(g, seed=15), wrt=["W", "xs"])


def test_chained_scans_gradcheck():
    """A reverse scan over the ys of a forward scan, capturing its final carry."""
    g = rg.Graph("chain")
    xs = g.input("xs", ("T", 2))
    a0 = g.input("a0", (2,))
    (a,), (ys,) = g.scan(lambda b, c, x: ([c[0] + x[0]], [b.tanh(c[0] * x[0])]), init=[a0], xs=[xs])
    (bT,), (zs,) = g.scan(
        lambda b, c, x: ([c[0] * x[0] + a], [c[0]]), init=[a], xs=[ys], reverse=True
    )
    g.output(bT, name="bT")
    g.output(zs, name="zs")
    rng = np.random.default_rng(16)
    feeds = {"xs": rng.standard_normal((5, 2)), "a0": rng.standard_normal(2)}
    out = rg.compile(g).run(feeds).outputs
    c, hs = feeds["a0"], []
    for x in feeds["xs"]:
        hs.append(np.tanh(c * x))
        c = c + x
    d, zs_ref = c, [None] * 5
    for t in range(4, -1, -1):
        zs_ref[t] = d
        d = d * hs[t] + c
    close(out["bT"], d)
    close(out["zs"], np.stack(zs_ref))
    rg.gradcheck(g, feeds, {}, wrt=["xs", "a0"])


# --- nested scans --------------------------------------------------------------------------


def build_nested():
    """An outer scan over rows whose body runs an inner scan over the row's elements.

    Inner: s <- tanh(s * u + x_ij * w); the outer carry h <- h * s_final + x_i0, and
    the inner ys stacked by both loops (T, N, 2).
    """
    g = rg.Graph("nested")
    xs = g.input("xs", ("T", "N"))
    h0 = g.input("h0", (2,))
    u = g.param("u", (2,), init="uniform", low=-1.0, high=1.0)
    w = g.param("w", (2,), init="uniform", low=-1.0, high=1.0)

    def outer(b, carry, x):
        row = x[0]

        def inner(bi, c, e):
            s = bi.tanh(c[0] * u + bi.expand_dims(e[0], axes=[0]) * w)
            return [s], [s * carry[0]]

        (s_final,), (ss,) = b.scan(inner, init=[carry[0]], xs=[row])
        h = carry[0] * s_final + row[0]
        return [h], [ss]

    (hT,), (ys,) = g.scan(outer, init=[h0], xs=[xs])
    assert ys.shape == ("T", "N", 2)
    g.output(hT, name="hT")
    g.output(ys, name="ys")
    return g


def nested_numpy(p, xs, h0):
    h, ys = h0, np.zeros((*xs.shape, 2))
    for i, row in enumerate(xs):
        s = h
        for j, e in enumerate(row):
            s = np.tanh(s * p["u"] + e * p["w"])
            ys[i, j] = s * h
        h = h * s + row[0]
    return h, ys


def test_nested_scan_forward():
    g = build_nested()
    params = rg.init_params(g, seed=6)
    prog = rg.compile(g)
    rng = np.random.default_rng(6)
    for shape in [(3, 4), (2, 5)]:
        feeds = {"xs": rng.standard_normal(shape), "h0": rng.standard_normal(2)}
        out = prog.run(feeds, params).outputs
        hT, ys = nested_numpy(params, feeds["xs"], feeds["h0"])
        close(out["hT"], hT)
        close(out["ys"], ys)
    scan_node = next(n for n in prog.ir.nodes if n.op == "scan")
    assert any(n.op == "scan" for n in scan_node.bodies["body"].nodes)


def test_nested_scan_gradcheck():
    g = build_nested()
    rng = np.random.default_rng(7)
    feeds = {"xs": rng.standard_normal((3, 4)), "h0": rng.standard_normal(2)}
    rg.gradcheck(g, feeds, rg.init_params(g, seed=7), wrt=["u", "w", "xs", "h0"])


# --- gradients --------------------------------------------------------------------------------


def test_gradcheck_wrt_params_xs_and_initial_carry():
    g = build_rnn()
    feeds = rnn_feeds(np.random.default_rng(8), 4, 2)
    report = rg.gradcheck(g, feeds, rg.init_params(g, seed=8), wrt=["W", "U", "b", "xs", "h0", "v"])
    assert [t.name for t in report.tensors] == ["W", "U", "b", "xs", "h0", "v"]
    assert all(t.max_abs_error < 1e-7 for t in report.tensors)


def test_gradcheck_reverse_scan():
    g = build_rnn(reverse=True)
    feeds = rnn_feeds(np.random.default_rng(9), 3, 2)
    rg.gradcheck(g, feeds, rg.init_params(g, seed=9), wrt=["W", "U", "b", "xs", "h0"])


@pytest.mark.parametrize("output", ["ys", "hT"])
def test_gradient_of_one_scan_output_only(output):
    """Only ys (final carry unused) or only the final carry (ys unused) flows back."""
    g = build_rnn()
    feeds = rnn_feeds(np.random.default_rng(10), 4, 2)
    params = rg.init_params(g, seed=10)
    rg.gradcheck(g, feeds, params, outputs=[output], wrt=["W", "U", "b", "xs", "h0"])
    # and a hand-written BPTT for the loss sum(output) agrees on dW and dh0
    prog = rg.compile(g, [output], cotangents=[output], wrt=["W", "h0"])
    ct = np.ones((4, 2, 4)) if output == "ys" else np.ones((2, 4))
    grads = prog.run(feeds, params, cotangents={output: ct}).grads
    dW, dh0 = rnn_bptt_numpy(
        params, feeds, d_ys=ct if output == "ys" else None, d_hT=ct if output == "hT" else None
    )
    close(grads["W"], dW)
    close(grads["h0"], dh0)


def rnn_bptt_numpy(p, f, d_ys=None, d_hT=None):
    xs, h = f["xs"], f["h0"]
    hs = [h]
    for x in xs:
        h = np.tanh(x @ p["W"].T + h @ p["U"].T + p["b"])
        hs.append(h)
    dh = np.zeros_like(h) if d_hT is None else d_hT.copy()
    dW = np.zeros_like(p["W"])
    for t in range(len(xs) - 1, -1, -1):
        if d_ys is not None:
            dh = dh + d_ys[t] * f["v"]
        dpre = dh * (1 - hs[t + 1] ** 2)
        dW += dpre.T @ xs[t]
        dh = dpre @ p["U"]
    return dW, dh


def test_one_step():
    g = build_rnn()
    feeds = rnn_feeds(np.random.default_rng(11), 1, 2)
    params = rg.init_params(g, seed=11)
    out = rg.compile(g).run(feeds, params).outputs
    hT, ys = rnn_numpy(params, feeds["xs"], feeds["h0"], feeds["v"])
    close(out["hT"], hT)
    close(out["ys"], ys)
    rg.gradcheck(g, feeds, params, wrt=["W", "U", "b", "xs", "h0"])


def test_zero_steps_give_the_initial_carry_and_empty_ys():
    g = build_rnn()
    params = rg.init_params(g, seed=12)
    feeds = rnn_feeds(np.random.default_rng(12), 0, 2)
    out = rg.compile(g).run(feeds, params).outputs
    close(out["hT"], feeds["h0"])
    assert out["ys"].shape == (0, 2, 4)
    assert out["ys"].dtype == np.float64


def test_zero_steps_backward():
    """With no steps the carry's cotangent passes straight through; weights get zeros."""
    g = build_rnn()
    params = rg.init_params(g, seed=12)
    feeds = rnn_feeds(np.random.default_rng(12), 0, 2)
    prog = rg.compile(g, ["hT", "ys"], cotangents=["hT", "ys"], wrt=["W", "h0", "xs"])
    ct = np.random.default_rng(13).standard_normal((2, 4))
    res = prog.run(feeds, params, cotangents={"hT": ct, "ys": np.zeros((0, 2, 4))})
    close(res.grads["h0"], ct)
    close(res.grads["W"], np.zeros((4, 3)))
    assert res.grads["xs"].shape == (0, 2, 3)


# --- the graph does not grow with T; the backward is a reverse scan ---------------------


def count_nodes(ir: GraphIR) -> int:
    """Nodes, those of bodies too; a ``map`` only groups nodes (``tile`` makes them for a
    symbolic ``T`` only), so it counts as the nodes it holds."""
    return sum((n.op != "map") + sum(count_nodes(b) for b in n.bodies.values()) for n in ir.nodes)


def test_graph_size_does_not_grow_with_the_number_of_steps():
    def size(steps):
        g = build_rnn(steps=steps, batch=2)
        loss = g.sum(g.value("ys"))
        return count_nodes(rg.compile(g, loss=loss).ir)

    sizes = {steps: size(steps) for steps in (3, 50, "T")}
    assert len(set(sizes.values())) == 1, sizes

    g = build_rnn()
    prog = rg.compile(g, loss=g.sum(g.value("ys")))
    params = rg.init_params(g, seed=14)
    rng = np.random.default_rng(14)
    for steps in (3, 50):
        feeds = rnn_feeds(rng, steps, 2)
        res = prog.run(feeds, params)
        _, ys = rnn_numpy(params, feeds["xs"], feeds["h0"], feeds["v"])
        close(res.outputs["ys"], ys)
        dW, _ = rnn_bptt_numpy(params, feeds, d_ys=np.ones_like(ys))
        close(res.grads["W"], dW)


def test_backward_is_a_generated_reverse_scan_printed_indented():
    g = build_rnn()
    prog = rg.compile(g, loss=g.sum(g.value("ys")))
    scans = [n for n in prog.ir.nodes if n.op == "scan"]
    assert [n.attrs.get("reverse", False) for n in scans] == [False, True]
    forward, backward = scans
    body = backward.bodies["body"]
    assert body.name.endswith("_vjp")  # generated, not the user's body
    assert backward.attrs["length"] == "T"
    assert "rnn_scan" in forward.bodies["body"].name
    # the generated body multiplies by the tanh derivative and back through U
    ops = [n.op for n in body.nodes]
    assert "matmul" in ops and "eltmul" in ops and "tanh" not in ops
    # the nodes derived from the user's ops point at the user's step function
    derived = [n for n in body.nodes if n.op in ("matmul", "eltmul")]
    assert derived and all(n.loc is not None and n.loc.function == "step" for n in derived)

    text = str(prog.ir).splitlines()
    scan_lines = [i for i, s in enumerate(text) if " = scan[" in s]
    assert len(scan_lines) == 2
    rev = scan_lines[1]
    assert "reverse=true" in text[rev] and text[rev].startswith("  ")
    assert text[rev + 1] == "    body:"
    assert text[rev + 2] == f"      graph {body.name} {{"
    assert all(s.startswith("        ") for s in text[rev + 3 : rev + 3 + len(body.inputs)])
    assert text[rev + 3].startswith("        input ")
    end = text.index("      }", rev)
    assert text[end - 1].startswith("        return ")
    assert 'length="T"' in text[rev]


# --- the verifier on scan IR given as data ----------------------------------------------


def valid_scan_data() -> dict:
    g = rg.Graph("loop")
    xs = g.input("xs", ("T", 3))
    h0 = g.input("h0", (3,))
    (hT,), (ys,) = g.scan(lambda b, c, x: ([b.tanh(c[0] + x[0])], [c[0] * 2.0]), init=[h0], xs=[xs])
    g.output(hT, name="hT")
    g.output(ys, name="ys")
    data = g.ir.model_dump(mode="json")
    verify(GraphIR.model_validate(data))  # the unmodified data is valid
    return data


def scan_of(data: dict) -> dict:
    (node,) = [n for n in data["nodes"] if n["op"] == "scan"]
    return node


def expect_problem(data: dict, cls: type, *words: str) -> None:
    ir = GraphIR.model_validate(data)
    found = problems(ir)
    assert found, "the verifier found nothing"
    assert type(found[0]) is cls, found
    for word in words:
        assert word in str(found[0]), (word, str(found[0]))
    with pytest.raises(cls) as info:
        rg.compile(ir)
    assert str(info.value) == str(found[0])


def test_verifier_body_input_type_mismatch():
    data = valid_scan_data()
    body = scan_of(data)["bodies"]["body"]
    body["inputs"][1]["type"]["shape"] = [4]  # x0 should be f64[3]
    expect_problem(data, ShapeError, "x0", "f64[3]", "f64[4]", "scan input 1")


def test_verifier_carry_type_changed_by_the_body():
    data = valid_scan_data()
    body = scan_of(data)["bodies"]["body"]
    carry_out = body["outputs"][0]
    (producer,) = [n for n in body["nodes"] if n["outputs"][0]["name"] == carry_out]
    producer["op"] = "cast"
    producer["attrs"] = {"dtype": "float32"}
    producer["inputs"] = producer["inputs"][:1]
    producer["outputs"][0]["type"]["dtype"] = "float32"
    ir = GraphIR.model_validate(data)
    assert not problems(ir.nodes[0].bodies["body"]), "the body alone is valid"
    expect_problem(data, ShapeError, "carry 0", "f64[3]", "f32[3]", carry_out)


def test_verifier_missing_length_with_no_xs():
    g = rg.Graph("nolen")
    c0 = g.input("c0", (2,))
    (cT,), _ = g.scan(lambda b, c, x: ([c[0] + 1.0], []), init=[c0], length=5)
    g.output(cT, name="cT")
    data = g.ir.model_dump(mode="json")
    verify(GraphIR.model_validate(data))
    del scan_of(data)["attrs"]["length"]
    expect_problem(data, ShapeError, "no xs", "length")


def test_verifier_body_not_closed():
    data = valid_scan_data()
    body = scan_of(data)["bodies"]["body"]
    node = body["nodes"][0]
    node["inputs"] = [*node["inputs"][:-1], "h0"]  # an outer name, not defined in the body
    expect_problem(data, UndefinedValueError, "h0", "undefined", "in body of node")


def test_scan_ir_round_trips_through_json():
    data = valid_scan_data()
    ir = GraphIR.model_validate(copy.deepcopy(data))
    assert ir.model_dump(mode="json") == data
    feeds = {"xs": np.arange(6.0).reshape(2, 3) / 10, "h0": np.ones(3)}
    out = rg.compile(ir).run(feeds).outputs
    h = feeds["h0"]
    for x in feeds["xs"]:
        h = np.tanh(h + x)
    close(out["hT"], h)


# --- build-time errors name the user's line ---------------------------------------------


def test_step_returning_the_wrong_number_of_carries():
    g = rg.Graph()
    xs = g.input("xs", ("T", 3))
    h0 = g.input("h0", (3,))
    with pytest.raises(GraphError) as info:
        here = line() + 1
        g.scan(lambda b, c, x: ([c[0], c[0]], [x[0]]), init=[h0], xs=[xs])
    message = str(info.value)
    assert f"{THIS_FILE}:{here}" in message
    assert "2 carries for 1" in message


def test_step_returning_a_carry_of_another_shape():
    g = rg.Graph()
    xs = g.input("xs", ("T", 3))
    h0 = g.input("h0", (3,))
    with pytest.raises(ShapeError) as info:
        here = line() + 1
        g.scan(lambda b, c, x: ([c[0][0:2]], [x[0]]), init=[h0], xs=[xs])
    message = str(info.value)
    assert f"{THIS_FILE}:{here}" in message
    assert "carry 0" in message and "f64[3]" in message and "f64[2]" in message


def test_step_not_returning_a_pair():
    g = rg.Graph()
    xs = g.input("xs", ("T", 3))
    with pytest.raises(GraphError) as info:
        here = line() + 1
        g.scan(lambda b, c, x: x[0], xs=[xs])
    assert f"{THIS_FILE}:{here}" in str(info.value)
    assert "(new_carry, ys)" in str(info.value)
