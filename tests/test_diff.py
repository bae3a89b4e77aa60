"""``rgraph diff`` and :mod:`rgraph.diff`: structure, weights, optimiser state, metadata."""

from __future__ import annotations

import contextlib
import io
import json
import math
import time

import numpy as np
import pytest
from test_dot import CHAIN, chain_ir  # the 100,000-node chain, built once

import rgraph as rg
from rgraph import nn
from rgraph.cli import main
from rgraph.diff import diff_graphs, diff_models, diff_weights

VOCAB = 7


def run(*argv: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def char_graph(hidden=(4,), name="charlm") -> rg.Graph:
    g = rg.Graph(name)
    nn.language_model(g, VOCAB, hidden_sizes=hidden, letter_size=3)
    return g


def batch() -> dict[str, np.ndarray]:
    return rg.train.pad_sequences([[1, 2, 3, 4], [5, 6, 1], [2, 2]])


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The same model saved before and after one RMSProp step (with its state)."""
    folder = tmp_path_factory.mktemp("diff")
    g = char_graph()
    opt = rg.RMSProp(lr=0.01)
    trainer = rg.Trainer(g, opt, seed=3)
    trainer.step(batch())  # a first step, so that the optimiser has state in both files
    before = {k: v.copy() for k, v in trainer.params.items()}
    a, b = folder / "a.rgraph", folder / "b.rgraph"
    meta = {"vocab": "abcdef", "note": "first"}
    rg.save(a, g, trainer.params, optimizer=opt, step=1, metadata=meta, fsync=False)
    trainer.step(batch())
    meta = {"vocab": "abcdef", "note": "second", "lr": 0.01}
    rg.save(b, g, trainer.params, optimizer=opt, step=2, metadata=meta, fsync=False)
    return a, b, before, {k: v.copy() for k, v in trainer.params.items()}


def test_a_model_against_itself_is_identical(trained):
    a, _, _, _ = trained
    status, out, err = run("diff", a, a)
    assert (status, err) == (0, "")
    assert out.splitlines()[-1] == "identical"
    assert "structure: identical" in out and "weights: identical (15 parameters)" in out
    status, out, _ = run("diff", a, a, "--json")
    d = json.loads(out)
    assert status == 0 and d["identical"] and d["structure"] == [] and d["state"] == []
    assert len(d["weights"]) == 15
    assert all(w["equal"] and w["max_abs_diff"] == 0 and w["rel_l2"] == 0 for w in d["weights"])


def test_after_a_training_step_every_parameter_moved_by_numpy_s_numbers(trained):
    a, b, before, after = trained
    status, out, err = run("diff", a, b, "--json")
    assert (status, err) == (1, "")
    d = json.loads(out)
    assert not d["identical"] and d["structure_identical"] and not d["weights_identical"]
    assert {w["name"] for w in d["weights"]} == set(before)
    for w in d["weights"]:
        x, y = before[w["name"]], after[w["name"]]
        assert not w["equal"]
        assert w["max_abs_diff"] == np.max(np.abs(y - x)) > 0
        rel = math.sqrt(np.sum((y - x) ** 2)) / math.sqrt(np.sum(x**2))
        assert w["rel_l2"] == pytest.approx(rel, rel=1e-12)
    state = {(c["where"], c["what"]): c for c in d["state"]}
    assert state[("step", "step")]["a"] == "1" and state[("step", "step")]["b"] == "2"
    assert state[("optimizer", "step")]["kind"] == "changed"
    assert ("optimizer slot cache", "Whd") in state
    assert state[("metadata", "note")]["a"] == '"first"'
    assert state[("metadata", "lr")]["kind"] == "added"
    assert ("metadata", "vocab") not in state

    status, text, _ = run("diff", a, b)
    assert status == 1 and text.splitlines()[-1] == "different"
    assert "weights: 15 of 15 parameters differ" in text
    assert 'changed note: "first" -> "second"' in text
    assert "added   lr: 0.01" in text


def test_a_different_hidden_size_and_an_added_layer_are_listed(trained, tmp_path):
    a, _, _, _ = trained
    wide = char_graph(hidden=(5,))
    rg.save(tmp_path / "wide.rgraph", wide, rg.init_params(wide, 0), fsync=False)
    status, out, _ = run("diff", a, tmp_path / "wide.rgraph", "--json")
    d = json.loads(out)
    assert status == 1 and not d["structure_identical"]
    changes = {(c["where"], c["kind"], c["what"]): c for c in d["structure"]}
    assert changes[("params", "changed", "Wih0")]["b"].startswith("f64[5,5]")
    assert changes[("params", "changed", "Whd")]["a"].startswith(f"f64[{VOCAB},4]")
    assert ("params", "changed", "Wil") not in changes  # the embedding did not change
    body = [c for c in d["structure"] if c["where"].startswith("scan ")]
    assert any(c["where"].endswith("body/nodes") and "sigmoid" in c["a"] for c in body)
    assert d["op_counts"] == {}  # the same ops, other shapes
    # Only Wil and bd keep their shapes: those weights are compared.
    assert {w["name"] for w in d["weights"]} == {"Wil", "bd"}

    deep = char_graph(hidden=(4, 3))
    rg.save(tmp_path / "deep.rgraph", deep, rg.init_params(deep, 0), fsync=False)
    status, text, _ = run("diff", a, tmp_path / "deep.rgraph")
    assert status == 1
    assert "added   Wix1: f64[3,4]" in text and "added   bc1: f64[3] ~ zeros" in text
    assert "scan 1 -> 2" in text
    assert f"changed Whd: f64[{VOCAB},4]" in text


def test_added_parameter_and_node_in_a_small_graph():
    def build(extra: bool) -> rg.Graph:
        g = rg.Graph("m")
        x = g.input("x", ("B", 3))
        W = g.param("W", (2, 3))
        h = g.tanh(x @ W.T)
        if extra:
            b = g.param("b", (2,))
            h = h + b
        g.output(g.sum(h), name="loss")
        return g

    changes, counts = diff_graphs(build(False), build(True))
    text = [str(c) for c in changes]
    assert "added   b: f64[2] ~ zeros" in text
    assert counts == {"add": (0, 1)}
    assert any(c.where == "nodes" and c.kind == "added" and c.b.startswith("add(") for c in changes)


def test_rewiring_with_the_same_signatures_is_a_difference():
    def build(swap: bool) -> rg.Graph:
        g = rg.Graph("m")
        x, y = g.input("x", (3,)), g.input("y", (3,))
        g.output(y - x if swap else x - y, name="d")
        return g

    changes, _ = diff_graphs(build(False), build(True))
    assert len(changes) == 1 and changes[0].where == "wiring"
    assert "sub(x, y)" in changes[0].a and "sub(y, x)" in changes[0].b


def test_source_locations_are_no_difference():
    g1, g2 = rg.Graph("charlm"), rg.Graph("charlm")
    nn.language_model(g1, VOCAB, hidden_sizes=(4,), letter_size=3)
    nn.language_model(g2, VOCAB, hidden_sizes=(4,), letter_size=3)  # another line
    assert g1.ir.nodes[0].loc != g2.ir.nodes[0].loc and g1.ir != g2.ir
    assert diff_graphs(g1, g2) == ([], {})


def test_weights_of_zero_tensors_nan_and_dtype():
    a = {"z": np.zeros(3), "n": np.array([np.nan, 1.0]), "f": np.ones(2)}
    b = {"z": np.array([0.0, 1.0, 0.0]), "n": np.array([np.nan, 1.0]), "f": np.ones(2, np.float32)}
    d = {w.name: w for w in diff_weights(a, b)}
    assert math.isinf(d["z"].rel_l2) and d["z"].max_abs_diff == 1.0
    assert d["n"].equal and d["n"].max_abs_diff == 0  # the same bits, NaN included
    assert not d["f"].equal and d["f"].max_abs_diff == 0  # same values, another dtype
    model = rg.Model(rg.Graph("e").ir, a)
    other = rg.Model(rg.Graph("e").ir, b)
    js = diff_models(model, other).to_json()
    assert [w["rel_l2"] for w in js["weights"] if w["name"] == "z"] == [None]
    json.dumps(js, allow_nan=False)  # valid JSON


def test_bad_usage_exits_2(trained, tmp_path):
    a, _, _, _ = trained
    status, _, err = run("diff", a, tmp_path / "missing.rgraph")
    assert status == 2 and "does not exist" in err and err.count("\n") == 1
    status, _, err = run("diff", a)
    assert status == 2 and "error: the following arguments are required: B" in err
    (tmp_path / "junk.rgraph").write_bytes(b"not a model")
    status, _, err = run("diff", a, tmp_path / "junk.rgraph")
    assert status == 2 and err.startswith("rgraph diff: error:")


# --- a 100,000-node chain -----------------------------------------------------------------


def test_a_100k_node_chain_in_seconds():
    a = chain_ir()
    same = a.replace(nodes=tuple(a.nodes), name="chain")  # another graph, the same nodes
    k = CHAIN // 2
    nodes = list(a.nodes)
    nodes[k] = nodes[k].model_copy(update={"op": "sigmoid"})
    other = a.replace(nodes=tuple(nodes))
    start = time.perf_counter()
    assert diff_graphs(a, same) == ([], {})
    middle = time.perf_counter()
    changes, counts = diff_graphs(a, other)
    seconds = (middle - start, time.perf_counter() - middle)
    print(f"\ndiff of {CHAIN:,}-node chains: {seconds[0]:.2f} s, one change {seconds[1]:.2f} s")
    assert max(seconds) < 10  # well under a second each on an idle machine
    assert counts == {"sigmoid": (0, 1), "tanh": (CHAIN, CHAIN - 1)}
    assert [(c.kind, c.what) for c in changes] == [("changed", f"t{k}")]
    assert changes[0].a.startswith("tanh(") and changes[0].b.startswith("sigmoid(")
