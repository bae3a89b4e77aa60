"""Optimising changes no number: random graphs with loops, optimised and not.

Each example builds a random define-then-run graph: inputs with symbolic dims ``T`` and
``B``, parameters, chains of elementwise ops, products (with and without transpose
flags), sums, concat/split, and one or two ``scan`` loops (forward or reverse, over xs or
a ``length``, possibly nested) whose bodies mix state carries, accumulators
(``acc' = acc + term``), per-step slices, captured outer values and per-step outputs
that read the carries. The loss is the sum of squares of every output. The program
compiled with ``optimize=True`` (hoist, sink, contract, cse, tile, ...) must give the outputs
and every gradient of ``optimize=False`` up to float64 reassociation, and every stage of
both pipelines must verify.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import rgraph as rg
from rgraph.ir.ops import control
from rgraph.ir.verify import verify

D = 3  # the feature width; the batch "B" and time "T" stay symbolic
RTOL = 1e-10  # float64 reassociation (sums over steps in another order), nothing more

BD, DD, VD, TBD = "BD", "DD", "D", "TBD"  # shape kinds: (B, D), (D, D), (D,), (T, B, D)


class RandomGraph:
    """Draws one random graph through hypothesis, choice by choice (so it shrinks)."""

    def __init__(self, data):
        self.data = data
        self.g = rg.Graph("random")
        self.scans = 0

    # ---- drawing helpers -------------------------------------------------------------
    def pick(self, seq, label=None):
        return self.data.draw(st.sampled_from(list(seq)), label=label)

    def coin(self, p_true=0.5):
        return self.data.draw(st.floats(0, 1)) < p_true

    def count(self, lo, hi):
        return self.data.draw(st.integers(lo, hi))

    # ---- expressions -----------------------------------------------------------------
    def expr(self, b, pool, kind, depth):
        """A random value of shape ``kind`` built in graph ``b`` from values in ``pool``
        (values of ``b`` or of graphs enclosing it)."""
        if depth <= 0 or self.coin(0.3):
            return self.pick(pool[kind])
        d = depth - 1
        if kind in (BD, TBD):
            op = self.pick(["unary", "binary", "matmul", "split", "rowsum", "scale"])
            if op == "unary":
                fn = self.pick(["tanh", "sigmoid", "relu", "neg"])
                return b.op(fn, self.expr(b, pool, kind, d))
            if op == "binary":
                fn = self.pick(["add", "sub", "eltmul"])
                x = self.expr(b, pool, kind, d)
                other = self.pick([kind, BD, VD] if kind == TBD else [BD, VD])
                y = self.expr(b, pool, other, d)
                return b.op(fn, *((x, y) if self.coin() else (y, x)))
            if op == "matmul":
                x = self.expr(b, pool, kind, d)
                return b.matmul(x, self.expr(b, pool, DD, d), transpose_b=self.coin())
            if op == "split":  # columns 1..D of [x | y]
                x, y = self.expr(b, pool, kind, d), self.expr(b, pool, kind, d)
                both = b.concat([x, y], axis=-1)
                return b.split(both, axis=-1, sizes=[1, D, D - 1])[1]
            if op == "rowsum":  # (.., B, 1) broadcast back over the features
                x = self.expr(b, pool, kind, d)
                s = b.sum(self.expr(b, pool, kind, d), axes=[-1], keepdims=True)
                return b.eltmul(x, b.tanh(s))
            return b.eltmul(self.expr(b, pool, kind, d), b.const(0.5))
        if kind == DD:
            op = self.pick(["leaf", "gram", "product", "tanh"])
            if op == "gram":  # x^T y over the batch: a weight-gradient-like term
                x, y = self.expr(b, pool, BD, d), self.expr(b, pool, BD, d)
                return b.matmul(x, y, transpose_a=True)
            if op == "product":
                x, y = self.expr(b, pool, DD, d), self.expr(b, pool, DD, d)
                return b.matmul(x, y, transpose_a=self.coin(), transpose_b=self.coin())
            if op == "tanh":
                return b.tanh(self.expr(b, pool, DD, d))
            return self.pick(pool[DD])
        # VD
        if self.coin():
            return b.sum(self.expr(b, pool, BD, d), axes=[0])
        return b.sigmoid(self.pick(pool[VD]))

    # ---- loops -----------------------------------------------------------------------
    def scan(self, b, pool, nesting):
        """A random scan in ``b``; returns its outputs as (kind, value) pairs reduced to
        shapes of the pool (stacked ys summed over steps unless their steps are ``T``)."""
        self.scans += 1
        xs = []
        if pool[TBD] and self.coin(0.75):
            xs = [self.pick(pool[TBD]) for _ in range(self.count(1, 2))]
        length = None if xs else self.pick([2, "T"])
        steps = "T" if xs else length
        reverse = self.coin(0.4)
        kinds = [self.pick(["state", "state", "acc", "acc_bd"]) for _ in range(self.count(1, 3))]
        init = []
        for k in kinds:
            if k == "acc":
                init.append(g_zero(b, [D, D]) if self.coin(0.6) else self.expr(b, pool, DD, 1))
            elif k == "acc_bd" and self.coin(0.5):
                init.append(g_zero(b, ["B", D]))
            else:
                init.append(self.expr(b, pool, BD, 1))
        ys_kinds = [self.pick([BD, BD, DD]) for _ in range(self.count(0, 3))]

        def step(body, carry, x):
            inner = {k: list(v) for k, v in pool.items()}  # outer values: captured
            inner[BD] += list(x)
            states = [c for c, k in zip(carry, kinds) if k == "state"]
            inner[BD] += states
            if self.coin(0.3):  # an accumulator that is also read is not one any more
                inner[BD] += [c for c, k in zip(carry, kinds) if k == "acc_bd"]
                inner[DD] += [c for c, k in zip(carry, kinds) if k == "acc"]
            if nesting > 0 and self.coin(0.4):
                for kind, value in self.scan(body, inner, nesting - 1):
                    inner[kind].append(value)
            new = []
            for c, k in zip(carry, kinds):
                if k == "state":
                    if self.coin(0.7):
                        u = self.expr(body, inner, DD, 1)
                        drive = self.expr(body, inner, BD, 2)
                        new.append(body.tanh(body.matmul(c, u) + drive))
                    else:
                        new.append(self.expr(body, inner, BD, 2))
                else:
                    term = self.expr(body, inner, DD if k == "acc" else BD, 2)
                    new.append(body.add(c, term) if self.coin() else body.add(term, c))
            inner[BD] += [v for v, k in zip(new, kinds) if k == "state"]
            ys = [self.expr(body, inner, kind, 2) for kind in ys_kinds]
            if self.coin(0.3):
                ys.append(self.pick(inner[BD]))  # a bare carry, slice or captured value
            return new, ys

        finals, stacked = b.scan(step, init=init, xs=xs, length=length, reverse=reverse)
        out = [(DD if k == "acc" else BD, v) for v, k in zip(finals, kinds)]
        for y in stacked:
            rank = len(y.shape)
            if steps == "T" and rank == 3 and y.shape[1] == "B":
                out.append((TBD, y))
            else:
                s = b.sum(y, axes=[0])
                out.append((DD if s.shape == (D, D) else BD, s))
        return out

    # ---- the whole graph -------------------------------------------------------------
    def build(self):
        g = self.g
        x1 = g.input("x1", ("T", "B", D))
        x2 = g.input("x2", ("T", "B", D))
        h0 = g.input("h0", ("B", D))
        W = g.param("W", (D, D))
        U = g.param("U", (D, D))
        bias = g.param("bias", (D,))
        pool = {TBD: [x1, x2], BD: [h0], DD: [W, U], VD: [bias]}
        if self.coin(0.5):  # outer work before the loops
            pool[TBD].append(self.expr(g, pool, TBD, 2))
            pool[BD].append(self.expr(g, pool, BD, 2))
        outputs = []
        for _ in range(self.count(1, 2)):
            results = self.scan(g, pool, nesting=1)
            for kind, value in results:
                pool[kind].append(value)
                outputs.append(value)
        outputs.append(self.expr(g, pool, BD, 2))
        loss = None
        for i, v in enumerate(outputs):
            g.output(v, name=f"out{i}")
            term = g.sum(g.eltmul(v, v))
            loss = term if loss is None else g.add(loss, term)
        g.output(loss, name="loss")
        return g


def g_zero(b, shape):
    return b.full(shape=shape)


def assert_close(got, want, what):
    assert got.shape == want.shape and got.dtype == want.dtype, what
    atol = RTOL * (1.0 + float(np.max(np.abs(want), initial=0.0)))
    np.testing.assert_allclose(got, want, rtol=RTOL, atol=atol, err_msg=what)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(st.data())
def test_optimised_program_matches_the_plain_one_on_random_graphs(data):
    check_random_graph(data)


def check_random_graph(data):
    gen = RandomGraph(data)
    g = gen.build()
    note(str(g.ir))
    T = data.draw(st.integers(1, 4), label="T")
    B = data.draw(st.integers(1, 3), label="B")
    seed = data.draw(st.integers(0, 2**16), label="seed")
    rng = np.random.default_rng(seed)
    feeds = {
        "x1": rng.uniform(-1, 1, (T, B, D)),
        "x2": rng.uniform(-1, 1, (T, B, D)),
        "h0": rng.uniform(-1, 1, (B, D)),
    }
    params = {k: rng.uniform(-0.7, 0.7, v.shape) for k, v in rg.init_params(g, 0).items()}
    wrt = ["W", "U", "bias", "x1", "x2", "h0"]
    plain = rg.compile(g, loss="loss", wrt=wrt, optimize=False)
    fast = rg.compile(g, loss="loss", wrt=wrt)
    checked = set()  # a pass with nothing to do returns its input: verify each IR once
    for prog in (plain, fast):
        for stage, ir in prog.stages.items():
            if id(ir) in checked:
                continue
            checked.add(id(ir))
            try:
                verify(ir)
            except rg.errors.RgraphError as e:
                raise AssertionError(f"stage {stage} does not verify") from e
    assert "sink" in fast.stages and "contract" in fast.stages
    want = plain.run(feeds, params)
    # A map's rows in blocks of one or two (as at large sizes), or all at once.
    block = data.draw(st.sampled_from([1, 500, control.MAP_BLOCK_BYTES]), label="block bytes")
    saved, control.MAP_BLOCK_BYTES = control.MAP_BLOCK_BYTES, block
    try:
        got = fast.run(feeds, params)
    finally:
        control.MAP_BLOCK_BYTES = saved
    assert set(got.outputs) == set(want.outputs)
    for name in want.outputs:
        assert_close(got.outputs[name], want.outputs[name], name)
    for name in wrt:
        assert_close(got.grads[name], want.grads[name], f"d loss / d {name}")


# ---- minimal cases the property test found -------------------------------------------


def assert_optimised_matches(g, feeds, params, wrt=None):
    plain = rg.compile(g, loss="loss", wrt=wrt, optimize=False)
    fast = rg.compile(g, loss="loss", wrt=wrt)
    for stage, ir in fast.stages.items():
        assert not rg.ir.verify.problems(ir), stage
    want, got = plain.run(feeds, params), fast.run(feeds, params)
    for name in want.outputs:
        assert_close(got.outputs[name], want.outputs[name], name)
    for name in want.grads:
        assert_close(got.grads[name], want.grads[name], f"d loss / d {name}")


def squares(g, values):
    for i, v in enumerate(values):
        g.output(v, name=f"out{i}")
    loss = g.sum(g.eltmul(values[0], values[0]))
    for v in values[1:]:
        loss = g.add(loss, g.sum(g.eltmul(v, v)))
    g.output(loss, name="loss")


def test_a_loop_whose_carries_are_all_accumulators():
    g = rg.Graph("sums")  # sink once built a scan of no inputs here
    xs = g.input("xs", ("T", D))
    W = g.param("W", (D,))
    (total,), _ = g.scan(
        lambda b, c, x: ([c[0] + b.tanh(x[0] * W)], []), init=[g.full(shape=[D])], xs=[xs]
    )
    squares(g, [total])
    rng = np.random.default_rng(1)
    assert_optimised_matches(g, {"xs": rng.standard_normal((4, D))}, {"W": rng.standard_normal(D)})


def test_products_of_one_operand_where_one_weight_is_made_from_the_other_product():
    g = rg.Graph("m")  # merging x @ W and x @ f(x @ W) into one product is a cycle
    x = g.input("x", ("B", D))
    W = g.param("W", (D, D))
    h1 = x @ W
    squares(g, [x @ g.matmul(h1, h1, transpose_a=True)])
    rng = np.random.default_rng(2)
    assert_optimised_matches(
        g, {"x": rng.standard_normal((2, D))}, {"W": rng.standard_normal((D, D))}
    )


def test_a_concat_of_pieces_read_as_their_whole_which_is_a_piece_split_again():
    g = rg.Graph("pieces")  # merge_pieces once split that whole away while it was read
    xs, h0 = g.input("xs", ("T", "B", D)), g.input("h0", ("B", D))
    W = g.param("W", (D, D))

    def step(b, carry, x):  # (all but the carry leaves the loop: hoisted)
        both = b.concat([b.matmul(h0, W, transpose_b=True) for _ in "ab"], axis=-1)
        _, middle, _ = b.split(both, axis=-1, sizes=[1, D, D - 1])
        return [carry[0] + W], [h0, middle]

    (last,), (h0s, middles) = g.scan(step, init=[g.full(shape=[D, D])], xs=[xs], reverse=True)
    squares(g, [last, h0s, middles, h0 @ W])
    rng = np.random.default_rng(4)
    feeds = {"xs": rng.standard_normal((2, 1, D)), "h0": rng.standard_normal((1, D))}
    assert_optimised_matches(g, feeds, {"W": rng.standard_normal((D, D))}, wrt=["W", "h0"])


@pytest.mark.parametrize("nesting", ["split of a split", "split of a concat"])
def test_pack_loop_io_with_loop_outputs_that_are_pieces_of_pieces(nesting):
    from rgraph.ir.passes.loop_io import pack_loop_io

    g = rg.Graph("pieces")
    xs = g.input("xs", ("T", "B", 4))

    def step(b, carry, x):
        a, d = b.tanh(x[0] + carry[0]), b.sigmoid(x[0])
        if nesting == "split of a split":
            w1, w2 = b.split(a, axis=-1, sizes=[2, 2])
            p, q = b.split(w1, axis=-1, sizes=[1, 1])
            return [a * 0.5], [w1, w2, p, q]
        p, q = b.split(b.concat([a, d], axis=-1), axis=-1, sizes=[1, 7])
        return [a * 0.5], [a, d, p, q]

    _, ys = g.scan(step, init=[g.full(shape=["B", 4])], xs=[xs])
    for i, y in enumerate(ys):
        g.output(y, name=f"y{i}")
    ir = g.ir
    packed = pack_loop_io(ir)
    assert rg.ir.verify.problems(packed) == []
    feeds = {"xs": np.random.default_rng(3).standard_normal((3, 2, 4))}
    want, got = rg.Interpreter(ir).run(feeds, {}), rg.Interpreter(packed).run(feeds, {})
    for name in ir.outputs:
        np.testing.assert_array_equal(got[name], want[name])
