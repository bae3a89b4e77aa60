"""Removing ``identity`` nodes: consumers read the value itself."""

from __future__ import annotations

from rgraph.ir.graph import GraphIR


def forward_identities(graph: GraphIR) -> GraphIR:
    """Replace every use of ``y = identity(x)`` by ``x`` and drop the node.

    A graph's outputs keep their names (they are its interface), so an identity that
    defines an output stays; a loop body's outputs are positional and are renamed too.
    Autodiff names each gradient with an identity, one per step inside a loop.

    Before: ``y = identity(x); z = tanh(y)``  After: ``z = tanh(x)``
    """
    return _forward(graph, keep_outputs=True)


def _forward(graph: GraphIR, keep_outputs: bool) -> GraphIR:
    protected = set(graph.outputs) if keep_outputs else set()
    if "bodies" not in graph.ops() and all(  # (autodiff names each gradient with one)
        n.outputs[0].name in protected for n in graph.nodes if n.op == "identity"
    ):
        return graph
    source: dict[str, str] = {}
    nodes = []
    append = nodes.append
    changed = False
    for node in graph.nodes:
        if node.op == "identity" and node.outputs[0].name not in protected:
            x = node.inputs[0]
            source[node.outputs[0].name] = source.get(x, x)
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
    outputs = tuple(source.get(o, o) for o in graph.outputs)
    forwarded = graph.replace(nodes=tuple(nodes), outputs=outputs)
    # A use of ``y = identity(x)`` now reads ``x``, made before: the order still holds.
    return forwarded.mark_scheduled() if graph.known_scheduled else forwarded
