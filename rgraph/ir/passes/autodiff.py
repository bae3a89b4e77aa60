"""Reverse-mode autodiff as a pass: the backward pass is generated as ordinary IR.

The driver walks the forward nodes in reverse, asks each op's VJP rule for the cotangents
of its inputs (rules emit IR through the builder), reduces broadcast cotangents to the
input's shape, and sums contributions when a value fans out. Both happen here, once, so
no rule has to care.
"""

from __future__ import annotations

from collections.abc import Sequence

from rgraph.builder import Graph, Value
from rgraph.errors import GraphError, NotDifferentiableError
from rgraph.ir.graph import GraphIR, Node
from rgraph.ir.op import Op, get_op
from rgraph.ir.passes.schedule import schedule
from rgraph.ir.types import TensorType

GRAD_SUFFIX = ".grad"
COTANGENT_SUFFIX = ".ct"


def grad_name(name: str) -> str:
    """The name autodiff gives the gradient of ``name``."""
    return name + GRAD_SUFFIX


def cotangent_name(name: str) -> str:
    """The name of the input that carries the cotangent of output ``name``."""
    return name + COTANGENT_SUFFIX


def autodiff(
    graph: GraphIR,
    wrt: Sequence[str],
    loss: str | None = None,
    cotangents: Sequence[str] = (),
) -> GraphIR:
    """Append the backward pass: gradients of ``wrt`` become outputs named ``<name>.grad``.

    The cotangent seeds are 1 for a scalar ``loss``, and for each name in ``cotangents``
    a new graph input ``<name>.ct`` of that output's type (RecurrentJS's
    ``h.dw[0] = 1.0; G.backward()``). A ``wrt`` value nothing flows to gets zeros.

    Before: ``y = tanh(x); return y`` (loss ``y``, wrt ``x``)
    After:  ``y = tanh(x); c = full_like[value=1.0](y); ...; x.grad = eltmul(c, ...);
    return y, x.grad``
    """
    graph = schedule(graph)
    b = Graph.from_ir(graph)
    types = b._types  # the forward's types; the backward only adds names to it
    if loss is None and not cotangents:
        raise GraphError("autodiff needs a scalar loss or outputs given cotangents")
    for name in (*wrt, *([loss] if loss else []), *cotangents):
        if name not in types:
            raise GraphError(f"cannot differentiate: graph '{graph.name}' has no value '{name}'")
        if not types[name].is_float:
            raise GraphError(f"cannot differentiate with respect to or from {name}: {types[name]}")
    if loss is not None and types[loss].shape != ():
        raise GraphError(
            f"loss '{loss}' must be a scalar, got {types[loss]}: reduce it with sum or mean,"
            " or pass it as a cotangent output"
        )

    nodes = graph.nodes
    active = set(wrt)
    isdisjoint = active.isdisjoint
    for node in nodes:
        if not isdisjoint(node.inputs):
            outs = node.outputs
            if len(outs) == 1:
                active.add(outs[0].name)
            else:
                active.update([o.name for o in outs])

    pending: dict[str, list[Value]] = {}
    if loss is not None:
        pending[loss] = [b.full_like(b.value(loss), value=1.0)]
    for name in cotangents:
        seed = b.input(cotangent_name(name), types[name].shape, types[name].dtype)
        pending.setdefault(name, []).append(seed)

    # The hot loop of a long chain: _backprop inlined, ops looked up once per op name.
    ops: dict[str, Op] = {}
    targets = set(wrt)
    pop, get = pending.pop, pending.get
    is_active = active.__contains__
    for node in reversed(nodes):
        outs = node.outputs
        if len(outs) == 1:
            out = outs[0].name
            if out not in pending:
                continue
        elif not any(o.name in pending for o in outs):
            continue
        inputs = node.inputs
        needs = list(map(is_active, inputs))
        if True not in needs:
            continue
        op = ops.get(node.op)
        if op is None:
            op = ops[node.op] = _differentiable(node)
        b._loc_override = node.loc  # b.location(node.loc); b is this pass's own
        if len(outs) == 1:
            contributions = pop(out)
            cts = [contributions[0] if len(contributions) == 1 else _accumulate(b, contributions)]
            if out in targets:
                pending[out] = [cts[0]]  # its gradient is also an output
        else:
            cts = []
            for o in outs:
                contributions = pop(o.name, None)
                if contributions is None:
                    cts.append(None)
                else:
                    cts.append(
                        contributions[0]
                        if len(contributions) == 1
                        else _accumulate(b, contributions)
                    )
                    if o.name in targets:
                        pending[o.name] = cts[-1:]  # its gradient is also an output
        grads = op.vjp_node(b, node, cts, needs)
        for name, need, grad in zip(inputs, needs, grads):
            if grad is not None and need:
                target, made = types[name], grad.type
                if made is not target and made.shape != target.shape:  # (types are shared)
                    grad = _unbroadcast(b, grad, target)
                contributions = get(name)
                if contributions is None:
                    pending[name] = [grad]
                else:
                    contributions.append(grad)
    b._loc_override = None

    for name in wrt:
        contributions = pending.get(name) or [b.full_like(b.value(name), value=0.0)]
        b.output(_accumulate(b, contributions, name=grad_name(name)))
    return b.ir


def _differentiable(node: Node) -> Op:
    """The op of ``node``; raises if it has no VJP rule."""
    op = get_op(node.op)
    if not op.differentiable:
        where = f" at {node.loc}" if node.loc is not None else ""
        raise NotDifferentiableError(
            f"cannot differentiate through op '{node.op}' (node"
            f" {', '.join(o.name for o in node.outputs)}{where}): it has no VJP rule"
        )
    return op


def _accumulate(b: Graph, values: list[Value], name: str | None = None) -> Value:
    """Sum the contributions of a fanned-out value; name the result if asked."""
    total = values[0]
    for v in values[1:-1]:
        total = b.add(total, v)
    if len(values) > 1:
        return b.op("add", total, values[-1], _name=name)
    return total if name is None else b.op("identity", total, _name=name)


def _unbroadcast(b: Graph, grad: Value, target: TensorType) -> Value:
    """Sum ``grad`` over the axes that broadcasting added or stretched in the forward."""
    if grad.shape == target.shape:
        return grad
    lead = grad.ndim - target.rank
    axes = list(range(lead)) + [
        lead + i for i, d in enumerate(target.shape) if d == 1 and grad.shape[lead + i] != 1
    ]
    if len(axes) == lead:  # only added axes: the sum has the target's shape
        return b.sum(grad, axes=axes)
    if axes:
        grad = b.sum(grad, axes=axes, keepdims=True)
    return b.reshape(grad, shape=list(target.shape))
