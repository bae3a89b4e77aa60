"""IR given as data: the pydantic models, their text form, and the verifier.

The IR round-trips through JSON unchanged; ``str(graph)`` is a stable text form (golden
below); the verifier re-derives every type from the op definitions and names what is wrong,
and ``rg.compile`` on IR data raises the same errors.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import numpy as np
import pytest
from pydantic import ValidationError

import rgraph as rg
from rgraph.errors import (
    ArityError,
    BadAttributeError,
    CycleError,
    DuplicateValueError,
    GraphError,
    ShapeError,
    UndefinedValueError,
    UnknownOpError,
)
from rgraph.ir import REGISTRY, GraphIR
from rgraph.ir.verify import problems, verify


def f64(*shape: Any) -> dict[str, Any]:
    return {"dtype": "float64", "shape": list(shape)}


def roundtrip(ir: GraphIR) -> GraphIR:
    return GraphIR.model_validate(json.loads(json.dumps(ir.model_dump(mode="json"))))


# --- round trip through JSON -------------------------------------------------------------


def recurrent_graph() -> tuple[rg.Graph, str]:
    """A two-step RNN over symbolic (T, B): reshapes with products, ints, a mask, consts."""
    g = rg.Graph("rnn")
    x = g.input("x", ("T", "B", 3))
    t = g.input("t", ("T", "B"), "int64")
    m = g.input("m", ("T", "B"))
    ids = g.input("ids", ("B",), "int32")
    E = g.param("E", (7, 4), init="uniform", low=-0.1, high=0.1)
    Wx = g.param("Wx", (3, 4), init="glorot_uniform")
    Wh = g.param("Wh", (4, 4), init="normal", std=0.05)
    b = g.param("b", (4,), init="constant", value=0.5)
    h = g.row_pluck(E, ids)
    flat = g.reshape(x, shape=["T*B", 3]) @ Wx
    proj = g.reshape(flat, shape=["T", "B", 4])
    for step in range(2):
        h = g.tanh(proj[step] + h @ Wh + b)
    logits = g.concat([h, -h * 2.0], axis=1)
    logits = g.expand_dims(logits, axes=[0]) + g.const(np.zeros((1, 1, 8)))
    like = g.full_like(g.concat([proj, proj], axis=2), value=0.0)
    loss = g.softmax_cross_entropy(g.broadcast_like(logits, like), t)
    g.output(h, name="h_last")
    loss = g.output(loss + 0.0 * g.sum(m), name="loss")
    return g, loss.name


def test_builder_ir_round_trips_through_json_unchanged():
    g, _ = recurrent_graph()
    ir = g.ir
    data = ir.model_dump(mode="json")
    assert data["inputs"][0]["type"] == {"dtype": "float64", "shape": ["T", "B", 3]}
    assert any(n["attrs"].get("shape") == ["B*T", 3] for n in data["nodes"])
    back = roundtrip(ir)
    assert back == ir
    assert back.model_dump(mode="json") == data
    assert str(back) == str(ir)


def test_every_compiler_stage_round_trips_and_runs_the_same():
    g, loss = recurrent_graph()
    prog = rg.compile(g, loss=loss)
    assert {"schedule", "prune", "autodiff", "cse"} <= set(prog.stages)
    for name, stage in prog.stages.items():
        assert roundtrip(stage) == stage, name
        assert problems(roundtrip(stage)) == [], name
    rng = np.random.default_rng(1)
    T, B = 2, 3
    feeds = {
        "x": rng.normal(size=(T, B, 3)),
        "t": rng.integers(0, 8, size=(T, B)),
        "m": np.ones((T, B)),
        "ids": rng.integers(0, 7, size=B).astype(np.int32),
    }
    params = rg.init_params(g, seed=3)
    direct = rg.Interpreter(prog.ir).run(feeds, params)
    again = rg.Interpreter(roundtrip(prog.ir)).run(feeds, params)
    assert direct.keys() == again.keys()
    for key in direct:
        np.testing.assert_array_equal(direct[key], again[key])


def test_validation_canonicalises_and_rejects_bad_dims():
    t = rg.TensorType.model_validate({"dtype": "float32", "shape": ["T*B", 2, "1*N"]})
    assert t.shape == ("B*T", 2, "N")
    for bad in (["B T"], [-1], ["2T"], [True], [1.0], ["0*B"]):
        with pytest.raises(ValidationError):
            rg.TensorType.model_validate({"dtype": "float32", "shape": bad})
    with pytest.raises(ValidationError):
        rg.TensorType.model_validate({"dtype": "float16", "shape": []})
    with pytest.raises(ValidationError):  # extra fields are refused
        GraphIR.model_validate({"name": "g", "extra": 1})


# --- the text form -----------------------------------------------------------------------

GOLDEN_DATA: dict[str, Any] = {
    "name": "affine",
    "inputs": [{"name": "x", "type": f64("B", 5)}],
    "params": [
        {"name": "W", "type": f64(5, 3), "init": {"kind": "uniform", "low": -0.5, "high": 0.5}},
        {"name": "b", "type": f64(3)},
    ],
    "consts": [
        {"name": "two", "type": f64(), "data": [2.0]},
        {"name": "v", "type": f64(2), "data": [1.0, -1.5]},
        {"name": "big", "type": f64(3, 3), "data": [0.0] * 9},
    ],
    "nodes": [
        {
            "op": "matmul",
            "inputs": ["x", "W"],
            "outputs": [{"name": "h0", "type": f64("B", 3)}],
            "loc": {"file": "/home/user/affine.py", "line": 9, "function": "<module>"},
        },
        {"op": "add", "inputs": ["h0", "b"], "outputs": [{"name": "h1", "type": f64("B", 3)}]},
        {"op": "tanh", "inputs": ["h1"], "outputs": [{"name": "h", "type": f64("B", 3)}]},
        {
            "op": "sum",
            "inputs": ["h"],
            "outputs": [{"name": "s", "type": f64("B", 1)}],
            "attrs": {"axes": [1], "keepdims": True},
        },
        {
            "op": "split",
            "inputs": ["h"],
            "outputs": [{"name": "p", "type": f64("B", 1)}, {"name": "q", "type": f64("B", 2)}],
            "attrs": {"axis": 1, "sizes": [1, 2]},
        },
        {"op": "eltmul", "inputs": ["s", "two"], "outputs": [{"name": "y", "type": f64("B", 1)}]},
    ],
    "outputs": ["y", "q"],
}

GOLDEN_TEXT = """\
graph affine {
  input x: f64[B,5]
  param W: f64[5,3] ~ uniform(low=-0.5, high=0.5)
  param b: f64[3] ~ zeros
  const two: f64[] = 2.0
  const v: f64[2] = [1.0,-1.5]
  const big: f64[3,3] = <9 values>
  h0: f64[B,3] = matmul(x, W)  # affine.py:9
  h1: f64[B,3] = add(h0, b)
  h: f64[B,3] = tanh(h1)
  s: f64[B,1] = sum[axes=[1], keepdims=true](h)
  p: f64[B,1], q: f64[B,2] = split[axis=1, sizes=[1,2]](h)
  y: f64[B,1] = eltmul(s, two)
  return y, q
}"""


def test_text_form_matches_the_golden():
    ir = GraphIR.model_validate(GOLDEN_DATA)
    assert problems(ir) == []
    assert str(ir) == GOLDEN_TEXT


def test_builder_text_form_shows_shapes_and_user_lines():
    g = rg.Graph("tiny")
    x = g.input("x", (2,))
    y = g.output(g.tanh(x), name="y")
    text = str(g)
    assert text == str(g.ir)
    lines = text.splitlines()
    assert lines[0] == "graph tiny {" and lines[-1] == "}"
    assert lines[1] == "  input x: f64[2]"
    assert lines[-2] == f"  return {y.name}"
    loc = g.ir.nodes[0].loc
    assert loc is not None and loc.line > 0
    assert lines[2] == f"  t0: f64[2] = tanh(x)  # test_verify.py:{loc.line}"


# --- the verifier on IR given as data ----------------------------------------------------

VALID: dict[str, Any] = {
    "name": "v",
    "inputs": [{"name": "x", "type": f64(3, 4)}],
    "params": [{"name": "W", "type": f64(2, 3), "init": {"kind": "uniform"}}],
    "consts": [{"name": "c", "type": f64(), "data": [0.5]}],
    "nodes": [
        {"op": "matmul", "inputs": ["W", "x"], "outputs": [{"name": "h", "type": f64(2, 4)}]},
        {"op": "eltmul", "inputs": ["h", "c"], "outputs": [{"name": "y", "type": f64(2, 4)}]},
        {
            "op": "sum",
            "inputs": ["y"],
            "outputs": [{"name": "s", "type": f64(2)}],
            "attrs": {"axes": [1]},
        },
    ],
    "outputs": ["s"],
}


def variant(**edits: Any) -> GraphIR:
    """VALID with edits: ``node1={"op": ...}`` updates node 1, other keys replace fields."""
    data = copy.deepcopy(VALID)
    for key, value in edits.items():
        field, index = key.rstrip("0123456789"), key[len(key.rstrip("0123456789")) :]
        if index:
            data[f"{field}s"][int(index)].update(value)
        else:
            data[key] = value
    return GraphIR.model_validate(data)


def only_problem(ir: GraphIR, cls: type[GraphError]) -> str:
    found = problems(ir)
    assert [type(p) for p in found] == [cls], found
    with pytest.raises(cls) as raised:
        verify(ir)
    assert str(raised.value) == str(found[0])
    with pytest.raises(cls) as compiled:
        rg.compile(ir)
    assert str(compiled.value) == str(found[0])
    return str(found[0])


def test_the_valid_graph_verifies_and_runs():
    ir = GraphIR.model_validate(VALID)
    assert problems(ir) == [] and verify(ir) is ir
    x, W = np.arange(12.0).reshape(3, 4), np.arange(6.0).reshape(2, 3)
    out = rg.compile(ir).run({"x": x}, {"W": W}).outputs["s"]
    np.testing.assert_allclose(out, (W @ x * 0.5).sum(axis=1), rtol=1e-15)


def test_unknown_op_names_the_op_and_lists_the_known_ones():
    msg = only_problem(variant(node1={"op": "elmul"}), UnknownOpError)
    assert "'elmul'" in msg and "'y = elmul(...)'" in msg
    known = msg.split("known ops: ", 1)[1].split(", ")
    assert known == sorted(REGISTRY)


@pytest.mark.parametrize(
    ("attrs", "named"),
    [({"axis": 1}, "axis"), ({"axes": "one"}, "axes"), ({"keepdims": "maybe"}, "keepdims")],
)
def test_bad_attribute_names_the_attribute(attrs, named):
    msg = only_problem(variant(node2={"attrs": attrs}), BadAttributeError)
    assert f"{named}:" in msg and "op 'sum'" in msg
    assert "its attributes: axes, keepdims" in msg


def test_attribute_value_out_of_range_is_a_shape_error_naming_the_node():
    msg = only_problem(variant(node2={"attrs": {"axes": [5]}}), ShapeError)
    assert "'s = sum(...)'" in msg and "axis 5" in msg


@pytest.mark.parametrize("inputs", [["h"], ["h", "c", "x"]])
def test_wrong_arity(inputs):
    msg = only_problem(variant(node1={"inputs": inputs}), ArityError)
    assert f"takes 2 inputs, got {len(inputs)}" in msg and "'y = eltmul(...)'" in msg


def test_undefined_input_and_output():
    msg = only_problem(variant(node1={"inputs": ["h", "q"]}), UndefinedValueError)
    assert "['q']" in msg and "'y = eltmul(...)'" in msg
    msg = only_problem(variant(outputs=["s", "zz"]), UndefinedValueError)
    assert "'zz'" in msg


def test_duplicate_definitions():
    msg = only_problem(variant(consts=[*VALID["consts"], VALID["consts"][0]]), DuplicateValueError)
    assert "'c'" in msg
    ir = variant(params=[{"name": "x", "type": f64(3, 4)}, *VALID["params"]])
    assert [type(p) for p in problems(ir)] == [DuplicateValueError]
    with pytest.raises(DuplicateValueError, match="'x'"):
        rg.compile(ir)
    dup_node = variant(node1={"outputs": [{"name": "h", "type": f64(2, 4)}]})
    found = problems(dup_node)
    assert DuplicateValueError in {type(p) for p in found}
    with pytest.raises(DuplicateValueError, match="'h'"):
        rg.compile(dup_node)


def test_a_cycle_is_reported_naming_its_nodes():
    # h = eltmul(y, x) and y = eltmul(h, c) depend on each other.
    ir = variant(node0={"op": "eltmul", "inputs": ["y", "c"]})
    msg = only_problem(ir, CycleError)
    assert "cycle of 2 nodes" in msg
    assert "h = eltmul(y, c)" in msg and "y = eltmul(h, c)" in msg
    # s = sum(y) waits on the cycle but is not part of it.
    assert "sum" not in msg.split("(and")[0] and "1 node(s) waiting" in msg
    self_loop = variant(node0={"op": "tanh", "inputs": ["h"]})
    msg = only_problem(self_loop, CycleError)
    assert "cycle of 1 nodes: h = tanh(h)" in msg


def test_a_declared_type_the_op_does_not_derive_is_a_shape_error():
    msg = only_problem(variant(node2={"outputs": [{"name": "s", "type": f64(4)}]}), ShapeError)
    assert "'s'" in msg and "declared f64[4]" in msg and "derives f64[2]" in msg
    wrong_dtype = {"name": "s", "type": {"dtype": "float32", "shape": [2]}}
    msg = only_problem(variant(node2={"outputs": [wrong_dtype]}), ShapeError)
    assert "declared f32[2]" in msg and "derives f64[2]" in msg


def test_wrong_number_of_outputs():
    extra = [{"name": "s", "type": f64(2)}, {"name": "s2", "type": f64(2)}]
    only_problem(variant(node2={"outputs": extra}), GraphError)


@pytest.mark.parametrize("data", [[], [0.5, 1.0]])
def test_const_with_wrong_number_of_values(data):
    msg = only_problem(variant(const0={"data": data}), ShapeError)
    assert f"holds {len(data)} values, not 1" in msg and "'c'" in msg


def test_const_values_must_match_the_dtype():
    ir = variant(consts=[{"name": "c", "type": {"dtype": "int64", "shape": []}, "data": [0.5]}])
    found = problems(ir)
    assert any("'c'" in str(p) and "int64" in str(p) for p in found)


def test_symbolic_param_is_refused():
    ir = variant(params=[{"name": "W", "type": f64("N", 3)}])
    found = problems(ir)
    assert any(isinstance(p, ShapeError) and "'W'" in str(p) for p in found)


def test_problems_lists_several_problems_at_once():
    ir = variant(
        node0={"op": "matmull"},
        node1={"outputs": [{"name": "y", "type": f64(9, 9)}]},
        node2={"attrs": {"axis": 1}},
        const0={"data": []},
    )
    found = problems(ir)
    kinds = sorted(type(p).__name__ for p in found)
    assert kinds == ["BadAttributeError", "ShapeError", "ShapeError", "UnknownOpError"], found
    text = "\n".join(map(str, found))
    assert "matmull" in text and "declared f64[9,9]" in text and "axis" in text
    assert "holds 0 values" in text
    with pytest.raises(GraphError):
        rg.compile(ir)


def test_an_undefined_value_does_not_hide_problems_of_other_nodes():
    ir = variant(node1={"inputs": ["h", "q"]}, node2={"op": "summ"})
    kinds = [type(p) for p in problems(ir)]
    assert kinds == [UndefinedValueError, UnknownOpError]


def test_problems_in_a_graph_given_out_of_order_are_found_after_scheduling():
    data = copy.deepcopy(VALID)
    data["nodes"].reverse()
    ir = GraphIR.model_validate(data)
    assert problems(ir) == []
    x, W = np.ones((3, 4)), np.ones((2, 3))
    np.testing.assert_allclose(rg.compile(ir).run({"x": x}, {"W": W}).outputs["s"], [6.0, 6.0])
