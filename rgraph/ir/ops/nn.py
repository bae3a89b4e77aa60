"""Neural-network ops: embedding lookup, softmax family, fused softmax cross-entropy."""

from __future__ import annotations

from typing import Literal

import numpy as np

from rgraph.errors import ShapeError
from rgraph.ir.cost import Cost, elements, nbytes
from rgraph.ir.op import (
    Attrs,
    Op,
    like,
    normalize_axis,
    register,
    require_float,
    require_int,
    same_dtype,
    shift_axis,
)
from rgraph.ir.types import make_type


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
            if idx.size and (idx.min() < 0 or idx.max() >= table.shape[0]):
                bad = idx[(idx < 0) | (idx >= table.shape[0])].flat[0]
                raise IndexError(
                    f"index {bad} is out of range for a table of {table.shape[0]} rows"
                )
            return table[idx]

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
            out = np.zeros_like(table)
            np.add.at(out, idx.ravel(), upd.reshape(-1, table.shape[1]))
            return out

        return scatter

    def vjp(self, g, a, ins, outs, cts):
        return [g.row_pluck(cts[0], ins[1]), None, None]


class SoftmaxAttrs(Attrs):
    axis: int = -1


def _softmax(x, axis):
    e = np.exp(x - np.max(x, axis=axis, keepdims=True))
    return e / np.sum(e, axis=axis, keepdims=True)


def _log_softmax(x, axis):
    shifted = x - np.max(x, axis=axis, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=axis, keepdims=True))


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


def _ce_positions(logits, targets):
    """Per-position ``-log softmax(logits)[target]``, the log-softmax, and the flat
    positions ``(rows, targets)`` of the targets in it, targets checked."""
    classes = logits.shape[-1]
    if targets.size and (targets.min() < 0 or targets.max() >= classes):
        bad = targets[(targets < 0) | (targets >= classes)].flat[0]
        raise IndexError(f"target {bad} is out of range for {classes} classes")
    logp = _log_softmax(logits, -1)
    at = (np.arange(targets.size), targets.reshape(-1))
    picked = logp.reshape(-1, classes)[at].reshape(targets.shape)
    return -picked, logp, at


def _weights(targets, mask, reduction, dtype):
    """Per-position loss weights: the mask, divided by the count for 'mean'."""
    w = np.ones(targets.shape, dtype) if mask is None else mask
    if reduction == "mean":
        w = w / dtype.type(max(float(np.sum(w)), 1.0))
    return w


@register
class SoftmaxCrossEntropy(Op):
    """Cross-entropy of ``softmax(logits)`` (last axis) against integer ``targets``.

    Optional ``mask`` (shape of targets, logits' dtype) weights positions; ``reduction``
    ``mean`` divides by the mask's sum (the unmasked count, at least 1), ``sum`` adds,
    ``none`` keeps one loss per position. Numerically stable (log-sum-exp).
    """

    name = "softmax_cross_entropy"
    arity = (2, 3)
    Attrs = CrossEntropyAttrs
    input_names = ("mask",)

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
            nll, _, _ = _ce_positions(logits, targets)
            w = _weights(targets, mask, a.reduction, logits.dtype)
            return nll * w if a.reduction == "none" else np.sum(nll * w, dtype=logits.dtype)

        return loss

    def vjp(self, g, a, ins, outs, cts):
        grad = g.softmax_cross_entropy_grad(ins[0], ins[1], cts[0], *ins[2:], reduction=a.reduction)
        return [grad, None, None][: len(ins)]


@register
class SoftmaxCrossEntropyGrad(Op):
    """d loss / d logits of softmax_cross_entropy, times the upstream cotangent ``g``."""

    name = "softmax_cross_entropy_grad"
    arity = (3, 4)
    Attrs = CrossEntropyAttrs
    input_names = ("mask",)

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
            _, logp, at = _ce_positions(logits, targets)
            p = np.exp(logp)  # the softmax
            p.reshape(-1, p.shape[-1])[at] -= 1.0
            w = _weights(targets, mask, a.reduction, logits.dtype) * ct
            return np.multiply(p, w[..., None], out=p)

        return grad
