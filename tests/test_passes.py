"""The compiler passes: schedule, prune, cse and autodiff, each a pure ``IR -> IR``.

Autodiff is checked against independently written numpy gradients (fan-out, broadcasting,
RecurrentJS-style cotangents) and against central finite differences; a 100,000-node
chain compiles and runs forward and backward without recursion.
"""

from __future__ import annotations

import copy
import itertools
import time
from typing import Any

import numpy as np
import pytest

import rgraph as rg
from rgraph.errors import CycleError, GraphError, NotDifferentiableError, UndefinedValueError
from rgraph.ir import GraphIR
from rgraph.ir.passes import autodiff, cse, prune, schedule
from rgraph.ir.verify import problems


def f64(*shape: Any) -> dict[str, Any]:
    return {"dtype": "float64", "shape": list(shape)}


def node(op: str, inputs: list[str], out: str, shape=(3,), **attrs: Any) -> dict[str, Any]:
    return {
        "op": op,
        "inputs": inputs,
        "outputs": [{"name": out, "type": f64(*shape)}],
        "attrs": attrs,
    }


def graph(nodes: list[dict], outputs: list[str], consts=(), params=()) -> GraphIR:
    return GraphIR.model_validate(
        {
            "name": "p",
            "inputs": [{"name": "x", "type": f64(3)}],
            "params": list(params),
            "consts": list(consts),
            "nodes": nodes,
            "outputs": outputs,
        }
    )


def is_topological(ir: GraphIR) -> bool:
    defined = {v.name for v in (*ir.inputs, *ir.params, *ir.consts)}
    for n in ir.nodes:
        if not set(n.inputs) <= defined:
            return False
        defined.update(o.name for o in n.outputs)
    return True


def out_names(ir: GraphIR) -> list[str]:
    return [n.outputs[0].name for n in ir.nodes]


def run(ir: GraphIR, **feeds: np.ndarray) -> dict[str, np.ndarray]:
    return rg.Interpreter(schedule(ir)).run(feeds)


# --- schedule ----------------------------------------------------------------------------

DIAMOND_REVERSED = [
    node("add", ["b", "c"], "d"),
    node("exp", ["a"], "c"),
    node("tanh", ["a"], "b"),
    node("neg", ["x"], "a"),
]


def test_schedule_orders_an_out_of_order_graph_deterministically():
    ir = graph(copy.deepcopy(DIAMOND_REVERSED), ["d"])
    done = schedule(ir)
    # Among ready nodes the one listed first goes first: c (listed 2nd) before b (3rd).
    assert out_names(done) == ["a", "c", "b", "d"]
    assert is_topological(done) and problems(done) == []
    assert schedule(ir) == done  # same input, same order
    assert schedule(done) is done
    x = np.array([0.1, -0.2, 0.3])
    np.testing.assert_allclose(run(ir, x=x)["d"], np.tanh(-x) + np.exp(-x), rtol=1e-15)


def test_schedule_of_every_permutation_is_a_valid_order_and_a_fixed_point():
    orders = set()
    for perm in itertools.permutations(DIAMOND_REVERSED):
        done = schedule(graph(copy.deepcopy(list(perm)), ["d"]))
        assert is_topological(done)
        assert schedule(done) is done
        orders.add(tuple(out_names(done)))
    assert orders == {("a", "b", "c", "d"), ("a", "c", "b", "d")}


def test_schedule_returns_an_in_order_graph_unchanged():
    g = rg.Graph("in_order")
    x = g.input("x", (3,))
    g.output(g.tanh(x) * g.exp(x), name="y")
    ir = g.ir
    assert schedule(ir) is ir


def test_schedule_names_a_cycle():
    ir = graph([node("tanh", ["b"], "a"), node("exp", ["a"], "b")], ["b"])
    with pytest.raises(CycleError, match=r"cycle of 2 nodes: .*a = tanh\(b\)"):
        schedule(ir)


def test_schedule_is_iterative_on_a_long_reversed_chain():
    n = 5_000  # well past Python's recursion limit
    nodes = [node("neg", ["x" if i == 0 else f"v{i - 1}"], f"v{i}") for i in range(n)]
    ir = GraphIR.model_construct(
        name="rev",
        inputs=graph([], []).inputs,
        params=(),
        consts=(),
        nodes=tuple(GraphIR.model_validate({"name": "n", "nodes": nodes}).nodes[::-1]),
        outputs=(f"v{n - 1}",),
    )
    done = schedule(ir)
    assert out_names(done) == [f"v{i}" for i in range(n)]


# --- prune -------------------------------------------------------------------------------


def dead_code_graph() -> GraphIR:
    return graph(
        [
            node("tanh", ["x"], "a"),
            node("exp", ["x"], "b"),  # dead
            node("eltmul", ["a", "two"], "c"),
            node("eltmul", ["b", "three"], "d"),  # dead
        ],
        ["c"],
        consts=[
            {"name": "two", "type": f64(), "data": [2.0]},
            {"name": "three", "type": f64(), "data": [3.0]},  # used only by dead code
            {"name": "unused", "type": f64(), "data": [4.0]},
        ],
        params=[{"name": "W", "type": f64(3)}],
    )


def test_prune_removes_dead_nodes_and_unused_consts():
    ir = dead_code_graph()
    pruned = prune(ir)
    assert out_names(pruned) == ["a", "c"]
    assert [c.name for c in pruned.consts] == ["two"]
    assert pruned.inputs == ir.inputs and pruned.params == ir.params  # the interface stays
    assert pruned.outputs == ("c",)
    x = np.array([0.5, -1.0, 2.0])
    np.testing.assert_allclose(run(pruned, x=x)["c"], 2 * np.tanh(x), rtol=1e-15)


def test_prune_to_chosen_outputs_and_out_of_order():
    ir = dead_code_graph()
    assert out_names(prune(ir, ["b"])) == ["b"]
    assert prune(ir, ["b"]).outputs == ("b",)
    assert prune(ir, ["d"]).consts[0].name == "three"
    shuffled = ir.replace(nodes=ir.nodes[::-1])
    assert sorted(out_names(prune(shuffled))) == ["a", "c"]
    with pytest.raises(UndefinedValueError, match="'nope'"):
        prune(ir, ["nope"])


def test_prune_returns_a_graph_without_dead_code_unchanged():
    ir = prune(dead_code_graph())
    assert prune(ir) is ir


# --- cse ---------------------------------------------------------------------------------


def test_cse_merges_duplicate_nodes_and_consts():
    g = rg.Graph("dups")
    x = g.input("x", (3,))
    a, b = g.tanh(x), g.tanh(x)
    s1, s2 = g.sum(x, axes=[0]), g.sum(x, axes=[0])
    # Named constants stay apart in the builder (unnamed scalars are shared already).
    y = (a + b) * g.const(2.0, name="two") + (s1 - s2) * g.const(2.0, name="also_two")
    g.output(y, name="y")
    ir = g.ir
    merged = cse(ir)
    ops = [n.op for n in merged.nodes]
    assert ops.count("tanh") == 1 and ops.count("sum") == 1
    assert len(merged.consts) == 1 and len(ir.consts) == 2
    tanh_out = next(n for n in merged.nodes if n.op == "tanh").outputs[0].name
    add = next(n for n in merged.nodes if n.op == "add")
    assert add.inputs == (tanh_out, tanh_out)
    assert problems(merged) == []
    x_val = np.array([0.1, 0.2, -0.3])
    np.testing.assert_allclose(run(merged, x=x_val)["y"], run(ir, x=x_val)["y"], rtol=0)


def test_cse_keeps_nodes_that_define_graph_outputs():
    g = rg.Graph("outs")
    x = g.input("x", (3,))
    a, b = g.tanh(x), g.tanh(x)
    g.output(a)
    g.output(b)
    merged = cse(g.ir)
    assert [n.op for n in merged.nodes] == ["tanh", "tanh"]
    assert merged.outputs == (a.name, b.name)


def test_cse_keeps_what_differs():
    g = rg.Graph("differ")
    x = g.input("x", (2, 3))
    g.output(g.sum(x, axes=[0]) * 1.0, name="rows")
    g.output(g.sum(x, axes=[1], keepdims=True) * 1.0, name="cols")
    g.output(g.div(1.0, g.full_like(x, value=0.0)), name="pos")
    g.output(g.div(1.0, g.full_like(x, value=-0.0)), name="neg")
    g.output(g.div(1.0, g.const(0.0)), name="pos_c")
    g.output(g.div(1.0, g.const(-0.0)), name="neg_c")
    ir = g.ir
    merged = cse(ir)
    assert [n.op for n in merged.nodes].count("sum") == 2
    assert [n.op for n in merged.nodes].count("full_like") == 2
    assert sorted(c.data[0] for c in merged.consts) == [0.0, 0.0, 1.0]  # -0.0 kept apart
    with np.errstate(divide="ignore"):
        out = rg.Interpreter(merged).run({"x": np.ones((2, 3))})
    assert np.all(out["pos"] == np.inf) and np.all(out["neg"] == -np.inf)
    assert out["pos_c"] == np.inf and out["neg_c"] == -np.inf


def test_cse_without_duplicates_returns_the_graph():
    g = rg.Graph("unique")
    x = g.input("x", (3,))
    g.output(g.tanh(x) + g.exp(x))
    ir = g.ir
    assert cse(ir) is ir


# --- purity ------------------------------------------------------------------------------


def grad_graph() -> tuple[rg.Graph, str]:
    g = rg.Graph("pure")
    x = g.input("x", (4, 3))
    W = g.param("W", (3, 2))
    b = g.param("b", (2,))
    h = g.tanh(x @ W + b)
    dup = g.tanh(x @ W + b)
    g.output(h, name="h")
    loss = g.output(g.sum(h * dup) + g.sum(g.exp(x)) * 0.0, name="loss")
    return g, loss.name


PASSES = {
    "schedule": (lambda ir: ir.replace(nodes=ir.nodes[::-1]), schedule),
    "prune": (lambda ir: ir, lambda ir: prune(ir, ["h"])),
    "cse": (lambda ir: ir, cse),
    "autodiff_loss": (lambda ir: ir, lambda ir: autodiff(ir, ["W", "b"], loss="loss")),
    "autodiff_cotangents": (lambda ir: ir, lambda ir: autodiff(ir, ["W"], cotangents=["h"])),
}


@pytest.mark.parametrize("name", sorted(PASSES))
def test_every_pass_leaves_its_input_unchanged(name):
    prepare, apply = PASSES[name]
    g, _ = grad_graph()
    ir = prepare(g.ir)
    before, text = ir.model_dump(), str(ir)
    result = apply(ir)
    assert ir.model_dump() == before and str(ir) == text
    assert result is not ir and result.model_dump() != before
    assert problems(result) == []


def test_schedule_is_pure_on_its_out_of_order_input():
    ir = graph(copy.deepcopy(DIAMOND_REVERSED), ["d"])
    before = ir.model_dump()
    schedule(ir)
    assert ir.model_dump() == before
    assert out_names(ir) == ["d", "c", "b", "a"]


def test_compile_stages_leave_the_builder_graph_unchanged():
    g, loss = grad_graph()
    before = g.ir.model_dump()
    rg.compile(g, loss=loss)
    assert g.ir.model_dump() == before


# --- autodiff ----------------------------------------------------------------------------


def grads_of(g: rg.Graph, loss: Any, feeds: dict, params: dict, wrt=None) -> dict:
    return rg.compile(g, loss=loss, wrt=wrt).run(feeds, params).grads


def finite_difference(f, x: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    grad = np.zeros_like(x)
    for i in np.ndindex(x.shape):
        up, down = x.copy(), x.copy()
        up[i] += eps
        down[i] -= eps
        grad[i] = (f(up) - f(down)) / (2 * eps)
    return grad


def test_fan_out_accumulates_every_use():
    # x is used three times: by tanh, twice by eltmul (x * x), and by exp.
    g = rg.Graph("fan")
    x = g.param("x", (2, 3))
    c = g.input("c", (2, 3))
    loss = g.sum(g.tanh(x) * c + x * x + g.exp(x))
    xv = np.array([[0.1, -0.5, 0.9], [1.2, -1.1, 0.0]])
    cv = np.array([[1.0, 2.0, -1.0], [0.5, 0.25, 3.0]])
    got = grads_of(g, loss, {"c": cv}, {"x": xv})["x"]
    want = (1 - np.tanh(xv) ** 2) * cv + 2 * xv + np.exp(xv)
    np.testing.assert_allclose(got, want, rtol=1e-13)

    def f(xx):
        return np.sum(np.tanh(xx) * cv + xx * xx + np.exp(xx))

    np.testing.assert_allclose(got, finite_difference(f, xv), rtol=1e-7, atol=1e-8)
    backward = rg.compile(g, loss=loss).stages["autodiff"]
    grad_node = next(n for n in backward.nodes if n.outputs[0].name == "x.grad")
    assert grad_node.op == "add"  # the driver sums the contributions


def test_unbroadcasting_a_column_bias_a_row_bias_and_a_scalar():
    g = rg.Graph("bcast")
    M = g.param("M", (3, 4))
    col = g.param("col", (3, 1))
    row = g.param("row", (4,))
    s = g.param("s", ())
    R = g.input("R", (3, 4))
    loss = g.sum(((M + col) * s + row) * R)
    rng = np.random.default_rng(7)
    Mv, colv, rowv = rng.normal(size=(3, 4)), rng.normal(size=(3, 1)), rng.normal(size=4)
    sv, Rv = np.array(1.7), rng.normal(size=(3, 4))
    grads = grads_of(g, loss, {"R": Rv}, {"M": Mv, "col": colv, "row": rowv, "s": sv})
    want = {
        "M": sv * Rv,
        "col": (sv * Rv).sum(axis=1, keepdims=True),
        "row": Rv.sum(axis=0),
        "s": np.sum((Mv + colv) * Rv),
    }
    for name, w in want.items():
        assert grads[name].shape == w.shape, name
        np.testing.assert_allclose(grads[name], w, rtol=1e-13, err_msg=name)


def test_scalar_param_times_matrix_matches_finite_differences():
    g = rg.Graph("scalar")
    s = g.param("s", ())
    M = g.input("M", (2, 3))
    loss = g.sum(g.tanh(s * M))
    Mv = np.array([[0.3, -1.0, 2.0], [0.1, 0.5, -0.7]])
    sv = np.array(0.8)
    got = grads_of(g, loss, {"M": Mv}, {"s": sv})["s"]
    assert got.shape == ()
    want = finite_difference(lambda ss: np.sum(np.tanh(ss * Mv)), sv)
    np.testing.assert_allclose(got, want, rtol=1e-8)
    np.testing.assert_allclose(got, np.sum((1 - np.tanh(sv * Mv) ** 2) * Mv), rtol=1e-14)


def test_gradient_of_an_unused_wrt_is_zeros():
    g = rg.Graph("unused")
    W = g.param("W", (2, 2))
    g.param("V", (3,), "float64")
    loss = g.sum(W * W)
    grads = grads_of(g, loss, {}, {"W": np.eye(2), "V": np.ones(3)}, wrt=["W", "V"])
    np.testing.assert_array_equal(grads["V"], np.zeros(3))
    np.testing.assert_array_equal(grads["W"], 2 * np.eye(2))


def test_no_gradient_flows_through_sign_and_numel():
    g = rg.Graph("flat")
    W = g.param("W", (3,))
    loss = g.sum(g.sign(W) * 5.0) + g.sum(W) + g.numel(W) * g.sum(W * 0.0 + 1.0)
    Wv = np.array([0.5, -2.0, 3.0])
    got = grads_of(g, loss, {}, {"W": Wv})["W"]
    np.testing.assert_array_equal(got, np.ones(3))


def test_loss_must_be_a_scalar():
    g = rg.Graph("vector_loss")
    W = g.param("W", (3,))
    y = g.tanh(W)
    with pytest.raises(GraphError, match=r"must be a scalar, got f64\[3\]"):
        rg.compile(g, loss=y)
    with pytest.raises(GraphError, match="must be a scalar"):
        autodiff(g.ir, ["W"], loss=y.name)


def test_autodiff_needs_a_loss_or_cotangents_and_float_values():
    g = rg.Graph("nothing")
    W = g.param("W", (3,))
    i = g.input("i", (3,), "int64")
    g.output(W * 2.0)
    with pytest.raises(GraphError, match="needs a scalar loss or outputs given cotangents"):
        autodiff(g.ir, ["W"])
    with pytest.raises(GraphError, match="no value 'Q'"):
        autodiff(g.ir, ["Q"], cotangents=[g.ir.outputs[0]])
    with pytest.raises(GraphError, match="i64"):
        autodiff(g.ir, [i.name], cotangents=[g.ir.outputs[0]])


def test_an_op_without_a_vjp_rule_is_not_differentiable():
    g = rg.Graph("nodiff")
    logits = g.param("logits", (2, 4))
    V = g.param("V", (3,))
    t = g.input("t", (2,), "int64")
    ct = g.input("ct", ())
    grad = g.softmax_cross_entropy_grad(logits, t, ct)
    loss = g.sum(grad * grad) + g.sum(V * V)
    with pytest.raises(NotDifferentiableError) as info:
        rg.compile(g, loss=loss)
    msg = str(info.value)
    assert "'softmax_cross_entropy_grad'" in msg and grad.name in msg
    assert "test_passes.py" in msg  # the node's source line
    # A gradient that does not flow through the op is fine.
    ok = rg.compile(g, loss=loss, wrt=["V"])
    feeds = {"t": np.zeros(2, np.int64), "ct": np.array(1.0)}
    Vv = np.array([1.0, -2.0, 0.5])
    res = ok.run(feeds, {"logits": np.zeros((2, 4)), "V": Vv})
    np.testing.assert_array_equal(res.grads["V"], 2 * Vv)


def test_user_given_cotangents_like_recurrentjs():
    # RecurrentJS: h = W x + b; h.dw[0] = 1; G.backward()
    g = rg.Graph("affine")
    x = g.input("x", (2, 1))
    W = g.param("W", (3, 2))
    b = g.param("b", (3, 1))
    h = g.output(g.add(g.mul(W, x), b), name="h")
    prog = rg.compile(g, cotangents=[h], wrt=["W", "b", "x"])
    assert "h.ct" in {v.name for v in prog.ir.inputs}
    rng = np.random.default_rng(3)
    xv, Wv, bv = rng.normal(size=(2, 1)), rng.normal(size=(3, 2)), rng.normal(size=(3, 1))
    for dh in (np.array([[1.0], [0.0], [0.0]]), rng.normal(size=(3, 1))):
        res = prog.run({"x": xv}, {"W": Wv, "b": bv}, cotangents={"h": dh})
        np.testing.assert_allclose(res.outputs["h"], Wv @ xv + bv, rtol=1e-15)
        np.testing.assert_allclose(res.grads["W"], dh @ xv.T, rtol=1e-15)
        np.testing.assert_allclose(res.grads["b"], dh, rtol=0)
        np.testing.assert_allclose(res.grads["x"], Wv.T @ dh, rtol=1e-15)


def test_cotangents_and_a_loss_add_up():
    g = rg.Graph("both")
    W = g.param("W", (3,))
    h = g.output(g.tanh(W), name="h")
    loss = g.output(g.sum(W * W), name="loss")
    prog = rg.compile(g, loss=loss, cotangents=[h])
    Wv, dh = np.array([0.1, -0.4, 0.8]), np.array([1.0, -2.0, 0.5])
    got = prog.run({}, {"W": Wv}, cotangents={"h": dh}).grads["W"]
    np.testing.assert_allclose(got, 2 * Wv + dh * (1 - np.tanh(Wv) ** 2), rtol=1e-14)


# --- a 100,000-node chain ----------------------------------------------------------------

CHAIN_OPS = 100_000


def test_a_100k_node_chain_compiles_and_runs_forward_and_backward():
    t0 = time.perf_counter()
    g = rg.Graph("chain")
    x = g.input("x", (3,))
    w = g.param("w", (3,))
    up, down, step = g.const(2.0), g.const(0.5), g.const(0.25)
    h = x * w
    for _ in range(CHAIN_OPS // 4):  # four elementwise ops per round
        h = h * up + step
        h = h * down + step
    loss = g.sum(h)
    t1 = time.perf_counter()
    prog = rg.compile(g, loss=loss, wrt=["w"])
    t2 = time.perf_counter()
    xv, wv = np.array([0.1, -2.0, 3.5]), np.array([1.5, 0.3, -0.7])
    res = prog.run({"x": xv}, {"w": wv})
    t3 = time.perf_counter()
    print(f"\n100k chain: build {t1 - t0:.1f}s, compile {t2 - t1:.1f}s, run {t3 - t2:.1f}s")

    assert len(g.ir.nodes) == CHAIN_OPS + 2
    # One backward node per product (sums pass the cotangent on unchanged; the constants
    # get no gradient at all), so the backward covers the whole chain.
    products = CHAIN_OPS // 2
    assert len(prog.stages["autodiff"].nodes) >= len(g.ir.nodes) + products
    hv = xv * wv
    for _ in range(CHAIN_OPS // 4):
        hv = hv * 2.0 + 0.25
        hv = hv * 0.5 + 0.25
    np.testing.assert_array_equal(res.outputs[loss.name], np.sum(hv))
    # d h / d w = x * (2 * 0.5) ** rounds = x, exactly.
    np.testing.assert_array_equal(res.grads["w"], xv)


def test_forward_identities_drops_identities_but_keeps_output_names():
    from rgraph.ir.passes import forward_identities

    g = rg.Graph("ids")
    x = g.input("x", (3,))
    y = g.identity(x)
    z = g.tanh(g.identity(y))
    g.output(z, name="z")  # an identity that names an output: kept
    ir = forward_identities(g.ir)
    assert [n.op for n in ir.nodes] == ["tanh", "identity"]
    assert ir.nodes[0].inputs == ("x",) and ir.outputs == ("z",)
    assert forward_identities(ir) is ir
    xv = np.array([0.1, -0.2, 0.3])
    np.testing.assert_array_equal(rg.Interpreter(ir).run({"x": xv})["z"], np.tanh(xv))


def test_what_reads_an_output_identity_reads_its_source_and_cse_sees_equal_work():
    from rgraph.ir.passes import cse, forward_identities

    g = rg.Graph("ids")
    x = g.input("x", (3,))
    t = g.tanh(x)
    y = g.output(t, name="y")  # y = identity(t), the output's name
    g.output(y * y + t * t, name="z")
    ir = forward_identities(g.ir)
    assert [n.op for n in ir.nodes if n.op == "identity"] == ["identity", "identity"]
    assert "y" in ir.outputs and all("y" not in n.inputs for n in ir.nodes)
    merged = cse(ir)
    assert sum(n.op == "eltmul" for n in merged.nodes) == 1
    xv = np.array([0.1, -0.2, 0.3])
    out = rg.Interpreter(merged).run({"x": xv})
    np.testing.assert_array_equal(out["y"], np.tanh(xv))
    np.testing.assert_array_equal(out["z"], np.tanh(xv) ** 2 + np.tanh(xv) ** 2)


def test_forward_identities_renames_loop_body_outputs():
    from rgraph.ir.passes import forward_identities

    g = rg.Graph("loop")
    xs = g.input("xs", ("T", 2))

    def step(b, c, x):
        h = b.tanh(c[0] + x[0])
        return [h], [b.identity(h)]

    _, (hs,) = g.scan(step, init=[g.full(shape=[2])], xs=[xs])
    g.output(hs, name="hs")
    ir = forward_identities(g.ir)
    body = next(n for n in ir.nodes if n.op == "scan").bodies["body"]
    assert "identity" not in [n.op for n in body.nodes]
    assert body.outputs[0] == body.outputs[1]
    xv = np.arange(6.0).reshape(3, 2) / 10
    expected = rg.Interpreter(g.ir).run({"xs": xv})["hs"]
    np.testing.assert_array_equal(rg.Interpreter(ir).run({"xs": xv})["hs"], expected)
