"""``contract``: a sum over the batch axes of ``matmul[transpose_a]`` becomes one product.

``sum_t x_t^T y_t`` over leading axes equals ``X^T Y`` with the leading axes folded into
the contracted rows. Each rewrite is checked for its shape (one product on reshaped
operands, no sum left) and its numbers (against ``np.einsum``); each pattern that does
not hold is checked to leave the graph alone.
"""

import numpy as np
import pytest

import rgraph as rg
from rgraph.ir.passes import contract
from rgraph.ir.verify import verify

RNG = np.random.default_rng(7)


def ops(ir):
    return [n.op for n in ir.nodes]


def run(ir, feeds):
    return rg.Interpreter(ir).run(feeds, {})


@pytest.mark.parametrize("keepdims", [False, True])
def test_a_sum_over_time_of_batched_products_becomes_one_product(keepdims):
    g = rg.Graph("c")
    x = g.input("x", ("T", "B", 3))
    y = g.input("y", ("T", "B", 4))
    p = g.matmul(x, y, transpose_a=True)  # (T, 3, 4)
    g.output(g.sum(p, axes=[0], keepdims=keepdims), name="s")
    ir = g.ir
    out = contract(ir)
    verify(out)
    assert ops(ir).count("sum") == 1
    assert "sum" not in ops(out)
    (mm,) = [n for n in out.nodes if n.op == "matmul"]
    types = out.types()
    assert [types[i].shape for i in mm.inputs] == [("B*T", 3), ("B*T", 4)]  # folded rows
    assert mm.attrs.get("transpose_a") and not mm.attrs.get("transpose_b")
    assert out.outputs == ir.outputs and types["s"] == ir.types()["s"]

    feeds = {"x": RNG.standard_normal((5, 2, 3)), "y": RNG.standard_normal((5, 2, 4))}
    want = np.einsum("tbm,tbn->mn", feeds["x"], feeds["y"])
    if keepdims:
        want = want[None]
    got = run(out, feeds)["s"]
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got, run(ir, feeds)["s"], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("axes", [[0, 1], [1, 0], [-4, -3]])
def test_two_leading_axes_summed_fold_into_the_rows(axes):
    g = rg.Graph("c2")
    x = g.input("x", ("S", "T", 2, 3))
    y = g.input("y", ("S", "T", 2, 2))
    g.output(g.sum(g.matmul(x, y, transpose_a=True), axes=axes), name="s")
    out = contract(g.ir)
    verify(out)
    assert "sum" not in ops(out) and ops(out).count("matmul") == 1
    (mm,) = [n for n in out.nodes if n.op == "matmul"]
    assert out.types()[mm.inputs[0]].rank == 2
    feeds = {"x": RNG.standard_normal((2, 3, 2, 3)), "y": RNG.standard_normal((2, 3, 2, 2))}
    want = np.einsum("stbm,stbn->mn", feeds["x"], feeds["y"])
    np.testing.assert_allclose(run(out, feeds)["s"], want, rtol=1e-12, atol=1e-14)


def _graph(x_shape, y_shape, *, axes=(0,), transpose_b=False, also_output_product=False):
    g = rg.Graph("n")
    x = g.input("x", x_shape)
    y = g.input("y", y_shape)
    p = g.matmul(x, y, transpose_a=True, transpose_b=transpose_b)
    g.output(g.sum(p, axes=list(axes)), name="s")
    if also_output_product:
        g.output(p, name="p")
    return g.ir


@pytest.mark.parametrize(
    "ir",
    [
        pytest.param(_graph(("T", "B", 3), ("T", "B", 4), also_output_product=True), id="reused"),
        pytest.param(_graph(("T", "B", 3), ("T", 4, "B"), transpose_b=True), id="transpose_b"),
        pytest.param(_graph(("S", "T", "B", 3), ("S", "T", "B", 4)), id="some-leading-axes"),
        pytest.param(_graph(("T", "B", 3), ("B", 4)), id="broadcast-rank"),
        pytest.param(_graph(("T", "B", 3), (1, "B", 4)), id="broadcast-dim"),
        pytest.param(_graph(("T", "B", 3), ("T", "B", 4), axes=(1,)), id="not-the-batch-axis"),
    ],
)
def test_the_rewrite_does_not_fire_when_the_pattern_does_not_hold(ir):
    assert contract(ir) is ir


def test_a_product_read_twice_is_kept():
    g = rg.Graph("u")
    x = g.input("x", ("T", "B", 3))
    y = g.input("y", ("T", "B", 4))
    p = g.matmul(x, y, transpose_a=True)
    g.output(g.sum(p, axes=[0]) + g.sum(p * p, axes=[0]), name="s")  # p read twice
    ir = g.ir
    assert contract(ir) is ir


def test_products_inside_loop_bodies_are_rewritten():
    g = rg.Graph("loop")
    xs = g.input("xs", ("T", "S", "B", 3))
    ys = g.input("ys", ("T", "S", "B", 2))

    def step(b, carry, x):
        gram = b.sum(b.matmul(x[0], x[1], transpose_a=True), axes=[0])  # (3, 2)
        return [carry[0] + gram], [gram]

    (total,), (grams,) = g.scan(step, init=[g.full(shape=[3, 2])], xs=[xs, ys])
    g.output(total, name="total")
    g.output(grams, name="grams")
    ir = g.ir
    out = contract(ir)
    verify(out)
    (scan,) = [n for n in out.nodes if n.op == "scan"]
    body = scan.bodies["body"]
    assert "sum" not in ops(body) and ops(body).count("reshape") == 2
    (mm,) = [n for n in body.nodes if n.op == "matmul"]
    assert body.types()[mm.inputs[0]].shape == ("B*S", 3)

    feeds = {"xs": RNG.standard_normal((4, 3, 2, 3)), "ys": RNG.standard_normal((4, 3, 2, 2))}
    want_grams = np.einsum("tsbm,tsbn->tmn", feeds["xs"], feeds["ys"])
    got = run(out, feeds)
    np.testing.assert_allclose(got["grams"], want_grams, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(got["total"], want_grams.sum(0), rtol=1e-12, atol=1e-14)


def test_a_graph_without_the_pattern_is_returned_unchanged():
    g = rg.Graph("plain")
    x = g.input("x", ("B", 3))
    g.output(g.sum(g.matmul(x, x, transpose_a=True), axes=[0]), name="s")  # no batch axes
    ir = g.ir
    assert contract(ir) is ir
