"""Elementwise ops: binary arithmetic with numpy broadcasting, and unary maps.

Each op is one call to :func:`binary` or :func:`unary`: its kernel and its VJP rule side by
side. A VJP rule gets ``(x..., out, g)`` as builder values and returns input cotangents;
broadcast cotangents are reduced to the input shapes by the autodiff driver.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import Field

from rgraph.errors import DTypeError, ShapeError
from rgraph.ir import dims
from rgraph.ir.op import (
    Attrs,
    KernelContext,
    Op,
    batches_elementwise,
    broadcast_shapes,
    filled,
    like,
    register,
    rows_line_up,
    same_dtype,
)
from rgraph.ir.types import DType, TensorType, make_type

NUMERIC = ("float32", "float64", "int32", "int64")


class Elementwise(Op):
    """Ops applied element by element: they batch whenever broadcasting lines up."""

    def batched_attrs(self, a, ins, stacked, steps):
        return self.dump_attrs(a) if batches_elementwise(ins, stacked) else None

    def rowwise(self, a, ins, dim):
        return rows_line_up(ins, dim)

    @property
    def writes_out(self) -> bool:  # type: ignore[override]
        return isinstance(getattr(type(self), "fn", None), np.ufunc)


class Binary(Elementwise):
    """``out = fn(a, b)`` elementwise, broadcasting; inputs share one dtype."""

    arity = (2, 2)
    fn: ClassVar[Callable[..., Any]]
    rule: ClassVar[tuple[Callable[..., Any], Callable[..., Any]] | None]  # one per input
    dtypes: ClassVar[tuple[str, ...]] = NUMERIC

    def infer(self, ins: Sequence[TensorType], a: Any) -> list[TensorType]:
        dtype = same_dtype(ins)
        if dtype not in self.dtypes:
            raise DTypeError(f"'{self.name}' takes {'/'.join(self.dtypes)}, got {ins[0]}")
        return [make_type(dtype, broadcast_shapes(ins[0].shape, ins[1].shape))]

    def kernel(self, a: Any, ctx: KernelContext) -> Any:
        return type(self).fn

    @property
    def differentiable(self) -> bool:
        return self.rule is not None

    def vjp(self, g, a, ins, outs, cts):
        return [rule(ins[0], ins[1], outs[0], cts[0]) for rule in self.rule]  # type: ignore[union-attr]

    def vjp_node(self, g, node, cts, needs):
        """Only the wanted inputs' rules run: ``x * 2.0`` emits no gradient for ``2.0``;
        and no values are looked up when the cotangent only passes ``through``."""
        rule_x, rule_y = self.rule  # type: ignore[misc]
        need_x, need_y = needs
        ct = cts[0]
        if (rule_x is through or not need_x) and (rule_y is through or not need_y):
            return [ct if need_x else None, ct if need_y else None]
        value = g.value
        x, y = node.inputs
        x, y, out = value(x), value(y), value(node.outputs[0].name)
        return [
            rule_x(x, y, out, ct) if need_x else None,
            rule_y(x, y, out, ct) if need_y else None,
        ]


class Unary(Elementwise):
    """``out = fn(x)`` elementwise."""

    fn: ClassVar[Callable[..., Any]]
    rule: ClassVar[Callable[..., Any] | None]
    dtypes: ClassVar[tuple[str, ...]] = ("float32", "float64")

    def infer(self, ins: Sequence[TensorType], a: Any) -> list[TensorType]:
        if ins[0].dtype not in self.dtypes:
            raise DTypeError(f"'{self.name}' takes {'/'.join(self.dtypes)}, got {ins[0]}")
        return [ins[0]]

    def kernel(self, a: Any, ctx: KernelContext) -> Any:
        return type(self).fn

    @property
    def differentiable(self) -> bool:
        return self.rule is not None

    def vjp(self, g, a, ins, outs, cts):
        return [type(self).rule(ins[0], outs[0], cts[0])]

    def vjp_node(self, g, node, cts, needs):
        """As :meth:`Op.vjp_node`, without parsing the (absent) attributes; no values
        are looked up when the cotangent only passes ``through``."""
        if type(self).rule is through:
            return [cts[0]]
        return self.vjp(g, None, [g.value(node.inputs[0])], [g.value(node.outputs[0].name)], cts)


def through(*args: Any) -> Any:
    """The VJP rule of an input whose cotangent is the output's (``add``, ``identity``):
    the last argument, passed on; ``vjp_node`` knows it and builds no values."""
    return args[-1]


def _define(base: type[Op], name: str, fn: Callable, rule: Callable | None, **extra: Any) -> None:
    register(type(name, (base,), {"name": name, "fn": staticmethod(fn), "rule": rule, **extra}))


def binary(name: str, fn: Callable, rule: tuple[Callable, Callable], **extra: Any) -> None:
    """Register a broadcasting binary op with kernel ``fn`` and VJP rules
    ``(rule_a, rule_b)``, each ``rule(a, b, out, g)`` giving one input's cotangent."""
    _define(Binary, name, fn, rule, **extra)


def unary(name: str, fn: Callable, rule: Callable | None, **extra: Any) -> None:
    """Register a unary op with kernel ``fn`` and VJP ``rule(x, out, g)``."""
    _define(Unary, name, fn, staticmethod(rule) if rule else None, **extra)


def _negative(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``-x``, exactly (signed zeros, infinities and NaNs too), as ``x * -1``: NumPy 2.4's
    ``np.negative`` reads the wrong elements of a float64 ``(n, 1)`` column of a wider
    array when ``out`` is such a column too (how a concat's pieces are written)."""
    return np.multiply(x, -1, out=out)


def _sigmoid(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """``1 / (1 + exp(-x))``: relatively accurate in both tails (``0.5 + 0.5 tanh(x/2)``
    cancels for very negative x), and ``exp`` costs less than half of float64 ``tanh``.
    ``-x`` is capped where ``exp`` would overflow: the result there is below the
    dtype's smallest normal number either way."""
    cap = 80.0 if x.dtype == np.float32 else 700.0
    t = _negative(x, out=out)
    if type(t) is not np.ndarray:  # a 0-d input gives a scalar
        return 1.0 / (1.0 + np.exp(np.minimum(t, cap)))
    np.minimum(t, cap, out=t)
    np.exp(t, out=t)
    t += 1.0
    return np.divide(1.0, t, out=t)


binary("add", np.add, (through, through))
binary("sub", np.subtract, (through, lambda a, b, out, g: -g))
binary("eltmul", np.multiply, (lambda a, b, out, g: g * b, lambda a, b, out, g: g * a))
binary(
    "div",
    np.true_divide,
    (lambda a, b, out, g: g / b, lambda a, b, out, g: -(g * out) / b),
    dtypes=("float32", "float64"),
)

unary("neg", _negative, lambda x, out, g: -g, dtypes=NUMERIC, writes_out=True)
unary("identity", lambda x: x, through, dtypes=(*NUMERIC, "bool"), flops_per_element=0)
unary("exp", np.exp, lambda x, out, g: g * out)
unary("log", np.log, lambda x, out, g: g / x)
unary("tanh", np.tanh, lambda x, out, g: g * (1.0 - out * out))
unary("sigmoid", _sigmoid, lambda x, out, g: g * (out * (1.0 - out)), writes_out=True)
unary("relu", lambda x: np.maximum(x, 0), lambda x, out, g: g * out.sign())
# The derivative of sign is zero almost everywhere: nothing flows back.
unary("sign", np.sign, lambda x, out, g: None, dtypes=NUMERIC)


class GateAttrs(Attrs):
    # Widths of consecutive column blocks of the last axis, and which are sigmoid gates.
    sizes: list[int]
    sigmoid: list[bool]
    # What the input holds: "tanh", z / 2 on sigmoid blocks and z on the others;
    # "exp", -z on sigmoid blocks and -2 z on the others.
    form: Literal["tanh", "exp"] = "tanh"


# Sizes from which exp is cheaper than tanh in all (numpy's float64 tanh is not vectorised).
_EXP_FROM = {np.dtype(np.float64): 512, np.dtype(np.float32): 2048}
_EXP_CAP = {np.dtype(np.float64): 700.0, np.dtype(np.float32): 80.0}


def gate_form(dtype: str, width: int) -> str:
    """The form to fold into the weights for gates ``width`` wide: ``"exp"`` when every
    call (``width`` times the batch) is large enough for exp to be the cheaper one."""
    return "exp" if width >= _EXP_FROM[np.dtype(dtype)] else "tanh"


def _runs(a: GateAttrs, kind: bool) -> list[tuple[Any, slice]]:
    """Index expressions of the maximal runs of blocks of one kind."""
    runs: list[tuple[int, int]] = []
    lo = 0
    for size, sigmoid in zip(a.sizes, a.sigmoid):
        if sigmoid == kind:
            if runs and runs[-1][1] == lo:
                runs[-1] = (runs[-1][0], lo + size)
            else:
                runs.append((lo, lo + size))
        lo += size
    return [(..., slice(start, stop)) for start, stop in runs]


def _known_size(ctx: KernelContext) -> tuple[int, np.dtype] | None:
    """The size and dtype of the one input ``ctx`` gives the type of, if its dims are
    bound."""
    if len(ctx.inputs) != 1:
        return None
    t = ctx.inputs[0]
    try:
        size = math.prod(dims.evaluate(d, ctx.dims) if isinstance(d, str) else d for d in t.shape)
    except KeyError:
        return None
    return size, t.np_dtype


def _tanh_form(ctx: KernelContext, gates: list) -> Any:
    """The tanh form's kernel for an input of known size and dtype below the size where
    ``exp`` is cheaper, with one run of sigmoid blocks: its four numpy calls and little
    else (a loop step calls it once); None when that is not known."""
    known = _known_size(ctx)
    if known is None or len(gates) != 1:
        return None
    size, dtype = known
    if size >= _EXP_FROM[dtype]:
        return None
    half, (r,) = np.array(0.5, dtype), gates  # 0-d: numpy takes it faster than a float
    tanh, multiply, add, empty_like = np.tanh, np.multiply, np.add, np.empty_like

    def activate(x, out=None, part=None, *_):  # (pieces of out: see out_views)
        if out is None:
            out = empty_like(x)
        tanh(x, out)
        if part is None:
            part = out[r]
        multiply(part, half, part)
        add(part, half, part)
        return out

    return activate


@register
class GateActivation(Op):
    """``sigmoid(z)`` on the last axis' column blocks marked ``sigmoid``, ``tanh(z)`` on
    the others, from the input ``form``: ``"tanh"`` holds ``z / 2`` on sigmoid blocks
    (``sigmoid(z) = (1 + tanh(z / 2)) / 2``) and ``z`` on the others; ``"exp"`` holds
    ``-z`` (``sigmoid(z) = 1 / (1 + exp(-z))``) and ``-2 z`` (``tanh(z) = 2 sigmoid(2 z) - 1``).

    The gates of an LSTM or a GRU in one call: ``merge_activations`` folds the scaling
    into the weights, so one ``tanh`` or one ``exp`` covers every gate. Large arrays in
    the tanh form go through ``exp`` too (faster per element); the error is a few ulps
    of 1, absolute.
    """

    name = "gate_activation"
    Attrs = GateAttrs
    writes_out = True
    flops_per_element = 3
    specializes = True  # (and the tanh form's choice of calls depends on the size)
    uses_dims = True

    def infer(self, ins, a):
        x = ins[0]
        if x.dtype not in ("float32", "float64") or x.rank < 1:
            raise DTypeError(f"'gate_activation' takes a float array of rank >= 1, got {x}")
        if len(a.sizes) != len(a.sigmoid) or min(a.sizes, default=0) < 1:
            raise ShapeError(f"gate_activation needs one flag per block, blocks of size >= 1: {a}")
        if x.shape[-1] != sum(a.sizes):
            raise ShapeError(f"blocks {a.sizes} do not sum to the last axis of {x}")
        return [x]

    def batched_attrs(self, a, ins, stacked, steps):
        return self.dump_attrs(a)

    def overflows(self, a, ctx):
        # exp(-z) for a very negative z, where 1 / (1 + inf) is the 0 wanted: the exp form,
        # and the tanh form from the size where it goes through exp (or of unknown size).
        if a.form == "exp":
            return True
        known = _known_size(ctx)
        return known is None or known[0] >= _EXP_FROM[known[1]]

    def out_views(self, a, ctx):
        # What the kernels scale in place: the runs of sigmoid blocks, then of tanh blocks.
        return _runs(a, True) + _runs(a, False)

    def kernel(self, a, ctx):
        gates, cells = _runs(a, True), _runs(a, False)
        tanh_form, quiet = a.form == "tanh", ctx.quiet_overflow
        constants: dict[np.dtype, tuple[np.ndarray, ...]] = {}
        n = len(gates)

        def activate(x, out=None, *pieces):  # (pieces of out: see out_views)
            dtype = x.dtype
            c = constants.get(dtype)
            if c is None:  # 0-d arrays: numpy takes them faster than Python floats
                c = constants[dtype] = tuple(
                    np.array(v, dtype) for v in (0.5, 1.0, 2.0, -2.0, _EXP_CAP[dtype])
                )
            half, one, two, minus_two, cap = c
            if out is None:
                out = np.empty_like(x)
            if tanh_form and x.size < _EXP_FROM[dtype]:
                np.tanh(x, out)
                for part in pieces[:n] if pieces else [out[r] for r in gates]:
                    np.multiply(part, half, part)
                    np.add(part, half, part)
                return out
            if tanh_form:
                x = np.multiply(x, minus_two, out)  # the exp form's input
            if not quiet:  # exp(700) is finite: a result within 1e-304 of 0
                x = np.minimum(x, cap, out=out)
            np.exp(x, out)
            np.add(out, one, out)
            np.reciprocal(out, out)  # sigmoid(z) everywhere, sigmoid(2 z) on tanh blocks
            for part in pieces[n:] if pieces else [out[r] for r in cells]:
                np.multiply(part, two, part)
                np.subtract(part, one, part)
            return out

        return (_tanh_form(ctx, gates) if tanh_form else None) or activate

    def vjp(self, g, a, ins, outs, cts):
        # In the tanh form, tanh' = 1 - out^2 and (sigmoid(2 u))' = 2 out (1 - out), which
        # is (1 - out^2) - (1 - out)^2; the exp form's input is -2 u.
        out = outs[0]
        mask = np.repeat(np.array(a.sigmoid, ins[0].dtype), a.sizes)
        rest = 1.0 - out
        slope = (1.0 - out * out) - g.const(mask) * (rest * rest)
        return [cts[0] * (slope if a.form == "tanh" else slope * -0.5)]


class CastAttrs(Attrs):
    dtype: DType


@register
class Cast(Elementwise):
    """Convert to another dtype (rgraph never converts implicitly)."""

    name = "cast"
    Attrs = CastAttrs

    def infer(self, ins, a):
        return [like(ins[0], dtype=a.dtype)]

    def kernel(self, a, ctx):
        dtype = np.dtype(a.dtype)
        return lambda x: x.astype(dtype)

    def vjp(self, g, a, ins, outs, cts):
        if not (ins[0].type.is_float and outs[0].type.is_float):
            return [None]
        return [cts[0].cast(dtype=ins[0].dtype)]


class FullLikeAttrs(Attrs):
    value: float = Field(allow_inf_nan=True)


@register
class FullLike(Elementwise):
    """A tensor of ``x``'s type filled with ``value`` (seeds and zero gradients)."""

    name = "full_like"
    flops_per_element = 0  # fills memory only
    reads_values = False
    Attrs = FullLikeAttrs

    def infer(self, ins, a):
        return [ins[0]]

    def kernel(self, a, ctx):
        return lambda x: filled(x.shape, x.dtype, a.value)

    def vjp(self, g, a, ins, outs, cts):
        return [None]
