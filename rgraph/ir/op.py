"""The op registry: each op defines its every facet in one place.

An :class:`Op` holds an attribute schema (a pydantic model), shape and dtype inference,
a numpy kernel and a VJP rule that *emits IR* through the builder. Adding an op means
writing one subclass in a family module under :mod:`rgraph.ir.ops` (decorated with
:func:`register`) and one row in ``tests/op_cases.py``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from pydantic import BaseModel, ConfigDict, ValidationError

from rgraph.errors import ArityError, BadAttributeError, DTypeError, ShapeError, UnknownOpError
from rgraph.ir import dims
from rgraph.ir.cost import Cost, elements, nbytes
from rgraph.ir.types import FLOAT_DTYPES, TensorType, make_type

if TYPE_CHECKING:
    from rgraph.builder import Graph, Value
    from rgraph.ir.graph import Node

Kernel = Callable[..., Any]


class FreshMemory:
    """Where arrays come from without an arena: new memory for each, whatever the
    ``place``. The interface of :class:`~rgraph.exec.arena.ThreadArenas`."""

    def empty(self, shape: tuple[int, ...], dtype: Any, place: Any = None) -> np.ndarray:
        return np.empty(shape, dtype)

    def maker(self, shape: tuple[int, ...], dtype: Any, place: Any) -> Callable[[], np.ndarray]:
        return functools.partial(np.empty, tuple(shape), np.dtype(dtype))


@dataclass(frozen=True)
class KernelContext:
    """What a kernel is prepared for: sizes of symbolic dims, and the debug mode."""

    dims: Mapping[str, int]
    check_finite: bool = False
    # Kept across bindings by the interpreter, e.g. for loop bodies' interpreters.
    cache: dict = field(default_factory=dict)
    # Where arrays a kernel fills itself come from (a loop's ys), ``memory.empty(shape,
    # dtype, place)``: the interpreter's arenas, which give a ``place`` (any key naming
    # the request, the same at every run) the memory it had the run before.
    memory: Any = field(default_factory=FreshMemory)
    # For ops that set ``specializes``: the node's input types, and whether every ``out=``
    # the interpreter gives the kernel is C-contiguous (``()``, False: no promise).
    inputs: tuple[TensorType, ...] = ()
    contiguous_out: bool = False
    # Whether the kernel runs with numpy's overflow warnings off (in a loop whose body has
    # a node that ``overflows``): it need not keep its values from overflowing.
    quiet_overflow: bool = False


class Attrs(BaseModel):
    """Base of every op's attribute schema: strict, immutable, nothing extra."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class NoAttrs(Attrs):
    pass


class Op:
    """One op. Subclasses set ``name``, ``arity`` and ``Attrs`` and override the facets.

    ``arity`` is ``(min, max)`` inputs; ``max`` is None for variadic ops.
    """

    name: ClassVar[str]
    arity: ClassVar[tuple[int, int | None]] = (1, 1)
    Attrs: ClassVar[type[Attrs]] = NoAttrs
    # Optional trailing inputs that the builder also takes as keywords (``mask=``).
    input_names: ClassVar[tuple[str, ...]] = ()
    # Of those, the ones the op computes the same without when they hold 1.0 everywhere
    # (a padding mask of ones): ``specialize`` drops them.
    unit_inputs: ClassVar[tuple[str, ...]] = ()
    # Attrs fields holding nested graphs; the IR keeps them in ``Node.bodies``.
    body_names: ClassVar[tuple[str, ...]] = ()
    # Whether the kernel depends on the sizes of symbolic dims (else it is prepared once).
    uses_dims: ClassVar[bool] = False
    # FLOPs per output element of the default cost: 0 for ops that only move data.
    flops_per_element: ClassVar[int] = 1
    # Whether the kernel also takes ``out=``, an array of its (single) output's type to
    # write into: a loop body then reuses one buffer per value instead of allocating.
    writes_out: ClassVar[bool] = False
    # Whether the kernel specialises on ``ctx.inputs`` and ``ctx.contiguous_out`` (the
    # interpreter then fills them in, per node): e.g. to be a numpy function itself,
    # with no Python between the schedule and numpy.
    specializes: ClassVar[bool] = False
    # Whether the outputs depend on the inputs' values (False: on their types only, as
    # ``full_like``'s): the interpreter computes a value that depends on nothing but
    # dim sizes once per binding (see :class:`~rgraph.exec.interpreter.Interpreter`).
    reads_values: ClassVar[bool] = True

    def infer(self, ins: Sequence[TensorType], a: Any) -> list[TensorType]:
        """Output types from input types; raise ShapeError or DTypeError."""
        raise NotImplementedError

    def kernel(self, a: Any, ctx: KernelContext) -> Kernel:
        """A numpy callable ``f(*arrays)`` for these attrs; ``ctx.dims`` sizes symbolic dims.

        It returns one array for a single-output op, else a tuple of arrays.
        """
        raise NotImplementedError

    def overflows(self, a: Any, ctx: KernelContext) -> bool:
        """Whether the kernel for these attrs, in ``ctx``, may take a value to infinity and
        still give the right result (``exp`` in ``1 / (1 + exp(-z))``). A loop whose body
        has such a node runs with numpy's overflow warnings off, one switch per loop, and
        makes its kernels with ``ctx.quiet_overflow``: they need not clamp their input at
        every step to keep quiet. An op whose answer depends on ``ctx.dims`` sets
        ``uses_dims``. Default False."""
        return False

    def views(self, a: Any, ctx: KernelContext) -> list[tuple] | None:
        """For an op whose kernel makes each output a view of its one input by basic
        slicing (``split``): those index expressions, one per output. A loop step that
        cuts a row it reads or writes so then takes the pieces from the stacked array,
        cut once per run (a view per step, for half what the call costs). None: not such
        an op (the default)."""
        return None

    def out_views(self, a: Any, ctx: KernelContext) -> list[tuple] | None:
        """For an op whose kernel writes with ``out=`` and then works on pieces of ``out``
        (``gate_activation`` scales its sigmoid blocks): those pieces' basic-slicing
        indices, as many whatever the binding. A loop step that writes into the row of a
        stacked output then gives them made (views cut once per run, not at every step):
        ``kernel(*inputs, out, *pieces)``; other callers give ``out`` alone, or nothing.
        None: not such an op (the default)."""
        return None

    def cost(self, ins: Sequence[TensorType], outs: Sequence[TensorType], a: Any) -> Cost:
        """Estimated FLOPs and bytes produced by one application, as polynomials of the
        symbolic dims (:mod:`rgraph.ir.cost`). Default: ``flops_per_element`` FLOPs per
        output element, and the outputs' bytes."""
        return Cost(elements(outs) * self.flops_per_element, nbytes(outs))

    def vjp(
        self,
        g: Graph,
        a: Any,
        ins: Sequence[Value],
        outs: Sequence[Value],
        cts: Sequence[Value | None],
    ) -> Sequence[Value | None]:
        """Cotangents of the inputs as IR values built on ``g`` (None: no gradient).

        ``cts`` holds one cotangent per output (None where nothing flows back). The
        result may have a broadcast shape: the autodiff driver reduces it to the input's.
        """
        raise NotImplementedError

    def vjp_node(
        self, g: Graph, node: Node, cts: Sequence[Value | None], needs: Sequence[bool]
    ) -> Sequence[Value | None]:
        """The autodiff driver's entry point: input cotangents of one forward ``node``.

        ``needs[i]`` says whether input ``i`` wants a gradient. The default calls
        :meth:`vjp`; an op whose backward needs values from inside its forward (a loop
        saving per-step residuals) overrides this and may replace ``node`` in ``g``.
        """
        ins = [g.value(name) for name in node.inputs]
        outs = [g.value(o.name) for o in node.outputs]
        return self.vjp(g, self.node_attrs(node), ins, outs, cts)

    def batched_attrs(
        self, a: Any, ins: Sequence[TensorType], stacked: Sequence[bool], steps: dims.Dim
    ) -> dict[str, Any] | None:
        """Attrs that apply this op to inputs given a new leading axis (of size ``steps``)
        where ``stacked``, so that every output gets that axis too; None if it cannot.

        ``ins`` are the per-step input types. Used to move per-step work out of loops.
        """
        return None

    def rowwise(self, a: Any, ins: Sequence[TensorType], dim: str) -> bool:
        """Whether each row of the outputs (index ``i`` of their leading axis, of size
        ``dim``) depends only on row ``i`` of the inputs that lead with ``dim`` and on
        the other inputs whole: then the op may run on any blocks of rows (``map``).

        The caller checks the rest: that the outputs lead with ``dim`` and that no type
        has it off axis 0 (``tile`` before asking, ``map`` in its type rule).
        """
        return False

    @property
    def differentiable(self) -> bool:
        return type(self).vjp is not Op.vjp or type(self).vjp_node is not Op.vjp_node

    def check_arity(self, n: int) -> None:
        lo, hi = self.arity
        if n < lo or (hi is not None and n > hi):
            want = str(lo) if lo == hi else f"{lo} to {hi}" if hi is not None else f"{lo}+"
            raise ArityError(f"op '{self.name}' takes {want} inputs, got {n}")

    def parse_attrs(self, attrs: Mapping[str, Any]) -> Any:
        """Validate plain attrs against the schema (raising BadAttributeError)."""
        try:
            return self.Attrs.model_validate(dict(attrs))
        except ValidationError as e:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in err['loc']) or 'attrs'}: {err['msg']}"
                for err in e.errors()
            )
            known = ", ".join(self.Attrs.model_fields) or "none"
            raise BadAttributeError(
                f"bad attributes for op '{self.name}': {problems} (its attributes: {known})"
            ) from None

    def dump_attrs(self, a: Any) -> dict[str, Any]:
        """Attrs as plain data, defaults and bodies left out, so equal attrs compare equal."""
        return a.model_dump(mode="json", exclude_defaults=True, exclude=set(self.body_names))

    def node_attrs(self, node: Node) -> Any:
        """The parsed attrs of ``node``, with its bodies for ops that have them."""
        if self.body_names:
            return self.parse_attrs({**node.attrs, **node.bodies})
        return self.attrs_of(node.attrs)

    def attrs_from_kwargs(self, kwargs: dict[str, Any]) -> tuple[Any, dict[str, Any]]:
        """Parsed attrs and their plain form, from a builder call's keywords (cached)."""
        if self.body_names:
            a = self.parse_attrs(kwargs)
            return a, self.dump_attrs(a)
        try:
            key = freeze(kwargs)
            hash(key)
        except TypeError:  # an unusual value (an array): parse without the cache
            a = self.parse_attrs(kwargs)
            return a, self.dump_attrs(a)
        a, plain = _parse_kwargs_cached(self.name, key)
        return a, _copy(plain)  # each node its own attrs: the cached dict is shared

    def attrs_of(self, attrs: Mapping[str, Any]) -> Any:
        """The parsed attrs of a node, cached: passes and the interpreter ask often."""
        if not attrs:
            return _parse_cached(self.name, ())
        key = (self.name, id(attrs))
        known = _PARSED_BY_IDENTITY.get(key)
        if known is not None and known[0] is attrs and known[1] == attrs:
            return known[2]
        parsed = _parse_cached(self.name, freeze(attrs))
        if len(_PARSED_BY_IDENTITY) >= _PARSED_BY_IDENTITY_MAX:
            _PARSED_BY_IDENTITY.clear()
        _PARSED_BY_IDENTITY[key] = (attrs, _copy(attrs), parsed)
        return parsed


# Parsed attrs by the identity of a node's attrs dict (held, so that its id stays its
# own), with a copy of its content in case it was changed in place: passes ask for the
# same node's attrs many times, and freezing them for the cache below costs more than
# comparing two small dicts. Bounded, as the cache below.
_PARSED_BY_IDENTITY: dict[tuple[str, int], tuple[Mapping[str, Any], dict, Any]] = {}
_PARSED_BY_IDENTITY_MAX = 8192


def _copy(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of plain attrs that shares nothing with them (they are flat: lists at most)."""
    return {k: list(v) if type(v) is list else v for k, v in attrs.items()}


def freeze(data: Any) -> Any:
    """A hashable form of plain data (dicts and lists become sorted tuples)."""
    kind = type(data)  # (exact types first: attributes are parsed from it at every turn)
    if kind is dict or (kind is not list and isinstance(data, dict)):
        return tuple(sorted([(k, freeze(v)) for k, v in data.items()]))
    if kind is list or isinstance(data, list):
        return ("__list__", *[freeze(v) for v in data])
    if kind is float or isinstance(data, float):  # 0.0 == -0.0, but 1/0.0 != 1/-0.0
        return ("float", data, math.copysign(1.0, data))
    return (kind.__name__, data)


def _thaw(data: Any) -> Any:
    if data and data[0] == "__list__":
        return [_thaw(v) for v in data[1:]]
    return data[1]


@functools.lru_cache(maxsize=4096)
def _parse_cached(opname: str, frozen: tuple) -> Any:
    return REGISTRY[opname].parse_attrs({k: _thaw(v) for k, v in frozen})


@functools.lru_cache(maxsize=4096)
def _parse_kwargs_cached(opname: str, frozen: tuple) -> tuple[Any, dict[str, Any]]:
    op = REGISTRY[opname]
    a = op.parse_attrs({k: _thaw(v) for k, v in frozen})
    return a, op.dump_attrs(a)


REGISTRY: dict[str, Op] = {}


def register(cls: type[Op]) -> type[Op]:
    """Class decorator adding one instance of an Op subclass to the registry."""
    if cls.name in REGISTRY:
        raise ValueError(f"op '{cls.name}' is registered twice")
    REGISTRY[cls.name] = cls()
    return cls


def get_op(name: str) -> Op:
    try:
        return REGISTRY[name]
    except KeyError:
        raise UnknownOpError(
            f"unknown op '{name}'; known ops: {', '.join(sorted(REGISTRY))}"
        ) from None


# --- helpers shared by inference rules -------------------------------------------------


def same_dtype(ins: Sequence[TensorType], what: str = "inputs") -> str:
    first = ins[0].dtype
    for t in ins[1:]:
        if t.dtype != first:
            raise DTypeError(
                f"{what} have different dtypes: {', '.join(str(t) for t in ins)}"
                " (rgraph never converts implicitly; use cast)"
            )
    return first


def require_float(t: TensorType, what: str = "input") -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise DTypeError(f"{what} must be float32 or float64, got {t}")


def require_int(t: TensorType, what: str) -> None:
    if t.dtype not in ("int32", "int64"):
        raise DTypeError(f"{what} must be int32 or int64, got {t}")


def broadcast_shapes(*shapes: tuple[dims.Dim, ...]) -> tuple[dims.Dim, ...]:
    """numpy broadcasting over ints and symbolic dims: dims agree, or one of them is 1."""
    rank = max(len(s) for s in shapes)
    out: list[dims.Dim] = []
    for axis in range(rank):
        dim: dims.Dim = 1
        for s in shapes:
            d = s[axis - rank + len(s)] if axis - rank + len(s) >= 0 else 1
            if d == 1 or d == dim:
                continue
            if dim == 1:
                dim = d
            else:
                raise ShapeError(
                    f"shapes {' and '.join(_fmt(s) for s in shapes)} do not broadcast:"
                    f" dim {dim!r} vs {d!r} at axis {axis - rank}"
                )
        out.append(dim)
    return tuple(out)


def normalize_axis(axis: int, rank: int, what: str = "axis") -> int:
    if not -rank <= axis < max(rank, 1):
        raise ShapeError(f"{what} {axis} is out of range for rank {rank}")
    return axis % rank if rank else 0


def _fmt(shape: tuple[dims.Dim, ...]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def like(t: TensorType, shape: tuple[dims.Dim, ...] | None = None, dtype: str | None = None):
    return make_type(dtype or t.dtype, t.shape if shape is None else shape)


def batches_elementwise(ins: Sequence[TensorType], stacked: Sequence[bool]) -> bool:
    """Whether numpy broadcasting still lines up once stacked inputs gain a leading axis:
    every stacked input has the full rank, the others no more than that."""
    rank = max(t.rank for t in ins)
    return any(stacked) and all(
        t.rank == rank if s else t.rank <= rank for t, s in zip(ins, stacked)
    )


def rows_line_up(ins: Sequence[TensorType], dim: str) -> bool:
    """Whether elementwise broadcasting keeps rows apart: every input that leads with
    ``dim`` has the full rank (its axis 0 is the outputs' axis 0); the others, without
    ``dim``, broadcast whole into every row."""
    rank = max(t.rank for t in ins)
    return all(t.rank == rank for t in ins if t.rank and t.shape[0] == dim)


def shift_axis(axis: int) -> int:
    """An axis of a per-step value, as an axis of the stacked value."""
    return axis + 1 if axis >= 0 else axis


def undispatched(function: Callable[..., Any]) -> Callable[..., Any]:
    """A numpy function without its ``__array_function__`` dispatch (its
    ``_implementation``, if it has one): about half a microsecond less per call, which
    counts in a loop's step. Kernels take ndarrays only, which dispatch to it anyway."""
    return getattr(function, "_implementation", function)


def filled(shape: tuple[int, ...], dtype: Any, value: float) -> np.ndarray:
    """``np.full(shape, value, dtype)`` at a third of its cost on small arrays: zeros
    from ``np.zeros``, other values filled into an empty array."""
    if value == 0 and math.copysign(1.0, value) > 0:  # -0.0 is filled
        return np.zeros(shape, dtype)
    out = np.empty(shape, dtype)
    out.fill(value)
    return out
