"""The IR: pydantic models of graphs, nodes and their typed values.

A graph is single-assignment: every value name is defined exactly once, by an input, a
parameter, a constant or a node output. Every model here serialises to plain data
(``model_dump(mode="json")``) and back without loss; a node can hold nested graphs in
``bodies`` (a loop body). Models built from user or file data are validated by pydantic
and then by :func:`rgraph.ir.verify.verify`; the compiler builds IR with ``model_construct``
and does not re-validate what it derived itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, StringConstraints

from rgraph.ir.types import TensorType, construct

Name = Annotated[
    str, StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_.:]*$", min_length=1, max_length=200)
]
Scalar = bool | int | float | str | None
AttrValue = Scalar | list[Scalar]  # flat: attributes never nest

_STRICT = ConfigDict(extra="forbid", frozen=True)


class SourceLoc(BaseModel):
    """Where in the user's script a node was defined."""

    model_config = _STRICT

    file: Annotated[str, StringConstraints(max_length=4096)]
    line: Annotated[int, Field(ge=0)]
    function: Annotated[str, StringConstraints(max_length=200)] = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


class Var(BaseModel):
    """A typed value name: a graph input or a node output."""

    model_config = _STRICT

    name: Name
    type: TensorType


class Init(BaseModel):
    """How a parameter's initial value is drawn (see :mod:`rgraph.init`).

    ``kind`` is one of ``zeros``, ``ones``, ``constant`` (``value``), ``uniform``
    (``low``, ``high``), ``normal`` (``mean``, ``std``), ``glorot_uniform`` and
    ``glorot_normal`` (fan-in and fan-out from the last two dims).
    """

    model_config = _STRICT

    kind: Literal[
        "zeros", "ones", "constant", "uniform", "normal", "glorot_uniform", "glorot_normal"
    ]
    value: float = 0.0
    low: float = -0.08
    high: float = 0.08
    mean: float = 0.0
    std: float = 1.0


class Param(BaseModel):
    """A trainable tensor: its name, concrete type and initializer."""

    model_config = _STRICT

    name: Name
    type: TensorType
    init: Init = Init(kind="zeros")


class Const(BaseModel):
    """A constant tensor stored in the graph, as row-major flat data."""

    model_config = _STRICT

    name: Name
    type: TensorType
    data: list[bool | int | float]


# The fields that define values: a copy that changes none of them has the same types.
_VALUES = frozenset({"inputs", "params", "consts", "nodes"})


def resolve(name: str, renames: Mapping[str, str]) -> str:
    """What ``name`` stands for after ``renames`` (a pass's old name -> new name),
    following chains."""
    while name in renames:
        name = renames[name]
    return name


class Node(BaseModel):
    """One op application: ``outputs = op(inputs; attrs)``, with nested ``bodies``."""

    model_config = _STRICT

    op: Annotated[str, StringConstraints(min_length=1, max_length=100)]
    inputs: tuple[Name, ...]
    outputs: tuple[Var, ...]
    attrs: dict[Name, AttrValue] = {}
    bodies: dict[Name, GraphIR] = {}
    loc: SourceLoc | None = None

    def renamed(self, renames: Mapping[str, str]) -> Node:
        """This node reading, for each input in ``renames``, what it now stands for
        (following chains); itself if no input is renamed."""
        if not any(i in renames for i in self.inputs):
            return self
        inputs = tuple(resolve(i, renames) for i in self.inputs)
        return self.model_copy(update={"inputs": inputs})

    def map_bodies(self, transform: Callable[[GraphIR], GraphIR]) -> Node:
        """This node with ``transform`` applied to each body; itself if none changed
        (passes recurse into loop bodies through this)."""
        if not self.bodies:
            return self
        bodies = {k: transform(b) for k, b in self.bodies.items()}
        if all(bodies[k] is self.bodies[k] for k in bodies):
            return self
        return self.model_copy(update={"bodies": bodies})


class GraphIR(BaseModel):
    """A whole graph: its interface (inputs, params, outputs) and its nodes.

    ``str(graph)`` gives the text form described in ``docs/ir.md``.
    """

    model_config = _STRICT
    _types: dict[str, TensorType] | None = PrivateAttr(default=None)
    # The ``nodes`` tuple known to be in dependency order (see :meth:`mark_scheduled`).
    _scheduled: tuple[Node, ...] | None = PrivateAttr(default=None)
    _ops: tuple[tuple[Node, ...], frozenset[str]] | None = PrivateAttr(default=None)

    name: Name
    inputs: tuple[Var, ...] = ()
    params: tuple[Param, ...] = ()
    consts: tuple[Const, ...] = ()
    nodes: tuple[Node, ...] = ()
    outputs: tuple[Name, ...] = ()

    def __eq__(self, other: object) -> bool:  # fields only: the types cache is no part of it
        return type(other) is type(self) and self.__dict__ == other.__dict__

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        from rgraph.ir.printer import format_graph

        return format_graph(self)

    def types(self) -> dict[str, TensorType]:
        """The type of every value the graph defines, by name (computed once; a copy)."""
        types = self.known_types()
        if types is None:
            types = self._collect_types()
            self.cache_types(types)
        return dict(types)

    def cache_types(self, types: dict[str, TensorType]) -> GraphIR:
        """Give :meth:`types` its answer, known by the pass that built the graph; returns
        the graph itself. ``types`` must be what :meth:`types` would compute, in its order
        (inputs, params, consts, node outputs); it is kept, not copied."""
        private = {**(self.__pydantic_private__ or {}), "_types": types}
        object.__setattr__(self, "__pydantic_private__", private)
        return self

    def cache_ops(self, ops: Iterable[str]) -> GraphIR:
        """Give :meth:`ops` its answer, known by whoever built the nodes (the builder
        notes each op it records); returns the graph itself. ``ops`` must be what
        :meth:`ops` would compute."""
        cached = (self.nodes, frozenset(ops))
        private = {**(self.__pydantic_private__ or {}), "_ops": cached}
        object.__setattr__(self, "__pydantic_private__", private)
        return self

    def mark_scheduled(self) -> GraphIR:
        """Record that the nodes are in dependency order; returns the graph itself.

        For the passes that made them so (a cache, no part of the IR): :func:`schedule`
        then returns such a graph without checking it again. The mark is kept with the
        ``nodes`` tuple it was given for, so a copy with other nodes is not marked.
        """
        private = {**(self.__pydantic_private__ or {}), "_scheduled": self.nodes}
        object.__setattr__(self, "__pydantic_private__", private)
        return self

    def ops(self) -> frozenset[str]:
        """The ops of the nodes (not of nested bodies), and ``"bodies"`` if some node has
        bodies: passes ask it to return at once when they have nothing to do. Computed
        once per ``nodes`` tuple."""
        private = self.__pydantic_private__ or {}
        cached = private.get("_ops")
        if cached is None or cached[0] is not self.nodes:
            ops: set[str] = set()
            add, bodies = ops.add, False
            for n in self.nodes:  # one sweep: on a long graph, reaching each node is the cost
                add(n.op)
                if n.bodies:
                    bodies = True
            if bodies:
                ops.add("bodies")
            cached = (self.nodes, frozenset(ops))
            object.__setattr__(self, "__pydantic_private__", {**private, "_ops": cached})
        return cached[1]

    def use_counts(self) -> dict[str, int]:
        """How many times each value is read: by a node's input, or as an output."""
        uses: dict[str, int] = {}
        for n in self.nodes:
            for i in n.inputs:
                uses[i] = uses.get(i, 0) + 1
        for o in self.outputs:
            uses[o] = uses.get(o, 0) + 1
        return uses

    @property
    def known_scheduled(self) -> bool:
        """Whether :meth:`mark_scheduled` was called for the current nodes."""
        private = self.__pydantic_private__
        return private is not None and private.get("_scheduled") is self.nodes

    def _collect_types(self) -> dict[str, TensorType]:
        out: dict[str, TensorType] = {}
        for group in (self.inputs, self.params, self.consts):
            for v in group:
                out[v.name] = v.type
        for node in self.nodes:
            for v in node.outputs:
                out[v.name] = v.type
        return out

    def known_types(self) -> dict[str, TensorType] | None:
        """What :meth:`types` answers, if it was computed or given; else None. For passes
        that derive a graph's types from another's; the dict itself, not to be changed."""
        private = self.__pydantic_private__
        return None if private is None else private.get("_types")

    def replace(self, **changes: Any) -> GraphIR:
        """A copy with some fields replaced, without re-validation (for passes).

        What is cached of the graph carries over where it still holds: the types if the
        values are the same, and what is kept with its ``nodes`` tuple (the order, the
        ops), which is checked against the copy's own ``nodes`` when asked."""
        copy = construct(GraphIR, **{**self.__dict__, **changes})
        private = self.__pydantic_private__
        if private:
            kept = {k: v for k, v in private.items() if k != "_types"}
            if all(k not in _VALUES or changes[k] is self.__dict__[k] for k in changes):
                kept["_types"] = private.get("_types")
            object.__setattr__(copy, "__pydantic_private__", {**copy.__pydantic_private__, **kept})
        return copy


Node.model_rebuild()
