"""Common-subexpression elimination by structural equality."""

from __future__ import annotations

from rgraph.ir.graph import GraphIR
from rgraph.ir.op import freeze


def cse(graph: GraphIR) -> GraphIR:
    """Merge nodes with the same op, inputs and attrs, and constants with the same data.

    Expects a scheduled graph. Nodes with nested bodies, and nodes that define a graph
    output (their names are the program's interface), are kept.

    Before: ``a = tanh(x); b = tanh(x); c = add(a, b)``
    After:  ``a = tanh(x); c = add(a, a)``
    """
    outputs = set(graph.outputs)
    rename: dict[str, str] = {}
    seen_consts: dict[tuple, str] = {}
    consts = []
    for c in graph.consts:
        key = (c.type.dtype, c.type.shape, freeze(c.data))
        if key in seen_consts and c.name not in outputs:
            rename[c.name] = seen_consts[key]
        else:
            seen_consts.setdefault(key, c.name)
            consts.append(c)
    seen: dict[tuple, tuple[str, ...]] = {}
    nodes = []
    for node in graph.nodes:
        inputs = node.inputs
        if rename:
            renamed = tuple([rename.get(i, i) for i in inputs])
            if renamed != inputs:
                inputs = renamed
                node = node.model_copy(update={"inputs": inputs})
        if node.bodies:
            nodes.append(node)
            continue
        key = (node.op, inputs, freeze(node.attrs) if node.attrs else ())
        outs = node.outputs
        names = (outs[0].name,) if len(outs) == 1 else tuple(o.name for o in outs)
        first = seen.get(key)
        if first is not None and not outputs.intersection(names):
            rename.update(zip(names, first))
            continue
        if first is None:
            seen[key] = names
        nodes.append(node)
    if not rename:
        return graph
    merged = graph.replace(nodes=tuple(nodes), consts=tuple(consts))
    # A use now names the first of equal values, made before: the order still holds.
    return merged.mark_scheduled() if graph.known_scheduled else merged
