"""The define-then-run builder: what it records, and how it reports mistakes.

Building computes nothing; operator sugar records the registry op it stands for; Python
numbers become constants of the other operand's dtype; shape and dtype mistakes fail at
the line of the user's script that made them, and the message says so.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

import rgraph as rg
from rgraph.errors import DTypeError, DuplicateValueError, GraphError, ShapeError
from rgraph.ir.op import REGISTRY

THIS_FILE = Path(__file__).name


def here() -> int:
    """The line number of the line that calls ``here()``."""
    return sys._getframe(1).f_lineno


def last_node(g: rg.Graph):
    return g.ir.nodes[-1]


def const_of(g: rg.Graph, name: str):
    return next(c for c in g.ir.consts if c.name == name)


def split_location(message: str) -> tuple[str, int, str]:
    """``"/path/file.py:LINE: rest"`` -> (file name, line, rest)."""
    loc, rest = message.split(": ", 1)
    path, line = loc.rsplit(":", 1)
    return Path(path).name, int(line), rest


# --- building computes nothing -----------------------------------------------------------


class KernelCalled(Exception):
    pass


def test_building_and_compiling_call_no_kernel(monkeypatch):
    def refuse(self, a, ctx):
        raise KernelCalled(self.name)

    for op in REGISTRY.values():
        monkeypatch.setattr(type(op), "kernel", refuse)

    g = rg.Graph("lazy")
    x = g.input("x", ("B", 4))
    t = g.input("t", ("B",), "int64")
    W = g.param("W", (4, 3), init="uniform")
    b = g.param("b", (3,))
    h = g.tanh(x @ W + b) * 0.5
    loss = g.softmax_cross_entropy(h, t)
    g.output(h, name="h")
    prog = rg.compile(g, loss=loss)  # verify, schedule, prune, autodiff, cse: no kernels
    assert "W.grad" in prog.ir.outputs

    # The patch is live: running is what would call kernels.
    with pytest.raises(KernelCalled):
        prog.run({"x": np.ones((2, 4)), "t": np.zeros(2, np.int64)}, rg.init_params(g, 0))


def test_building_records_nodes_with_types_not_data():
    g = rg.Graph("sym")
    x = g.input("x", ("T", "B", 5))
    W = g.param("W", (5, 3))
    y = g.tanh(x @ W)
    assert isinstance(y, rg.Value)
    assert y.type == rg.TensorType(dtype="float64", shape=("T", "B", 3))
    assert [n.op for n in g.ir.nodes] == ["matmul", "tanh"]
    assert not hasattr(y, "data") and not hasattr(y, "numpy")


# --- operator sugar ----------------------------------------------------------------------


def test_operators_record_the_ops_they_stand_for():
    g = rg.Graph("sugar")
    a = g.input("a", (3, 4))
    b = g.input("b", (3, 4))
    W = g.param("W", (4, 2))
    cases = [
        (lambda: a @ W, "matmul", ["a", "W"], {}),
        (lambda: g.mul(a, W), "matmul", ["a", "W"], {}),
        (lambda: g.matmul(a, b, transpose_b=True), "matmul", ["a", "b"], {"transpose_b": True}),
        (lambda: a * b, "eltmul", ["a", "b"], {}),
        (lambda: g.eltmul(a, b), "eltmul", ["a", "b"], {}),
        (lambda: a + b, "add", ["a", "b"], {}),
        (lambda: a - b, "sub", ["a", "b"], {}),
        (lambda: a / b, "div", ["a", "b"], {}),
        (lambda: -a, "neg", ["a"], {}),
        (lambda: a.T, "transpose", ["a"], {"perm": [1, 0]}),
        (lambda: a[1:3], "slice", ["a"], {"start": 1, "stop": 3}),
        (lambda: a[:, 1:4:2], "slice", ["a"], {"axis": 1, "start": 1, "stop": 4, "step": 2}),
        (lambda: a.tanh(), "tanh", ["a"], {}),
        (lambda: a.sum(axes=[0]), "sum", ["a"], {"axes": [0]}),
    ]
    for build, op, inputs, attrs in cases:
        out = build()
        node = last_node(g)
        assert (node.op, list(node.inputs), node.attrs) == (op, inputs, attrs)
        assert node.outputs[0].name == out.name
    assert g.mul(a, W).shape == (3, 2)
    assert a.T.shape == (4, 3)
    assert a[1:3].shape == (2, 4)


def test_integer_index_drops_the_axis():
    g = rg.Graph("index")
    a = g.input("a", (3, 4))
    row = a[1]
    assert row.shape == (4,)
    nodes = g.ir.nodes
    assert [n.op for n in nodes] == ["slice", "reshape"]
    assert nodes[0].attrs == {"start": 1, "stop": 2}
    assert a[-1].shape == (4,)
    assert a[:, 2].shape == (3,)


def test_operator_sugar_computes_what_numpy_computes():
    rng = np.random.default_rng(0)
    av, bv = rng.normal(size=(3, 4)), rng.uniform(1, 2, size=(3, 4))
    Wv = rng.normal(size=(4, 2))
    expected = {
        "matmul": av @ Wv,
        "mul": av @ Wv,
        "eltmul": av * bv,
        "add": av + bv,
        "sub": av - bv,
        "div": av / bv,
        "neg": -av,
        "T": av.T,
        "rows": av[1:3],
        "cols": av[:, 1:4:2],
        "row": av[1],
        "last": av[-1],
        "col": av[:, 2],
        "rsub": 2.0 - av,
        "rdiv": 1.0 / bv,
        "scaled": av * 0.5 + 0.25,
    }
    g = rg.Graph("sugar_values")
    a, b = g.input("a", (3, 4)), g.input("b", (3, 4))
    W = g.param("W", (4, 2))
    built = {
        "matmul": a @ W,
        "mul": g.mul(a, W),
        "eltmul": a * b,
        "add": a + b,
        "sub": a - b,
        "div": a / b,
        "neg": -a,
        "T": a.T,
        "rows": a[1:3],
        "cols": a[:, 1:4:2],
        "row": a[1],
        "last": a[-1],
        "col": a[:, 2],
        "rsub": 2.0 - a,
        "rdiv": 1.0 / b,
        "scaled": a * 0.5 + 0.25,
    }
    for name, value in built.items():
        g.output(value, name=name)
    out = rg.compile(g).run({"a": av, "b": bv}, {"W": Wv}).outputs
    assert set(out) == set(expected)
    for name, want in expected.items():
        assert out[name].shape == want.shape, name
        np.testing.assert_allclose(out[name], want, rtol=1e-14, atol=0, err_msg=name)


@pytest.mark.parametrize("dtype", ["float32", "float64", "int32", "int64"])
def test_scalars_become_consts_of_the_other_operands_dtype(dtype):
    g = rg.Graph("lift")
    x = g.input("x", (2, 3), dtype)
    y = x * 2
    node = last_node(g)
    assert node.op == "eltmul" and node.inputs[0] == "x"
    c = const_of(g, node.inputs[1])
    assert c.type == rg.TensorType(dtype=dtype, shape=())
    assert c.data == [2]
    assert y.dtype == dtype
    z = 3 - x  # reflected: the constant is the first operand
    node = last_node(g)
    assert node.op == "sub" and node.inputs[1] == "x"
    assert const_of(g, node.inputs[0]).type.dtype == dtype
    assert z.dtype == dtype


def test_float32_scalars_are_float32_and_compute_in_float32():
    g = rg.Graph("f32")
    x = g.input("x", (3,), "float32")
    g.output(0.1 * x + 1.5, name="y")
    assert {c.type.dtype for c in g.ir.consts} == {"float32"}
    xv = np.array([1.0, 2.0, 3.0], np.float32)
    y = rg.compile(g).run({"x": xv}).outputs["y"]
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, np.float32(0.1) * xv + np.float32(1.5))


def test_a_scalar_that_an_int_dtype_cannot_hold_is_a_dtype_error():
    g = rg.Graph("lift_int")
    x = g.input("x", (3,), "int32")
    assert (x * 2.0).dtype == "int32"  # exact: fine
    for bad in (1.5, 2**40, float("nan")):
        with pytest.raises(DTypeError) as info:
            line = here() + 1
            x * bad
        name, at, rest = split_location(str(info.value))
        assert (name, at) == (THIS_FILE, line)
        assert repr(bad) in rest and "int32" in rest


def test_scalar_lifting_needs_a_value_operand():
    g = rg.Graph("no_ref")
    with pytest.raises(GraphError, match="expected a Value or a number"):
        g.add(g.input("x", (2,)), "two")


# --- mistakes fail at the user's line ----------------------------------------------------


def test_shape_mistake_names_this_file_the_line_and_both_shapes():
    g = rg.Graph("mlp")
    x = g.input("x", (4, 1))
    W = g.param("W", (3, 5))
    with pytest.raises(ShapeError) as info:
        line = here() + 1
        W @ x
    name, at, rest = split_location(str(info.value))
    assert (name, at) == (THIS_FILE, line)
    assert rest.startswith("matmul(W: f64[3,5], x: f64[4,1]): ")
    assert "inner dims differ: 5 vs 4" in rest


def test_shape_mistake_through_every_spelling_points_at_the_user_line():
    g = rg.Graph("spellings")
    x = g.input("x", (4, 1))
    W = g.param("W", (3, 5))
    b = g.param("b", (2, 1))
    attempts = [
        (lambda: g.mul(W, x), "matmul"),
        (lambda: g.op("matmul", W, x), "matmul"),
        (lambda: W.matmul(x), "matmul"),
        (lambda: (W @ W.T) + b, "add"),
        (lambda: g.eltmul(x, b), "eltmul"),
    ]
    for attempt, op in attempts:
        with pytest.raises(ShapeError) as info:
            attempt()
        # The lambda's line is in this file: the builder skipped all of its own frames.
        tb_lines = {
            entry.lineno + 1 for entry in info.traceback if Path(entry.path).name == THIS_FILE
        }
        name, at, rest = split_location(str(info.value))
        assert name == THIS_FILE and at in tb_lines
        assert rest.startswith(f"{op}(")


def test_a_user_script_named_like_the_package_is_still_the_users_line():
    # A script ``.../rgraph_demo.py`` beside the package directory ``.../rgraph`` is not
    # inside the package: its lines are the user's.
    script = os.path.dirname(rg.__file__) + "_demo.py"
    source = "g = rg.Graph()\nx = g.input('x', (2, 3))\n\nx @ x\n"
    with pytest.raises(ShapeError) as info:
        exec(compile(source, script, "exec"), {"rg": rg})
    assert str(info.value).startswith(f"{script}:4: matmul(x: f64[2,3], x: f64[2,3]): ")


def test_symbolic_shape_mistake_names_both_dims():
    g = rg.Graph("dims")
    a = g.input("a", ("B", 3))
    b = g.input("b", ("T", 3))
    with pytest.raises(ShapeError) as info:
        line = here() + 1
        a + b
    name, at, rest = split_location(str(info.value))
    assert (name, at) == (THIS_FILE, line)
    assert "a: f64[B,3]" in rest and "b: f64[T,3]" in rest
    assert "'B'" in rest and "'T'" in rest


def test_mixing_dtypes_is_a_dtype_error_at_the_line():
    g = rg.Graph("mix")
    a = g.input("a", (3,), "float32")
    b = g.input("b", (3,), "float64")
    with pytest.raises(DTypeError) as info:
        line = here() + 1
        a + b
    name, at, rest = split_location(str(info.value))
    assert (name, at) == (THIS_FILE, line)
    assert "a: f32[3]" in rest and "b: f64[3]" in rest and "cast" in rest
    W = g.param("W", (3, 3), "float64")
    with pytest.raises(DTypeError):
        a @ W
    i = g.input("i", (3,), "int64")
    with pytest.raises(DTypeError):
        g.tanh(i)


def test_a_symbolic_value_has_no_truth_value():
    g = rg.Graph("truth")
    x = g.input("x", (2,))
    y = x * 2.0
    with pytest.raises(GraphError, match="truth value of symbolic value 'x'"):
        if x:
            pass
    with pytest.raises(GraphError, match="define-then-run"):
        bool(y)
    with pytest.raises(GraphError):
        _ = x and y
    with pytest.raises(GraphError):
        _ = not y


@pytest.mark.parametrize(
    "redefine",
    [
        lambda g: g.input("x", (3,)),
        lambda g: g.param("x", (3,)),
        lambda g: g.const(1.0, name="x"),
        lambda g: g.input("W", (2,)),
        lambda g: g.output(g.value("y"), name="W"),
        lambda g: g.op("tanh", g.value("y"), _name="x"),
    ],
    ids=["input", "param", "const", "input_as_param", "output", "node"],
)
def test_duplicate_names_are_refused(redefine):
    g = rg.Graph("dup")
    x = g.input("x", (3,))
    g.param("W", (3,))
    g.output(x * 2.0, name="y")
    before = g.ir
    with pytest.raises(DuplicateValueError) as info:
        line = here() + 1
        redefine(g)
    assert "is already defined in graph 'dup'" in str(info.value)
    name, at, _ = split_location(str(info.value))
    # The refusal points at this file (the lambda's line or the line that called it).
    assert name == THIS_FILE and at in {line} | {
        e.lineno + 1 for e in info.traceback if Path(e.path).name == THIS_FILE
    }
    assert g.ir == before  # nothing half-recorded


def test_values_of_another_graph_are_refused():
    g1, g2 = rg.Graph("one"), rg.Graph("two")
    x1 = g1.input("x", (2,))
    x2 = g2.input("x", (2,))
    with pytest.raises(GraphError, match="belongs to graph 'one'"):
        x2 + x1


def test_unnamed_scalar_constants_are_shared_but_keep_their_dtype_and_sign():
    g = rg.Graph("consts")
    x = g.input("x", (3,))
    y = g.input("y", (3,), "float32")
    (x * 2.0) + (x * 2.0) + (y * 2.0).cast(dtype="float64") + x * -0.0 + x * 0.0
    values = sorted((c.type.dtype, repr(c.data[0])) for c in g.ir.consts)
    expected = [("float32", "2.0"), ("float64", "-0.0"), ("float64", "0.0"), ("float64", "2.0")]
    assert values == expected
