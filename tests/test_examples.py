"""The RecurrentJS seed-parity examples against independent numpy implementations.

``examples/affine.py`` and ``examples/lstm_step.py`` are run as rgraph programs; here the
same computations are written again by hand in numpy (forward, hand-derived backprop and
RecurrentJS's RMSProp ``Solver.step`` element by element), and every number is compared in
float64: outputs, every gradient, the loss, the updated parameters and the RMSProp cache.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import math
import re
import runpy
from pathlib import Path

import numpy as np
import pytest

import rgraph as rg
from rgraph.charlm import CharModel

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
RTOL = 1e-12


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def assert_close(actual, expected, what: str) -> None:
    # atol only for entries that are (near) zero in both; everything else is relative.
    np.testing.assert_allclose(actual, expected, rtol=RTOL, atol=1e-15, err_msg=what)


# --- (a) h = W x + b ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def affine():
    return load("affine")


@pytest.fixture(scope="module")
def affine_run(affine):
    return affine.run(seed=0)


def test_affine_matches_numpy(affine_run):
    W, x, b, h_ct = affine_run["W"], affine_run["x"], affine_run["b"], affine_run["h_ct"]
    assert W.shape == (10, 4) and x.shape == (4, 1) and b.shape == (10, 1)
    assert np.abs(W).max() <= 0.08 and np.abs(b).max() <= 0.08 and np.abs(x).max() <= 0.08
    assert h_ct.shape == (10, 1) and h_ct[0, 0] == 1.0 and np.count_nonzero(h_ct) == 1

    h = np.array([[sum(W[i, k] * x[k, 0] for k in range(4)) + b[i, 0]] for i in range(10)])
    # h.dw[0] = 1: only h[0] depends on row 0 of W, and on x through that row.
    dW = np.zeros((10, 4))
    dW[0, :] = x[:, 0]
    dx = W[0, :].reshape(4, 1).copy()
    db = np.zeros((10, 1))
    db[0, 0] = 1.0

    grads = affine_run["grads"]
    assert set(grads) == {"W", "x", "b"}
    assert_close(affine_run["h"], h, "h")
    assert_close(grads["W"], dW, "dW")
    assert_close(grads["x"], dx, "dx")
    assert_close(grads["b"], db, "db")


def test_affine_other_seed_differs(affine):
    a, b = affine.run(seed=0), affine.run(seed=1)
    assert not np.array_equal(a["W"], b["W"]) and not np.array_equal(a["x"], b["x"])


# --- (b) one LSTM step and one RMSProp update ---------------------------------------------


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def lstm_reference(params: dict, feeds: dict, hidden_sizes, letter_size: int):
    """Forward and hand-written backprop of the step, no rgraph: (outputs, grads)."""
    P = params
    ix, target = int(feeds["ix"]), int(feeds["target"])
    x = P["Wil"][ix, :].reshape(letter_size, 1)
    cache, outputs = [], {}
    inp = x
    for d in range(len(hidden_sizes)):
        hp, cp = feeds[f"h_prev{d}"], feeds[f"c_prev{d}"]
        gates = {}
        for gate in "ifoc":
            pre = P[f"W{gate}x{d}"] @ inp + P[f"W{gate}h{d}"] @ hp + P[f"b{gate}{d}"]
            gates[gate] = np.tanh(pre) if gate == "c" else sigmoid(pre)
        c = gates["f"] * cp + gates["i"] * gates["c"]
        tc = np.tanh(c)
        h = gates["o"] * tc
        cache.append((inp, hp, cp, gates, tc))
        outputs[f"h{d}"], outputs[f"c{d}"] = h, c
        inp = h
    logits = P["Whd"] @ inp + P["bd"]
    z = logits[:, 0] - logits[:, 0].max()
    logp = z - math.log(np.exp(z).sum())
    outputs["logits"] = logits
    outputs["loss"] = np.array(-logp[target])

    grads = {}
    dlogits = np.exp(logp).reshape(-1, 1)
    dlogits[target, 0] -= 1.0  # RecurrentJS: logits.dw = probs; dw[target] -= 1
    grads["Whd"] = dlogits @ inp.T
    grads["bd"] = dlogits
    dh = P["Whd"].T @ dlogits
    for d in reversed(range(len(hidden_sizes))):
        inp, hp, cp, gates, tc = cache[d]
        i, f, o, g = gates["i"], gates["f"], gates["o"], gates["c"]
        do = dh * tc
        dc = dh * o * (1.0 - tc * tc)
        pre_grads = {
            "i": dc * g * i * (1.0 - i),
            "f": dc * cp * f * (1.0 - f),
            "o": do * o * (1.0 - o),
            "c": dc * i * (1.0 - g * g),
        }
        dinp = np.zeros_like(inp)
        for gate, dpre in pre_grads.items():
            grads[f"W{gate}x{d}"] = dpre @ inp.T
            grads[f"W{gate}h{d}"] = dpre @ hp.T
            grads[f"b{gate}{d}"] = dpre
            dinp += P[f"W{gate}x{d}"].T @ dpre
        dh = dinp
    grads["Wil"] = np.zeros_like(P["Wil"])
    grads["Wil"][ix, :] = dh[:, 0]
    return outputs, grads


def rmsprop_reference(params, grads, lr, regc, clipval, cache=None):
    """RecurrentJS's Solver.step, transcribed element by element from the JavaScript."""
    decay_rate, smooth_eps = 0.999, 1e-8
    new_params, new_cache = {}, {}
    num_clipped = num_tot = 0
    for k, m in params.items():
        w = m.ravel().tolist()
        dw = grads[k].ravel().tolist()
        s = [0.0] * len(w) if cache is None else cache[k].ravel().tolist()
        for i in range(len(w)):
            mdwi = dw[i]
            s[i] = s[i] * decay_rate + (1.0 - decay_rate) * mdwi * mdwi
            if mdwi > clipval:
                mdwi = clipval
                num_clipped += 1
            if mdwi < -clipval:
                mdwi = -clipval
                num_clipped += 1
            num_tot += 1
            w[i] += -lr * mdwi / math.sqrt(s[i] + smooth_eps) - regc * w[i]
        new_params[k] = np.array(w).reshape(m.shape)
        new_cache[k] = np.array(s).reshape(m.shape)
    return new_params, new_cache, num_clipped / num_tot


@pytest.fixture(scope="module")
def lstm():
    return load("lstm_step")


@pytest.fixture(scope="module")
def lstm_run(lstm):
    return lstm.run(seed=0)


def lstm_param_shapes(lstm) -> dict:
    """RecurrentJS's initLSTM (+ the demo's Wil): name -> shape, written out independently."""
    V, D, (H0, H1) = lstm.VOCAB_SIZE, lstm.LETTER_SIZE, lstm.HIDDEN_SIZES
    shapes = {"Wil": (V, D)}
    for d, (n_in, n) in enumerate([(D, H0), (H0, H1)]):
        for gate in "ifoc":
            shapes[f"W{gate}x{d}"] = (n, n_in)
            shapes[f"W{gate}h{d}"] = (n, n)
            shapes[f"b{gate}{d}"] = (n, 1)
    shapes["Whd"] = (V, H1)
    shapes["bd"] = (V, 1)
    return shapes


def test_lstm_model_is_recurrentjs_init(lstm, lstm_run):
    params = lstm_run["params"]
    shapes = lstm_param_shapes(lstm)
    assert {k: v.shape for k, v in params.items()} == shapes
    for name, w in params.items():
        assert w.dtype == np.float64
        if name.startswith("b"):
            assert not w.any(), f"bias {name} starts at zero"
        else:
            assert 0 < np.abs(w).max() <= 0.08, name
    assert len(set(lstm.TEXT)) + 1 == lstm.VOCAB_SIZE


def test_lstm_forward_and_gradients_match_numpy(lstm, lstm_run):
    params, feeds = lstm_run["params"], lstm_run["feeds"]
    outputs, grads = lstm_reference(params, feeds, lstm.HIDDEN_SIZES, lstm.LETTER_SIZE)

    got = lstm_run["outputs"]
    assert set(got) == set(outputs)
    for name, want in outputs.items():
        assert got[name].shape == want.shape, name
        assert_close(got[name], want, name)
    assert float(got["loss"]) > 0

    assert set(lstm_run["grads"]) == set(params) == set(grads)
    for name, want in grads.items():
        assert lstm_run["grads"][name].shape == params[name].shape, name
        assert_close(lstm_run["grads"][name], want, f"grad of {name}")
        # every parameter takes part; Wil only through the plucked row
        assert np.count_nonzero(want) == (lstm.LETTER_SIZE if name == "Wil" else want.size), name


def test_lstm_rmsprop_update_matches_recurrentjs_solver(lstm, lstm_run):
    params, grads = lstm_run["params"], lstm_run["grads"]
    new_params, cache, ratio = rmsprop_reference(params, grads, lr=0.01, regc=1e-6, clipval=5.0)
    assert (lstm.LEARNING_RATE, lstm.REGC, lstm.CLIPVAL) == (0.01, 1e-6, 5.0)
    assert set(lstm_run["new_params"]) == set(lstm_run["cache"]) == set(params)
    for name in params:
        assert_close(lstm_run["cache"][name], cache[name], f"cache of {name}")
        assert_close(lstm_run["new_params"][name], new_params[name], f"updated {name}")
        assert not np.array_equal(lstm_run["new_params"][name], params[name]), name
    assert lstm_run["ratio_clipped"] == ratio == 0.0


def test_rmsprop_step_clips_but_caches_the_unclipped_gradient(lstm):
    rng = np.random.default_rng(3)
    params = {"A": rng.uniform(-1, 1, size=(2, 3)), "b": rng.uniform(-1, 1, size=(3, 1))}
    grads = {
        "A": np.array([[-7.0, -5.0, 0.3], [5.0, 6.0, -0.01]]),  # +-5 exactly: not clipped
        "b": np.array([[12.0], [-2.0], [1e-5]]),
    }
    cache = {k: rng.uniform(0, 2, size=v.shape) for k, v in params.items()}
    before = {k: v.copy() for k, v in {**params, **grads, **cache}.items()}
    lr, regc, clipval = 0.05, 1e-3, 5.0

    got_params, got_cache, got_ratio = lstm.rmsprop_step(params, grads, cache, lr, regc, clipval)
    want_params, want_cache, want_ratio = rmsprop_reference(
        params, grads, lr, regc, clipval, cache=cache
    )
    for k in params:
        assert_close(got_cache[k], want_cache[k], f"cache of {k}")
        assert_close(got_params[k], want_params[k], f"updated {k}")
    assert got_ratio == want_ratio == 3 / 9
    # the cache saw the unclipped gradient: 0.999 * s + 0.001 * 12**2
    assert got_cache["b"][0, 0] == pytest.approx(0.999 * cache["b"][0, 0] + 0.001 * 144.0)
    # nothing given was changed in place
    for k, v in {**params, **grads, **cache}.items():
        np.testing.assert_array_equal(v, before[k])
    # a missing cache entry starts at zero, as a fresh Solver's step_cache
    fresh_params, fresh_cache, _ = lstm.rmsprop_step(params, grads, {}, lr, regc, clipval)
    want_params, want_cache, _ = rmsprop_reference(params, grads, lr, regc, clipval)
    for k in params:
        assert_close(fresh_cache[k], want_cache[k], f"fresh cache of {k}")
        assert_close(fresh_params[k], want_params[k], f"fresh update of {k}")


# --- both run as scripts ------------------------------------------------------------------


def test_affine_script_prints_program_and_gradients(capsys):
    runpy.run_path(str(EXAMPLES / "affine.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "graph affine {" in out
    assert "input h.ct: f64[10,1]" in out
    assert "W.grad: f64[10,4] = " in out
    assert "dh[0]/db (10x1, shown as a row): [1. 0. 0. 0. 0. 0. 0. 0. 0. 0.]" in out


def test_lstm_script_prints_forward_and_backward(lstm_run, capsys):
    runpy.run_path(str(EXAMPLES / "lstm_step.py"), run_name="__main__")
    out = capsys.readouterr().out
    assert "graph lstm_step {" in out
    for text in ("row_pluck(Wil, ix)", "softmax_cross_entropy_grad", "row_pluck_grad("):
        assert text in out
    assert f"loss {float(lstm_run['outputs']['loss']):.6f}" in out
    for name in lstm_run["params"]:
        assert f"{name}.grad: f64[" in out


# --- docs/ir.md stays true ----------------------------------------------------------------

IR_DOC = EXAMPLES.parent / "docs" / "ir.md"


def doc_block(marker: str) -> str:
    """The fenced code block that follows ``<!-- marker -->`` in docs/ir.md."""
    text = IR_DOC.read_text()
    after = text.split(f"<!-- {marker} -->\n", 1)[1]
    fence, rest = after.split("\n", 1)
    assert fence.startswith("```"), fence
    return rest.split("\n```\n", 1)[0] + "\n"


def doc_example_output() -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = compile(doc_block("ir-example-script"), "example.py", "exec")
        exec(code, {"__name__": "__main__"})
    return out.getvalue()


def test_ir_doc_example_is_what_rgraph_prints():
    # If this fails after a deliberate change to the printer or the passes, paste the new
    # output (python -c "import tests.test_examples as t; print(t.doc_example_output())").
    assert doc_example_output() == doc_block("ir-example-output")


def test_ir_doc_op_table_lists_every_op_with_its_attributes():
    from rgraph.ir.op import REGISTRY

    section = IR_DOC.read_text().split("## The op set", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        m = re.match(r"\| `(\w+)` \| (\w+) \| [^|]* \| ([^|]*) \|", line)
        if m:
            rows[m.group(1)] = (m.group(2), re.findall(r"`(\w+)`:", m.group(3)))
    assert set(rows) == set(REGISTRY), "docs/ir.md op table is out of date"
    for name, op in REGISTRY.items():
        family, attrs = rows[name]
        assert family == type(op).__module__.rsplit(".", 1)[-1], name
        assert attrs == list(op.Attrs.model_fields), name


# The grammar of docs/ir.md, transcribed into regular expressions, one line at a time.
NAME = r"[A-Za-z_][A-Za-z0-9_.:]*"
SYMBOL = r"[A-Za-z_][A-Za-z0-9_]*"
NAT = r"(?:0|[1-9][0-9]*)"
DIM = rf"(?:{NAT}|(?:[1-9][0-9]*\*)?{SYMBOL}(?:\*{SYMBOL})*)"
TYPE = rf"(?:f32|f64|i32|i64|bool)\[(?:{DIM}(?:,{DIM})*)?\]"
VAR = rf"{NAME}: {TYPE}"
NUMBER = r"(?:-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?|NaN|-?Infinity)"
SCALAR = rf'(?:{NUMBER}|true|false|null|"(?:[^"\\]|\\.)*")'
JSON = rf"(?:{SCALAR}|\[(?:{SCALAR}(?:,{SCALAR})*)?\])"
INIT = (
    rf"(?:zeros|ones|glorot_uniform|glorot_normal|constant\(value={NUMBER}\)"
    rf"|uniform\(low={NUMBER}, high={NUMBER}\)|normal\(mean={NUMBER}, std={NUMBER}\))"
)
ATTRS = rf"\[{NAME}={JSON}(?:, {NAME}={JSON})*\]"
NODE = (
    rf"{VAR}(?:, {VAR})* = {NAME}(?:{ATTRS})?\((?:{NAME}(?:, {NAME})*)?\)"
    rf"(?:  # [^\n]+:{NAT})?"
)


def check_graph(lines: list[str], i: int, level: int) -> int:
    """Check ``graph(level)`` starting at line ``i``; return the line after it."""
    ind, ind1 = "  " * level, "  " * (level + 1)
    assert re.fullmatch(rf"{ind}graph {NAME} \{{", lines[i]), lines[i]
    i += 1
    for keyword, rest in (
        ("input", VAR),
        ("param", rf"{VAR} ~ {INIT}"),
        ("const", rf"{VAR} = (?:{JSON}|<{NAT} values>)"),
    ):
        while re.fullmatch(rf"{ind1}{keyword} {rest}", lines[i]):
            i += 1
    while re.fullmatch(ind1 + NODE, lines[i]):
        i += 1
        while re.fullmatch(rf"{ind1}  {NAME}:", lines[i]):
            i = check_graph(lines, i + 1, level + 3)
    assert re.fullmatch(rf"{ind1}return(?: {NAME}(?:, {NAME})*)?", lines[i]), lines[i]
    assert lines[i + 1] == ind + "}", lines[i + 1]
    return i + 2


def check_text_form(text: str) -> None:
    lines = text.split("\n")
    assert check_graph(lines, 0, 0) == len(lines)


def odd_graph():
    """A graph using the corners of the text form: every init, odd consts and attrs."""
    import rgraph as rg
    from rgraph.ir import GraphIR

    g = rg.Graph("corners")
    x = g.input("x", ("T", 3))
    for kind, args in [
        ("zeros", {}),
        ("ones", {}),
        ("constant", {"value": float("-inf")}),
        ("uniform", {"low": -1e-5, "high": 2.5}),
        ("normal", {"mean": 0.0, "std": 1e-3}),
        ("glorot_uniform", {}),
        ("glorot_normal", {}),
    ]:
        g.param(f"p_{kind}", (3, 3), init=kind, **args)
    g.const(True, name="flag")
    g.const(np.arange(12).reshape(3, 4), name="many")
    g.const([[1.5, -2.0], [0.0, 1e-300]], name="few")
    a, b = g.split(g.concat([x, x], axis=0), axis=0, sizes=["T", "T"])
    nan = g.full_like(a, value=float("nan"))
    g.output(g.softmax_cross_entropy(a + nan, g.input("y", ("T",), "int64"), reduction="none"))
    g.output(g.slice(b, axis=1, start=-2, stop=None))
    data = g.ir.model_dump(mode="json")
    for node in data["nodes"]:
        node["loc"] = None  # IR from data may have no source locations
    empty = GraphIR(name="empty")
    return GraphIR.model_validate(data), empty


def test_text_form_follows_the_documented_grammar(affine_run, lstm_run):
    import rgraph as rg

    corners, empty = odd_graph()
    texts = {
        "affine program": str(affine_run["program"]),
        "lstm program": str(lstm_run["program"]),
        "corners": str(corners),
        "empty": str(empty),
    }
    for line in (
        "  const many: i64[3,4] = <12 values>",
        "  const few: f64[2,2] = [1.5,-2.0,0.0,1e-300]",
        "  param p_constant: f64[3,3] ~ constant(value=-Infinity)",
        "  t0: f64[2*T,3] = concat(x, x)",
        '  t1: f64[T,3], t2: f64[T,3] = split[sizes=["T","T"]](t0)',
        "  t3: f64[T,3] = full_like[value=NaN](t1)",
    ):
        assert line in texts["corners"].split("\n"), line
    assert texts["empty"] == "graph empty {\n  return\n}"
    # the doc's two example graphs, and its char_rnn compiled: a reverse scan in the program
    first, second = doc_block("ir-example-output").rstrip("\n").split("\n}\n")
    texts["doc char_rnn"], texts["doc tanh_layer program"] = first + "\n}", second
    ns: dict = {"__name__": "doc"}
    script = doc_block("ir-example-script").split("\n# A small graph")[0]
    exec(compile(script.replace("print(g)", ""), "example.py", "exec"), ns)
    assert ns["g"].name == "char_rnn"
    texts["char_rnn program"] = str(rg.compile(ns["g"], loss="loss"))
    assert texts["char_rnn program"].count("body:") == 2
    for what, text in texts.items():
        try:
            check_text_form(text)
        except (AssertionError, IndexError) as e:
            raise AssertionError(f"{what} does not follow the grammar: {e}\n{text}") from None


BAD_TEXT = {
    "no space after colon": "graph g {\n  input x:f64[2]\n  return x\n}",
    "space in a shape": "graph g {\n  input x: f64[2, 3]\n  return x\n}",
    "long dtype name": "graph g {\n  input x: float64[2]\n  return x\n}",
    "bad dim": "graph g {\n  input x: f64[B*T-1]\n  return x\n}",
    "positional init args": "graph g {\n  param W: f64[2] ~ uniform(-0.1, 0.1)\n  return\n}",
    "param before input": "graph g {\n  param W: f64[2] ~ zeros\n  input x: f64[2]\n  return x\n}",
    "one space before #": "graph g {\n  input x: f64[2]\n  y: f64[2] = tanh(x) # g.py:3\n"
    "  return y\n}",
    "space in attr JSON": "graph g {\n  input x: f64[2,3]\n  y: f64[] = sum[axes=[0, 1]](x)\n"
    "  return y\n}",
    "final newline": "graph g {\n  input x: f64[2]\n  return x\n}\n",
    "trailing comma": "graph g {\n  input x: f64[2]\n  return x, \n}",
    "body not indented": "graph g {\n  input x: f64[2]\n  y: f64[2] = scan[num_carry=1, num_xs=0]"
    "(x)\n  body:\n  graph b {\n    input c: f64[2]\n    return c\n  }\n  return y\n}",
}


def test_grammar_checker_accepts_a_nested_body():
    check_text_form(
        "graph g {\n  input x: f64[2]\n  y: f64[2] = scan[num_carry=1, num_xs=0](x)\n"
        "    body:\n      graph b {\n        input c: f64[2]\n        return c\n      }\n"
        "  return y\n}"
    )


@pytest.mark.parametrize("what", BAD_TEXT)
def test_grammar_checker_rejects_what_the_printer_never_writes(what):
    with pytest.raises((AssertionError, IndexError)):
        check_text_form(BAD_TEXT[what])


def test_char_rnn_script_trains_reports_and_saves_a_samplable_model(tmp_path, monkeypatch):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("the cat sat.\n\na dog ran.\nbirds sing.\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", ["char_rnn.py", str(corpus), "20"])
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        runpy.run_path(str(EXAMPLES / "char_rnn.py"), run_name="__main__")
    text = out.getvalue()
    assert "step 20: train perplexity" in text and "argmax:" in text
    model = rg.load(tmp_path / "char_rnn.rgraph")
    letters = sorted(set("the cat sat.a dog ran.birds sing."))
    assert model.step == 20 and model.metadata["vocab"] == letters
    assert CharModel.from_file(model).vocab.size == len(letters) + 1
