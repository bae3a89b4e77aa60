"""The fused cross-entropy kernels against a row-by-row numpy computation, where the op
table (tests/op_cases.py) does not reach: many rows of the char model's 27 classes,
every reduction with and without a mask in both float dtypes, shapes taken in turn,
logits whose rows are not contiguous in memory (a transpose of time-major logits),
inputs left untouched, and out-of-range targets raising IndexError naming the first.
"""

from __future__ import annotations

import numpy as np
import pytest

import rgraph as rg
from rgraph.errors import ExecutionError
from rgraph.ir.op import KernelContext, get_op

REDUCTIONS = ("mean", "sum", "none")
RTOL = {"float64": 1e-12, "float32": 2e-5}


def kernels(reduction: str):
    """The forward and gradient kernels for ``reduction``."""
    out = []
    for name in ("softmax_cross_entropy", "softmax_cross_entropy_grad"):
        op = get_op(name)
        out.append(op.kernel(op.parse_attrs({"reduction": reduction}), KernelContext({})))
    return out


def reference(logits, targets, ct, mask, reduction):
    """Loss and ``ct`` times d loss / d logits, one row at a time in float64."""
    classes = logits.shape[-1]
    x = logits.astype(np.float64).reshape(-1, classes)
    t = targets.reshape(-1)
    w = np.ones(t.size) if mask is None else mask.astype(np.float64).reshape(-1)
    if reduction == "mean":
        w = w / max(w.sum(), 1.0)
    nll, grad = np.zeros(t.size), np.zeros_like(x)
    for i, row in enumerate(x):
        e = np.exp(row - row.max())
        nll[i] = np.log(e.sum()) - (row[t[i]] - row.max())
        grad[i] = e / e.sum()
        grad[i, t[i]] -= 1.0
    loss = (nll * w).reshape(targets.shape) if reduction == "none" else (nll * w).sum()
    scale = w * np.broadcast_to(ct.astype(np.float64), targets.shape).reshape(-1)
    return loss, (grad * scale[:, None]).reshape(logits.shape)


def case(shape, dtype, reduction, masked, seed=0):
    rng = np.random.default_rng(seed)
    logits = (3 * rng.standard_normal(shape)).astype(dtype)
    targets = rng.integers(0, shape[-1], shape[:-1])
    mask = (rng.random(shape[:-1]) < 0.7).astype(dtype) if masked else None
    ct = rng.standard_normal(shape[:-1] if reduction == "none" else ()).astype(dtype)
    return logits, targets, ct, mask


def check(logits, targets, ct, mask, reduction):
    loss_k, grad_k = kernels(reduction)
    dtype = logits.dtype
    extra = () if mask is None else (mask,)
    loss, grad = np.asarray(loss_k(logits, targets, *extra)), grad_k(logits, targets, ct, *extra)
    want_loss, want_grad = reference(logits, targets, ct, mask, reduction)
    assert loss.dtype == dtype and loss.shape == np.shape(want_loss)
    assert grad.dtype == dtype and grad.shape == logits.shape
    rtol = RTOL[dtype.name]
    np.testing.assert_allclose(loss, want_loss, rtol=rtol, atol=rtol * 1e-3)
    # Entries at targets are differences near -1 * scale: their error is relative to it.
    np.testing.assert_allclose(grad, want_grad, rtol=rtol, atol=rtol * np.abs(want_grad).max())


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("masked", [False, True], ids=["nomask", "mask"])
@pytest.mark.parametrize("shape", [(68, 1, 27), (5, 9, 27), (7,)], ids=str)
def test_kernels_match_row_by_row_numpy(shape, dtype, reduction, masked):
    check(*case(shape, np.dtype(dtype), reduction, masked), reduction)


def test_shapes_in_turn_share_nothing_stale():
    """Row offsets are cached per (rows, classes): same rows or same size, other classes."""
    for seed, shape in enumerate([(6, 4), (4, 6), (6, 5), (6, 4), (24, 1), (1, 24)]):
        check(*case(shape, np.dtype("float64"), "sum", True, seed), "sum")


def test_no_rows_give_a_zero_loss_and_an_empty_gradient():
    for reduction in REDUCTIONS:
        loss_k, grad_k = kernels(reduction)
        logits, targets = np.zeros((0, 5)), np.zeros((0,), np.int64)
        ct = np.zeros((0,)) if reduction == "none" else np.asarray(1.0)
        loss = np.asarray(loss_k(logits, targets))
        assert loss.shape == ((0,) if reduction == "none" else ()) and not loss.any()
        assert grad_k(logits, targets, ct).shape == (0, 5)


def views(rng):
    """Logits views (B, T, C) whose memory layout is not row-major, and their targets."""
    time_major = rng.standard_normal((4, 3, 6))  # (T, B, C)
    wide = rng.standard_normal((3, 8, 6))
    yield time_major.transpose(1, 0, 2)  # rows (B, T) cannot be flattened without a copy
    yield wide[:, ::2]  # every other row
    yield wide[:, :4, ::-1]  # classes reversed
    yield np.asfortranarray(wide[:, :4])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_strided_logits_give_what_their_contiguous_copy_gives(reduction):
    loss_k, grad_k = kernels(reduction)
    rng = np.random.default_rng(3)
    for logits in views(rng):
        assert not logits.flags.c_contiguous
        targets = rng.integers(0, 6, logits.shape[:-1])
        mask = (rng.random(logits.shape[:-1]) < 0.7).astype(np.float64)
        ct = rng.standard_normal(logits.shape[:-1] if reduction == "none" else ())
        dense = np.ascontiguousarray(logits)
        np.testing.assert_array_equal(
            loss_k(logits, targets, mask), loss_k(dense, targets, mask), err_msg=reduction
        )
        grad = grad_k(logits, targets, ct, mask)
        np.testing.assert_array_equal(grad, grad_k(dense, targets, ct, mask), err_msg=reduction)
        check(logits, targets, ct, mask, reduction)


def test_gradient_through_a_transpose_view():
    """The transpose kernel hands out views: the loss gradient must reach every logit."""
    g = rg.Graph("tm")
    x = g.param("x", (4, 3, 6))  # (T, B, C)
    t = g.input("t", (3, 4), "int64")
    g.output(g.softmax_cross_entropy(g.transpose(x, perm=[1, 0, 2]), t, reduction="sum"), "loss")
    rng = np.random.default_rng(5)
    x0, t0 = rng.standard_normal((4, 3, 6)), rng.integers(0, 6, (3, 4))
    for optimize in (False, True):
        prog = rg.compile(g, loss="loss", wrt=["x"], optimize=optimize)
        got = prog.run({"t": t0}, {"x": x0}).grads["x"]
        want = reference(x0.transpose(1, 0, 2), t0, np.asarray(1.0), None, "sum")[1]
        np.testing.assert_allclose(got, want.transpose(1, 0, 2), rtol=1e-12, atol=1e-15)


def test_kernels_leave_their_inputs_alone():
    for reduction in REDUCTIONS:
        logits, targets, ct, mask = case((6, 2, 5), np.dtype("float64"), reduction, True)
        before = [a.copy() for a in (logits, targets, ct, mask)]
        loss_k, grad_k = kernels(reduction)
        loss_k(logits, targets, mask)
        grad_k(logits, targets, ct, mask)
        for a, b in zip((logits, targets, ct, mask), before):
            np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("itype", ["int64", "int32"])
@pytest.mark.parametrize("bad", [-1, 27, 1000, -(2**31)])
def test_out_of_range_targets_raise_index_error_naming_the_first(itype, bad):
    targets = np.zeros((68, 1), itype)
    targets[5, 0], targets[9, 0] = bad, 3  # a later in-range target changes nothing
    targets[11, 0] = -2 if bad >= 0 else 27  # nor does a later out-of-range one
    logits = np.zeros((68, 1, 27))
    for reduction in REDUCTIONS:
        loss_k, grad_k = kernels(reduction)
        ct = np.ones((68, 1)) if reduction == "none" else np.asarray(1.0)
        for kernel, args in ((loss_k, (logits, targets)), (grad_k, (logits, targets, ct))):
            with pytest.raises(IndexError) as info:
                kernel(*args)
            assert str(info.value) == f"target {bad} is out of range for 27 classes"


def test_out_of_range_target_in_a_program_is_an_execution_error():
    g = rg.Graph("ce")
    t = g.input("t", (3,), "int64")
    g.output(g.softmax_cross_entropy(g.param("w", (3, 4)), t), "loss")
    with pytest.raises(ExecutionError) as info:
        rg.compile(g).run({"t": np.array([0, 4, 1])}, {"w": np.zeros((3, 4))})
    assert isinstance(info.value.__cause__, IndexError)
    assert "target 4 is out of range for 4 classes" in str(info.value)
