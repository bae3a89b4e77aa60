"""Elementwise work on the pieces of a split, or on what a concat joins, done on the whole.

Stacked gate weights (``merge_matmuls``) give one product and a ``split`` into gates; the
gates then go through the same ops one by one: an LSTM step adds four gate inputs and
calls ``sigmoid`` three times, and its backward multiplies four gate gradients before
joining them. An elementwise op commutes with ``split`` and ``concat``, so each family
is one call on the whole array (or on a slice of consecutive pieces), split afterwards:
fewer, larger calls, which is what a numpy loop body needs.
"""

from __future__ import annotations

from collections import defaultdict

from rgraph.ir.graph import GraphIR, Node, Var
from rgraph.ir.op import broadcast_shapes, freeze, get_op, normalize_axis
from rgraph.ir.ops.elementwise import Binary, Unary
from rgraph.ir.passes.merge import FreshNames, make_node, until_unchanged
from rgraph.ir.passes.prune import prune
from rgraph.ir.passes.schedule import schedule
from rgraph.ir.types import TensorType, construct, make_type


def merge_pieces(graph: GraphIR) -> GraphIR:
    """Apply elementwise ops to whole arrays instead of their pieces (loop bodies too).

    Before::

        i, f = split[axis=-1](z); u, v = split[axis=-1](w)
        a = add(i, u); b = add(f, v); sa = sigmoid(a); sb = sigmoid(b)

    After::

        s = add(z, w); a, b = split[axis=-1](s)
        t = sigmoid(s); sa, sb = split[axis=-1](t)

    Likewise ``concat(mul(p, q), mul(r, s))`` becomes ``mul(concat(p, r), concat(q, s))``,
    where a concat of all the pieces of a split, in order, is the split's input (also
    among other inputs); the same ``sum`` of every piece, over other axes than the
    split's, is one sum, split; and a piece split again along the same axis is split
    with the others.
    """
    if not graph.ops() & {"split", "concat", "bodies"}:
        return graph
    nodes = [n.map_bodies(merge_pieces) for n in graph.nodes]
    current = graph.replace(nodes=tuple(nodes)) if nodes != list(graph.nodes) else graph
    # each round can expose the next (adds, then activations)
    return until_unchanged(lambda ir: _Rewriter(ir).run(), current, 8)


class _Rewriter:
    def __init__(self, graph: GraphIR):
        self.graph = graph
        self.types = graph.types()
        self.names = FreshNames(self.types)
        self.producer = {o.name: n for n in graph.nodes for o in n.outputs}
        self.users: dict[str, list[Node]] = defaultdict(list)
        for n in graph.nodes:
            for i in n.inputs:
                self.users[i].append(n)
        self.outputs = set(graph.outputs)
        self.fixed = {p.name for p in graph.params} | {c.name for c in graph.consts}
        self.removed: set[int] = set()
        self.added: list[Node] = []
        self.renames: dict[str, str] = {}

    def run(self) -> GraphIR | None:
        splits = [n for n in self.graph.nodes if n.op == "split" and len(n.outputs) > 1]
        while splits:  # a split made here is taken here too: the next op on the pieces
            made = len(self.added)
            for n in splits:
                self._ops_on_pieces(n)
                self._reductions_of_pieces(n)
                self._lone_piece(n)
            splits = [
                n
                for n in self.added[made:]
                if n.op == "split" and len(n.outputs) > 1 and self._free(n)
            ]
        concats = [n for n in self.graph.nodes if n.op == "concat" and len(n.inputs) > 1]
        while concats:  # likewise a concat made here (of the operands of the ops it took)
            made = len(self.added)
            for n in concats:
                if self._free(n):
                    self._concat_of_ops(n)
            concats = [n for n in self.added[made:] if n.op == "concat" and len(n.inputs) > 1]
        if not self.added:  # last: the rules above may still read the pieces it removes
            for n in self.graph.nodes:
                if n.op == "split" and len(n.outputs) > 1:
                    self._split_of_piece(n)
        if not self.added and not self.renames:
            return None
        kept = [n for n in (*self.graph.nodes, *self.added) if id(n) not in self.removed]
        if self.renames:
            kept = [n.renamed(self.renames) for n in kept]
        return prune(schedule(self.graph.replace(nodes=tuple(kept))))

    # -- helpers --------------------------------------------------------------------------

    def _var(self, t: TensorType) -> Var:
        return construct(Var, name=self.names.fresh("piece"), type=t)

    def _add(self, op: str, inputs: tuple, outputs: tuple, attrs: dict, loc) -> None:
        """Add a node, known to the rules from then on (as the names' producer, and as a
        user of its inputs: what it replaces stays listed, which only holds rules back)."""
        node = make_node(op, inputs, outputs, attrs, loc)
        self.added.append(node)
        for out in outputs:
            self.types[out.name] = out.type
            self.producer[out.name] = node
        for name in inputs:
            self.users[name].append(node)

    def _free(self, n: Node) -> bool:
        """Whether ``n`` is still there to be rewritten (no rule took it yet)."""
        return id(n) not in self.removed

    # -- split: ops applied to its pieces ---------------------------------------------------

    def _ops_on_pieces(self, split: Node) -> None:
        x = self.types[split.inputs[0]]
        a = get_op("split").node_attrs(split)
        axis = normalize_axis(a.axis, x.rank)
        sizes = list(a.sizes)
        pieces = [o.name for o in split.outputs]
        # (op, attrs, position of the piece) -> piece index -> the node taking it there
        families: dict[tuple, dict[int, Node]] = defaultdict(dict)
        for i, p in enumerate(pieces):
            for n in self.users[p]:
                op = get_op(n.op)
                if not isinstance(op, (Binary, Unary)) or not self._free(n):
                    continue
                if n.outputs[0].type != self.types[p] or n.inputs.count(p) != 1:
                    continue
                key = (n.op, tuple(sorted(n.attrs.items())), n.inputs.index(p))
                families[key].setdefault(i, n)
        for (opname, _, pos), members in families.items():
            if isinstance(get_op(opname), Unary):
                self._unary_runs(split, x, axis, sizes, members)
            elif len(members) == len(pieces):
                self._binary_whole(
                    split, x, axis, sizes, [members[i] for i in range(len(pieces))], pos
                )

    def _reductions_of_pieces(self, split: Node) -> None:
        """The same ``sum`` (or ``mean``) of every piece over axes other than the split's
        (the bias gradients of stacked gates): one reduction of the whole, then split."""
        x = self.types[split.inputs[0]]
        axis = normalize_axis(get_op("split").node_attrs(split).axis, x.rank)
        pieces = [o.name for o in split.outputs]
        families: dict[tuple, dict[int, Node]] = defaultdict(dict)
        for i, p in enumerate(pieces):
            for n in self.users[p]:
                if n.op in ("sum", "mean") and self._free(n):
                    families[(n.op, freeze(n.attrs))].setdefault(i, n)
        for members in families.values():
            if len(members) != len(pieces):
                continue
            first = members[0]
            a = get_op(first.op).node_attrs(first)
            axes = range(x.rank) if a.axes is None else {normalize_axis(k, x.rank) for k in a.axes}
            if axis in axes:
                continue
            at = axis if a.keepdims else axis - sum(k < axis for k in axes)
            out = first.outputs[0].type
            shape = (*out.shape[:at], x.shape[axis], *out.shape[at + 1 :])
            whole = self._var(out.with_shape(shape))
            self._add(first.op, (split.inputs[0],), (whole,), dict(first.attrs), first.loc)
            outs = tuple(members[i].outputs[0] for i in range(len(pieces)))
            sizes = list(get_op("split").node_attrs(split).sizes)
            self._add("split", (whole.name,), outs, {"axis": at, "sizes": sizes}, first.loc)
            self.removed.update(id(n) for n in members.values())

    def _lone_piece(self, split: Node) -> None:
        """A split of which one piece is used: a slice making only that piece."""
        outs = [o.name for o in split.outputs]
        used = [
            k
            for k, o in enumerate(outs)
            if any(map(self._free, self.users[o])) or o in self.outputs
        ]
        a = get_op("split").node_attrs(split)
        if len(used) != 1 or not all(isinstance(s, int) for s in a.sizes) or not self._free(split):
            return
        k = used[0]
        lo = sum(a.sizes[:k])
        attrs = {"axis": a.axis, "start": lo, "stop": lo + a.sizes[k]}
        self._add("slice", split.inputs, (split.outputs[k],), attrs, split.loc)
        self.removed.add(id(split))

    def _split_of_piece(self, split: Node) -> None:
        """A piece used only by a split along the same axis: one split makes its pieces
        (one call instead of two)."""
        a = get_op("split").node_attrs(split)
        axis = normalize_axis(a.axis, self.types[split.inputs[0]].rank)
        for k, out in enumerate(o.name for o in split.outputs):
            inner = self.users[out][0] if len(self.users[out]) == 1 else None
            if inner is None or inner.op != "split" or out in self.outputs:
                continue
            if inner.inputs.count(out) != 1 or not (self._free(split) and self._free(inner)):
                continue
            b = get_op("split").node_attrs(inner)
            if normalize_axis(b.axis, self.types[out].rank) != axis:
                continue
            sizes = list(a.sizes)
            outputs = list(split.outputs)
            sizes[k : k + 1] = b.sizes
            outputs[k : k + 1] = inner.outputs
            attrs = {"axis": axis, "sizes": sizes}
            self._add("split", split.inputs, tuple(outputs), attrs, split.loc)
            self.removed.update((id(split), id(inner)))
            return

    def _unary_runs(self, split: Node, x: TensorType, axis: int, sizes: list, members) -> None:
        """``f`` on consecutive pieces: ``f`` on the slice that holds them, then split."""
        if not all(isinstance(s, int) for s in sizes):
            return
        i = 0
        while i < len(sizes):
            if i not in members:
                i += 1
                continue
            j = i
            while j + 1 in members:
                j += 1
            run = [members[k] for k in range(i, j + 1)]
            if len(run) >= 2 and all(self._free(n) for n in run):
                self._apply_to_range(split, x, axis, sizes, i, j, run)
            i = j + 1

    def _apply_to_range(self, split, x, axis, sizes, i, j, run) -> None:
        source = split.inputs[0]
        lo, hi = sum(sizes[:i]), sum(sizes[: j + 1])
        loc = run[0].loc
        if (i, j) != (0, len(sizes) - 1):
            shape = list(x.shape)
            shape[axis] = hi - lo
            part = self._var(make_type(x.dtype, tuple(shape)))
            self._add("slice", (source,), (part,), {"axis": axis, "start": lo, "stop": hi}, loc)
            source, x = part.name, part.type
        whole = self._var(make_type(run[0].outputs[0].type.dtype, x.shape))
        self._add(run[0].op, (source,), (whole,), dict(run[0].attrs), loc)
        outs = tuple(n.outputs[0] for n in run)
        self._add("split", (whole.name,), outs, {"axis": axis, "sizes": sizes[i : j + 1]}, loc)
        self.removed.update(id(n) for n in run)

    def _binary_whole(self, split, x, axis, sizes, members: list[Node], pos: int) -> None:
        """``f(piece_i, q_i)`` for every piece: ``f(x, q)`` once, then split."""
        if not all(self._free(n) for n in members):
            return
        others = [n.inputs[1 - pos] for n in members]
        loc = members[0].loc
        other = self._whole_operand(others, x, axis, sizes, loc)
        if other is None:
            return
        inputs = (split.inputs[0], other) if pos == 0 else (other, split.inputs[0])
        out_type = make_type(members[0].outputs[0].type.dtype, x.shape)
        whole = self._var(out_type)
        self._add(members[0].op, inputs, (whole,), dict(members[0].attrs), loc)
        outs = tuple(n.outputs[0] for n in members)
        self._add("split", (whole.name,), outs, {"axis": axis, "sizes": sizes}, loc)
        self.removed.update(id(n) for n in members)

    def _whole_operand(self, others: list[str], x: TensorType, axis: int, sizes, loc) -> str | None:
        """One operand standing for ``others`` (one per piece) against the whole ``x``."""
        first = self.producer.get(others[0])
        if (
            first is not None
            and first.op == "split"
            and [o.name for o in first.outputs] == others
            and self.types[first.inputs[0]].shape == x.shape
            and normalize_axis(get_op("split").node_attrs(first).axis, x.rank) == axis
        ):
            return first.inputs[0]  # the pieces of an array split the same way
        types = [self.types[o] for o in others]
        offset = x.rank - types[0].rank  # where x's axis falls in the operand, if at all
        if len(set(others)) == 1:  # one value for every piece: it must not vary on the axis
            t = types[0]
            along = axis - offset
            if along < 0 or t.shape[along] == 1:
                return others[0] if broadcast_shapes(t.shape, x.shape) == x.shape else None
            return None
        # One operand per piece, joined: only parameters and constants (biases), which
        # cannot depend on the pieces; joining anything else costs what it saves.
        along = axis - offset
        if any(o not in self.fixed for o in others):
            return None
        if along < 0 or any(t.rank != types[0].rank for t in types):
            return None
        if [t.shape[along] for t in types] != list(sizes):
            return None
        shape = list(types[0].shape)
        shape[along] = x.shape[axis]
        if (
            any(
                [d for k, d in enumerate(t.shape) if k != along]
                != [d for k, d in enumerate(shape) if k != along]
                for t in types
            )
            or broadcast_shapes(tuple(shape), x.shape) != x.shape
        ):
            return None
        joined = self._var(make_type(types[0].dtype, tuple(shape)))
        self._add("concat", tuple(others), (joined,), {"axis": along}, loc)
        return joined.name

    # -- concat: of results of one op ---------------------------------------------------

    def _concat_of_ops(self, concat: Node) -> None:
        """``concat(f(a_i, b_i))``: ``f(concat(a_i), concat(b_i))`` when that is fewer calls;
        ``concat`` of all the pieces of a split, in order: the split's input."""
        out = concat.outputs[0]
        axis = normalize_axis(get_op("concat").node_attrs(concat).axis, out.type.rank)
        whole = self._split_source(list(concat.inputs), axis)
        if whole is not None and self.types[whole] == out.type:
            if out.name in self.outputs:  # an output keeps its name
                self._add("identity", (whole,), (out,), {}, concat.loc)
            else:  # consumers read the whole (rules that count its readers count them)
                self.renames[out.name] = whole
                self.users[whole].extend(self.users[out.name])
            self.removed.add(id(concat))
            return
        if self._pieces_in_concat(concat, axis):
            return
        parts = [self.producer.get(i) for i in concat.inputs]
        first = parts[0]
        if first is not None and first.op == "transpose":
            self._concat_of_transposes(concat, parts, axis)
            return
        if first is None or not isinstance(get_op(first.op), (Binary, Unary)):
            return
        for n, name in zip(parts, concat.inputs):
            if (
                n is None
                or n.op != first.op
                or n.attrs != first.attrs
                or not self._free(n)
                or sum(map(self._free, self.users[name])) != 1
                or name in self.outputs
                or concat.inputs.count(name) != 1
                or any(self.types[i] != n.outputs[0].type for i in n.inputs)
            ):
                return
        operands, calls = [], 1
        for side in range(len(first.inputs)):
            names = [n.inputs[side] for n in parts]
            whole = self._split_source(names, axis)
            operands.append(whole)
            calls += whole is None
        if calls >= len(parts) + 1:  # k calls and the concat: no fewer
            return
        loc = concat.loc
        inputs = []
        for side, whole in enumerate(operands):
            if whole is None:
                joined = self._var(make_type(self.types[first.inputs[side]].dtype, out.type.shape))
                names = tuple(n.inputs[side] for n in parts)
                self._add("concat", names, (joined,), {"axis": axis}, loc)
                whole = joined.name
            inputs.append(whole)
        self._add(first.op, tuple(inputs), (out,), dict(first.attrs), loc)
        self.removed.update(id(n) for n in parts)
        self.removed.add(id(concat))

    def _pieces_in_concat(self, concat: Node, axis: int) -> bool:
        """Inputs of a concat that are all the pieces of one split, in order, among
        others: the split's input in their place (fewer, longer copies per row)."""
        ins, joined, i = list(concat.inputs), [], 0
        while i < len(ins):
            n = self.producer.get(ins[i])
            k = len(n.outputs) if n is not None and n.op == "split" else 1
            whole = self._split_source(ins[i : i + k], axis) if k > 1 else None
            joined.append(whole or ins[i])
            i += k if whole else 1
        if len(joined) == len(ins):
            return False
        self._add("concat", tuple(joined), concat.outputs, dict(concat.attrs), concat.loc)
        self.removed.add(id(concat))
        return True

    def _concat_of_transposes(self, concat: Node, parts: list, axis: int) -> None:
        """``concat(a_i^T)``: ``concat(a_i)^T``, a contiguous copy instead of a strided one
        (stacked gate weights are joined at every run)."""
        first = parts[0]
        if any(p is None or p.op != "transpose" or p.attrs != first.attrs for p in parts):
            return
        out = concat.outputs[0]
        perm = get_op("transpose").node_attrs(first).perm
        perm = list(perm) if perm is not None else list(range(out.type.rank))[::-1]
        inner = perm[axis]
        shape = list(self.types[first.inputs[0]].shape)
        shape[inner] = out.type.shape[axis]
        joined = self._var(make_type(out.type.dtype, tuple(shape)))
        sources = tuple(p.inputs[0] for p in parts)
        self._add("concat", sources, (joined,), {"axis": inner}, concat.loc)
        self._add("transpose", (joined.name,), (out,), dict(first.attrs), concat.loc)
        self.removed.add(id(concat))

    def _split_source(self, names: list[str], axis: int) -> str | None:
        """The array whose split along ``axis`` gives exactly ``names``, in order."""
        n = self.producer.get(names[0])
        if n is None or n.op != "split" or [o.name for o in n.outputs] != names:
            return None
        x = self.types[n.inputs[0]]
        split_axis = normalize_axis(get_op("split").node_attrs(n).axis, x.rank)
        return n.inputs[0] if split_axis == axis else None
