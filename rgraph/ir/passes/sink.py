"""Moving work out of loops, the other way: what the loop-carried state does not need.

``hoist`` moves before a loop what does not depend on the state. Many nodes of a scan
body depend on it but feed nothing back into it: they only compute per-step outputs
(``ys``). Such a node can run once after the loop on all steps at once, when its op can
take a leading time axis, from the stacked values the loop returns. The generated
backward of an LSTM step has two such families: the activations' derivatives in the
forward loop, and the weight gradients in the reverse loop. A weight gradient is an
*accumulator*: a carry whose only use is ``acc' = acc + term``. It leaves the loop as
``acc_0 + sum over steps of term``; ``contract`` then turns the sum of per-step products
into one matrix product.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from rgraph.builder import Graph, Value
from rgraph.ir.dims import Dim
from rgraph.ir.graph import GraphIR, Node, Var, resolve
from rgraph.ir.op import get_op
from rgraph.ir.ops.control import _steps_dim
from rgraph.ir.passes.batching import batched_attrs
from rgraph.ir.passes.merge import make_node
from rgraph.ir.passes.prune import prune
from rgraph.ir.passes.schedule import schedule
from rgraph.ir.types import construct


def sink(graph: GraphIR) -> GraphIR:
    """Move per-step output work and accumulators out of every scan (nested ones first).

    Before::

        h_T, ds, W_T = scan(h0, W0, xs) { h' = tanh(h + x_t); d_t = 1 - h' * h';
                                          W' = W + matmul[transpose_a](x_t, h') }

    After::

        h_T, hs = scan(h0, xs) { h' = tanh(h + x_t) }
        ds = 1 - hs * hs                                      # all steps at once
        W_T = W0 + sum[axes=[0]](matmul[transpose_a](xs, hs))
    """
    if "scan" not in graph.ops():
        return graph
    b = Graph.from_ir(graph)
    renames: dict[str, str] = {}
    replaced: set[int] = set()
    producer = {o.name: n for n in graph.nodes for o in n.outputs}
    for node in graph.nodes:
        if node.op == "scan" and _sink_scan(b, node, renames, producer):
            replaced.add(id(node))
    if not replaced and b.ir.nodes == graph.nodes:
        return graph
    ir = b.ir
    ir = ir.replace(nodes=tuple(n for n in ir.nodes if id(n) not in replaced))
    return prune(schedule(_rename(ir, renames)))


class _Plan:
    """Which nodes of a body stay in the loop, leave it, or are copied out of it."""

    def __init__(self, body: GraphIR, nc: int, nx: int, steps: Dim):
        self.steps = steps
        names = [v.name for v in body.inputs]
        self.carries, self.xs = names[:nc], names[nc : nc + nx]
        types = self.types = body.types()
        producer = {o.name: n for n in body.nodes for o in n.outputs}
        uses = body.use_counts()

        # Accumulators: carry k enters only ``acc' = add(acc, term)``, which is carry k out.
        self.accumulators: dict[int, str] = {}  # carry index -> term
        adds: set[int] = set()
        self.outside = set(names[nc + nx :]) | {c.name for c in body.consts}
        invariant = set(self.outside)
        for n in body.nodes:
            if not n.bodies and all(i in invariant for i in n.inputs):
                invariant.update(o.name for o in n.outputs)
        self.invariant = invariant
        for k, (carry, out) in enumerate(zip(self.carries, body.outputs[:nc])):
            add = producer.get(out)
            if add is None or add.op != "add" or carry not in add.inputs or uses[carry] != 1:
                continue
            term = add.inputs[1] if add.inputs[0] == carry else add.inputs[0]
            if uses[out] == 1 and term not in invariant and types[term] == types[out]:
                self.accumulators[k] = term
                adds.add(id(add))

        # Backwards from the carries: what they need stays; the rest leaves if it batches.
        needed = {o for k, o in enumerate(body.outputs[:nc]) if k not in self.accumulators}
        self.kept: list[Node] = []
        self.moved: list[Node] = []
        for n in reversed(body.nodes):
            if id(n) in adds:
                continue
            if any(o.name in needed for o in n.outputs) or not self._batches(n):
                self.kept.append(n)
                needed.update(n.inputs)
            else:
                self.moved.append(n)
        self.kept.reverse()
        self.moved.reverse()

        # Values the moved nodes read from the loop: stacked ys of the new loop, or
        # copied out when their node batches on what is already available outside.
        moved_out = {o.name for n in self.moved for o in n.outputs}
        available = set(self.xs) | invariant | moved_out
        available |= {o for o in body.outputs[nc:] if o not in moved_out}
        reads = [i for n in self.moved for i in n.inputs]
        reads += [t for t in self.accumulators.values() if t not in moved_out]
        self.copied: list[Node] = []
        self.stacked_out: list[str] = []  # values the new loop returns as extra ys
        pending = [name for name in dict.fromkeys(reads) if name not in available]

        def copyable(name: str, ready: set[str]) -> bool:
            n = producer.get(name)
            return (
                n is not None
                and all(i in ready for i in n.inputs)
                and not any(o.name in invariant for o in n.outputs)
                and self._batches(n)
            )

        while pending:
            now = [name for name in pending if copyable(name, available)]
            if now:
                for name in now:
                    n = producer[name]
                    if n not in self.copied:
                        self.copied.append(n)
                    available.update(o.name for o in n.outputs)
            else:  # return what cannot be copied, then retry what waits for it
                later = available | set(pending)
                now = [name for name in pending if not copyable(name, later)] or pending
                self.stacked_out += now
                available.update(now)
            pending = [name for name in pending if name not in available]

    def _batches(self, n: Node) -> bool:
        """Whether ``n`` runs on all steps at once from values available after the loop
        (an invariant it reads must come from outside: a body input or constant)."""
        if any(i in self.invariant and i not in self.outside for i in n.inputs):
            return False
        stacked = [i not in self.invariant for i in n.inputs]
        return batched_attrs(n, self.types, stacked, self.steps) is not None

    @property
    def worthwhile(self) -> bool:
        """Whether the loop gets lighter: nodes leaving it outnumber the copies added."""
        gained = len(self.moved) + 2 * len(self.accumulators)
        return gained > 0 and gained > len(self.stacked_out)


def _sink_scan(b: Graph, node: Node, renames: dict[str, str], producer: Mapping[str, Node]) -> bool:
    """Rebuild one scan with its plan's nodes outside; True if the node was replaced."""
    op = get_op(node.op)
    a = op.node_attrs(node)
    body = sink(a.body)
    nc, nx = a.num_carry, a.num_xs
    steps = _steps_dim([b.value(i).type for i in node.inputs], a)
    plan = _Plan(body, nc, nx, steps)
    names = [v.name for v in body.inputs]

    # The new loop: the carries it still threads, the ys it still makes, extra ys.
    carry_ix = [k for k in range(nc) if k not in plan.accumulators]
    moved_out = {o.name for n in plan.moved for o in n.outputs}
    ys = [y for y in body.outputs[nc:] if y not in moved_out]
    ys_out = [*dict.fromkeys(ys), *plan.stacked_out]
    new_outputs = [body.outputs[k] for k in carry_ix] + ys_out
    read = {i for n in plan.kept for i in n.inputs} | set(new_outputs)
    xs_kept = [x for x in plan.xs if x in read]
    ks_kept = [k for k in names[nc + nx :] if k in read]
    # A loop with outputs but no inputs (only constants left in it) cannot be a scan.
    if not plan.worthwhile or (new_outputs and not (carry_ix or xs_kept or ks_kept)):
        if body is not a.body:
            b.replace_node(node, node.model_copy(update={"bodies": {"body": body}}))
        return False

    outer: dict[str, Value] = {n: b.value(o) for n, o in zip(names[nc:], node.inputs[nc:])}
    for c in body.consts:
        data = np.array(c.data, dtype=c.type.dtype).reshape(c.type.shape)
        outer[c.name] = b.const(data, dtype=c.type.dtype)
    new_body = prune(
        body.replace(
            inputs=(
                *(body.inputs[k] for k in carry_ix),
                *(v for v in body.inputs[nc : nc + nx] if v.name in xs_kept),
                *(v for v in body.inputs[nc + nx :] if v.name in ks_kept),
            ),
            nodes=tuple(plan.kept),
            outputs=tuple(new_outputs),
        )
    )
    with b.location(node.loc):
        out = ()  # nothing left in the loop: every carry was an accumulator
        if new_outputs:
            out = b.op(
                "scan",
                *(b.value(node.inputs[k]) for k in carry_ix),
                *(outer[x] for x in xs_kept),
                *(outer[k] for k in ks_kept),
                body=new_body,
                num_carry=len(carry_ix),
                num_xs=len(xs_kept),
                length=steps,
                reverse=a.reverse,
            )
        outs = list(out) if isinstance(out, tuple) else [out]
        for k, value in zip(carry_ix, outs):
            renames[node.outputs[k].name] = value.name
        # A y that is loop-invariant (an outer value passed through) keeps its outer,
        # unstacked value for the nodes after the loop; only the scan output is stacked.
        stacked_ys = dict(zip(ys_out, outs[len(carry_ix) :]))
        outer.update((y, v) for y, v in stacked_ys.items() if y not in plan.invariant)

        # After the loop: copied and moved nodes on all steps at once, in body order.
        outside = {id(n) for n in plan.moved} | {id(n) for n in plan.copied}
        for n in body.nodes:
            if id(n) not in outside:
                continue
            stacked = [i not in plan.invariant for i in n.inputs]
            attrs = batched_attrs(n, plan.types, stacked, steps)
            res = b.op(n.op, *(outer[i] for i in n.inputs), **attrs)
            outer.update(zip((o.name for o in n.outputs), res if isinstance(res, tuple) else [res]))
        for k, term in plan.accumulators.items():
            total = b.sum(outer[term], axes=[0])
            if not _is_zeros(producer.get(node.inputs[k])):
                total = b.add(b.value(node.inputs[k]), total)
            renames[node.outputs[k].name] = total.name
    for var, y in zip(node.outputs[nc:], body.outputs[nc:]):
        renames[var.name] = stacked_ys[y].name if y in stacked_ys else outer[y].name
    return True


def _is_zeros(n: Node | None) -> bool:
    """Whether ``n`` makes zeros with ``full_like`` / ``full`` (an empty sum)."""
    return n is not None and n.op in ("full", "full_like") and n.attrs.get("value", 0.0) == 0.0


def _rename(graph: GraphIR, renames: Mapping[str, str]) -> GraphIR:
    """Consumers read the new names; a graph output keeps its name through an identity."""
    nodes = [n.renamed(renames) for n in graph.nodes]
    types = graph.types()
    for name in graph.outputs:
        if name in renames:
            source = resolve(name, renames)
            var = construct(Var, name=name, type=types[source])
            nodes.append(make_node("identity", (source,), (var,), {}, None))
    return graph.replace(nodes=tuple(nodes))
