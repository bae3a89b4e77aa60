"""The op test table: one or more rows per registered op.

Each :class:`Case` names an op, its input specs (shapes, dtypes, value generators), its
attributes, an independent numpy reference, which inputs are differentiable, and the
tolerances. ``tests/test_ops.py`` expands the table into shape-inference, kernel and
finite-difference gradient tests. Adding an op means adding a row here (a test fails
until every registered op has one).

The references are written from the definitions with plain numpy; they never call
rgraph's kernels. Shapes are non-square wherever that can catch a swapped axis.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

T = "T"  # an argument whose dtype is the row's dtype (each row runs for several dtypes)
FLOATS = ("float64", "float32")
INTS = ("int64", "int32")

Gen = Callable[[np.random.Generator, tuple[int, ...], np.dtype], np.ndarray]


# --- value generators ----------------------------------------------------------------


def uniform(lo: float = -2.0, hi: float = 2.0) -> Gen:
    return lambda rng, shape, dtype: rng.uniform(lo, hi, size=shape).astype(dtype)


def away(lo: float = 0.25, hi: float = 2.0) -> Gen:
    """Either sign, magnitude in [lo, hi]: no values near a kink at 0 (relu, sign, 1/x)."""

    def gen(rng, shape, dtype):
        mag = rng.uniform(lo, hi, size=shape)
        return (np.where(rng.random(shape) < 0.5, -mag, mag)).astype(dtype)

    return gen


def positive(lo: float = 0.5, hi: float = 3.0) -> Gen:
    return uniform(lo, hi)


def ints(lo: int, hi: int) -> Gen:
    """Integers in [lo, hi)."""
    return lambda rng, shape, dtype: rng.integers(lo, hi, size=shape).astype(dtype)


def bools() -> Gen:
    return lambda rng, shape, dtype: rng.random(shape) < 0.5


def mask01() -> Gen:
    """A 0/1 mask in the row's float dtype with at least one 1 and (if it can) one 0."""

    def gen(rng, shape, dtype):
        m = (rng.random(shape) < 0.6).astype(dtype)
        if m.size:
            m.flat[0] = 1
        if m.size > 1:
            m.flat[-1] = 0
        return m

    return gen


def zeros() -> Gen:
    return lambda rng, shape, dtype: np.zeros(shape, dtype)


# --- the row types -------------------------------------------------------------------


@dataclass(frozen=True)
class Arg:
    """One input of a row.

    ``shape`` may hold symbolic dims (``"B"``, ``"T"``), sized by the row's ``bindings``.
    ``dtype`` is a dtype name or :data:`T` (the row's dtype). ``diff`` says whether the
    gradient check covers this input (default: float inputs). ``zero_grad`` marks a float
    input that the output does not depend on: its gradient must be exactly zero.
    ``keyword`` passes the input by keyword (``mask=``).
    """

    shape: tuple[Any, ...]
    dtype: str = T
    gen: Gen = field(default_factory=uniform)
    diff: bool | None = None
    zero_grad: bool = False
    keyword: str | None = None

    def resolve_dtype(self, row_dtype: str) -> str:
        return row_dtype if self.dtype == T else self.dtype

    def differentiable(self, row_dtype: str) -> bool:
        if self.diff is not None:
            return self.diff
        return self.resolve_dtype(row_dtype) in FLOATS


def A(shape, dtype: str = T, gen: Gen | None = None, **kw: Any) -> Arg:
    """Shorthand for :class:`Arg`."""
    return Arg(tuple(shape), dtype, gen or uniform(), **kw)


DEFAULT_TOL = {
    "float64": (1e-10, 1e-12),
    "float32": (2e-5, 2e-6),
}

Grad = Literal["check", "raises", "none"]


@dataclass(frozen=True)
class Case:
    """One row: ``op(*args, **attrs)`` should equal ``ref(*arrays)``.

    ``attrs`` is a mapping, or a callable of the row's dtype returning one (a loop body
    must have the row's dtype). ``ref`` takes the input arrays in ``args`` order and
    returns an array (or a tuple for multi-output ops) of the output's dtype.
    ``grad``: ``check`` runs gradcheck on the differentiable inputs, ``raises`` expects
    NotDifferentiableError, ``none`` has no gradient test (integer or bool outputs).
    ``bindings`` size the symbolic dims; a symbolic row gives at least two, and
    ``sym_out`` the output shapes it must infer. ``ref_dtype`` passes the dtype to compute
    in as ``ref(..., dtype=...)`` (for ops with no inputs to take it from).
    """

    op: str
    args: tuple[Arg, ...]
    ref: Callable[..., Any]
    attrs: Mapping[str, Any] | Callable[[str], Mapping[str, Any]] = field(default_factory=dict)
    label: str = ""
    dtypes: tuple[str, ...] = FLOATS
    grad: Grad = "check"
    tol: Mapping[str, tuple[float, float]] = field(default_factory=lambda: DEFAULT_TOL)
    bindings: tuple[Mapping[str, int], ...] = ({},)
    ref_dtype: bool = False
    sym_out: tuple[tuple[Any, ...], ...] | None = None

    def attrs_for(self, dtype: str) -> Mapping[str, Any]:
        """The attrs for the row's dtype (a callable builds dtype-dependent ones)."""
        return self.attrs(dtype) if callable(self.attrs) else self.attrs

    @property
    def id(self) -> str:
        return f"{self.op}-{self.label}" if self.label else self.op

    @property
    def symbolic(self) -> bool:
        return self.sym_out is not None


CASES: list[Case] = []


def case(op: str, args, ref, label: str = "", **kw: Any) -> None:
    CASES.append(Case(op, tuple(args), ref, label=label, **kw))


SIZES = ({"B": 2, "T": 3}, {"B": 3, "T": 1})  # two sizes for every symbolic row
LONG = ({"B": 2, "T": 3}, {"B": 3, "T": 2})  # for ops whose gradient is zero at T = 1

# --- references ----------------------------------------------------------------------


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _softmax(x, axis):
    # The plain definition (inputs are small, so no shift is needed); rows with large
    # inputs use the shift-invariant _softmax_centered instead.
    e = np.exp(x)
    return e / e.sum(axis=axis, keepdims=True)


def _softmax_centered(x, axis):
    return _softmax(x - x.mean(axis=axis, keepdims=True), axis)


def _log_softmax(x, axis):
    return x - np.log(np.exp(x).sum(axis=axis, keepdims=True))


def _log_softmax_centered(x, axis):
    c = x - x.mean(axis=axis, keepdims=True)
    return _log_softmax(c, axis)


def _ce(reduction, centered=False):
    def ref(logits, targets, mask=None):
        logp = (_log_softmax_centered if centered else _log_softmax)(logits, -1)
        nll = np.zeros(targets.shape, logits.dtype)
        for pos in np.ndindex(targets.shape):
            nll[pos] = -logp[pos][targets[pos]]
        w = np.ones(targets.shape, logits.dtype) if mask is None else mask
        if reduction == "none":
            return nll * w
        total = np.asarray((nll * w).sum(), logits.dtype)
        if reduction == "sum":
            return total
        return np.asarray(total / max(w.sum(), 1), logits.dtype)

    return ref


def _ce_grad(reduction):
    def ref(logits, targets, ct, mask=None):
        p = _softmax(logits, -1)
        onehot = targets[..., None] == np.arange(logits.shape[-1])
        w = np.ones(targets.shape, logits.dtype) if mask is None else mask
        if reduction == "mean":
            w = w / max(w.sum(), 1)
        return ((p - onehot) * (w * ct)[..., None]).astype(logits.dtype)

    return ref


def _ce_and_grad(reduction):
    def ref(logits, targets, ct, mask=None):
        return _ce(reduction)(logits, targets, mask), _ce_grad(reduction)(logits, targets, ct, mask)

    return ref


def _einsum_matmul(ta, tb):
    def ref(a, b):
        a = a.swapaxes(-1, -2) if ta else a
        b = b.swapaxes(-1, -2) if tb else b
        return np.einsum("...ij,...jk->...ik", a, b)

    return ref


def _reduce(fn, axes, keepdims):
    return lambda x: fn(x, axis=None if axes is None else tuple(axes), keepdims=keepdims)


def _numel(axes):
    def ref(x):
        picked = range(x.ndim) if axes is None else axes
        return np.asarray(math.prod(x.shape[i] for i in picked), x.dtype)

    return ref


def _expand(axes):
    def ref(x):
        rank = x.ndim + len(axes)
        where = {ax % rank for ax in axes}
        it = iter(x.shape)
        return x.reshape([1 if i in where else next(it) for i in range(rank)])

    return ref


def _transpose(perm):
    letters = "abcdefgh"

    def ref(x):
        p = list(range(x.ndim))[::-1] if perm is None else perm
        src = letters[: x.ndim]
        return np.einsum(f"{src}->{''.join(src[i] for i in p)}", x)

    return ref


def _reshape(shape):
    def ref(x):
        target = list(shape)
        if -1 in target:
            known = math.prod(d for d in target if d != -1)
            target[target.index(-1)] = x.size // known
        return x.reshape(target)

    return ref


def _concat(axis):
    def ref(*xs):
        ax = axis % xs[0].ndim
        shape = list(xs[0].shape)
        shape[ax] = sum(x.shape[ax] for x in xs)
        out = np.empty(shape, xs[0].dtype)
        at = 0
        for x in xs:
            view = np.moveaxis(out, ax, 0)
            view[at : at + x.shape[ax]] = np.moveaxis(x, ax, 0)
            at += x.shape[ax]
        return out

    return ref


def _split(axis, sizes):
    def ref(x):
        moved = np.moveaxis(x, axis, 0)
        bounds = np.cumsum([0, *sizes])
        return tuple(np.moveaxis(moved[lo:hi], 0, axis) for lo, hi in itertools.pairwise(bounds))

    return ref


def _slice_positions(n, start, stop, step):
    return list(range(n))[slice(start, stop, step)]


def _slice(axis, start=None, stop=None, step=1):
    def ref(x):
        idx = _slice_positions(x.shape[axis], start, stop, step)
        return np.take(x, np.asarray(idx, dtype=np.intp), axis=axis)

    return ref


def _slice_grad(axis, start=None, stop=None, step=1):
    def ref(upd, like):
        out = np.zeros_like(like)
        idx = _slice_positions(like.shape[axis], start, stop, step)
        view = np.moveaxis(out, axis, 0)
        moved = np.moveaxis(upd, axis, 0)
        for k, i in enumerate(idx):
            view[i] = moved[k]
        return out

    return ref


def _row_pluck(table, idx):
    rows = [table[i] for i in idx.ravel()]
    return np.array(rows, table.dtype).reshape((*idx.shape, table.shape[1]))


def _row_pluck_grad(upd, idx, table):
    out = np.zeros_like(table)
    flat = upd.reshape(-1, table.shape[1])
    for k, i in enumerate(idx.ravel()):
        out[i] += flat[k]
    return out


BINARY_REFS: dict[str, Callable[..., Any]] = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "eltmul": lambda a, b: a * b,
    "div": lambda a, b: a / b,
}

# --- elementwise -----------------------------------------------------------------------

BROADCASTS = [
    ("same", (3, 4), (3, 4)),
    ("col_row", (3, 1), (1, 4)),
    ("rank3_vec", (2, 3, 4), (4,)),
    ("vec_rank3", (4,), (2, 3, 4)),
    ("scalar", (2, 3), ()),
    ("mid1", (2, 1, 4), (3, 1)),
]
for _op, _ref in BINARY_REFS.items():
    for _label, _sa, _sb in BROADCASTS:
        _gb = away(0.5, 2.0) if _op == "div" else uniform()
        case(_op, [A(_sa), A(_sb, gen=_gb)], _ref, _label)
    if _op != "div":
        case(
            _op,
            [A((3, 1), gen=ints(-5, 6)), A((1, 4), gen=ints(-5, 6))],
            _ref,
            "int",
            dtypes=INTS,
            grad="none",
        )
    case(
        _op,
        [A(("B", "T", 3)), A((3,), gen=away(0.5, 2.0))],
        _ref,
        "sym",
        bindings=SIZES,
        sym_out=(("B", "T", 3),),
    )

case("neg", [A((2, 3))], lambda x: -x)
case("neg", [A((2, 3), gen=ints(-5, 6))], lambda x: -x, "int", dtypes=INTS, grad="none")
case("identity", [A((3, 2))], lambda x: x.copy())
case("identity", [A((3, 2), gen=ints(-5, 6))], lambda x: x.copy(), "int", dtypes=INTS, grad="none")
case(
    "identity", [A((3, 2), gen=bools())], lambda x: x.copy(), "bool", dtypes=("bool",), grad="none"
)
case("exp", [A((2, 3))], np.exp)
case("log", [A((2, 3), gen=positive())], np.log)
case("tanh", [A((3, 2))], lambda x: (np.exp(2 * x) - 1) / (np.exp(2 * x) + 1))
case(
    "tanh",
    [A(("B", "T", 3))],
    lambda x: (np.exp(2 * x) - 1) / (np.exp(2 * x) + 1),
    "sym",
    bindings=SIZES,
    sym_out=(("B", "T", 3),),
)
case("sigmoid", [A((2, 5), gen=uniform(-4, 4))], _sigmoid)
case("relu", [A((3, 4), gen=away(0.2, 2.0))], lambda x: x * (x > 0))


# What gate_activation's input holds, per form and block kind: z times this.
_GATE_INPUT = {("tanh", True): 0.5, ("tanh", False): 1.0, ("exp", True): -1.0, ("exp", False): -2.0}


def _gates(sizes, sigmoid, form="tanh"):
    def ref(x):
        out = np.empty_like(x)
        for lo, size, gate in zip(np.cumsum([0, *sizes[:-1]]), sizes, sigmoid):
            z = x[..., lo : lo + size] / _GATE_INPUT[form, gate]
            out[..., lo : lo + size] = _sigmoid(z) if gate else np.tanh(z)
        return out

    return ref


for label, shape, sizes, sigmoid, form in [
    ("lstm", (2, 8), [6, 2], [True, False], "tanh"),  # through tanh (few elements)
    ("between", (2, 3, 7), [2, 2, 1, 2], [True, False, True, False], "tanh"),
    ("runs", (2, 7), [2, 1, 3, 1], [True, True, False, False], "tanh"),
    ("all_sigmoid", (3, 4), [4], [True], "tanh"),
    ("large", (3, 1000), [750, 250], [True, False], "tanh"),  # through exp (large)
    ("large_between", (3, 1000), [250, 250, 250, 250], [False, True, False, True], "tanh"),
    ("exp_form", (2, 8), [6, 2], [True, False], "exp"),
    ("exp_between", (2, 3, 7), [2, 2, 1, 2], [False, True, False, True], "exp"),
]:
    case(
        "gate_activation",
        [A(shape, gen=uniform(-4, 4))],
        _gates(sizes, sigmoid, form),
        label,
        attrs={"sizes": sizes, "sigmoid": sigmoid, "form": form},
    )


case(
    "relu",
    [A(("B", 4), gen=away(0.2, 2.0))],
    lambda x: x * (x > 0),
    "sym",
    bindings=SIZES,
    sym_out=(("B", 4),),
)


# sign: zero almost-everywhere derivative; inputs kept away from the kink at 0.
def _sign(x):
    return np.where(x > 0, 1, np.where(x < 0, -1, 0)).astype(x.dtype)


case("sign", [A((3, 4), gen=away(0.2, 2.0), zero_grad=True)], _sign)
case(
    "sign",
    [A((3, 4), gen=ints(-3, 4))],
    _sign,
    "int",
    dtypes=INTS,
    grad="none",
)

for _to in ("float64", "float32"):
    case("cast", [A((2, 3))], lambda x, _to=_to: x.astype(_to), f"to_{_to}", attrs={"dtype": _to})
case(
    "cast",
    [A((2, 3), gen=uniform(-4.9, 4.9))],
    lambda x: np.trunc(x).astype("int64"),
    "to_int64",
    attrs={"dtype": "int64"},
    grad="none",
)
case(
    "cast",
    [A((2, 3), gen=ints(-5, 6))],
    lambda x: x.astype("float64"),
    "int_to_float64",
    attrs={"dtype": "float64"},
    dtypes=INTS,
    grad="none",
)
case(
    "cast",
    [A((2, 3), gen=bools())],
    lambda x: np.where(x, 1.0, 0.0).astype("float32"),
    "bool_to_float32",
    attrs={"dtype": "float32"},
    dtypes=("bool",),
    grad="none",
)
case(
    "full_like",
    [A((2, 3), zero_grad=True)],
    lambda x: np.ones(x.shape, x.dtype) * x.dtype.type(2.5),
    attrs={"value": 2.5},
)
case(
    "full_like",
    [A((2, 3))],
    lambda x: np.array(np.broadcast_to(x.dtype.type(-np.inf), x.shape)),
    "neg_inf",
    attrs={"value": float("-inf")},
    grad="none",
)
case(
    "full_like",
    [A((3, 2), gen=ints(-5, 6))],
    lambda x: np.zeros_like(x) + 7,
    "int",
    attrs={"value": 7.0},
    dtypes=INTS,
    grad="none",
)

# --- linalg ----------------------------------------------------------------------------

for _ta in (False, True):
    for _tb in (False, True):
        _sa = (4, 3) if _ta else (3, 4)
        _sb = (5, 4) if _tb else (4, 5)
        case(
            "matmul",
            [A(_sa), A(_sb)],
            _einsum_matmul(_ta, _tb),
            f"ta{int(_ta)}_tb{int(_tb)}",
            attrs={"transpose_a": _ta, "transpose_b": _tb},
        )
case("matmul", [A((2, 3, 4)), A((4, 5))], _einsum_matmul(False, False), "batch_lhs")
case("matmul", [A((3, 4)), A((2, 4, 5))], _einsum_matmul(False, False), "batch_rhs")
case(
    "matmul",
    [A((2, 1, 3, 4)), A((3, 5, 4))],
    _einsum_matmul(False, True),
    "batch_broadcast_tb",
    attrs={"transpose_b": True},
)
case(
    "matmul",
    [A((2, 4, 3)), A((2, 4, 5))],
    _einsum_matmul(True, False),
    "batch_ta",
    attrs={"transpose_a": True},
)
case(
    "matmul",
    [A(("B", 3)), A((3, 4))],
    _einsum_matmul(False, False),
    "sym",
    bindings=SIZES,
    sym_out=(("B", 4),),
)
case(
    "matmul",
    [A(("T", "B", 3)), A((5, 3))],
    _einsum_matmul(False, True),
    "sym_batch",
    attrs={"transpose_b": True},
    bindings=SIZES,
    sym_out=(("T", "B", 5),),
)

# --- reductions ------------------------------------------------------------------------

for _op, _fn in (("sum", np.sum), ("mean", np.mean)):
    for _axes, _keep in (
        (None, False),
        (None, True),
        ((0, 2), False),
        ((1,), True),
        ((-1,), False),
    ):
        _label = f"axes_{'all' if _axes is None else '_'.join(map(str, _axes))}"
        case(
            _op,
            [A((2, 3, 4))],
            _reduce(_fn, _axes, _keep),
            _label + ("_keep" if _keep else ""),
            attrs={"axes": None if _axes is None else list(_axes), "keepdims": _keep},
        )
    case(
        _op,
        [A(("B", "T", 3))],
        _reduce(_fn, (0,), False),
        "sym",
        attrs={"axes": [0]},
        bindings=SIZES,
        sym_out=(("T", 3),),
    )
    case(
        _op,
        [A(("B", "T", 3))],
        _reduce(_fn, (1,), True),
        "sym_keep",
        attrs={"axes": [1], "keepdims": True},
        bindings=SIZES,
        sym_out=(("B", 1, 3),),
    )

case("numel", [A((2, 3, 4), zero_grad=True)], _numel(None), "all")
case("numel", [A((2, 3, 4), zero_grad=True)], _numel((0, 2)), "axes_0_2", attrs={"axes": [0, 2]})
case("numel", [A((2, 3))], _numel(None), "int", dtypes=INTS, grad="none")
case(
    "numel",
    [A(("B", "T"), zero_grad=True)],
    _numel(None),
    "sym",
    bindings=SIZES,
    sym_out=((),),
)

for _axes in ((0,), (1, 3), (-1,)):
    case(
        "expand_dims",
        [A((3, 4))],
        _expand(_axes),
        "axes_" + "_".join(map(str, _axes)),
        attrs={"axes": list(_axes)},
    )
case(
    "expand_dims",
    [A(("B", 3))],
    _expand((1,)),
    "sym",
    attrs={"axes": [1]},
    bindings=SIZES,
    sym_out=(("B", 1, 3),),
)

case(
    "broadcast_like",
    [A((3, 1)), A((2, 3, 4), zero_grad=True)],
    lambda x, like: x + np.zeros_like(like),
    "col_to_rank3",
)
case(
    "broadcast_like",
    [A((4,)), A((3, 4), zero_grad=True)],
    lambda x, like: x + np.zeros_like(like),
    "vec_to_matrix",
)
case(
    "broadcast_like",
    [A((3,)), A(("B", "T", 3), zero_grad=True)],
    lambda x, like: x + np.zeros_like(like),
    "sym",
    bindings=SIZES,
    sym_out=(("B", "T", 3),),
)

# --- shape ops -------------------------------------------------------------------------

for _shape in ((4, 6), (6, -1), (-1,), (3, 1, 8), (2, -1, 3)):
    case(
        "reshape",
        [A((2, 3, 4))],
        _reshape(_shape),
        "to_" + "_".join(str(d) for d in _shape).replace("-1", "m1"),
        attrs={"shape": list(_shape)},
    )
case(
    "reshape",
    [A(("T", "B", 3))],
    lambda x: x.reshape(-1, 3),
    "sym_merge",
    attrs={"shape": ["T*B", 3]},
    bindings=SIZES,
    sym_out=(("B*T", 3),),
)
case(
    "reshape",
    [A(("T", "B", 3))],
    lambda x: x.reshape(-1, 3),
    "sym_hole",
    attrs={"shape": [-1, 3]},
    bindings=SIZES,
    sym_out=(("B*T", 3),),
)
case(
    "reshape",
    [A(("B", 6))],
    lambda x: x.reshape(x.shape[0], 2, 3),
    "sym_split",
    attrs={"shape": ["B", 2, -1]},
    bindings=SIZES,
    sym_out=(("B", 2, 3),),
)

for _perm in (None, (1, 0, 2), (2, 0, 1)):
    case(
        "transpose",
        [A((2, 3, 4))],
        _transpose(_perm),
        "perm_" + ("rev" if _perm is None else "_".join(map(str, _perm))),
        attrs={} if _perm is None else {"perm": list(_perm)},
    )
case("transpose", [A((3, 5))], _transpose(None), "matrix")
case(
    "transpose",
    [A(("B", "T", 3))],
    _transpose((1, 0, 2)),
    "sym",
    attrs={"perm": [1, 0, 2]},
    bindings=SIZES,
    sym_out=(("T", "B", 3),),
)

case("concat", [A((2, 3)), A((2, 1)), A((2, 4))], _concat(1), "three_axis1", attrs={"axis": 1})
case("concat", [A((2, 3)), A((1, 3)), A((3, 3))], _concat(0), "three_axis0", attrs={"axis": 0})
case("concat", [A((2, 3, 1)), A((2, 3, 2))], _concat(-1), "axis_neg1", attrs={"axis": -1})
case("concat", [A((2, 3))], _concat(0), "single", attrs={"axis": 0})
case(
    "concat",
    [A(("T", 3)), A(("T", 3)), A(("T", 3))],
    _concat(0),
    "sym_axis",
    attrs={"axis": 0},
    bindings=SIZES,
    sym_out=(("3*T", 3),),
)
case(
    "concat",
    [A(("B", 2)), A(("B", 3))],
    _concat(1),
    "sym_other_axis",
    attrs={"axis": 1},
    bindings=SIZES,
    sym_out=(("B", 5),),
)


def _shift(reverse):
    def ref(xs, first):
        rows = [first, *xs[:-1]] if not reverse else [*xs[1:], first]
        return np.stack(rows).astype(xs.dtype) if len(xs) else xs.copy()

    return ref


case("shift", [A((4, 2, 3)), A((2, 3))], _shift(False), "forward")
case("shift", [A((4, 2, 3)), A((2, 3))], _shift(True), "reverse", attrs={"reverse": True})
case(
    "shift",
    [A((1, 3), zero_grad=True), A((3,))],
    _shift(True),
    "one_step",
    attrs={"reverse": True},
)
case(
    "shift",
    [A(("T", "B", 2)), A(("B", 2))],
    _shift(False),
    "sym",
    bindings=LONG,
    sym_out=(("T", "B", 2),),
)
case(
    "shift",
    [A(("T", "B", 2)), A(("B", 2))],
    _shift(True),
    "sym_reverse",
    attrs={"reverse": True},
    bindings=LONG,
    sym_out=(("T", "B", 2),),
)

case(
    "split", [A((2, 6))], _split(1, (1, 2, 3)), "three_axis1", attrs={"axis": 1, "sizes": [1, 2, 3]}
)
case("split", [A((5, 2))], _split(0, (2, 3)), "two_axis0", attrs={"axis": 0, "sizes": [2, 3]})
case("split", [A((2, 3, 4))], _split(-1, (3, 1)), "axis_neg1", attrs={"axis": -1, "sizes": [3, 1]})
case(
    "split",
    [A(("B", 6))],
    _split(1, (1, 2, 3)),
    "sym",
    attrs={"axis": 1, "sizes": [1, 2, 3]},
    bindings=SIZES,
    sym_out=(("B", 1), ("B", 2), ("B", 3)),
)

SLICES = [
    ("step2", (7, 3), {"axis": 0, "start": 1, "stop": 6, "step": 2}),
    ("neg_start_step2", (2, 7), {"axis": 1, "start": -4, "step": 2}),
    ("neg_stop", (6, 2), {"axis": 0, "start": 1, "stop": -1}),
    ("axis_neg1", (2, 3, 5), {"axis": -1, "start": 2}),
    ("all", (3, 4), {"axis": 1}),
    ("empty", (3, 4), {"axis": 1, "start": 3, "stop": 1}),
]
for _label, _shape, _a in SLICES:
    # An empty slice (start after stop) gets an exactly zero gradient.
    case("slice", [A(_shape, zero_grad=_label == "empty")], _slice(**_a), _label, attrs=_a)
    _upd = _slice(**_a)(np.zeros(_shape)).shape
    case(
        "slice_grad",
        [A(_upd), A(_shape, zero_grad=True)],
        _slice_grad(**_a),
        _label,
        attrs=_a,
    )
case(
    "slice",
    [A(("T", 4))],
    _slice(0, 0, 1),
    "sym_first",
    attrs={"axis": 0, "start": 0, "stop": 1},
    bindings=SIZES,
    sym_out=((1, 4),),
)
case(
    "slice",
    [A(("B", 7))],
    _slice(1, -3, None, 2),
    "sym_other_axis",
    attrs={"axis": 1, "start": -3, "step": 2},
    bindings=SIZES,
    sym_out=(("B", 2),),
)
case(
    "slice",
    [A(("T", 4))],
    _slice(0, -1),
    "sym_last",
    attrs={"axis": 0, "start": -1},
    bindings=SIZES,
    sym_out=((1, 4),),
)
case(
    "slice_grad",
    [A(("B", 2)), A(("B", 7), zero_grad=True)],
    _slice_grad(1, -3, None, 2),
    "sym",
    attrs={"axis": 1, "start": -3, "step": 2},
    bindings=SIZES,
    sym_out=(("B", 7),),
)

# --- nn --------------------------------------------------------------------------------

# (2, 3) indices into 5 rows: at least one row is picked twice (gradients accumulate).
case("row_pluck", [A((5, 3)), A((2, 3), "int64", ints(0, 5))], _row_pluck, "matrix_idx")
case("row_pluck", [A((4, 2)), A((6,), "int32", ints(0, 4))], _row_pluck, "vector_idx")
case("row_pluck", [A((4, 3)), A((), "int64", ints(0, 4))], _row_pluck, "scalar_idx")
case(
    "row_pluck",
    [A((6, 3)), A(("B", "T"), "int64", ints(0, 6))],
    _row_pluck,
    "sym",
    bindings=SIZES,
    sym_out=(("B", "T", 3),),
)
case(
    "row_pluck_grad",
    [A((2, 3, 4)), A((2, 3), "int64", ints(0, 5)), A((5, 4), zero_grad=True)],
    _row_pluck_grad,
    "matrix_idx",
)
case(
    "row_pluck_grad",
    [A((6, 2)), A((6,), "int32", ints(0, 3)), A((3, 2), zero_grad=True)],
    _row_pluck_grad,
    "vector_idx",
)

for _op, _plain, _centered in (
    ("softmax", _softmax, _softmax_centered),
    ("log_softmax", _log_softmax, _log_softmax_centered),
):
    case(_op, [A((3, 5))], lambda x, f=_plain: f(x, -1), "axis_neg1")
    case(_op, [A((3, 5))], lambda x, f=_plain: f(x, 0), "axis0", attrs={"axis": 0})
    case(_op, [A((2, 4, 3))], lambda x, f=_plain: f(x, 1), "rank3_axis1", attrs={"axis": 1})
    case(
        _op,
        [A((2, 5), gen=uniform(798.0, 802.0))],
        lambda x, f=_centered: f(x, -1),
        "large",
    )
    case(
        _op,
        [A(("B", "T", 5))],
        lambda x, f=_plain: f(x, -1),
        "sym",
        bindings=SIZES,
        sym_out=(("B", "T", 5),),
    )

for _red in ("mean", "sum", "none"):
    _out = () if _red != "none" else (4,)
    case(
        "softmax_cross_entropy",
        [A((4, 5)), A((4,), "int64", ints(0, 5))],
        _ce(_red),
        _red,
        attrs={"reduction": _red},
    )
    case(
        "softmax_cross_entropy",
        [
            A((2, 3, 5)),
            A((2, 3), "int32", ints(0, 5)),
            A((2, 3), gen=mask01(), diff=False, keyword="mask"),
        ],
        _ce(_red),
        _red + "_mask_rank3",
        attrs={"reduction": _red},
    )
    case(
        "softmax_cross_entropy_grad",
        [A((4, 5)), A((4,), "int64", ints(0, 5)), A(_out)],
        _ce_grad(_red),
        _red,
        attrs={"reduction": _red},
        grad="raises",
    )
    case(
        "softmax_cross_entropy_grad",
        [
            A((4, 5)),
            A((4,), "int64", ints(0, 5)),
            A(_out),
            A((4,), gen=mask01(), diff=False, keyword="mask"),
        ],
        _ce_grad(_red),
        _red + "_mask",
        attrs={"reduction": _red},
        grad="raises",
    )
    case(
        "softmax_cross_entropy_and_grad",
        [A((2, 3, 5)), A((2, 3), "int64", ints(0, 5)), A(() if _red != "none" else (2, 3))],
        _ce_and_grad(_red),
        _red,
        attrs={"reduction": _red},
        grad="raises",
    )
    case(
        "softmax_cross_entropy_and_grad",
        [
            A((4, 5)),
            A((4,), "int32", ints(0, 5)),
            A(_out),
            A((4,), gen=mask01(), diff=False, keyword="mask"),
        ],
        _ce_and_grad(_red),
        _red + "_mask",
        attrs={"reduction": _red},
        grad="raises",
    )
case(
    "softmax_cross_entropy",
    # Every position masked: the loss is 0 whatever the logits (their gradient is 0).
    [
        A((3, 4), zero_grad=True),
        A((3,), "int64", ints(0, 4)),
        A((3,), gen=zeros(), diff=False, keyword="mask"),
    ],
    _ce("mean"),
    "mean_all_masked",
)
case(
    "softmax_cross_entropy",
    [A((3, 6), gen=uniform(798.0, 802.0)), A((3,), "int64", ints(0, 6))],
    _ce("mean", centered=True),
    "large",
)
case(
    "softmax_cross_entropy",
    [
        A(("B", "T", 5)),
        A(("B", "T"), "int64", ints(0, 5)),
        A(("B", "T"), gen=mask01(), diff=False, keyword="mask"),
    ],
    _ce("mean"),
    "sym_mask",
    bindings=SIZES,
    sym_out=((),),
)
case(
    "softmax_cross_entropy",
    [A(("B", "T", 5)), A(("B", "T"), "int64", ints(0, 5))],
    _ce("none"),
    "sym_none",
    attrs={"reduction": "none"},
    bindings=SIZES,
    sym_out=(("B", "T"),),
)

# --- creation --------------------------------------------------------------------------

# ``full`` has no inputs: its reference takes the row's dtype as ``dtype=``.
for _shape, _value in (((2, 3), 1.5), ((), -0.25), ((4, 1, 2), 0.0)):
    case(
        "full",
        [],
        lambda dtype, _shape=_shape, _value=_value: (
            np.zeros(_shape, dtype) + np.asarray(_value, dtype)
        ),
        "x".join(map(str, _shape)) or "scalar",
        attrs=lambda dtype, _shape=_shape, _value=_value: {
            "shape": list(_shape),
            "value": _value,
            "dtype": dtype,
        },
        ref_dtype=True,
        grad="none",
    )
case(
    "full",
    [],
    lambda dtype: np.array([[7, 7], [7, 7], [7, 7]], dtype),
    "int",
    attrs=lambda dtype: {"shape": [3, 2], "value": 7.0, "dtype": dtype},
    ref_dtype=True,
    dtypes=INTS,
    grad="none",
)

# --- loops -----------------------------------------------------------------------------


def _scan_body(dtype: str, with_x: bool = True):
    """One RNN step: ``h' = tanh(x @ W + h @ U)``, ``y = sigmoid(h')`` (a loop body)."""
    import rgraph as rg

    b = rg.Graph("step")
    h = b.input("h", (1, 2), dtype)
    x = b.input("x", (1, 3), dtype) if with_x else None
    W = b.input("W", (3, 2), dtype) if with_x else None
    U = b.input("U", (2, 2), dtype)
    pre = h @ U if x is None else x @ W + h @ U
    h2 = b.output(b.tanh(pre), name="h_next")
    b.output(b.sigmoid(h2), name="y")
    return b.ir


def _scan_ref(reverse: bool):
    def ref(h, xs, W, U):
        ys = np.empty((xs.shape[0], *h.shape), h.dtype)
        for t in range(xs.shape[0])[:: -1 if reverse else 1]:
            h = np.tanh(xs[t] @ W + h @ U)
            ys[t] = 1 / (1 + np.exp(-h))
        return h, ys

    return ref


def _scan_ref_no_xs(steps: int):
    def ref(h, U):
        ys = np.empty((steps, *h.shape), h.dtype)
        for t in range(steps):
            h = np.tanh(h @ U)
            ys[t] = 1 / (1 + np.exp(-h))
        return h, ys

    return ref


for _reverse in (False, True):
    case(
        "scan",
        [A((1, 2)), A((4, 1, 3)), A((3, 2)), A((2, 2))],
        _scan_ref(_reverse),
        "reverse" if _reverse else "forward",
        attrs=lambda dtype, _r=_reverse: {
            "body": _scan_body(dtype),
            "num_carry": 1,
            "num_xs": 1,
            "reverse": _r,
        },
    )
case(
    "scan",
    [A((1, 2)), A((2, 2))],
    _scan_ref_no_xs(3),
    "no_xs",
    attrs=lambda dtype: {
        "body": _scan_body(dtype, with_x=False),
        "num_carry": 1,
        "num_xs": 0,
        "length": 3,
    },
)
case(
    "scan",
    [A((1, 2)), A(("T", 1, 3)), A((3, 2)), A((2, 2))],
    _scan_ref(False),
    "sym",
    attrs=lambda dtype: {"body": _scan_body(dtype), "num_carry": 1, "num_xs": 1},
    bindings=SIZES,
    sym_out=((1, 2), ("T", 1, 2)),
)


def _map_body(dtype: str):
    """Rows apart: ``y = tanh(x) * w + c`` and ``z = [y, x]`` on each row of ``T``."""
    import rgraph as rg

    b = rg.Graph("rows")
    x = b.input("x", ("T", 2, 3), dtype)
    c = b.input("c", ("T", 2, 1), dtype)
    w = b.input("w", (3,), dtype)
    y = b.output(b.tanh(x) * w + c, name="y")
    b.output(b.concat([y, x], axis=-1), name="z")
    return b.ir


def _map_ref(x, c, w):
    y = np.tanh(x) * w + c
    return y, np.concatenate([y, x], axis=-1)


case(
    "map",
    [A(("T", 2, 3)), A(("T", 2, 1)), A((3,))],
    _map_ref,
    "sym",
    attrs=lambda dtype: {"body": _map_body(dtype), "dim": "T", "num_xs": 2},
    bindings=SIZES,
    sym_out=(("T", 2, 3), ("T", 2, 6)),
    grad="raises",
)


def _check_ids_unique() -> None:
    seen: set[str] = set()
    for c in CASES:
        if c.id in seen:
            raise ValueError(f"duplicate op case id {c.id}")
        seen.add(c.id)


_check_ids_unique()
