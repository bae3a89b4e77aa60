"""``specialize``: a graph folded for inputs filled with one value, and programs that run it
when the feeds hold that value; checked by structure, against the general graph and numpy."""

from __future__ import annotations

import numpy as np
import pytest

import rgraph as rg
from rgraph.errors import GraphError
from rgraph.ir import GraphIR
from rgraph.ir.passes import specialize
from tests.pass_checks import same_results

RNG = np.random.default_rng(11)


def ops(ir: GraphIR) -> list[str]:
    return [n.op for n in ir.nodes]


def normal(*shape):
    return RNG.standard_normal(shape)


# --- the rules -----------------------------------------------------------------------------


def test_products_by_one_and_sums_with_zero_are_their_other_operand():
    g = rg.Graph("neutral")
    x = g.input("x", ("B", 3))
    m = g.input("m", ("B", 3))
    g.output(m * x, name="a")
    g.output(x * m + (1.0 - m), name="b")  # x * 1 + 0
    g.output(x - (m - 1.0), name="c")  # x - 0
    g.output((1.0 - m) - x, name="d")  # 0 - x: not x
    after = specialize(g.ir, {"m": 1.0})
    assert ops(after).count("eltmul") == 0
    assert ops(after).count("sub") == 1  # 0 - x stays
    x_val = normal(2, 3)
    got = rg.Interpreter(after).run({"x": x_val, "m": np.ones((2, 3))})
    np.testing.assert_array_equal(got["a"], x_val)
    np.testing.assert_array_equal(got["b"], x_val)
    np.testing.assert_array_equal(got["c"], x_val)
    np.testing.assert_array_equal(got["d"], -x_val)
    assert "m" in {v.name for v in after.inputs}  # still fed: it binds B


def test_products_by_zero_are_zeros_and_ops_of_filled_values_are_filled():
    g = rg.Graph("zeros")
    x = g.input("x", ("B", 3))
    m = g.input("m", ("B", 1))
    g.output(x * (1.0 - m), name="gone")
    g.output(g.exp(m * 2.0) + x, name="e2")
    after = specialize(g.ir, {"m": 1.0})
    assert "exp" not in ops(after) and "eltmul" not in ops(after)
    x_val = normal(4, 3)
    got = rg.Interpreter(after).run({"x": x_val, "m": np.ones((4, 1))})
    np.testing.assert_array_equal(got["gone"], np.zeros((4, 3)))
    np.testing.assert_array_equal(got["e2"], np.exp(2.0) + x_val)


def test_a_product_that_broadcasts_the_other_operand_stays():
    g = rg.Graph("broadcast")
    x = g.input("x", ("B", 1))
    m = g.input("m", ("B", 3))
    g.output(x * m, name="y")  # (B, 3): not x itself
    after = specialize(g.ir, {"m": 1.0})
    x_val = normal(2, 1)
    got = rg.Interpreter(after).run({"x": x_val, "m": np.ones((2, 3))})
    np.testing.assert_array_equal(got["y"], np.broadcast_to(x_val, (2, 3)))


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_a_loss_goes_without_its_mask_of_ones_with_the_same_bits(reduction):
    g = rg.Graph("masked_loss")
    logits = g.input("logits", ("N", 5))
    targets = g.input("targets", ("N",), dtype="int32")
    mask = g.input("mask", ("N",))
    g.output(g.softmax_cross_entropy(logits, targets, mask=mask, reduction=reduction), name="y")
    program = rg.compile(g, ["y"], cotangents=["y"], wrt=["logits"], specialize={"mask": 1.0})
    after = program.specialized.ir
    losses = [n for n in after.nodes if n.op.startswith("softmax_cross_entropy")]
    assert losses and all(len(n.inputs) == len(losses[0].inputs) for n in losses)
    assert all("mask_filled" not in name for n in losses for name in n.inputs)
    feeds = {
        "logits": normal(6, 5),
        "targets": RNG.integers(0, 5, 6).astype(np.int32),
        "mask": np.ones(6),
    }
    ct = {"y": normal(6) if reduction == "none" else np.asarray(0.7)}
    general = rg.compile(g, ["y"], cotangents=["y"], wrt=["logits"])
    want, got = general.run(feeds, {}, ct), program.run(feeds, {}, ct)
    assert got.outputs["y"].tobytes() == want.outputs["y"].tobytes()
    assert got.grads["logits"].tobytes() == want.grads["logits"].tobytes()


def _masked_loop(reverse: bool = False) -> rg.Graph:
    g = rg.Graph("masked")
    xs = g.input("xs", ("T", "B", 3))
    mask = g.input("mask", ("T", "B"))
    w = g.param("w", (3, 3))

    def step(b, carry, x):
        m = b.expand_dims(x[1], axes=[1])
        new = b.tanh(b.matmul(carry[0], w) + x[0])
        h = m * new + (1.0 - m) * carry[0]
        return [h], [h]

    init = [g.full(shape=["B", 3])]
    (h,), (hs,) = g.scan(step, init=init, xs=[xs, mask], reverse=reverse)
    g.output(h, name="h")
    g.output(g.sum(hs * hs), name="loss")
    return g


@pytest.mark.parametrize("reverse", [False, True])
def test_a_filled_value_given_to_a_loop_is_folded_in_its_body(reverse):
    g = _masked_loop(reverse)
    after = specialize(g.ir, {"mask": 1.0})
    (scan,) = [n for n in after.nodes if n.op == "scan"]
    assert scan.attrs["num_xs"] == 1  # the mask no longer goes in
    body = scan.bodies["body"]
    assert [n.op for n in body.nodes if n.op != "identity"] == ["matmul", "add", "tanh"]
    feeds = {"xs": normal(5, 2, 3), "mask": np.ones((5, 2))}
    same_results(g.ir, after, feeds, {"w": normal(3, 3)})


def test_a_loop_whose_only_xs_is_filled_gets_its_length():
    g = rg.Graph("only_mask")
    mask = g.input("mask", ("T", "B"))

    def step(b, carry, x):
        return [carry[0] * 0.5 + b.expand_dims(x[0], axes=[1])], []

    (h,), _ = g.scan(step, init=[g.full(shape=["B", 2], value=1.0)], xs=[mask])
    g.output(h, name="h")
    after = specialize(g.ir, {"mask": 1.0})
    (scan,) = [n for n in after.nodes if n.op == "scan"]
    assert scan.attrs["num_xs"] == 0 and scan.attrs["length"] == "T"
    same_results(g.ir, after, {"mask": np.ones((3, 2))})


def test_specialising_an_unknown_input_is_refused():
    with pytest.raises(KeyError, match="nope"):
        specialize(_masked_loop().ir, {"nope": 1.0})
    with pytest.raises(GraphError, match="nope"):
        rg.compile(_masked_loop(), loss="loss", specialize={"nope": 1.0})


# --- programs ------------------------------------------------------------------------------


def test_a_program_runs_the_specialised_graph_only_for_feeds_holding_the_values():
    g = _masked_loop()
    prog = rg.compile(g, loss="loss", specialize={"mask": 1.0})
    general = rg.compile(g, loss="loss")
    w = {"w": normal(3, 3)}
    padded = {"xs": normal(4, 2, 3), "mask": np.array([[1, 1], [1, 1], [1, 0], [0, 0.0]])}
    got = prog.run(padded, w)
    assert prog._specialized is None  # not made: no run had a full mask yet
    want = general.run(padded, w)
    np.testing.assert_array_equal(got["loss"], want["loss"])
    np.testing.assert_array_equal(got.grads["w"], want.grads["w"])
    full = {"xs": normal(4, 2, 3), "mask": np.ones((4, 2))}
    got, want = prog.run(full, w), general.run(full, w)
    assert prog._specialized is not None
    assert "specialize" in prog.specialized.stages
    np.testing.assert_allclose(got["loss"], want["loss"], rtol=1e-14)
    np.testing.assert_allclose(got.grads["w"], want.grads["w"], rtol=1e-13)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_language_models_specialised_to_full_masks_give_the_same_bits(kind):
    g = rg.Graph(f"lm_{kind}")
    rg.nn.language_model(g, 9, kind=kind, hidden_sizes=[6, 5], letter_size=4)
    params = rg.init_params(g, 3)
    batch = rg.train.pad_sequences([[1, 2, 3, 4, 5, 6]])
    assert batch["mask"].all()
    general = rg.compile(g, ["loss"], loss="loss").run(batch, params)
    prog = rg.compile(g, ["loss"], loss="loss", specialize={"mask": 1.0})
    special = prog.run(batch, params)
    bodies = [
        next(n for n in p.ir.nodes if n.op == "scan").bodies["body"]
        for p in (prog, prog.specialized)
    ]
    assert len(bodies[1].nodes) < len(bodies[0].nodes)
    np.testing.assert_array_equal(special["loss"], general["loss"])
    for name, grad in general.grads.items():
        np.testing.assert_array_equal(special.grads[name], grad, err_msg=name)
