"""Folding values known to be filled with one number: specialising a graph to its common case.

A padding mask is all ones in most batches (always at batch size 1), yet every step of a
recurrent loop blends its state with it: ``m * new + (1 - m) * old`` is three calls per
state per step, in the forward and again in the backward. Given that an input is filled
with a value, the multiplications by one and the additions of zero vanish, inside loops
too, before autodiff: the backward is made from the simpler forward.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rgraph.ir.graph import GraphIR, Node, Var, resolve
from rgraph.ir.op import KernelContext, get_op
from rgraph.ir.ops.elementwise import Elementwise
from rgraph.ir.passes.merge import FreshNames, make_node
from rgraph.ir.passes.prune import prune
from rgraph.ir.passes.schedule import schedule
from rgraph.ir.types import TensorType, construct

_RESHAPING = frozenset({"expand_dims", "reshape", "transpose", "broadcast_like"})


def specialize(graph: GraphIR, values: Mapping[str, float]) -> GraphIR:
    """``graph`` for runs in which each input named in ``values`` is filled with that value.

    The inputs stay (they are fed and bind their dims) but nothing reads them: their uses
    read a ``full`` of the value instead, and these fold away:

    - an elementwise op of filled values is a filled value;
    - ``x * 1``, ``1 * x``, ``x + 0``, ``0 + x`` and ``x - 0`` are ``x`` (same type);
    - ``x * 0`` and ``0 * x`` are zeros (for finite ``x``);
    - an optional input of ones that the op goes without (``Op.unit_inputs``: a loss's
      mask) is dropped;
    - a filled value given to a loop, per step or whole, is filled in its body too.

    Before: ``m: input; k = sub(1, m); h = add(eltmul(m, new), eltmul(k, old))``
    After:  ``h = new``
    """
    unknown = set(values) - {v.name for v in graph.inputs}
    if unknown:
        raise KeyError(f"no inputs {sorted(unknown)} in graph '{graph.name}'")
    types = graph.types()
    names = FreshNames(types)
    head = []
    for name, value in values.items():
        t = types[name]
        head.append(_full(construct(Var, name=names.fresh(f"{name}_filled"), type=t), value))
    renames = {name: n.outputs[0].name for name, n in zip(values, head)}
    body = [n.renamed(renames) for n in graph.nodes]
    folded = _fold(graph.replace(nodes=(*head, *body)))
    return prune(schedule(folded))


def _full(var: Var, value: float) -> Node:
    attrs = {"shape": list(var.type.shape), "value": float(value), "dtype": var.type.dtype}
    return make_node("full", (), (var,), attrs, None)


def _fold(graph: GraphIR, body: bool = False) -> GraphIR:
    """One sweep in schedule order: filled values found, folded and passed into loops.
    A graph's outputs keep their names; a loop body's are positional, and renamed."""
    types = graph.types()
    names = FreshNames(types)
    filled: dict[str, float] = {
        c.name: c.data[0] for c in graph.consts if len(set(c.data)) == 1 and c.data
    }
    renames: dict[str, str] = {}
    nodes: list[Node] = []
    for node in graph.nodes:
        node = node.renamed(renames) if renames else node
        out = node.outputs[0]
        if node.op == "full":
            filled[out.name] = get_op("full").node_attrs(node).value
            nodes.append(node)
            continue
        ins = [filled.get(i) for i in node.inputs]
        if len(node.outputs) == 1 and ins and all(v is not None for v in ins):
            value = _evaluate(node, ins, types)
            if value is not None:
                filled[out.name] = value
                nodes.append(_full(out, value))
                continue
        same = _identity_operand(node, ins, types)
        if same is not None:
            renames[out.name] = same
            continue
        if _zero_product(node, ins):
            filled[out.name] = 0.0
            nodes.append(_full(out, 0.0))
            continue
        if ins and ins[-1] == 1.0 and _unit_last(node):
            node = node.model_copy(update={"inputs": node.inputs[:-1]})
        if node.op == "scan":
            node = _into_loop(node, filled, types, names)
        nodes.append(node)
    if not renames and all(a is b for a, b in zip(nodes, graph.nodes)):
        return graph
    outputs = tuple(resolve(o, renames) for o in graph.outputs)
    kept = [n.renamed(renames) for n in nodes]
    if body:
        return graph.replace(nodes=tuple(kept), outputs=outputs)
    for name, source in zip(graph.outputs, outputs):  # an identity names a renamed output
        if name != source:
            var = construct(Var, name=name, type=types[name])
            kept.append(make_node("identity", (source,), (var,), {}, None))
    return graph.replace(nodes=tuple(kept), outputs=graph.outputs)


def _evaluate(node: Node, ins: list[float], types: dict[str, TensorType]) -> float | None:
    """The value of an elementwise or reshaping op of filled values (None: not folded)."""
    op = get_op(node.op)
    if node.op in _RESHAPING:
        return ins[0]
    if not isinstance(op, Elementwise) or node.outputs[0].type.dtype != types[node.inputs[0]].dtype:
        return None
    args = [np.asarray(v, types[i].np_dtype) for v, i in zip(ins, node.inputs)]
    with np.errstate(all="ignore"):
        result = op.kernel(op.node_attrs(node), KernelContext({}))(*args)
    return float(result)


def _identity_operand(node: Node, ins: list, types: dict[str, TensorType]) -> str | None:
    """The input ``node`` passes on unchanged: ``x * 1``, ``x + 0``, ``x - 0``."""
    if len(node.inputs) != 2:
        return None
    neutral = {"eltmul": (1.0, 1.0), "add": (0.0, 0.0), "sub": (None, 0.0)}.get(node.op)
    if neutral is None:
        return None
    out = node.outputs[0].type
    for k in (0, 1):
        other = node.inputs[1 - k]
        if neutral[k] is not None and ins[k] == neutral[k] and types[other] == out:
            return other
    return None


def _zero_product(node: Node, ins: list) -> bool:
    return node.op == "eltmul" and 0.0 in ins


def _unit_last(node: Node) -> bool:
    """Whether ``node``'s last input is an optional one its op goes without when it holds
    1.0 everywhere (``Op.unit_inputs``)."""
    op = get_op(node.op)
    extra = len(node.inputs) - op.arity[0]  # how many optional inputs it has
    return (
        bool(op.unit_inputs)
        and 0 < extra <= len(op.input_names)
        and (op.input_names[extra - 1] in op.unit_inputs)
    )


def _into_loop(node: Node, filled: dict[str, float], types, names: FreshNames) -> Node:
    """The scan with its filled ``xs`` and invariants made in its body, which is folded."""
    a = get_op("scan").node_attrs(node)
    body, nc, nx = a.body, a.num_carry, a.num_xs
    keep, made = [], []
    for i, outer in enumerate(node.inputs):
        inner = body.inputs[i]
        if i >= nc and outer in filled:
            made.append(_full(inner, filled[outer]))
        else:
            keep.append(i)
    if not made:
        new_body = _fold(body, body=True)
        if new_body is body:
            return node
        return node.model_copy(update={"bodies": {"body": prune(new_body)}})
    new_body = prune(
        _fold(
            body.replace(inputs=tuple(body.inputs[i] for i in keep), nodes=(*made, *body.nodes)),
            body=True,
        )
    )
    attrs = {**node.attrs, "num_xs": sum(1 for i in keep if nc <= i < nc + nx)}
    if attrs["num_xs"] == 0 and nx:
        attrs["length"] = types[node.inputs[nc]].shape[0]
    return node.model_copy(
        update={
            "inputs": tuple(node.inputs[i] for i in keep),
            "attrs": attrs,
            "bodies": {"body": new_body},
        }
    )
