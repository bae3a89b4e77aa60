"""Chains of elementwise ops over whole sequences, run block by block in the caches.

``sink`` and ``hoist`` move work out of loops onto whole ``(T, B, H)`` arrays: fewer
calls, but each op then streams arrays far larger than the caches through memory (an
LSTM's derivatives: ``1 - y``, ``y * (1 - y)``, ``c * c``, a concat, a product, over
every step). Such an op computes each row (index of the leading axis) from the same row
of its inputs, so a connected group of them can run on a few rows at a time, each
block's values staying in the caches from one op to the next: a ``map`` node, whose
kernel picks the block size from the sizes it is prepared for.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from rgraph.ir import dims
from rgraph.ir.graph import GraphIR, Node, Var
from rgraph.ir.op import get_op
from rgraph.ir.passes.merge import FreshNames
from rgraph.ir.passes.schedule import schedule
from rgraph.ir.types import TensorType, construct


def tile(graph: GraphIR) -> GraphIR:
    """Group connected nodes that keep rows apart (:meth:`Op.rowwise`) into ``map`` nodes.

    Only the graph's own nodes (a loop body's values are one step's already); only
    values that lead with a symbolic dim, as a sequence's ``T``, and groups of two nodes
    or more. A group takes its values from outside (whole if they do not lead with that
    dim) and returns those that are read outside it.

    Before::

        d = sub(one, y); s = eltmul(y, d); g = eltmul(s, c)      # all f64[T,B,H]

    After::

        g = map[dim=T, num_xs=2](y, c, one) { d = sub(one, y); s = eltmul(y, d);
                                              g = eltmul(s, c) }
    """
    graph = schedule(graph)
    types = graph.types()
    if not any(len(t.shape) > 1 and type(t.shape[0]) is str for t in types.values()):
        return graph  # (quickly: a long chain's types are a few shared objects)
    leading = [
        i
        for i, n in enumerate(graph.nodes)
        if len(shape := n.outputs[0].type.shape) > 1 and type(shape[0]) is str
    ]
    # An identity is an alias at the top level: its readers read its input instead (so
    # that an output's name between two ops does not keep them apart).
    alias = {n.outputs[0].name: n.inputs[0] for n in graph.nodes if n.op == "identity"}
    nodes = list(graph.nodes)
    dim_of = {}
    for i in leading:
        nodes[i] = node = nodes[i].renamed(alias) if nodes[i].op != "identity" else nodes[i]
        dim = _row_dim(node, types)
        if dim is not None:
            dim_of[i] = dim
    if len(dim_of) < 2:
        return graph
    groups = [m for g in _groups(nodes, dim_of) if len(m := _no_outer_splits(g, nodes)) > 1]
    if not groups:
        return graph
    names = FreshNames(types)
    group_of = {i: k for k, members in enumerate(groups) for i in members}
    readers: dict[str, set[int]] = {}  # value -> the groups reading it (-1: no group)
    for i, n in enumerate(nodes):
        for name in n.inputs:
            readers.setdefault(name, set()).add(group_of.get(i, -1))
    for name in graph.outputs:
        readers.setdefault(name, set()).add(-1)
    # Each map where its first node was (schedule then moves it after its inputs): it
    # runs where its nodes ran, while the values it reads are still in the caches.
    made = {}
    for k, members in enumerate(groups):
        out = [o for i in members for o in nodes[i].outputs if readers.get(o.name, set()) - {k}]
        if out:  # (else dead: prune's to drop)
            body = names.fresh(f"{graph.name}_map")
            made[members[0]] = _map_node(
                [nodes[i] for i in members], dim_of[members[0]], types, out, body
            )
    kept = [made.get(i, n) for i, n in enumerate(nodes) if i not in group_of or i in made]
    return schedule(graph.replace(nodes=tuple(kept)))


def _row_dim(node: Node, types: dict[str, TensorType]) -> str | None:
    """The dim whose rows ``node`` keeps apart, if it may go into a ``map``: outputs that
    lead with a plain symbolic dim, nowhere else in its types."""
    if node.bodies or node.op == "identity":  # (an identity is free outside a map)
        return None
    first = node.outputs[0].type
    if first.rank < 2 or not isinstance(first.shape[0], str) or "*" in first.shape[0]:
        return None
    dim = first.shape[0]
    ins = [types[i] for i in node.inputs]
    for t in [*ins, *(o.type for o in node.outputs)]:
        if any(dim in dims.names(d) for d in t.shape[1:]):
            return None
    if any(o.type.rank == 0 or o.type.shape[0] != dim for o in node.outputs):
        return None
    op = get_op(node.op)
    return dim if op.rowwise(op.node_attrs(node), ins, dim) else None


def _groups(nodes: Sequence[Node], dim_of: dict[int, str]) -> list[list[int]]:
    """Connected groups of the nodes in ``dim_of`` (same dim), two nodes or more, that
    can each run as one node: no path leaves a group and comes back into it.

    One sweep in dependency order. A node joins the groups of its producers unless a
    path from one of them reaches it, or one of their members, through a node outside
    or through another group: ``after[i]`` holds the groups node ``i`` depends on,
    ``outside[g]`` those that group ``g`` depends on through outside nodes and groups.
    """
    producer = {o.name: i for i, n in enumerate(nodes) for o in n.outputs}
    parent: dict[int, int] = {}  # union-find over group ids (a group's first node)

    def find(g: int) -> int:
        while parent[g] != g:
            parent[g] = parent[parent[g]]
            g = parent[g]
        return g

    group_of: dict[int, int] = {}
    after: list[frozenset[int]] = []
    outside: dict[int, set[int]] = {}
    none: frozenset[int] = frozenset()
    for i, node in enumerate(nodes):
        producers = [producer[name] for name in node.inputs if name in producer]
        deps = set()
        for p in producers:
            deps |= after[p]
            if p in group_of:
                deps.add(group_of[p])
        after.append(frozenset(deps) if deps else none)
        if i not in dim_of:
            continue
        near = sorted(
            {find(group_of[p]) for p in producers if p in group_of and dim_of[p] == dim_of[i]}
        )
        # All the producers' groups if that makes no cycle, else the first one that does not.
        for joined in [set(near), *({g} for g in near)] if len(near) > 1 else [set(near)]:
            through = _through(joined, producers, group_of, after, outside, find)
            if joined and through.isdisjoint(joined):
                root = min(joined)
                for g in joined:
                    parent[g] = root
                outside[root] = through
                break
        else:
            root = parent[i] = i
            outside[root] = _through(set(), producers, group_of, after, outside, find)
        group_of[i] = root
    members: dict[int, list[int]] = {}
    for i, g in group_of.items():
        members.setdefault(find(g), []).append(i)
    return [sorted(m) for m in members.values() if len(m) > 1]


def _through(
    joined: set[int],
    producers: list[int],
    group_of: dict[int, int],
    after: list[frozenset[int]],
    outside: dict[int, set[int]],
    find: Callable[[int], int],
) -> set[int]:
    """The groups a node whose producers are ``producers`` depends on through nodes
    outside ``joined``, once it joins those groups (directly, or through other groups)."""
    through = set()
    for p in producers:
        if p in group_of and find(group_of[p]) in joined:
            continue
        through |= {find(g) for g in after[p]}
        if p in group_of:
            through.add(find(group_of[p]))
    for g in joined:
        through |= {find(h) for h in outside[g]}
    # Once a group runs as one node, what depends on one of its members depends on all
    # that its members depend on: close over the groups' own dependencies.
    closed: set[int] = set()
    while through:
        g = through.pop()
        if g not in closed:
            closed.add(g)
            through |= {find(h) for h in outside[g]} - closed
    return closed


def _no_outer_splits(members: list[int], nodes: Sequence[Node]) -> list[int]:
    """``members`` without the splits of values made outside them: outside, a split is
    one call making views, read block by block like any input; inside, it is a call per
    block, and a piece read outside too would be copied out."""
    made: set[str] = set()
    kept = []
    for i in members:
        node = nodes[i]
        if node.op == "split" and node.inputs[0] not in made:
            continue
        kept.append(i)
        made.update(o.name for o in node.outputs)
    return kept


def _map_node(
    members: list[Node],
    dim: str,
    types: dict[str, TensorType],
    outs: list[Var],
    body_name: str,
) -> Node:
    """The ``map`` node running ``members`` (in dependency order), returning ``outs``."""
    made = {o.name for n in members for o in n.outputs}
    taken = list(dict.fromkeys(i for n in members for i in n.inputs if i not in made))
    xs = [name for name in taken if types[name].rank and types[name].shape[0] == dim]
    whole = [name for name in taken if name not in xs]
    body = construct(
        GraphIR,
        name=body_name,
        inputs=tuple(construct(Var, name=name, type=types[name]) for name in xs + whole),
        params=(),
        consts=(),
        nodes=tuple(members),
        outputs=tuple(o.name for o in outs),
    ).mark_scheduled()
    return construct(
        Node,
        op="map",
        inputs=(*xs, *whole),
        outputs=tuple(outs),
        attrs={"dim": dim, "num_xs": len(xs)},
        bodies={"body": body},
        loc=members[0].loc,
    )
