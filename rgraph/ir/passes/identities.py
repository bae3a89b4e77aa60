"""Removing ``identity`` nodes: consumers read the value itself."""

from __future__ import annotations

from rgraph.ir.graph import GraphIR


def forward_identities(graph: GraphIR) -> GraphIR:
    """Replace every use of ``y = identity(x)`` by ``x`` and drop the node.

    A graph's outputs keep their names (they are its interface), so an identity that
    defines an output stays, but what reads it reads ``x``: equal work on ``y`` and on
    ``x`` is then seen as equal by ``cse``. A loop body's outputs are positional and are
    renamed too. Autodiff names each gradient with an identity, one per step inside a
    loop.

    Before: ``y = identity(x); z = tanh(y)``  After: ``z = tanh(x)``
    """
    return _forward(graph, keep_outputs=True)


def _forward(graph: GraphIR, keep_outputs: bool) -> GraphIR:
    ops, nodes = graph.ops(), graph.nodes
    bodies = "bodies" in ops
    if "identity" not in ops and not bodies:
        return graph
    first = next((i for i, n in enumerate(nodes) if n.op == "identity"), None)
    # In dependency order, nothing before the first identity reads what it forwards.
    start = first if first is not None and not bodies and graph.known_scheduled else 0
    protected = set(graph.outputs) if keep_outputs else set()
    source: dict[str, str] = {}
    kept = list(nodes[:start])
    append = kept.append
    changed = False
    for node in nodes[start:]:
        if node.op == "identity":
            x, y = node.inputs[0], node.outputs[0].name
            source[y] = source.get(x, x)
            if y not in protected:
                changed = True
                continue
        new = node
        if node.bodies:
            new = node.map_bodies(lambda b: _forward(b, keep_outputs=False))
        if source and not source.keys().isdisjoint(node.inputs):
            new = new.model_copy(update={"inputs": tuple([source.get(i, i) for i in node.inputs])})
        if new is not node:
            changed = True
        append(new)
    if not changed:
        return graph
    outputs = tuple(o if o in protected else source.get(o, o) for o in graph.outputs)
    forwarded = graph.replace(nodes=tuple(kept), outputs=outputs)
    # A use of ``y = identity(x)`` now reads ``x``, made before: the order still holds.
    return forwarded.mark_scheduled() if graph.known_scheduled else forwarded
