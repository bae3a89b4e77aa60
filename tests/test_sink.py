"""``sink``: per-step output work and accumulators leave loops, results unchanged.

Structural checks (what is left in a loop body) go with numbers: against numpy written
out here where the graph is small, and against ``optimize=False`` for language models.
"""

from collections import Counter

import numpy as np
import pytest

import rgraph as rg
from rgraph.ir.passes import sink
from rgraph.ir.verify import verify

RNG = np.random.default_rng(11)
TOL = dict(rtol=1e-12, atol=1e-13)


def scans(ir):
    return [n for n in ir.nodes if n.op == "scan"]


def body_of(node):
    return node.bodies["body"]


def forward_and_backward_scans(ir):
    (fwd,) = [n for n in scans(ir) if not body_of(n).name.endswith("_vjp")]
    (bwd,) = [n for n in scans(ir) if body_of(n).name.endswith("_vjp")]
    return fwd, bwd


def carry_types(node):
    return [v.type for v in body_of(node).inputs[: node.attrs["num_carry"]]]


def perturbed_params(g, seed=0):
    rng = np.random.default_rng(seed)
    return {k: v + rng.uniform(-0.3, 0.3, v.shape) for k, v in rg.init_params(g, seed).items()}


def language_model(kind, hidden=(5,)):
    g = rg.Graph("lm")
    rg.nn.language_model(g, vocab=7, kind=kind, hidden_sizes=list(hidden), letter_size=3)
    feeds = rg.train.pad_sequences([[1, 2, 3, 4, 5], [2, 3], [6, 6, 1]])
    return g, feeds, perturbed_params(g)


def rnn_numpy(xs, h0, U, reverse=False):
    """``h' = tanh(h @ U + x_t)``: the states after each step, in time order."""
    hs, h = [None] * len(xs), h0
    for t in reversed(range(len(xs))) if reverse else range(len(xs)):
        h = np.tanh(h @ U + xs[t])
        hs[t] = h
    return np.stack(hs), h


# ---- language models: the two families the pass is for ------------------------------


def test_lstm_derivative_residuals_leave_the_forward_loop():
    g, feeds, params = language_model("lstm")
    prog = rg.compile(g, ["loss", "logits"], loss="loss")
    before, _ = forward_and_backward_scans(prog.stages["forward_identities"])
    after, _ = forward_and_backward_scans(prog.stages["sink"])
    ops_before = Counter(n.op for n in body_of(before).nodes)
    ops_after = Counter(n.op for n in body_of(after).nodes)
    # sigmoid'(z) = s * (1 - s) and tanh'(z) = 1 - y * y only feed the backward loop
    assert ops_before["sub"] >= 5
    assert ops_after["sub"] == 0
    assert len(body_of(after).nodes) < len(body_of(before).nodes)
    assert ops_after["sigmoid"] == ops_before["sigmoid"]  # the gates stay: the state needs them
    outside = [n for n in prog.stages["sink"].nodes if n.op == "sub"]
    assert len(outside) >= 5 and all(n.outputs[0].type.shape[0] == "T" for n in outside)
    for ir in prog.stages.values():
        verify(ir)

    plain = rg.compile(g, ["loss", "logits"], loss="loss", optimize=False).run(feeds, params)
    fast = prog.run(feeds, params)
    for name in ("loss", "logits"):
        np.testing.assert_allclose(fast.outputs[name], plain.outputs[name], **TOL)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_the_backward_loop_keeps_no_weight_gradient_carries(kind):
    g, feeds, params = language_model(kind, hidden=(5, 4))
    prog = rg.compile(g, loss="loss")
    weights = {p.type for p in g.ir.params}

    def weight_sized(ir):
        return [
            t
            for n in scans(ir)
            for t in carry_types(n)
            if t in weights or (t.rank == 2 and all(isinstance(d, int) for d in t.shape))
        ]

    assert weight_sized(prog.stages["forward_identities"])  # accumulators before sink
    assert weight_sized(prog.stages["sink"]) == []
    assert weight_sized(prog.ir) == []
    for ir in prog.stages.values():
        verify(ir)

    plain = rg.compile(g, loss="loss", optimize=False).run(feeds, params)
    fast = prog.run(feeds, params)
    np.testing.assert_allclose(fast.outputs["loss"], plain.outputs["loss"], **TOL)
    assert set(fast.grads) == {p.name for p in g.ir.params}
    for name, grad in plain.grads.items():
        np.testing.assert_allclose(fast.grads[name], grad, rtol=1e-11, atol=1e-13, err_msg=name)


# ---- small loops, against numpy ------------------------------------------------------


@pytest.mark.parametrize("zero_init", [True, False])
def test_an_accumulator_becomes_its_initial_value_plus_a_sum_over_steps(zero_init):
    g = rg.Graph("acc")
    xs = g.input("xs", ("T", "B", 3))
    h0 = g.input("h0", ("B", 4))
    U = g.param("U", (4, 4))
    P = g.param("P", (3, 4))
    W0 = g.full(shape=[3, 4]) if zero_init else g.param("W0", (3, 4))

    def step(b, carry, x):
        h, W = carry
        h_new = b.tanh(h @ U + x[0] @ P)
        return [h_new, W + b.matmul(x[0], h_new, transpose_a=True)], [h_new]

    (hT, WT), _ = g.scan(step, init=[h0, W0], xs=[xs])
    g.output(WT, name="W_T")
    g.output(hT, name="h_T")
    ir = g.ir
    out = sink(ir)
    verify(out)
    (loop,) = scans(out)
    assert carry_types(loop) == [h0.type]  # the accumulator is no carry any more
    assert "matmul" in Counter(n.op for n in out.nodes)  # its terms: after the loop

    params = {"U": RNG.uniform(-0.5, 0.5, (4, 4)), "P": RNG.uniform(-0.5, 0.5, (3, 4))}
    if not zero_init:
        params["W0"] = RNG.standard_normal((3, 4))
    x, h = RNG.standard_normal((5, 2, 3)), RNG.standard_normal((2, 4))
    hs_np, hT_np = rnn_numpy(x @ params["P"], h, params["U"])
    want = params.get("W0", 0.0) + np.einsum("tbi,tbo->io", x, hs_np)
    got = rg.Interpreter(out).run({"xs": x, "h0": h}, params)
    np.testing.assert_allclose(got["W_T"], want, **TOL)
    np.testing.assert_allclose(got["h_T"], hT_np, **TOL)
    # and through the whole pipeline, where contract makes the sum one product
    prog = rg.compile(g)
    assert all(n.op != "sum" for n in prog.ir.nodes)
    np.testing.assert_allclose(prog.run({"xs": x, "h0": h}, params)["W_T"], want, **TOL)


def test_a_loop_of_only_accumulators_disappears():
    g = rg.Graph("sums")
    xs = g.input("xs", ("T", 3))
    init = g.input("s0", (3,))

    def step(b, carry, x):
        return [carry[0] + b.tanh(x[0]), x[0] * x[0] + carry[1]], []

    (s, q), _ = g.scan(step, init=[init, g.full(shape=[3])], xs=[xs])
    g.output(s, name="s")
    g.output(q, name="q")
    out = sink(g.ir)
    verify(out)
    x, s0 = RNG.standard_normal((4, 3)), RNG.standard_normal(3)
    got = rg.Interpreter(out).run({"xs": x, "s0": s0}, {})
    np.testing.assert_allclose(got["s"], s0 + np.tanh(x).sum(0), **TOL)
    np.testing.assert_allclose(got["q"], (x * x).sum(0), **TOL)
    assert scans(out) == []  # (a scan of no inputs does not exist)
    prog = rg.compile(g)
    assert scans(prog.ir) == []
    np.testing.assert_allclose(prog.run({"xs": x, "s0": s0})["s"], got["s"], **TOL)


def _rnn_graph(ys_fn, reverse=False):
    g = rg.Graph("rnn")
    xs = g.input("xs", ("T", "B", 3))
    h0 = g.input("h0", ("B", 3))
    U = g.param("U", (3, 3))

    def step(b, carry, x):
        h = carry[0]
        h_new = b.tanh(h @ U + x[0])
        return [h_new], ys_fn(b, h, h_new)

    (hT,), ys = g.scan(step, init=[h0], xs=[xs], reverse=reverse)
    return g, hT, ys


def _rnn_feeds():
    return (
        {"xs": RNG.standard_normal((4, 2, 3)), "h0": RNG.standard_normal((2, 3))},
        {"U": RNG.uniform(-0.6, 0.6, (3, 3))},
    )


def test_a_per_step_output_whose_op_cannot_batch_stays_in_the_loop():
    # sum over all axes has no batched form (it would sum over the steps too)
    g, _, (hs, totals, derivs) = _rnn_graph(
        lambda b, h, h_new: [h_new, b.sum(h_new), 1.0 - h_new * h_new]
    )
    for name, v in (("hs", hs), ("totals", totals), ("derivs", derivs)):
        g.output(v, name=name)
    ir = g.ir
    out = sink(ir)
    verify(out)
    (loop,) = scans(out)
    body_ops = Counter(n.op for n in body_of(loop).nodes)
    assert body_ops["sum"] == 1  # stayed
    assert body_ops["sub"] == 0 and body_ops["eltmul"] == 0  # the derivative left
    feeds, params = _rnn_feeds()
    hs_np, _ = rnn_numpy(feeds["xs"], feeds["h0"], params["U"])
    got = rg.Interpreter(out).run(feeds, params)
    np.testing.assert_allclose(got["totals"], hs_np.sum(axis=(1, 2)), **TOL)
    np.testing.assert_allclose(got["derivs"], 1.0 - hs_np**2, **TOL)
    np.testing.assert_allclose(got["hs"], hs_np, **TOL)


@pytest.mark.parametrize("reverse", [False, True])
def test_a_moved_node_reading_the_carry_in_gets_it_as_an_extra_stacked_output(reverse):
    # y_t = 1 - h_{t-1}^2 reads the state *entering* step t
    g, _, (hs, ys) = _rnn_graph(lambda b, h, h_new: [h_new, 1.0 - h * h], reverse=reverse)
    g.output(hs, name="hs")
    g.output(ys, name="ys")
    ir = g.ir
    out = sink(ir)
    verify(out)
    (before,), (loop,) = scans(ir), scans(out)
    body = body_of(loop)
    carry_in = body.inputs[0].name
    assert carry_in in body.outputs[1:]  # the carry-in value is returned, stacked
    assert len(body.outputs) == len(body_of(before).outputs)  # h_new, and h instead of y
    assert "sub" not in Counter(n.op for n in body.nodes)
    feeds, params = _rnn_feeds()
    hs_np, _ = rnn_numpy(feeds["xs"], feeds["h0"], params["U"], reverse=reverse)
    h_in = np.concatenate([feeds["h0"][None], hs_np[:-1]])  # the state entering each step
    if reverse:
        h_in = np.concatenate([hs_np[1:], feeds["h0"][None]])
    got = rg.Interpreter(out).run(feeds, params)
    np.testing.assert_allclose(got["ys"], 1.0 - h_in**2, **TOL)
    np.testing.assert_allclose(got["hs"], hs_np, **TOL)


def test_scan_outputs_that_are_graph_outputs_keep_their_names():
    g = rg.Graph("names")
    xs = g.input("xs", ("T", "B", 3))
    U = g.param("U", (3, 3))

    def step(b, carry, x):
        h, acc = carry
        h_new = b.tanh(h @ U + x[0])
        return [h_new, acc + h_new], [h_new, b.sigmoid(h_new * 2.0)]

    (hT, total), (hs, gates) = g.scan(step, init=[g.full(shape=["B", 3])] * 2, xs=[xs])
    for v in (hT, total, hs, gates):
        g.output(v)  # under the scan's own output names
    ir = g.ir
    out = sink(ir)
    verify(out)
    assert out.outputs == ir.outputs
    types = out.types()
    assert all(types[name] == ir.types()[name] for name in ir.outputs)
    (loop,) = scans(out)
    assert len(carry_types(loop)) == 1  # the running total left the loop
    feeds, params = _rnn_feeds()
    del feeds["h0"]
    hs_np, hT_np = rnn_numpy(feeds["xs"], np.zeros((2, 3)), params["U"])
    got = rg.Interpreter(out).run(feeds, params)
    want = [hT_np, hs_np.sum(0), hs_np, 1.0 / (1.0 + np.exp(-2.0 * hs_np))]
    for name, w in zip(ir.outputs, want):
        np.testing.assert_allclose(got[name], w, **TOL, err_msg=name)


def test_nested_loops_sink_from_the_inside_out():
    g = rg.Graph("nested")
    xs = g.input("xs", ("T", "S", "B", 3))
    U = g.param("U", (3, 3))

    def outer(b, carry, x):
        def inner(bi, c, y):
            h = bi.tanh(c[0] @ U + y[0])
            return [h], [1.0 - h * h]

        (last,), (derivs,) = b.scan(inner, init=[carry[0]], xs=[x[0]])
        return [last], [b.sum(derivs, axes=[0])]

    (hT,), (d,) = g.scan(outer, init=[g.full(shape=["B", 3])], xs=[xs])
    g.output(hT, name="h")
    g.output(d, name="d")
    ir = g.ir
    out = sink(ir)
    verify(out)
    (outer_loop,) = scans(out)
    (inner_loop,) = scans(body_of(outer_loop))
    assert Counter(n.op for n in body_of(inner_loop).nodes)["sub"] == 0
    (inner_before,) = scans(body_of(scans(ir)[0]))
    assert len(body_of(inner_loop).nodes) < len(body_of(inner_before).nodes)

    x, U_np = RNG.standard_normal((3, 4, 2, 3)), RNG.uniform(-0.6, 0.6, (3, 3))
    h, d_np = np.zeros((2, 3)), []
    for t in range(3):
        hs, h = rnn_numpy(x[t], h, U_np)
        d_np.append((1.0 - hs**2).sum(0))
    got = rg.Interpreter(out).run({"xs": x}, {"U": U_np})
    np.testing.assert_allclose(got["h"], h, **TOL)
    np.testing.assert_allclose(got["d"], np.stack(d_np), **TOL)


# ---- when nothing is to be done ------------------------------------------------------


def test_a_graph_without_loops_is_returned_unchanged():
    g = rg.Graph("plain")
    x = g.input("x", ("B", 3))
    g.output(x.tanh() * 2.0, name="y")
    ir = g.ir
    assert sink(ir) is ir


def test_sinking_twice_moves_nothing_more():
    g, _, _ = language_model("lstm")
    ir = rg.compile(g, loss="loss").stages["forward_identities"]
    once = sink(ir)
    twice = sink(once)
    assert twice is once


def test_debug_mode_has_no_sink_or_contract_stage():
    g, feeds, params = language_model("rnn")
    debug = rg.compile(g, loss="loss", check_finite=True)
    assert "sink" not in debug.stages and "contract" not in debug.stages
    assert "sink" in rg.compile(g, loss="loss").stages
    fast = rg.compile(g, loss="loss").run(feeds, params)
    np.testing.assert_allclose(debug.run(feeds, params).grads["Whh0"], fast.grads["Whh0"], **TOL)


def test_a_loop_left_with_only_constant_outputs_is_kept_whole():
    # the accumulator could leave, but a scan of no inputs (only a constant y) cannot exist
    g = rg.Graph("const_ys")
    xs = g.input("xs", ("T", 3))
    ones = np.ones(3)
    (total,), (stacked,) = g.scan(
        lambda b, c, x: ([c[0] + b.tanh(x[0])], [b.const(ones)]),
        init=[g.full(shape=[3])],
        xs=[xs],
    )
    g.output(total, name="total")
    g.output(stacked, name="ones")
    out = sink(g.ir)
    verify(out)
    x = RNG.standard_normal((4, 3))
    got = rg.Interpreter(out).run({"xs": x}, {})
    np.testing.assert_allclose(got["total"], np.tanh(x).sum(0), **TOL)
    np.testing.assert_array_equal(got["ones"], np.ones((4, 3)))


def test_an_outer_value_returned_per_step_stays_unstacked_for_the_nodes_after_the_loop():
    # ys = [v, v * (1 - h^2)]: the loop returns v stacked (T, 3), but the moved product
    # reads v itself (3,), broadcast over (T, B, 3)
    g = rg.Graph("passthrough")
    v = g.param("v", (3,))
    xs = g.input("xs", ("T", "B", 3))
    U = g.param("U", (3, 3))

    def step(b, carry, x):
        h = b.tanh(carry[0] @ U + x[0])
        return [h], [v, h, v * (1.0 - h * h)]

    _, (vs, _, scaled) = g.scan(step, init=[g.full(shape=["B", 3])], xs=[xs])
    g.output(vs, name="vs")
    g.output(scaled, name="scaled")
    out = sink(g.ir)
    verify(out)
    (loop,) = scans(out)
    assert "sub" not in Counter(n.op for n in body_of(loop).nodes)
    x, U_np, v_np = (
        RNG.standard_normal((4, 2, 3)),
        RNG.uniform(-0.6, 0.6, (3, 3)),
        RNG.standard_normal(3),
    )
    hs_np, _ = rnn_numpy(x, np.zeros((2, 3)), U_np)
    got = rg.Interpreter(out).run({"xs": x}, {"U": U_np, "v": v_np})
    np.testing.assert_allclose(got["vs"], np.broadcast_to(v_np, (4, 3)), **TOL)
    np.testing.assert_allclose(got["scaled"], v_np * (1.0 - hs_np**2), **TOL)
