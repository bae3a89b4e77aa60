"""``tile`` and ``map``: elementwise chains over whole sequences, run block by block."""

from __future__ import annotations

import re

import numpy as np
import pytest

import rgraph as rg
from rgraph.errors import ExecutionError, ShapeError
from rgraph.ir.graph import GraphIR
from rgraph.ir.ops import control
from rgraph.ir.passes import tile
from rgraph.ir.verify import verify
from tests.pass_checks import same_results

RNG = np.random.default_rng(5)


def maps(ir: GraphIR) -> list:
    return [n for n in ir.nodes if n.op == "map"]


def held(node) -> set[str]:
    """The values a map's body makes."""
    return {o.name for n in node.bodies["body"].nodes for o in n.outputs}


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of one or two rows for the small graphs below."""
    monkeypatch.setattr(control, "MAP_BLOCK_BYTES", 1000)


def derivatives() -> tuple[rg.Graph, dict]:
    """An LSTM-like derivative chain over whole sequences, and a sum that reads it."""
    g = rg.Graph("chain")
    y = g.input("y", ("T", 3, 4))
    c = g.input("c", ("T", 3, 1))
    w = g.input("w", (4,))
    slope = y * (1.0 - y)
    both = g.concat([slope, g.tanh(y) * w], axis=-1)
    product = both * c
    g.output(product, name="d")
    g.output(g.sum(slope, axes=[0]), name="s")
    return g, {"slope": slope.name, "product": product.name}


def feeds(T: int) -> dict:
    return {
        "y": RNG.uniform(-1, 1, (T, 3, 4)),
        "c": RNG.uniform(-1, 1, (T, 3, 1)),
        "w": RNG.uniform(-1, 1, 4),
    }


def test_a_chain_becomes_one_map_that_returns_what_is_read_outside():
    g, names = derivatives()
    after = tile(g.ir)
    (node,) = maps(after)
    body = node.bodies["body"]
    assert node.attrs == {"dim": "T", "num_xs": 2}
    assert [v.name for v in body.inputs[:2]] == ["y", "c"]  # the xs, then the rest whole
    assert [v.type.shape for v in body.inputs[2:]] == [(), (4,)]
    assert [n.op for n in body.nodes] == ["sub", "eltmul", "tanh", "eltmul", "concat", "eltmul"]
    # The slope is read by the sum outside, the product by the output's identity.
    assert list(body.outputs) == [names["slope"], names["product"]]
    assert [n.op for n in after.nodes] == ["map", "identity", "sum", "identity"]
    same_results(g.ir, after, feeds(5))


@pytest.mark.parametrize("T", [1, 2, 5, 7])
def test_blocks_of_rows_give_the_same_bits_as_whole_arrays(small_blocks, T):
    g, _ = derivatives()
    after = tile(g.ir)
    f = feeds(T)
    want = rg.Interpreter(g.ir).run(dict(f))
    got = rg.Interpreter(after).run(dict(f))
    for name in want:
        np.testing.assert_array_equal(got[name], want[name])


def test_no_map_holds_a_path_through_a_node_outside_it():
    g = rg.Graph("around")
    x = g.input("x", ("T", 3, 4))
    a = g.tanh(x) * 2.0
    total = g.sum(a, axes=[0])  # (3, 4): what reads it comes after the sum
    b = a * total + a
    g.output(b * b, name="out")
    after = tile(g.ir)
    verify(after)  # a cycle would not schedule
    assert len(maps(after)) == 2
    assert not any(a.name in held(n) and b.name in held(n) for n in maps(after))
    same_results(g.ir, after, {"x": RNG.uniform(-1, 1, (6, 3, 4))})


def test_a_node_joins_the_group_it_can_when_joining_both_makes_a_cycle():
    g = rg.Graph("fork")
    x = g.input("x", ("T", 3, 4))
    a = g.tanh(x) * 2.0  # group 1
    total = g.sum(a, axes=[0])
    b = g.exp(x * total)  # group 2, after the sum
    g.output(a * b, name="out")  # reads both groups: it joins one
    after = tile(g.ir)
    assert len(maps(after)) == 2 and "eltmul" not in [n.op for n in after.nodes]
    same_results(g.ir, after, {"x": RNG.uniform(-1, 1, (4, 3, 4))})


def test_no_map_holds_a_path_through_another_group():
    # x1 -> s -> a2 puts a's group after x's; q then reads a's group, so x2, which
    # reads q, would close a cycle x -> a -> x if it joined x1 (hypothesis found it).
    g = rg.Graph("groups")
    x = g.input("x", ("T", 3, 4))
    x1 = g.tanh(x) * 2.0
    s = g.sum(x1, axes=[0])
    a1 = g.exp(x) + 1.0
    a2 = a1 * s - x
    q = g.sum(a1, axes=[0])
    x2 = x1 * q + x1
    g.output(a2 + x2, name="out")
    after = tile(g.ir)
    verify(after)
    assert not any(x1.name in held(n) and x2.name in held(n) for n in maps(after))
    same_results(g.ir, after, {"x": RNG.uniform(-1, 1, (4, 3, 4))})


def test_a_split_of_an_outside_value_stays_outside():
    g = rg.Graph("pieces")
    z = g.input("z", ("T", 2, 6))
    i, f = g.split(z, axis=-1, sizes=[4, 2])
    g.output(g.sigmoid(i) * (1.0 - i), name="a")
    g.output(f * f + f, name="b")
    after = tile(g.ir)
    assert [n.op for n in after.nodes if n.op == "split"] == ["split"]
    assert maps(after) and all(n.op != "split" for m in maps(after) for n in m.bodies["body"].nodes)
    same_results(g.ir, after, {"z": RNG.uniform(-1, 1, (3, 2, 6))})


def test_a_graph_output_between_two_ops_does_not_keep_them_apart():
    g = rg.Graph("named")
    x = g.input("x", ("T", 2, 3))
    y = g.output(g.tanh(x), name="y")  # y = identity(tanh(x))
    g.output(y * y + 1.0, name="z")
    after = tile(g.ir)
    (node,) = maps(after)
    assert [n.op for n in node.bodies["body"].nodes] == ["tanh", "eltmul", "add"]
    same_results(g.ir, after, {"x": RNG.uniform(-1, 1, (3, 2, 3))})


def test_static_shapes_and_lone_ops_are_left_alone():
    g = rg.Graph("static")
    x = g.input("x", (5, 3))
    g.output(g.tanh(x) * 2.0, name="y")
    h = rg.Graph("lone")
    h.output(h.tanh(h.input("x", ("T", 3))), name="y")
    for ir in (g.ir, h.ir):
        assert tile(ir) is ir


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_a_recurrent_backward_is_tiled_and_its_gradients_agree(small_blocks, kind):
    g = rg.Graph(kind)
    xs = g.input("xs", ("T", "B", 3))
    mask = g.input("mask", ("T", "B"))
    out = rg.nn.recurrent(g, kind, xs, [4, 4], mask=mask)
    g.output(g.sum(out.ys * out.ys), name="loss")
    params = rg.init_params(g, seed=3)
    fast = rg.compile(g, loss="loss")
    plain = rg.compile(g, loss="loss", optimize=False)
    assert maps(fast.stages["tile"])  # the derivatives after the forward loops
    for T in (1, 4, 7):
        f = {"xs": RNG.uniform(-1, 1, (T, 2, 3)), "mask": (RNG.random((T, 2)) < 0.8) * 1.0}
        got, want = fast.run(f, params), plain.run(f, params)
        np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-12)
        for name in want.grads:
            np.testing.assert_allclose(got.grads[name], want.grads[name], rtol=1e-10, atol=1e-12)


# --- the map op: what its body may hold ---------------------------------------------------


def body_of(build) -> GraphIR:
    b = rg.Graph("rows")
    x = b.input("x", ("T", 2, 3))
    v = b.input("v", ("T", 2, 3))
    w = b.input("w", (3,))
    b.output(build(b, x, v, w), name="out")
    return b.ir


def map_of(body: GraphIR, num_xs: int = 2) -> rg.Graph:
    g = rg.Graph("outer")
    x, v = g.input("x", ("T", 2, 3)), g.input("v", ("T", 2, 3))
    w = g.input("w", (3,))
    g.output(g.op("map", x, v, w, body=body, dim="T", num_xs=num_xs), name="y")
    return g


def test_a_map_computes_its_body_in_blocks(small_blocks):
    g = map_of(body_of(lambda b, x, v, w: b.tanh(x) * w + (1.0 - v)))
    f = {k: RNG.uniform(-1, 1, s) for k, s in [("x", (5, 2, 3)), ("v", (5, 2, 3)), ("w", (3,))]}
    got = rg.compile(g, ["y"]).run(f)["y"]
    np.testing.assert_allclose(got, np.tanh(f["x"]) * f["w"] + (1.0 - f["v"]), rtol=1e-15)


def test_a_map_in_blocks_reads_pieces_of_the_rows_it_reads_and_writes(small_blocks):
    b = rg.Graph("pieces")
    x, v = b.input("x", ("T", 2, 3)), b.input("v", ("T", 2, 3))
    first, rest = b.split(x, axis=2, sizes=[1, 2])  # pieces of the xs' blocks
    both = b.concat([rest, first, v], axis=2)  # written into the ys' blocks ...
    left, _ = b.split(both, axis=2, sizes=[4, 2])  # ... and pieces of them read
    b.output(both, name="both")
    b.output(left * 2.0, name="left")
    g = rg.Graph("outer")
    xs = [g.input("x", ("T", 2, 3)), g.input("v", ("T", 2, 3))]
    made = g.op("map", *xs, body=b.ir, dim="T", num_xs=2)
    g.output(made[0], name="both")
    g.output(made[1], name="left")
    f = {k: RNG.uniform(-1, 1, (9, 2, 3)) for k in ("x", "v")}
    got = rg.compile(g, ["both", "left"]).run(f).outputs
    want = np.concatenate([f["x"][..., 1:], f["x"][..., :1], f["v"]], axis=2)
    np.testing.assert_array_equal(got["both"], want)
    np.testing.assert_array_equal(got["left"], want[..., :4] * 2.0)


def test_an_error_in_a_block_names_its_rows(small_blocks):
    g = map_of(body_of(lambda b, x, v, w: b.log(x) * w + v))
    prog = rg.compile(g, ["y"])
    f = {k: RNG.uniform(1, 2, s) for k, s in [("x", (5, 2, 3)), ("v", (5, 2, 3)), ("w", (3,))]}
    f["x"][3, 1, 2] = -1.0  # row 3: log of a negative number
    with np.errstate(invalid="raise"), pytest.raises(ExecutionError) as caught:
        prog.run(f)
    message = str(caught.value)
    start, stop = (int(k) for k in re.search(r"at map rows (\d+):(\d+)", message).groups())
    assert start <= 3 < stop < 5  # a block of rows holding row 3, not all of them
    assert "= log(x)" in message and "map(" in message


@pytest.mark.parametrize(
    "build",
    [
        lambda b, x, v, w: x - b.sum(x, axes=[0], keepdims=True),  # rows summed
        lambda b, x, v, w: b.op("shift", x, b.full(shape=[2, 3])),  # row t reads row t-1
        lambda b, x, v, w: b.split(b.concat([x, v], axis=0), sizes=["T", "T"])[1],  # axis 0
    ],
)
def test_a_map_body_must_keep_rows_apart(build):
    with pytest.raises(ShapeError, match="does not keep the rows of 'T' apart"):
        map_of(body_of(build))


def test_a_map_takes_its_xs_leading_with_dim_and_the_rest_whole():
    body = body_of(lambda b, x, v, w: x * v * w)
    with pytest.raises(ShapeError, match=r"input 2 \(f64\[3\]\) is one of the 3 xs"):
        map_of(body, num_xs=3)
    with pytest.raises(ShapeError, match=r"input 1 \(f64\[T,2,3\]\) is taken whole"):
        map_of(body, num_xs=1)
