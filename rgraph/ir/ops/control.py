"""Loops: ``scan``, whose body is a nested graph, and its generated backward (BPTT).

A scan node's inputs are ``carry_init..., xs..., consts...``; its body takes
``carry..., x_t..., consts...`` and returns ``carry'..., y_t...``; the node returns the
final carries and the ``y`` stacked along a new leading time axis. The time dimension
may be symbolic, so the graph stays the same size whatever the sequence length.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field

from rgraph.errors import (
    ArityError,
    NotDifferentiableError,
    ShapeError,
    UndefinedValueError,
)
from rgraph.ir import dims
from rgraph.ir.cost import Cost, Poly, graph_cost, nbytes
from rgraph.ir.graph import GraphIR, Node, Var
from rgraph.ir.op import Attrs, Op, get_op, register
from rgraph.ir.types import Dim, TensorType


class ScanAttrs(Attrs):
    num_carry: int = Field(ge=0)
    num_xs: int = Field(ge=0)
    length: Dim | None = None  # the number of steps when there are no xs
    reverse: bool = False
    body: GraphIR


def _steps_dim(ins: list[TensorType], a: ScanAttrs) -> Dim:
    xs = ins[a.num_carry : a.num_carry + a.num_xs]
    if not xs:
        if a.length is None:
            raise ShapeError("a scan with no xs needs a length")
        return a.length
    for i, t in enumerate(xs):
        if t.rank < 1:
            raise ShapeError(f"scan xs {i} must have a leading time axis, got {t}")
        if t.shape[0] != xs[0].shape[0]:
            raise ShapeError(f"scan xs have different lengths: {xs[0]} and {t}")
    if a.length is not None and a.length != xs[0].shape[0]:
        raise ShapeError(f"scan length {a.length!r} disagrees with xs {xs[0]}")
    return xs[0].shape[0]


class BodyOp(Op):
    """An op that runs a nested graph, ``body``: the checks and the interpreter of a body
    that ``scan`` and ``map`` share."""

    arity = (1, None)
    body_names = ("body",)
    uses_dims = True

    def body_types(self, body: GraphIR) -> dict[str, TensorType]:
        """The body's types, once it is known to have no params and its outputs defined."""
        if body.params:
            raise ShapeError(f"a {self.name} body has no params: pass them in as inputs")
        types = body.types()
        undefined = [name for name in body.outputs if name not in types]
        if undefined:  # (a body given as data; the verifier reports it for the body too)
            raise UndefinedValueError(f"{self.name} body outputs {undefined} are not defined in it")
        return types

    def body_interpreter(self, a: Any, ctx: Any, loop_body: bool) -> Any:
        """The interpreter of ``a.body``: one per body and way of running it, whatever
        the binding."""
        from rgraph.exec.interpreter import Interpreter

        return _kept(
            ctx,
            (self.name, loop_body),
            a.body,
            lambda: Interpreter(
                a.body, check_finite=ctx.check_finite, loop_body=loop_body, memory=ctx.memory
            ),
        )


def _kept(ctx: Any, kind: Any, body: GraphIR, make: Any) -> Any:
    """What ``make()`` gives, once per ``body`` and ``kind`` whatever the binding: kept in
    ``ctx.cache`` with the body, so that its id stays its own."""
    key = (kind, id(body))
    if key not in ctx.cache:
        ctx.cache[key] = (body, make())
    return ctx.cache[key][1]


def _places(body: GraphIR, count: int) -> list[tuple]:
    """Where the ``count`` stacked outputs of a loop over ``body`` are asked for, one key
    each (see :class:`~rgraph.ir.op.KernelContext`): the same for every binding, so an
    arena keeps giving each its memory whatever the sequence length."""
    return [("ys", id(body), j) for j in range(count)]


@register
class Scan(BodyOp):
    """Run ``body`` once per step along the leading axis of ``xs``, threading carries.

    Attributes: ``num_carry``, ``num_xs``, ``length`` (steps when there are no xs),
    ``reverse`` (iterate from the last step; ``y`` stay in time order) and ``body``.
    """

    name = "scan"
    Attrs = ScanAttrs

    def infer(self, ins, a):
        body, nc, nx = a.body, a.num_carry, a.num_xs
        if len(body.inputs) != len(ins):
            raise ArityError(
                f"scan body takes {len(body.inputs)} inputs, the node gives {len(ins)}"
            )
        if nc + nx > len(ins) or len(body.outputs) < nc:
            raise ArityError(
                f"scan with {nc} carries and {nx} xs has {len(ins)} inputs and a body of"
                f" {len(body.outputs)} outputs"
            )
        types = self.body_types(body)
        steps = _steps_dim(ins, a)
        for i, (outer, inner) in enumerate(zip(ins, body.inputs)):
            want = outer.with_shape(outer.shape[1:]) if nc <= i < nc + nx else outer
            if inner.type != want:
                raise ShapeError(
                    f"scan input {i} is {outer}, so body input '{inner.name}'"
                    f" must be {want}, not {inner.type}"
                )
        for i, name in enumerate(body.outputs[:nc]):
            if types[name] != ins[i]:
                raise ShapeError(
                    f"scan carry {i} enters as {ins[i]}"
                    f" but the body returns {types[name]} ('{name}')"
                )
        ys = [types[name] for name in body.outputs[nc:]]
        return [*ins[:nc], *(t.with_shape((steps, *t.shape)) for t in ys)]

    def cost(self, ins, outs, a):
        """The body's cost once per step, and the stacked ``ys``."""
        steps = Poly.of_dim(_steps_dim(list(ins), a))
        return graph_cost(a.body) * steps + Cost(Poly(), nbytes(outs[a.num_carry :]))

    def kernel(self, a, ctx):
        nc, nx = a.num_carry, a.num_xs
        run_loop = self.body_interpreter(a, ctx, loop_body=True).loop(ctx.dims, nc, nx)
        types = a.body.types()
        y_shapes = [
            (types[name].np_dtype, tuple(dims.evaluate(d, ctx.dims) for d in types[name].shape))
            for name in a.body.outputs[nc:]
        ]
        length = None if nx else dims.evaluate(a.length, ctx.dims)
        places, memory = _places(a.body, len(y_shapes)), ctx.memory
        makers: dict[int, list] = {}  # steps -> how each y is made (prepared once)
        kinds = [(shape, dtype) for dtype, shape in y_shapes]
        y_sources = run_loop.y_sources  # (None: it takes no rows made)
        stacks = None
        if y_sources is not None:
            from rgraph.exec.stacks import Stacks

            stacks = _kept(ctx, "stacks", a.body, lambda: Stacks(a.reverse))
            kinds, y_sources = stacks.shared(kinds, y_sources)

        def scan(*args):
            xs = args[nc : nc + nx]
            steps = xs[0].shape[0] if nx else length
            order = range(steps - 1, -1, -1) if a.reverse else range(steps)
            taken = stacks and stacks.take(kinds, steps, y_sources)
            if taken is not None:
                ys, rows = taken
                carry = run_loop(args[:nc], xs, args[nc + nx :], ys, order, rows)
                carry = [c[...] for c in carry]  # (views of their own, not the stack's rows)
            else:
                make = makers.get(steps)
                if make is None:
                    make = makers[steps] = [
                        memory.maker((steps, *shape), dtype, place)
                        for (dtype, shape), place in zip(y_shapes, places)
                    ]
                ys = [m() for m in make]
                carry = run_loop(args[:nc], xs, args[nc + nx :], ys, order)
            return (*carry, *ys) if len(carry) + len(ys) != 1 else (carry + ys)[0]

        return scan

    def vjp_node(self, g, node, cts, needs):
        return _backprop_through_time(self, g, node, cts, needs)


def _backprop_through_time(op: Scan, g: Any, node: Node, cts: list, needs: list[bool]) -> list:
    """The backward of a scan, as a reverse scan whose body is generated from the body's VJPs.

    The body is differentiated as a whole (carries always, xs and consts where wanted).
    Its nodes split in two: *primal* ones, which need no cotangent, stay in the forward
    scan, which now also stacks the values the backward reads (residuals); *tangent* ones
    form the reverse scan's body, which carries the carries' cotangents and sums the
    consts' (weights') gradients over steps.
    """
    from rgraph.builder import Graph
    from rgraph.ir.passes.autodiff import autodiff, cotangent_name, grad_name
    from rgraph.ir.passes.prune import prune

    a = op.node_attrs(node)
    body, nc, nx = a.body, a.num_carry, a.num_xs
    btypes = body.types()
    b_in = [v.name for v in body.inputs]
    carries, x_names, k_names = b_in[:nc], b_in[nc : nc + nx], b_in[nc + nx :]
    if any(not btypes[c].is_float for c in carries):
        raise NotDifferentiableError(
            f"scan at {node.loc}: only float carries can be differentiated"
        )
    if len(set(body.outputs)) != len(body.outputs):
        raise NotDifferentiableError(f"scan at {node.loc}: body outputs must be distinct values")
    wanted = [n for n, need in zip(b_in[nc:], needs[nc:]) if need and btypes[n].is_float]
    ct_outs = [o for o in body.outputs if btypes[o].is_float]
    j = autodiff(body, carries + wanted, cotangents=ct_outs)
    jtypes = j.types()

    tangent = {cotangent_name(o) for o in ct_outs}
    tangent_nodes, primal_nodes = [], []
    for n in j.nodes:
        if tangent.intersection(n.inputs):
            tangent_nodes.append(n)
            tangent.update(o.name for o in n.outputs)
        else:
            primal_nodes.append(n)
    grads = [grad_name(n) for n in carries + wanted]
    read = dict.fromkeys([i for n in tangent_nodes for i in n.inputs] + grads)
    const_names = {c.name for c in j.consts}
    k_read = [k for k in k_names if k in read]
    x_read = [x for x in x_names if x in read]
    residuals = [
        r
        for r in read
        if r not in tangent and r not in const_names and r not in k_names and r not in x_names
    ]
    new_res = [r for r in residuals if r not in body.outputs[nc:]]

    primal = prune(
        j.replace(inputs=body.inputs, nodes=tuple(primal_nodes), outputs=(*body.outputs, *new_res))
    )
    steps = _steps_dim([g.value(i).type for i in node.inputs], a)
    res_vars = tuple(
        Var.model_construct(
            name=g.fresh_name(), type=jtypes[r].with_shape((steps, *jtypes[r].shape))
        )
        for r in new_res
    )
    forward = node.model_copy(
        update={"outputs": node.outputs + res_vars, "bodies": {"body": primal}}
    )
    g.replace_node(node, forward)

    stack = {body.outputs[nc + i]: node.outputs[nc + i].name for i in range(len(body.outputs) - nc)}
    stack.update((r, v.name) for r, v in zip(new_res, res_vars))
    ys_ct = [o for o in body.outputs[nc:] if btypes[o].is_float]
    k_acc = [k for k in k_names if k in wanted]

    def var(name: str, t: TensorType | None = None) -> Var:
        return Var.model_construct(name=name, type=t or jtypes[name])

    acc_in = [var(g.fresh_name(f"{k}.acc"), jtypes[k]) for k in k_acc]
    tb = Graph.from_ir(
        GraphIR.model_construct(
            name=f"{body.name}_vjp",
            inputs=(
                *(var(cotangent_name(o)) for o in body.outputs[:nc]),
                *acc_in,
                *(var(cotangent_name(o)) for o in ys_ct),
                *(var(r) for r in residuals),
                *(var(x) for x in x_read),
                *(var(k) for k in k_read),
            ),
            params=(),
            consts=j.consts,
            nodes=tuple(tangent_nodes),
            outputs=(),
        )
    )
    acc_out = [
        tb.add(tb.value(acc.name), tb.value(grad_name(k))).name for acc, k in zip(acc_in, k_acc)
    ]
    x_grads = [grad_name(x) for x in x_names if x in wanted]
    for name in [*(grad_name(c) for c in carries), *acc_out, *x_grads]:
        tb.output(tb.value(name))
    vjp_body = prune(tb.ir)

    outs = [g.value(o.name) for o in node.outputs]
    inputs = [g.value(i) for i in node.inputs]
    init = [cts[i] if cts[i] is not None else g.full_like(outs[i], value=0.0) for i in range(nc)]
    init += [g.full_like(inputs[nc + nx + k_names.index(k)], value=0.0) for k in k_acc]
    ys_in = []
    for i, o in enumerate(body.outputs[nc:]):
        if btypes[o].is_float:
            ct = cts[nc + i]
            ys_in.append(ct if ct is not None else g.full_like(outs[nc + i], value=0.0))
    xs_in = [*ys_in, *(g.value(stack[r]) for r in residuals)]
    xs_in += [inputs[nc + x_names.index(x)] for x in x_read]
    consts_in = [inputs[nc + nx + k_names.index(k)] for k in k_read]
    back = g.op(
        "scan",
        *init,
        *xs_in,
        *consts_in,
        body=vjp_body,
        num_carry=len(init),
        num_xs=len(xs_in),
        length=steps,
        reverse=not a.reverse,
    )
    back = back if isinstance(back, tuple) else (back,)
    d_carry, d_k, d_x = back[:nc], back[nc : len(init)], back[len(init) :]
    result: list[Any] = list(d_carry)
    x_iter = iter(d_x)
    result += [next(x_iter) if x in wanted else None for x in x_names]
    k_grads = dict(zip(k_acc, d_k))
    result += [k_grads.get(k) for k in k_names]
    return result


class MapAttrs(Attrs):
    dim: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")
    num_xs: int = Field(ge=1)
    body: GraphIR


# How much memory one block of rows of a ``map`` may touch: its values then stay in the
# caches from one op to the next (a few blocks of this size beat both the whole arrays,
# which go to memory and back at every op, and single rows, which cost a call per op).
MAP_BLOCK_BYTES = 2 << 20


@register
class Map(BodyOp):
    """Run ``body`` on blocks of rows: the leading axis, of size ``dim``, of the first
    ``num_xs`` inputs (the others are taken whole), block by block, and of the outputs.

    The body takes the node's inputs, of the same types, and is made of ops that keep
    rows apart (:meth:`Op.rowwise`): on the whole arrays it computes the node's outputs,
    and the interpreter may cut them into blocks of any size. The ``tile`` pass makes
    these nodes, so that a chain of elementwise ops over whole sequences runs block by
    block in the caches instead of streaming every array through memory at each op.
    """

    name = "map"
    Attrs = MapAttrs

    def infer(self, ins, a):
        body, nx, dim = a.body, a.num_xs, a.dim
        if len(body.inputs) != len(ins) or nx > len(ins):
            raise ArityError(
                f"map body takes {len(body.inputs)} inputs, the node gives {len(ins)}"
                f" ({nx} of them blocks of rows)"
            )
        types = self.body_types(body)
        for i, (outer, inner) in enumerate(zip(ins, body.inputs)):
            if inner.type != outer:
                raise ShapeError(
                    f"map input {i} is {outer}, so body input '{inner.name}' must be"
                    f" {outer}, not {inner.type}"
                )
            if (i < nx) != (outer.rank > 0 and outer.shape[0] == dim):
                role = f"one of the {nx} xs, so it must" if i < nx else "taken whole: it must not"
                raise ShapeError(f"map input {i} ({outer}) is {role} lead with dim {dim!r}")
        for name, t in types.items():
            if any(dim in dims.names(d) for d in t.shape[1:]):
                raise ShapeError(f"map body value '{name}' ({t}) has dim {dim!r} off axis 0")
        for name in body.outputs:
            if types[name].rank == 0 or types[name].shape[0] != dim:
                raise ShapeError(
                    f"map body output '{name}' ({types[name]}) does not lead with {dim!r}"
                )
        for node in body.nodes:
            op = get_op(node.op)
            if node.bodies or not op.rowwise(
                op.node_attrs(node), [types[i] for i in node.inputs], dim
            ):
                raise ShapeError(
                    f"map body node '{node.outputs[0].name} = {node.op}(...)' does not keep"
                    f" the rows of {dim!r} apart"
                )
            for o in node.outputs:
                if o.type.rank == 0 or o.type.shape[0] != dim:
                    raise ShapeError(
                        f"map body value '{o.name}' ({o.type}) does not lead with {dim!r}"
                    )
        return [types[name] for name in body.outputs]

    def cost(self, ins, outs, a):
        return graph_cost(a.body)

    def kernel(self, a, ctx):
        types = a.body.types()
        nx, dim = a.num_xs, a.dim
        row = {**ctx.dims, dim: 1}  # the sizes of one row of every value that has rows
        row_bytes = sum(
            dims.evaluate(dims.product(list(t.shape)), row) * t.np_dtype.itemsize
            for t in types.values()
            if t.rank and t.shape[0] == dim
        )
        rows = max(1, MAP_BLOCK_BYTES // max(1, row_bytes))
        blocked = rows < ctx.dims[dim]
        interpreter = self.body_interpreter(a, ctx, loop_body=blocked)
        if not blocked:  # one block: the body on the whole arrays, as its nodes ran before
            run = interpreter.positional(ctx.dims)
            if len(a.body.outputs) == 1:
                return lambda *args: run(*args)[0]
            return lambda *args: tuple(run(*args))
        y_shapes = [
            (types[name].np_dtype, tuple(dims.evaluate(d, ctx.dims) for d in types[name].shape))
            for name in a.body.outputs
        ]
        n = ctx.dims[dim]
        whole = n - n % rows
        blocks = [
            (interpreter.loop({**ctx.dims, dim: size}, 0, nx, blocks=True), order)
            for size, order in (
                (rows, [slice(i, i + rows) for i in range(0, whole, rows)]),
                (n - whole, [slice(whole, n)]),
            )
            if order and size
        ]
        makers = [
            ctx.memory.maker(shape, dtype, place)
            for (dtype, shape), place in zip(y_shapes, _places(a.body, len(y_shapes)))
        ]

        def map_blocks(*args):
            xs, invariants = args[:nx], args[nx:]
            ys = [make() for make in makers]
            for loop, order in blocks:
                loop((), xs, invariants, ys, order)
            return ys[0] if len(ys) == 1 else tuple(ys)

        return map_blocks
