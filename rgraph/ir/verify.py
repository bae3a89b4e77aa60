"""The verifier: re-derives every type from the op definitions and checks the graph.

Used at the borders (IR given as data, files) and in tests; the compiler trusts what it
built itself. :func:`problems` lists everything wrong; :func:`verify` raises the first.
"""

from __future__ import annotations

import math

from rgraph.builder import derive_without_attrs
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

    def redefined(name: str, what: str) -> None:
        errors.append(DuplicateValueError(f"{what} '{name}' redefines a value of that name"))

    for v in graph.inputs:
        if v.name in types:
            redefined(v.name, "input")
        types[v.name] = v.type
    for p in graph.params:
        if p.name in types:
            redefined(p.name, "param")
        types[p.name] = p.type
        if not p.type.is_concrete:
            errors.append(ShapeError(f"param '{p.name}' has a symbolic shape {p.type}"))
    for c in graph.consts:
        if c.name in types:
            redefined(c.name, "const")
        types[c.name] = c.type
        errors.extend(_check_const(c))
    for node in graph.nodes:
        for out in node.outputs:
            if out.name in types:
                redefined(out.name, f"output of node {_label(node)}")
            types[out.name] = out.type
    incomplete: set[int] = set()
    for i, node in enumerate(graph.nodes):
        for name in node.inputs:
            if name not in types:
                missing = [name for name in node.inputs if name not in types]
                incomplete.add(i)
                errors.append(
                    UndefinedValueError(f"node {_label(node)} uses undefined value(s) {missing}")
                )
                break
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
    ins = [types[i] for i in node.inputs]
    if not node.attrs and not node.bodies:  # the common case: remembered by type
        derived = derive_without_attrs(op, ins)[2]
    else:
        op.check_arity(len(node.inputs))
        derived = op.infer(ins, op.node_attrs(node))
    outputs = node.outputs
    if len(derived) != len(outputs):
        raise GraphError(f"declares {len(outputs)} outputs, op '{node.op}' gives {len(derived)}")
    for out, want in zip(outputs, derived):
        t = out.type
        if t is not want and (t.dtype != want.dtype or t.shape != want.shape):
            raise ShapeError(f"output '{out.name}' is declared {t}, op derives {want}")


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
