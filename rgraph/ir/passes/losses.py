"""A cross-entropy loss and its generated gradient from one ``exp`` of the logits.

A training step computes ``softmax_cross_entropy`` (the loss) and, in its backward,
``softmax_cross_entropy_grad`` of the same logits: each goes through all the logits with
``exp`` (float64 ``exp`` costs several nanoseconds per element). The gradient's
cotangent is the seed of the loss, which depends on the loss only through ``full_like``,
that is through its type: made with ``full`` instead, the cotangent is known before the
loss, and one ``softmax_cross_entropy_and_grad`` computes both.
"""

from __future__ import annotations

from rgraph.ir.graph import GraphIR, Node
from rgraph.ir.passes.merge import make_node
from rgraph.ir.passes.prune import prune
from rgraph.ir.passes.schedule import schedule

LOSS, GRAD = "softmax_cross_entropy", "softmax_cross_entropy_grad"


def fuse_losses(graph: GraphIR) -> GraphIR:
    """Fuse each ``softmax_cross_entropy_grad`` with the ``softmax_cross_entropy`` of the
    same logits, targets, mask and reduction, where its cotangent does not depend on
    that loss once every ``full_like`` it comes from is a ``full`` of the same type.

    Before::

        loss = softmax_cross_entropy(z, t)
        seed = full_like(loss, value=1.0)
        dz = softmax_cross_entropy_grad(z, t, seed)

    After::

        seed = full(shape=[], value=1.0)
        loss, dz = softmax_cross_entropy_and_grad(z, t, seed)
    """
    if not {LOSS, GRAD} <= graph.ops():
        return graph
    producer = {o.name: n for n in graph.nodes for o in n.outputs}
    losses = {(*n.inputs, n.attrs.get("reduction")): n for n in graph.nodes if n.op == LOSS}
    types = graph.types()
    replaced: dict[int, Node] = {}  # id of a node -> what it becomes (None: removed)
    added: list[Node] = []
    for grad in graph.nodes:
        if grad.op != GRAD:
            continue
        logits, targets, ct, *mask = grad.inputs
        loss = losses.get((logits, targets, *mask, grad.attrs.get("reduction")))
        if loss is None or id(loss) in replaced:
            continue
        seeds = _seeds(ct, loss.outputs[0].name, producer)
        if seeds is None:
            continue
        for n in seeds:  # the same values, made from the type alone
            t = types[n.inputs[0]]
            attrs = {"shape": list(t.shape), "value": n.attrs["value"], "dtype": t.dtype}
            replaced[id(n)] = make_node("full", (), n.outputs, attrs, n.loc)
        replaced[id(loss)] = replaced[id(grad)] = None
        added.append(
            make_node(
                "softmax_cross_entropy_and_grad",
                grad.inputs,
                (loss.outputs[0], grad.outputs[0]),
                dict(loss.attrs),
                loss.loc,
            )
        )
    if not added:
        return graph
    nodes = [replaced.get(id(n), n) for n in graph.nodes]
    kept = [n for n in nodes if n is not None] + added
    return prune(schedule(graph.replace(nodes=tuple(kept))))


def _seeds(name: str, loss: str, producer: dict[str, Node]) -> list[Node] | None:
    """The ``full_like`` nodes that ``name`` is made from, if it depends on ``loss``
    through them only (None if it depends on it otherwise)."""
    seeds, seen, pending = [], set(), [name]
    while pending:
        v = pending.pop()
        if v in seen:
            continue
        seen.add(v)
        if v == loss:
            return None
        n = producer.get(v)
        if n is None:
            continue
        if n.op == "full_like":
            seeds.append(n)
        else:
            pending.extend(n.inputs)
    return seeds
