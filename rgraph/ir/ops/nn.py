"""Neural-network ops: embedding lookup, softmax family, fused softmax cross-entropy."""

from __future__ import annotations

import functools
from typing import Literal

import numpy as np

from rgraph.errors import ShapeError
from rgraph.ir.cost import Cost, elements, nbytes
from rgraph.ir.op import (
    Attrs,
    Op,
    get_op,
    like,
    normalize_axis,
    register,
    require_float,
    require_int,
    same_dtype,
    shift_axis,
)
from rgraph.ir.types import make_type

# Signed integer dtypes -> the unsigned ones of their size (for index range checks).
_UNSIGNED = {np.dtype(f"{o}i{n}"): np.dtype(f"{o}u{n}") for o in "<>" for n in (1, 2, 4, 8)}


def _out_of_range(indices: np.ndarray, size: int) -> bool:
    """Whether some index is outside ``[0, size)``: negative ones view as huge unsigned
    numbers, so one max checks both bounds."""
    flat = indices.reshape(-1)
    return (
        bool(flat.size)
        and np.maximum.reduce(flat.view(_UNSIGNED.get(flat.dtype, flat.dtype))) >= size
    )


@register
class RowPluck(Op):
    """Rows of ``table`` (V, D) at integer ``indices`` of any shape S: shape S + (D,).

    RecurrentJS's ``rowPluck`` (an embedding lookup), also for arrays of indices.
    """

    name = "row_pluck"
    arity = (2, 2)

    def infer(self, ins, a):
        table, idx = ins
        require_float(table, "row_pluck table")
        require_int(idx, "row_pluck indices")
        if table.rank != 2:
            raise ShapeError(f"row_pluck table must be a matrix (V, D), got {table}")
        return [make_type(table.dtype, (*idx.shape, table.shape[1]))]

    def kernel(self, a, ctx):
        def pluck(table, idx):
            if _out_of_range(idx, table.shape[0]):
                bad = idx[(idx < 0) | (idx >= table.shape[0])].flat[0]
                raise IndexError(
                    f"index {bad} is out of range for a table of {table.shape[0]} rows"
                )
            return np.take(table, idx, axis=0)  # faster than table[idx], same rows

        return pluck

    def batched_attrs(self, a, ins, stacked, steps):
        return {} if stacked == [False, True] else None

    def vjp(self, g, a, ins, outs, cts):
        return [g.row_pluck_grad(cts[0], ins[1], ins[0]), None]


@register
class RowPluckGrad(Op):
    """Zeros shaped like ``table`` with rows of ``updates`` added at ``indices``."""

    name = "row_pluck_grad"
    arity = (3, 3)

    def infer(self, ins, a):
        upd, idx, table = ins
        same_dtype([upd, table])
        require_int(idx, "row_pluck_grad indices")
        if upd.shape != (*idx.shape, table.shape[1]):
            raise ShapeError(f"updates {upd} do not match indices {idx} and table {table}")
        return [table]

    def cost(self, ins, outs, a):
        return Cost(elements(ins[:1]), nbytes(outs))  # one add per element of the updates

    def kernel(self, a, ctx):
        def scatter(upd, idx, table):
            # One bincount over flat positions (row * D + column): several times faster
            # than np.add.at; it sums in float64 (float32 updates gain precision).
            rows, width = table.shape
            flat = np.add(np.multiply(idx.reshape(-1, 1), width), np.arange(width)).reshape(-1)
            weights = upd.reshape(-1).astype(np.float64, copy=False)
            sums = np.bincount(flat, weights=weights, minlength=rows * width)
            return sums.reshape(rows, width).astype(table.dtype, copy=False)

        return scatter

    def vjp(self, g, a, ins, outs, cts):
        return [g.row_pluck(cts[0], ins[1]), None, None]


class SoftmaxAttrs(Attrs):
    axis: int = -1


def _softmax(x, axis):
    """``exp(x - max) / sum`` along ``axis``, written into one new array.

    Ufunc methods (``np.maximum.reduce``, ``np.add.reduce``) rather than ``np.max`` and
    ``np.sum``: same results, without the wrappers that cost as much as the work on small
    arrays.
    """
    e = np.subtract(x, np.maximum.reduce(x, axis=axis, keepdims=True))
    np.exp(e, out=e)
    return np.divide(e, np.add.reduce(e, axis=axis, keepdims=True), out=e)


def _log_softmax(x, axis):
    """``(x - max) - log(sum(exp(x - max)))`` along ``axis`` (see :func:`_softmax`)."""
    shifted = np.subtract(x, np.maximum.reduce(x, axis=axis, keepdims=True))
    total = np.add.reduce(np.exp(shifted), axis=axis, keepdims=True)
    return np.subtract(shifted, np.log(total, out=total), out=shifted)


class SoftmaxFamily(Op):
    Attrs = SoftmaxAttrs
    flops_per_element = 5  # max, subtract, exp, sum, divide (or log and subtract)

    def infer(self, ins, a):
        require_float(ins[0], f"{self.name} input")
        normalize_axis(a.axis, ins[0].rank)
        return [ins[0]]

    def batched_attrs(self, a, ins, stacked, steps):
        return {"axis": shift_axis(a.axis)}


@register
class Softmax(SoftmaxFamily):
    """``exp(x) / sum(exp(x))`` along ``axis``, computed without overflow."""

    name = "softmax"

    def kernel(self, a, ctx):
        return lambda x: _softmax(x, a.axis)

    def vjp(self, g, a, ins, outs, cts):
        out, ct = outs[0], cts[0]
        return [out * (ct - g.sum(ct * out, axes=[a.axis], keepdims=True))]


@register
class LogSoftmax(SoftmaxFamily):
    """``x - logsumexp(x)`` along ``axis``, computed without overflow."""

    name = "log_softmax"

    def kernel(self, a, ctx):
        return lambda x: _log_softmax(x, a.axis)

    def vjp(self, g, a, ins, outs, cts):
        out, ct = outs[0], cts[0]
        return [ct - out.exp() * g.sum(ct, axes=[a.axis], keepdims=True)]


class CrossEntropyAttrs(Attrs):
    reduction: Literal["mean", "sum", "none"] = "mean"


def _check_ce(logits, targets, mask):
    require_float(logits, "softmax_cross_entropy logits")
    require_int(targets, "softmax_cross_entropy targets")
    if logits.rank < 1 or targets.shape != logits.shape[:-1]:
        raise ShapeError(
            f"targets {targets} must have the shape of logits {logits} without its last axis"
        )
    if mask is not None:
        same_dtype([logits, mask], "logits and mask")
        if mask.shape != targets.shape:
            raise ShapeError(f"mask {mask} must have the shape of targets {targets}")


@functools.lru_cache(maxsize=8)
def _row_starts(rows, classes):
    """Where each row of a C-contiguous (rows, classes) array starts in its ``ravel()``."""
    starts = np.arange(rows) * classes
    starts.flags.writeable = False
    return starts


def _ce_positions(logits, targets):
    """``logits - max`` (last axis) as new C-contiguous rows (N, C), and the positions of
    the targets (checked) in its ``ravel()``.

    The row maxima come from ``np.maximum.reduceat`` over the flat logits: the same values
    as ``np.maximum.reduce(axis=-1)``, about twice as fast on short rows.
    """
    classes = logits.shape[-1]
    flat = targets.reshape(-1)
    if _out_of_range(flat, classes):
        bad = targets[(targets < 0) | (targets >= classes)].flat[0]
        raise IndexError(f"target {bad} is out of range for {classes} classes")
    starts = _row_starts(flat.size, classes)
    x = logits.reshape(-1)  # a copy unless contiguous: the rows below are C-contiguous
    shifted = np.subtract(x.reshape(flat.size, classes), np.maximum.reduceat(x, starts)[:, None])
    return shifted, starts + flat


def _exp_shifted(logits, targets, pick):
    """``exp(logits - max)`` (last axis) as new rows (N, C), their sums (N,), the shifted
    logits at the targets (N,; if ``pick``) and the targets' positions in the rows' ravel."""
    shifted, at = _ce_positions(logits, targets)
    picked = shifted.reshape(-1)[at] if pick else None
    e = np.exp(shifted, out=shifted)
    return e, np.add.reduce(e, axis=1), picked, at


def _loss(logsums, picked, targets, w, reduction):
    """The loss from the rows' log-sum-exps and the picked logits (both shifted by the
    row max): -log softmax at the targets, times the weights ``w`` (see :func:`_weights`)
    and reduced. Overwrites ``logsums``."""
    nll = np.subtract(logsums, picked, out=logsums)
    if w is not None:
        np.multiply(nll, w, out=nll)
    return nll.reshape(targets.shape) if reduction == "none" else np.add.reduce(nll)


def _grad(e, sums, at, logits, ct, w):
    """``(softmax(logits) - onehot(targets))`` times the weights ``w`` and ``ct``, written
    into ``e`` (the rows' exps, with their ``sums``)."""
    np.divide(e, sums[:, None], out=e)
    e.reshape(-1)[at] -= 1
    scale = ct.reshape(-1) if w is None else w * ct.reshape(-1)  # (1,) or (N,)
    np.multiply(e, scale.reshape(-1, 1), out=e)
    return e.reshape(logits.shape)


def _weights(targets, mask, reduction, dtype):
    """Flat per-position loss weights: the mask (None: all ones), divided by the count
    (the mask's sum, at least 1) for 'mean'; without a mask that is one scalar."""
    flat = None if mask is None else mask.reshape(-1)
    if reduction != "mean":
        return flat
    if flat is None:
        return dtype.type(1) / dtype.type(max(targets.size, 1))
    return flat / dtype.type(max(float(np.add.reduce(flat)), 1.0))


class CrossEntropyFamily(Op):
    """What the cross-entropy ops share: ``reduction``, and an optional ``mask`` that a
    mask of ones is the same as leaving out."""

    Attrs = CrossEntropyAttrs
    input_names = ("mask",)
    unit_inputs = ("mask",)


@register
class SoftmaxCrossEntropy(CrossEntropyFamily):
    """Cross-entropy of ``softmax(logits)`` (last axis) against integer ``targets``.

    Optional ``mask`` (shape of targets, logits' dtype) weights positions; ``reduction``
    ``mean`` divides by the mask's sum (the unmasked count, at least 1), ``sum`` adds,
    ``none`` keeps one loss per position. Numerically stable (log-sum-exp).
    """

    name = "softmax_cross_entropy"
    arity = (2, 3)

    def infer(self, ins, a):
        _check_ce(ins[0], ins[1], ins[2] if len(ins) > 2 else None)
        return [like(ins[0], () if a.reduction != "none" else ins[1].shape)]

    def cost(self, ins, outs, a):
        # log_softmax (5 per logit), then pick, weight and sum (3 per position)
        return Cost(elements(ins[:1]) * 5 + elements(ins[1:2]) * 3, nbytes(outs))

    def batched_attrs(self, a, ins, stacked, steps):
        return {"reduction": "none"} if a.reduction == "none" and all(stacked) else None

    def kernel(self, a, ctx):
        def loss(logits, targets, mask=None):
            _, sums, picked, _ = _exp_shifted(logits, targets, pick=True)
            w = _weights(targets, mask, a.reduction, logits.dtype)
            return _loss(np.log(sums, out=sums), picked, targets, w, a.reduction)

        return loss

    def vjp(self, g, a, ins, outs, cts):
        grad = g.softmax_cross_entropy_grad(ins[0], ins[1], cts[0], *ins[2:], reduction=a.reduction)
        return [grad, None, None][: len(ins)]


@register
class SoftmaxCrossEntropyGrad(CrossEntropyFamily):
    """d loss / d logits of softmax_cross_entropy, times the upstream cotangent ``g``."""

    name = "softmax_cross_entropy_grad"
    arity = (3, 4)

    def infer(self, ins, a):
        logits, targets, ct = ins[:3]
        _check_ce(logits, targets, ins[3] if len(ins) > 3 else None)
        want = () if a.reduction != "none" else targets.shape
        if ct.shape != want or ct.dtype != logits.dtype:
            raise ShapeError(f"cotangent {ct} must be {like(logits, want)}")
        return [logits]

    def cost(self, ins, outs, a):
        # log_softmax, exp and scale (7 per logit), weights (2 per position)
        return Cost(elements(ins[:1]) * 7 + elements(ins[1:2]) * 2, nbytes(outs))

    def kernel(self, a, ctx):
        def grad(logits, targets, ct, mask=None):
            e, sums, _, at = _exp_shifted(logits, targets, pick=False)
            return _grad(
                e, sums, at, logits, ct, _weights(targets, mask, a.reduction, logits.dtype)
            )

        return grad


@register
class SoftmaxCrossEntropyAndGrad(CrossEntropyFamily):
    """``softmax_cross_entropy`` and its ``softmax_cross_entropy_grad`` for the cotangent
    ``ct``, from one ``exp`` of the logits: what ``fuse_losses`` makes of the two when
    the cotangent does not depend on the loss (a training step's seed)."""

    name = "softmax_cross_entropy_and_grad"
    arity = (3, 4)

    def infer(self, ins, a):
        (loss,) = get_op("softmax_cross_entropy").infer([ins[0], ins[1], *ins[3:]], a)
        (grad,) = get_op("softmax_cross_entropy_grad").infer(ins, a)
        return [loss, grad]

    def cost(self, ins, outs, a):
        # log_softmax (5 per logit), then the gradient from its exp (3 per logit); picks,
        # weights and sums (5 per position)
        return Cost(elements(ins[:1]) * 8 + elements(ins[1:2]) * 5, nbytes(outs))

    def kernel(self, a, ctx):
        def both(logits, targets, ct, mask=None):
            e, sums, picked, at = _exp_shifted(logits, targets, pick=True)
            w = _weights(targets, mask, a.reduction, logits.dtype)
            loss = _loss(np.log(sums), picked, targets, w, a.reduction)
            return loss, _grad(e, sums, at, logits, ct, w)

        return both
