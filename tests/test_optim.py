"""Optimisers against independently written update rules, clipping, state, end to end.

The references here are written from the formulas, not from ``rgraph.exec.optim``:
RecurrentJS's ``Solver.step`` element by element in Python floats (as the JavaScript does
it), and SGD / Adam as the textbook vector formulas.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

import rgraph as rg
from rgraph.errors import OptimizerError, OptimizerStateError, RgraphError

# --- references ----------------------------------------------------------------------------


def rmsprop_js(w, g, cache, lr, regc, clipval, decay=0.999, eps=1e-8):
    """RecurrentJS's Solver.step for one Mat: returns new w, new cache, #clipped, #total."""
    w_out, s_out = w.ravel().tolist(), cache.ravel().tolist()
    dw = g.ravel().tolist()
    clipped = 0
    for i in range(len(w_out)):
        mdwi = dw[i]
        s_out[i] = s_out[i] * decay + (1.0 - decay) * mdwi * mdwi
        if clipval is not None:
            if mdwi > clipval:
                mdwi = clipval
                clipped += 1
            if mdwi < -clipval:
                mdwi = -clipval
                clipped += 1
        w_out[i] += -lr * mdwi / math.sqrt(s_out[i] + eps) - regc * w_out[i]
    shape = w.shape
    return np.array(w_out).reshape(shape), np.array(s_out).reshape(shape), clipped, len(dw)


def sgd_textbook(w, g, v, lr, mu, nesterov, wd):
    g = g + wd * w
    v = mu * v + g
    d = g + mu * v if nesterov else v
    return w - lr * d, v


def adam_textbook(w, g, m, v, t, lr, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, decoupled=False):
    if decoupled:
        w = w * (1 - lr * wd)
    else:
        g = g + wd * w
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g**2
    mhat = m / (1 - b1**t)
    vhat = v / (1 - b2**t)
    return w - lr * mhat / (np.sqrt(vhat) + eps), m, v


def assert_close(actual, expected, what=""):
    # float64 throughout: the rules are the same arithmetic, so only rounding may differ.
    np.testing.assert_allclose(actual, expected, rtol=1e-13, atol=1e-300, err_msg=what)


def store(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return {
        "W": rng.uniform(-1, 1, size=(3, 4)).astype(dtype),
        "b": rng.uniform(-1, 1, size=(3, 1)).astype(dtype),
    }


def grads_at(step, dtype=np.float64):
    """Deterministic gradients for step ``step``, with a few elements beyond +-5."""
    rng = np.random.default_rng(100 + step)
    gW = rng.normal(0.0, 2.0, size=(3, 4))
    gb = rng.normal(0.0, 2.0, size=(3, 1))
    gW[0, 0], gW[1, 2], gb[2, 0] = 12.0 + step, -7.5, -5.0 - 1e-9 * (step + 1)
    gW[2, 3] = 5.0  # exactly at the limit: not clipped
    return {"W": gW.astype(dtype), "b": gb.astype(dtype)}


# --- RMSProp -------------------------------------------------------------------------------


def test_rmsprop_one_step_matches_recurrentjs():
    params = store()
    before = {k: v.copy() for k, v in params.items()}
    ids = {k: id(v) for k, v in params.items()}
    grads = {
        "W": np.array([[12.0, -0.3, 0.7, -6.0], [0.01, 5.0, -5.0, 2.5], [-40.0, 1.25, 0.0, 4.99]]),
        "b": np.array([[5.5], [-0.2], [3.0]]),
    }
    grads_before = {k: v.copy() for k, v in grads.items()}
    opt = rg.RMSProp(lr=0.01, regc=1e-3, clipval=5.0)
    stats = opt.step(params, grads)

    # 12, -6, -40, 5.5 are beyond +-5; 5.0 and -5.0 are not: 4 of 15 elements.
    assert stats.ratio_clipped == 4 / 15
    assert stats.step == 1
    assert_close(stats.grad_norm, math.sqrt(sum((g**2).sum() for g in grads.values())))
    for name in params:
        w, s, _, _ = rmsprop_js(
            before[name], grads[name], np.zeros_like(before[name]), 0.01, 1e-3, 5.0
        )
        assert_close(params[name], w, name)
        assert_close(opt.slots["cache"][name], s, name)
        assert id(params[name]) == ids[name]  # updated in place
        np.testing.assert_array_equal(grads[name], grads_before[name])  # grads untouched
    # The cache saw the unclipped gradient: 0.001 * 12**2, not 0.001 * 5**2.
    assert_close(opt.slots["cache"]["W"][0, 0], (1.0 - 0.999) * 144.0)
    assert_close(opt.slots["cache"]["W"][2, 0], (1.0 - 0.999) * 1600.0)
    # ...while the step used the clipped one: lr * 5 / sqrt(0.144 + 1e-8), plus the decay.
    expected = before["W"][0, 0] - 0.01 * 5.0 / math.sqrt(0.001 * 144.0 + 1e-8)
    assert_close(params["W"][0, 0], expected - 1e-3 * before["W"][0, 0])


def test_rmsprop_several_steps_match_recurrentjs():
    params = store(1)
    ref = {k: v.copy() for k, v in params.items()}
    cache = {k: np.zeros_like(v) for k, v in params.items()}
    opt = rg.RMSProp()  # the demo's settings: lr 0.01, regc 1e-6, clipval 5
    for step in range(1, 6):
        grads = grads_at(step)
        stats = opt.step(params, grads)
        clipped = total = 0
        for name in ref:
            ref[name], cache[name], c, n = rmsprop_js(
                ref[name], grads[name], cache[name], 0.01, 1e-6, 5.0
            )
            clipped, total = clipped + c, total + n
        assert clipped == 3  # 12+step, -7.5 and -5-eps; the 5.0 is not clipped
        assert stats.ratio_clipped == clipped / total
        assert stats.step == step
        for name in ref:
            assert_close(params[name], ref[name], f"{name} at step {step}")
            assert_close(opt.slots["cache"][name], cache[name], f"cache {name} at step {step}")


def test_rmsprop_without_clipping():
    params = store(2)
    ref = {k: v.copy() for k, v in params.items()}
    opt = rg.RMSProp(lr=0.02, clipval=None)
    stats = opt.step(params, grads_at(0))
    assert stats.ratio_clipped == 0.0
    for name in ref:
        w, _, c, _ = rmsprop_js(
            ref[name], grads_at(0)[name], np.zeros_like(ref[name]), 0.02, 1e-6, None
        )
        assert c == 0
        assert_close(params[name], w, name)
    # No clipping: the first step moves an element by lr / sqrt(0.001) (whatever g is).
    moved = ref["W"][0, 0] - params["W"][0, 0] - 1e-6 * ref["W"][0, 0]
    assert_close(moved, 0.02 * 12.0 / math.sqrt(0.001 * 144.0 + 1e-8))


# --- SGD and Adam --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "mu, nesterov, wd",
    [(0.0, False, 0.0), (0.9, False, 0.0), (0.9, True, 0.0), (0.5, True, 0.01), (0.0, False, 0.1)],
)
def test_sgd_matches_textbook(mu, nesterov, wd):
    params = store(3)
    ref = {k: v.copy() for k, v in params.items()}
    vel = {k: np.zeros_like(v) for k, v in params.items()}
    opt = rg.SGD(lr=0.05, momentum=mu, nesterov=nesterov, weight_decay=wd)
    for step in range(1, 4):
        grads = grads_at(step)
        stats = opt.step(params, grads)
        assert stats.ratio_clipped == 0.0 and stats.step == step
        for name in ref:
            ref[name], vel[name] = sgd_textbook(
                ref[name], grads[name], vel[name], 0.05, mu, nesterov, wd
            )
            assert_close(params[name], ref[name], f"{name} at step {step}")
    if mu:
        for name in ref:
            assert_close(opt.slots["velocity"][name], vel[name], name)
    else:
        assert opt.slot_names == () and opt.state_dict()["slots"] == {}


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"beta1": 0.8, "beta2": 0.99, "eps": 1e-6},
        {"weight_decay": 0.1},
        {"weight_decay": 0.1, "decoupled_weight_decay": True},
    ],
)
def test_adam_matches_textbook(kw):
    params = store(4)
    ref = {k: v.copy() for k, v in params.items()}
    m = {k: np.zeros_like(v) for k, v in params.items()}
    v = {k: np.zeros_like(v) for k, v in params.items()}
    opt = rg.Adam(lr=0.01, **kw)
    ref_kw = {
        "b1": kw.get("beta1", 0.9),
        "b2": kw.get("beta2", 0.999),
        "eps": kw.get("eps", 1e-8),
        "wd": kw.get("weight_decay", 0.0),
        "decoupled": kw.get("decoupled_weight_decay", False),
    }
    for t in range(1, 4):
        grads = grads_at(t)
        opt.step(params, grads)
        for name in ref:
            ref[name], m[name], v[name] = adam_textbook(
                ref[name], grads[name], m[name], v[name], t, 0.01, **ref_kw
            )
            assert_close(params[name], ref[name], f"{name} at step {t}")
    for name in ref:
        assert_close(opt.slots["m"][name], m[name])
        assert_close(opt.slots["v"][name], v[name])


def test_adam_first_step_moves_each_weight_by_lr():
    # Bias correction: mhat = g, vhat = g^2 at t = 1, so the step is lr * sign(g).
    params = {"w": np.array([0.0, 0.0, 0.0])}
    g = np.array([1e-3, -50.0, 7.0])
    rg.Adam(lr=0.1, eps=1e-12).step(params, {"w": g})
    assert_close(params["w"], -0.1 * g / (np.abs(g) + 1e-12))
    np.testing.assert_allclose(params["w"], [-0.1, 0.1, -0.1], rtol=1e-8)


# --- clipping --------------------------------------------------------------------------------


def test_clip_by_value():
    grads = {
        "a": np.array([-7.0, -5.0, 0.25, 5.0, 9.0]),
        "b": np.array([[np.nan, 1e9]], np.float32),
    }
    out = rg.clip_by_value(grads, 5.0)
    np.testing.assert_array_equal(out["a"], [-5.0, -5.0, 0.25, 5.0, 5.0])
    assert np.isnan(out["b"][0, 0]) and out["b"][0, 1] == 5.0
    assert out["b"].dtype == np.float32
    assert grads["a"][0] == -7.0 and grads["b"][0, 1] == 1e9  # pure
    with pytest.raises(OptimizerError, match="limit"):
        rg.clip_by_value(grads, 0.0)


def test_clip_by_global_norm():
    grads = {"a": np.array([3.0, 0.0]), "b": np.array([[4.0]], np.float32)}
    out, norm = rg.clip_by_global_norm(grads, 1.0)
    assert norm == 5.0
    assert_close(out["a"], [0.6, 0.0])
    np.testing.assert_allclose(out["b"], [[0.8]], rtol=1e-7)
    assert out["b"].dtype == np.float32
    assert grads["a"][0] == 3.0 and grads["b"][0, 0] == 4.0  # pure

    same, norm = rg.clip_by_global_norm(grads, 10.0)  # under the limit: unchanged copies
    assert norm == 5.0
    np.testing.assert_array_equal(same["a"], grads["a"])
    assert same["a"] is not grads["a"]

    rng = np.random.default_rng(5)
    many = {f"g{i}": rng.normal(size=(i + 1, 3)) for i in range(4)}
    expected = math.sqrt(sum(float(np.sum(g * g)) for g in many.values()))
    assert_close(rg.global_norm(many), expected)
    out, norm = rg.clip_by_global_norm(many, 0.5)
    assert_close(norm, expected)
    assert_close(rg.global_norm(out), 0.5)
    for name in many:  # same direction
        assert_close(out[name], many[name] * (0.5 / expected))
    with pytest.raises(OptimizerError, match="max_norm"):
        rg.clip_by_global_norm(grads, -1.0)


@pytest.mark.parametrize("make", [rg.RMSProp, rg.SGD, rg.Adam])
def test_clip_norm_option_is_clip_then_step(make):
    grads = grads_at(7)
    a, b = store(6), store(6)
    opt_a, opt_b = make(clip_norm=2.0), make()
    for _ in range(2):
        stats = opt_a.step(a, grads)
        clipped, norm = rg.clip_by_global_norm(grads, 2.0)
        opt_b.step(b, clipped)
        assert stats.grad_norm == norm > 2.0
    for name in a:
        assert np.array_equal(a[name], b[name]), name


# --- state -----------------------------------------------------------------------------------


def assert_plain(x, where="state"):
    if isinstance(x, dict):
        for k, v in x.items():
            assert isinstance(k, str), where
            assert_plain(v, f"{where}.{k}")
    else:
        assert isinstance(x, (str, int, float, np.ndarray)), f"{where} is {type(x)}"


OPTIMISERS = [
    lambda: rg.RMSProp(lr=0.02, regc=1e-4),
    lambda: rg.RMSProp(clipval=None, clip_norm=3.0),
    lambda: rg.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda: rg.SGD(lr=0.05),
    lambda: rg.Adam(lr=0.01, weight_decay=0.01, decoupled_weight_decay=True),
]


@pytest.mark.parametrize("make", OPTIMISERS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_state_dict_round_trip_is_exact(make, dtype):
    params = store(8, dtype)
    opt = make()
    for step in range(1, 4):
        opt.step(params, grads_at(step, dtype))
    state = opt.state_dict()
    assert_plain(state)
    assert state["kind"] == opt.kind and state["step"] == 3
    assert set(state["slots"]) == set(opt.slot_names)
    for table in state["slots"].values():
        assert set(table) == {"W", "b"}
        for name, a in table.items():
            assert a.dtype == dtype and a.shape == params[name].shape

    restored = rg.Optimizer.from_state_dict(state, params)
    assert type(restored) is type(opt) and restored.hyper == opt.hyper
    assert type(opt).from_state_dict(state).hyper == opt.hyper
    # The export is a copy: changing it changes neither optimiser.
    for table in state["slots"].values():
        table["W"][...] = 123.0

    mine = {k: v.copy() for k, v in params.items()}
    theirs = {k: v.copy() for k, v in params.items()}
    for step in range(4, 6):
        s1 = opt.step(mine, grads_at(step, dtype))
        s2 = restored.step(theirs, grads_at(step, dtype))
        assert s1 == s2
    for name in params:
        assert mine[name].dtype == dtype
        assert np.array_equal(mine[name], theirs[name]), name
    assert restored.step_count == opt.step_count == 5


def test_load_state_dict_replaces_hyper_and_state():
    params = store(9)
    adam = rg.Adam(lr=0.05, beta1=0.5)
    adam.step(params, grads_at(1))
    other = rg.Adam()
    other.load_state_dict(adam.state_dict())
    assert other.lr == 0.05 and other.beta1 == 0.5 and other.step_count == 1
    assert np.array_equal(other.slots["m"]["W"], adam.slots["m"]["W"])
    assert other.slots["m"]["W"] is not adam.slots["m"]["W"]
    # clipval None is exported as inf and comes back as None.
    state = rg.RMSProp(clipval=None).state_dict()
    assert state["hyper"]["clipval"] == math.inf
    assert rg.Optimizer.from_state_dict(state).clipval is None


def test_load_state_dict_errors():
    params = store(10)
    adam = rg.Adam()
    adam.step(params, grads_at(1))
    good = adam.state_dict()

    def bad(**changes):
        state = {**good, **changes}
        fresh = rg.Adam(lr=0.5)
        with pytest.raises(OptimizerStateError) as info:
            fresh.load_state_dict(state, params)
        assert fresh.lr == 0.5 and fresh.step_count == 0 and fresh.slots == {}  # unchanged
        return str(info.value)

    with pytest.raises(OptimizerStateError, match=r"kind 'adam'.*RMSProp"):
        rg.RMSProp().load_state_dict(good)
    with pytest.raises(OptimizerStateError, match="kind 'adam'"):
        rg.SGD.from_state_dict(good)
    with pytest.raises(OptimizerStateError, match=r"'lion'.*known kinds"):
        rg.Optimizer.from_state_dict({**good, "kind": "lion"})

    # Consistent between m and v, but not the parameter's shape or dtype.
    wrong_shape = {slot: {**good["slots"][slot], "W": np.zeros((4, 3))} for slot in ("m", "v")}
    msg = bad(slots=wrong_shape)
    assert msg.endswith("'m' of 'W' is float64[4, 3] but the parameter is float64[3, 4]")
    wrong_dtype = {
        slot: {**good["slots"][slot], "b": np.zeros((3, 1), np.float32)} for slot in ("m", "v")
    }
    msg = bad(slots=wrong_dtype)
    assert msg.endswith("'m' of 'b' is float32[3, 1] but the parameter is float64[3, 1]")
    # m and v disagree: caught even without a parameter store.
    with pytest.raises(OptimizerStateError, match=r"'v' of 'W' is float64\[3, 4\] but its 'm'"):
        rg.Adam().load_state_dict(
            {**good, "slots": {"m": wrong_shape["m"], "v": good["slots"]["v"]}}
        )
    assert "'b'" in bad(slots={"m": good["slots"]["m"], "v": {"W": good["slots"]["v"]["W"]}})
    assert "'x'" in bad(
        slots={
            "m": {**good["slots"]["m"], "x": np.zeros(2)},
            "v": {**good["slots"]["v"], "x": np.zeros(2)},
        }
    )
    assert "list" in bad(
        slots={"m": {**good["slots"]["m"], "W": [[0.0] * 4] * 3}, "v": good["slots"]["v"]}
    )
    assert "misses 'v'" in bad(slots={"m": good["slots"]["m"]})
    assert "misses 'beta2'" in bad(hyper={k: v for k, v in good["hyper"].items() if k != "beta2"})
    assert "unknown 'momentum'" in bad(hyper={**good["hyper"], "momentum": 0.9})
    assert "beta1" in bad(hyper={**good["hyper"], "beta1": 1.5})
    assert "step" in bad(step=-1)
    assert "step" in bad(step=2.0)
    assert "slots" in bad(slots=None)
    with pytest.raises(OptimizerStateError, match="misses 'step'"):
        rg.Adam().load_state_dict({k: v for k, v in good.items() if k != "step"})
    with pytest.raises(OptimizerStateError, match="mapping"):
        rg.Adam().load_state_dict([1, 2])
    assert issubclass(OptimizerStateError, RgraphError)

    # Without params to check against, a mismatch is caught at the next step, by name.
    late = rg.Adam()
    late.load_state_dict(
        {
            **good,
            "slots": wrong_shape,
        }
    )
    before = params["b"].copy()
    with pytest.raises(OptimizerStateError, match=r"'m' of 'W' is float64\[4, 3\]"):
        late.step(params, grads_at(2))
    assert np.array_equal(params["b"], before)  # nothing was updated


def test_step_errors_change_nothing():
    params = store(11)
    before = {k: v.copy() for k, v in params.items()}
    opt = rg.SGD(lr=0.1, momentum=0.9)
    with pytest.raises(OptimizerError, match=r"'c', which are not in the parameter store"):
        opt.step(params, {**grads_at(1), "c": np.zeros(2)})
    with pytest.raises(OptimizerError, match=r"gradient of 'b' is float64\[1, 3\]"):
        opt.step(params, {"W": grads_at(1)["W"], "b": np.zeros((1, 3))})
    with pytest.raises(OptimizerError, match="'i' must be a float numpy array"):
        opt.step({"i": np.zeros(2, np.int64)}, {"i": np.zeros(2)})
    frozen = np.zeros(2)
    frozen.flags.writeable = False
    with pytest.raises(OptimizerError, match="read-only"):
        opt.step({"f": frozen}, {"f": np.ones(2)})
    for name in params:
        assert np.array_equal(params[name], before[name])
    assert opt.step_count == 0 and opt.state_dict()["slots"] == {"velocity": {}}


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: rg.RMSProp(lr=-0.1), "lr must be finite and >= 0"),
        (lambda: rg.RMSProp(decay=1.0), r"decay must be in \[0, 1\)"),
        (lambda: rg.RMSProp(clipval=0.0), "clipval must be > 0"),
        (lambda: rg.RMSProp(eps=0.0), "eps"),
        (lambda: rg.SGD(nesterov=True), "nesterov=True needs momentum > 0"),
        (lambda: rg.SGD(lr="fast"), "lr must be a number"),
        (lambda: rg.Adam(beta2=1.0), "beta2"),
        (lambda: rg.Adam(clip_norm=-1.0), "clip_norm"),
        (lambda: rg.Adam(decoupled_weight_decay=1), "True or False"),
    ],
)
def test_bad_hyperparameters(make, match):
    with pytest.raises(OptimizerError, match=match):
        make()


def test_state_is_lazy_per_param():
    params = {"a": np.ones(2), "b": np.ones((2, 2), np.float32)}
    opt = rg.RMSProp()
    assert opt.state_dict()["slots"] == {"cache": {}}
    opt.step(params, {"a": np.ones(2)})
    assert list(opt.slots["cache"]) == ["a"]
    # b joins later, with a float64 gradient: cast to float32, state in float32.
    opt.step(params, {"b": np.full((2, 2), 2.0)})
    assert opt.slots["cache"]["b"].dtype == np.float32 and params["b"].dtype == np.float32
    assert_close(opt.slots["cache"]["b"], np.full((2, 2), np.float32((1 - 0.999) * 4.0)))
    assert_close(opt.slots["cache"]["a"], np.full(2, 0.001))  # untouched by step 2


@pytest.mark.parametrize("make", OPTIMISERS)
def test_float32_stays_float32_and_tracks_float64(make):
    p32, p64 = (
        store(12, np.float32),
        {k: v.astype(np.float64) for k, v in store(12, np.float32).items()},
    )
    o32, o64 = make(), make()
    for step in range(1, 4):
        o32.step(p32, grads_at(step, np.float32))
        o64.step(p64, {k: v.astype(np.float64) for k, v in grads_at(step, np.float32).items()})
    for name in p32:
        assert p32[name].dtype == np.float32
        for slot in o32.slot_names:
            assert o32.slots[slot][name].dtype == np.float32
        np.testing.assert_allclose(p32[name], p64[name], rtol=1e-5, atol=1e-6)
    # float64 gradients for a float32 store are cast first: the same bits as float32 ones.
    again, o = store(12, np.float32), make()
    for step in range(1, 4):
        o.step(again, grads_at(step, np.float64))
    p32, o32 = store(12, np.float32), make()
    for step in range(1, 4):
        o32.step(p32, grads_at(step, np.float32))
    for name in p32:
        assert np.array_equal(again[name], p32[name]), name


# --- end to end -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def classifier():
    """A tiny tanh network with a softmax cross-entropy loss, and a separable data set."""
    g = rg.Graph("classifier")
    x = g.input("x", ("B", 4), dtype="float32")
    t = g.input("t", ("B",), dtype="int64")
    W1 = g.param("W1", (4, 8), dtype="float32", init="uniform", low=-0.5, high=0.5)
    b1 = g.param("b1", (1, 8), dtype="float32")
    W2 = g.param("W2", (8, 3), dtype="float32", init="uniform", low=-0.5, high=0.5)
    b2 = g.param("b2", (1, 3), dtype="float32")
    logits = (x @ W1 + b1).tanh() @ W2 + b2
    loss = g.output(g.softmax_cross_entropy(logits, t), name="loss")
    prog = rg.compile(g, loss=loss)
    rng = np.random.default_rng(13)
    X = rng.normal(size=(48, 4)).astype(np.float32)
    T = np.argmax(X @ rng.normal(size=(4, 3)), axis=1).astype(np.int64)
    return g, prog, {"x": X, "t": T}


@pytest.mark.parametrize(
    "make",
    [
        lambda: rg.RMSProp(lr=0.01),
        lambda: rg.SGD(lr=0.5),
        lambda: rg.SGD(lr=0.1, momentum=0.9, nesterov=True),
        lambda: rg.Adam(lr=0.02),
        lambda: rg.Adam(lr=0.02, clip_norm=0.2),
    ],
)
def test_training_a_tiny_network_lowers_the_loss(classifier, make):
    g, prog, feeds = classifier
    params = rg.init_params(g, seed=0)
    same = {k: id(v) for k, v in params.items()}
    opt = make()
    first = float(prog.run(feeds, params)["loss"])
    assert first > 0.9  # near log(3) at the start
    norm_clipped = 0
    for _ in range(150):
        stats = opt.step(params, prog.run(feeds, params).grads)
        norm_clipped += opt.clip_norm is not None and stats.grad_norm > opt.clip_norm
    final = float(prog.run(feeds, params)["loss"])
    assert final < 0.05, f"{opt}: loss {first:.3f} -> {final:.3f}"
    assert (norm_clipped > 0) == (opt.clip_norm is not None)
    assert {k: id(v) for k, v in params.items()} == same
    assert all(v.dtype == np.float32 for v in params.values())


def test_minimising_a_quadratic():
    # f(w) = 0.5 * (w - c)^T A (w - c), gradient A (w - c); ill-conditioned A.
    A = np.diag([1.0, 10.0, 0.1])
    c = np.array([1.0, -2.0, 3.0])
    for opt, steps in [
        (rg.RMSProp(lr=0.01, regc=0.0), 1000),
        (rg.SGD(lr=0.15, momentum=0.9), 500),
        (rg.Adam(lr=0.05), 1000),
    ]:
        params = {"w": np.zeros(3)}
        for _ in range(steps):
            opt.step(params, {"w": A @ (params["w"] - c)})
        d = params["w"] - c
        assert 0.5 * d @ A @ d < 1e-4, f"{opt}: w = {params['w']}"
