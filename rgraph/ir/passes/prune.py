"""Dead-code elimination: keep only what the requested outputs need."""

from __future__ import annotations

from collections.abc import Sequence

from rgraph.errors import UndefinedValueError
from rgraph.ir.graph import GraphIR, Node


def prune(graph: GraphIR, outputs: Sequence[str] | None = None) -> GraphIR:
    """Drop nodes and constants that no output depends on.

    ``outputs`` replaces the graph's outputs when given. Inputs and parameters stay: they
    are the graph's interface. Iterative; works in any node order.

    Before: ``a = tanh(x); b = exp(x); return a``  After: ``a = tanh(x); return a``
    """
    outputs = tuple(graph.outputs if outputs is None else outputs)
    nodes = graph.nodes
    if graph.known_scheduled:
        keep, needed, made = _walk_back(nodes, outputs)
    else:
        keep, needed, made = _walk_producers(nodes, outputs)
    interface: set[str] | None = None
    for name in outputs:
        if name not in made:
            if interface is None:
                interface = {v.name for g in (graph.inputs, graph.params, graph.consts) for v in g}
            if name not in interface:
                raise UndefinedValueError(f"output '{name}' is not a value of graph '{graph.name}'")
    kept = nodes if all(keep) else tuple([n for n, k in zip(nodes, keep) if k])
    consts = tuple([c for c in graph.consts if c.name in needed])
    if len(kept) == len(nodes) and len(consts) == len(graph.consts):
        if outputs == graph.outputs:
            return graph
        pruned = graph.replace(outputs=outputs)
    else:
        pruned = graph.replace(nodes=kept, consts=consts, outputs=outputs)
        known = graph.known_types()
        if known is not None:  # the same, less what was dropped: no sweep over the nodes
            types = dict(known)
            for node, k in zip(nodes, keep):
                if not k:
                    for out in node.outputs:
                        del types[out.name]
            for c in graph.consts:
                if c.name not in needed:
                    del types[c.name]
            pruned.cache_types(types)
    return pruned.mark_scheduled() if graph.known_scheduled else pruned  # still in order


def _walk_back(nodes: tuple[Node, ...], outputs: tuple[str, ...]):
    """Which nodes the outputs need, in one backward sweep over nodes in dependency order
    (every user of a value comes after its producer, so a node's fate is known when the
    sweep reaches it). Also the needed names, and those of the outputs that nodes make."""
    needed = set(outputs)
    wanted = set(outputs)
    made: set[str] = set()
    keep = [False] * len(nodes)
    for i in range(len(nodes) - 1, -1, -1):
        node = nodes[i]
        outs = node.outputs
        if len(outs) == 1:
            name = outs[0].name
            if name not in needed:
                continue
            if name in wanted:
                made.add(name)
        else:
            names = [o.name for o in outs]
            if needed.isdisjoint(names):
                continue
            made.update(wanted.intersection(names))
        keep[i] = True
        needed.update(node.inputs)
    return keep, needed, made


def _walk_producers(nodes: tuple[Node, ...], outputs: tuple[str, ...]):
    """As :func:`_walk_back` for nodes in any order: from each needed name to its producer."""
    producer = {out.name: i for i, node in enumerate(nodes) for out in node.outputs}
    needed: set[str] = set()
    keep = [False] * len(nodes)
    stack = list(outputs)
    while stack:
        name = stack.pop()
        if name in needed:
            continue
        needed.add(name)
        i = producer.get(name)
        if i is not None and not keep[i]:
            keep[i] = True
            stack.extend(nodes[i].inputs)
    return keep, needed, {name for name in outputs if name in producer}
