"""Applying a loop body's node to all steps at once: the rule both loop passes share.

A node of a scan body sees one step's slices. Given which of its inputs are available
for every step at once (stacked along a new leading time axis), its op's
:meth:`~rgraph.ir.op.Op.batched_attrs` says how to compute every step's outputs in one
call. ``hoist`` uses this to move input-side work before a loop, ``sink`` to move
output-side work after it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rgraph.errors import GraphError
from rgraph.ir.dims import Dim
from rgraph.ir.graph import Node
from rgraph.ir.op import get_op
from rgraph.ir.types import TensorType, make_type


def batched_attrs(
    node: Node, types: Mapping[str, TensorType], stacked: Sequence[bool], steps: Dim
) -> dict[str, Any] | None:
    """Attrs that run ``node`` on stacked inputs, giving each output a leading ``steps``
    axis and nothing else; None when its op cannot (or the inputs are all per-step-free).

    ``types`` gives the per-step types of the node's inputs, ``stacked`` which inputs
    carry the leading axis.
    """
    if node.bodies or not any(stacked):
        return None
    op = get_op(node.op)
    ins = [types[i] for i in node.inputs]
    attrs = op.batched_attrs(op.node_attrs(node), ins, stacked, steps)
    if attrs is None:
        return None
    wide = [t.with_shape((steps, *t.shape)) if s else t for t, s in zip(ins, stacked)]
    try:
        outs = op.infer(wide, op.attrs_from_kwargs(dict(attrs))[0])
    except GraphError:
        return None
    want = [make_type(v.type.dtype, (steps, *v.type.shape)) for v in node.outputs]
    return attrs if outs == want else None
