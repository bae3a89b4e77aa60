"""A loop's inputs and outputs passed whole, once each.

Every per-step input of a scan costs a slice at every step and every per-step output a
copy, so a loop that takes the four gate inputs of an LSTM as four arrays, the same mask
twice, or returns three pieces of one array as three outputs pays for it at each step.
"""

from __future__ import annotations

from rgraph.ir.graph import GraphIR, Node, Var
from rgraph.ir.op import get_op, normalize_axis
from rgraph.ir.passes.merge import FreshNames, make_node
from rgraph.ir.passes.schedule import schedule
from rgraph.ir.types import construct


def pack_loop_io(graph: GraphIR) -> GraphIR:
    """Give every scan each outer value once, and split pieces whole (nested scans too).

    - an outer value given twice (as two ``xs`` or two invariants) becomes one input;
    - ``xs`` that are all the pieces of one outer ``split`` become its input, split in
      the body (one slice per step instead of one per piece);
    - a body value returned twice as a ``y`` is returned once;
    - ``ys`` that are all the pieces of one ``split`` in the body are returned as its
      input, split after the loop (one copy per step instead of one per piece);
    - a ``y`` that is a carry as the step gets it is the carry as the step before left
      it: the loop returns the latter (written in place, no copy) and a ``shift`` after
      the loop makes the former (one copy of the whole instead of one per step).
    """
    if "scan" not in graph.ops():
        return graph
    producer = {o.name: n for n in graph.nodes for o in n.outputs}
    types = graph.types()
    names = FreshNames(types)
    nodes: list[Node] = []
    changed = False
    for n in graph.nodes:
        if n.bodies:
            new = n.map_bodies(pack_loop_io)
            changed |= new is not n
            n = new
        if n.op == "scan":
            shifted = _shift_states(n, names)
            after = shifted[1:] if shifted else []
            n = shifted[0] if shifted else n
            packed = _pack(n, producer, types, names)
            if packed is not None or shifted:
                nodes.extend([*(packed or [n]), *after])
                changed = True
                continue
        nodes.append(n)
    return schedule(graph.replace(nodes=tuple(nodes))) if changed else graph


def _shift_states(node: Node, names: FreshNames) -> list[Node] | None:
    """The scan returning, instead of each carry as its steps get it, that carry as its
    steps leave it, and the ``shift`` nodes that delay the latter into the former; None
    when no ``y`` is a carry input."""
    a = get_op("scan").node_attrs(node)
    body, nc = a.body, a.num_carry
    carry_in = {v.name: k for k, v in enumerate(body.inputs[:nc])}
    inputs = {v.name for v in body.inputs}
    ys = list(body.outputs[nc:])
    delayed = [
        j for j, y in enumerate(ys) if y in carry_in and body.outputs[carry_in[y]] not in inputs
    ]
    if not delayed:
        return None
    types = body.types()
    keep = [j for j in range(len(ys)) if j not in delayed]
    new_ys = [ys[j] for j in keep]
    out_vars = [*node.outputs[:nc], *(node.outputs[nc + j] for j in keep)]
    steps = node.outputs[nc].type.shape[0]
    shifts = []
    for j in delayed:
        k = carry_in[ys[j]]
        left = body.outputs[k]
        if left not in new_ys:
            t = types[left]
            new_ys.append(left)
            out_vars.append(
                construct(Var, name=names.fresh("ys"), type=t.with_shape((steps, *t.shape)))
            )
        stacked = out_vars[nc + new_ys.index(left)].name
        attrs = {"reverse": True} if a.reverse else {}
        shifts.append(
            make_node("shift", (stacked, node.inputs[k]), (node.outputs[nc + j],), attrs, node.loc)
        )
    new_body = body.replace(outputs=(*body.outputs[:nc], *new_ys))
    scan = node.model_copy(update={"outputs": tuple(out_vars), "bodies": {"body": new_body}})
    return [scan, *shifts]


def _pack(
    node: Node, producer: dict[str, Node], outer_types: dict, names: FreshNames
) -> list[Node] | None:
    """The scan rebuilt with packed inputs and outputs, and the nodes that unpack its
    outputs; None when there is nothing to pack."""
    a = get_op("scan").node_attrs(node)
    body, nc, nx = a.body, a.num_carry, a.num_xs
    inputs = list(node.inputs)
    b_inputs = list(body.inputs)
    b_nodes = list(body.nodes)
    renames: dict[str, str] = {}

    # Outer values given more than once (xs with xs, invariants with invariants).
    seen: dict[tuple[bool, str], str] = {}
    keep = []
    for i in range(nc, len(inputs)):
        key = (i < nc + nx, inputs[i])
        if key in seen:
            renames[b_inputs[i].name] = seen[key]
        else:
            seen[key] = b_inputs[i].name
            keep.append(i)
    b_nodes = [n.renamed(renames) for n in b_nodes]  # nodes read the kept inputs
    xs_idx = [i for i in keep if i < nc + nx]
    ks_idx = [i for i in keep if i >= nc + nx]

    # xs that are all the pieces of one outer split: one input, split in the body.
    xs_new: list[tuple[str, Var]] = [(inputs[i], b_inputs[i]) for i in xs_idx]
    by_split: dict[int, list[int]] = {}
    for pos, (outer, _) in enumerate(xs_new):
        s = producer.get(outer)
        if s is not None and s.op == "split" and len(s.outputs) > 1:
            by_split.setdefault(id(s), []).append(pos)
    packed_away: set[int] = set()
    entry_nodes: list[Node] = []
    for positions in by_split.values():
        s = producer[xs_new[positions[0]][0]]
        order = [o.name for o in s.outputs]
        if sorted(xs_new[p][0] for p in positions) != sorted(order) or len(positions) != len(order):
            continue
        sa = get_op("split").node_attrs(s)
        source = s.inputs[0]
        src_type = outer_types[source]
        axis = normalize_axis(sa.axis, src_type.rank)
        if axis == 0:  # split along time: not per-step pieces
            continue
        whole = construct(Var, name=names.fresh("xs"), type=src_type.with_shape(src_type.shape[1:]))
        by_name = {xs_new[p][0]: xs_new[p][1] for p in positions}
        entry_nodes.append(
            make_node(
                "split",
                (whole.name,),
                tuple(by_name[o] for o in order),
                {"axis": axis - 1, "sizes": list(sa.sizes)},
                node.loc,
            )
        )
        packed_away.update(positions)
        xs_new.append((source, whole))
    xs_final = [xs_new[p] for p in range(len(xs_new)) if p not in packed_away]

    # ys: each body value once; all the pieces of one array as that array.
    ys = [renames.get(y, y) for y in body.outputs[nc:]]
    first: dict[str, int] = {}
    for j, y in enumerate(ys):
        first.setdefault(y, j)
    unique = list(first)
    whole_ys = _wholes(unique, b_nodes, body.types())
    grouped = {y for _, _, members in whole_ys for y in members}
    ys_final = [y for y in unique if y not in grouped] + [w for w, _, _ in whole_ys]

    if (
        not renames
        and not packed_away
        and len(ys_final) == len(ys)
        and len(xs_final) == nx
        and len(ks_idx) == len(inputs) - nc - nx
    ):
        return None

    types = body.types()
    new_body = body.replace(
        inputs=(*b_inputs[:nc], *(v for _, v in xs_final), *(b_inputs[i] for i in ks_idx)),
        nodes=tuple(entry_nodes + b_nodes),
        outputs=(*(renames.get(o, o) for o in body.outputs[:nc]), *ys_final),
    )
    steps = node.outputs[nc].type.shape[0] if len(node.outputs) > nc else a.length
    out_vars = list(node.outputs[:nc])
    y_var = {y: node.outputs[nc + j] for y, j in first.items()}
    extra: list[Node] = []
    for y in ys_final:
        if y in y_var:
            out_vars.append(y_var[y])
            continue
        t = types[y]
        var = construct(Var, name=names.fresh("ys"), type=t.with_shape((steps, *t.shape)))
        out_vars.append(var)
        attrs, members = next((at, m) for w, at, m in whole_ys if w == y)
        pieces = tuple(y_var[m] for m in members)
        extra.append(make_node("split", (var.name,), pieces, attrs, node.loc))
    # A y returned twice: later uses read the first.
    dupes = [
        make_node("identity", (y_var[y].name,), (node.outputs[nc + j],), {}, node.loc)
        for j, y in enumerate(ys)
        if first[y] != j
    ]
    attrs = {**node.attrs, "num_xs": len(xs_final)}
    if not xs_final:
        attrs["length"] = steps
    scan = node.model_copy(
        update={
            "inputs": (
                *inputs[:nc],
                *(outer for outer, _ in xs_final),
                *(inputs[i] for i in ks_idx),
            ),
            "outputs": tuple(out_vars),
            "attrs": attrs,
            "bodies": {"body": new_body},
        }
    )
    return [scan, *extra, *dupes]


def _wholes(ys: list[str], nodes: list[Node], types) -> list[tuple[str, dict, list[str]]]:
    """Groups of ``ys`` that are all the pieces of one array of the body: the pieces a
    ``split`` makes or a ``concat`` joins (each piece once). For each: the whole, the
    attrs splitting its stacked form back into the pieces, and the pieces in order."""
    wanted = set(ys)
    not_whole = set(ys)  # a whole is none of the ys, and is found once
    found = []
    for n in nodes:
        if n.op == "split" and len(n.outputs) > 1:
            whole, pieces = n.inputs[0], [o.name for o in n.outputs]
            a = get_op("split").node_attrs(n)
            sizes = list(a.sizes)
        elif n.op == "concat" and len(n.inputs) > 1:
            whole, pieces = n.outputs[0].name, list(n.inputs)
            a = get_op("concat").node_attrs(n)
            sizes = [types[p].shape[normalize_axis(a.axis, types[p].rank)] for p in pieces]
        else:
            continue
        if len(set(pieces)) == len(pieces) and wanted.issuperset(pieces) and whole not in not_whole:
            axis = normalize_axis(a.axis, types[whole].rank) + 1
            found.append((whole, {"axis": axis, "sizes": sizes}, pieces))
            wanted.difference_update(pieces)
            not_whole.add(whole)
    return found
