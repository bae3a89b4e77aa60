"""``fold_scales``: a product by a constant vector moves into the operands of what makes
its input (sums, products with a matrix, transposes); checked by structure, against the
unfolded graph and numpy, and where it must not move."""

from __future__ import annotations

import numpy as np
import pytest

import rgraph as rg
from rgraph.ir import GraphIR
from rgraph.ir.passes import fold_scales
from tests.pass_checks import same_results

RNG = np.random.default_rng(2718)
SCALE = np.array([0.5, 1.0, 0.5, 2.0, 1.0, 0.25])


def ops(ir: GraphIR) -> list[str]:
    return [n.op for n in ir.nodes]


def muls(ir: GraphIR) -> list[tuple[str, ...]]:
    return [n.inputs for n in ir.nodes if n.op == "eltmul"]


def test_a_scaled_input_projection_scales_the_weights_and_the_bias():
    g = rg.Graph("projection")
    x = g.input("x", ("T", "B", 4))
    W = g.param("W", (6, 4))
    b = g.param("b", (6,))
    z = g.matmul(x, g.transpose(W)) + b  # (T, B, 6), as nn.linear makes it
    g.output(g.eltmul(z, g.const(SCALE)), name="zs")
    before = g.ir
    after = fold_scales(before)
    scaled = {m[0] for m in muls(after)}
    assert scaled == {"W", "b"}  # nothing of shape (T, B, 6) is multiplied
    params = {"W": RNG.normal(size=(6, 4)), "b": RNG.normal(size=6)}
    feeds = {"x": RNG.normal(size=(3, 2, 4))}
    got = same_results(before, after, feeds, params)
    want = (feeds["x"] @ params["W"].T + params["b"]) * SCALE
    np.testing.assert_allclose(got["zs"], want, rtol=1e-14)


@pytest.mark.parametrize("transpose_b", [False, True])
def test_a_scaled_product_scales_its_matrix_by_columns(transpose_b):
    g = rg.Graph("product")
    x = g.input("x", ("N", 4))
    W = g.input("W", (6, 4) if transpose_b else (4, 6))
    g.output(g.eltmul(g.matmul(x, W, transpose_b=transpose_b), g.const(SCALE)), name="y")
    before = g.ir
    after = fold_scales(before)
    ((w, _),) = muls(after)
    assert w == "W"
    feeds = {"x": RNG.normal(size=(5, 4)), "W": RNG.normal(size=(6, 4) if transpose_b else (4, 6))}
    got = same_results(before, after, feeds)
    weights = feeds["W"].T if transpose_b else feeds["W"]
    np.testing.assert_allclose(got["y"], (feeds["x"] @ weights) * SCALE, rtol=1e-14)


@pytest.mark.parametrize("form", ["transpose_b", "transpose"])
@pytest.mark.parametrize("rows", [2, 32])
def test_a_scale_of_equal_blocks_scales_blocks_of_rows_of_a_large_matrix(form, rows):
    # Gates' scales: one value per block of rows of a stacked weight: [.5 .5 1] with
    # ``rows`` rows each is three blocks. A weight of more than 4096 elements is viewed
    # as blocks (one value each, twice as fast); a smaller one is scaled by a column
    # (one call instead of three).
    blocks = np.repeat([0.5, 0.5, 1.0], rows)
    cols = 4 if rows == 2 else 64
    g = rg.Graph("blocks")
    x = g.input("x", ("N", cols))
    W = g.input("W", (3 * rows, cols))
    transposed = g.transpose(W) if form == "transpose" else W
    z = g.matmul(x, transposed, transpose_b=form == "transpose_b")
    g.output(g.eltmul(z, g.const(blocks)), name="y")
    before = g.ir
    after = fold_scales(before)
    ((w, scale),) = muls(after)
    (const,) = [c for c in after.consts if c.name == scale]
    if rows * 3 * cols > 4096:
        assert const.type.shape == (3, 1, 1) and list(const.data) == [0.5, 0.5, 1.0]
        assert after.types()[w].shape == (3, rows, cols)
    else:
        assert const.type.shape == (3 * rows, 1) and list(const.data) == list(blocks)
        assert after.types()[w].shape == (3 * rows, cols)
        assert "reshape" not in {n.op for n in after.nodes}
    feeds = {"x": RNG.normal(size=(5, cols)), "W": RNG.normal(size=(3 * rows, cols))}
    got = same_results(before, after, feeds)
    np.testing.assert_array_equal(got["y"], feeds["x"] @ (feeds["W"] * blocks[:, None]).T)


def test_a_scale_of_equal_blocks_on_a_transposed_input_of_symbolic_width():
    # transpose(x) * c with x (6, N): the rows of x are blocks, its width unknown until
    # a run: scaled as blocks of rows (not known to be small).
    blocks = np.repeat([0.5, 0.5, 1.0], 2)
    g = rg.Graph("symbolic")
    x = g.input("x", (6, "N"))
    g.output(g.eltmul(g.transpose(x), g.const(blocks)), name="y")
    before = g.ir
    after = fold_scales(before)
    ((w, scale),) = muls(after)
    assert after.types()[w].shape == (3, 2, "N")
    assert next(c for c in after.consts if c.name == scale).type.shape == (3, 1, 1)
    feeds = {"x": RNG.normal(size=(6, 5))}
    got = same_results(before, after, feeds)
    np.testing.assert_array_equal(got["y"], (feeds["x"] * blocks[:, None]).T)


def test_a_transposed_matrix_times_a_constant_vector_is_computed_in_the_matrix_order():
    g = rg.Graph("scaled")
    w = g.input("w", (6, 4))
    wt = g.transpose(w)
    g.output(g.eltmul(wt, g.const(SCALE)), name="ws")
    g.output(g.tanh(wt), name="other")  # the transpose has another use: it stays
    before = g.ir
    after = fold_scales(before)
    ((x, _),) = muls(after)
    assert x == "w" and ops(after).count("transpose") == 2
    feeds = {"w": RNG.normal(size=(6, 4))}
    got = same_results(before, after, feeds)
    np.testing.assert_array_equal(got["ws"], feeds["w"].T * SCALE)
    assert got["ws"].T.flags.c_contiguous


@pytest.mark.parametrize(
    "why",
    [
        "not_constant",
        "matrix_constant",
        "sum_used_twice",
        "product_used_twice",
        "broadcast_term",
        "small_product",
    ],
)
def test_scales_that_cannot_move_stay(why):
    g = rg.Graph("stays")
    x = g.input("x", (2, 4) if why == "small_product" else ("N", 4))
    W = g.input("W", (4, 6))
    z = g.matmul(x, W)
    if why in ("sum_used_twice", "broadcast_term"):
        term = g.input("c", ("N", 1)) if why == "broadcast_term" else g.input("c", ("N", 6))
        z = z + term
    if why in ("sum_used_twice", "product_used_twice"):
        g.output(g.tanh(z), name="other")
    scale = {
        "not_constant": g.input("s", (6,)),
        "matrix_constant": g.const(RNG.normal(size=(1, 6))),
    }.get(why, g.const(SCALE))
    g.output(g.eltmul(z, scale), name="y")
    before = g.ir
    assert fold_scales(before) is before
