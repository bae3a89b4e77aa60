"""``merge_pieces``: elementwise work on the pieces of a split, or on what a concat joins,
done once on the whole array; checked by structure, against the unrewritten graph and
against numpy, and on cases where the rewrite must not happen."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rgraph as rg
from rgraph.ir import GraphIR
from rgraph.ir.passes import merge_pieces
from tests.pass_checks import same_results

RNG = np.random.default_rng(20240611)


def ops(ir: GraphIR) -> list[str]:
    return [n.op for n in ir.nodes]


def count(ir: GraphIR, op: str) -> int:
    return ops(ir).count(op)


def the(ir: GraphIR, op: str):
    found = [n for n in ir.nodes if n.op == op]
    assert len(found) == 1, f"{len(found)} {op} nodes in\n{ir}"
    return found[0]


def body_of(ir: GraphIR) -> GraphIR:
    return the(ir, "scan").bodies["body"]


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def normal(*shape):
    return RNG.standard_normal(shape)


# --- an elementwise binary op on every piece -----------------------------------------------


def test_an_op_on_the_pieces_of_two_splits_made_the_same_way_runs_once_on_the_wholes():
    g = rg.Graph("two_splits")
    x = g.input("x", ("B", 5))
    w = g.input("w", ("B", 5))
    x0, x1 = g.split(x, axis=-1, sizes=[2, 3])
    w0, w1 = g.split(w, axis=-1, sizes=[2, 3])
    g.output(g.sigmoid(x0 + w0), name="a")
    g.output(g.sigmoid(x1 + w1), name="b")
    before = g.ir
    after = merge_pieces(before)
    assert (count(before, "add"), count(before, "sigmoid"), count(before, "split")) == (2, 2, 2)
    assert the(after, "add").inputs == ("x", "w")
    assert count(after, "sigmoid") == 1
    assert the(after, "split").outputs[0].type.shape == ("B", 2)  # one split, at the end
    assert after.outputs == ("a", "b")
    feeds = {"x": normal(3, 5), "w": normal(3, 5)}
    got = same_results(before, after, feeds)
    whole = sigmoid(feeds["x"] + feeds["w"])
    np.testing.assert_allclose(got["a"], whole[:, :2], rtol=1e-14)
    np.testing.assert_allclose(got["b"], whole[:, 2:], rtol=1e-14)


def test_the_piece_can_be_either_operand():
    g = rg.Graph("right")
    x = g.input("x", (4, 6))
    w = g.input("w", (4, 6))
    xs = g.split(x, axis=0, sizes=[1, 3])
    ws = g.split(w, axis=0, sizes=[1, 3])
    for i in range(2):
        g.output(g.sub(ws[i], xs[i]), name=f"d{i}")
    before = g.ir
    after = merge_pieces(before)
    assert the(after, "sub").inputs == ("w", "x")  # the order of the operands is kept
    feeds = {"x": normal(4, 6), "w": normal(4, 6)}
    got = same_results(before, after, feeds)
    np.testing.assert_array_equal(np.concatenate([got["d0"], got["d1"]]), feeds["w"] - feeds["x"])


@pytest.mark.parametrize(
    "x_shape, axis, sizes, m_shape",
    [
        (("B", 5), -1, [2, 3], ("B", 1)),  # a mask column
        ((4, 3), 0, [1, 3], (3,)),  # lower rank: does not reach the split axis
        ((2, 6, 3), 1, [2, 2, 2], (1, 1, 3)),  # size 1 on the split axis
        ((2, 6), 1, [4, 2], ()),  # a scalar
    ],
)
def test_one_value_that_does_not_vary_along_the_axis_is_used_as_it_is(
    x_shape, axis, sizes, m_shape
):
    g = rg.Graph("bcast")
    x = g.input("x", x_shape)
    m = g.input("m", m_shape)
    pieces = g.split(x, axis=axis, sizes=sizes)
    for i, p in enumerate(pieces):
        g.output(g.eltmul(p, m).tanh(), name=f"y{i}")
    before = g.ir
    after = merge_pieces(before)
    assert count(before, "eltmul") == count(before, "tanh") == len(sizes)
    assert the(after, "eltmul").inputs == ("x", "m")
    assert count(after, "tanh") == 1

    def concrete(shape):
        return tuple(3 if d == "B" else d for d in shape)

    feeds = {"x": normal(*concrete(x_shape)), "m": normal(*concrete(m_shape))}
    got = same_results(before, after, feeds)
    parts = np.split(np.tanh(feeds["x"] * feeds["m"]), np.cumsum(sizes)[:-1], axis=axis)
    for i, part in enumerate(parts):
        np.testing.assert_allclose(got[f"y{i}"], part, rtol=1e-14)


def test_one_parameter_or_constant_per_piece_is_joined():
    g = rg.Graph("biases")
    x = g.input("x", ("B", 5))
    b0 = g.param("b0", (2,), init="uniform")
    b1 = g.const(np.array([0.5, -1.0, 2.0]))
    x0, x1 = g.split(x, axis=-1, sizes=[2, 3])
    g.output(g.relu(x0 + b0), name="r0")
    g.output(g.relu(x1 + b1), name="r1")
    before = g.ir
    after = merge_pieces(before)
    join = the(after, "concat")
    assert join.inputs == ("b0", b1.name) and join.outputs[0].type.shape == (5,)
    assert the(after, "add").inputs == ("x", join.outputs[0].name)
    assert count(after, "relu") == 1
    feeds = {"x": normal(4, 5)}
    params = {"b0": np.array([0.25, -0.75])}
    got = same_results(before, after, feeds, params)
    whole = np.maximum(feeds["x"] + np.array([0.25, -0.75, 0.5, -1.0, 2.0]), 0)
    np.testing.assert_array_equal(np.hstack([got["r0"], got["r1"]]), whole)


def test_per_piece_parameters_on_a_leading_split_axis():
    g = rg.Graph("rows")
    x = g.input("x", (5, "B"))
    b = [g.param(f"b{i}", (n, 1), init="uniform") for i, n in enumerate([3, 2])]
    pieces = g.split(x, axis=0, sizes=[3, 2])
    for i in range(2):
        g.output(g.eltmul(b[i], pieces[i]), name=f"y{i}")
    before = g.ir
    after = merge_pieces(before)
    assert count(after, "eltmul") == 1
    assert the(after, "concat").outputs[0].type.shape == (5, 1)
    params = rg.init_params(g, 0)
    same_results(before, after, {"x": normal(5, 4)}, params)


# --- where a binary op must stay on the pieces ----------------------------------------------


def _stays(g: rg.Graph, feeds, params=None) -> None:
    before = g.ir
    after = merge_pieces(before)
    assert after is before, f"rewritten:\n{after}"
    rg.Interpreter(before).run(feeds, params or {})  # the case itself is a valid graph


def test_a_value_varying_along_the_split_axis_is_not_broadcast_to_the_whole():
    g = rg.Graph("varies_rows")
    x = g.input("x", (4, 3))
    v = g.input("v", (2, 3))  # (2,3) + (2,3) per piece, but (4,3) + (2,3) does not fit
    a, b = g.split(x, axis=0, sizes=[2, 2])
    g.output(a + v, name="y0")
    g.output(b + v, name="y1")
    _stays(g, {"x": normal(4, 3), "v": normal(2, 3)})


def test_a_shared_operand_along_the_split_axis_stays():
    g = rg.Graph("varies")
    x = g.input("x", ("B", 4))
    v = g.input("v", (2,))  # (B,2) + (2,): varies along the split axis
    a, b = g.split(x, axis=-1, sizes=[2, 2])
    g.output(a + v, name="y0")
    g.output(b + v, name="y1")
    _stays(g, {"x": normal(3, 4), "v": normal(2)})


def test_a_computed_operand_per_piece_stays_since_joining_it_could_make_a_cycle():
    g = rg.Graph("cycle")
    x = g.input("x", ("B", 4))
    q0 = g.param("q0", (2,), init="uniform")
    a, b = g.split(x, axis=-1, sizes=[2, 2])
    y0 = a + q0
    y1 = b + g.tanh(y0)  # its operand depends on the other piece's result
    g.output(y0, name="y0")
    g.output(y1, name="y1")
    _stays(g, {"x": normal(3, 4)}, {"q0": normal(2)})


@pytest.mark.parametrize("kind", ["input", "computed_param"])
def test_per_piece_operands_that_are_not_parameters_or_constants_stay(kind):
    g = rg.Graph("loose")
    x = g.input("x", ("B", 5))
    if kind == "input":
        ops_ = [g.input("c0", (2,)), g.input("c1", (3,))]
    else:
        ops_ = [g.tanh(g.param("c0", (2,))), g.tanh(g.param("c1", (3,)))]
    a, b = g.split(x, axis=-1, sizes=[2, 3])
    g.output(a * ops_[0], name="y0")
    g.output(b * ops_[1], name="y1")
    feeds = {"x": normal(2, 5)}
    params = {}
    if kind == "input":
        feeds |= {"c0": normal(2), "c1": normal(3)}
    else:
        params = {"c0": normal(2), "c1": normal(3)}
    _stays(g, feeds, params)


def test_per_piece_parameters_broadcasting_along_the_axis_stay():
    g = rg.Graph("ones")
    x = g.input("x", ("B", 5))
    c = [g.param(f"c{i}", (1,)) for i in range(2)]  # (B,2) * (1,): sizes 1, 1 not 2, 3
    a, b = g.split(x, axis=-1, sizes=[2, 3])
    g.output(a * c[0], name="y0")
    g.output(b * c[1], name="y1")
    _stays(g, {"x": normal(2, 5)}, {"c0": normal(1), "c1": normal(1)})


def test_a_missing_piece_keeps_a_binary_op_on_the_pieces():
    g = rg.Graph("missing")
    x = g.input("x", ("B", 6))
    w = g.input("w", ("B", 6))
    xs = g.split(x, axis=-1, sizes=[2, 2, 2])
    ws = g.split(w, axis=-1, sizes=[2, 2, 2])
    g.output(xs[0] * ws[0], name="y0")
    g.output(xs[1] * ws[1], name="y1")
    g.output(xs[2] - ws[2], name="y2")  # another op on the last piece
    _stays(g, {"x": normal(2, 6), "w": normal(2, 6)})


def test_splits_with_different_sizes_or_axes_are_not_paired():
    g = rg.Graph("unpaired")
    x = g.input("x", (2, 2))
    w = g.input("w", (1, 4))
    xs = g.split(x, axis=0, sizes=[1, 1])  # (1, 2) pieces of a (2, 2)
    ws = g.split(w, axis=1, sizes=[2, 2])  # (1, 2) pieces of a (1, 4)
    g.output(xs[0] + ws[0], name="y0")
    g.output(xs[1] + ws[1], name="y1")
    _stays(g, {"x": normal(2, 2), "w": normal(1, 4)})


def test_a_split_of_another_width_is_not_paired():
    g = rg.Graph("widths")
    x = g.input("x", ("B", 4))
    w = g.input("w", ("B", 2))
    xs = g.split(x, axis=-1, sizes=[2, 2])
    ws = g.split(w, axis=-1, sizes=[1, 1])  # (B, 1) pieces broadcast to (B, 2)
    g.output(xs[0] * ws[0], name="y0")
    g.output(xs[1] * ws[1], name="y1")
    _stays(g, {"x": normal(3, 4), "w": normal(3, 2)})


def test_a_piece_broadcast_to_a_larger_result_stays():
    g = rg.Graph("grows")
    x = g.input("x", ("B", 4))
    z = g.input("z", (3, "B", 2))
    a, b = g.split(x, axis=-1, sizes=[2, 2])
    g.output(a + z, name="y0")
    g.output(b + z, name="y1")
    _stays(g, {"x": normal(2, 4), "z": normal(3, 2, 2)})


# --- a unary op on consecutive pieces -------------------------------------------------------


@pytest.mark.parametrize(
    "fns, window",
    [
        # LSTM gates: sigmoid on i, f, o (the first three pieces), tanh on g.
        (["sigmoid", "sigmoid", "sigmoid", "tanh"], (0, 6)),
        (["tanh", "sigmoid", "sigmoid", "exp"], (1, 6)),
        (["tanh", "exp", "sigmoid", "sigmoid"], (3, 10)),
        (["sigmoid"] * 4, None),  # every piece: on the whole, no slice
    ],
)
def test_a_unary_op_on_consecutive_pieces_runs_once_on_a_slice(fns, window):
    g = rg.Graph("gates")
    x = g.input("x", ("B", 10))
    pieces = g.split(x, axis=1, sizes=[1, 2, 3, 4])
    for i, (fn, p) in enumerate(zip(fns, pieces)):
        g.output(getattr(g, fn)(p), name=f"y{i}")
    before = g.ir
    after = merge_pieces(before)
    assert count(before, "sigmoid") >= 2
    assert count(after, "sigmoid") == 1
    if window is None:
        assert count(after, "slice") == 0 and the(after, "sigmoid").inputs == ("x",)
    else:
        cut = next(n for n in after.nodes if n.op == "slice" and n.outputs[0].type.shape[1] > 1)
        assert (cut.attrs["start"], cut.attrs["stop"]) == window
        assert the(after, "sigmoid").inputs == (cut.outputs[0].name,)
    feeds = {"x": normal(3, 10)}
    got = same_results(before, after, feeds)
    ref = {"sigmoid": sigmoid, "tanh": np.tanh, "exp": np.exp}
    for i, part in enumerate(np.split(feeds["x"], [1, 3, 6], axis=1)):
        np.testing.assert_allclose(got[f"y{i}"], ref[fns[i]](part), rtol=1e-14)


def test_a_unary_op_on_pieces_that_are_not_consecutive_stays():
    g = rg.Graph("gaps")
    x = g.input("x", ("B", 6))
    a, b, c = g.split(x, axis=-1, sizes=[2, 2, 2])
    g.output(g.sigmoid(a), name="ya")
    g.output(g.tanh(b), name="yb")
    g.output(g.sigmoid(c), name="yc")
    _stays(g, {"x": normal(2, 6)})


def test_a_single_piece_under_a_unary_op_stays():
    g = rg.Graph("single")
    x = g.input("x", ("B", 6))
    a, b = g.split(x, axis=-1, sizes=[2, 4])
    g.output(g.sigmoid(a), name="ya")
    g.output(g.tanh(b), name="yb")
    _stays(g, {"x": normal(2, 6)})


# --- concat of results of one op ------------------------------------------------------------


def test_concat_of_one_unary_op_becomes_the_op_on_the_concat():
    g = rg.Graph("cat_unary")
    parts = [g.input(f"a{i}", ("B", n)) for i, n in enumerate([1, 2, 3])]
    g.output(g.concat([g.tanh(p) for p in parts], axis=-1), name="y")
    before = g.ir
    after = merge_pieces(before)
    assert count(before, "tanh") == 3 and count(after, "tanh") == 1
    join = the(after, "concat")
    assert join.inputs == ("a0", "a1", "a2")
    assert the(after, "tanh").inputs == (join.outputs[0].name,)
    feeds = {f"a{i}": normal(2, n) for i, n in enumerate([1, 2, 3])}
    got = same_results(before, after, feeds)
    np.testing.assert_array_equal(got["y"], np.tanh(np.hstack(list(feeds.values()))))


def test_concat_of_a_binary_op_on_all_pieces_of_a_split_reads_the_split_input():
    g = rg.Graph("cat_binary")
    x = g.input("x", (5, "B"))
    c = [g.input(f"c{i}", (n, "B")) for i, n in enumerate([2, 3])]
    pieces = g.split(x, axis=0, sizes=[2, 3])
    g.output(g.concat([pieces[i] * c[i] for i in range(2)], axis=0), name="y")
    before = g.ir
    after = merge_pieces(before)
    assert count(before, "eltmul") == 2 and count(after, "eltmul") == 1
    assert count(after, "split") == 0  # the pieces are the split's input, read whole
    join = the(after, "concat")
    assert join.inputs == ("c0", "c1")
    assert the(after, "eltmul").inputs == ("x", join.outputs[0].name)
    feeds = {"x": normal(5, 2), "c0": normal(2, 2), "c1": normal(3, 2)}
    got = same_results(before, after, feeds)
    np.testing.assert_array_equal(got["y"], feeds["x"] * np.vstack([feeds["c0"], feeds["c1"]]))


def test_concat_of_an_op_on_all_pieces_of_two_splits_is_one_call():
    g = rg.Graph("cat_pieces")
    p = g.input("p", ("B", 5))
    q = g.input("q", ("B", 5))
    ps = g.split(p, axis=-1, sizes=[2, 3])
    qs = g.split(q, axis=-1, sizes=[2, 3])
    g.output(g.concat([ps[0] * qs[0], ps[1] * qs[1]], axis=-1), name="y")
    before = g.ir
    after = merge_pieces(before)
    assert count(after, "eltmul") == 1 and the(after, "eltmul").inputs == ("p", "q")
    feeds = {"p": normal(3, 5), "q": normal(3, 5)}
    got = same_results(before, after, feeds)
    np.testing.assert_array_equal(got["y"], feeds["p"] * feeds["q"])


def test_concat_of_a_binary_op_on_unrelated_operands_stays_as_it_is_no_fewer_calls():
    g = rg.Graph("even")
    a = [g.input(f"a{i}", ("B", 2)) for i in range(2)]
    b = [g.input(f"b{i}", ("B", 2)) for i in range(2)]
    g.output(g.concat([a[0] + b[0], a[1] + b[1]], axis=-1), name="y")  # 2 adds + 1 concat
    _stays(g, {f"{k}{i}": normal(2, 2) for k in "ab" for i in range(2)})


def test_concat_of_three_binary_ops_on_unrelated_operands_is_fewer_calls():
    g = rg.Graph("three")
    a = [g.input(f"a{i}", ("B", 2)) for i in range(3)]
    b = [g.input(f"b{i}", ("B", 2)) for i in range(3)]
    g.output(g.concat([a[i] - b[i] for i in range(3)], axis=-1), name="y")
    before = g.ir
    after = merge_pieces(before)
    assert count(after, "sub") == 1 and count(after, "concat") == 2
    feeds = {f"{k}{i}": normal(2, 2) for k in "ab" for i in range(3)}
    got = same_results(before, after, feeds)
    want = np.hstack([feeds[f"a{i}"] for i in range(3)]) - np.hstack(
        [feeds[f"b{i}"] for i in range(3)]
    )
    np.testing.assert_array_equal(got["y"], want)


@pytest.mark.parametrize("why", ["other_use", "output", "other_op", "not_elementwise", "broadcast"])
def test_concat_parts_that_cannot_be_merged_stay(why):
    g = rg.Graph("cat_stay")
    a = [g.input(f"a{i}", ("B", 2)) for i in range(3)]
    parts = [g.tanh(p) for p in a]
    if why == "other_use":
        g.output(g.sum(parts[1]), name="extra")
    elif why == "output":
        g.output(parts[2])
    elif why == "other_op":
        parts[0] = g.exp(a[0])
    elif why == "not_elementwise":
        parts = [g.softmax(p, axis=0) for p in a]  # not elementwise at all
    else:
        s = g.input("s", ())
        parts = [g.add(p, s) for p in a]  # the scalar is not joined: types differ
    g.output(g.concat(parts, axis=-1), name="y")
    feeds = {f"a{i}": normal(2, 2) for i in range(3)}
    if why == "broadcast":
        feeds["s"] = normal()
    _stays(g, feeds)


def test_concat_of_all_the_pieces_of_a_split_in_order_is_the_split_input():
    # After the rewrite of eltmul(p_i, q_i) into eltmul(p, q) and a split, the concat of
    # that split's pieces is that product (as after pack_loop_io splits a loop output).
    g = rg.Graph("resplit")
    p = g.input("p", ("B", 5))
    q = g.input("q", ("B", 5))
    ps = g.split(p, axis=-1, sizes=[2, 3])
    qs = g.split(q, axis=-1, sizes=[2, 3])
    g.output(g.concat([ps[0] * qs[0], ps[1] * qs[1]], axis=-1), name="y")
    after = merge_pieces(g.ir)
    assert count(after, "eltmul") == 1
    assert count(after, "split") == count(after, "concat") == 0, str(after)


# --- a split with one used piece -----------------------------------------------------------


# --- reductions of every piece --------------------------------------------------------------


@pytest.mark.parametrize(
    "op, axes, keepdims",
    [("sum", [0, 1], True), ("sum", [0, 1], False), ("mean", [1], False), ("sum", [0], True)],
)
def test_the_same_reduction_of_every_piece_is_one_reduction_split(op, axes, keepdims):
    g = rg.Graph("bias_grads")
    x = g.input("x", ("T", "B", 9))
    parts = g.split(x, axis=2, sizes=[2, 3, 4])
    for k, part in enumerate(parts):
        g.output(g.op(op, part, axes=axes, keepdims=keepdims), name=f"r{k}")
    before = g.ir
    after = merge_pieces(before)
    (reduction,) = [n for n in after.nodes if n.op == op]
    assert reduction.inputs == ("x",)
    assert count(after, "split") == 1  # of the reduction (the outputs' identities merge too)
    feeds = {"x": normal(4, 3, 9)}
    got = same_results(before, after, feeds)
    fn = np.sum if op == "sum" else np.mean
    for k, (lo, hi) in enumerate([(0, 2), (2, 5), (5, 9)]):
        want = fn(feeds["x"][..., lo:hi], axis=tuple(axes), keepdims=keepdims)
        np.testing.assert_allclose(got[f"r{k}"], want, rtol=1e-14)


@pytest.mark.parametrize("why", ["split_axis", "missing_piece", "other_axes"])
def test_reductions_over_the_split_axis_or_not_of_every_piece_stay(why):
    g = rg.Graph("stays")
    x = g.input("x", ("B", 6))
    parts = g.split(x, axis=1, sizes=[2, 4])
    axes = {"split_axis": [[1], [1]], "missing_piece": [[0]], "other_axes": [[0], None]}[why]
    for k, ax in enumerate(axes):
        g.output(g.sum(parts[k], axes=ax), name=f"r{k}")
    before = g.ir
    after = merge_pieces(before)
    assert count(after, "sum") == len(axes)
    assert all(n.inputs[0] != "x" for n in after.nodes if n.op == "sum")
    same_results(before, after, {"x": normal(3, 6)})


def test_all_the_pieces_of_a_split_among_a_concats_inputs_are_its_input():
    g = rg.Graph("some_pieces")
    x = g.input("x", ("B", 5))
    y = g.input("y", ("B", 2))
    a, b = g.split(x, axis=1, sizes=[2, 3])
    c, d = g.split(y, axis=1, sizes=[1, 1])
    g.output(g.concat([y, a, b, y, d, c], axis=1), name="z")  # (d, c): not in order
    before = g.ir
    after = merge_pieces(before)
    assert the(after, "concat").inputs == ("y", "x", "y", d.name, c.name)
    feeds = {"x": normal(3, 5), "y": normal(3, 2)}
    got = same_results(before, after, feeds)
    want = np.concatenate([feeds["y"], feeds["x"], feeds["y"], feeds["y"][:, ::-1]], axis=1)
    np.testing.assert_array_equal(got["z"], want)


@pytest.mark.parametrize("used, window", [(0, (0, 2)), (1, (2, 5)), (2, (5, 9))])
def test_a_split_with_one_used_piece_becomes_a_slice(used, window):
    g = rg.Graph("lone")
    x = g.input("x", (9, "B"))
    pieces = g.split(x, axis=0, sizes=[2, 3, 4])
    g.output(g.tanh(pieces[used]) * 2.0, name="y")
    before = g.ir
    after = merge_pieces(before)
    assert count(after, "split") == 0
    cut = the(after, "slice")
    assert (cut.attrs["start"], cut.attrs["stop"]) == window and cut.inputs == ("x",)
    assert cut.outputs[0].name == pieces[used].name
    feeds = {"x": normal(9, 3)}
    got = same_results(before, after, feeds)
    np.testing.assert_array_equal(got["y"], np.tanh(feeds["x"][slice(*window)]) * 2.0)


@pytest.mark.parametrize("axis", [1, -1])
def test_a_piece_split_again_along_the_same_axis_is_split_with_the_others(axis):
    g = rg.Graph("nested")
    x = g.input("x", ("B", 9))
    a, b = g.split(x, axis=axis, sizes=[6, 3])
    p, q, r = g.split(a, axis=1, sizes=[1, 2, 3])
    g.output(g.concat(r, b, p, q, axis=1), name="y")  # out of order: the concat stays
    before = g.ir
    after = merge_pieces(before)
    split = the(after, "split")
    assert split.inputs == ("x",) and split.attrs["sizes"] == [1, 2, 3, 3]
    assert [o.name for o in split.outputs] == [p.name, q.name, r.name, b.name]
    feeds = {"x": normal(2, 9)}
    got = same_results(before, after, feeds)
    want = feeds["x"][:, [3, 4, 5, 6, 7, 8, 0, 1, 2]]
    np.testing.assert_array_equal(got["y"], want)


@pytest.mark.parametrize("why", ["other_axis", "piece_used_too", "piece_is_output"])
def test_a_piece_split_again_stays_when_it_is_more_than_that(why):
    g = rg.Graph("nested_stays")
    x = g.input("x", (4, 9))
    a, b = g.split(x, axis=1, sizes=[6, 3])
    axis, sizes = (0, [1, 3]) if why == "other_axis" else (1, [2, 4])
    p, q = g.split(a, axis=axis, sizes=sizes)
    total = g.sum(g.tanh(p)) + g.sum(g.tanh(q)) + g.sum(b)
    if why == "piece_used_too":
        total = total + g.sum(g.exp(a))
    if why == "piece_is_output":
        g.output(a)
    g.output(total, name="y")
    before = g.ir
    after = merge_pieces(before)
    assert count(after, "split") == 2
    same_results(before, after, {"x": normal(4, 9)})


def test_a_piece_that_is_an_output_counts_as_used():
    g = rg.Graph("lone_out")
    x = g.input("x", ("B", 5))
    a, b = g.split(x, axis=-1, sizes=[2, 3])
    g.output(b)  # the piece itself, under its own name
    before = g.ir
    after = merge_pieces(before)
    assert ops(after) == ["slice"] and after.outputs == (b.name,)
    feeds = {"x": normal(2, 5)}
    got = same_results(before, after, feeds)
    np.testing.assert_array_equal(got[b.name], feeds["x"][:, 2:])
    g2 = rg.Graph("two_used")
    x = g2.input("x", ("B", 5))
    a, b = g2.split(x, axis=-1, sizes=[2, 3])
    g2.output(b)
    g2.output(g2.sum(a), name="s")
    _stays(g2, feeds)


# --- in loop bodies, and names ---------------------------------------------------------------


def lstm_scan(g: rg.Graph, hidden: int = 3):
    xs = g.input("xs", ("T", "B", 4 * hidden))
    W = g.param("W", (hidden, 4 * hidden), init="uniform", low=-0.5, high=0.5)
    b = g.param("b", (4 * hidden,), init="uniform")

    def step(body, carry, x):
        h, c = carry
        i, f, o, gg = body.split(x[0] + h @ W + b, axis=-1, sizes=[hidden] * 4)
        c = body.sigmoid(f) * c + body.sigmoid(i) * body.tanh(gg)
        h = body.sigmoid(o) * body.tanh(c)
        return [h, c], [h]

    zero = g.full(shape=["B", hidden])
    (h, c), (hs,) = g.scan(step, init=[zero, zero], xs=[xs])
    g.output(h, name="h")
    g.output(c, name="c")
    g.output(hs, name="hs")
    return g


def lstm_numpy(xs, params, hidden):
    h = np.zeros((xs.shape[1], hidden))
    c = np.zeros_like(h)
    hs = []
    for x in xs:
        z = x + h @ params["W"] + params["b"]
        i, f, o = (sigmoid(z[:, k * hidden : (k + 1) * hidden]) for k in range(3))
        c = f * c + i * np.tanh(z[:, 3 * hidden :])
        h = o * np.tanh(c)
        hs.append(h)
    return h, c, np.stack(hs)


def test_pieces_merge_inside_a_scan_body():
    g = lstm_scan(rg.Graph("lstm"))
    before = g.ir
    after = merge_pieces(before)
    b_before, b_after = body_of(before), body_of(after)
    assert count(b_before, "sigmoid") == 3 and count(b_after, "sigmoid") == 1
    assert count(b_after, "tanh") == 2  # g's tanh (a lone piece) and tanh(c)
    # i, f, o: one slice, one sigmoid, one split; g, now the one used piece: a slice
    cuts = [n for n in b_after.nodes if n.op == "slice"]
    assert [(n.attrs["start"], n.attrs["stop"]) for n in cuts] == [(0, 9), (9, 12)]
    gates = cuts[0]
    assert the(b_after, "split").inputs == (the(b_after, "sigmoid").outputs[0].name,)
    assert the(b_after, "sigmoid").inputs == (gates.outputs[0].name,)
    assert b_after.inputs == b_before.inputs
    assert len(b_after.outputs) == len(b_before.outputs)
    assert ops(after) == ops(before)  # the outer graph is as it was
    params = rg.init_params(g, 7)
    feeds = {"xs": normal(5, 2, 12)}
    got = same_results(before, after, feeds, params)
    want = lstm_numpy(feeds["xs"], params, 3)
    for name, ref in zip(("h", "c", "hs"), want):
        np.testing.assert_allclose(got[name], ref, rtol=1e-12)
    assert merge_pieces(after) is after  # nothing left to merge


def test_a_graph_without_splits_concats_or_loops_is_returned_as_it_is():
    g = rg.Graph("plain")
    x = g.input("x", (3,))
    g.output(x.tanh() * 2.0, name="y")
    ir = g.ir
    assert merge_pieces(ir) is ir


# --- random pieces ---------------------------------------------------------------------------

FNS = {"sigmoid": sigmoid, "tanh": np.tanh, "exp": np.exp, "neg": np.negative}


@settings(max_examples=40, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 3), min_size=2, max_size=5),
    data=st.data(),
)
def test_random_ops_on_random_pieces_compute_the_same(sizes, data):
    n = len(sizes)
    g = rg.Graph("random")
    x = g.input("x", ("B", sum(sizes)))
    w = g.input("w", ("B", sum(sizes)))
    xs = g.split(x, axis=-1, sizes=sizes)
    ws = g.split(w, axis=-1, sizes=sizes)
    bias = [g.param(f"b{i}", (s,), init="uniform") for i, s in enumerate(sizes)]
    outs = []
    for i in range(n):
        kind = data.draw(st.sampled_from(["fn", "w", "bias", "none"]), label=f"kind{i}")
        v = xs[i]
        if kind == "w":
            v = v * ws[i]
        elif kind == "bias":
            v = v + bias[i]
        if kind != "none":
            v = getattr(g, data.draw(st.sampled_from(sorted(FNS)), label=f"fn{i}"))(v)
        outs.append(v)
    if data.draw(st.booleans(), label="concat"):
        g.output(g.concat(outs, axis=-1), name="y")
    else:
        for i, v in enumerate(outs):
            g.output(v, name=f"y{i}")
    before = g.ir
    after = merge_pieces(before)
    params = rg.init_params(g, 1)
    same_results(before, after, {"x": normal(2, sum(sizes)), "w": normal(2, sum(sizes))}, params)
    assert sum(op in FNS for op in ops(after)) <= sum(op in FNS for op in ops(before))


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_random_graphs_of_splits_concats_and_elementwise_ops_compute_the_same(data):
    """Values of shape (B, w); each step splits one, concats some, or applies an op."""
    draw = data.draw
    g = rg.Graph("random_graph")
    pool = [g.input("x", ("B", 6)), g.input("w", ("B", 6))]
    mask = g.input("m", ("B", 1))
    consts = {}
    for step in range(draw(st.integers(2, 10), label="steps")):
        kind = draw(st.sampled_from(["split", "concat", "unary", "binary"]), label=f"k{step}")
        v = draw(st.sampled_from(pool), label=f"v{step}")
        width = v.shape[-1]
        if kind == "split" and width > 1:
            cut = sorted(draw(st.sets(st.integers(1, width - 1), min_size=1), label=f"c{step}"))
            sizes = [b - a for a, b in zip([0, *cut], [*cut, width])]
            pool.extend(g.split(v, axis=-1, sizes=sizes))
        elif kind == "concat":
            parts = draw(st.lists(st.sampled_from(pool), min_size=2, max_size=4), label=f"p{step}")
            pool.append(g.concat(parts, axis=-1))
        elif kind == "unary":
            pool.append(getattr(g, draw(st.sampled_from(["tanh", "sigmoid", "neg"])))(v))
        else:
            same = [u for u in pool if u.shape == v.shape]
            other = draw(st.sampled_from([*same, mask, "const"]), label=f"o{step}")
            if isinstance(other, str):
                if width not in consts:
                    consts[width] = g.const(np.linspace(-1, 1, width))
                other = consts[width]
            op = draw(st.sampled_from(["add", "sub", "eltmul"]), label=f"op{step}")
            pool.append(
                getattr(g, op)(v, other) if draw(st.booleans()) else getattr(g, op)(other, v)
            )
    for i, v in enumerate(pool[2:]):
        if draw(st.booleans(), label=f"out{i}") or i == len(pool) - 3:
            g.output(v, name=f"y{i}")
    before = g.ir
    after = merge_pieces(before)
    feeds = {"x": normal(2, 6), "w": normal(2, 6), "m": normal(2, 1)}
    same_results(before, after, feeds)
    elementwise = {"tanh", "sigmoid", "neg", "add", "sub", "eltmul", "identity"}
    assert sum(op in elementwise for op in ops(after)) <= sum(
        op in elementwise for op in ops(before)
    )


def test_a_chain_of_concats_of_split_pieces_is_read_as_its_source():
    g = rg.Graph("chain")
    x = g.input("x", ("B", 6))
    a, b = g.split(x, axis=-1, sizes=[2, 4])
    c, d = g.split(g.concat([a, b], axis=-1), axis=-1, sizes=[3, 3])
    g.output(g.concat([c, d], axis=-1).tanh(), name="y")
    after = merge_pieces(g.ir)
    assert [n.op for n in after.nodes] == ["tanh", "identity"]  # no split, concat or copy
    x_value = normal(2, 6)
    got = same_results(g.ir, after, {"x": x_value})
    np.testing.assert_allclose(got["y"], np.tanh(x_value), rtol=1e-15)


@pytest.mark.parametrize("perm", [None, [1, 0]])
def test_a_concat_of_transposes_is_the_transpose_of_a_concat(perm):
    g = rg.Graph("weights")
    ws = [g.param(f"W{i}", (2 + i, 3), init="normal") for i in range(3)]  # as W_gate
    joined = g.concat([g.transpose(w, perm=perm) for w in ws], axis=1)  # (3, 9)
    g.output(joined, name="y")
    after = merge_pieces(g.ir)
    (c,) = [n for n in after.nodes if n.op == "concat"]
    assert c.inputs == ("W0", "W1", "W2") and c.attrs.get("axis", 0) == 0  # contiguous rows
    params = {f"W{i}": normal(2 + i, 3) for i in range(3)}
    got = same_results(g.ir, after, {}, params)
    np.testing.assert_array_equal(got["y"], np.concatenate([p.T for p in params.values()], 1))
