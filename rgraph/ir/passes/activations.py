"""One call for the gates of a recurrent step: sigmoid and tanh of one value's columns.

An LSTM step applies ``sigmoid`` to three column blocks of its stacked pre-activations
``z = x_t + h @ W`` and ``tanh`` to the fourth. Since ``sigmoid(z) = (1 + tanh(z / 2)) / 2``,
halving the sigmoid columns lets one ``tanh`` cover them all (op ``gate_activation``);
for wide gates, where ``exp`` is the cheaper call, ``sigmoid(z) = 1 / (1 + exp(-z))``
and ``tanh(z) = 2 sigmoid(2 z) - 1`` let one ``exp`` of ``-z`` and ``-2 z`` cover them.
The scaling costs nothing per step: ``(x_t + h @ W) * s = x_t * s + h @ (W * s)``, where
``W * s`` is loop-invariant and ``x_t * s`` per-step, both moved out of the loop by
``hoist``. Scaling by powers of two is exact, so only the activations' last bits change.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np

from rgraph.ir.graph import Const, GraphIR, Node, Var
from rgraph.ir.op import get_op, normalize_axis
from rgraph.ir.ops.elementwise import gate_form
from rgraph.ir.passes.merge import FreshNames, make_node
from rgraph.ir.passes.prune import prune
from rgraph.ir.passes.schedule import schedule
from rgraph.ir.types import TensorType, construct

_ACTIVATIONS = ("sigmoid", "tanh")


def merge_activations(graph: GraphIR) -> GraphIR:
    """In every scan body, turn the sigmoids and tanhs of the column blocks of one
    pre-activation into one ``gate_activation``, its scale folded into the weights.

    Before::

        z = add(x_t, matmul(h, W)); a = slice[0:60](z); b = slice[60:80](z)
        i = sigmoid(a); g = tanh(b)

    After::

        z' = add(eltmul(x_t, s), matmul(h, eltmul(W, s)))     # s: 1/2 on columns 0:60
        y = gate_activation[sizes=[60, 20], sigmoid=[true, false]](z'); i, g = split(y)

    Applies where every use of ``z`` is such a block and the scale folds: ``z`` is a sum
    of per-step inputs, loop-invariant values and products ``h @ W`` with ``W`` invariant.
    """
    if "bodies" not in graph.ops():
        return graph
    nodes = []
    for n in graph.nodes:
        if n.op == "scan":
            a = get_op("scan").node_attrs(n)
            body = merge_activations(a.body)
            outside = {v.name for v in body.inputs[a.num_carry :]} | {c.name for c in body.consts}
            body = _Rewriter(body, outside).run() or body
            n = n if body is a.body else n.model_copy(update={"bodies": {"body": body}})
        else:
            n = n.map_bodies(merge_activations)
        nodes.append(n)
    if all(new is old for new, old in zip(nodes, graph.nodes)):
        return graph
    return graph.replace(nodes=tuple(nodes))


class _Rewriter:
    """One scan body; ``outside`` names its per-step and loop-invariant inputs and its
    consts: a product by a constant of these leaves the loop."""

    def __init__(self, graph: GraphIR, outside: set[str]):
        self.graph = graph
        self.outside = outside
        self.types = graph.types()
        self.names = FreshNames(self.types)
        self.producer = {o.name: n for n in graph.nodes for o in n.outputs}
        self.users: dict[str, list[Node]] = defaultdict(list)
        for n in graph.nodes:
            for i in set(n.inputs):
                self.users[i].append(n)
        self.uses = graph.use_counts()
        self.outputs = set(graph.outputs)
        self.added: list[Node] = []
        self.consts: list[Const] = []
        self.removed: set[int] = set()

    def run(self) -> GraphIR | None:
        for z in list(self.producer):
            blocks = self._blocks(z)
            if blocks is not None and self._folds(z, self.types[z].shape[-1], top=True):
                self._merge(z, blocks)
        if not self.added:
            return None
        kept = [n for n in self.graph.nodes if id(n) not in self.removed] + self.added
        merged = self.graph.replace(nodes=tuple(kept), consts=(*self.graph.consts, *self.consts))
        return prune(schedule(merged))

    def _blocks(self, z: str) -> list[tuple[int, int, Node]] | None:
        """The activations of ``z``'s column blocks, ordered by their first column, when
        they are all its uses and cover each column once; else None."""
        t = self.types[z]
        if t.rank < 1 or not isinstance(t.shape[-1], int) or z in self.outputs:
            return None
        last = t.rank - 1
        blocks = []
        for n in self.users[z]:
            if n.op == "slice":
                a = get_op("slice").node_attrs(n)
                if normalize_axis(a.axis, t.rank) != last or a.step not in (None, 1):
                    return None
                if not all(e is None or isinstance(e, int) for e in (a.start, a.stop)):
                    return None
                lo, hi, _ = slice(a.start, a.stop).indices(t.shape[-1])
                spans = [(lo, hi, n.outputs[0].name)]
            elif n.op == "split":
                a = get_op("split").node_attrs(n)
                if normalize_axis(a.axis, t.rank) != last:
                    return None
                ends = np.cumsum(a.sizes).tolist()
                spans = [(e - s, e, o.name) for s, e, o in zip(a.sizes, ends, n.outputs)]
            elif n.op in _ACTIVATIONS:
                spans = [(0, t.shape[-1], z)]
            else:
                return None
            for lo, hi, piece in spans:
                act = self._activation(piece) if piece != z else n
                if act is None:
                    return None
                blocks.append((lo, hi, act))
        blocks.sort(key=lambda b: b[0])
        ends = [0] + [hi for _, hi, _ in blocks]
        if not blocks or any(lo != end for (lo, _, _), end in zip(blocks, ends)):
            return None
        if ends[-1] != t.shape[-1] or all(act.op == "tanh" for _, _, act in blocks):
            return None
        return blocks

    def _activation(self, piece: str) -> Node | None:
        """The sigmoid or tanh that is the one use of ``piece``, if so."""
        users = self.users[piece]
        if piece in self.outputs or self.uses.get(piece) != 1 or users[0].op not in _ACTIVATIONS:
            return None
        return users[0]

    def _folds(self, v: str, width: int, top: bool = False) -> bool:
        """Whether ``v * s`` (``s`` along the last axis) can be made of products by ``s``
        that leave the loop; below the ``top`` value, each value made for this alone."""
        if v in self.outside:
            t = self.types[v]
            return t.rank >= 1 and t.shape[-1] == width
        n = self.producer.get(v)
        if n is None or not (top or (self.uses.get(v) == 1 and v not in self.outputs)):
            return False
        if n.op == "add":
            return all(self._folds(i, width) for i in n.inputs)
        if n.op == "matmul":
            a = get_op("matmul").node_attrs(n)
            w = self.types[n.inputs[1]]
            return not a.transpose_a and w.rank == 2 and n.inputs[1] in self.outside
        return False

    def _scaled(self, v: str, scale: np.ndarray) -> str:
        """A new value ``v * scale`` made as :meth:`_folds` allows."""
        n = self.producer.get(v)
        if v in self.outside:
            return self._node("eltmul", (v, self._const(scale)), self.types[v])
        if n.op == "add":
            terms = tuple(self._scaled(i, scale) for i in n.inputs)
            return self._node("add", terms, self.types[v], n.loc)
        transpose_b = get_op("matmul").node_attrs(n).transpose_b
        h, w = n.inputs
        weights = scale[:, None] if transpose_b else scale  # W's columns are z's
        scaled_w = self._node("eltmul", (w, self._const(weights)), self.types[w], n.loc)
        return self._node("matmul", (h, scaled_w), self.types[v], n.loc, n.attrs)

    def _merge(self, z: str, blocks: list[tuple[int, int, Node]]) -> None:
        t = self.types[z]
        sigmoid = [act.op == "sigmoid" for _, _, act in blocks]
        sizes = [hi - lo for lo, hi, _ in blocks]
        form = gate_form(t.dtype, t.shape[-1])
        factors = (0.5, 1.0) if form == "tanh" else (-1.0, -2.0)  # sigmoid, tanh blocks
        scale = np.repeat(np.where(sigmoid, *factors).astype(t.np_dtype), sizes)
        u = self._scaled(z, scale)
        loc = blocks[0][2].loc
        outs = tuple(act.outputs[0] for _, _, act in blocks)
        attrs = {"sizes": sizes, "sigmoid": sigmoid, "form": form}
        if len(blocks) == 1:
            self.added.append(make_node("gate_activation", (u,), outs, attrs, loc))
        else:
            y = self._node("gate_activation", (u,), t, loc, attrs)
            self.added.append(make_node("split", (y,), outs, {"axis": -1, "sizes": sizes}, loc))
        self.removed.update(id(act) for _, _, act in blocks)

    def _node(self, op: str, inputs: tuple, t: TensorType, loc=None, attrs=None) -> str:
        out = construct(Var, name=self.names.fresh("gates"), type=t)
        self.added.append(make_node(op, inputs, (out,), dict(attrs or {}), loc))
        self.types[out.name] = t
        return out.name

    def _const(self, data: np.ndarray) -> str:
        name = self.names.fresh("scale")
        t = construct(TensorType, dtype=data.dtype.name, shape=data.shape)
        self.consts.append(construct(Const, name=name, type=t, data=data.ravel().tolist()))
        self.types[name] = t
        return name
