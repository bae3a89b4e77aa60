"""``rgraph.nn``: RNN, LSTM and GRU against independently written numpy, scan against
unrolled, masking of padded batches, finite-difference checks of the whole language model,
float32, the initialisers, and a tiny LSTM that memorises five sentences.

The numpy references below restate the equations (RecurrentJS's ``forwardLSTM`` and
``forwardRNN``, Cho et al.'s GRU) with row-major batches: ``x @ W.T`` with ``W`` of shape
``(out, in)``; they share no code with ``rgraph.nn``.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import rgraph as rg

KINDS = ("lstm", "gru", "rnn")
IN, HIDDEN, T, B = 4, [6, 5], 5, 3


def sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


# --- numpy references --------------------------------------------------------------------


def numpy_cell(kind, p, d, x, state):
    """One step of layer ``d``; returns (new state, preactivations)."""

    def pre(wx, wh, b, h):
        return x @ p[f"{wx}{d}"].T + h @ p[f"{wh}{d}"].T + p[f"{b}{d}"]

    if kind == "rnn":
        (h,) = state
        a = pre("Wxh", "Whh", "bhh", h)
        return [np.maximum(a, 0.0)], [a]
    if kind == "lstm":
        h, c = state
        i = sigmoid(pre("Wix", "Wih", "bi", h))
        f = sigmoid(pre("Wfx", "Wfh", "bf", h))
        o = sigmoid(pre("Wox", "Woh", "bo", h))
        g = np.tanh(pre("Wcx", "Wch", "bc", h))
        c = f * c + i * g
        return [o * np.tanh(c), c], []
    (h,) = state
    r = sigmoid(pre("Wrx", "Wrh", "br", h))
    z = sigmoid(pre("Wzx", "Wzh", "bz", h))
    n = np.tanh(x @ p[f"Wcx{d}"].T + (r * h) @ p[f"Wch{d}"].T + p[f"bc{d}"])
    return [(1.0 - z) * h + z * n], []


def numpy_recurrent(kind, p, xs, hidden_sizes, mask=None):
    """(top layer's h at every step, final state per layer, all ReLU preactivations)."""
    seq, finals, preacts = xs, [], []
    steps, batch = xs.shape[:2]
    for d, size in enumerate(hidden_sizes):
        state = [np.zeros((batch, size))] * (2 if kind == "lstm" else 1)
        hs = []
        for t in range(steps):
            new, a = numpy_cell(kind, p, d, seq[t], state)
            preacts += a
            if mask is not None:
                m = mask[t][:, None]
                new = [m * n + (1.0 - m) * s for n, s in zip(new, state)]
            state = new
            hs.append(state[0])
        seq = np.stack(hs)
        finals.append(state)
    return seq, finals, preacts


def numpy_language_model(kind, p, tokens, targets, mask, hidden_sizes):
    xs = p["Wil"][tokens]
    hs, _, preacts = numpy_recurrent(kind, p, xs, hidden_sizes, mask)
    logits = hs @ p["Whd"].T + p["bd"]
    shifted = logits - logits.max(axis=-1, keepdims=True)
    logp = shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))
    picked = np.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    nll = -(mask * picked).sum()
    return {"logits": logits, "nll": nll, "loss": nll / tokens.shape[1], "count": mask.sum()}, (
        preacts
    )


# --- helpers ---------------------------------------------------------------------------------


def perturbed(graph, seed, scale=0.3):
    """``rg.init_params`` plus noise, so that biases are non-zero and gates are not ~0.5."""
    store = rg.init_params(graph, seed=seed)
    rng = np.random.default_rng(seed + 1000)
    return {k: v + scale * rng.standard_normal(v.shape).astype(v.dtype) for k, v in store.items()}


def build_recurrent(kind, unroll=False, steps="T", batch="B", masked=False):
    g = rg.Graph(kind)
    xs = g.input("xs", (steps, batch, IN))
    mask = g.input("mask", (steps, batch)) if masked else None
    out = rg.nn.recurrent(g, kind, xs, HIDDEN, mask=mask, unroll=unroll)
    g.output(out.ys, name="ys")
    names = []
    for d, state in enumerate(out.final):
        for j, v in enumerate(state):
            names.append(f"final{d}_{j}")
            g.output(v, name=names[-1])
    return g, names


def close(actual, expected, what="", rtol=1e-12, atol=1e-13):
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)


def padded_batch(rng, lengths, vocab, steps=None):
    """tokens/targets/mask (T, B) for sequences of ``lengths``; padding holds junk tokens."""
    steps = steps or max(lengths)
    tokens = rng.integers(0, vocab, (steps, len(lengths))).astype(np.int32)
    targets = rng.integers(0, vocab, (steps, len(lengths))).astype(np.int32)
    mask = np.zeros((steps, len(lengths)))
    for b, n in enumerate(lengths):
        mask[:n, b] = 1.0
    return {"tokens": tokens, "targets": targets, "mask": mask}


# --- forward against numpy ---------------------------------------------------------------


@pytest.mark.parametrize("unroll", [False, True], ids=["scan", "unrolled"])
@pytest.mark.parametrize("kind", KINDS)
def test_forward_matches_numpy(kind, unroll):
    g, names = build_recurrent(kind, unroll=unroll, steps=T)
    params = perturbed(g, seed=1)
    biases = [name for name in params if name.startswith("b")]
    assert biases and all(np.abs(params[name]).min() > 0 for name in biases)
    xs = np.random.default_rng(2).standard_normal((T, B, IN))
    out = rg.compile(g).run({"xs": xs}, params).outputs
    ys, finals, preacts = numpy_recurrent(kind, params, xs, HIDDEN)
    assert out["ys"].shape == (T, B, HIDDEN[-1])
    close(out["ys"], ys, "ys")
    flat = [v for state in finals for v in state]
    assert len(flat) == len(names) == (4 if kind == "lstm" else 2)
    for name, want in zip(names, flat):
        close(out[name], want, name)
    # the data exercises the nonlinearities (not saturated, not all zero)
    assert 0.05 < np.abs(ys).mean() < 0.95
    if kind == "rnn":
        assert min(np.mean(a > 0) for a in preacts) > 0.1


@pytest.mark.parametrize("kind", KINDS)
def test_unrolled_and_scan_agree_on_outputs_and_gradients(kind):
    results = []
    rng = np.random.default_rng(3)
    xs = rng.standard_normal((T, B, IN))
    mask = (np.arange(T)[:, None] < np.array([5, 3, 4])[None, :]).astype(float)
    for unroll in (False, True):
        g, names = build_recurrent(kind, unroll=unroll, steps=T, batch=B, masked=True)
        params = perturbed(g, seed=4)
        outs = ["ys", *names]
        prog = rg.compile(g, outs, cotangents=outs, wrt=[*params, "xs"])
        cts = {
            n: np.random.default_rng(i).standard_normal(g.value(n).shape)
            for i, n in enumerate(outs)
        }
        results.append(prog.run({"xs": xs, "mask": mask}, params, cotangents=cts))
    scanned, unrolled = results
    assert sorted(scanned.grads) == sorted(unrolled.grads)
    assert len(scanned.grads) == 1 + 2 * 3 * (4 if kind == "lstm" else 3 if kind == "gru" else 1)
    for name in scanned.outputs:
        close(scanned.outputs[name], unrolled.outputs[name], name)
    for name in scanned.grads:
        assert np.abs(scanned.grads[name]).max() > 0, name
        close(scanned.grads[name], unrolled.grads[name], f"grad {name}")


def test_unrolled_needs_a_concrete_length():
    g = rg.Graph()
    xs = g.input("xs", ("T", "B", IN))
    with pytest.raises(rg.errors.GraphError, match="concrete number of steps"):
        rg.nn.lstm(g, xs, HIDDEN, unroll=True)


# --- masking -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_padded_steps_leave_the_state_unchanged(kind):
    g, names = build_recurrent(kind, masked=True)
    prog = rg.compile(g)
    params = perturbed(g, seed=5)
    rng = np.random.default_rng(6)
    lengths = [5, 3, 1]
    xs = rng.standard_normal((5, 3, IN))
    mask = (np.arange(5)[:, None] < np.array(lengths)[None, :]).astype(float)
    batch = prog.run({"xs": xs, "mask": mask}, params).outputs
    for b, n in enumerate(lengths):
        alone = prog.run({"xs": xs[:n, b : b + 1], "mask": np.ones((n, 1))}, params).outputs
        for name in names:
            close(batch[name][b : b + 1], alone[name], f"{name} of sequence {b} (length {n})")
        close(batch["ys"][:n, b : b + 1], alone["ys"], f"ys of sequence {b}")
        for t in range(n, 5):  # the state is held over the padding
            close(batch["ys"][t, b], alone["ys"][-1, 0], f"ys[{t}] of sequence {b}")
    # and the numpy reference agrees on the masked batch
    ys, _, _ = numpy_recurrent(kind, params, xs, HIDDEN, mask)
    close(batch["ys"], ys)


@pytest.mark.parametrize("kind", KINDS)
def test_padded_positions_add_no_loss(kind):
    vocab = 7
    g = rg.Graph("lm")
    rg.nn.language_model(g, vocab, kind=kind, hidden_sizes=[6, 5], letter_size=4)
    prog = rg.compile(g)
    params = perturbed(g, seed=7)
    lengths = [5, 2, 4]
    feeds = padded_batch(np.random.default_rng(8), lengths, vocab)
    batch = prog.run(feeds, params).outputs
    separate = []
    for b, n in enumerate(lengths):
        alone = {k: v[:n, b : b + 1] for k, v in feeds.items()}
        out = prog.run(alone, params).outputs
        separate.append(float(out["loss"]))
        assert float(out["count"]) == n
    close(batch["loss"], sum(separate) / len(lengths))
    close(batch["count"], sum(lengths))
    expected, _ = numpy_language_model(
        kind, params, feeds["tokens"], feeds["targets"], feeds["mask"], [6, 5]
    )
    for name in ("logits", "nll", "loss", "count"):
        close(batch[name], expected[name], name)
    # changing what sits in the padding changes nothing
    junk = {k: v.copy() for k, v in feeds.items()}
    junk["tokens"][3:, 1] = (junk["tokens"][3:, 1] + 1) % vocab
    junk["targets"][2:, 1] = (junk["targets"][2:, 1] + 1) % vocab
    again = prog.run(junk, params).outputs
    close(again["loss"], batch["loss"])


# --- gradient checks of the whole language model -------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_language_model_gradcheck(kind):
    vocab, hidden = 5, [4, 3]
    g = rg.Graph("lm")
    lm = rg.nn.language_model(g, vocab, kind=kind, hidden_sizes=hidden, letter_size=3)
    params = perturbed(g, seed=9, scale=0.5)
    feeds = padded_batch(np.random.default_rng(10), [4, 2, 3], vocab)
    expected, preacts = numpy_language_model(
        kind, params, feeds["tokens"], feeds["targets"], feeds["mask"], hidden
    )
    if kind == "rnn":  # finite differences need every ReLU away from its kink
        assert min(np.abs(a).min() for a in preacts) > 1e-3
        assert np.mean([np.mean(a > 0) for a in preacts]) > 0.2
    out = rg.compile(g).run(feeds, params).outputs
    close(out["loss"], expected["loss"])
    report = rg.gradcheck(g, feeds, params, outputs=[lm.loss], atol=1e-8, rtol=1e-6)
    assert {t.name for t in report.tensors} == set(params)
    assert all(t.ok for t in report.tensors)


# --- float32 -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_language_model_runs_in_float32(kind):
    vocab = 6
    progs, stores = {}, {}
    for dtype in ("float32", "float64"):
        g = rg.Graph("lm")
        lm = rg.nn.language_model(g, vocab, kind=kind, hidden_sizes=[6, 5], dtype=dtype)
        progs[dtype] = rg.compile(g, loss=lm.loss)
        stores[dtype] = rg.init_params(g, seed=11)
    assert all(v.dtype == np.float32 for v in stores["float32"].values())
    feeds = padded_batch(np.random.default_rng(12), [5, 3], vocab)
    res32 = progs["float32"].run(
        {**feeds, "mask": feeds["mask"].astype(np.float32)}, stores["float32"]
    )
    for name, value in [*res32.outputs.items(), *res32.grads.items()]:
        assert value.dtype == np.float32, (name, value.dtype)
        assert np.all(np.isfinite(value)), name
    params64 = {k: v.astype(np.float64) for k, v in stores["float32"].items()}
    res64 = progs["float64"].run(feeds, params64)
    for name in res64.outputs:
        close(res32.outputs[name], res64.outputs[name], name, rtol=1e-5, atol=1e-6)
    for name in res64.grads:
        close(res32.grads[name], res64.grads[name], name, rtol=1e-3, atol=1e-5)
    assert set(res32.grads) == set(stores["float32"])


# --- initialisers ----------------------------------------------------------------------------


def test_init_params_is_deterministic_per_seed():
    g = rg.Graph("lm")
    rg.nn.language_model(g, 9, kind="lstm", hidden_sizes=[6, 5])
    a, b, c = (rg.init_params(g, seed=s) for s in (3, 3, 4))
    assert list(a) == [p.name for p in g.ir.params]
    for name in a:
        assert a[name].dtype == b[name].dtype and a[name].tobytes() == b[name].tobytes()
    weights = [n for n in a if n.startswith("W")]
    assert all(not np.array_equal(a[n], c[n]) for n in weights)
    gen = rg.init_params(g, seed=np.random.default_rng(3))
    assert all(gen[n].tobytes() == a[n].tobytes() for n in a)


def test_recurrentjs_initialisation():
    g = rg.Graph("lm")
    rg.nn.language_model(g, 30, kind="lstm", hidden_sizes=[20, 20], letter_size=5)
    store = rg.init_params(g, seed=0)
    weights = {n: v for n, v in store.items() if n.startswith("W")}
    biases = {n: v for n, v in store.items() if n.startswith("b")}
    assert len(weights) == 1 + 2 * 8 + 1 and len(biases) == 2 * 4 + 1
    for name, w in weights.items():
        assert np.all(w >= -0.08) and np.all(w <= 0.08), name
    everything = np.concatenate([w.ravel() for w in weights.values()])
    assert everything.min() < -0.079 and everything.max() > 0.079
    assert abs(everything.std() - 0.16 / math.sqrt(12)) < 0.002  # uniform's std
    for name, b in biases.items():
        assert np.all(b == 0.0), name
    assert store["Whd"].shape == (30, 20) and store["Wil"].shape == (30, 5)
    assert store["Wix0"].shape == (20, 5) and store["Wih1"].shape == (20, 20)


def test_glorot_uniform_bound_and_std():
    g = rg.Graph()
    g.param("W", (300, 200), init="glorot_uniform")
    g.param("V", (4, 50, 60), init="glorot_uniform")
    store = rg.init_params(g, seed=1)
    bound = math.sqrt(6.0 / (200 + 300))
    W = store["W"]
    assert np.abs(W).max() <= bound and np.abs(W).max() > 0.99 * bound
    assert abs(W.std() / (bound / math.sqrt(3)) - 1) < 0.01
    assert abs(W.mean()) < 0.01 * bound
    bound_v = math.sqrt(6.0 / (4 * 60 + 4 * 50))  # a receptive field of 4
    assert np.abs(store["V"]).max() <= bound_v and np.abs(store["V"]).max() > 0.99 * bound_v


def test_normal_mean_and_std():
    g = rg.Graph()
    g.param("N", (400, 500), init="normal", mean=0.3, std=2.0)
    g.param("M", (10, 10), "float32", init="normal", mean=-1.0, std=0.5)
    store = rg.init_params(g, seed=2)
    n = store["N"]
    # 200,000 draws: the sample mean is within 4 standard errors, the std within 1%
    assert abs(n.mean() - 0.3) < 4 * 2.0 / math.sqrt(n.size)
    assert abs(n.std() / 2.0 - 1) < 0.01
    assert store["M"].dtype == np.float32
    assert abs(store["M"].mean() + 1.0) < 0.2


# --- a tiny LSTM memorises five sentences -----------------------------------------------------

SENTENCES = ["the cat sat", "a dog ran", "sun is hot", "we like tea", "i am here"]


def sentence_batch(sentences):
    """RecurrentJS's encoding, batched: index 0 is START (input) and END (target)."""
    chars = sorted(set("".join(sentences)))
    index = {c: i + 1 for i, c in enumerate(chars)}
    steps = max(len(s) for s in sentences) + 1
    shape = (steps, len(sentences))
    tokens, targets, mask = np.zeros(shape, np.int32), np.zeros(shape, np.int32), np.zeros(shape)
    for b, s in enumerate(sentences):
        ids = [index[c] for c in s]
        tokens[1 : len(ids) + 1, b] = ids
        targets[: len(ids), b] = ids  # then END (0)
        mask[: len(ids) + 1, b] = 1.0
    return len(chars) + 1, {"tokens": tokens, "targets": targets, "mask": mask}


def test_tiny_lstm_memorises_five_sentences():
    vocab, feeds = sentence_batch(SENTENCES)
    g = rg.Graph("lm")
    lm = rg.nn.language_model(g, vocab, kind="lstm", hidden_sizes=[32], letter_size=5)
    prog = rg.compile(g, loss=lm.loss)
    params = rg.init_params(g, seed=0)
    optimiser = rg.RMSProp(lr=0.01, regc=0.0)  # RecurrentJS's Solver, clipping at 5
    mask = feeds["mask"].astype(bool)
    count = int(mask.sum())
    # The first character after START is one of five, equally likely: the best possible
    # perplexity is exp(5 log 5 / count) ~ 1.158; a random model's is about the vocab (20).
    best = math.exp(len(SENTENCES) * math.log(len(SENTENCES)) / count)
    perplexities = []
    for _ in range(200):
        res = prog.run(feeds, params)
        perplexities.append(math.exp(float(res.outputs["nll"]) / count))
        predicted = res.outputs["logits"].argmax(axis=-1)
        if perplexities[-1] < 1.2 and np.all((predicted == feeds["targets"])[1:][mask[1:]]):
            break
        optimiser.step(params, res.grads)
    assert perplexities[0] > 0.8 * vocab
    assert best < perplexities[-1] < 1.2, perplexities[-5:]
    # memorised: given the first character, every next character (and END) is the argmax
    assert np.all((predicted == feeds["targets"])[1:][mask[1:]])
    assert len(perplexities) < 200


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_step_model_reproduces_the_language_model_one_character_at_a_time(kind):
    g = rg.Graph("lm")
    rg.nn.language_model(g, vocab=6, kind=kind, hidden_sizes=[5, 4], letter_size=3)
    rng = np.random.default_rng(1)
    store = {k: v + rng.uniform(-0.3, 0.3, v.shape) for k, v in rg.init_params(g, 0).items()}
    feeds = rg.train.pad_sequences([[1, 2, 3, 4]])
    logits = rg.compile(g, ["logits"]).run(feeds, store).outputs["logits"][:, 0]

    s = rg.Graph("step")
    sm = rg.nn.step_model(s, vocab=6, kind=kind, hidden_sizes=[5, 4], letter_size=3)
    assert sorted(p.name for p in s.ir.params) == sorted(store)
    program = rg.compile(s)
    state = {v.name: np.zeros((1, v.shape[1])) for layer in sm.state for v in layer}
    for t, token in enumerate(feeds["tokens"][:, 0]):
        out = program.run({"token": np.array([token], np.int32), **state}, store).outputs
        np.testing.assert_allclose(out["logits"][0], logits[t], rtol=1e-12, atol=1e-14)
        state = {name: out[name + "_next"] for name in state}
