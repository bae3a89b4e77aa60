"""The verifier: re-derives every type from the op definitions and checks the graph.

Used at the borders (IR given as data, files) and in tests; the compiler trusts what it
built itself. :func:`problems` lists everything wrong; :func:`verify` raises the first.
"""

from __future__ import annotations

import math

from rgraph.errors import (
    DuplicateValueError,
    GraphError,
    ShapeError,
    UndefinedValueError,
)
from rgraph.ir.graph import GraphIR, Node
from rgraph.ir.op import get_op
from rgraph.ir.passes.schedule import schedule
from rgraph.ir.types import TensorType

_PYTYPES = {"bool": (bool,), "int32": (int,), "int64": (int,)}


def verify(graph: GraphIR) -> GraphIR:
    """Raise the first problem found in ``graph``, else return it unchanged."""
    found = problems(graph)
    if found:
        raise found[0]
    return graph


def problems(graph: GraphIR) -> list[GraphError]:
    """Every problem found: duplicate or undefined names, unknown ops, bad attributes,
    wrong arity, a cycle, types that the ops do not derive, bad constants."""
    errors: list[GraphError] = []
    types: dict[str, TensorType] = {}

    def define(name: str, t: TensorType, what: str) -> None:
        if name in types:
            errors.append(DuplicateValueError(f"{what} '{name}' redefines a value of that name"))
        types[name] = t

    for v in graph.inputs:
        define(v.name, v.type, "input")
    for p in graph.params:
        define(p.name, p.type, "param")
        if not p.type.is_concrete:
            errors.append(ShapeError(f"param '{p.name}' has a symbolic shape {p.type}"))
    for c in graph.consts:
        define(c.name, c.type, "const")
        errors.extend(_check_const(c))
    for node in graph.nodes:
        for out in node.outputs:
            define(out.name, out.type, f"output of node {_label(node)}")
    incomplete: set[int] = set()
    for i, node in enumerate(graph.nodes):
        missing = [name for name in node.inputs if name not in types]
        if missing:
            incomplete.add(i)
            errors.append(
                UndefinedValueError(f"node {_label(node)} uses undefined value(s) {missing}")
            )
    for name in graph.outputs:
        if name not in types:
            errors.append(UndefinedValueError(f"graph output '{name}' is not defined"))
    # With two definitions of a name no type can be trusted; other problems do not stop
    # the per-node checks, so that one call lists them all.
    if any(isinstance(e, DuplicateValueError) for e in errors):
        return errors
    try:
        schedule(graph)
    except GraphError as e:
        return [*errors, e]
    for i, node in enumerate(graph.nodes):
        if i in incomplete:
            continue
        try:
            _check_node(node, types)
        except GraphError as e:
            errors.append(type(e)(f"node {_label(node)}: {e}"))
        for body in node.bodies.values():
            errors.extend(type(e)(f"in body of node {_label(node)}: {e}") for e in problems(body))
    return errors


def _check_node(node: Node, types: dict[str, TensorType]) -> None:
    op = get_op(node.op)
    op.check_arity(len(node.inputs))
    a = op.node_attrs(node)
    derived = op.infer([types[i] for i in node.inputs], a)
    declared = [o.type for o in node.outputs]
    if len(derived) != len(declared):
        raise GraphError(f"declares {len(declared)} outputs, op '{node.op}' gives {len(derived)}")
    for out, want in zip(node.outputs, derived):
        if out.type != want:
            raise ShapeError(f"output '{out.name}' is declared {out.type}, op derives {want}")


def _check_const(c) -> list[GraphError]:
    if not c.type.is_concrete:
        return [ShapeError(f"const '{c.name}' has a symbolic shape {c.type}")]
    size = math.prod(c.type.shape)
    if len(c.data) != size:
        return [
            ShapeError(f"const '{c.name}' of type {c.type} holds {len(c.data)} values, not {size}")
        ]
    allowed = _PYTYPES.get(c.type.dtype, (int, float))
    if not all(
        isinstance(x, allowed) and (bool in allowed or not isinstance(x, bool)) for x in c.data
    ):
        return [GraphError(f"const '{c.name}' holds values that are not {c.type.dtype}")]
    return []


def _label(node: Node) -> str:
    outs = ", ".join(o.name for o in node.outputs)
    where = f" at {node.loc}" if node.loc is not None else ""
    return f"'{outs} = {node.op}(...)'{where}"
