"""Products by constant vectors moved onto the smallest operand that makes their input.

``merge_activations`` scales the gates' pre-activations by a constant per column; for
the per-step inputs that is ``(x @ W + b) * s``, a product over every step, batch row and
gate. Moved into the weights, ``x @ (W * s) + b * s`` scales a matrix and a vector, and a
transposed weight is scaled in its own memory order.
"""

from __future__ import annotations

import math

from rgraph.ir.graph import Const, GraphIR, Node, Var
from rgraph.ir.op import get_op
from rgraph.ir.passes.merge import FreshNames, make_node, until_unchanged
from rgraph.ir.passes.prune import prune
from rgraph.ir.passes.schedule import schedule
from rgraph.ir.types import construct


def fold_scales(graph: GraphIR) -> GraphIR:
    """Move each product by a constant vector ``c`` (along the last axis) into what
    makes its other operand (loop bodies too):

    - ``add(a, b) * c`` is ``a * c + b * c`` (each term then moves on);
    - ``matmul(x, W) * c`` is ``matmul(x, W * c)`` (``c`` as a column for
      ``transpose_b``) when ``W`` is a matrix smaller than the product;
    - ``transpose(W) * c`` is ``transpose(W * c as a column)``, read in order;

    the first two only where the scaled value has no other use.
    """
    current = graph
    if "bodies" in graph.ops():
        nodes = [n.map_bodies(fold_scales) for n in graph.nodes]
        current = graph.replace(nodes=tuple(nodes)) if nodes != list(graph.nodes) else graph
    vectors = {c.name for c in current.consts if c.type.rank == 1}
    if "eltmul" not in current.ops() or not vectors:
        return current
    if not any(n.op == "eltmul" and n.inputs[1] in vectors for n in current.nodes):
        return current  # (before building the maps a rewrite needs: big graphs)
    # each rule exposes the next: add, then matmul, then transpose
    return until_unchanged(_fold_once, current, 6)


def _fold_once(graph: GraphIR) -> GraphIR | None:
    types = graph.types()
    names = FreshNames(types)
    producer = {o.name: n for n in graph.nodes for o in n.outputs}
    uses = graph.use_counts()
    consts = {c.name for c in graph.consts}
    removed: set[int] = set()
    added: list[Node] = []

    def fresh(t) -> Var:
        return construct(Var, name=names.fresh("scaled"), type=t)

    def node(op: str, inputs: tuple, t, loc, attrs=None) -> str:
        out = fresh(t)
        added.append(make_node(op, inputs, (out,), dict(attrs or {}), loc))
        return out.name

    columns: dict[tuple[str, int], Const] = {}

    def column(c: str, blocks: int) -> str:
        """Constant ``c`` as a column (``blocks`` of them: one value per block of rows):
        a new constant, no node to run."""
        if (c, blocks) not in columns:
            t = types[c]
            rows = t.shape[0]
            data = next(k.data for k in graph.consts if k.name == c)
            if blocks == rows:
                shape = (rows, 1)
            else:
                shape, data = (blocks, 1, 1), data[:: rows // blocks]
            columns[c, blocks] = construct(
                Const, name=names.fresh("scale"), type=t.with_shape(shape), data=data
            )
        return columns[c, blocks].name

    def scale_rows(w: str, c: str, loc) -> str:
        """``w * c`` by rows (``c`` as a column). Where ``c`` is a few runs of one value
        each (gates' scales: rows of a stacked weight), a large ``w`` is viewed as blocks
        of rows and scaled by one value per block: twice as fast as a column from 16k
        elements, while a small one is a call, not three."""
        t, data = types[w], next(k.data for k in graph.consts if k.name == c)
        blocks = _blocks(data)
        if blocks == len(data) or t.rank != 2 or _within(t, _COLUMN_MAX):
            return node("eltmul", (w, column(c, len(data))), t, loc)
        stacked = t.with_shape((blocks, t.shape[0] // blocks, t.shape[1]))
        view = node("reshape", (w,), stacked, loc, {"shape": list(stacked.shape)})
        scaled = node("eltmul", (view, column(c, blocks)), stacked, loc)
        return node("reshape", (scaled,), t, loc, {"shape": list(t.shape)})

    for n in graph.nodes:
        if n.op != "eltmul" or n.inputs[1] not in consts:
            continue
        v, c = n.inputs
        src = producer.get(v)
        if src is None or id(src) in removed or types[c].rank != 1:
            continue
        width = types[c].shape[0]
        if n.outputs[0].type != types[v] or types[v].shape[-1] != width:
            continue
        single = uses.get(v) == 1
        if src.op == "add" and single:
            terms = list(src.inputs)
            if not all(types[i].rank >= 1 and types[i].shape[-1] == width for i in terms):
                continue
            scaled = tuple(node("eltmul", (i, c), types[i], n.loc) for i in terms)
            added.append(make_node("add", scaled, n.outputs, {}, src.loc))
        elif src.op == "matmul" and single:
            a = get_op("matmul").node_attrs(src)
            x, w = src.inputs
            if a.transpose_a or types[w].rank != 2 or not _smaller(types[w], types[v]):
                continue
            if a.transpose_b:
                scaled_w = scale_rows(w, c, n.loc)
            else:
                scaled_w = node("eltmul", (w, c), types[w], n.loc)
            added.append(make_node("matmul", (x, scaled_w), n.outputs, dict(src.attrs), src.loc))
        elif src.op == "transpose" and _swaps(src, types):
            x = src.inputs[0]
            scaled_x = scale_rows(x, c, n.loc)
            added.append(make_node("transpose", (scaled_x,), n.outputs, {}, n.loc))
        else:
            continue
        removed.add(id(n))
        if single:
            removed.add(id(src))
    if not removed:
        return None
    kept = [n for n in graph.nodes if id(n) not in removed] + added
    all_consts = (*graph.consts, *columns.values())
    return prune(schedule(graph.replace(nodes=tuple(kept), consts=all_consts)))


# Weights of at most this many elements are scaled as one product by a column (blocks of
# rows cost two reshapes besides: more than they save below some 10k elements).
_COLUMN_MAX = 4096


def _within(t, limit: int) -> bool:
    """Whether ``t`` has concrete dims and at most ``limit`` elements."""
    return all(isinstance(d, int) for d in t.shape) and math.prod(t.shape) <= limit


def _blocks(data: tuple[float, ...]) -> int:
    """Into how many blocks of equal length, each of one value, ``data`` divides (as few as
    can be; ``len(data)`` if no fewer)."""
    runs, start = [], 0
    for i in range(1, len(data) + 1):
        if i == len(data) or data[i] != data[start]:
            runs.append(i - start)
            start = i
    return len(data) // math.gcd(*runs)


def _swaps(n: Node, types) -> bool:
    perm = get_op("transpose").node_attrs(n).perm
    return types[n.inputs[0]].rank == 2 and (perm is None or list(perm) == [1, 0])


def _smaller(w, product) -> bool:
    """Whether matrix ``w`` has fewer elements than ``product``: surely when the product
    has symbolic dims (steps, batch) and ``w`` none, else by count."""
    if not all(isinstance(d, int) for d in w.shape):
        return False
    if not all(isinstance(d, int) for d in product.shape):
        return True
    return math.prod(w.shape) < math.prod(product.shape)
