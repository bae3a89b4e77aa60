"""RecurrentJS README example (b), define-then-run: one step of a 2-layer LSTM, trained once.

RecurrentJS builds a deep LSTM with ``initLSTM``, runs one time step with ``forwardLSTM``
and updates the weights with its RMSProp ``Solver``. The character demo wraps that in an
embedding lookup (``G.rowPluck(model['Wil'], ix)``) and a softmax whose gradient it writes
by hand. This script does the same step in rgraph:

1. *define* the step: embedding, two LSTM layers, decoder, fused softmax cross-entropy;
2. *compile* it: the backward pass is generated as IR, and printed below;
3. *run* it on one character, with the previous hidden and cell state as inputs;
4. *update* every parameter with one RMSProp step, written in numpy as RecurrentJS's
   ``Solver.step`` (rgraph has no optimiser module yet).

Sizes are the demo's defaults: letters embedded in 5 dims, hidden sizes [20, 20]. Run it with
``python examples/lstm_step.py``.
"""

from __future__ import annotations

import numpy as np

import rgraph as rg

LETTER_SIZE = 5
HIDDEN_SIZES = (20, 20)
SCALE = 0.08  # RandMat(n, d, 0, 0.08): uniform in [-0.08, 0.08]

# The demo's vocabulary: characters get indices from 1; index 0 is START (input) and END
# (target). Here the text is one short sentence.
TEXT = "hello world"
CHARS = sorted(set(TEXT))
LETTER_TO_INDEX = {ch: i + 1 for i, ch in enumerate(CHARS)}
VOCAB_SIZE = len(CHARS) + 1  # + START/END

# RMSProp as in RecurrentJS's Solver and the demo's settings.
LEARNING_RATE = 0.01
REGC = 1e-6
CLIPVAL = 5.0
DECAY_RATE = 0.999
SMOOTH_EPS = 1e-8


# --- define ------------------------------------------------------------------------------


def init_lstm(g: rg.Graph, input_size: int, hidden_sizes, output_size: int) -> dict:
    """RecurrentJS's ``initLSTM``: per layer d, three weights per gate, then a decoder.

    Weights are uniform in [-0.08, 0.08], biases zero, vectors are columns (n x 1).
    """

    def weight(name, rows, cols):
        return g.param(name, (rows, cols), init="uniform", low=-SCALE, high=SCALE)

    def bias(name, rows):
        return g.param(name, (rows, 1))  # init="zeros" is the default

    model = {}
    for d, hidden_size in enumerate(hidden_sizes):
        prev_size = input_size if d == 0 else hidden_sizes[d - 1]
        # input gate, forget gate, output gate, cell write: Wgx (from x), Wgh (from h), bg
        for gate in ("i", "f", "o", "c"):
            model[f"W{gate}x{d}"] = weight(f"W{gate}x{d}", hidden_size, prev_size)
            model[f"W{gate}h{d}"] = weight(f"W{gate}h{d}", hidden_size, hidden_size)
            model[f"b{gate}{d}"] = bias(f"b{gate}{d}", hidden_size)
    # decoder from the last hidden layer to the outputs
    model["Whd"] = weight("Whd", output_size, hidden_sizes[-1])
    model["bd"] = bias("bd", output_size)
    return model


def forward_lstm(g: rg.Graph, model: dict, hidden_sizes, x, prev: dict) -> dict:
    """RecurrentJS's ``forwardLSTM``: one time step through every layer, op for op."""
    hidden, cell = [], []
    for d in range(len(hidden_sizes)):
        input_vector = x if d == 0 else hidden[d - 1]
        hidden_prev = prev["h"][d]
        cell_prev = prev["c"][d]

        # input gate
        h0 = g.mul(model[f"Wix{d}"], input_vector)
        h1 = g.mul(model[f"Wih{d}"], hidden_prev)
        input_gate = g.sigmoid(g.add(g.add(h0, h1), model[f"bi{d}"]))

        # forget gate
        h2 = g.mul(model[f"Wfx{d}"], input_vector)
        h3 = g.mul(model[f"Wfh{d}"], hidden_prev)
        forget_gate = g.sigmoid(g.add(g.add(h2, h3), model[f"bf{d}"]))

        # output gate
        h4 = g.mul(model[f"Wox{d}"], input_vector)
        h5 = g.mul(model[f"Woh{d}"], hidden_prev)
        output_gate = g.sigmoid(g.add(g.add(h4, h5), model[f"bo{d}"]))

        # write operation on cells
        h6 = g.mul(model[f"Wcx{d}"], input_vector)
        h7 = g.mul(model[f"Wch{d}"], hidden_prev)
        cell_write = g.tanh(g.add(g.add(h6, h7), model[f"bc{d}"]))

        # new cell contents: what we keep plus what we write
        retain_cell = g.eltmul(forget_gate, cell_prev)
        write_cell = g.eltmul(input_gate, cell_write)
        cell_d = g.add(retain_cell, write_cell)

        # hidden state: gated, saturated cell activations
        hidden_d = g.eltmul(output_gate, g.tanh(cell_d))

        hidden.append(hidden_d)
        cell.append(cell_d)

    # one decoder to outputs at the end
    output = g.add(g.mul(model["Whd"], hidden[-1]), model["bd"])
    return {"h": hidden, "c": cell, "o": output}


def build() -> tuple[rg.Graph, rg.Value]:
    """The whole step: embedding -> 2-layer LSTM -> decoder -> cross-entropy loss."""
    g = rg.Graph("lstm_step")
    ix = g.input("ix", (), dtype="int64")  # the input character's index
    target = g.input("target", (), dtype="int64")  # the next character's index
    prev = {
        "h": [g.input(f"h_prev{d}", (n, 1)) for d, n in enumerate(HIDDEN_SIZES)],
        "c": [g.input(f"c_prev{d}", (n, 1)) for d, n in enumerate(HIDDEN_SIZES)],
    }

    # letter embeddings, as in the demo's initModel (created before the LSTM's weights)
    Wil = g.param("Wil", (VOCAB_SIZE, LETTER_SIZE), init="uniform", low=-SCALE, high=SCALE)
    model = {"Wil": Wil, **init_lstm(g, LETTER_SIZE, HIDDEN_SIZES, VOCAB_SIZE)}

    # row_pluck gives the row as a vector (D,); RecurrentJS's rowPluck gives a column (D, 1)
    x = g.reshape(g.row_pluck(Wil, ix), shape=[LETTER_SIZE, 1])
    out = forward_lstm(g, model, HIDDEN_SIZES, x, prev)

    # the new state, which the next step would take as h_prev / c_prev
    for d in range(len(HIDDEN_SIZES)):
        g.output(out["h"][d], name=f"h{d}")
        g.output(out["c"][d], name=f"c{d}")

    # RecurrentJS computes the softmax outside the graph and sets logits.dw by hand;
    # rgraph has a fused, numerically stable softmax cross-entropy with its gradient.
    logits = g.output(out["o"], name="logits")
    nll = g.softmax_cross_entropy(g.reshape(logits, shape=[VOCAB_SIZE]), target, reduction="sum")
    loss = g.output(nll, name="loss")
    return g, loss


# --- update: RecurrentJS's Solver, in numpy ----------------------------------------------


def rmsprop_step(
    params: dict,
    grads: dict,
    cache: dict,
    lr: float = LEARNING_RATE,
    regc: float = REGC,
    clipval: float = CLIPVAL,
) -> tuple[dict, dict, float]:
    """RecurrentJS's ``Solver.step`` for every parameter, without changing the inputs.

    Per element: ``cache = 0.999 * cache + 0.001 * g**2`` with the *unclipped* gradient;
    then ``g`` is clipped to ``[-clipval, clipval]`` and
    ``w += -lr * g / sqrt(cache + 1e-8) - regc * w``. A missing cache entry starts at
    zero. Returns the new parameters, the new cache and the fraction of clipped elements.
    """
    new_params, new_cache = {}, {}
    clipped = total = 0
    for name, w in params.items():
        dw = grads[name]
        s = cache.get(name, np.zeros_like(w))
        s = s * DECAY_RATE + (1.0 - DECAY_RATE) * dw * dw
        clipped += int(np.count_nonzero(np.abs(dw) > clipval))
        total += dw.size
        dw = np.clip(dw, -clipval, clipval)
        new_params[name] = w + (-lr * dw / np.sqrt(s + SMOOTH_EPS) - regc * w)
        new_cache[name] = s
    return new_params, new_cache, clipped / total


# --- compile, run, update once -----------------------------------------------------------


def run(seed: int = 0) -> dict:
    """Build, compile, run one step and update once; return every array involved."""
    g, loss = build()
    program = rg.compile(g, loss=loss)  # gradients of every float parameter

    params = rg.init_params(g, seed=seed)
    rng = np.random.default_rng(seed + 1)
    # A state as if from earlier steps (RecurrentJS starts from zeros; non-zero state makes
    # every gradient non-zero).
    feeds = {"ix": np.int64(LETTER_TO_INDEX["e"]), "target": np.int64(LETTER_TO_INDEX["l"])}
    for d, n in enumerate(HIDDEN_SIZES):
        feeds[f"h_prev{d}"] = rng.uniform(-0.5, 0.5, size=(n, 1))
        feeds[f"c_prev{d}"] = rng.uniform(-1.0, 1.0, size=(n, 1))

    result = program.run(feeds, params)
    new_params, cache, ratio_clipped = rmsprop_step(params, result.grads, cache={})
    return {
        "graph": g,
        "program": program,
        "feeds": feeds,
        "params": params,
        "outputs": result.outputs,  # h0, c0, h1, c1, logits, loss
        "grads": result.grads,  # one per parameter
        "new_params": new_params,
        "cache": cache,
        "ratio_clipped": ratio_clipped,
    }


def main() -> None:
    out = run()
    print("The program as autodiff generates it, before the optimising passes (print the")
    print("program itself for what runs). The forward ends at 'loss'. From the seed")
    print("d loss/d loss = 1 (full_like) on, every node is the generated backward; its")
    print("'# file:line' names the forward line it differentiates.")
    print(out["program"].stages["autodiff"])
    print()
    print(f"loss {float(out['outputs']['loss']):.6f}")
    print(f"ratio of clipped gradient elements {out['ratio_clipped']:.3f}")
    print(f"{'param':<6} {'shape':<8} {'|grad| max':>11} {'|update| max':>13}")
    for name, w in out["params"].items():
        step = np.abs(out["new_params"][name] - w).max()
        grad = np.abs(out["grads"][name]).max()
        print(f"{name:<6} {'x'.join(map(str, w.shape)):<8} {grad:11.3e} {step:13.3e}")


if __name__ == "__main__":
    main()
