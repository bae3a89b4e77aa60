"""``merge_activations``: the sigmoids and tanhs of one pre-activation's column blocks in a
scan body become one ``gate_activation``, the sigmoid blocks' halving folded into the
weights and per-step inputs; checked by structure, against the unrewritten graph and an
independent numpy loop, through the whole pipeline with gradients, and on the cases
where the rewrite must not happen."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

import rgraph as rg
from rgraph.ir import GraphIR
from rgraph.ir.op import KernelContext, get_op
from rgraph.ir.passes import merge_activations
from rgraph.ir.types import make_type
from tests.pass_checks import same_results

RNG = np.random.default_rng(5150)


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def ops(ir: GraphIR) -> list[str]:
    return [n.op for n in ir.nodes]


def body_of(ir: GraphIR) -> GraphIR:
    (scan,) = [n for n in ir.nodes if n.op == "scan"]
    return scan.bodies["body"]


def gated_loop(H=3, dtype="float64", variant=None):
    """``h' = s1 * tanh(s0 * c + g)`` with ``[s0, s1] = sigmoid(z[:, :2H])`` and
    ``g = tanh(z[:, 2H:])``, ``z = x_t + h @ W``: an LSTM-like step on column blocks."""
    g = rg.Graph("gated")
    xs = g.input("xs", ("T", "B", 3 * H), dtype=dtype)
    W = g.param("W", (H, 3 * H), dtype=dtype)
    h0 = g.input("h0", ("B", H), dtype=dtype)

    def step(b, carry, x):
        (h,) = carry
        weights = W
        if variant == "weight_is_state":  # a product by a matrix made in the step
            square = b.matmul(h, h, transpose_a=True)
            weights = b.concat(square, square, square, axis=1)
        z = x[0] + b.matmul(h, weights)
        cut = 2 * H + 1 if variant == "overlap" else 2 * H
        if variant == "split":  # as the nn builders make them (a slice's gradient needs z)
            gates, cell = (
                f(p) for f, p in zip((b.sigmoid, b.tanh), b.split(z, axis=1, sizes=[cut, H]))
            )
        else:
            gates = b.sigmoid(b.slice(z, axis=1, start=0, stop=cut))
            cell = b.tanh(b.slice(z, axis=1, start=2 * H, stop=3 * H))
        if variant == "tanh_only":
            gates = b.tanh(b.slice(z, axis=1, start=0, stop=2 * H))
        s0, s1 = b.split(gates, axis=1, sizes=[H, cut - H])
        s1 = b.slice(s1, axis=1, start=0, stop=H)
        new = s1 * b.tanh(s0 * h + cell)
        ys = [new]
        if variant == "z_is_output":
            ys.append(z)
        if variant == "block_used_twice":
            ys.append(b.exp(b.slice(z, axis=1, start=2 * H, stop=3 * H)))
        return [new], ys

    _, ys = g.scan(step, init=[h0], xs=[xs])
    g.output(ys[0], name="hs")
    g.output(g.sum(ys[0] * ys[0]), name="loss")
    return g


def feeds_for(H=3, T=4, B=2, dtype="float64"):
    return {
        "xs": RNG.uniform(-2, 2, (T, B, 3 * H)).astype(dtype),
        "h0": RNG.uniform(-1, 1, (B, H)).astype(dtype),
    }


def params_for(H=3, dtype="float64"):
    return {"W": RNG.uniform(-1, 1, (H, 3 * H)).astype(dtype)}


def numpy_loop(feeds, params):
    W, h = params["W"], feeds["h0"]
    H = h.shape[1]
    hs = []
    for x in feeds["xs"]:
        z = x + h @ W
        s0, s1, g = sigmoid(z[:, :H]), sigmoid(z[:, H : 2 * H]), np.tanh(z[:, 2 * H :])
        h = s1 * np.tanh(s0 * h + g)
        hs.append(h)
    return np.stack(hs)


def test_the_gate_blocks_become_one_call_and_the_halving_goes_into_the_weights():
    before = gated_loop().ir
    after = merge_activations(before)
    body = body_of(after)
    (gate,) = [n for n in body.nodes if n.op == "gate_activation"]
    assert gate.attrs == {"sizes": [6, 3], "sigmoid": [True, False]}
    assert ops(body).count("sigmoid") == 0 and ops(body).count("tanh") == 1  # tanh(c) stays
    # z * s = x_t * s + h @ (W * s): products by s of the inputs only, none per step.
    scale = {c.name: np.array(c.data) for c in body.consts}
    scaled = [n for n in body.nodes if n.op == "eltmul" and n.inputs[1] in scale]
    assert sorted(n.inputs[0] for n in scaled) == sorted(v.name for v in body.inputs[1:])
    for n in scaled:
        np.testing.assert_array_equal(scale[n.inputs[1]], [0.5] * 6 + [1.0] * 3)
    feeds, params = feeds_for(), params_for()
    got = same_results(before, after, feeds, params)
    np.testing.assert_allclose(got["hs"], numpy_loop(feeds, params), rtol=1e-13)


def test_through_the_pipeline_the_scaling_leaves_the_loop_and_gradients_agree():
    g = gated_loop(variant="split")
    fast = rg.compile(g, ["hs", "loss"], loss="loss")
    plain = rg.compile(g, ["hs", "loss"], loss="loss", optimize=False)
    forward = [n for n in fast.ir.nodes if n.op == "scan" and not n.attrs.get("reverse")]
    body = forward[0].bodies["body"]
    assert "gate_activation" in ops(body) and "sigmoid" not in ops(body)
    assert not body.consts  # the scale went out with the products it was in
    feeds, params = feeds_for(T=5, B=3), params_for()
    want, got = plain.run(feeds, params), fast.run(feeds, params)
    np.testing.assert_allclose(got.outputs["hs"], numpy_loop(feeds, params), rtol=1e-13)
    for name in ("hs", "loss"):
        np.testing.assert_allclose(got.outputs[name], want.outputs[name], rtol=1e-13)
    np.testing.assert_allclose(got.grads["W"], want.grads["W"], rtol=1e-12)


def test_in_a_loop_the_gates_get_the_pieces_of_the_row_they_write_made():
    g = gated_loop(variant="split")
    fast = rg.compile(g, ["hs", "loss"], loss="loss")
    forward = [n for n in fast.ir.nodes if n.op == "scan" and not n.attrs.get("reverse")]
    body = rg.Interpreter(forward[0].bodies["body"], loop_body=True)
    body.loop({"B": 3}, 1, 1)
    (line,) = [s for s in body._loop.source.splitlines() if "k2(" in s]  # the gates
    # The row, then one piece per run of blocks of a kind (sigmoid, then tanh).
    assert line.endswith(", w2_0, w2_1)") and ", y" in line, line
    feeds, params = feeds_for(T=5, B=3), params_for()
    np.testing.assert_allclose(
        fast.run(feeds, params).outputs["hs"], numpy_loop(feeds, params), rtol=1e-13
    )


@pytest.mark.parametrize(
    "dtype, H, B, form, rtol",
    [
        ("float64", 192, 2, "exp", 1e-13),  # gates 576 wide: exp folded into the weights
        ("float32", 683, 1, "exp", 2e-5),
        ("float32", 64, 16, "tanh", 2e-5),  # folded for tanh; through exp at this batch
    ],
)
def test_wide_gates_through_exp_give_the_same_results(dtype, H, B, form, rtol):
    g = gated_loop(H=H, dtype=dtype, variant="split")
    fast = rg.compile(g, ["hs", "loss"], loss="loss")
    plain = rg.compile(g, ["hs", "loss"], loss="loss", optimize=False)
    (gate,) = [
        n
        for scan in fast.ir.nodes
        if scan.op == "scan"
        for n in scan.bodies["body"].nodes
        if n.op == "gate_activation"
    ]
    assert gate.attrs.get("form", "tanh") == form  # the default is not written
    feeds, params = feeds_for(H=H, T=3, B=B, dtype=dtype), params_for(H=H, dtype=dtype)
    params["W"] *= 0.1
    want, got = plain.run(feeds, params), fast.run(feeds, params)
    ref = numpy_loop({k: v.astype(np.float64) for k, v in feeds.items()}, {"W": params["W"] * 1.0})
    np.testing.assert_allclose(got.outputs["hs"], ref, rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_allclose(got.outputs["hs"], want.outputs["hs"], rtol=rtol, atol=rtol * 1e-2)
    np.testing.assert_allclose(got.grads["W"], want.grads["W"], rtol=rtol * 10, atol=rtol)


@pytest.mark.parametrize(
    "variant", ["z_is_output", "block_used_twice", "weight_is_state", "tanh_only", "overlap"]
)
def test_blocks_that_are_more_than_gates_stay(variant):
    before = gated_loop(variant=variant).ir
    assert merge_activations(before) is before
    rg.Interpreter(before).run(feeds_for(), params_for())  # the case itself is a valid graph


def test_outside_loops_nothing_changes():
    g = rg.Graph("top")
    x = g.input("x", ("B", 6))
    W = g.param("W", (6, 6))
    z = x + g.matmul(x, W)
    g.output(g.sigmoid(g.slice(z, axis=1, start=0, stop=4)), name="s")
    g.output(g.tanh(g.slice(z, axis=1, start=4, stop=6)), name="t")
    ir = g.ir
    assert merge_activations(ir) is ir


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("batch", [1, 3, 600])
def test_the_kernel_specialised_to_a_known_size_gives_the_same_bits(dtype, batch):
    # Told its input's type and dims (as the interpreter does), the tanh form's kernel is
    # a short one below the size where exp is cheaper; above, or with two runs of
    # sigmoid blocks, the general one. Either way: the general kernel's bits.
    op = get_op("gate_activation")
    rng = np.random.default_rng(batch)
    for sizes, sigmoid in (([6, 2], [True, False]), ([2, 2, 2], [True, False, True])):
        attrs = op.Attrs(sizes=sizes, sigmoid=sigmoid)
        t = make_type(dtype, ("B", sum(sizes)))
        special = op.kernel(attrs, KernelContext({"B": batch}, inputs=(t,)))
        general = op.kernel(attrs, KernelContext({}))
        short = len(sizes) == 2 and batch * sum(sizes) < (512 if dtype == "float64" else 2048)
        assert (special.__qualname__ != general.__qualname__) == short
        x = rng.normal(0.0, 3.0, (batch, sum(sizes))).astype(dtype)
        want = general(x.copy())
        np.testing.assert_array_equal(special(x.copy()), want)
        wide = np.full((batch, sum(sizes) + 3), np.nan, dtype)
        got = special(x.copy(), out=wide[:, 1:-2])  # a strided out, as a concat's piece
        assert got.base is wide and np.array_equal(wide[:, 1:-2], want)


@pytest.mark.parametrize("dtype, H, B", [("float64", 192, 2), ("float32", 683, 1)])
def test_saturated_gates_overflow_quietly_in_a_loop(dtype, H, B):
    # Pre-activations of +-1000: exp(-z) overflows to inf in the exp form, and
    # 1 / (1 + inf) is the 0 wanted. The loop runs with numpy's overflow warnings off
    # (its kernel does not clamp), so no warning reaches the caller, and afterwards
    # numpy's settings are the caller's again.
    g = gated_loop(H=H, dtype=dtype, variant="split")
    fast = rg.compile(g, ["hs"])
    feeds = feeds_for(H=H, T=3, B=B, dtype=dtype)
    feeds["xs"] = np.where(feeds["xs"] > 0, 1000.0, -1000.0).astype(dtype)
    params = {"W": np.zeros((H, 3 * H), dtype)}
    with np.errstate(over="ignore"):
        want = numpy_loop(feeds, params)
    before = np.geterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = fast.run(feeds, params).outputs["hs"]
    assert np.geterr() == before
    np.testing.assert_array_equal(got, want.astype(dtype))  # saturated gates: exact 0, 1


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_a_kernel_told_overflow_is_quiet_skips_the_clamp_and_is_exact_where_it_saturates(dtype):
    # The exp form holds -z (sigmoid blocks) and -2 z (tanh blocks). The clamping kernel
    # keeps exp finite (a result within 1e-304, or 1e-35 in float32, of 0); the quiet one
    # lets it overflow, as the loop's switch allows, and gives 1 / (1 + exp(x)) exactly.
    op = get_op("gate_activation")
    attrs = op.Attrs(sizes=[6, 2], sigmoid=[True, False], form="exp")
    x = np.array([[1e4, 800.0, 90.0, -1.0, 0.0, -3.0, 1e4, -40.0]], dtype)
    clamping = op.kernel(attrs, KernelContext({}))
    quiet = op.kernel(attrs, KernelContext({}, quiet_overflow=True))
    with np.errstate(over="ignore"):
        exact = 1.0 / (1.0 + np.exp(x))
    exact[:, 6:] = 2.0 * exact[:, 6:] - 1.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        clamped = clamping(x.copy())
        with pytest.raises(RuntimeWarning, match="overflow"):
            quiet(x.copy())  # it relies on the loop's switch
    off = {"float64": 1e-303, "float32": 1e-34}[dtype]  # 1 / exp(cap): 700, 80
    np.testing.assert_allclose(clamped, exact, rtol=0, atol=off)
    assert clamped[0, 0] > 0  # (it does clamp)
    with np.errstate(over="ignore"):
        np.testing.assert_array_equal(quiet(x.copy()), exact)
