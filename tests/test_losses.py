"""``fuse_losses``: a cross-entropy and its gradient become one node where that is sound."""

from __future__ import annotations

import numpy as np
import pytest

import rgraph as rg
from rgraph.ir import GraphIR
from rgraph.ir.passes import autodiff, fuse_losses
from tests.pass_checks import same_results

RNG = np.random.default_rng(77)


def ops(ir: GraphIR) -> list[str]:
    return [n.op for n in ir.nodes]


def classifier(reduction: str = "mean", masked: bool = True) -> rg.Graph:
    g = rg.Graph("classifier")
    x = g.input("x", ("B", 4))
    t = g.input("t", ("B",), dtype="int64")
    m = g.input("m", ("B",)) if masked else None
    w = g.param("W", (4, 6), init="uniform")
    logits = x @ w
    loss = g.softmax_cross_entropy(logits, t, mask=m, reduction=reduction)
    g.output(loss if reduction != "none" else loss.sum(), name="loss")
    return g


def feeds(batch: int = 5) -> dict:
    return {
        "x": RNG.normal(size=(batch, 4)),
        "t": RNG.integers(0, 6, batch),
        "m": (RNG.random(batch) > 0.3).astype(np.float64),
    }


@pytest.mark.parametrize("reduction", ["mean", "sum"])
@pytest.mark.parametrize("masked", [True, False])
def test_a_loss_and_its_gradient_become_one_node(reduction, masked):
    g = classifier(reduction, masked)
    before = autodiff(g.ir, ["W"], "loss")
    after = fuse_losses(before)
    assert "softmax_cross_entropy_and_grad" in ops(after)
    assert not {"softmax_cross_entropy", "softmax_cross_entropy_grad"} & set(ops(after))
    assert "full_like" not in ops(after)  # the seed is made from the loss's type alone
    f = feeds()
    if not masked:
        del f["m"]
    params = rg.init_params(g, 1)
    got = same_results(before, after, f, params)
    want_loss = rg.compile(g, loss="loss", optimize=False).run(f, params)
    np.testing.assert_array_equal(got["loss"], want_loss.outputs["loss"])
    np.testing.assert_array_equal(got["W.grad"], want_loss.grads["W"])


def test_per_position_losses_summed_are_not_fused():
    # The sum's gradient broadcasts the seed like the per-position losses: their shape is
    # read from the loss's value (broadcast_like), so the cotangent depends on it.
    before = autodiff(classifier("none").ir, ["W"], "loss")
    assert "softmax_cross_entropy_grad" in ops(before)
    assert fuse_losses(before) is before


def test_a_cotangent_made_from_the_loss_value_is_not_fused():
    # d(loss^2)/d logits: the gradient's cotangent is 2 * loss, known only after it.
    g = rg.Graph("square")
    x = g.input("x", ("B", 4))
    t = g.input("t", ("B",), dtype="int64")
    w = g.param("W", (4, 6), init="uniform")
    loss = g.softmax_cross_entropy(x @ w, t)
    g.output(loss * loss, name="loss")
    before = autodiff(g.ir, ["W"], "loss")
    assert fuse_losses(before) is before


def test_different_masks_or_reductions_are_not_fused():
    g = rg.Graph("two")
    x = g.input("x", ("B", 4))
    t = g.input("t", ("B",), dtype="int64")
    m = g.input("m", ("B",))
    w = g.param("W", (4, 6), init="uniform")
    z = x @ w
    # The gradient of each loss is the other's grad op: masked vs not, sum vs mean.
    a = g.softmax_cross_entropy(z, t, mask=m, reduction="sum")
    g.output(a, name="a")
    before = autodiff(g.ir, ["W"], "a")
    grad = next(n for n in before.nodes if n.op == "softmax_cross_entropy_grad")
    other = before.replace(
        nodes=tuple(
            n.model_copy(update={"attrs": {"reduction": "mean"}}) if n is grad else n
            for n in before.nodes
        )
    )
    assert fuse_losses(other) is other
    f = feeds()
    same_results(before, fuse_losses(before), f, rg.init_params(g, 2))


def test_the_compiled_training_program_of_the_language_model_fuses_its_loss():
    g = rg.Graph("lm")
    rg.nn.language_model(g, vocab=9, kind="lstm", hidden_sizes=[5], letter_size=3)
    program = rg.compile(g, ["loss", "nll", "count"], loss="loss")
    assert "fuse_losses" in program.stages
    assert ops(program.ir).count("softmax_cross_entropy_and_grad") == 1
    assert "softmax_cross_entropy_grad" not in ops(program.ir)
