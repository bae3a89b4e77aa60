"""Dead-code elimination: keep only what the requested outputs need."""

from __future__ import annotations

from collections.abc import Sequence

from rgraph.errors import UndefinedValueError
from rgraph.ir.graph import GraphIR


def prune(graph: GraphIR, outputs: Sequence[str] | None = None) -> GraphIR:
    """Drop nodes and constants that no output depends on.

    ``outputs`` replaces the graph's outputs when given. Inputs and parameters stay: they
    are the graph's interface. Iterative; works in any node order.

    Before: ``a = tanh(x); b = exp(x); return a``  After: ``a = tanh(x); return a``
    """
    outputs = tuple(graph.outputs if outputs is None else outputs)
    producer = {out.name: i for i, node in enumerate(graph.nodes) for out in node.outputs}
    defined = set(producer) | graph.types().keys()
    for name in outputs:
        if name not in defined:
            raise UndefinedValueError(f"output '{name}' is not a value of graph '{graph.name}'")
    needed: set[str] = set()
    keep = [False] * len(graph.nodes)
    stack = list(outputs)
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        i = producer.get(name)
        if i is not None and not keep[i]:
            keep[i] = True
            stack.extend(graph.nodes[i].inputs)
    nodes = tuple(n for n, k in zip(graph.nodes, keep) if k)
    consts = tuple(c for c in graph.consts if c.name in needed)
    if len(nodes) == len(graph.nodes) and len(consts) == len(graph.consts):
        return graph if outputs == graph.outputs else graph.replace(outputs=outputs)
    return graph.replace(nodes=nodes, consts=consts, outputs=outputs)
