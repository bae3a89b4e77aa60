"""RecurrentJS interop: import/export of the character demo's JSON, and ``rgraph convert``.

The numbers are checked two ways: against a numpy re-implementation of the demo's
``costfun`` written here (from the JSON, not from the imported model), and against costs
and a training step computed by the original RecurrentJS code (``tests/data/recurrentjs``).
"""

from __future__ import annotations

import copy
import functools
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rgraph as rg
from rgraph.cli import main
from rgraph.errors import FormatError
from rgraph.io import recurrentjs
from rgraph.io.recurrentjs import export_json, import_json, write_json

DATA = Path(__file__).parent / "data" / "recurrentjs"
EXPECTED = json.loads((DATA / "expected.json").read_text(encoding="utf-8"))
SENTENCES = ["hello world", "low herd", "o", ""]


# --- a RecurrentJS model written independently of rgraph ------------------------------


def demo_shapes(generator, vocab_size, hidden_sizes, letter_size):
    """(name, n, d) of every Mat, in the order of the demo's initModel/initLSTM/initRNN."""
    shapes = [("Wil", vocab_size, letter_size)]
    for d, size in enumerate(hidden_sizes):
        prev = letter_size if d == 0 else hidden_sizes[d - 1]
        if generator == "lstm":
            for gate in "ifoc":
                shapes += [(f"W{gate}x{d}", size, prev), (f"W{gate}h{d}", size, size)]
                shapes.append((f"b{gate}{d}", size, 1))
        else:
            shapes += [(f"Wxh{d}", size, prev), (f"Whh{d}", size, size), (f"bhh{d}", size, 1)]
    shapes += [("Whd", vocab_size, hidden_sizes[-1]), ("bd", vocab_size, 1)]
    return shapes


def random_demo_json(generator, hidden_sizes=(4, 3), letter_size=3, text="hello world", seed=0):
    """A demo-format model with weights big enough that every nonlinearity matters."""
    rng = np.random.default_rng(seed)
    vocab = list(dict.fromkeys(text))
    shapes = demo_shapes(generator, len(vocab) + 1, list(hidden_sizes), letter_size)

    def mat(n, d, scale):
        return {"n": n, "d": d, "w": rng.uniform(-scale, scale, n * d).tolist()}

    return {
        "hidden_sizes": list(hidden_sizes),
        "generator": generator,
        "letter_size": letter_size,
        "model": {name: mat(n, d, 0.8) for name, n, d in shapes},
        "solver": {
            "decay_rate": 0.999,
            "smooth_eps": 1e-8,
            "step_cache": {
                name: {"n": n, "d": d, "w": rng.uniform(0, 0.01, n * d).tolist()}
                for name, n, d in shapes
            },
        },
        "letterToIndex": {ch: i + 1 for i, ch in enumerate(vocab)},
        "indexToLetter": {str(i + 1): ch for i, ch in enumerate(vocab)},
        "vocab": vocab,
    }


def values(w):
    """A Mat's w as a list, whether a JSON array or an object keyed "0", "1", ..."""
    return [w[str(i)] for i in range(len(w))] if isinstance(w, dict) else list(w)


def demo_costfun(j, sentence):
    """The demo's costfun, step by step on column vectors, as RecurrentJS computes it."""
    M = {
        k: np.array(values(m["w"]), dtype=np.float64).reshape(m["n"], m["d"])
        for k, m in j["model"].items()
    }
    sizes, l2i = j["hidden_sizes"], j["letterToIndex"]
    sig = lambda z: 1.0 / (1.0 + np.exp(-z))  # noqa: E731
    h = [np.zeros((s, 1)) for s in sizes]
    c = [np.zeros((s, 1)) for s in sizes]
    n, cost = len(sentence), 0.0
    for i in range(-1, n):
        src = 0 if i == -1 else l2i[sentence[i]]  # START first
        tgt = 0 if i == n - 1 else l2i[sentence[i + 1]]  # END last
        x = M["Wil"][src][:, None]  # rowPluck: a d x 1 column
        for d in range(len(sizes)):
            inp = x if d == 0 else h[d - 1]  # layer d - 1's new hidden state
            if j["generator"] == "lstm":
                gate = {
                    g: M[f"W{g}x{d}"] @ inp + M[f"W{g}h{d}"] @ h[d] + M[f"b{g}{d}"] for g in "ifoc"
                }
                c[d] = sig(gate["f"]) * c[d] + sig(gate["i"]) * np.tanh(gate["c"])
                h[d] = sig(gate["o"]) * np.tanh(c[d])
            else:
                h[d] = np.maximum(0.0, M[f"Wxh{d}"] @ inp + M[f"Whh{d}"] @ h[d] + M[f"bhh{d}"])
        logits = (M["Whd"] @ h[-1] + M["bd"]).ravel()
        e = np.exp(logits - logits.max())
        cost += -np.log((e / e.sum())[tgt])
    return cost


def encode(model, sentence):
    return [model.metadata["letter_to_index"][ch] for ch in sentence]


def rgraph_nll(model, sentences):
    """rgraph's summed NLL of a padded batch of sentences."""
    feeds = rg.train.pad_sequences([encode(model, s) for s in sentences])
    return float(rg.compile(model.graph, ["nll"]).run(feeds, model.params)["nll"])


def assert_same_model(a, b):
    """Parameters, RMSProp cache and vocabulary equal bit for bit."""
    assert a.params.keys() == b.params.keys()
    for name in a.params:
        assert a.params[name].dtype == b.params[name].dtype == np.float64
        assert a.params[name].shape == b.params[name].shape
        assert a.params[name].tobytes() == b.params[name].tobytes(), name
    ca, cb = a.optimizer["slots"]["cache"], b.optimizer["slots"]["cache"]
    assert ca.keys() == cb.keys()
    for name in ca:
        assert ca[name].tobytes() == cb[name].tobytes(), name
    assert a.optimizer["hyper"] == b.optimizer["hyper"]
    assert a.metadata == b.metadata


# --- import: the numbers --------------------------------------------------------------


@pytest.mark.parametrize("generator", ["lstm", "rnn"])
def test_imported_cost_equals_numpy_costfun(generator):
    j = random_demo_json(generator)
    model = import_json(j)
    rg.ir.verify.verify(model.graph)
    costs = [demo_costfun(j, s) for s in SENTENCES]
    assert min(costs) > 0.5  # not a degenerate model
    for s, want in zip(SENTENCES, costs):
        np.testing.assert_allclose(rgraph_nll(model, [s]), want, rtol=1e-12, atol=0)
    # A padded batch of all of them sums the same costs.
    np.testing.assert_allclose(rgraph_nll(model, SENTENCES), sum(costs), rtol=1e-12, atol=0)


def test_rnn_costfun_sees_relu():
    """The RNN fixture drives some units below zero, so relu (not tanh) is what matches."""
    j = random_demo_json("rnn")
    M = {k: np.array(m["w"]).reshape(m["n"], m["d"]) for k, m in j["model"].items()}
    pre = M["Wxh0"] @ M["Wil"][1:].T + M["bhh0"]
    assert (pre < 0).any() and (pre > 0).any()


@pytest.mark.parametrize("generator", ["lstm", "rnn"])
def test_cost_equals_original_recurrentjs(generator):
    """Costs the original RecurrentJS code computed for its own saved model."""
    model = import_json(DATA / f"{generator}.json")
    for s, want in zip(EXPECTED["sentences"], EXPECTED[generator]):
        np.testing.assert_allclose(rgraph_nll(model, [s]), want, rtol=1e-12, atol=0)
    # and our numpy costfun agrees with the original code too
    j = json.loads((DATA / f"{generator}.json").read_text(encoding="utf-8"))
    np.testing.assert_allclose(
        [demo_costfun(j, s) for s in EXPECTED["sentences"]], EXPECTED[generator], rtol=1e-12
    )


@pytest.mark.parametrize("generator", ["lstm", "rnn"])
def test_training_step_resumes_exactly_as_recurrentjs(generator):
    """One demo tick (costfun, backward, solver.step) from the imported weights and step
    cache gives the weights and cache the original code saved after the same tick."""
    model = import_json(DATA / f"{generator}.json")
    after = import_json(DATA / f"{generator}_step.json")
    step = EXPECTED["step"]
    state = copy.deepcopy(model.optimizer)
    state["hyper"].update(lr=step["lr"], regc=step["regc"], clipval=step["clipval"])
    opt = rg.Optimizer.from_state_dict(state, model.params)
    feeds = rg.train.pad_sequences([encode(model, step["sentence"])])
    grads = rg.compile(model.graph, ["loss"], loss="loss").run(feeds, model.params).grads
    before = {name: w.copy() for name, w in model.params.items()}
    stats = opt.step(model.params, grads)
    assert 0 < stats.ratio_clipped < 1  # the fixture's clipval does clip some elements
    for name, want in after.params.items():
        assert not np.array_equal(model.params[name], before[name])
        np.testing.assert_allclose(model.params[name], want, rtol=1e-12, atol=1e-15, err_msg=name)
        np.testing.assert_allclose(
            opt.slots["cache"][name],
            after.optimizer["slots"]["cache"][name],
            rtol=1e-12,
            atol=1e-18,
            err_msg=name,
        )


def test_imported_structure_state_and_metadata():
    j = json.loads((DATA / "lstm.json").read_text(encoding="utf-8"))
    model = import_json(DATA / "lstm.json")
    vocab = j["vocab"]
    assert model.metadata == {
        "generator": "lstm",
        "hidden_sizes": [4, 3],
        "letter_size": 3,
        "vocab": vocab,
        "letter_to_index": {ch: i + 1 for i, ch in enumerate(vocab)},
        "index_to_letter": {str(i + 1): ch for i, ch in enumerate(vocab)},
    }
    assert vocab[:2] == ["2", "3"]  # JS orders integer-like keys first: kept as saved
    assert model.params["Wil"].shape == (len(vocab) + 1, 3)
    assert model.params["bi0"].shape == (4,)  # (n, 1) columns become vectors
    np.testing.assert_array_equal(model.params["bi0"], values(j["model"]["bi0"]["w"]))
    np.testing.assert_array_equal(
        model.params["Wch1"], np.reshape(values(j["model"]["Wch1"]["w"]), (3, 3))
    )
    assert model.optimizer["kind"] == "rmsprop" and model.optimizer["step"] == 0
    hyper = model.optimizer["hyper"]
    assert (hyper["decay"], hyper["eps"]) == (0.999, 1e-8)
    assert (hyper["lr"], hyper["regc"], hyper["clipval"]) == (0.01, 1e-6, 5.0)
    assert model.optimizer["slots"]["cache"].keys() == model.params.keys()
    opt = rg.Optimizer.from_state_dict(model.optimizer, model.params)
    assert isinstance(opt, rg.RMSProp)


def test_w_as_array_and_as_object_import_identically():
    j = json.loads((DATA / "lstm.json").read_text(encoding="utf-8"))
    assert isinstance(j["model"]["Wil"]["w"], dict)  # what JSON.stringify wrote
    arrays = copy.deepcopy(j)
    for table in (arrays["model"], arrays["solver"]["step_cache"]):
        for m in table.values():
            m["w"] = values(m["w"])
    assert_same_model(import_json(j), import_json(arrays))


def test_partial_and_empty_step_cache():
    """A fresh demo solver saves an empty step_cache; missing entries start at zero."""
    j = random_demo_json("rnn")
    j["solver"]["step_cache"] = {"Whd": j["solver"]["step_cache"]["Whd"]}
    model = import_json(j)
    assert list(model.optimizer["slots"]["cache"]) == ["Whd"]
    assert list(export_json(model)["solver"]["step_cache"]) == ["Whd"]
    j["solver"]["step_cache"] = {}
    assert import_json(j).optimizer["slots"]["cache"] == {}


# --- export ---------------------------------------------------------------------------


def test_import_export_import_loses_nothing(tmp_path):
    model = import_json(DATA / "lstm.json")
    out = export_json(model)
    assert list(out) == [  # the demo's saveModel order
        "hidden_sizes",
        "generator",
        "letter_size",
        "model",
        "solver",
        "letterToIndex",
        "indexToLetter",
        "vocab",
    ]
    original = json.loads((DATA / "lstm.json").read_text(encoding="utf-8"))
    for name, m in original["model"].items():
        assert out["model"][name] == {"n": m["n"], "d": m["d"], "w": values(m["w"])}
    for name, m in original["solver"]["step_cache"].items():
        assert out["solver"]["step_cache"][name]["w"] == values(m["w"])
    assert {k: out[k] for k in ("letterToIndex", "indexToLetter", "vocab")} == {
        k: original[k] for k in ("letterToIndex", "indexToLetter", "vocab")
    }
    assert_same_model(model, import_json(json.loads(json.dumps(out))))
    write_json(tmp_path / "m.json", model)
    assert_same_model(model, import_json(tmp_path / "m.json"))


def train_char_model(kind="lstm", dtype="float64", steps=4):
    """A character model trained by rgraph (a fresh copy each call)."""
    return copy.deepcopy(_trained(kind, dtype, steps))


@functools.cache
def _trained(kind, dtype, steps):
    text = ["hi there", "the hat", "tea"]
    vocab = sorted(set("".join(text)))
    g = rg.Graph(f"char_{kind}")
    rg.nn.language_model(
        g, len(vocab) + 1, kind=kind, hidden_sizes=[5, 4], letter_size=3, dtype=dtype
    )
    trainer = rg.Trainer(g, rg.RMSProp(lr=0.05, decay=0.95, eps=1e-6), seed=3)
    index = {ch: i + 1 for i, ch in enumerate(vocab)}
    batch = rg.train.pad_sequences([[index[ch] for ch in s] for s in text], dtype=dtype)
    for _ in range(steps):
        trainer.step(batch)
    model = rg.Model(
        graph=g.ir,
        params=trainer.params,
        optimizer=trainer.optimizer.state_dict(),
        metadata={"vocab": vocab},
    )
    return model, text


@pytest.mark.parametrize("kind", ["lstm", "rnn"])
def test_export_of_rgraph_trained_model_loads_back(tmp_path, kind):
    model, text = train_char_model(kind)
    rg.save(
        tmp_path / "m.rgraph",
        model.graph,
        model.params,
        optimizer=model.optimizer,
        metadata=model.metadata,
    )
    loaded = rg.load(tmp_path / "m.rgraph")
    write_json(tmp_path / "m.json", loaded)
    back = import_json(tmp_path / "m.json")
    assert back.metadata["generator"] == kind and back.metadata["hidden_sizes"] == [5, 4]
    for name, w in model.params.items():
        assert back.params[name].tobytes() == w.tobytes(), name
        cache = back.optimizer["slots"]["cache"][name]
        assert cache.tobytes() == model.optimizer["slots"]["cache"][name].tobytes(), name
    assert (back.optimizer["hyper"]["decay"], back.optimizer["hyper"]["eps"]) == (0.95, 1e-6)
    # and it is the same model: the demo's costfun on the exported JSON agrees
    j = json.loads((tmp_path / "m.json").read_text(encoding="utf-8"))
    for s in text:
        np.testing.assert_allclose(rgraph_nll(back, [s]), demo_costfun(j, s), rtol=1e-12)


def test_export_upcasts_float32_exactly():
    model, _ = train_char_model("rnn", dtype="float32", steps=2)
    j = export_json(model)
    back = import_json(j)
    for name, w in model.params.items():
        assert w.dtype == np.float32
        np.testing.assert_array_equal(back.params[name], w.astype(np.float64))
        np.testing.assert_array_equal(
            back.optimizer["slots"]["cache"][name],
            model.optimizer["slots"]["cache"][name].astype(np.float64),
        )


def test_export_without_optimizer_state_writes_a_fresh_solver():
    model, _ = train_char_model("rnn", steps=1)
    stateless = rg.Model(graph=model.graph, params=model.params, metadata=model.metadata)
    for solver in (
        export_json(stateless)["solver"],
        export_json(model, include_optimizer=False)["solver"],
    ):
        assert (solver["decay_rate"], solver["smooth_eps"]) == (0.999, 1e-8)
        assert list(solver["step_cache"]) == list(model.params)
        for name, mat in solver["step_cache"].items():
            assert mat["w"] == [0.0] * model.params[name].size
            assert (mat["n"], mat["d"]) == (
                model.params[name].shape[0],
                (*model.params[name].shape, 1)[1],
            )


def gru_model():
    g = rg.Graph("char_gru")
    rg.nn.language_model(g, 4, kind="gru", hidden_sizes=[3], letter_size=2)
    return rg.Model(graph=g.ir, params=rg.init_params(g, 0), metadata={"vocab": list("abc")})


def refusals():
    """(model maker, text the FormatError must contain)."""

    def edit(fn):
        def make():
            model, _ = train_char_model("lstm", steps=1)
            fn(model)
            return model

        return make

    def drop(model, name):
        del model.params[name]

    return [
        (gru_model, "GRU has no RecurrentJS counterpart"),
        (edit(lambda m: m.metadata.pop("vocab")), "metadata.vocab: missing"),
        (edit(lambda m: m.metadata.update(vocab=m.metadata["vocab"][:-1])), "Wil has 8 rows"),
        (
            edit(lambda m: m.metadata.update(vocab=["ab", *m.metadata["vocab"][1:]])),
            "metadata.vocab[0]",
        ),
        (
            edit(lambda m: m.metadata.update(vocab=["\U0001f600", *m.metadata["vocab"][1:]])),
            "outside the Basic Multilingual Plane",
        ),
        (edit(lambda m: m.metadata.update(generator="rnn")), "metadata.generator"),
        (edit(lambda m: m.metadata.update(hidden_sizes=[5, 5])), "metadata.hidden_sizes"),
        (edit(lambda m: m.metadata.update(letter_to_index={"x": 1})), "metadata.letter_to_index"),
        (edit(lambda m: drop(m, "Wfh1")), "params: lacks 'Wfh1'"),
        (edit(lambda m: m.params.update(extra=np.zeros(2))), "params: has 'extra'"),
        (edit(lambda m: m.params["bd"].__setitem__(2, np.nan)), "params.bd: element 2 is nan"),
        (edit(lambda m: m.params.update(bd=m.params["bd"].astype(np.int64))), "params.bd"),
        (edit(lambda m: m.optimizer.update(kind="adam")), "include_optimizer=False"),
        (edit(lambda m: m.optimizer["slots"]["cache"].update(Wil=np.zeros(3))), "optimizer: "),
    ]


@pytest.mark.parametrize("case", range(len(refusals())))
def test_export_refuses_non_recurrentjs_models(case):
    make, text = refusals()[case]
    with pytest.raises(FormatError, match=r"^cannot export to RecurrentJS JSON: ") as e:
        export_json(make())
    assert text in str(e.value)


def test_export_with_adam_state_and_include_optimizer_false():
    model, _ = train_char_model("lstm", steps=1)
    model.optimizer = rg.Adam().state_dict()
    j = export_json(model, include_optimizer=False)
    assert all(set(m["w"]) == {0.0} for m in j["solver"]["step_cache"].values())


# --- malformed input ------------------------------------------------------------------


def _set(path, value):
    def fn(j):
        *head, last = path
        target = j
        for k in head:
            target = target[k]
        target[last] = value

    return fn


def _del(path):
    def fn(j):
        *head, last = path
        target = j
        for k in head:
            target = target[k]
        del target[last]

    return fn


def _swap_letters(j):
    a, b = j["vocab"][:2]
    j["letterToIndex"][a], j["letterToIndex"][b] = j["letterToIndex"][b], j["letterToIndex"][a]


def _short_vocab(j):
    letter = j["vocab"].pop()
    del j["letterToIndex"][letter]
    del j["indexToLetter"][str(len(j["vocab"]) + 1)]


def _object_w(key_of):
    def fn(j):
        w = j["model"]["bd"]["w"]
        j["model"]["bd"]["w"] = {key_of(i): v for i, v in enumerate(w)}

    return fn


MALFORMED = [
    (_del(["generator"]), "generator: missing"),
    (_set(["generator"], "gru"), "generator: 'gru' is not a RecurrentJS generator"),
    (_set(["hidden_sizes"], []), "hidden_sizes: expected a non-empty array"),
    (_set(["hidden_sizes"], [4, 0]), "hidden_sizes[1]: expected an integer >= 1, got 0"),
    (_set(["hidden_sizes"], [4, 4]), "model.Wix1: is 3 x 4, expected 4 x 4 for an lstm"),
    (_set(["letter_size"], "3"), "letter_size: expected an integer, got '3'"),
    (_set(["letter_size"], 4), "model.Wil: is 9 x 3, expected 9 x 4"),
    (_del(["model"]), "model: missing"),
    (_del(["model", "Wih0"]), "model.Wih0: missing"),
    (_set(["model", "Wxh0"], {"n": 1, "d": 1, "w": [0]}), "model.Wxh0: not a parameter of"),
    (_set(["model", "Whd", "n"], 8), "model.Whd: is 8 x 3, expected 9 x 3"),
    (_del(["model", "Whd", "d"]), "model.Whd.d: missing"),
    (_set(["model", "Whd", "n"], True), "model.Whd.n: expected an integer, got true"),
    (lambda j: j["model"]["Wix1"]["w"].pop(), "model.Wix1.w: has 11 values, expected n*d = 12"),
    (_set(["model", "bd", "w", 2], "x"), "model.bd.w[2]: expected a number, got 'x'"),
    (_set(["model", "bd", "w", 3], None), "model.bd.w[3]: expected a number, got null"),
    (_set(["model", "bd", "w", 4], False), "model.bd.w[4]: expected a number, got false"),
    (_set(["model", "bd", "w", 5], [1.0]), "model.bd.w[5]: expected a number, got an array"),
    (_set(["model", "bd", "w", 6], float("inf")), "model.bd.w[6]: expected a finite number"),
    (_set(["model", "bd", "w"], "0,1"), "model.bd.w: expected an array or an object"),
    (_object_w(lambda i: f"{i:02d}"), "model.bd.w: has key '00'; the keys of an object w"),
    (_object_w(lambda i: str(i + 1)), "model.bd.w: has key '9'"),
    (lambda j: _object_w(str)(j) or j["model"]["bd"]["w"].pop("8"), "model.bd.w: has 8 entries"),
    (
        lambda j: _object_w(str)(j) or _set(["model", "bd", "w", "3"], "1")(j),
        "model.bd.w['3']: expected a number, got '1'",
    ),
    (_swap_letters, "letterToIndex.h: is 2, but vocab puts 'h' at index 1"),
    (_set(["letterToIndex", "z"], 9), "letterToIndex.z: 'z' is not in vocab"),
    (_del(["letterToIndex", " "]), "letterToIndex[' ']: missing: vocab[4] is ' '"),
    (_set(["indexToLetter", "2"], "x"), "indexToLetter['2']: is 'x', but vocab[1] is 'e'"),
    (_set(["indexToLetter", "0"], "x"), "indexToLetter['0']: not an index of vocab"),
    (_del(["indexToLetter"]), "indexToLetter: missing"),
    (_set(["vocab", 1], "h"), "vocab[1]: 'h' is already vocab[0]"),
    (_set(["vocab", 1], "eh"), "vocab[1]: expected a one-character string, got 'eh'"),
    (_set(["vocab", 1], "\ud83d"), "vocab[1]: '\\ud83d' is half of a UTF-16 surrogate pair"),
    (_short_vocab, "model.Wil: is 9 x 3, expected 8 x 3 for an lstm with hidden_sizes [4, 3]"),
    (_del(["solver"]), "solver: missing"),
    (_del(["solver", "smooth_eps"]), "solver.smooth_eps: missing"),
    (_set(["solver", "decay_rate"], 1.5), "solver.decay_rate: must be in [0, 1), got 1.5"),
    (_set(["solver", "smooth_eps"], 0), "solver.smooth_eps: must be > 0"),
    (_set(["solver", "step_cache"], []), "solver.step_cache: expected an object, got an array"),
    (
        _set(["solver", "step_cache", "Foo"], {"n": 1, "d": 1, "w": [0]}),
        "solver.step_cache.Foo: not a parameter of the model",
    ),
    (
        _set(["solver", "step_cache", "Wil"], {"n": 3, "d": 9, "w": [0] * 27}),
        "solver.step_cache.Wil: is 3 x 9, expected 9 x 3",
    ),
    (
        lambda j: j["solver"]["step_cache"]["bi1"]["w"].__setitem__(0, None),
        "solver.step_cache.bi1.w[0]: expected a number, got null",
    ),
]


@pytest.mark.parametrize("case", range(len(MALFORMED)), ids=[m[1][:40] for m in MALFORMED])
def test_malformed_json_names_the_key(case):
    mutate, message = MALFORMED[case]
    j = random_demo_json("lstm")
    import_json(copy.deepcopy(j))  # valid before the mutation
    mutate(j)
    with pytest.raises(FormatError) as e:
        import_json(j)
    assert str(e.value).startswith("RecurrentJS JSON: ")
    assert message in str(e.value)


def test_top_level_must_be_an_object():
    with pytest.raises(FormatError, match="RecurrentJS JSON: expected an object, got an array"):
        import_json([1, 2])  # type: ignore[arg-type]


MALFORMED_FILES = {
    "duplicate key": ('{"generator": "lstm", "generator": "rnn"}', "generator: the key appears"),
    "top level first": ('{"model": {"Wil": {"n": 1, "n": 2}}}', "generator: missing"),
    "NaN literal": ('{"a": NaN}', "not valid JSON: NaN is not valid JSON"),
    "truncated": ('{"a": [1, 2', "not valid JSON: Expecting"),
    "empty": ("", "not valid JSON: Expecting value"),
    "deep": ("[" * 100_000, "JSON nested too deeply"),
}


@pytest.mark.parametrize("case", list(MALFORMED_FILES))
def test_malformed_files(tmp_path, case):
    text, message = MALFORMED_FILES[case]
    path = tmp_path / "m.json"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(FormatError) as e:
        import_json(path)
    assert str(e.value).startswith(repr(str(path)))
    assert message in str(e.value)


def test_duplicate_keys_in_a_file_are_reported_with_their_path(tmp_path):
    text = (DATA / "rnn.json").read_text(encoding="utf-8")
    text = text.replace('"bd":{"n":', '"bd":{"d":1,"n":', 1)
    (tmp_path / "m.json").write_text(text, encoding="utf-8")
    with pytest.raises(FormatError, match=r"model\.bd\.d: the key appears more than once"):
        import_json(tmp_path / "m.json")


def test_file_errors(tmp_path):
    with pytest.raises(FormatError, match=r"cannot read .*nothere\.json"):
        import_json(tmp_path / "nothere.json")
    (tmp_path / "latin1.json").write_bytes(b'{"vocab": ["\xe9"]}')
    with pytest.raises(FormatError, match="not UTF-8"):
        import_json(tmp_path / "latin1.json")
    # a byte-order mark is fine
    (tmp_path / "bom.json").write_bytes(b"\xef\xbb\xbf" + (DATA / "rnn.json").read_bytes())
    assert import_json(tmp_path / "bom.json").metadata["generator"] == "rnn"


# --- rgraph convert -------------------------------------------------------------------


def test_convert_both_ways(tmp_path, capsys):
    rgraph_file, json_file = tmp_path / "m.rgraph", tmp_path / "back.json"
    assert main(["convert", str(DATA / "lstm.json"), str(rgraph_file)]) == 0
    loaded = rg.load(rgraph_file)
    original = import_json(DATA / "lstm.json")
    assert_same_model(original, loaded)
    assert main(["convert", str(rgraph_file), str(json_file)]) == 0
    assert_same_model(original, import_json(json_file))
    assert capsys.readouterr() == ("", "")


def test_convert_command_line(tmp_path):
    """The real entry point, in a subprocess: exit status 2 and a one-line error."""
    bad = subprocess.run(
        [sys.executable, "-m", "rgraph", "convert", str(tmp_path / "gone.json"), "x.rgraph"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2
    assert (
        bad.stderr
        == f"rgraph convert: error: input {str(tmp_path / 'gone.json')!r} does not exist\n"
    )


def bad_inputs(tmp_path):
    broken = tmp_path / "broken.json"
    j = random_demo_json("rnn")
    j["model"]["Whh1"]["w"][0] = "oops"
    broken.write_text(json.dumps(j), encoding="utf-8")
    gru = tmp_path / "gru.rgraph"
    m = gru_model()
    rg.save(gru, m.graph, m.params, metadata=m.metadata)
    good = str(DATA / "rnn.json")
    return [
        ([str(tmp_path / "nothere.json"), str(tmp_path / "o.rgraph")], "does not exist"),
        ([good, str(tmp_path / "o.onnx")], "output '" + str(tmp_path / "o.onnx")),
        ([good, str(tmp_path / "o")], "has no extension"),
        ([str(tmp_path / "m.txt"), str(tmp_path / "o.rgraph")], "input '"),
        ([str(broken), str(tmp_path / "o.rgraph")], "model.Whh1.w[0]: expected a number"),
        ([str(gru), str(tmp_path / "o.json")], "GRU has no RecurrentJS counterpart"),
        ([good], None),  # usage: OUT missing
    ]


def test_convert_bad_input_exits_2(tmp_path, capsys):
    for args, message in bad_inputs(tmp_path):
        assert main(["convert", *args]) == 2, args
        err = capsys.readouterr().err
        if message is not None:
            assert err.startswith("rgraph convert: error: ") and err.count("\n") == 1, err
            assert message in err
        else:
            assert "required: OUT" in err
    assert not list(tmp_path.glob("o*"))  # nothing half-written


def test_convert_unwritable_output_exits_1(tmp_path, capsys):
    assert main(["convert", str(DATA / "rnn.json"), str(tmp_path / "no" / "o.rgraph")]) == 1
    assert "cannot write" in capsys.readouterr().err


def test_cli_help_and_version(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"rgraph {rg.__version__}"
    assert main([]) == 0
    assert "convert" in capsys.readouterr().out
    assert main(["--no-such-option"]) == 2
    assert recurrentjs.GENERATORS == ("lstm", "rnn")
