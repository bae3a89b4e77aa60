"""Debug mode, ``rg.compile(..., check_finite=True)``: the first NaN or infinity is traced
to the node that *produced* it (not to a later node that only passed it on), with its
inputs' statistics, the user's source line and, inside a loop, the scan step; forward and
in the generated backward. Without the flag the same programs run and return non-finite
numbers without raising.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

import rgraph as rg
from rgraph.errors import NonFiniteError

THIS_FILE = "test_debug.py"


def line() -> int:
    """The caller's line number."""
    return sys._getframe(1).f_lineno


def scan_nodes(ir):
    return [n for n in ir.nodes if n.op == "scan"]


# --- a planted log(0) in the forward pass ---------------------------------------------


def planted_log():
    g = rg.Graph("fwd")
    x = g.input("x", (3,))
    a = x * 2.0
    here = line() + 1
    logs = g.log(a)
    y = logs * 3.0 + 1.0  # passes the -inf on
    g.output(y, name="y")
    g.output(g.exp(y), name="z")  # exp(-inf) = 0 hides it altogether
    return g, logs, here


def test_log_of_zero_is_blamed_on_the_log_node():
    g, logs, here = planted_log()
    prog = rg.compile(g, check_finite=True)
    with pytest.raises(NonFiniteError) as info:
        prog.run({"x": np.array([1.0, 0.0, 2.0])})
    message = str(info.value)
    assert f"'{logs.name} = log(" in message
    assert f"{THIS_FILE}:{here}" in message
    assert "1 inf" in message and f"in '{logs.name}'" in message
    # the statistics of the log's input: 2 * [1, 0, 2]
    assert "min 0 max 4" in message and "float64[3]" in message
    # no later node (the ones that only passed the inf on) is named
    later = [n for n in prog.ir.nodes if logs.name in n.inputs]
    assert later
    for node in later:
        assert f"'{node.outputs[0].name} =" not in message
    assert "eltmul" not in message and "exp" not in message


def test_without_check_finite_the_same_program_returns_inf_silently():
    """The contrast: no error; y is -inf, and z = exp(y) is 0, the trace of it lost."""
    g, _, _ = planted_log()
    with np.errstate(all="ignore"):  # numpy's own warnings are all there is
        out = rg.compile(g).run({"x": np.array([1.0, 0.0, 2.0])}).outputs
    assert out["y"][1] == -np.inf
    assert np.isfinite(out["y"][[0, 2]]).all()
    np.testing.assert_allclose(
        out["z"], [np.exp(3 * np.log(2.0) + 1), 0.0, np.exp(3 * np.log(4.0) + 1)]
    )
    assert out["z"][1] == 0.0


def test_finite_values_run_unchanged_in_debug_mode():
    g, _, _ = planted_log()
    x = np.array([1.0, 0.5, 2.0])
    debug = rg.compile(g, check_finite=True).run({"x": x}).outputs
    plain = rg.compile(g).run({"x": x}).outputs
    for name in plain:
        np.testing.assert_array_equal(debug[name], plain[name])
    np.testing.assert_allclose(plain["y"], 3 * np.log(2 * x) + 1)


# --- an overflow in the backward of a scan ----------------------------------------------


def reciprocal_sum():
    """h_t = h_{t-1} + 1 / x_t: finite forward for x_t = 1e-200 (1e200), but its
    gradient -g / x_t^2 overflows."""
    g = rg.Graph("recip")
    xs = g.input("xs", ("T", 2))
    h0 = g.input("h0", (2,))
    here = line() + 3

    def step(b, carry, x):
        h = carry[0] + 1.0 / x[0]
        return [h], [h]

    (hT,), _ = g.scan(step, init=[h0], xs=[xs])
    g.output(hT, name="hT")
    return g, g.sum(hT), here


def overflowing_feeds():
    xs = np.ones((4, 2))
    xs[2, 1] = 1e-200
    return {"xs": xs, "h0": np.zeros(2)}


def test_overflow_in_the_backward_of_a_scan_names_the_generated_node_and_step():
    g, loss, division = reciprocal_sum()
    feeds = overflowing_feeds()
    # the forward alone is finite, also in debug mode
    forward = rg.compile(g, check_finite=True).run(feeds).outputs
    np.testing.assert_allclose(forward["hT"], [4.0, 3.0 + 1e200])

    prog = rg.compile(g, loss=loss, wrt=["xs"], check_finite=True)
    fwd_scan, back_scan = scan_nodes(prog.ir)
    assert back_scan.attrs.get("reverse") is True and not fwd_scan.attrs.get("reverse")
    body = back_scan.bodies["body"]
    assert body.name.endswith("_vjp")
    with pytest.raises(NonFiniteError) as info:
        prog.run(feeds)
    message = str(info.value)
    # the culprit is a node of the generated reverse scan's body ...
    culprits = [n for n in body.nodes if f"'{n.outputs[0].name} = {n.op}(" in message]
    assert len(culprits) == 1, message
    (culprit,) = culprits
    assert culprit.op in ("div", "eltmul")
    assert "1 inf" in message and f"in '{culprit.outputs[0].name}'" in message
    # ... inside the backward scan node, at step 2, pointing at the user's division
    back_outs = ", ".join(o.name for o in back_scan.outputs)
    assert f"'{back_outs} = scan(" in message
    fwd_outs = ", ".join(o.name for o in fwd_scan.outputs)
    assert f"'{fwd_outs} = scan(" not in message
    assert "at scan step 2:" in message
    assert culprit.loc is not None and culprit.loc.line == division
    assert f"{THIS_FILE}:{division} produced" in message
    # and the statistics of the culprit's inputs include the tiny x_t
    assert "min 1e-200" in message


def test_without_check_finite_the_backward_returns_inf_silently():
    g, loss, _ = reciprocal_sum()
    prog = rg.compile(g, loss=loss, wrt=["xs"])
    with np.errstate(all="ignore"):
        res = prog.run(overflowing_feeds())
    grad = res.grads["xs"]
    assert grad[2, 1] == -np.inf
    expected = -np.ones((4, 2))  # d(1/x)/dx = -1/x^2 at x = 1
    expected[2, 1] = -np.inf
    np.testing.assert_array_equal(grad, expected)
    np.testing.assert_allclose(res.outputs["hT"], [4.0, 3.0 + 1e200])


def test_nan_made_in_a_forward_scan_body_names_the_step():
    g = rg.Graph("loop")
    xs = g.input("xs", ("T",))
    here = line() + 1
    (cT,), _ = g.scan(lambda b, c, x: ([c[0] + b.log(x[0])], []), init=[g.input("c0", ())], xs=[xs])
    g.output(cT, name="cT")
    prog = rg.compile(g, check_finite=True)
    with pytest.raises(NonFiniteError) as info:
        prog.run({"xs": np.array([1.0, 2.0, 3.0, -1.0, 5.0]), "c0": np.array(0.0)})
    message = str(info.value)
    assert "at scan step 3:" in message
    assert "1 NaN" in message and "= log(" in message
    assert message.count(f"{THIS_FILE}:{here}") == 2  # the scan and the log in its body


# --- non-finite feeds -------------------------------------------------------------------


@pytest.mark.parametrize(("bad", "word"), [(np.nan, "1 NaN"), (np.inf, "1 inf")])
def test_non_finite_feed_is_reported_as_such(bad, word):
    g = rg.Graph("feed")
    x = g.input("x", (2, 3))
    W = g.param("W", (3,), init="ones")
    g.output(g.tanh(x * W), name="y")
    prog = rg.compile(g, check_finite=True)
    feed = np.zeros((2, 3))
    feed[1, 2] = bad
    with pytest.raises(NonFiniteError) as info:
        prog.run({"x": feed}, rg.init_params(g))
    assert str(info.value) == f"input 'x' holds {word}"
    # the same for a parameter in the store: named as such, not blamed on eltmul
    with pytest.raises(NonFiniteError) as info:
        prog.run({"x": np.zeros((2, 3))}, {"W": np.array([1.0, bad, 0.0])})
    assert str(info.value) == f"param 'W' holds {word}"
    # and an int input cannot hold a NaN: not checked, runs
    g2 = rg.Graph("ints")
    k = g2.input("k", (2,), "int32")
    g2.output(k + k, name="k2")
    out = rg.compile(g2, check_finite=True).run({"k": np.array([1, 2], np.int32)}).outputs
    np.testing.assert_array_equal(out["k2"], [2, 4])
