"""Moving work out of loops changes no result, and leaves less work in the loop."""

import numpy as np
import pytest

import rgraph as rg
from rgraph.ir.passes import hoist


def body_of(ir):
    return next(n for n in ir.nodes if n.op == "scan").bodies["body"]


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_hoisted_language_model_gives_the_same_loss_and_gradients(kind, dtype):
    g = rg.Graph("lm")
    rg.nn.language_model(g, vocab=7, kind=kind, hidden_sizes=[6, 5], letter_size=4, dtype=dtype)
    rng = np.random.default_rng(3)
    store = {
        k: (v + rng.uniform(-0.3, 0.3, v.shape)).astype(dtype)
        for k, v in rg.init_params(g, 0).items()
    }
    feeds = rg.train.pad_sequences([[1, 2, 3, 4, 5], [2, 3], [6, 6, 6]], dtype=dtype)
    plain = rg.compile(g, ["loss", "logits"], loss="loss", optimize=False).run(feeds, store)
    fast = rg.compile(g, ["loss", "logits"], loss="loss").run(feeds, store)
    tol = dict(rtol=1e-12, atol=1e-14) if dtype == "float64" else dict(rtol=2e-5, atol=1e-6)
    for name in ("loss", "logits"):
        np.testing.assert_allclose(fast.outputs[name], plain.outputs[name], **tol)
    for name, grad in plain.grads.items():
        assert fast.grads[name].dtype == grad.dtype
        np.testing.assert_allclose(fast.grads[name], grad, **tol)


def test_input_projections_and_lookups_leave_the_loop():
    g = rg.Graph("rnn")
    xs = g.input("xs", ("T", "B", 3))
    W = g.param("W", (3, 4))
    U = g.param("U", (4, 4))
    b = g.param("b", (4,))

    def step(body, carry, x):
        h = body.tanh(carry[0] @ U + (x[0] @ W + b) * 2.0)
        return [h], [h]

    (h_last,), _ = g.scan(step, init=[g.full(shape=["B", 4])], xs=[xs])
    g.output(h_last, name="h")
    before = body_of(g.ir)
    after_ir = hoist(g.ir)
    after = body_of(after_ir)
    assert [n.op for n in before.nodes].count("matmul") == 2
    assert [n.op for n in after.nodes].count("matmul") == 1  # only the recurrent one stays
    assert len(after.nodes) == len(before.nodes) - 3  # x @ W, + b, * 2.0 run on all steps
    outer = [n for n in after_ir.nodes if n.op == "matmul"]
    assert len(outer) == 1 and outer[0].outputs[0].type.shape == ("T", "B", 4)
    assert hoist(after_ir) == after_ir  # nothing more to move
    rg.ir.verify.verify(after_ir)


def test_a_graph_without_loops_is_returned_unchanged():
    g = rg.Graph("plain")
    x = g.input("x", (3,))
    g.output(x.tanh(), name="y")
    ir = g.ir
    assert hoist(ir) is ir


def test_nested_loops_hoist_from_the_inside_out():
    g = rg.Graph("nested")
    xs = g.input("xs", ("T", "S", 1, 2))
    W = g.param("W", (2, 2), init="normal", std=0.5)

    def outer(b, carry, x):
        def inner(bi, c, y):
            h = bi.tanh(c[0] + y[0] @ W)
            return [h], [h]

        (last,), _ = b.scan(inner, init=[carry[0]], xs=[x[0]])
        return [last], [last]

    g.output(g.scan(outer, init=[g.full(shape=[1, 2])], xs=[xs])[0][0], name="h")
    rng = np.random.default_rng(0)
    feeds = {"xs": rng.standard_normal((3, 4, 1, 2))}
    store = rg.init_params(g, 1)
    plain = rg.compile(g, optimize=False).run(feeds, store).outputs["h"]
    fast = rg.compile(g).run(feeds, store).outputs["h"]
    np.testing.assert_allclose(fast, plain, rtol=1e-13)
    ir = rg.compile(g).ir
    assert all(n.op != "matmul" for n in body_of(body_of(ir)).nodes)


def test_products_regroup_so_that_factors_free_of_the_state_leave_the_loop():
    g = rg.Graph("regroup")
    xs = g.input("xs", ("T", "B", 3))
    ks = g.input("ks", ("T", "B", 3))

    def step(b, carry, x):
        h = carry[0]
        chain = (h * x[0]) * x[1]  # (state * a) * b: a * b needs no state
        twice = h * x[0]
        return [b.tanh(chain + (twice * x[1]) * twice)], []  # used twice: stays

    (h,), _ = g.scan(step, init=[g.full(shape=["B", 3], value=0.5)], xs=[xs, ks])
    g.output(h, name="h")
    after = hoist(g.ir)
    body = body_of(after)
    state_free = [n for n in after.nodes if n.op == "eltmul"]
    assert len(state_free) == 1 and set(state_free[0].inputs) == {"xs", "ks"}
    assert [n.op for n in body.nodes].count("eltmul") == 4  # one less
    rng = np.random.default_rng(8)
    feeds = {"xs": rng.normal(size=(5, 2, 3)), "ks": rng.normal(size=(5, 2, 3))}
    got = rg.Interpreter(after).run(feeds)["h"]
    h = np.full((2, 3), 0.5)
    for x, k in zip(feeds["xs"], feeds["ks"]):
        twice = h * x
        h = np.tanh(h * (x * k) + (twice * k) * twice)
    np.testing.assert_allclose(got, h, rtol=1e-15)


def test_a_transposed_operand_free_of_the_state_is_transposed_before_the_loop():
    # h @ W^T and W^T @ ... with W loop-invariant: the steps call plain products of a
    # transposed view made once; h's own transpose (state) stays a flag in the loop.
    g = rg.Graph("untranspose")
    xs = g.input("xs", ("T", "B", 4))
    w = g.param("W", (4, 4), init="uniform")
    u = g.param("U", (4, 4), init="uniform")

    def step(b, carry, x):
        h = carry[0]
        a = b.matmul(h, w, transpose_b=True)  # W invariant: leaves as a transpose
        c = b.matmul(u, h, transpose_a=True, transpose_b=True)  # (U^T h^T): (4, B)
        return [b.tanh(a + x[0] + b.transpose(c))], []

    (h,), _ = g.scan(step, init=[g.full(shape=["B", 4], value=0.1)], xs=[xs])
    g.output(h, name="h")
    after = hoist(g.ir)
    products = [n for n in body_of(after).nodes if n.op == "matmul"]
    assert [dict(n.attrs) for n in products] == [{}, {"transpose_b": True}]
    outside = [n for n in after.nodes if n.op == "transpose"]
    assert sorted(n.inputs[0] for n in outside) == ["U", "W"]
    rng = np.random.default_rng(9)
    params = rg.init_params(g, 3)
    feeds = {"xs": rng.normal(size=(5, 2, 4))}
    got = rg.Interpreter(after).run(feeds, params)["h"]
    hv = np.full((2, 4), 0.1)
    for x in feeds["xs"]:
        hv = np.tanh(hv @ params["W"].T + x + (params["U"].T @ hv.T).T)
    np.testing.assert_allclose(got, hv, rtol=1e-14)
