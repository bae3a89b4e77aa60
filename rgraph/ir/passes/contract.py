"""Folding a sum of matrix products into one product: ``sum_t A_t^T B_t = A^T B``.

Weight gradients come out of autodiff, and out of loops moved by ``sink``, as batched
products ``matmul[transpose_a](x, dz)`` of shape ``(T, in, out)`` summed over ``T``. Stacking
the steps along the contracted axis instead gives the same sum from one product of
``(T*B, in)`` and ``(T*B, out)``, without the ``T`` intermediate matrices.
"""

from __future__ import annotations

from rgraph.ir import dims
from rgraph.ir.graph import GraphIR, Node, Var
from rgraph.ir.op import get_op
from rgraph.ir.passes.merge import FreshNames, make_node
from rgraph.ir.passes.prune import prune
from rgraph.ir.types import construct, make_type


def contract(graph: GraphIR) -> GraphIR:
    """Rewrite ``sum`` over the batch axes of ``matmul[transpose_a]`` as one product.

    Before: ``p = matmul[transpose_a=true](x, y); s = sum[axes=[0]](p)``, with ``x``
    ``(T, B, m)`` and ``y`` ``(T, B, n)``

    After: ``x2 = reshape(x, [T*B, m]); y2 = reshape(y, [T*B, n]);
    s = matmul[transpose_a=true](x2, y2)``
    """
    ops = graph.ops()
    if "bodies" not in ops and not {"sum", "matmul"} <= ops:
        return graph
    # Only sums of single-use products qualify: find those before building anything.
    summed = {n.inputs[0] for n in graph.nodes if n.op == "sum"}
    products = {
        o.name: n for n in graph.nodes if n.op == "matmul" for o in n.outputs if o.name in summed
    }
    if not products and "bodies" not in ops:
        return graph
    uses = dict.fromkeys(products, 0)
    for n in graph.nodes:
        for i in n.inputs:
            if i in uses:
                uses[i] += 1
    for o in graph.outputs:
        if o in uses:
            uses[o] += 1
    types = graph.types()
    names = FreshNames(types) if products else None
    nodes: list[Node] = []
    changed = False
    for n in graph.nodes:
        if n.bodies:
            new = n.map_bodies(contract)
            changed |= new is not n
            n = new
        p = products.get(n.inputs[0]) if n.op == "sum" else None
        folded = _fold(n, p, types, uses, names) if p is not None else None
        if folded is None:
            nodes.append(n)
            continue
        nodes.extend(folded)
        changed = True
    if not changed:
        return graph
    return prune(graph.replace(nodes=tuple(nodes)))  # the batched products are now dead


def _fold(s: Node, p: Node, types, uses, names: FreshNames) -> list[Node] | None:
    """The nodes replacing ``s = sum(p)``, or None when the pattern does not hold."""
    if p.op != "matmul" or uses[p.outputs[0].name] != 1:
        return None
    a = get_op("matmul").node_attrs(p)
    x, y = (types[i] for i in p.inputs)
    lead = x.shape[:-2]
    if not a.transpose_a or a.transpose_b or not lead or y.shape[:-2] != lead:
        return None
    r = get_op("sum").node_attrs(s)
    if r.axes is None or sorted(ax % x.rank for ax in r.axes) != list(range(len(lead))):
        return None
    rows = dims.product([*lead, x.shape[-2]])
    flat = []
    for name, t in zip(p.inputs, (x, y)):
        var = construct(Var, name=names.fresh("fold"), type=make_type(t.dtype, (rows, t.shape[-1])))
        flat.append(make_node("reshape", (name,), (var,), {"shape": [rows, t.shape[-1]]}, s.loc))
    out = s.outputs[0]
    m, n = x.shape[-1], y.shape[-1]
    product = out
    if r.keepdims:
        product = construct(Var, name=names.fresh("fold"), type=make_type(out.type.dtype, (m, n)))
    attrs = {"transpose_a": True}
    nodes = [
        *flat,
        make_node("matmul", tuple(v.outputs[0].name for v in flat), (product,), attrs, s.loc),
    ]
    if r.keepdims:
        nodes.append(
            make_node("reshape", (product.name,), (out,), {"shape": list(out.type.shape)}, s.loc)
        )
    return nodes
