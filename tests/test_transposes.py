"""``fold_transposes``: transposes folded into the products and splits that make their
input; checked by structure, against the unfolded graph and numpy, and where it must not."""

from __future__ import annotations

import numpy as np
import pytest

import rgraph as rg
from rgraph.ir import GraphIR
from rgraph.ir.passes import fold_transposes
from tests.pass_checks import same_results

RNG = np.random.default_rng(41)


def ops(ir: GraphIR) -> list[str]:
    return [n.op for n in ir.nodes]


@pytest.mark.parametrize("ta, tb", [(False, False), (True, False), (False, True), (True, True)])
def test_a_transposed_product_is_the_product_of_the_swapped_operands(ta, tb):
    g = rg.Graph("product")
    a = g.input("a", (4, 3) if ta else (3, 4))
    b = g.input("b", (5, 4) if tb else (4, 5))
    g.output(g.transpose(g.matmul(a, b, transpose_a=ta, transpose_b=tb)), name="c")
    before = g.ir
    after = fold_transposes(before)
    assert "transpose" not in ops(after)
    (mm,) = [n for n in after.nodes if n.op == "matmul"]
    assert mm.inputs == ("b", "a")
    feeds = {
        "a": RNG.normal(size=(4, 3) if ta else (3, 4)),
        "b": RNG.normal(size=(5, 4) if tb else (4, 5)),
    }
    got = same_results(before, after, feeds)
    x = feeds["a"].T if ta else feeds["a"]
    y = feeds["b"].T if tb else feeds["b"]
    np.testing.assert_allclose(got["c"], (x @ y).T, rtol=1e-14)


def test_stacked_weight_gradients_come_out_as_contiguous_blocks():
    g = rg.Graph("grads")
    x = g.input("x", (6, 3))
    dz = g.input("dz", (6, 8))
    grad = g.matmul(x, dz, transpose_a=True)  # (3, 8): four gates of 2
    blocks = g.split(
        g.reshape(g.reshape(grad, shape=[1, 3, 8]), shape=[3, 8]), axis=1, sizes=[2] * 4
    )
    for k, block in enumerate(blocks):
        g.output(g.transpose(block), name=f"W{k}")
    before = g.ir
    after = fold_transposes(before)
    assert ops(after).count("transpose") == 0 and "reshape" not in ops(after)
    feeds = {"x": RNG.normal(size=(6, 3)), "dz": RNG.normal(size=(6, 8))}
    got = same_results(before, after, feeds)
    full = (feeds["x"].T @ feeds["dz"]).T
    for k in range(4):
        assert got[f"W{k}"].flags.c_contiguous
        np.testing.assert_allclose(got[f"W{k}"], full[2 * k : 2 * k + 2], rtol=1e-14)


@pytest.mark.parametrize("why", ["product_used_twice", "piece_not_transposed", "three_d"])
def test_transposes_whose_input_has_other_uses_stay(why):
    g = rg.Graph("stays")
    a = g.input("a", (3, 4))
    b = g.input("b", (4, 6))
    p = g.matmul(a, b)
    if why == "product_used_twice":
        g.output(g.transpose(p), name="t")
        g.output(p, name="p")
    elif why == "piece_not_transposed":
        left, right = g.split(p, axis=1, sizes=[2, 4])
        g.output(g.transpose(left), name="t")
        g.output(right, name="r")
    else:
        g.output(g.transpose(g.reshape(p, shape=[3, 2, 3]), perm=[1, 0, 2]), name="t")
    before = g.ir
    after = fold_transposes(before)
    assert ops(after).count("transpose") == 1
    same_results(before, after, {"a": RNG.normal(size=(3, 4)), "b": RNG.normal(size=(4, 6))})


def test_a_reshape_of_a_reshape_is_one_reshape():
    g = rg.Graph("reshapes")
    x = g.input("x", ("B", 6))
    y = g.reshape(g.reshape(x, shape=["B", 2, 3]), shape=["B", 3, 2])
    g.output(g.transpose(y, perm=[0, 2, 1]), name="z")  # a transpose makes the pass look
    before = g.ir
    after = fold_transposes(before)
    assert ops(after).count("reshape") == 1
    feeds = {"x": RNG.normal(size=(2, 6))}
    got = same_results(before, after, feeds)
    np.testing.assert_array_equal(got["z"], feeds["x"].reshape(2, 3, 2).transpose(0, 2, 1))


def test_a_transpose_of_a_transpose_is_its_input():
    g = rg.Graph("twice")
    w = g.input("w", (3, 4))
    x = g.input("x", ("B", 3))
    t = g.transpose(w)
    y = x @ g.transpose(t)  # (B, 3) @ (3, 4)
    g.output(y + t.sum(), name="y")  # t has another use: it stays, the outer one goes
    before = g.ir
    after = fold_transposes(before)
    assert ops(after).count("transpose") == 1
    product = next(n for n in after.nodes if n.op == "matmul")
    assert product.inputs == ("x", "w")
    feeds = {"w": RNG.normal(size=(3, 4)), "x": RNG.normal(size=(2, 3))}
    got = same_results(before, after, feeds)
    np.testing.assert_allclose(got["y"], feeds["x"] @ feeds["w"] + feeds["w"].sum(), rtol=1e-14)
