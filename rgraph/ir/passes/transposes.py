"""Transposes folded into the products and splits that make what they transpose.

The weight gradient of stacked gates is one product ``X^T dZ`` of shape ``(in, 4H)``, cut
into four ``(in, H)`` blocks, each transposed into a ``(H, in)`` gradient: four strided
views, which every reader (the optimiser) goes through ten times slower than rows. The
same product with its operands swapped, ``dZ^T X``, is ``(4H, in)``: its blocks are the
gradients themselves, contiguous.
"""

from __future__ import annotations

from rgraph.ir.graph import GraphIR, Node, Var
from rgraph.ir.op import get_op
from rgraph.ir.passes.merge import FreshNames, make_node, until_unchanged
from rgraph.ir.passes.prune import prune
from rgraph.ir.passes.schedule import schedule
from rgraph.ir.types import construct


def fold_transposes(graph: GraphIR) -> GraphIR:
    """Fold 2-d transposes into what makes their input (loop bodies too).

    - ``transpose`` of every piece of a ``split``: the split, along the other axis, of
      the transpose of its input;
    - ``transpose(matmul(a, b))``: ``matmul(b, a)`` with the transpose flags swapped and
      flipped (``(a^T b)^T = b^T a``);
    - ``reshape(reshape(x))``: one reshape, or ``x`` itself if of its shape;
    - ``transpose(transpose(x))``: ``x`` itself;

    each only where the transposed value has no other use (else both would be made).
    """
    if not graph.ops() & {"transpose", "bodies"}:
        return graph
    nodes = [n.map_bodies(fold_transposes) for n in graph.nodes]
    current = graph.replace(nodes=tuple(nodes)) if nodes != list(graph.nodes) else graph
    return until_unchanged(_fold_once, current, 4)  # a folded split exposes a product


def _fold_once(graph: GraphIR) -> GraphIR | None:
    types = graph.types()
    names = FreshNames(types)
    producer = {o.name: n for n in graph.nodes for o in n.outputs}
    users: dict[str, list[Node]] = {}
    for n in graph.nodes:
        for i in n.inputs:
            users.setdefault(i, []).append(n)
    outputs = set(graph.outputs)

    def only_use(name: str, node: Node) -> bool:
        return name not in outputs and [id(n) for n in users.get(name, [])] == [id(node)]

    def swaps(n: Node) -> bool:
        perm = get_op("transpose").node_attrs(n).perm
        return types[n.inputs[0]].rank == 2 and (perm is None or list(perm) == [1, 0])

    removed: set[int] = set()
    added: list[Node] = []
    renames: dict[str, str] = {}
    for n in graph.nodes:
        if n.op != "transpose" or id(n) in removed or not swaps(n):
            continue
        source = producer.get(n.inputs[0])
        if source is None or id(source) in removed:
            continue
        if source.op == "transpose" and swaps(source) and n.outputs[0].name not in outputs:
            renames[n.outputs[0].name] = source.inputs[0]  # its readers read the original
            removed.add(id(n))
        elif source.op == "matmul" and only_use(n.inputs[0], n):
            a = get_op("matmul").node_attrs(source)
            x, y = source.inputs
            if types[x].rank == 2 and types[y].rank == 2:
                flags = {"transpose_a": not a.transpose_b, "transpose_b": not a.transpose_a}
                added.append(make_node("matmul", (y, x), n.outputs, flags, n.loc))
                removed.update((id(n), id(source)))
        elif source.op == "split" and len(source.outputs) > 1:
            pieces = [users.get(o.name, []) for o in source.outputs]
            if not all(
                len(p) == 1 and p[0].op == "transpose" and swaps(p[0]) and only_use(o.name, p[0])
                for p, o in zip(pieces, source.outputs)
            ):
                continue
            axis = get_op("split").node_attrs(source).axis % 2
            whole = types[source.inputs[0]]
            flipped = construct(
                Var, name=names.fresh("transposed"), type=whole.with_shape(whole.shape[::-1])
            )
            added.append(make_node("transpose", source.inputs, (flipped,), {}, n.loc))
            outs = tuple(p[0].outputs[0] for p in pieces)
            sizes = list(get_op("split").node_attrs(source).sizes)
            added.append(
                make_node("split", (flipped.name,), outs, {"axis": 1 - axis, "sizes": sizes}, n.loc)
            )
            removed.add(id(source))
            removed.update(id(p[0]) for p in pieces)
    for n in graph.nodes:  # reshape(reshape(x))
        if n.op != "reshape" or id(n) in removed:
            continue
        inner = producer.get(n.inputs[0])
        if inner is None or inner.op != "reshape" or not only_use(n.inputs[0], n):
            continue
        x = inner.inputs[0]
        out = n.outputs[0]
        if types[x] == out.type and out.name not in outputs:
            renames[out.name] = x  # its readers read x
        else:
            added.append(make_node("reshape", (x,), (out,), dict(n.attrs), n.loc))
        removed.update((id(n), id(inner)))
    if not removed:
        return None
    kept = [n.renamed(renames) for n in [*(n for n in graph.nodes if id(n) not in removed), *added]]
    return prune(schedule(graph.replace(nodes=tuple(kept))))
