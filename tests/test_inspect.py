"""``rgraph inspect``, ``show`` and ``validate`` (:mod:`rgraph.inspect`) and the cost model.

Most runs call :func:`rgraph.cli.main` in-process. Golden files in ``tests/golden/`` hold
the expected text of ``show`` and ``inspect`` on small fixed models; after an intended
change of that text, regenerate them and review the diff before committing::

    RGRAPH_REGEN_GOLDEN=1 python -m pytest tests/test_inspect.py -k golden
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import rgraph as rg
from rgraph.cli import main
from rgraph.errors import GraphError
from rgraph.inspect import stage, summary, validate
from rgraph.ir.cost import Poly, graph_cost
from rgraph.ir.graph import GraphIR, Node, Var
from rgraph.ir.op import REGISTRY
from rgraph.ir.types import construct, gc_paused, make_type

try:  # run as a package or as a rootless test directory
    from tests.test_format import ATTACKS
except ImportError:  # pragma: no cover - depends on how pytest imports the tests
    from test_format import ATTACKS  # type: ignore[no-redef]

HERE = Path(__file__).parent
GOLDEN = HERE / "golden"
ATTACK_DIR = HERE / "data" / "attacks"


def _make_attacks():
    spec = importlib.util.spec_from_file_location("make_attacks", ATTACK_DIR / "make_attacks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_attacks", module)
    spec.loader.exec_module(module)
    return module


mk = _make_attacks()


def run(*argv: object) -> tuple[int, str, str]:
    """``rgraph ARGV`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def run_json(*argv: object) -> dict:
    status, out, err = run(*argv, "--json")
    assert status == 0, err
    assert out.count("\n") == 1  # one object, one line
    return json.loads(out)


# --- small fixed models ------------------------------------------------------------------


def without_locs(ir: GraphIR) -> GraphIR:
    """``ir`` with no source locations (line numbers of this file would change the text)."""
    nodes = tuple(
        n.model_copy(
            update={"loc": None, "bodies": {k: without_locs(b) for k, b in n.bodies.items()}}
        )
        for n in ir.nodes
    )
    return ir.replace(nodes=nodes)


def lm_graph() -> GraphIR:
    """A one-layer LSTM character model: a loop, a loss, symbolic B and T."""
    g = rg.Graph("lm")
    rg.nn.language_model(g, vocab=5, hidden_sizes=[4], letter_size=3)
    return without_locs(g.ir)


def mlp_graph() -> GraphIR:
    """Two layers and a cross-entropy loss over a batch of B rows."""
    g = rg.Graph("mlp")
    x = g.input("x", ("B", 3))
    targets = g.input("targets", ("B",), dtype="int32")
    W1 = g.param("W1", (4, 3), init="uniform")
    b1 = g.param("b1", (4,))
    W2 = g.param("W2", (2, 4), init="uniform")
    h = g.tanh(g.matmul(x, W1, transpose_b=True) + b1)
    logits = g.output(g.matmul(h, W2, transpose_b=True), name="logits")
    g.output(g.softmax_cross_entropy(logits, targets), name="loss")
    return without_locs(g.ir)


def save_lm(path: Path) -> None:
    graph = lm_graph()
    rg.save(
        path,
        graph,
        rg.init_params(graph, 0),
        optimizer=rg.RMSProp(),
        rng=np.random.default_rng(5),
        step=7,
        metadata={"vocab": "abcd", "hidden": [4]},
        fsync=False,
    )


@pytest.fixture
def lm_file(tmp_path, monkeypatch) -> Path:
    """``lm.rgraph`` in the current folder (so that the golden text names it the same)."""
    monkeypatch.chdir(tmp_path)
    save_lm(tmp_path / "lm.rgraph")
    return Path("lm.rgraph")


def check_golden(name: str, text: str) -> None:
    path = GOLDEN / name
    if os.environ.get("RGRAPH_REGEN_GOLDEN"):
        path.write_text(text)
    assert path.exists(), f"no {path}: run RGRAPH_REGEN_GOLDEN=1 pytest tests/test_inspect.py"
    assert text == path.read_text(), f"{name} changed (see the docstring to regenerate)"


# --- golden text --------------------------------------------------------------------------


def test_show_golden(lm_file):
    status, out, err = run("show", lm_file)
    assert status == 0 and err == ""
    assert out == f"{lm_graph()}\n"
    check_golden("lm.show.txt", out)


def test_inspect_golden(lm_file):
    status, out, err = run("inspect", lm_file, "--dims", "B=2,T=3")
    assert status == 0 and err == ""
    check_golden("lm.inspect.txt", out)


def test_inspect_golden_for_a_graph_built_in_python():
    text = str(summary(mlp_graph(), dims={"B": 10}))
    check_golden("mlp.inspect.txt", text + "\n")
    assert "format     - (a graph built in Python" in text


# --- inspect ------------------------------------------------------------------------------

# The keys Summary.to_json documents.
SUMMARY_KEYS = {
    "path",
    "name",
    "format_version",
    "min_reader_version",
    "reader_version",
    "producer",
    "step",
    "rng",
    "optimizer",
    "metadata_keys",
    "inputs",
    "outputs",
    "params",
    "param_count",
    "param_bytes",
    "ops",
    "nodes",
    "dims",
    "binding",
    "cost",
}
PARAM_KEYS = {
    *("name", "dtype", "shape", "count", "bytes"),
    *("min", "max", "mean", "std", "nonfinite"),
}


def test_inspect_json_has_the_documented_keys(lm_file):
    s = run_json("inspect", lm_file, "--dims", "B=2,T=3")
    assert set(s) == SUMMARY_KEYS
    assert s["path"] == "lm.rgraph" and s["name"] == "lm"
    assert (s["format_version"], s["min_reader_version"], s["reader_version"]) == ("1.0",) * 3
    assert s["producer"] == "rgraph" and s["step"] == 7 and s["rng"] is True
    assert s["optimizer"]["kind"] == "rmsprop" and s["optimizer"]["slots"] == ["cache"]
    assert s["optimizer"]["hyper"]["clip_norm"] == "inf"  # JSON has no infinity
    assert s["metadata_keys"] == ["vocab", "hidden"]
    assert s["inputs"][0] == {"name": "tokens", "dtype": "int32", "shape": ["T", "B"]}
    assert [o["name"] for o in s["outputs"]] == ["logits", "loss", "nll", "count"]
    assert all(set(p) == PARAM_KEYS for p in s["params"])
    assert s["param_count"] == sum(p["count"] for p in s["params"])
    assert s["param_bytes"] == 8 * s["param_count"]
    assert s["ops"]["scan"] == {"graph": 1, "bodies": 0}
    assert s["ops"]["matmul"] == {"graph": 1, "bodies": 8}  # decoder; four gates x2
    assert s["nodes"] == {"forward": {"graph": len(lm_graph().nodes), "bodies": 35}}
    assert s["dims"] == ["B", "T"] and s["binding"] == {"B": 2, "T": 3}
    flops = s["cost"]["forward"]["flops"]
    assert set(flops) == {"formula", "terms", "value"}
    assert flops["value"] == eval_formula(flops["formula"], B=2, T=3) > 0


def eval_formula(formula: str, **sizes: int) -> int:
    """A cost formula evaluated by Python itself (a check on Poly.evaluate)."""
    return eval(formula, {}, dict(sizes))


def test_inspect_without_dims_gives_formulas_only(lm_file):
    s = run_json("inspect", lm_file)
    assert s["binding"] == {} and s["cost"]["forward"]["flops"]["value"] is None
    status, out, _ = run("inspect", lm_file)
    assert status == 0 and "(give sizes with --dims B=...,T=... to evaluate)" in out


def test_parameter_statistics_match_numpy(tmp_path):
    g = rg.Graph("stats")
    x = g.input("x", (4,))
    W = g.param("W", (3, 4))
    V = g.param("V", (5,), dtype="float32")
    E = g.param("E", (0, 4))
    N = g.param("N", (2,))
    g.output(g.sum(W * x) + g.sum(g.cast(V, dtype="float64")) + g.sum(E) + g.sum(N), name="y")
    rng = np.random.default_rng(3)
    w = rng.normal(size=(3, 4)) * 7 + 2
    w[0, 1], w[2, 2], w[1, 3] = np.nan, np.inf, -np.inf
    values = {
        "W": w,
        "V": rng.uniform(-1, 1, size=5).astype(np.float32),
        "E": np.zeros((0, 4)),
        "N": np.array([np.nan, np.nan]),
    }
    rg.save(tmp_path / "s.rgraph", g, values, fsync=False)
    got = {p["name"]: p for p in run_json("inspect", tmp_path / "s.rgraph")["params"]}
    for name in ("W", "V"):
        masked = np.ma.masked_invalid(values[name].astype(np.float64))
        p = got[name]
        assert p["count"] == values[name].size and p["bytes"] == values[name].nbytes
        assert p["nonfinite"] == int(np.ma.count_masked(masked))
        for key, want in [
            ("min", masked.min()),
            ("max", masked.max()),
            ("mean", masked.mean()),
            ("std", masked.std()),
        ]:
            assert p[key] == pytest.approx(float(want), rel=1e-12), (name, key)
    assert got["W"]["nonfinite"] == 3 and got["V"]["dtype"] == "float32"
    for name, nonfinite in (("E", 0), ("N", 2)):  # no finite values: no statistics
        p = got[name]
        assert (p["min"], p["max"], p["mean"], p["std"]) == (None,) * 4
        assert p["nonfinite"] == nonfinite
    # A graph built in Python without values: sizes only.
    p = summary(g).params[0]
    assert (p.count, p.nbytes, p.min, p.nonfinite) == (12, 96, None, None)


def test_inspect_backward_counts_and_costs_the_generated_nodes(tmp_path):
    g = rg.Graph("b")
    x = g.input("x", ("B", 3))
    W = g.param("W", (3, 4))
    g.output(g.sum((x @ W).tanh()), name="loss")
    rg.save(tmp_path / "b.rgraph", g, {"W": np.ones((3, 4))}, fsync=False)
    s = run_json("inspect", tmp_path / "b.rgraph", "--backward", "--dims", "B=10")
    # Forward: matmul 2*B*4*3, tanh 4*B, sum 4*B. Backward: the seed's broadcast moves
    # data; tanh's rule 1 - out*out and its product (3 per element, 12*B); dW = x.T @ g
    # (2*3*4*B). x is an input: no gradient.
    assert s["cost"]["forward"]["flops"]["formula"] == "32*B"
    assert s["cost"]["backward"]["flops"]["formula"] == "36*B"
    assert s["cost"]["backward"]["flops"]["value"] == 360
    assert s["nodes"]["forward"] == {"graph": 4, "bodies": 0}
    assert s["nodes"]["backward"]["graph"] >= 5 and s["nodes"]["backward"]["bodies"] == 0


def test_inspect_backward_of_a_loop(lm_file):
    s = run_json("inspect", lm_file, "--backward")
    back = s["nodes"]["backward"]
    assert back["graph"] > 0 and back["bodies"] > 0  # a reverse scan with its own body
    assert "B*T" in s["cost"]["backward"]["flops"]["formula"]


def test_inspect_errors(tmp_path, lm_file):
    status, _, err = run("inspect", lm_file, "--dims", "B=2,X=3")
    assert status == 2 and err == (
        "rgraph inspect: error: --dims: X not a dim of the graph (its dims: B, T)\n"
    )
    status, _, err = run("inspect", lm_file, "--dims", "B=two")
    assert status == 2 and "expected an integer size for dim B, got 'two'" in err
    status, _, err = run("inspect", lm_file, "--dims", "B=2,B=3")
    assert status == 2 and "dim B is given twice" in err
    status, _, err = run("inspect", tmp_path / "nope.rgraph")
    assert status == 2 and err.startswith("rgraph inspect: error: model file") and "not" in err
    status, _, err = run("inspect", ATTACK_DIR / "png.rgraph")
    assert status == 2 and err.count("\n") == 1 and "not an rgraph file" in err
    g = rg.Graph("noloss")
    g.output(g.input("x", (2,)).tanh(), name="y")
    rg.save(tmp_path / "n.rgraph", g, {}, fsync=False)
    status, _, err = run("inspect", tmp_path / "n.rgraph", "--backward")
    assert status == 2 and "no scalar float output named 'loss'" in err and "y: f64[2]" in err


# --- the cost model -----------------------------------------------------------------------


def one_op_cost(build) -> tuple[str, str]:
    g = rg.Graph("one")
    g.output(build(g), name="out")
    c = graph_cost(g.ir)
    return str(c.flops), str(c.bytes)


def x(g: rg.Graph, *shape, dtype: str = "float64"):
    return g.input("x", shape, dtype=dtype)


def w(g: rg.Graph, *shape):
    return g.param("W", shape)


@pytest.mark.parametrize(
    "build, flops",
    [
        # matmul: 2*m*n*k per batch element, whatever is transposed
        (lambda g: g.matmul(x(g, "B", 7), w(g, 5, 7), transpose_b=True), "70*B"),
        (lambda g: g.matmul(x(g, 7, "B"), w(g, 7, 5), transpose_a=True), "70*B"),
        (lambda g: g.matmul(x(g, "T", "B", 7), w(g, 7, 5)), "70*B*T"),
        (lambda g: g.matmul(x(g, 6, 2, 7), g.input("y", (6, 7, 3))), "504"),
        (lambda g: g.tanh(x(g, "B", 6)), "6*B"),  # elementwise: one per element
        (lambda g: x(g, "B", 6) + g.input("y", (6,)), "6*B"),
        (lambda g: g.sum(x(g, "B", 6), axes=[1]), "6*B"),  # reductions: input elements
        (lambda g: g.mean(x(g, "B", 6)), "6*B"),
        (lambda g: g.softmax(x(g, "B", 6)), "30*B"),  # a few per element
        (lambda g: g.log_softmax(x(g, "B", 6)), "30*B"),
        (
            lambda g: g.softmax_cross_entropy(x(g, "B", 6), g.input("t", ("B",), dtype="int32")),
            "33*B",  # 5 per logit, 3 per row
        ),
        (lambda g: g.row_pluck(w(g, 9, 4), x(g, "T", "B", dtype="int32")), "4*B*T"),
        (lambda g: g.reshape(x(g, "B", 6), shape=[-1]), "0"),  # data movement: none
        (lambda g: g.transpose(x(g, "B", 6), perm=[1, 0]), "0"),
        (lambda g: x(g, "B", 6)[1:3], "0"),
        (lambda g: g.identity(x(g, "B", 6)), "0"),
    ],
)
def test_flops_of_one_op(build, flops):
    assert one_op_cost(build)[0] == flops


def test_every_op_in_the_table_has_a_cost():
    # The cost facet works for every registered op (inspect must never fail on a model),
    # its FLOPs are non-negative and bytes are those of the outputs (a loop's: of the
    # values it stacks and of its body's values once per step, at least its outputs').
    try:
        from tests import op_cases
    except ImportError:  # pragma: no cover - depends on how pytest imports the tests
        import op_cases  # type: ignore[no-redef]
    from rgraph.ir.cost import nbytes, node_costs

    seen = set()
    for case in op_cases.CASES:
        dtype = case.dtypes[0]
        g = rg.Graph("one")
        pos, kw = [], {}
        for i, arg in enumerate(case.args):
            v = g.input(f"x{i}", arg.shape, arg.resolve_dtype(dtype))
            kw.update({arg.keyword: v} if arg.keyword else {})
            pos += [] if arg.keyword else [v]
        g.op(case.op, *pos, **kw, **case.attrs_for(dtype))
        (node, cost), *_ = node_costs(g.ir)
        assert node.op == case.op
        assert all(c >= 0 for c in cost.flops.terms.values()), case.id
        outs = nbytes([o.type for o in node.outputs])
        if not REGISTRY[case.op].body_names:  # (a body's cost counts its own values)
            assert cost.bytes == outs, case.id
        for binding in case.bindings:
            assert cost.flops.evaluate(binding) >= 0
            assert cost.bytes.evaluate(binding) >= outs.evaluate(binding) >= 0, case.id
        seen.add(case.op)
    assert seen == set(REGISTRY)


def test_bytes_are_every_value_produced():
    # tanh and the output's identity each make an f32[B,4]: 2 * 4 * 4 bytes per row
    assert one_op_cost(lambda g: g.tanh(g.input("x", ("B", 4), dtype="float32"))) == (
        "4*B",
        "32*B",
    )


def test_matmul_flops_against_a_hand_count_with_dims(tmp_path):
    g = rg.Graph("mm")
    x = g.input("x", ("B", 7))
    g.output(g.matmul(x, g.param("W", (5, 7)), transpose_b=True), name="y")
    rg.save(tmp_path / "mm.rgraph", g, {"W": np.zeros((5, 7))}, fsync=False)
    cost = run_json("inspect", tmp_path / "mm.rgraph", "--dims", "B=32")["cost"]["forward"]
    assert cost["flops"]["value"] == 2 * 32 * 5 * 7  # 32 rows of 5 dot products of 7
    assert cost["bytes"]["value"] == 2 * 32 * 5 * 8  # y and its identity, float64
    assert cost["flops"]["terms"] == [{"coef": 70, "dims": ["B"]}]


def test_lstm_flops_against_a_hand_count_with_dims(tmp_path):
    n_in, H, B, T = 4, 5, 16, 10
    g = rg.Graph("lstm")
    xs = g.input("xs", ("T", "B", n_in))
    g.output(rg.nn.lstm(g, xs, [H]).ys, name="ys")
    rg.save(tmp_path / "lstm.rgraph", g, rg.init_params(g, 0), fsync=False)
    # One step for one row: four gates, each x @ Wx (2*H*n_in) + h @ Wh (2*H*H), two adds
    # (x part + h part, + bias); three sigmoids and a tanh; c = f*c + i*g (3 per unit);
    # tanh(c); h = o * tanh(c).
    per_step = 4 * (2 * H * n_in + 2 * H * H + 2 * H) + 3 * H + H + 3 * H + H + H
    s = run_json("inspect", tmp_path / "lstm.rgraph", "--dims", f"B={B},T={T}")
    assert s["cost"]["forward"]["flops"]["formula"] == f"{per_step}*B*T"
    assert s["cost"]["forward"]["flops"]["value"] == per_step * B * T


def test_poly_arithmetic_and_text():
    p = Poly.of_shape(("T", "B", 5)) + Poly.of_dim("2*B") * 3 + 7
    assert str(p) == "5*B*T + 6*B + 7"
    assert p.evaluate({"B": 2, "T": 3}) == 30 + 12 + 7 == eval_formula(str(p), B=2, T=3)
    assert str(p * Poly.of_dim("T")) == "5*B*T*T + 6*B*T + 7*T"
    assert str(p - p) == "0" and not (p - p)
    assert str(Poly.of_dim("B") * -2 + 1) == "-2*B + 1"
    assert p.names == ("B", "T")
    with pytest.raises(KeyError):
        p.evaluate({"B": 2})


# --- show ---------------------------------------------------------------------------------


def no_locs(text: str) -> str:
    """IR text without source locations: nodes a pass generates get the line that called
    the compiler, which differs between the test and the command."""
    return re.sub(r"  # .*$", "", text, flags=re.MULTILINE)


def test_show_after_every_pass_with_and_without_backward(lm_file):
    graph = lm_graph()
    for backward, program in (
        ([], rg.compile(graph)),
        (["--backward"], rg.compile(graph, loss="loss")),
    ):
        assert ("autodiff" in program.stages) == bool(backward)
        for name, ir in program.stages.items():
            status, out, err = run("show", lm_file, *backward, "--after", name)
            assert (status, err) == (0, ""), name
            assert no_locs(out) == no_locs(f"{ir}\n"), name
    status, out, _ = run("show", lm_file, "--backward")
    assert no_locs(out) == no_locs(f"{rg.compile(graph, loss='loss').ir}\n")
    assert "W.grad" not in run("show", lm_file)[1] and "Wil.grad" in out


def test_show_errors(tmp_path, lm_file):
    status, out, err = run("show", lm_file, "--after", "autodiff")
    assert status == 2 and out == ""
    assert "unknown pass 'autodiff'; the passes of this program: schedule, prune" in err
    assert "'autodiff' runs with --backward" in err
    status, _, err = run("show", lm_file, "--backward", "--after", "fuse")
    assert status == 2 and "unknown pass 'fuse'" in err
    assert "autodiff, forward_identities, sink, contract, cse" in err
    g = rg.Graph("noloss")
    g.output(g.sum(g.input("x", (2,))), name="total")
    rg.save(tmp_path / "n.rgraph", g, {}, fsync=False)
    status, _, err = run("show", tmp_path / "n.rgraph", "--backward")
    assert status == 2 and err.count("\n") == 1
    assert "graph 'noloss' has no scalar float output named 'loss'" in err
    with pytest.raises(GraphError, match="no scalar float output named 'loss'"):
        stage(g, backward=True)


def test_show_json_round_trips(lm_file):
    status, out, _ = run("show", lm_file, "--json")
    assert status == 0 and GraphIR.model_validate(json.loads(out)) == lm_graph()
    status, out, _ = run("show", lm_file, "--json", "--backward", "--after", "autodiff")
    want = rg.compile(lm_graph(), loss="loss").stages["autodiff"]
    assert without_locs(GraphIR.model_validate(json.loads(out))) == without_locs(want)


# --- validate -----------------------------------------------------------------------------


def test_validate_a_good_file(lm_file):
    assert run("validate", lm_file) == (0, "lm.rgraph: valid\n", "")
    assert run_json("validate", lm_file) == {"path": "lm.rgraph", "valid": True, "problems": []}


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_validate_every_attack_file(name):
    path = ATTACK_DIR / name
    status, out, err = run("validate", path, "--json")
    assert status == 1 and err == ""
    report = json.loads(out)
    assert report["valid"] is False and report["problems"]
    messages = [p["message"] for p in report["problems"]]
    assert any(ATTACKS[name] in m for m in messages), messages
    status, out, _ = run("validate", path)
    assert status == 1
    lines = out.splitlines()
    assert lines[0] == f"{path}: {len(messages)} problem{'s' if len(messages) > 1 else ''}"
    assert len(lines) == 1 + len(messages)


def several_problems_header() -> dict:
    """The attacks' tiny model with five independent graph problems."""
    header = mk.tiny_header()
    t = {"dtype": "float64", "shape": [2, 1]}

    def node(op: str, inputs: list[str], out: str, type_: dict = t, **attrs) -> dict:
        outputs = [{"name": out, "type": type_}]
        return dict(op=op, inputs=inputs, outputs=outputs, attrs=attrs, bodies={}, loc=None)

    header["graph"]["nodes"] += [
        node("pickle.loads", ["y"], "a"),
        node("tanh", ["nope"], "b"),
        node("tanh", ["y"], "c", {"dtype": "float64", "shape": [3, 3]}),
        node("matmul", ["W", "x"], "d", transpose_c=True),
    ]
    header["graph"]["outputs"].append("ghost")
    return header


EXPECTED = [
    ("UndefinedValueError", "node 'b = tanh(...)' uses undefined value(s) ['nope']"),
    ("UndefinedValueError", "graph output 'ghost' is not defined"),
    ("UnknownOpError", "unknown op 'pickle.loads'"),
    ("ShapeError", "output 'c' is declared f64[3,3], op derives f64[2,1]"),
    ("BadAttributeError", "transpose_c: Extra inputs are not permitted"),
]


def test_validate_lists_every_problem_of_a_graph(tmp_path):
    path = tmp_path / "bad.rgraph"
    path.write_bytes(mk.assemble(several_problems_header(), mk.tiny_payload()))
    with pytest.raises(rg.errors.FormatError, match="undefined value"):
        rg.load(path)  # the loader stops at the first
    status, out, _ = run("validate", path, "--json")
    problems = json.loads(out)["problems"]
    assert status == 1 and len(problems) == len(EXPECTED)
    for p, (kind, text) in zip(problems, EXPECTED):
        assert p["kind"] == kind and text in p["message"]
        assert p["message"].startswith("header.graph: ")


def test_validate_lists_graph_problems_and_then_the_file_problem(tmp_path):
    path = tmp_path / "bad.rgraph"
    payload = bytearray(mk.tiny_payload())
    payload[0] ^= 1  # W's checksum no longer matches
    path.write_bytes(mk.assemble(several_problems_header(), bytes(payload)))
    status, out, _ = run("validate", path, "--json")
    problems = json.loads(out)["problems"]
    assert status == 1 and len(problems) == len(EXPECTED) + 1
    assert problems[-1]["kind"] == "FormatError"
    assert "tensor param 'W': checksum mismatch" in problems[-1]["message"]


def test_validate_usage_errors(tmp_path):
    status, _, err = run("validate", tmp_path / "missing.rgraph")
    assert status == 2 and err == (
        f"rgraph validate: error: model file '{tmp_path / 'missing.rgraph'}' does not exist\n"
    )
    status, _, err = run("validate")
    assert status == 2 and "the following arguments are required: MODEL" in err
    status, _, err = run("validate", tmp_path)
    assert status == 2 and "is a folder" in err


def test_validate_a_graph_built_in_python():
    assert validate(mlp_graph()) == []
    params = rg.init_params(mlp_graph(), 0)
    assert validate(mlp_graph(), params) == []
    del params["b1"]
    params["W2"] = np.zeros((4, 2))
    assert [p.message for p in validate(mlp_graph(), params)] == [
        "no value for parameter 'b1'",
        "parameter 'W2' is float64[4, 2], the graph declares f64[2,4]",
    ]
    bad = GraphIR.model_validate(
        {
            "name": "bad",
            "inputs": [{"name": "x", "type": {"dtype": "float64", "shape": [2]}}],
            "nodes": [
                {"op": "tanh", "inputs": ["x"], "outputs": [{"name": "x", "type": T2}]},
                {"op": "frobnicate", "inputs": ["y"], "outputs": [{"name": "z", "type": T2}]},
            ],
            "outputs": ["w"],
        }
    )
    kinds = [p.kind for p in validate(bad)]
    assert kinds == ["DuplicateValueError", "UndefinedValueError", "UndefinedValueError"]


T2 = {"dtype": "float64", "shape": [2]}


# --- a 100,000-node chain ----------------------------------------------------------------

CHAIN = 100_000


@pytest.fixture(scope="module")
def chain_file(tmp_path_factory) -> Path:
    """x -> tanh -> * W -> tanh -> ... : 100,000 nodes on f64[B,4], saved to a file."""
    with gc_paused():  # a few seconds less: every object made here stays alive
        return _save_chain(tmp_path_factory.mktemp("chain") / "chain.rgraph")


def _save_chain(path: Path) -> Path:
    t = make_type("float64", ("B", 4))
    nodes, prev = [], "x"
    for k in range(CHAIN):
        out = construct(Var, name=f"t{k}", type=t)
        op, inputs = ("tanh", (prev,)) if k % 2 == 0 else ("eltmul", (prev, "W"))
        nodes.append(
            construct(Node, op=op, inputs=inputs, outputs=(out,), attrs={}, bodies={}, loc=None)
        )
        prev = out.name
    graph = GraphIR.model_validate(
        {
            "name": "chain",
            "inputs": [{"name": "x", "type": {"dtype": "float64", "shape": ["B", 4]}}],
            "params": [{"name": "W", "type": {"dtype": "float64", "shape": [4]}}],
        }
    ).replace(nodes=tuple(nodes), outputs=(prev,))
    rg.save(path, graph, {"W": np.full(4, 0.5)}, fsync=False)
    return path


def test_a_100k_node_chain_in_seconds(chain_file):
    seconds = {}
    for command in ("inspect", "show", "validate"):
        start = time.perf_counter()
        status, out, err = run(command, chain_file, *(["--json"] if command != "show" else []))
        seconds[command] = time.perf_counter() - start
        assert (status, err) == (0, ""), command
        if command == "inspect":
            s = json.loads(out)
            assert s["nodes"]["forward"] == {"graph": CHAIN, "bodies": 0}
            assert s["ops"] == {
                "eltmul": {"graph": CHAIN // 2, "bodies": 0},
                "tanh": {"graph": CHAIN // 2, "bodies": 0},
            }
            assert s["cost"]["forward"]["flops"]["formula"] == f"{4 * CHAIN}*B"
        elif command == "show":
            assert out.count("\n") == CHAIN + 5  # graph, input, param, nodes, return, }
        else:
            assert json.loads(out)["valid"] is True
    print("\n100k-node chain:", ", ".join(f"{c} {s:.1f} s" for c, s in seconds.items()))
    # Each is mostly the loader's work: about 2-4 s on an idle machine, more when busy.
    assert max(seconds.values()) < 30, seconds
