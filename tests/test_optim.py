"""Optimisers against independently written update rules, clipping, state, end to end.

The references here are written from the formulas, not from ``rgraph.exec.optim``:
RecurrentJS's ``Solver.step`` element by element in Python floats (as the JavaScript does
it), and SGD / Adam as the textbook vector formulas.
"""

from __future__ import annotations

import copy
import math
import types

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


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("make", [rg.RMSProp, rg.Adam])
def test_grad_norm_is_that_of_its_step_when_read_later(make, dtype, monkeypatch):
    # Without clip_norm the norm is computed when read: stats still held when the next
    # step overwrites the optimiser's copy of the gradients keep their own step's norm.
    opt, params = make(), store(2, dtype)
    held = []
    for step in range(4):
        held.append(opt.step(params, grads_at(step, dtype)))
    for step, stats in enumerate(held):
        expected = rg.global_norm(grads_at(step, dtype))
        assert same_bits(stats.grad_norm, expected), step
        assert stats.step == step + 1

    # A loop that drops its stats never computes a norm.
    norms = []
    measured = rg.exec.optim._Layout.norm
    monkeypatch.setattr(
        rg.exec.optim._Layout, "norm", lambda self: norms.append(1) or measured(self)
    )
    for step in range(3):
        opt.step(params, grads_at(step, dtype))
    assert norms == []
    stats = opt.step(params, grads_at(9, dtype))
    assert norms == []
    assert same_bits(stats.grad_norm, rg.global_norm(grads_at(9, dtype)))
    assert norms == [1]
    assert same_bits(stats.grad_norm, rg.global_norm(grads_at(9, dtype)))
    assert norms == [1]  # computed once


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_ratio_clipped_is_that_of_its_step_when_read_later(dtype, monkeypatch):
    # A flat step counts what it clipped when the count is read (from its copy of the
    # gradients): stats still held when the next step overwrites that copy keep their
    # own step's count, and a loop that drops its stats never counts.
    opt, params = rg.RMSProp(clipval=2.0), store(2, dtype)
    held = [opt.step(params, grads_at(step, dtype)) for step in range(4)]
    assert opt._layout is not None
    for step, stats in enumerate(held):
        grads = grads_at(step, dtype)
        beyond = sum(int(np.count_nonzero(np.abs(g) > 2.0)) for g in grads.values())
        assert stats.ratio_clipped == beyond / 15 > 0, step

    counts = []
    counted = rg.exec.optim._Layout.clipped
    monkeypatch.setattr(
        rg.exec.optim._Layout, "clipped", lambda self, c: counts.append(c) or counted(self, c)
    )
    for step in range(3):
        opt.step(params, grads_at(step, dtype))
    assert counts == []
    stats = opt.step(params, grads_at(9, dtype))
    assert counts == []
    grads = grads_at(9, dtype)
    expected = sum(int(np.count_nonzero(np.abs(g) > 2.0)) for g in grads.values()) / 15
    assert stats.ratio_clipped == expected
    assert stats.ratio_clipped == expected and counts == [2.0]  # counted once


def test_step_stats_compare_copy_and_pickle_as_values():
    import pickle

    opt, params = rg.RMSProp(), store(3)
    stats = opt.step(params, grads_at(0))
    again = pickle.loads(pickle.dumps(stats))
    assert again == stats == copy.deepcopy(stats) == copy.copy(stats)
    assert (
        repr(again)
        == repr(stats)
        == (f"StepStats(step=1, ratio_clipped={stats.ratio_clipped}, grad_norm={stats.grad_norm})")
    )
    assert stats != rg.StepStats(2, stats.ratio_clipped, stats.grad_norm)
    assert stats != (1, stats.ratio_clipped, stats.grad_norm)
    pickle.loads(pickle.dumps(opt)).step(params, grads_at(1))  # (holds no weak reference)


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


# --- the flat update: bit for bit the per-parameter rules -------------------------------------
#
# The optimisers keep the state of the parameters of a step in one flat buffer per dtype and
# update all parameters at once. ``PerParameter`` is the straightforward reference: the same
# formulas, written here, applied with numpy one parameter after the other in the order of
# the gradients. Elementwise arithmetic does not depend on how the elements are grouped, so
# everything must agree to the bit.


class PerParameter:
    """A per-parameter numpy reference of ``opt``'s rule, with state of its own."""

    def __init__(self, opt):
        self.kind, self.h = opt.kind, dict(opt.hyper)
        self.t = 0
        self.state = {}  # name -> {slot: array}

    def slots(self):
        names = {"rmsprop": ("cache",), "adam": ("m", "v")}.get(self.kind)
        if names is None:
            names = ("velocity",) if self.h["momentum"] else ()
        return names

    def step(self, params, grads):
        h = self.h
        work = []
        for name, grad in grads.items():
            w, g = params[name], np.asarray(grad)
            work.append((name, w, g.astype(w.dtype) if g.dtype != w.dtype else g))
        total = 0.0
        for _, _, g in work:
            a = g.astype(np.float64).ravel()
            total += float(np.dot(a, a))
        norm = math.sqrt(total)
        clip_norm = h["clip_norm"]
        scale = clip_norm / norm if math.isfinite(norm) and norm > clip_norm else None
        self.t += 1
        clipped = count = 0
        for name, w, g in work:
            if scale is not None:
                g = g * scale
            s = self.state.setdefault(name, {k: np.zeros_like(w) for k in self.slots()})
            clipped += getattr(self, self.kind)(w, g, s)
            count += g.size
        return clipped / count if count else 0.0, norm

    def rmsprop(self, w, g, s):
        h, cache = self.h, s["cache"]
        cache *= h["decay"]
        cache += (1.0 - h["decay"]) * g * g
        clipped = 0
        if h["clipval"] != math.inf:
            c = h["clipval"]
            clipped = int(np.sum(g > c)) + int(np.sum(g < -c))
            g = np.clip(g, -c, c)
        delta = (-h["lr"] * g) / np.sqrt(cache + h["eps"])
        if h["regc"]:
            delta -= h["regc"] * w
        w += delta
        return clipped

    def sgd(self, w, g, s):
        h = self.h
        if h["weight_decay"]:
            g = g + h["weight_decay"] * w
        if h["momentum"]:
            v = s["velocity"]
            v *= h["momentum"]
            v += g
            g = g + h["momentum"] * v if h["nesterov"] else v
        w -= h["lr"] * g
        return 0

    def adam(self, w, g, s):
        h, t = self.h, self.t
        if h["weight_decay"]:
            if h["decoupled_weight_decay"]:
                w *= 1.0 - h["lr"] * h["weight_decay"]
            else:
                g = g + h["weight_decay"] * w
        m, v = s["m"], s["v"]
        m *= h["beta1"]
        m += (1.0 - h["beta1"]) * g
        v *= h["beta2"]
        v += (1.0 - h["beta2"]) * np.square(g)
        mhat = m / (1.0 - h["beta1"] ** t)
        vhat = v / (1.0 - h["beta2"] ** t)
        w -= h["lr"] * mhat / (np.sqrt(vhat) + h["eps"])
        return 0


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def assert_same_as_reference(opt, ref, params, ref_params, stats=None, expected=None, where=""):
    if stats is not None:
        ratio, norm = expected
        assert stats.step == ref.t, where
        assert stats.ratio_clipped == ratio and same_bits(stats.grad_norm, norm), where
    assert list(params) == list(ref_params)
    for name in params:
        assert same_bits(params[name], ref_params[name]), f"{where}: parameter {name}"
    table = opt.state_dict()["slots"]
    for slot in ref.slots():
        assert set(table[slot]) == set(ref.state), where
        for name, s in ref.state.items():
            assert same_bits(table[slot][name], s[slot]), f"{where}: {slot} of {name}"
            assert same_bits(opt.slots[slot][name], s[slot]), f"{where}: live {slot} of {name}"


FLAT_OPTIMISERS = [
    lambda: rg.RMSProp(),  # the demo: lr 0.01, regc 1e-6, clipval 5
    lambda: rg.RMSProp(lr=0.02, regc=0.0, clipval=None),
    lambda: rg.RMSProp(lr=0.01, clip_norm=4.0),
    lambda: rg.SGD(lr=0.05),
    lambda: rg.SGD(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3, clip_norm=3.0),
    lambda: rg.Adam(lr=0.01),
    lambda: rg.Adam(lr=0.01, weight_decay=0.1),
    lambda: rg.Adam(lr=0.01, weight_decay=0.1, decoupled_weight_decay=True, clip_norm=2.0),
]


def mixed_store(seed=20):
    """Small float64 and float32 parameters of many shapes (the character LSTM's kind), a
    column-major one, a scalar, an empty one, and four of 64 KB or more (updated in place,
    not copied into the flat vector), one of them column-major."""
    rng = np.random.default_rng(seed)
    out = {}
    for i in range(12):
        shape = [(20, 20), (20, 5), (20,), (72, 20), (1, 20), (72,)][i % 6]
        out[f"p{i}"] = rng.uniform(-0.08, 0.08, shape).astype([np.float64, np.float32][i % 2])
    out["fortran"] = np.asfortranarray(rng.normal(size=(7, 3)))
    out["scalar"] = np.array(0.5, np.float32)
    out["empty"] = np.zeros((0, 4))
    out["big64"] = rng.normal(size=(100, 100))
    out["big32"] = rng.normal(size=(100, 200)).astype(np.float32)
    out["many"] = rng.normal(size=(90, 90))  # 65 KB: in place too
    out["big_fortran"] = np.asfortranarray(rng.normal(size=(90, 100)))
    for i in range(6):
        out[f"q{i}"] = rng.normal(size=(60, 60))  # 29 KB each: flat
    return out


def random_grads(rng, params, names=None, dtype=None):
    grads = {}
    for name in names if names is not None else params:
        w = params[name]
        g = rng.normal(0.0, 3.0, w.shape)
        if g.size:
            g.flat[rng.integers(g.size)] = rng.choice([40.0, -40.0, 5.0, -5.0])
        grads[name] = g.astype(dtype or w.dtype)
    return grads


def copies(params):
    return {k: v.copy(order="K") for k, v in params.items()}


@pytest.mark.parametrize("make", FLAT_OPTIMISERS)
def test_flat_update_is_bit_identical_to_the_per_parameter_reference(make):
    params = mixed_store()
    ids = {k: id(v) for k, v in params.items()}
    opt = make()
    ref, ref_params = PerParameter(opt), copies(params)
    rng = np.random.default_rng(21)
    for step in range(1, 7):
        # float64 gradients for the float32 parameters on odd steps: cast first
        grads = random_grads(rng, params, dtype=np.float64 if step % 2 else None)
        if step == 3:  # transposed and list gradients are fine too
            grads["p0"] = np.ascontiguousarray(grads["p0"].T).T
            grads["p2"] = grads["p2"].tolist()
        stats = opt.step(params, grads)
        expected = ref.step(ref_params, grads)
        assert_same_as_reference(opt, ref, params, ref_params, stats, expected, f"step {step}")
    assert {k: id(v) for k, v in params.items()} == ids  # updated in place
    assert params["fortran"].flags.f_contiguous and params["scalar"].dtype == np.float32


@pytest.mark.parametrize("make", FLAT_OPTIMISERS)
def test_changing_the_parameters_between_steps(make):
    params = mixed_store(22)
    opt = make()
    ref, ref_params = PerParameter(opt), copies(params)
    rng = np.random.default_rng(23)
    schedule = [
        None,  # all
        ["p1", "p0", "big64", "scalar"],  # a subset, in another order
        None,
        "reversed",  # all, in the reverse order
        "reversed",
        ["p3"],  # one only
        "add",  # a new parameter appears (and gets state)
        "remove",  # one disappears from the store and the gradients
        "retype",  # one comes back as float32 (under a new name: its float64 state stays)
        None,
        [],  # no gradients at all
        ["p5", "new", "q1"],
        None,
    ]
    for step, what in enumerate(schedule, 1):
        names = None
        if what == "add":
            params["new"] = rng.normal(size=(3, 3))
            ref_params["new"] = params["new"].copy()
        elif what == "remove":
            del params["p4"], ref_params["p4"]
        elif what == "retype":
            params["p6_32"] = params["p6"].astype(np.float32)
            ref_params["p6_32"] = ref_params["p6"].astype(np.float32)
            del params["p6"], ref_params["p6"]
        elif what == "reversed":
            names = list(reversed(params))
        elif what is not None:
            names = what
        grads = random_grads(rng, params, names)
        stats = opt.step(params, grads)
        expected = ref.step(ref_params, grads)
        before = {name: s.copy() for name, s in ref.state.items() if name not in grads}
        assert_same_as_reference(opt, ref, params, ref_params, stats, expected, f"step {step}")
        for name in before:  # parameters without a gradient: state untouched
            for slot in ref.slots():
                assert same_bits(opt.slots[slot][name], ref.state[name][slot])
    if ref.slots():
        assert "p4" in opt.slots[ref.slots()[0]]  # the state of a removed parameter stays
        assert opt.slots[ref.slots()[0]]["p6_32"].dtype == np.float32


@pytest.mark.parametrize("make", FLAT_OPTIMISERS)
def test_resuming_mid_training_is_the_same_as_not_stopping(make, tmp_path):
    rng = np.random.default_rng(24)
    start = mixed_store(25)
    del start["scalar"]  # rg.save stores a 0-d array as 1-d (np.ascontiguousarray)
    grads = [random_grads(rng, start) for _ in range(6)]
    straight, p_straight = make(), copies(start)
    for g in grads:
        last = straight.step(p_straight, g)

    first, p = make(), copies(start)
    for g in grads[:3]:
        first.step(p, g)
    graph = rg.Graph("store")
    for name, w in p.items():
        graph.param(name, w.shape, dtype=w.dtype.name)
    rg.save(tmp_path / "m.rgraph", graph, p, optimizer=first)
    model = rg.load(tmp_path / "m.rgraph")
    resumed, p_resumed = rg.Optimizer.from_state_dict(model.optimizer), copies(model.params)
    first.load_state_dict(first.state_dict())  # and the same optimiser, reloaded
    for g in grads[3:]:
        s1 = resumed.step(p_resumed, g)
        s2 = first.step(p, g)
    assert s1 == s2 == last
    for name in start:
        assert same_bits(p_resumed[name], p_straight[name]), name
        assert same_bits(p[name], p_straight[name]), name
    for slot in straight.slot_names:
        for name in start:
            assert same_bits(resumed.slots[slot][name], straight.slots[slot][name])
            assert same_bits(first.slots[slot][name], straight.slots[slot][name])


def test_state_arrays_stay_live_and_can_be_replaced():
    params = mixed_store(26)
    opt = rg.Adam(lr=0.01)
    ref, ref_params = PerParameter(opt), copies(params)
    rng = np.random.default_rng(27)
    for step in range(1, 7):
        if step == 3:  # edited in place
            opt.slots["m"]["p0"][...] *= 0.5
            ref.state["p0"]["m"] *= 0.5
        if step == 4:  # replaced by another array of the same shape and dtype
            opt.slots["v"]["p1"] = np.full((20, 5), 0.25, np.float32)
            ref.state["p1"]["v"][...] = 0.25
        if step == 5:  # a copy of the optimiser (with its store) is independent of it
            twin, twin_params = copy.deepcopy((opt, params))
        grads = random_grads(rng, params)
        stats = opt.step(params, grads)
        expected = ref.step(ref_params, grads)
        assert_same_as_reference(opt, ref, params, ref_params, stats, expected, f"step {step}")
        if step == 5:
            twin.step(twin_params, grads)
            for name in params:
                assert same_bits(twin_params[name], params[name])
                assert same_bits(twin.slots["m"][name], opt.slots["m"][name])
                assert twin.slots["m"][name] is not opt.slots["m"][name]


def test_errors_after_flat_steps_are_the_same_and_change_nothing():
    params = mixed_store(28)
    opt = rg.RMSProp()
    ref, ref_params = PerParameter(opt), copies(params)
    rng = np.random.default_rng(29)

    def ok():
        grads = random_grads(rng, params)
        stats = opt.step(params, grads)
        assert_same_as_reference(opt, ref, params, ref_params, stats, ref.step(ref_params, grads))

    def fails(error, match, grads):
        before = copies(params)
        state = opt.state_dict()
        with pytest.raises(error, match=match):
            opt.step(params, grads)
        for name in params:
            assert same_bits(params[name], before[name])
        assert opt.step_count == ref.t
        for name, s in state["slots"]["cache"].items():
            assert same_bits(opt.slots["cache"][name], s)

    ok()
    ok()
    params["p3"].flags.writeable = False
    fails(OptimizerError, "parameter 'p3' is read-only", random_grads(rng, params))
    params["p3"].flags.writeable = True
    ok()
    bad = random_grads(rng, params)
    bad["q2"] = bad["q2"][1:]
    fails(OptimizerError, r"gradient of 'q2' is float64\[59, 60\]", bad)
    fails(OptimizerError, "'ghost', which are not", {**random_grads(rng, params), "ghost": 1.0})
    params["p2"].shape = (20, 1)  # the same array, another shape
    fails(OptimizerError, r"gradient of 'p2' is float64\[20\]", random_grads(rng, ref_params))
    params["p2"].shape = (20,)
    opt.slots["cache"]["p7"] = np.zeros((20, 5), np.float64)  # p7 is float32
    fails(
        OptimizerStateError, r"state 'cache' of 'p7' is float64\[20, 5\]", random_grads(rng, params)
    )
    opt.slots["cache"]["p7"] = ref.state["p7"]["cache"].copy()
    params["int"], ref_params["int"] = np.zeros(3, np.int64), np.zeros(3, np.int64)
    fails(OptimizerError, "'int' must be a float numpy array", random_grads(rng, params))
    del params["int"], ref_params["int"]
    ok()


@pytest.mark.parametrize("make", FLAT_OPTIMISERS)
@pytest.mark.parametrize("tied", [False, True])
def test_parameters_that_share_memory_are_updated_in_order(make, tied):
    # When gradients or parameters share memory with what a step writes, the order of the
    # per-parameter updates matters; the flat update must not change what it gives.
    rng = np.random.default_rng(30)
    buf = rng.normal(size=110)
    ref_buf = buf.copy()
    params, ref_params = {}, {}
    for store, b in [(params, buf), (ref_params, ref_buf)]:
        store["a"] = b[:30].reshape(5, 6)  # views of one buffer, apart: fine at once
        store["b"] = b[30:60].reshape(6, 5).T
        store["c"] = b[60:]
        store["d"] = b[60:].copy().reshape(10, 5)
        if tied:  # one array under two names: updated twice, one after the other
            store["t1"] = store["t2"] = b[:30].reshape(5, 6)
    opt = make()
    ref = PerParameter(opt)
    for step in range(1, 7):
        grads = random_grads(rng, params)
        ref_grads = dict(grads)
        if step in (2, 3, 5):  # the gradient of d is parameter c, updated before it
            grads["d"] = params["c"].reshape(10, 5)
            ref_grads["d"] = ref_params["c"].reshape(10, 5)
        if step >= 4:  # a gradient that is its parameter itself
            grads["b"], ref_grads["b"] = params["b"], ref_params["b"]
        stats = opt.step(params, grads)
        expected = ref.step(ref_params, ref_grads)
        assert (stats.ratio_clipped, stats.grad_norm) == expected, step
        assert same_bits(buf, ref_buf), step
        assert same_bits(params["d"], ref_params["d"]), step


@pytest.mark.parametrize("make", FLAT_OPTIMISERS)
def test_gradients_in_another_order(make):
    # Same names, shapes and dtypes, another order: each gradient still goes to its own
    # parameter, and the norm is summed in the gradients' order.
    rng = np.random.default_rng(31)
    params = {name: rng.normal(size=(4, 4)) for name in "xyz"}
    opt = make()
    ref, ref_params = PerParameter(opt), copies(params)
    for step, order in enumerate(["xyz", "zyx", "zyx", "yxz", "xyz"], 1):
        grads = random_grads(rng, params, list(order))
        stats = opt.step(params, grads)
        expected = ref.step(ref_params, grads)
        assert_same_as_reference(opt, ref, params, ref_params, stats, expected, f"step {step}")


def steps_as_the_reference(opt, params, seed, steps=3):
    """``steps`` steps of ``opt`` on ``params`` with random gradients, each checked bit for
    bit against the per-parameter reference."""
    ref, ref_params = PerParameter(opt), copies(params)
    rng = np.random.default_rng(seed)
    for step in range(1, steps + 1):
        grads = random_grads(rng, params)
        stats = opt.step(params, grads)
        expected = ref.step(ref_params, grads)
        assert_same_as_reference(opt, ref, params, ref_params, stats, expected, f"step {step}")


@pytest.mark.parametrize("make", FLAT_OPTIMISERS)
def test_updating_in_pieces_changes_nothing(make, monkeypatch):
    # Pieces of 3000 bytes: the flat vectors and the big C-contiguous parameters are cut
    # in many pieces, most ending within a parameter.
    monkeypatch.setattr(rg.exec.optim, "_PIECE_BYTES", 3000)
    opt = make()
    steps_as_the_reference(opt, mixed_store(35), seed=36)
    assert max(len(group.pieces) for group in opt._layout.groups) > 30


@pytest.mark.parametrize("make", FLAT_OPTIMISERS)
def test_a_big_float32_group_goes_to_float64_one_parameter_at_a_time(make, monkeypatch):
    # No float64 copy of the float32 gradients for the norm: each goes through a scratch
    # array in turn. The same bits, clipping by norm included.
    monkeypatch.setattr(rg.exec.optim, "_WIDE_BYTES", 0)
    opt, params = make(), mixed_store(42)
    steps_as_the_reference(opt, params, seed=43)
    assert all(group.wide is None for group in opt._layout.groups)
    assert opt._layout.scratch.size == max(w.size for w in params.values() if w.dtype != np.float64)


def stacked_views(grads, rng):
    """The gradients as the interpreter gives those of stacked weights: transposed views
    of one wider buffer, neither C- nor F-contiguous."""
    out = {}
    for name, g in grads.items():
        if g.ndim == 2:
            rows, cols = g.shape
            buf = rng.normal(size=(cols, 3 * rows)).astype(g.dtype)
            buf[:, rows : 2 * rows] = g.T
            g = buf[:, rows : 2 * rows].T
            assert min(g.shape) < 2 or not (g.flags.c_contiguous or g.flags.f_contiguous)
        out[name] = g
    return out


@pytest.mark.parametrize("make", FLAT_OPTIMISERS)
def test_gradients_that_are_strided_views(make):
    params = mixed_store(32)
    opt = make()
    ref, ref_params = PerParameter(opt), copies(params)
    rng = np.random.default_rng(33)
    for step in range(1, 4):
        grads = stacked_views(random_grads(rng, params), rng)
        before = copies(grads)
        stats = opt.step(params, grads)
        expected = ref.step(ref_params, grads)
        assert_same_as_reference(opt, ref, params, ref_params, stats, expected, f"step {step}")
        for name in grads:  # the gradients stay as they were
            assert same_bits(grads[name], before[name]), name


@pytest.mark.parametrize("make", FLAT_OPTIMISERS)
def test_gradients_that_are_views_of_one_buffer(make):
    # As the interpreter gives those of stacked weights: row blocks of one buffer, apart
    # from what the step writes however many share it. Among them at step 3, the gradient
    # of "x" is the memory of parameter "w0", which the step updates before it reads that
    # gradient: that step goes one parameter after the other, the others at once.
    rng = np.random.default_rng(37)
    start = rng.normal(size=(20, 5))
    stores = []
    for buf in (start.copy(), start.copy()):
        store = {f"w{i}": buf[4 * i : 4 * i + 4] for i in range(4)}
        store["x"] = buf[16:]
        stores.append((buf, store))
    (buf, params), (ref_buf, ref_params) = stores
    opt = make()
    ref = PerParameter(opt)
    for step in range(1, 6):
        stack = rng.normal(0.0, 3.0, size=(20, 5))
        grads = {name: stack[4 * i : 4 * i + 4] for i, name in enumerate(params)}
        ref_grads = dict(grads)
        if step == 3:
            grads["x"], ref_grads["x"] = buf[:4], ref_buf[:4]
        stats = opt.step(params, grads)
        expected = ref.step(ref_params, ref_grads)
        assert_same_as_reference(opt, ref, params, ref_params, stats, expected, f"step {step}")
        assert same_bits(buf, ref_buf), step
        assert (opt._layout is None) == (step == 3), step


@pytest.mark.parametrize("one_dtype", [False, True])
@pytest.mark.parametrize("make", FLAT_OPTIMISERS)
def test_parameters_that_follow_each_other_in_one_buffer_are_updated_in_place(make, one_dtype):
    # A packed store (Program.pack): the C-contiguous parameters of each dtype follow each
    # other in one buffer, in reverse order of the step's, with one gap (two runs); the
    # others (column-major, 0-d, empty) stand apart. The runs are updated in place as
    # vectors (nothing copied in and out), bit for bit as parameter by parameter.
    original = mixed_store(40)
    if one_dtype:  # (then the step's parameters are all in one group)
        original = {k: v for k, v in original.items() if v.dtype == np.float64}
    packable = [k for k, v in original.items() if v.flags.c_contiguous and v.ndim and v.size]
    params, bufs = {}, []
    for dtype in {v.dtype for v in original.values()}:
        names = [k for k in reversed(packable) if original[k].dtype == dtype]
        bufs.append(buf := np.zeros(sum(original[k].size for k in names) + 1, dtype))
        at = 0
        for i, name in enumerate(names):
            at += i == 3  # the gap
            params[name] = buf[at : at + original[name].size].reshape(original[name].shape)
            params[name][...] = original[name]
            at += original[name].size
    params.update((k, v.copy(order="K")) for k, v in original.items() if k not in params)
    params = {k: params[k] for k in original}  # the step's order
    opt = make()
    ref, ref_params = PerParameter(opt), copies(params)
    rng = np.random.default_rng(41)
    for step in range(1, 5):
        grads = random_grads(rng, params)
        stats = opt.step(params, grads)
        expected = ref.step(ref_params, grads)
        assert_same_as_reference(opt, ref, params, ref_params, stats, expected, f"step {step}")
    groups = opt._layout.groups
    assert sum(len(g.copies) for g in groups) == 2 - one_dtype  # the 0-d and the empty one
    for buf in bufs:  # two runs per buffer, whole (each under the piece size)
        runs = [w for g in groups for w, _, _, _ in g.pieces if np.shares_memory(w, buf)]
        assert len(runs) == 2 and sum(w.size for w in runs) == buf.size - 1


@pytest.mark.parametrize("make", FLAT_OPTIMISERS)
def test_memory_that_no_array_owns(make):
    # Parameters and gradients in bytearrays (np.frombuffer): whether memory is shared is
    # then told by byte ranges alone. At step 3 the gradient of "b" lies in the parameters'
    # bytearray, apart from them; at step 4 it is parameter "a", updated before it is read.
    rng = np.random.default_rng(38)
    start = rng.normal(size=60)
    stores = []
    for _ in range(2):
        buf = np.frombuffer(bytearray(start.tobytes()), np.float64)
        stores.append((buf, {"a": buf[:20].reshape(4, 5), "b": buf[20:40].reshape(4, 5)}))
    (buf, params), (ref_buf, ref_params) = stores
    opt = make()
    ref = PerParameter(opt)
    for step in range(1, 6):
        other = np.frombuffer(bytearray(rng.normal(0.0, 3.0, size=40).tobytes()), np.float64)
        grads = {"a": other[:20].reshape(4, 5), "b": other[20:].reshape(4, 5)}
        ref_grads = dict(grads)
        if step == 3:
            grads["b"], ref_grads["b"] = buf[40:].reshape(4, 5), ref_buf[40:].reshape(4, 5)
        if step == 4:
            grads["b"], ref_grads["b"] = buf[:20].reshape(4, 5), ref_buf[:20].reshape(4, 5)
        stats = opt.step(params, grads)
        expected = ref.step(ref_params, ref_grads)
        assert_same_as_reference(opt, ref, params, ref_params, stats, expected, f"step {step}")
        assert same_bits(buf, ref_buf), step
        assert (opt._layout is None) == (step == 4), step


def edge_grads(params, step):
    """Gradients around RMSProp's clipval 5: exactly +-5 and the floats next to it, +-inf,
    large values, and at step 2 a NaN in a gradient that also has elements to clip; at step
    4 no element is beyond the float next to 5."""
    rng = np.random.default_rng(40 + step)
    grads = random_grads(rng, params)
    for name, g in grads.items():
        if step == 4:
            np.clip(g, -4.0, 4.0, out=g)
            if g.size > 1:
                g.flat[:2] = [np.nextafter(g.dtype.type(5.0), 9), 5.0]
            continue
        flat = g.reshape(-1)  # (a view: random_grads makes contiguous arrays)
        if flat.size < 8:
            continue
        five = g.dtype.type(5.0)
        flat[:6] = [five, -five, np.nextafter(five, 9), -np.nextafter(five, 9), 40.0, -1e3]
        flat[6:8] = [np.nextafter(five, 0), -np.nextafter(five, 0)]
        if step == 2 and name in ("p0", "p1", "big64", "big32"):
            flat[-1] = np.nan
        if step == 3 and name in ("p2", "big32"):
            flat[-2:] = [np.inf, -np.inf]
    return grads


@pytest.mark.parametrize("clipval", [5.0, 4.9999999999, 1e40])
@pytest.mark.parametrize("path", ["flat", "pieces", "each"])
def test_rmsprop_counts_clipped_elements_exactly_at_the_edges(clipval, path, monkeypatch):
    # ratio_clipped counts the elements beyond +-clipval compared in the gradient's dtype
    # (4.9999999999 is 5 in float32; 1e40 is inf there): not +-clipval itself, not NaN,
    # but +-inf; and the update uses the clipped values. The step goes flat, flat in small
    # pieces, or one parameter after the other (a read-only mapping is not a dict).
    if path == "pieces":
        monkeypatch.setattr(rg.exec.optim, "_PIECE_BYTES", 3000)
    each = path == "each"
    params = mixed_store(34)
    opt = rg.RMSProp(clipval=clipval)
    ref, ref_params = PerParameter(opt), copies(params)
    with np.errstate(all="ignore"):
        for step in range(1, 5):
            grads = edge_grads(params, step)
            before = copies(grads)
            store = types.MappingProxyType(params) if each else params
            stats = opt.step(store, grads)
            expected = ref.step(ref_params, grads)
            assert_same_as_reference(opt, ref, params, ref_params, stats, expected, str(step))
            assert (stats.ratio_clipped > 0) == (clipval < 1e3 or step == 3), step
            for name in grads:
                assert same_bits(grads[name], before[name]), name
    assert (opt._layout is None) == each
