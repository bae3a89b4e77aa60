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
    seen: dict[tuple, tuple] = {}  # key -> the first node's outputs (Vars)
    setdefault = seen.setdefault
    nodes = []
    append = nodes.append
    for node in graph.nodes:
        inputs = node.inputs
        if rename and not rename.keys().isdisjoint(inputs):
            inputs = tuple([rename.get(i, i) for i in inputs])
            node = node.model_copy(update={"inputs": inputs})
        if node.bodies:
            append(node)
            continue
        attrs = node.attrs
        outs = node.outputs
        first = setdefault((node.op, inputs, freeze(attrs) if attrs else ()), outs)
        if first is not outs:
            names = (outs[0].name,) if len(outs) == 1 else tuple(o.name for o in outs)
            if not outputs.intersection(names):
                rename.update(zip(names, [o.name for o in first]))
                continue
        append(node)
    if not rename:
        return graph
    merged = graph.replace(nodes=tuple(nodes), consts=tuple(consts))
    # A use now names the first of equal values, made before: the order still holds.
    return merged.mark_scheduled() if graph.known_scheduled else merged
