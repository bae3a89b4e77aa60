"""Moving work out of loops: what does not depend on the loop-carried state.

A node of a scan body whose inputs are all loop-invariant (the body's declared outer
values and constants) runs once before the loop instead of once per step. A node whose
inputs are per-step slices of the scan's ``xs`` (and invariants) runs once, before the
loop, on all the steps at once, when its op can take a leading time axis
(:meth:`~rgraph.ir.op.Op.batched_attrs`): input projections ``x_t @ W`` become one
matrix product over ``(T, B, in)``, embedding lookups one ``row_pluck`` over ``(T, B)``.
Their results enter the loop as new declared values or new ``xs``.

Products are regrouped first so that their factors that do not depend on the state
multiply each other: ``(d * o_t) * k_t`` becomes ``d * (o_t * k_t)``, and ``o_t * k_t``
leaves the loop (floating-point reassociation: the last bits may differ).
"""

from __future__ import annotations

from collections.abc import Sequence

from rgraph.builder import Graph, Value
from rgraph.ir.graph import GraphIR, Node, Var
from rgraph.ir.op import broadcast_shapes, get_op
from rgraph.ir.ops.control import _steps_dim
from rgraph.ir.passes.batching import batched_attrs
from rgraph.ir.passes.merge import FreshNames, make_node
from rgraph.ir.passes.prune import prune
from rgraph.ir.passes.schedule import schedule
from rgraph.ir.types import construct

INVARIANT, STACKED = "invariant", "stacked"


def hoist(graph: GraphIR) -> GraphIR:
    """Move loop-invariant and per-step work out of every scan (nested ones first).

    Before::

        h_T, hs = scan(h0, xs, W, U) { t = matmul(x_t, W); h' = tanh(t + matmul(h, U)) }

    After::

        P = matmul(xs, W)                    # all steps at once
        h_T, hs = scan(h0, P, U) { h' = tanh(p_t + matmul(h, U)) }
    """
    if "scan" not in graph.ops():
        return graph
    b = Graph.from_ir(graph)
    for node in graph.nodes:
        if node.op == "scan":
            _hoist_scan(b, node)
    return prune(schedule(b.ir))


def _hoist_scan(b: Graph, node: Node) -> None:
    op = get_op(node.op)
    a = op.node_attrs(node)
    nc, nx = a.num_carry, a.num_xs
    body = hoist(_plain_products(_regroup_products(a.body, nc), nc + nx))
    steps = _steps_dim([b.value(i).type for i in node.inputs], a)
    outer: dict[str, tuple[str, Value]] = {}  # body name -> (kind, outer value)
    for i, var in enumerate(body.inputs):
        if i >= nc:
            outer[var.name] = (STACKED if i < nc + nx else INVARIANT, b.value(node.inputs[i]))
    for c in body.consts:
        value = b.const(_array(c), dtype=c.type.dtype)
        outer[c.name] = (INVARIANT, value)

    kept: list[Node] = []
    with b.location(node.loc):
        for n in body.nodes:
            kinds = [outer[i][0] if i in outer else None for i in n.inputs]
            moved = _move(
                b, n, kinds, [outer.get(i, (None, None))[1] for i in n.inputs], body, steps
            )
            if moved is None:
                kept.append(n)
                continue
            kind, values = moved
            for var, value in zip(n.outputs, values):
                outer[var.name] = (kind, value)
    if len(kept) == len(body.nodes):
        if body is not a.body:
            b.replace_node(node, node.model_copy(update={"bodies": {"body": body}}))
        return

    # The new body reads moved values as inputs: per-step slices of stacked ones (new
    # xs), invariant ones as declared values.
    needed = {i for n in kept for i in n.inputs} | set(body.outputs)
    carries = list(body.inputs[:nc])
    xs_in: list[tuple[Var, Value]] = []
    ks_in: list[tuple[Var, Value]] = []
    types = body.types()
    consts = {c.name for c in body.consts}
    for name, (kind, value) in outer.items():
        if name not in needed or name in consts:  # a constant stays one in the body
            continue
        var = construct(Var, name=name, type=types[name])
        (xs_in if kind == STACKED else ks_in).append((var, value))
    new_body = body.replace(
        inputs=(*carries, *(v for v, _ in xs_in), *(v for v, _ in ks_in)),
        consts=tuple(c for c in body.consts if c.name in needed),
        nodes=tuple(kept),
    )
    inputs = (*node.inputs[:nc], *(val.name for _, val in xs_in), *(val.name for _, val in ks_in))
    attrs = {**node.attrs, "num_xs": len(xs_in)}
    if not xs_in:
        attrs["length"] = steps
    b.replace_node(
        node,
        node.model_copy(update={"inputs": inputs, "attrs": attrs, "bodies": {"body": new_body}}),
    )


def _move(
    b: Graph,
    n: Node,
    kinds: Sequence[str | None],
    values: Sequence[Value | None],
    body: GraphIR,
    steps,
) -> tuple[str, list[Value]] | None:
    """Record ``n`` outside the loop if its inputs allow; its kind and outer outputs."""
    if n.bodies or any(k is None for k in kinds):
        return None
    if all(k == INVARIANT for k in kinds):
        out = b.op(n.op, *values, **n.attrs)
        return INVARIANT, list(out) if isinstance(out, tuple) else [out]
    attrs = batched_attrs(n, body.types(), [k == STACKED for k in kinds], steps)
    if attrs is None:
        return None
    out = b.op(n.op, *values, **attrs)
    outs = list(out) if isinstance(out, tuple) else [out]
    return STACKED, outs


def _regroup_products(body: GraphIR, num_carry: int) -> GraphIR:
    """``(v * a) * b`` as ``v * (a * b)`` where ``v`` depends on the carries and ``a``,
    ``b`` do not, and ``v * a`` has no other use: ``a * b`` can then leave the loop."""
    variant = {v.name for v in body.inputs[:num_carry]}
    uses = body.use_counts()
    producer: dict[str, Node] = {}
    types = body.types()
    names = FreshNames(types)
    nodes: list[Node] = []
    changed = False
    for n in body.nodes:
        if n.op == "eltmul" and sum(i in variant for i in n.inputs) == 1:
            inner, b = n.inputs if n.inputs[0] in variant else n.inputs[::-1]
            m = producer.get(inner)
            if (
                m is not None
                and m.op == "eltmul"
                and uses[inner] == 1
                and sum(i in variant for i in m.inputs) == 1
            ):
                v, a = m.inputs if m.inputs[0] in variant else m.inputs[::-1]
                t = types[a]
                shape = broadcast_shapes(t.shape, types[b].shape)
                ab = construct(Var, name=names.fresh("regroup"), type=t.with_shape(shape))
                types[ab.name] = ab.type
                nodes.remove(m)
                nodes.append(make_node("eltmul", (a, b), (ab,), {}, n.loc))
                n = n.model_copy(update={"inputs": (v, ab.name)})
                changed = True
        nodes.append(n)
        for o in n.outputs:
            producer[o.name] = n
            if any(i in variant for i in n.inputs):
                variant.add(o.name)
    return body.replace(nodes=tuple(nodes)) if changed else body


def _plain_products(body: GraphIR, num_variant: int) -> GraphIR:
    """``matmul(v, w, transpose_b=True)`` as ``matmul(v, transpose(w))`` where ``w`` (2-d)
    does not depend on the loop's carries or xs (the first ``num_variant`` inputs), and
    likewise for ``transpose_a``: the transpose, a view, then leaves the loop, and each
    step calls the plain product (``np.dot`` itself, see ``Matmul.kernel``)."""
    if "matmul" not in body.ops():
        return body
    variant = {v.name for v in body.inputs[:num_variant]}
    types = body.types()
    names = FreshNames(types)
    transposed: dict[str, str] = {}  # invariant -> its transpose in the body
    nodes: list[Node] = []
    changed = False
    for n in body.nodes:
        if n.op == "matmul":
            inputs, dropped = list(n.inputs), set()
            for k, flag in enumerate(("transpose_a", "transpose_b")):
                name = inputs[k]
                if not n.attrs.get(flag) or name in variant or types[name].rank != 2:
                    continue
                if name not in transposed:
                    t = types[name]
                    var = construct(
                        Var, name=names.fresh("untransposed"), type=t.with_shape(t.shape[::-1])
                    )
                    types[var.name] = var.type
                    nodes.append(make_node("transpose", (name,), (var,), {}, n.loc))
                    transposed[name] = var.name
                inputs[k] = transposed[name]
                dropped.add(flag)
            if dropped:
                attrs = {k: v for k, v in n.attrs.items() if k not in dropped}
                n = n.model_copy(update={"inputs": tuple(inputs), "attrs": attrs})
                changed = True
        nodes.append(n)
        if any(i in variant for i in n.inputs):
            variant.update(o.name for o in n.outputs)
    return body.replace(nodes=tuple(nodes)) if changed else body


def _array(c):
    import numpy as np

    return np.array(c.data, dtype=c.type.dtype).reshape(c.type.shape)
