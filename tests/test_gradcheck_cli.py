"""``rgraph gradcheck``: the generated backward of a model file against finite differences."""

from __future__ import annotations

import contextlib
import io
import json

import numpy as np
import pytest

import rgraph as rg
from rgraph import nn
from rgraph.cli import main
from rgraph.ir.op import get_op
from rgraph.tools_cli import bind_dims, input_plans, random_feeds

VOCAB = 9


def run(*argv: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def char_graph(kind: str = "lstm", dtype: str = "float64") -> rg.Graph:
    g = rg.Graph("charlm")
    nn.language_model(g, VOCAB, kind=kind, hidden_sizes=(4,), letter_size=3, dtype=dtype)
    return g


def save_model(path, kind: str = "lstm", dtype: str = "float64"):
    """A tiny character model with weights large enough for gradients to matter."""
    g = char_graph(kind, dtype)
    rng = np.random.default_rng(7)
    params = {
        k: (0.5 * rng.standard_normal(v.shape)).astype(dtype)
        for k, v in rg.init_params(g, 0).items()
    }
    rg.save(path, g, params, fsync=False)
    return path


@pytest.fixture(scope="module")
def lstm_file(tmp_path_factory):
    return save_model(tmp_path_factory.mktemp("gc") / "lstm.rgraph")


def test_a_character_lstm_passes(lstm_file):
    status, out, err = run("gradcheck", lstm_file, "--json", "--dims", "T=3")
    assert (status, err) == (0, "")
    d = json.loads(out)
    assert d["ok"] and d["failed"] == [] and d["dims"] == {"T": 3, "B": 2}
    params = {p["name"]: p for p in d["params"]}
    assert set(params) == {p.name for p in char_graph().ir.params}
    assert params["Wil"]["checked"] == 20 and params["bi0"]["checked"] == 4  # --max-elements
    assert all(p["ok"] and p["max_abs_error"] < 1e-6 for p in params.values())
    inputs = {i["name"]: i for i in d["inputs"]}
    assert inputs["tokens"]["drawn"] == "ints" and inputs["tokens"]["high"] == VOCAB
    assert inputs["targets"]["drawn"] == "ints" and inputs["targets"]["high"] == VOCAB
    assert inputs["mask"]["drawn"] == "ones"

    status, text, _ = run("gradcheck", lstm_file)
    assert (
        status == 0
        and text.splitlines()[-1] == f"passed: {len(params)} of {len(params)} parameters"
    )
    assert "ints in [0, 9) (rows of Wil)" in text


@pytest.mark.parametrize("kind", ["gru", "rnn"])
def test_other_cells_and_float32_files_pass(tmp_path, kind):
    path = save_model(tmp_path / f"{kind}.rgraph", kind=kind, dtype="float32")
    status, out, err = run("gradcheck", path, "--json", "--max-elements", "6", "--seed", "1")
    assert (status, err) == (0, ""), out
    assert all(p["checked"] <= 6 for p in json.loads(out)["params"])


def test_a_broken_vjp_fails_and_names_the_parameters(lstm_file, monkeypatch):
    tanh = get_op("tanh")
    right = type(tanh).vjp

    def wrong(self, g, a, ins, outs, cts):  # twice the right cotangent
        return [None if c is None else c * 2.0 for c in right(self, g, a, ins, outs, cts)]

    monkeypatch.setattr(type(tanh), "vjp", wrong)
    status, out, err = run("gradcheck", lstm_file, "--json")
    assert (status, err) == (1, "")
    d = json.loads(out)
    failed = set(d["failed"])
    # The cell's candidate and output paths go through tanh; the decoder after it does not.
    assert {"Wcx0", "Wch0", "bc0", "Wil"} <= failed
    assert "Whd" not in failed and "bd" not in failed
    status, text, _ = run("gradcheck", lstm_file)
    assert status == 1
    last = text.splitlines()[-1]
    assert last.startswith("FAILED:") and "Wcx0" in last and "Whd" not in last
    assert any(
        line.strip().startswith("FAIL  Wcx0") and "worst at" in line for line in text.splitlines()
    )


def test_bad_usage_exits_2(lstm_file, tmp_path):
    for argv, message in [
        (["--dims", "X=2"], "not a dim of the graph's inputs (its dims: T, B)"),
        (["--dims", "B=0"], "expected a positive size"),
        (["--dims", "B"], "expected NAME=SIZE pairs"),
        (["--wrt", "Wil,nope"], "--wrt names nope"),
        (["--eps", "0"], "expected a positive number"),
        (["--max-elements", "-1"], "non-negative"),
    ]:
        status, out, err = run("gradcheck", lstm_file, *argv)
        assert status == 2 and out == "" and message in err and err.count("\n") == 1, err
    status, _, err = run("gradcheck", tmp_path / "missing.rgraph")
    assert status == 2 and "does not exist" in err


def test_wrt_and_max_elements_zero_checks_everything(lstm_file):
    status, out, _ = run(
        "gradcheck", lstm_file, "--json", "--wrt", "bd,Wih0", "--max-elements", "0"
    )
    d = json.loads(out)
    assert status == 0 and [p["name"] for p in d["params"]] == ["bd", "Wih0"]
    assert [p["checked"] for p in d["params"]] == [VOCAB, 16]


# --- drawing the inputs -----------------------------------------------------------------


def test_index_bounds_are_found_through_loops_and_reshapes():
    g = rg.Graph("m")
    ids = g.input("ids", ("T", "B"), "int32")
    labels = g.input("labels", (2, 2), "int64")
    weights = g.input("loss_mask", (4,))
    free = g.input("count", (2,), "int32")
    x = g.input("x", ("B", 3))
    table = g.param("E", (11, 3))

    def body(bg, carry, xs):
        (h,) = carry
        (tok,) = xs
        return [h + bg.row_pluck(table, tok)], [h]

    (h,), _ = g.scan(body, init=[x], xs=[ids])
    logits = g.param("V", (4, 5))
    flat = g.reshape(g.cast(labels, dtype="int32"), shape=[4])
    g.output(g.sum(h), name="s")
    g.output(g.softmax_cross_entropy(logits, flat, mask=weights, reduction="sum"), name="ce")
    g.output(g.sum(g.cast(free, dtype="float64")), name="c")
    plans = input_plans(g.ir, {"T": 3, "B": 2})
    assert (plans["ids"].kind, plans["ids"].high, plans["ids"].why) == ("ints", 11, "rows of E")
    assert (plans["labels"].kind, plans["labels"].high) == ("ints", 5)
    assert plans["loss_mask"].kind == "ones" and plans["loss_mask"].why == "cross-entropy mask"
    assert (plans["count"].kind, plans["count"].why) == ("ints", "no index use found")
    assert plans["x"].kind == "normal"

    binding = bind_dims(g.ir, {"T": 5})
    assert binding == {"T": 5, "B": 2}
    feeds, _ = random_feeds(g.ir, binding, seed=0)
    assert feeds["ids"].shape == (5, 2) and feeds["ids"].dtype == np.int32
    assert feeds["ids"].min() >= 0 and feeds["ids"].max() < 11
    assert feeds["labels"].dtype == np.int64 and feeds["labels"].max() < 5
    assert feeds["x"].dtype == np.float64 and feeds["x"].std() > 0
    np.testing.assert_array_equal(feeds["loss_mask"], np.ones(4))


# --- rg.gradcheck's max_elements ------------------------------------------------------------


def test_max_elements_checks_that_many_and_default_checks_all():
    g = rg.Graph("m")
    x = g.input("x", (5, 2))
    W = g.param("W", (6, 5))
    g.output(g.tanh(W @ x), name="y")
    feeds = {"x": np.linspace(-1, 1, 10).reshape(5, 2)}
    params = {"W": np.random.default_rng(0).standard_normal((6, 5))}
    full = rg.gradcheck(g, feeds, params)
    assert full.ok and full.tensors[0].checked == 30
    some = rg.gradcheck(g, feeds, params, max_elements=7)
    assert some.ok and some.tensors[0].checked == 7
    with pytest.raises(ValueError, match="at least 1"):
        rg.gradcheck(g, feeds, params, max_elements=0)
