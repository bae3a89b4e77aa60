"""Estimated cost of a graph: FLOPs and bytes per run, as polynomials of its symbolic dims.

Each op states the cost of one application from its input and output types
(:meth:`rgraph.ir.op.Op.cost`); :func:`graph_cost` adds them up, counting a loop body once
per step. A cost is a :class:`Poly`, a sum of products of dim names with integer
coefficients, so the estimate for a graph over ``B`` and ``T`` reads ``800*B*T + 30*B``
and evaluates for any sizes.

>>> p = Poly.of_shape(("B", 20)) * 2 + Poly.of_shape(("T", "B", 5))
>>> str(p)
'5*B*T + 40*B'
>>> p.evaluate({"B": 32, "T": 50})
9280

The model is deliberately simple. FLOPs: elementwise ops one per output element
(transcendentals too), a matrix product ``2*m*n*k`` per batch element, a reduction one
per input element, the softmax family a few per element, a loop its body once per step,
data movement (reshape, transpose, slice, identity, concat, fills, ...) nothing. Bytes:
every value a node produces (output elements times the item size), the memory traffic of
one run rather than its peak, since the interpreter frees each value after its last use.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from rgraph.ir import dims

if TYPE_CHECKING:
    from rgraph.ir.graph import GraphIR, Node
    from rgraph.ir.types import TensorType

Monomial = tuple[str, ...]  # sorted dim names, repeats allowed: ("B", "B", "T") is B*B*T


class Poly:
    """A polynomial in dim names with integer coefficients (immutable).

    >>> str(Poly.of_dim("B*T") * Poly.of_dim("B") + 3)
    'B*B*T + 3'
    >>> Poly.of_dim(4) * 5 == 20
    True
    """

    __slots__ = ("terms",)

    def __init__(self, terms: Mapping[Monomial, int] | None = None):
        self.terms: dict[Monomial, int] = {k: v for k, v in (terms or {}).items() if v}

    @classmethod
    def of_dim(cls, dim: dims.Dim) -> Poly:
        coef, names = dims.factors(dim)
        return cls({names: coef})

    @classmethod
    def of_shape(cls, shape: Iterable[dims.Dim]) -> Poly:
        """The number of elements of a shape."""
        coef, names = 1, []
        for d in shape:
            c, n = dims.factors(d)
            coef *= c
            names.extend(n)
        return cls({tuple(sorted(names)): coef})

    def __add__(self, other: PolyLike) -> Poly:
        out = dict(self.terms)
        for k, v in _poly(other).terms.items():
            out[k] = out.get(k, 0) + v
        return Poly(out)

    __radd__ = __add__

    def __sub__(self, other: PolyLike) -> Poly:
        return self + _poly(other) * -1

    def __mul__(self, other: PolyLike) -> Poly:
        if isinstance(other, int):
            return Poly({k: v * other for k, v in self.terms.items()})
        out: dict[Monomial, int] = {}
        for k1, v1 in self.terms.items():
            for k2, v2 in _poly(other).terms.items():
                k = tuple(sorted(k1 + k2))
                out[k] = out.get(k, 0) + v1 * v2
        return Poly(out)

    __rmul__ = __mul__

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, (Poly, int)) or isinstance(other, bool):
            return NotImplemented
        return self.terms == _poly(other).terms

    __hash__ = None  # type: ignore[assignment]

    def __bool__(self) -> bool:
        return bool(self.terms)

    @property
    def names(self) -> tuple[str, ...]:
        """The dim names the polynomial depends on, sorted."""
        return tuple(sorted({n for k in self.terms for n in k}))

    def evaluate(self, binding: Mapping[str, int]) -> int:
        """The value for concrete dim sizes (KeyError naming a dim that is not bound)."""
        return sum(v * math.prod(binding[n] for n in k) for k, v in self.terms.items())

    def __str__(self) -> str:
        if not self.terms:
            return "0"
        order = sorted(self.terms, key=lambda k: (-len(k), k))
        parts = []
        for k in order:
            v = self.terms[k]
            factors = ([str(abs(v))] if abs(v) != 1 or not k else []) + list(k)
            parts.append(("- " if v < 0 else "+ ") + "*".join(factors))
        text = " ".join(parts)
        return text[2:] if text.startswith("+ ") else "-" + text[2:]

    def __repr__(self) -> str:
        return f"Poly({str(self)!r})"

    def to_json(self) -> list[dict[str, Any]]:
        """The terms as plain data: ``[{"coef": 800, "dims": ["B", "T"]}, ...]``."""
        order = sorted(self.terms, key=lambda k: (-len(k), k))
        return [{"coef": self.terms[k], "dims": list(k)} for k in order]


PolyLike = Poly | int


def _poly(value: PolyLike) -> Poly:
    return value if isinstance(value, Poly) else Poly({(): value})


@dataclass(frozen=True)
class Cost:
    """Estimated FLOPs and bytes produced, each a :class:`Poly` of the symbolic dims."""

    flops: Poly
    bytes: Poly

    def __add__(self, other: Cost) -> Cost:
        return Cost(self.flops + other.flops, self.bytes + other.bytes)

    def __mul__(self, times: PolyLike) -> Cost:
        return Cost(self.flops * times, self.bytes * times)


ZERO = Cost(Poly(), Poly())


def elements(types: Sequence[TensorType]) -> Poly:
    """The number of elements of several tensors together."""
    total: dict[Monomial, int] = {}
    for t in types:
        _accumulate(total, Poly.of_shape(t.shape))
    return Poly(total)


def nbytes(types: Sequence[TensorType]) -> Poly:
    """Bytes of several tensors together (elements times item size)."""
    total: dict[Monomial, int] = {}
    for t in types:
        _accumulate(total, Poly.of_shape(t.shape) * _ITEMSIZE[t.dtype])
    return Poly(total)


_ITEMSIZE = {"float32": 4, "float64": 8, "int32": 4, "int64": 8, "bool": 1}


def _accumulate(total: dict[Monomial, int], p: Poly) -> None:
    for k, v in p.terms.items():
        total[k] = total.get(k, 0) + v


def node_costs(graph: GraphIR) -> Iterator[tuple[Node, Cost]]:
    """Each node of ``graph`` (not of its bodies) with its cost, bodies included."""
    from rgraph.ir.op import freeze, get_op

    types = graph.types()
    seen: dict[Any, Cost] = {}  # nodes alike cost alike: a long chain has few kinds
    for node in graph.nodes:
        ins = [types[name] for name in node.inputs]
        outs = [o.type for o in node.outputs]
        key = None
        if not node.bodies:
            key = (
                node.op,
                tuple((t.dtype, t.shape) for t in ins),
                tuple((t.dtype, t.shape) for t in outs),
                freeze(node.attrs) if node.attrs else (),
            )
            c = seen.get(key)
            if c is not None:
                yield node, c
                continue
        op = get_op(node.op)
        c = op.cost(ins, outs, op.node_attrs(node))
        if key is not None:
            seen[key] = c
        yield node, c


def graph_cost(graph: GraphIR) -> Cost:
    """The estimated cost of one run of ``graph`` (loop bodies once per step).

    >>> import rgraph as rg
    >>> g = rg.Graph(); x = g.input("x", ("B", 3)); W = g.param("W", (3, 4))
    >>> _ = g.output((x @ W).tanh(), name="y")
    >>> c = graph_cost(g.ir)  # matmul 2*B*4*3, tanh B*4, the output's identity 0
    >>> str(c.flops), str(c.bytes)  # three f64[B,4] values
    ('28*B', '96*B')
    """
    flops: dict[Monomial, int] = {}
    size: dict[Monomial, int] = {}
    for _, c in node_costs(graph):
        _accumulate(flops, c.flops)
        _accumulate(size, c.bytes)
    return Cost(Poly(flops), Poly(size))
