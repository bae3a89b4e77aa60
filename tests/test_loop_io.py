"""``pack_loop_io``: a scan takes each outer value once, the pieces of an outer split as one
``xs``, and returns the pieces of one body array as one ``y``; checked by structure,
against the unpacked graph and numpy, and on cases where nothing may be packed. Last, the
whole pipeline on the character language models."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rgraph as rg
from rgraph.ir import GraphIR
from rgraph.ir.passes import cse, forward_identities, pack_loop_io
from rgraph.ir.verify import verify
from tests.pass_checks import same_results

RNG = np.random.default_rng(77)


def normal(*shape):
    return RNG.standard_normal(shape)


def ops(ir: GraphIR) -> list[str]:
    return [n.op for n in ir.nodes]


def scans(ir: GraphIR):
    return [n for n in ir.nodes if n.op == "scan"]


def the_scan(ir: GraphIR):
    (node,) = scans(ir)
    return node


def body_of(ir: GraphIR) -> GraphIR:
    return the_scan(ir).bodies["body"]


def stays(before: GraphIR, feeds, params=None) -> None:
    after = pack_loop_io(before)
    assert after is before, f"rewritten:\n{after}"
    rg.Interpreter(before).run(feeds, params or {})  # the case itself is a valid graph


# --- an outer value given twice ----------------------------------------------------------


def test_an_outer_value_given_twice_as_xs_is_given_once():
    g = rg.Graph("twice_xs")
    xs = g.input("xs", ("T", "B", 3))

    def step(b, carry, x):
        h = carry[0] + x[0] * x[1]
        return [h], [b.tanh(x[1])]

    (h,), (ys,) = g.scan(step, init=[g.input("h0", ("B", 3))], xs=[xs, xs])
    g.output(h, name="h")
    g.output(ys, name="ys")
    before = g.ir
    after = pack_loop_io(before)
    scan = the_scan(after)
    assert the_scan(before).attrs["num_xs"] == 2 and scan.attrs["num_xs"] == 1
    assert scan.inputs == ("h0", "xs")
    body = body_of(after)
    assert len(body.inputs) == 2
    (mul,) = [n for n in body.nodes if n.op == "eltmul"]
    assert mul.inputs[0] == mul.inputs[1] == body.inputs[1].name
    feeds = {"xs": normal(4, 2, 3), "h0": normal(2, 3)}
    got = same_results(before, after, feeds)
    np.testing.assert_allclose(got["h"], feeds["h0"] + (feeds["xs"] ** 2).sum(0), rtol=1e-13)
    np.testing.assert_array_equal(got["ys"], np.tanh(feeds["xs"]))


def test_an_outer_value_given_twice_as_an_invariant_is_given_once():
    g = rg.Graph("twice_inv")
    xs = g.input("xs", ("T", "B", 3))
    W = g.param("W", (3, 3), init="uniform", low=-0.5, high=0.5)
    u = g.tanh(W)
    v = g.tanh(W)  # the same value: cse makes the loop take it twice

    def step(b, carry, x):
        h = b.tanh(carry[0] @ u + x[0] @ v)
        return [h], [h]

    (h,), _ = g.scan(step, init=[g.full(shape=["B", 3])], xs=[xs])
    g.output(h, name="h")
    before = cse(g.ir)
    scan_before = the_scan(before)
    assert scan_before.inputs[-2] == scan_before.inputs[-1]  # given twice
    after = pack_loop_io(before)
    scan = the_scan(after)
    assert len(scan.inputs) == len(scan_before.inputs) - 1
    assert len(set(scan.inputs)) == len(scan.inputs)
    body = body_of(after)
    w_in = body.inputs[-1].name
    assert [n.inputs[1] for n in body.nodes if n.op == "matmul"] == [w_in, w_in]
    feeds = {"xs": normal(5, 2, 3)}
    params = rg.init_params(g, 3)
    got = same_results(before, after, feeds, params)
    t = np.tanh(params["W"])
    ref = np.zeros((2, 3))
    for x in feeds["xs"]:
        ref = np.tanh(ref @ t + x @ t)
    np.testing.assert_allclose(got["h"], ref, rtol=1e-13)


def test_a_value_given_as_xs_and_as_an_invariant_is_not_merged():
    g = rg.Graph("xs_and_inv")
    xs = g.input("xs", ("T", "B", 3))

    def step(b, carry, x):
        return [carry[0] + x[0] * b.sum(xs)], []  # xs whole inside: an invariant

    (h,), _ = g.scan(step, init=[g.input("h0", ("B", 3))], xs=[xs])
    g.output(h, name="h")
    assert the_scan(g.ir).inputs == ("h0", "xs", "xs")
    stays(g.ir, {"xs": normal(3, 2, 3), "h0": normal(2, 3)})


def test_a_scan_with_nothing_to_pack_and_a_graph_without_scans_are_returned_as_they_are():
    g = rg.Graph("plain_scan")
    xs = g.input("xs", ("T", "B", 3))
    W = g.param("W", (3, 3))

    def step(b, carry, x):
        h = b.tanh(carry[0] @ W + x[0])
        return [h], [h, b.sigmoid(h)]

    (h,), (hs, ss) = g.scan(step, init=[g.full(shape=["B", 3])], xs=[xs])
    g.output(h, name="h")
    g.output(hs + ss, name="y")
    stays(g.ir, {"xs": normal(3, 2, 3)}, {"W": normal(3, 3)})
    g2 = rg.Graph("no_scan")
    x = g2.input("x", (3,))
    g2.output(g2.split(x, axis=0, sizes=[1, 2])[1], name="y")
    stays(g2.ir, {"x": normal(3)})


# --- xs that are the pieces of one outer split ----------------------------------------------


@pytest.mark.parametrize("order", [(0, 1, 2), (2, 0, 1)])
def test_xs_that_are_all_the_pieces_of_one_split_are_one_xs_split_in_the_body(order):
    g = rg.Graph("pieces_in")
    z = g.input("z", ("T", "B", 6))
    mask = g.input("mask", ("T", "B", 1))
    pieces = g.split(z, axis=-1, sizes=[1, 2, 3])

    def step(b, carry, x):
        byname = dict(zip(order, x[:3]))
        a, p, q = byname[0], byname[1], byname[2]
        h = b.tanh(carry[0] * a + b.sum(p, axes=[-1], keepdims=True) + q) * x[3]
        return [h], [h]

    (h,), (hs,) = g.scan(
        step, init=[g.full(shape=["B", 3])], xs=[*(pieces[i] for i in order), mask]
    )
    g.output(h, name="h")
    g.output(hs, name="hs")
    before = g.ir
    after = pack_loop_io(before)
    scan = the_scan(after)
    assert the_scan(before).attrs["num_xs"] == 4 and scan.attrs["num_xs"] == 2
    assert scan.inputs[1:] == ("mask", "z")  # the whole array, after the other xs
    body = body_of(after)
    inner = body.nodes[0]
    assert inner.op == "split" and inner.inputs == (body.inputs[2].name,)
    assert inner.attrs == {"axis": 1, "sizes": [1, 2, 3]}
    assert body.inputs[2].type.shape == ("B", 6)
    feeds = {"z": normal(4, 2, 6), "mask": (RNG.random((4, 2, 1)) > 0.3).astype(float)}
    got = same_results(before, after, feeds)
    ref = np.zeros((2, 3))
    for zt, mt in zip(feeds["z"], feeds["mask"]):
        ref = np.tanh(ref * zt[:, :1] + zt[:, 1:3].sum(-1, keepdims=True) + zt[:, 3:]) * mt
    np.testing.assert_allclose(got["h"], ref, rtol=1e-13)


def test_pieces_of_a_split_along_the_time_axis_are_not_packed():
    g = rg.Graph("time_split")
    z = g.input("z", (4, "B", 3))
    first, second = g.split(z, axis=0, sizes=[2, 2])  # two halves of the sequence

    def step(b, carry, x):
        return [carry[0] + x[0] * x[1]], []

    (h,), _ = g.scan(step, init=[g.input("h0", ("B", 3))], xs=[first, second])
    g.output(h, name="h")
    stays(g.ir, {"z": normal(4, 2, 3), "h0": normal(2, 3)})


def test_xs_that_are_some_of_the_pieces_of_a_split_are_not_packed():
    g = rg.Graph("some_pieces")
    z = g.input("z", ("T", "B", 6))
    a, b_, c = g.split(z, axis=-1, sizes=[2, 2, 2])

    def step(b, carry, x):
        return [carry[0] + x[0] * x[1]], []

    (h,), _ = g.scan(step, init=[g.input("h0", ("B", 2))], xs=[a, c])
    g.output(h, name="h")
    g.output(g.sum(b_), name="s")
    stays(g.ir, {"z": normal(3, 2, 6), "h0": normal(2, 2)})


# --- ys: a body value returned twice, the pieces of one body array ---------------------------


def test_a_body_value_returned_twice_is_returned_once():
    g = rg.Graph("twice_ys")
    xs = g.input("xs", ("T", "B", 3))

    def step(b, carry, x):
        h = b.tanh(carry[0] + x[0])
        return [h], [h, h]  # the builder names the second with an identity

    (h,), (ys1, ys2) = g.scan(step, init=[g.full(shape=["B", 3])], xs=[xs])
    g.output(h, name="h")
    g.output(ys1, name="y1")
    g.output(ys2 * 2.0, name="y2")
    before = forward_identities(g.ir)  # the body now returns h twice
    body = body_of(before)
    assert body.outputs[1] == body.outputs[2]
    after = pack_loop_io(before)
    scan = the_scan(after)
    assert len(scan.outputs) == len(the_scan(before).outputs) - 1
    assert body_of(after).outputs == body.outputs[:2]
    second = the_scan(before).outputs[2].name
    (copy,) = [n for n in after.nodes if n.op == "identity" and n.outputs[0].name == second]
    assert copy.inputs == (scan.outputs[1].name,)
    feeds = {"xs": normal(4, 2, 3)}
    got = same_results(before, after, feeds)
    ref, hs = np.zeros((2, 3)), []
    for x in feeds["xs"]:
        ref = np.tanh(ref + x)
        hs.append(ref)
    np.testing.assert_array_equal(got["y1"], np.stack(hs))
    np.testing.assert_array_equal(got["y2"], 2.0 * np.stack(hs))


@pytest.mark.parametrize("order", [(0, 1, 2), (1, 2, 0)])
def test_ys_that_are_all_the_pieces_of_a_body_split_are_the_whole_split_after_the_loop(order):
    g = rg.Graph("pieces_out")
    xs = g.input("xs", ("T", "B", 2))
    W = g.param("W", (2, 9), init="uniform", low=-1, high=1)

    def step(b, carry, x):
        z = b.tanh(x[0] @ W + carry[0])
        pieces = b.split(z, axis=-1, sizes=[2, 3, 4])
        return [z], [pieces[i] for i in order]

    _, ys = g.scan(step, init=[g.full(shape=["B", 9])], xs=[xs])
    for i, y in zip(order, ys):
        g.output(y, name=f"y{i}")
    before = g.ir
    after = pack_loop_io(before)
    body = body_of(after)
    (tanh,) = [n for n in body.nodes if n.op == "tanh"]
    assert body.outputs == (tanh.outputs[0].name, tanh.outputs[0].name)  # carry and whole y
    scan = the_scan(after)
    assert len(scan.outputs) == 2 and scan.outputs[1].type.shape == ("T", "B", 9)
    (after_loop,) = [n for n in after.nodes if n.op == "split"]
    assert after_loop.inputs == (scan.outputs[1].name,)
    assert after_loop.attrs == {"axis": 2, "sizes": [2, 3, 4]}
    feeds = {"xs": normal(3, 2, 2)}
    params = rg.init_params(g, 5)
    got = same_results(before, after, feeds, params)
    z, zs = np.zeros((2, 9)), []
    for x in feeds["xs"]:
        z = np.tanh(x @ params["W"] + z)
        zs.append(z)
    for i, part in enumerate(np.split(np.stack(zs), [2, 5], axis=2)):
        np.testing.assert_allclose(got[f"y{i}"], part, rtol=1e-13)


def test_ys_that_are_all_the_inputs_of_a_body_concat_are_the_concat_split_after_the_loop():
    g = rg.Graph("concat_out")
    xs = g.input("xs", ("T", 3, "B"))

    def step(b, carry, x):
        a = b.tanh(x[0])
        c = b.sigmoid(carry[0])
        both = b.concat([a, c], axis=0)  # (5, B)
        return [b.sum(both, axes=[0], keepdims=True) * 0.5 + carry[0]], [a, c]

    _, (ya, yc) = g.scan(step, init=[g.input("h0", (2, "B"))], xs=[xs])
    g.output(ya, name="ya")
    g.output(yc, name="yc")
    before = g.ir
    after = pack_loop_io(before)
    body = body_of(after)
    (join,) = [n for n in body.nodes if n.op == "concat"]
    assert body.outputs[1:] == (join.outputs[0].name,)
    (after_loop,) = [n for n in after.nodes if n.op == "split"]
    assert after_loop.attrs == {"axis": 1, "sizes": [3, 2]}
    feeds = {"xs": normal(4, 3, 2), "h0": normal(2, 2)}
    got = same_results(before, after, feeds)
    h, ra, rc = feeds["h0"], [], []
    for x in feeds["xs"]:
        a, c = np.tanh(x), 1 / (1 + np.exp(-h))
        ra.append(a)
        rc.append(c)
        h = np.concatenate([a, c]).sum(0, keepdims=True) * 0.5 + h
    np.testing.assert_array_equal(got["ya"], np.stack(ra))
    np.testing.assert_allclose(got["yc"], np.stack(rc), rtol=1e-14)


@pytest.mark.parametrize("why", ["missing", "whole_too"])
def test_ys_that_are_not_exactly_the_pieces_stay(why):
    g = rg.Graph("pieces_stay")
    xs = g.input("xs", ("T", "B", 6))

    def step(b, carry, x):
        z = b.tanh(x[0])
        p = b.split(z, axis=-1, sizes=[2, 2, 2])
        if why == "missing":
            return [carry[0] + p[1]], [p[0], p[2]]
        return [carry[0] + p[1]], [p[0], p[1], p[2], z]

    g.scan(step, init=[g.full(shape=["B", 2])], xs=[xs])
    ir = g.ir
    ir = ir.replace(outputs=tuple(o.name for o in the_scan(ir).outputs))
    stays(ir, {"xs": normal(3, 2, 6)})


# --- ys that are the carries as the steps get them -------------------------------------------


@pytest.mark.parametrize("reverse", [False, True])
def test_carries_returned_as_the_steps_get_them_are_shifts_of_what_the_steps_leave(reverse):
    g = rg.Graph("delayed")
    xs = g.input("xs", ("T", "B", 3))

    def step(b, carry, x):
        h, c = carry
        new_c = c * 0.5 + x[0]
        new_h = b.tanh(new_c) + h
        return [new_h, new_c], [h, c, new_h]  # h and c as the step gets them

    init = [g.input("h0", ("B", 3)), g.input("c0", ("B", 3))]
    (h, c), (hs_in, cs_in, hs) = g.scan(step, init=init, xs=[xs], reverse=reverse)
    for value, name in ((h, "h"), (c, "c"), (hs_in, "hs_in"), (cs_in, "cs_in"), (hs, "hs")):
        g.output(value, name=name)
    before = forward_identities(g.ir)  # the body returns new_h itself
    after = pack_loop_io(before)
    body = body_of(after)
    carry_in = {v.name for v in body.inputs[:2]}
    assert not carry_in & set(body.outputs[2:])
    assert body.outputs[2:] == (body.outputs[0], body.outputs[1])  # new_h once, new_c added
    shifts = [n for n in after.nodes if n.op == "shift"]
    assert len(shifts) == 2
    assert all(n.attrs.get("reverse", False) is reverse for n in shifts)
    feeds = {"xs": normal(4, 2, 3), "h0": normal(2, 3), "c0": normal(2, 3)}
    got = same_results(before, after, feeds)
    h, c, h_in, c_in = feeds["h0"], feeds["c0"], [], []
    for x in feeds["xs"][::-1] if reverse else feeds["xs"]:
        h_in.append(h)
        c_in.append(c)
        c = c * 0.5 + x
        h = np.tanh(c) + h
    order = slice(None, None, -1) if reverse else slice(None)
    np.testing.assert_array_equal(got["hs_in"], np.stack(h_in)[order])
    np.testing.assert_array_equal(got["cs_in"], np.stack(c_in)[order])


def test_a_carry_passed_through_unchanged_and_returned_stays():
    g = rg.Graph("passed")
    xs = g.input("xs", ("T", 3))

    def step(b, carry, x):
        return [carry[0], carry[1] + x[0]], [carry[0]]

    init = [g.input("k", (3,)), g.full(shape=[3])]
    _, (ks,) = g.scan(step, init=init, xs=[xs])
    g.output(ks, name="ks")
    before = g.ir
    after = pack_loop_io(before)
    assert "shift" not in ops(after)
    same_results(before, after, {"xs": normal(3, 3), "k": normal(3)})


# --- found while testing -------------------------------------------------------------------


def test_pieces_of_a_deduplicated_xs_returned_as_ys_are_returned_whole():
    """The body split reads the second of two equal xs, which packing renames to the first."""
    g = rg.Graph("dup_then_whole")
    xs = g.input("xs", ("T", "B", 4))

    def step(b, carry, x):
        a0, a1 = b.split(x[1], axis=-1, sizes=[1, 3])
        return [carry[0] + x[0]], [a0, a1]

    (last,), (y0, y1) = g.scan(step, init=[g.input("h", ("B", 4))], xs=[xs, xs])
    g.output(last, name="last")
    g.output(y0, name="y0")
    g.output(y1, name="y1")
    before = g.ir
    after = pack_loop_io(before)
    scan = the_scan(after)
    assert scan.attrs["num_xs"] == 1 and len(scan.outputs) == 2
    assert body_of(after).outputs[1] == body_of(after).inputs[1].name  # x itself, whole
    feeds = {"xs": normal(3, 2, 4), "h": normal(2, 4)}
    got = same_results(before, after, feeds)
    np.testing.assert_array_equal(got["y0"], feeds["xs"][..., :1])
    np.testing.assert_array_equal(got["y1"], feeds["xs"][..., 1:])


@pytest.mark.parametrize("nesting", ["split_of_a_split", "split_of_a_concat"])
def test_ys_that_are_pieces_of_pieces_are_each_defined_once(nesting):
    """A whole that is itself one of the ys, or that two groups share, is not packed twice."""
    g = rg.Graph("nested_pieces")
    xs = g.input("xs", ("T", "B", 4))

    def step(b, carry, x):
        a, d = b.tanh(x[0] + carry[0]), b.exp(x[0])
        if nesting == "split_of_a_split":
            w1, w2 = b.split(a, axis=-1, sizes=[3, 1])
            p, q = b.split(w1, axis=-1, sizes=[1, 2])
            return [a * 0.5], [w1, w2, p, q]
        both = b.concat([a, d], axis=-1)
        p, q = b.split(both, axis=-1, sizes=[3, 5])
        return [a * 0.5], [a, d, p, q]

    _, ys = g.scan(step, init=[g.full(shape=["B", 4])], xs=[xs])
    for i, y in enumerate(ys):
        g.output(y, name=f"y{i}")
    before = g.ir
    after = pack_loop_io(before)
    scan = the_scan(after)
    # The carry, one whole, and the two pieces that the whole's group did not take.
    assert len(scan.outputs) == 4
    assert scan.outputs[-1].type.shape == ("T", "B", 4 if nesting == "split_of_a_split" else 8)
    feeds = {"xs": normal(3, 2, 4)}
    got = same_results(before, after, feeds)
    h, want = np.zeros((2, 4)), []
    for x in feeds["xs"]:
        a, d = np.tanh(x + h), np.exp(x)
        if nesting == "split_of_a_split":
            want.append([a[:, :3], a[:, 3:], a[:, :1], a[:, 1:3]])
        else:
            want.append([a, d, a[:, :3], np.hstack([a[:, 3:], d])])
        h = a * 0.5
    for i in range(4):
        np.testing.assert_array_equal(got[f"y{i}"], np.stack([w[i] for w in want]))


def test_nested_scans_are_packed_from_the_inside():
    g = rg.Graph("nested")
    xs = g.input("xs", ("T", "S", "B", 2))

    def outer(b, carry, x):
        def inner(bi, c, y):
            return [c[0] + y[0] * y[1]], []

        (last,), _ = b.scan(inner, init=[carry[0]], xs=[x[0], x[0]])
        return [last], [last]

    (h,), (hs,) = g.scan(outer, init=[g.input("h0", ("B", 2))], xs=[xs])
    g.output(h, name="h")
    g.output(hs, name="hs")
    before = g.ir
    after = pack_loop_io(before)
    inner_scan = the_scan(body_of(after))
    assert the_scan(body_of(before)).attrs["num_xs"] == 2
    assert inner_scan.attrs["num_xs"] == 1
    feeds = {"xs": normal(3, 4, 2, 2), "h0": normal(2, 2)}
    got = same_results(before, after, feeds)
    want = feeds["h0"] + np.cumsum((feeds["xs"] ** 2).sum(1), axis=0)
    np.testing.assert_allclose(got["hs"], want, rtol=1e-13)


# --- the whole pipeline ----------------------------------------------------------------------

PIPELINE = ["cse", "merge_pieces", "pack_loop_io", "hoist_packed", "prune_after_cse"]


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_language_models_compile_through_the_piece_stages_with_the_same_gradients(kind):
    g = rg.Graph("lm")
    rg.nn.language_model(g, vocab=7, kind=kind, hidden_sizes=[6, 5], letter_size=4)
    fast = rg.compile(g, ["loss", "logits"], loss="loss")
    plain = rg.compile(g, ["loss", "logits"], loss="loss", optimize=False)
    names = list(fast.stages)
    assert [names.index(s) for s in PIPELINE] == sorted(names.index(s) for s in PIPELINE)
    for stage in fast.stages.values():
        verify(stage)
    loops = scans(fast.ir)
    forward = [n for n in loops if not n.attrs.get("reverse")]
    backward = [n for n in loops if n.attrs.get("reverse")]
    assert len(forward) == len(backward) == 2
    param_shapes = {p.type.shape for p in fast.ir.params}
    for n in backward:
        body = n.bodies["body"]
        carries = body.inputs[: n.attrs["num_carry"]]
        assert carries and all(v.type.shape[0] == "B" for v in carries)
        assert not any(v.type.shape in param_shapes for v in carries)
    if kind == "lstm":
        assert fast.stages["pack_loop_io"] is not fast.stages["merge_pieces"]
        assert fast.stages["merge_pieces"] is not fast.stages["cse"]
        merged = [  # some stage has i, f, o in one sigmoid
            [
                ops(n.bodies["body"]).count("sigmoid")
                for n in scans(ir)
                if not n.attrs.get("reverse")
            ]
            for name, ir in fast.stages.items()
            if name.startswith("merge_pieces")
        ]
        assert [1, 1] in merged
        for n in forward:  # and with the cell input: one call for the four gates
            body_ops = ops(n.bodies["body"])
            assert body_ops.count("gate_activation") == 1 and "sigmoid" not in body_ops
        for n in scans(fast.stages["cse"]):
            if not n.attrs.get("reverse"):
                assert ops(n.bodies["body"]).count("sigmoid") == 3
    rng = np.random.default_rng(11)
    store = {k: v + rng.uniform(-0.3, 0.3, v.shape) for k, v in rg.init_params(g, 0).items()}
    feeds = rg.train.pad_sequences([[1, 2, 3, 4, 5], [2, 3], [6, 6, 6, 1]])
    want = plain.run(feeds, store)
    got = fast.run(feeds, store)
    for name in ("loss", "logits"):
        np.testing.assert_allclose(got.outputs[name], want.outputs[name], rtol=1e-12, atol=0)
    assert set(got.grads) == set(want.grads) == set(store)
    for name, grad in want.grads.items():
        np.testing.assert_allclose(got.grads[name], grad, rtol=1e-12, atol=0)


# --- random loops ----------------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_random_loop_inputs_and_outputs_pack_to_the_same_results(data):
    draw = data.draw
    sizes = draw(st.lists(st.integers(1, 3), min_size=2, max_size=4), label="sizes")
    g = rg.Graph("random_loop")
    z = g.input("z", ("T", "B", sum(sizes)))
    pieces = g.split(z, axis=-1, sizes=sizes)
    chosen = draw(st.lists(st.integers(0, len(sizes)), min_size=1, max_size=6), label="xs")
    xs = [z if i == len(sizes) else pieces[i] for i in chosen]  # duplicates and all
    width = 3

    def step(b, carry, x):
        total = carry[0]
        for v in x:
            total = total + b.sum(v, axes=[-1], keepdims=True)
        h = b.tanh(total)
        cut = b.split(h, axis=-1, sizes=[1, 2])
        both = b.concat([h, x[0]], axis=-1)
        menu = [h, cut[0], cut[1], both, x[0], x[-1], b.sigmoid(cut[1]), carry[0]]
        picks = draw(st.lists(st.integers(0, len(menu) - 1), max_size=5), label="ys")
        return [h], [menu[k] for k in picks]

    reverse = draw(st.booleans(), label="reverse")
    init = [g.full(shape=["B", width])]
    (h,), ys = g.scan(step, init=init, xs=xs, reverse=reverse)
    g.output(h, name="h")
    for i, y in enumerate(ys):
        g.output(y, name=f"y{i}")
    before = forward_identities(g.ir)  # a y given twice stays twice
    after = pack_loop_io(before)
    feeds = {"z": normal(3, 2, sum(sizes))}
    same_results(before, after, feeds)
    assert len(the_scan(after).inputs) <= len(the_scan(before).inputs)
