"""Merging matrix products that share an operand into one (stacked gate weights)."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Container

from rgraph.ir.graph import GraphIR, Node, Var
from rgraph.ir.op import get_op
from rgraph.ir.passes.schedule import schedule
from rgraph.ir.types import construct, make_type


def merge_matmuls(graph: GraphIR) -> GraphIR:
    """Replace products ``x @ W_i`` that share ``x`` by one ``x @ concat(W_i)`` and a split.

    Every ``W_i`` is a matrix; loop bodies are merged too. An LSTM step's four gates then
    cost one product instead of four, and so does their backward.

    Before: ``i = matmul(h, Wi); f = matmul(h, Wf)``
    After:  ``W = concat[axis=1](Wi, Wf); p = matmul(h, W); i, f = split[axis=-1](p)``
    """
    if not graph.ops() & {"matmul", "bodies"}:  # most graphs have nothing to merge
        return graph
    nodes = [n.map_bodies(merge_matmuls) for n in graph.nodes]
    changed = any(new is not old for new, old in zip(nodes, graph.nodes))
    types = graph.types()
    groups: dict[tuple, list[int]] = defaultdict(list)
    for i, n in enumerate(nodes):
        if n.op != "matmul":
            continue
        a = get_op("matmul").node_attrs(n)
        weight = types[n.inputs[1]]
        width = weight.shape[0] if a.transpose_b else weight.shape[-1]
        if weight.rank == 2 and isinstance(width, int):
            groups[(n.inputs[0], a.transpose_a, a.transpose_b, weight.dtype)].append(i)
    merged: set[int] = set()
    extra: list[Node] = []
    names = FreshNames(types)
    for (x, _, tb, dtype), members in groups.items():
        if len(members) < 2:
            continue
        members = _independent(nodes, members)
        if len(members) < 2:
            continue
        group = [nodes[i] for i in members]
        weights = [types[n.inputs[1]] for n in group]
        widths = [w.shape[0] if tb else w.shape[1] for w in weights]
        depth = weights[0].shape[1] if tb else weights[0].shape[0]
        if any((w.shape[1] if tb else w.shape[0]) != depth for w in weights):
            continue
        total = sum(widths)
        stacked = construct(
            Var,
            name=names.fresh("wcat"),
            type=make_type(dtype, (total, depth) if tb else (depth, total)),
        )
        out_type = group[0].outputs[0].type
        product = construct(
            Var, name=names.fresh("mm"), type=make_type(dtype, (*out_type.shape[:-1], total))
        )
        attrs = dict(group[0].attrs)
        loc = group[0].loc
        extra += [
            make_node(
                "concat", tuple(n.inputs[1] for n in group), (stacked,), {"axis": int(not tb)}, loc
            ),
            make_node("matmul", (x, stacked.name), (product,), attrs, loc),
            make_node(
                "split",
                (product.name,),
                tuple(n.outputs[0] for n in group),
                {"axis": -1, "sizes": widths},
                loc,
            ),
        ]
        merged.update(members)
    if not merged and not changed:
        return graph
    kept = [n for i, n in enumerate(nodes) if i not in merged]
    return schedule(graph.replace(nodes=tuple(kept + extra)))


def make_node(op: str, inputs: tuple, outputs: tuple, attrs: dict, loc) -> Node:
    plain = get_op(op).attrs_from_kwargs(attrs)[1]  # canonical, as the builder writes them
    return construct(Node, op=op, inputs=inputs, outputs=outputs, attrs=plain, bodies={}, loc=loc)


def until_unchanged(
    rewrite: Callable[[GraphIR], GraphIR | None], graph: GraphIR, rounds: int
) -> GraphIR:
    """``rewrite`` applied again (at most ``rounds`` times) while it changes something:
    each round returns a new graph, or None when it found nothing to do."""
    for _ in range(rounds):
        rewritten = rewrite(graph)
        if rewritten is None:
            break
        graph = rewritten
    return graph


class FreshNames:
    """Fresh value names that the graph does not use yet.

    ``taken`` (the graph's names: its types, by name) is read, not copied: a pass makes
    few names, and a copy for each pass and round costs more than they do.
    """

    def __init__(self, taken: Container[str]):
        self.taken = taken
        self.given: set[str] = set()
        self.count = 0

    def fresh(self, prefix: str) -> str:
        name = f"{prefix}{self.count}"
        while name in self.taken or name in self.given:
            self.count += 1
            name = f"{prefix}{self.count}"
        self.given.add(name)
        return name


def _independent(nodes: list[Node], members: list[int]) -> list[int]:
    """The members whose weight does not depend on any member's product: one product
    of all the weights needs every weight before any of the products."""
    tainted = {n.outputs[0].name for n in (nodes[i] for i in members)}
    for n in nodes:  # in schedule order
        if not tainted.isdisjoint(n.inputs):
            tainted.update(o.name for o in n.outputs)
    return [i for i in members if nodes[i].inputs[1] not in tainted]
