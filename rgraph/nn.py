"""Layers and recurrent builders: embedding, linear, RNN, LSTM, GRU, a language model.

Everything here only records ops on a :class:`~rgraph.Graph`. Activations are batched
row-major, ``(B, features)`` per step and ``(T, B, features)`` over time; weights keep
RecurrentJS's names and shapes, ``W`` of ``(out, in)`` applied as ``x @ W.T``, and biases
are ``(out,)`` vectors. Parameters follow RecurrentJS's initialisation: weights uniform in
``[-0.08, 0.08]``, biases zero.

Each recurrent builder runs the sequence either with ``scan`` (the default: one loop
node, any length, symbolic ``T``) or unrolled by a Python loop (``unroll=True``, concrete
``T``); both give the same numbers. With a ``mask`` of shape ``(T, B)`` (1 for real steps,
0 for padding) padded steps leave the state unchanged.

>>> import rgraph as rg
>>> g = rg.Graph("lm")
>>> xs = g.input("xs", ("T", "B", 5))
>>> out = rg.nn.lstm(g, xs, hidden_sizes=[20, 20])
>>> out.ys.type
TensorType(dtype='float64', shape=('T', 'B', 20))
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rgraph.builder import Graph, Value
from rgraph.errors import GraphError

WEIGHT_INIT = {"init": "uniform", "low": -0.08, "high": 0.08}


def linear(g: Graph, x: Value, out_features: int, *, weight: str, bias: str | None = None) -> Value:
    """``x @ W.T + b`` with ``W`` of shape ``(out, in)`` named ``weight``, ``b`` ``(out,)``."""
    W = g.param(weight, (out_features, x.shape[-1]), x.dtype, **WEIGHT_INIT)
    y = g.matmul(x, W, transpose_b=True)
    if bias is not None:
        y = y + g.param(bias, (out_features,), x.dtype)
    return y


def embedding(
    g: Graph, indices: Value, num: int, dim: int, *, name: str = "Wil", dtype: str = "float64"
) -> Value:
    """Rows of a ``(num, dim)`` table ``name`` at integer ``indices`` (shape ``S + (dim,)``)."""
    table = g.param(name, (num, dim), dtype, **WEIGHT_INIT)
    return g.row_pluck(table, indices)


# --- recurrent cells -----------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    """One recurrent cell kind: its gates' parameter names and its step function.

    ``gates`` lists, per gate, the names of the input weight, the recurrent weight and
    the bias, each with ``{d}`` for the layer index (RecurrentJS's names).
    """

    gates: tuple[tuple[str, str, str], ...]
    state_size: int
    step: Callable[..., list[Value]]


def _preact(x: Value, h: Value, gate: dict[str, Value]) -> Value:
    # The input term and the bias first: neither depends on the state, so the compiler
    # computes them for all steps at once, outside the loop.
    return (x @ gate["x"].T + gate["b"]) + h @ gate["h"].T


def _rnn_step(b: Graph, p: dict, x: Value, state: list[Value]) -> list[Value]:
    return [b.relu(_preact(x, state[0], p["hh"]))]


def _lstm_step(b: Graph, p: dict, x: Value, state: list[Value]) -> list[Value]:
    h, c = state
    i = b.sigmoid(_preact(x, h, p["i"]))
    f = b.sigmoid(_preact(x, h, p["f"]))
    o = b.sigmoid(_preact(x, h, p["o"]))
    write = b.tanh(_preact(x, h, p["c"]))
    c_new = f * c + i * write
    return [o * b.tanh(c_new), c_new]


def _gru_step(b: Graph, p: dict, x: Value, state: list[Value]) -> list[Value]:
    h = state[0]
    r = b.sigmoid(_preact(x, h, p["r"]))
    z = b.sigmoid(_preact(x, h, p["z"]))
    candidate = b.tanh((x @ p["c"]["x"].T + p["c"]["b"]) + (r * h) @ p["c"]["h"].T)
    return [(1.0 - z) * h + z * candidate]


CELLS: dict[str, Cell] = {
    # h = relu(Wxh x + Whh h + bhh), as RecurrentJS's forwardRNN.
    "rnn": Cell((("Wxh{d}", "Whh{d}", "bhh{d}"),), 1, _rnn_step),
    # RecurrentJS's forwardLSTM: input, forget, output gates and the cell write.
    "lstm": Cell(
        (
            ("Wix{d}", "Wih{d}", "bi{d}"),
            ("Wfx{d}", "Wfh{d}", "bf{d}"),
            ("Wox{d}", "Woh{d}", "bo{d}"),
            ("Wcx{d}", "Wch{d}", "bc{d}"),
        ),
        2,
        _lstm_step,
    ),
    # Cho et al.: reset r, update z, candidate tanh(Wcx x + Wch (r*h) + bc),
    # h = (1 - z) * h + z * candidate.
    "gru": Cell(
        (
            ("Wrx{d}", "Wrh{d}", "br{d}"),
            ("Wzx{d}", "Wzh{d}", "bz{d}"),
            ("Wcx{d}", "Wch{d}", "bc{d}"),
        ),
        1,
        _gru_step,
    ),
}
_GATE_KEYS = {"rnn": ("hh",), "lstm": ("i", "f", "o", "c"), "gru": ("r", "z", "c")}


def _cell(kind: str) -> Cell:
    if kind not in CELLS:
        raise GraphError(f"unknown recurrent kind {kind!r}: use one of {', '.join(CELLS)}")
    return CELLS[kind]


@dataclass
class RecurrentOutput:
    """What a recurrent builder returns.

    ``ys`` is the top layer's hidden state at every step ``(T, B, H)``; ``final`` holds,
    per layer, the state after the last step (``[h]``, or ``[h, c]`` for an LSTM).
    """

    ys: Value
    final: list[list[Value]]


def recurrent(
    g: Graph,
    kind: str,
    xs: Value,
    hidden_sizes: Sequence[int],
    *,
    mask: Value | None = None,
    unroll: bool = False,
    initial: Sequence[Sequence[Value]] | None = None,
) -> RecurrentOutput:
    """A multi-layer recurrent network over ``xs`` of shape ``(T, B, input)``.

    Parameters
    ----------
    kind
        ``"rnn"`` (ReLU, as RecurrentJS), ``"lstm"`` or ``"gru"``.
    hidden_sizes
        One size per layer; layer ``d`` reads layer ``d - 1``'s hidden states.
    mask
        ``(T, B)`` of xs' dtype: 1 for real steps, 0 for padding, which keeps the state.
    unroll
        Record one set of ops per step (needs a concrete ``T``) instead of a ``scan``.
    initial
        Per layer, the state to start from (``[h]``, or ``[h, c]`` for an LSTM, each
        ``(B, H)``); zeros when omitted, as RecurrentJS.
    """
    cell = _cell(kind)
    if xs.ndim != 3:
        raise GraphError(f"recurrent input must be (T, B, features), got {xs.type}")
    if mask is not None and mask.shape != xs.shape[:2]:
        raise GraphError(f"mask must be (T, B) = {list(xs.shape[:2])}, got {mask.type}")
    final: list[list[Value]] = []
    seq = xs
    for d, hidden in enumerate(hidden_sizes):
        params = {
            key: {
                "x": g.param(wx.format(d=d), (hidden, seq.shape[-1]), xs.dtype, **WEIGHT_INIT),
                "h": g.param(wh.format(d=d), (hidden, hidden), xs.dtype, **WEIGHT_INIT),
                "b": g.param(b.format(d=d), (hidden,), xs.dtype),
            }
            for key, (wx, wh, b) in zip(_GATE_KEYS[kind], cell.gates)
        }
        if initial is not None:
            init = list(initial[d])
        else:
            zeros = g.full(shape=[xs.shape[1], hidden], value=0.0, dtype=xs.dtype)
            init = [zeros] * cell.state_size
        run = _unrolled if unroll else _scanned
        seq, state = run(g, cell, params, seq, init, mask)
        final.append(state)
    return RecurrentOutput(ys=seq, final=final)


def _masked_step(cell: Cell, params: dict) -> Callable[..., tuple[list[Value], list[Value]]]:
    """The step function shared by the scanned and unrolled forms."""

    def step(b: Graph, state: list[Value], x: Value, m: Value | None):
        new = cell.step(b, params, x, state)
        if m is not None:
            keep = b.expand_dims(m, axes=[1])
            new = [keep * n + (1.0 - keep) * old for old, n in zip(state, new)]
        return new

    return step


def _scanned(g, cell, params, seq, init, mask):
    step = _masked_step(cell, params)

    def body(b: Graph, carry: list[Value], x: list[Value]):
        new = step(b, carry, x[0], x[1] if mask is not None else None)
        return new, [new[0]]

    state, (ys,) = g.scan(body, init=init, xs=[seq] if mask is None else [seq, mask])
    return ys, state


def _unrolled(g, cell, params, seq, init, mask):
    steps = seq.shape[0]
    if not isinstance(steps, int):
        raise GraphError(f"unroll=True needs a concrete number of steps, got T = {steps!r}")
    step = _masked_step(cell, params)
    state, hs = init, []
    for t in range(steps):
        state = step(g, state, seq[t], mask[t] if mask is not None else None)
        hs.append(g.expand_dims(state[0], axes=[0]))
    return g.concat(hs, axis=0), state


def rnn(g: Graph, xs: Value, hidden_sizes: Sequence[int], **kw) -> RecurrentOutput:
    """RecurrentJS's deep RNN: ``h = relu(x @ Wxh.T + h @ Whh.T + bhh)`` per layer."""
    return recurrent(g, "rnn", xs, hidden_sizes, **kw)


def lstm(g: Graph, xs: Value, hidden_sizes: Sequence[int], **kw) -> RecurrentOutput:
    """RecurrentJS's deep LSTM (``forwardLSTM``), batched; see :func:`recurrent`."""
    return recurrent(g, "lstm", xs, hidden_sizes, **kw)


def gru(g: Graph, xs: Value, hidden_sizes: Sequence[int], **kw) -> RecurrentOutput:
    """A deep GRU (Cho et al.); see :func:`recurrent`."""
    return recurrent(g, "gru", xs, hidden_sizes, **kw)


# --- a character-level language model ---------------------------------------------------


@dataclass
class LanguageModel:
    """The symbolic values of :func:`language_model`'s graph."""

    tokens: Value
    targets: Value
    mask: Value
    logits: Value
    loss: Value
    nll: Value
    count: Value


def language_model(
    g: Graph,
    vocab: int,
    *,
    kind: str = "lstm",
    hidden_sizes: Sequence[int] = (20, 20),
    letter_size: int = 5,
    dtype: str = "float64",
    steps: int | str = "T",
    batch: int | str = "B",
    unroll: bool = False,
) -> LanguageModel:
    """RecurrentJS's character model, batched: embedding ``Wil`` -> recurrent -> ``Whd, bd``.

    Inputs ``tokens`` and ``targets`` are ``(T, B)`` int32 indices and ``mask`` ``(T, B)``.
    Outputs: ``loss`` (summed cross-entropy over unmasked positions divided by the batch
    size: per sequence, as RecurrentJS sums over a sentence), ``nll`` (the plain sum) and
    ``count`` (the number of predicted characters), so that perplexity is
    ``exp(nll / count)``.
    """
    tokens = g.input("tokens", (steps, batch), "int32")
    targets = g.input("targets", (steps, batch), "int32")
    mask = g.input("mask", (steps, batch), dtype)
    xs = embedding(g, tokens, vocab, letter_size, name="Wil", dtype=dtype)
    hs = recurrent(g, kind, xs, hidden_sizes, mask=mask, unroll=unroll).ys
    logits = linear(g, hs, vocab, weight="Whd", bias="bd")
    nll = g.softmax_cross_entropy(logits, targets, mask=mask, reduction="sum")
    batch_size = g.numel(mask, axes=[1])
    return LanguageModel(
        tokens=tokens,
        targets=targets,
        mask=mask,
        logits=g.output(logits, name="logits"),
        loss=g.output(nll / batch_size, name="loss"),
        nll=g.output(nll, name="nll"),
        count=g.output(g.sum(mask), name="count"),
    )


@dataclass
class StepModel:
    """The symbolic values of :func:`step_model`'s graph: one character at a time."""

    token: Value
    state: list[list[Value]]
    logits: Value
    next_state: list[list[Value]]


STATE_NAMES = {1: ("h",), 2: ("h", "c")}


def step_model(
    g: Graph,
    vocab: int,
    *,
    kind: str = "lstm",
    hidden_sizes: Sequence[int] = (20, 20),
    letter_size: int = 5,
    dtype: str = "float64",
    batch: int | str = "B",
) -> StepModel:
    """One step of :func:`language_model` with its state as inputs and outputs (sampling).

    It has the same parameters (names and shapes) as the language model, so a trained
    store runs it as is. Inputs: ``token`` ``(B,)`` int32 and the state ``h{d}`` (and
    ``c{d}`` for an LSTM) per layer; outputs: ``logits`` ``(B, vocab)`` and the next
    state ``h{d}_next`` (``c{d}_next``).
    """
    cell = _cell(kind)
    token = g.input("token", (batch,), "int32")
    names = STATE_NAMES[cell.state_size]
    state = [
        [g.input(f"{n}{d}", (batch, hidden), dtype) for n in names]
        for d, hidden in enumerate(hidden_sizes)
    ]
    xs = embedding(g, g.reshape(token, shape=[1, batch]), vocab, letter_size, dtype=dtype)
    out = recurrent(g, kind, xs, hidden_sizes, unroll=True, initial=state)
    logits = linear(
        g, g.reshape(out.ys, shape=[batch, hidden_sizes[-1]]), vocab, weight="Whd", bias="bd"
    )
    next_state = [
        [g.output(v, name=f"{n}{d}_next") for n, v in zip(names, layer)]
        for d, layer in enumerate(out.final)
    ]
    return StepModel(token, state, g.output(logits, name="logits"), next_state)
