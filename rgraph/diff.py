"""What differs between two models: structure, weights, optimiser state, metadata.

Structure is compared section by section: the graph's inputs, parameters and outputs by
name; constants by value; nodes by a name-free *signature*, the op with its attributes and
its input and output types (``matmul[transpose_b=true](f64[T,B,20], f64[27,20]) ->
f64[T,B,27]``), so that a model built by another script, or with one node more, does not
show every later node as changed. Signatures are compared as multisets; a removed and an
added node of the same op with the same output names pair up as *changed*. Loop bodies
are compared the same way, the k-th loop of A with the k-th of B. When the signatures
agree but the graphs still differ (the same nodes wired differently, renamed values), the
first differing node is reported, so "identical" always means identical (source
locations aside).

Weights: for each parameter in both models with the same shape, whether it is
bit-identical, the largest absolute difference and the relative L2 distance
``||b - a|| / ||a||``.

>>> import numpy as np, rgraph as rg
>>> g = rg.Graph("m"); x = g.input("x", (3,)); W = g.param("W", (3,))
>>> _ = g.output(g.sum(W * x), name="y")
>>> a = rg.Model(g.ir, {"W": np.array([1.0, 2.0, 2.0])})
>>> b = rg.Model(g.ir, {"W": np.array([1.0, 2.0, 2.3])})
>>> d = diff_models(a, b)
>>> d.identical, d.structure_identical
(False, True)
>>> w = d.weights[0]; (w.name, w.equal, round(w.max_abs_diff, 6), round(w.rel_l2, 6))
('W', False, 0.3, 0.1)
"""

from __future__ import annotations

import json
import math
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from rgraph.ir.graph import GraphIR, Node
from rgraph.ir.printer import format_init

MAX_SHOWN = 20  # lines per section in the text report, unless show_all


@dataclass
class Change:
    """One difference: ``where`` (e.g. ``params`` or ``scan t11 body/nodes``), ``kind``
    (``added``, ``removed`` or ``changed``), ``what`` it is about, and its form in A and B."""

    where: str
    kind: str
    what: str
    a: str | None = None
    b: str | None = None

    def __str__(self) -> str:
        if self.kind == "added":
            return f"added   {self.what}: {self.b}"
        if self.kind == "removed":
            return f"removed {self.what}: {self.a}"
        if self.a is None:
            return f"changed {self.what}: {self.b}"
        return f"changed {self.what}: {self.a} -> {self.b}"


@dataclass
class WeightDelta:
    """How far one tensor moved from A to B (``rel_l2`` is inf when A is all zeros and B
    is not; NaN comparisons give NaN)."""

    name: str
    shape: tuple[int, ...]
    dtype_a: str
    dtype_b: str
    equal: bool
    max_abs_diff: float
    rel_l2: float
    norm_a: float
    norm_b: float


@dataclass
class ModelDiff:
    """The result of :func:`diff_models`; ``str()`` is the text report."""

    structure: list[Change] = field(default_factory=list)
    op_counts: dict[str, tuple[int, int]] = field(default_factory=dict)  # ops whose count differ
    weights: list[WeightDelta] = field(default_factory=list)
    state: list[Change] = field(default_factory=list)  # optimiser, RNG, step, metadata
    notes: list[str] = field(default_factory=list)  # producer/version: not differences
    summary_a: str = ""
    summary_b: str = ""

    @property
    def structure_identical(self) -> bool:
        return not self.structure

    @property
    def weights_identical(self) -> bool:
        return all(w.equal for w in self.weights)

    @property
    def identical(self) -> bool:
        return self.structure_identical and self.weights_identical and not self.state

    def to_json(self) -> dict[str, Any]:
        """Plain data for ``json.dumps``: non-finite numbers become None."""
        return {
            "identical": self.identical,
            "structure_identical": self.structure_identical,
            "weights_identical": self.weights_identical,
            "a": self.summary_a,
            "b": self.summary_b,
            "structure": [asdict(c) for c in self.structure],
            "op_counts": {op: {"a": a, "b": b} for op, (a, b) in self.op_counts.items()},
            "weights": [
                {
                    **{k: _finite(v) for k, v in asdict(w).items()},
                    "shape": list(w.shape),
                }
                for w in self.weights
            ],
            "state": [asdict(c) for c in self.state],
            "notes": list(self.notes),
        }

    def format(self, show_all: bool = False) -> str:
        """The text report; each section lists at most ``MAX_SHOWN`` lines unless
        ``show_all``."""
        limit = None if show_all else MAX_SHOWN
        out = [f"A: {self.summary_a}", f"B: {self.summary_b}"]
        if self.structure_identical:
            out.append("structure: identical")
        else:
            out.append(f"structure: {_plural(len(self.structure), 'difference')}")
            if self.op_counts:
                counts = ", ".join(f"{op} {a} -> {b}" for op, (a, b) in self.op_counts.items())
                out.append(f"  op counts: {counts}")
            by_where: dict[str, list[Change]] = defaultdict(list)
            for c in self.structure:
                by_where[c.where].append(c)
            for where, changes in by_where.items():
                out.append(f"  {where}:")
                out += _limited([f"    {c}" for c in changes], limit)
        moved = [w for w in self.weights if not w.equal]
        if not self.weights:
            out.append("weights: no parameters in common with the same shape")
        elif not moved:
            out.append(f"weights: identical ({_plural(len(self.weights), 'parameter')})")
        else:
            out.append(f"weights: {len(moved)} of {_plural(len(self.weights), 'parameter')} differ")
            rows = [("name", "shape", "max abs diff", "rel L2", "")]
            rows += [
                (
                    w.name,
                    "[" + ",".join(map(str, w.shape)) + "]",
                    f"{w.max_abs_diff:.4g}",
                    f"{w.rel_l2:.4g}",
                    "" if w.dtype_a == w.dtype_b else f"{w.dtype_a} -> {w.dtype_b}",
                )
                for w in moved
            ]
            widths = [max(len(r[i]) for r in rows) for i in range(4)]
            table = [
                "  " + "  ".join(r[i].ljust(widths[i]) for i in range(4)) + "  " + r[4]
                for r in rows
            ]
            out += [line.rstrip() for line in table[:1]]
            out += _limited([line.rstrip() for line in table[1:]], limit)
        if self.state:
            out.append(f"state: {_plural(len(self.state), 'difference')}")
            by_where = defaultdict(list)
            for c in self.state:
                by_where[c.where].append(c)
            for where, changes in by_where.items():
                out.append(f"  {where}:")
                out += _limited([f"    {c}" for c in changes], limit)
        else:
            out.append("state (optimiser, RNG, step, metadata): identical")
        out += [f"note: {n}" for n in self.notes]
        out.append("identical" if self.identical else "different")
        return "\n".join(out)

    def __str__(self) -> str:
        return self.format()


def _limited(lines: list[str], limit: int | None) -> list[str]:
    if limit is None or len(lines) <= limit:
        return lines
    return [*lines[:limit], f"    ... {len(lines) - limit} more (--all or --json lists them)"]


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'s' * (n != 1)}"


def _finite(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


# --- structure -------------------------------------------------------------------------


def _ir(graph: Any) -> GraphIR:
    """The IR of a ``GraphIR``, a builder ``Graph`` or a loaded ``Model``."""
    if isinstance(graph, GraphIR):
        return graph
    return graph.ir if hasattr(graph, "ir") else graph.graph


def diff_graphs(a: Any, b: Any) -> tuple[list[Change], dict[str, tuple[int, int]]]:
    """Structural differences of two graphs (``GraphIR``, builder ``Graph`` or ``Model``), and the
    ops whose counts differ (nested bodies included): ``{op: (count in A, count in B)}``."""
    ga, gb = _ir(a), _ir(b)
    changes: list[Change] = []
    if ga.name != gb.name:
        changes.append(Change("graph", "changed", "name", ga.name, gb.name))
    _diff_scope(ga, gb, "", changes)
    ha, hb = _histogram(ga), _histogram(gb)
    ops = sorted(set(ha) | set(hb))
    counts = {op: (ha[op], hb[op]) for op in ops if ha[op] != hb[op]}
    return changes, counts


def _histogram(g: GraphIR) -> Counter:
    counts: Counter = Counter()
    stack = [g]
    while stack:
        scope = stack.pop()
        counts.update(n.op for n in scope.nodes)
        for n in scope.nodes:
            stack.extend(n.bodies.values())
    return counts


def signature(node: Node, types: Mapping[str, Any]) -> str:
    """A node without names: ``op[attrs](input types) -> output types``."""
    attrs = ""
    if node.attrs:
        attrs = "[" + ", ".join(f"{k}={_json(v)}" for k, v in node.attrs.items()) + "]"
    ins = ", ".join(str(types[n]) if n in types else "?" for n in node.inputs)
    outs = ", ".join(str(o.type) for o in node.outputs)
    return f"{node.op}{attrs}({ins}) -> {outs}"


def _json(v: Any) -> str:
    return json.dumps(v, separators=(",", ":"))


def _diff_scope(ga: GraphIR, gb: GraphIR, path: str, changes: list[Change]) -> None:
    if _same_scope(ga, gb):  # the common case, and cheap: no signatures needed
        return
    before = len(changes)

    def where(section: str) -> str:
        return f"{path}/{section}" if path else section

    # Interface, by name.
    _by_name(
        {v.name: str(v.type) for v in ga.inputs},
        {v.name: str(v.type) for v in gb.inputs},
        where("inputs"),
        changes,
    )
    _by_name(
        {p.name: f"{p.type} ~ {format_init(p.init)}" for p in ga.params},
        {p.name: f"{p.type} ~ {format_init(p.init)}" for p in gb.params},
        where("params"),
        changes,
    )
    ta, tb = ga.types(), gb.types()
    _by_name(
        {n: str(ta.get(n, "?")) for n in ga.outputs},
        {n: str(tb.get(n, "?")) for n in gb.outputs},
        where("outputs"),
        changes,
    )
    # Constants, by value.
    ca = Counter(
        f"{c.type} = {_json(c.data) if len(c.data) <= 8 else _digest(c)}" for c in ga.consts
    )
    cb = Counter(
        f"{c.type} = {_json(c.data) if len(c.data) <= 8 else _digest(c)}" for c in gb.consts
    )
    for text, n in (ca - cb).items():
        changes.append(Change(where("consts"), "removed", f"{n} const", a=text))
    for text, n in (cb - ca).items():
        changes.append(Change(where("consts"), "added", f"{n} const", b=text))
    # Nodes, by signature.
    _diff_nodes(ga.nodes, gb.nodes, ta, tb, where("nodes"), changes)
    # Nested bodies: the k-th node with bodies of each op in A against the k-th in B.
    loops_a, loops_b = _loops(ga), _loops(gb)
    for op, nodes_a in loops_a.items():
        for na, nb in zip(nodes_a, loops_b.get(op, [])):
            for key, body in na.bodies.items():
                if key in nb.bodies:
                    label = f"{op} {na.outputs[0].name if na.outputs else '?'} {key}"
                    _diff_scope(
                        body, nb.bodies[key], f"{path} > {label}" if path else label, changes
                    )
    # Same signatures everywhere, yet not the same graph: names or wiring.
    if len(changes) == before:
        first = _first_wiring_difference(ga, gb)
        if first is not None:
            changes.append(Change(where("wiring"), "changed", first[0], first[1], first[2]))


def _digest(c: Any) -> str:
    data = np.asarray(c.data, dtype=np.float64)
    return f"<{len(c.data)} values, sum {float(np.sum(data)):.6g}, hash {hash(tuple(c.data)):x}>"


def _by_name(a: dict[str, str], b: dict[str, str], where: str, changes: list[Change]) -> None:
    for name, text in a.items():
        if name not in b:
            changes.append(Change(where, "removed", name, a=text))
        elif b[name] != text:
            changes.append(Change(where, "changed", name, text, b[name]))
    for name, text in b.items():
        if name not in a:
            changes.append(Change(where, "added", name, b=text))


def _diff_nodes(
    nodes_a: tuple[Node, ...],
    nodes_b: tuple[Node, ...],
    ta: Mapping[str, Any],
    tb: Mapping[str, Any],
    where: str,
    changes: list[Change],
) -> None:
    """Nodes removed, added or changed, matched in three rounds: the same output names and
    signature (unchanged); the same signature under other names (renamed by an insertion
    upstream: unchanged too); the same output names (changed)."""
    # Round 0, cheap: the same names, wiring and input types (so the same signature).
    by_name_b = {_names(n): n for n in nodes_b}
    same: set[int] = set()
    for n in nodes_a:
        m = by_name_b.get(_names(n))
        if (
            m is not None
            and _wiring(n) == _wiring(m)
            and all(x in ta and x in tb and ta[x] == tb[x] for x in n.inputs)
        ):
            same.add(id(m))
            same.add(id(n))
    sa = [(_names(n), signature(n, ta), n) for n in nodes_a if id(n) not in same]
    sb = [(_names(n), signature(n, tb), n) for n in nodes_b if id(n) not in same]
    exact = Counter((names, sig) for names, sig, _ in sb)
    exact_a = Counter((names, sig) for names, sig, _ in sa)
    left_a = _take_unmatched(sa, exact, key=lambda e: (e[0], e[1]))
    left_b = _take_unmatched(sb, exact_a, key=lambda e: (e[0], e[1]))
    renamed = Counter(sig for _, sig, _ in left_b)
    renamed_a = Counter(sig for _, sig, _ in left_a)
    left_a = _take_unmatched(left_a, renamed, key=lambda e: e[1])
    left_b = _take_unmatched(left_b, renamed_a, key=lambda e: e[1])
    by_names: dict[tuple, list[str]] = defaultdict(list)
    for names, sig, _ in left_b:
        by_names[names].append(sig)
    for names, sig, node in left_a:
        if by_names.get(names):
            changes.append(Change(where, "changed", _outs(node), sig, by_names[names].pop(0)))
        else:
            changes.append(Change(where, "removed", _outs(node), a=sig))
    for names, sig, node in left_b:
        if sig in by_names.get(names, ()):
            by_names[names].remove(sig)
            changes.append(Change(where, "added", _outs(node), b=sig))


def _take_unmatched(entries: list, available: Counter, key: Any) -> list:
    """The entries left once each is matched, if it can be, against the multiset
    ``available`` of keys (consumed in order)."""
    available = Counter(available)
    out = []
    for e in entries:
        k = key(e)
        if available[k] > 0:
            available[k] -= 1
        else:
            out.append(e)
    return out


def _names(node: Node) -> tuple[str, ...]:
    return tuple(o.name for o in node.outputs)


def _outs(node: Node) -> str:
    return ", ".join(o.name for o in node.outputs) or node.op


def _loops(g: GraphIR) -> dict[str, list[Node]]:
    out: dict[str, list[Node]] = defaultdict(list)
    for n in g.nodes:
        if n.bodies:
            out[n.op].append(n)
    return out


def _wiring(node: Node) -> tuple:
    return (node.op, node.inputs, tuple((o.name, o.type) for o in node.outputs), node.attrs)


def _same_scope(ga: GraphIR, gb: GraphIR) -> bool:
    """Whether two graphs are the same, source locations and graph names aside."""
    if (
        ga.inputs != gb.inputs
        or ga.params != gb.params
        or ga.consts != gb.consts
        or ga.outputs != gb.outputs
        or len(ga.nodes) != len(gb.nodes)
    ):
        return False
    for na, nb in zip(ga.nodes, gb.nodes):
        if _wiring(na) != _wiring(nb) or na.bodies.keys() != nb.bodies.keys():
            return False
        for key, body in na.bodies.items():
            if not _same_scope(body, nb.bodies[key]):
                return False
    return True


def _first_wiring_difference(ga: GraphIR, gb: GraphIR) -> tuple[str, str, str] | None:
    """The first place where two graphs of equal signatures differ (source locations and
    nested bodies, compared on their own, aside), as (what, in A, in B)."""
    if [(v.name, v.type) for v in ga.inputs] != [(v.name, v.type) for v in gb.inputs]:
        return (
            "input order",
            ", ".join(v.name for v in ga.inputs),
            ", ".join(v.name for v in gb.inputs),
        )
    if [p.name for p in ga.params] != [p.name for p in gb.params]:
        return (
            "param order",
            ", ".join(p.name for p in ga.params),
            ", ".join(p.name for p in gb.params),
        )
    if ga.outputs != gb.outputs:
        return ("output order", ", ".join(ga.outputs), ", ".join(gb.outputs))
    if [(c.name, c.type, c.data) for c in ga.consts] != [
        (c.name, c.type, c.data) for c in gb.consts
    ]:
        return (
            "const names",
            ", ".join(c.name for c in ga.consts),
            ", ".join(c.name for c in gb.consts),
        )
    for k, (na, nb) in enumerate(zip(ga.nodes, gb.nodes)):
        if _wiring(na) != _wiring(nb):
            return (f"node {k}", _node_text(na), _node_text(nb))
    return None


def _node_text(node: Node) -> str:
    from rgraph.ir.printer import format_node

    return format_node(node.model_copy(update={"loc": None}))


# --- weights and state -----------------------------------------------------------------


def diff_weights(a: Mapping[str, np.ndarray], b: Mapping[str, np.ndarray]) -> list[WeightDelta]:
    """How far each tensor in both ``a`` and ``b`` with the same shape moved (in A's order)."""
    out = []
    for name, x in a.items():
        y = b.get(name)
        if y is None:
            continue
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            continue
        out.append(_delta(name, x, y))
    return out


def _delta(name: str, x: np.ndarray, y: np.ndarray) -> WeightDelta:
    equal = x.dtype == y.dtype and (
        x.tobytes() == y.tobytes() if x.size * x.itemsize < 1 << 20 else _bits_equal(x, y)
    )
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    d = y64 - x64
    with np.errstate(invalid="ignore", over="ignore"):
        max_abs = float(np.max(np.abs(d))) if d.size else 0.0
        diff_norm = float(np.linalg.norm(d.ravel()))
        norm_a = float(np.linalg.norm(x64.ravel()))
        norm_b = float(np.linalg.norm(y64.ravel()))
    if equal:
        max_abs, diff_norm = 0.0, 0.0  # (bit-identical NaNs count as no movement)
    rel = diff_norm / norm_a if norm_a != 0 else 0.0 if diff_norm == 0 else math.inf
    return WeightDelta(
        name=name,
        shape=tuple(int(s) for s in x.shape),
        dtype_a=x.dtype.name,
        dtype_b=y.dtype.name,
        equal=bool(equal),
        max_abs_diff=max_abs,
        rel_l2=rel,
        norm_a=norm_a,
        norm_b=norm_b,
    )


def _bits_equal(x: np.ndarray, y: np.ndarray) -> bool:
    x, y = np.ascontiguousarray(x), np.ascontiguousarray(y)
    return bool(np.array_equal(x.view(np.uint8), y.view(np.uint8)))


def _short(value: Any, width: int = 60) -> str:
    """A one-line form of a value: JSON when short, else its kind and size."""
    if isinstance(value, np.ndarray):
        return f"array {value.dtype.name}{list(value.shape)}"
    try:
        text = json.dumps(value, sort_keys=True, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    if len(text) <= width:
        return text
    if isinstance(value, (list, tuple)):
        return f"<list of {_plural(len(value), 'item')}>"
    if isinstance(value, Mapping):
        return f"<map of {_plural(len(value), 'key')}>"
    return text[: width - 3] + "..."


def _changed(where: str, key: str, x: Any, y: Any) -> Change:
    a, b = _short(x), _short(y)
    if a == b:  # long values that summarise alike
        a, b = a + " (contents differ)", b
    return Change(where, "changed", key, a, b)


def _same(x: Any, y: Any) -> bool:
    if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
        return (
            isinstance(x, np.ndarray)
            and isinstance(y, np.ndarray)
            and x.shape == y.shape
            and x.dtype == y.dtype
            and _bits_equal(x, y)
        )
    try:
        return json.dumps(x, sort_keys=True, default=str) == json.dumps(
            y, sort_keys=True, default=str
        )
    except (TypeError, ValueError):
        return bool(x == y)


def _diff_mapping(
    a: Mapping, b: Mapping, where: str, changes: list[Change], prefix: str = ""
) -> None:
    """Keys added, removed or changed; nested maps are compared key by key (``a.b``)."""
    for key, va in a.items():
        name = f"{prefix}{key}"
        if key not in b:
            changes.append(Change(where, "removed", name, a=_short(va)))
        elif isinstance(va, Mapping) and isinstance(b[key], Mapping):
            _diff_mapping(va, b[key], where, changes, name + ".")
        elif not _same(va, b[key]):
            changes.append(_changed(where, name, va, b[key]))
    for key, vb in b.items():
        if key not in a:
            changes.append(Change(where, "added", f"{prefix}{key}", b=_short(vb)))


def _diff_optimizer(a: Mapping | None, b: Mapping | None, changes: list[Change]) -> None:
    if a is None and b is None:
        return
    if a is None or b is None:
        kind = "added" if a is None else "removed"
        state = b if a is None else a
        text = f"{state.get('kind')} at step {state.get('step')}"  # type: ignore[union-attr]
        changes.append(
            Change(
                "optimizer",
                kind,
                "state",
                a=None if a is None else text,
                b=text if a is None else None,
            )
        )
        return
    for key in ("kind", "step"):
        if a.get(key) != b.get(key):
            changes.append(
                Change("optimizer", "changed", key, _short(a.get(key)), _short(b.get(key)))
            )
    _diff_mapping(a.get("hyper") or {}, b.get("hyper") or {}, "optimizer hyperparameters", changes)
    slots_a, slots_b = a.get("slots") or {}, b.get("slots") or {}
    for slot in sorted(set(slots_a) | set(slots_b)):
        where = f"optimizer slot {slot}"
        if slot not in slots_b:
            changes.append(
                Change("optimizer", "removed", f"slot {slot}", a=f"{len(slots_a[slot])} tensors")
            )
            continue
        if slot not in slots_a:
            changes.append(
                Change("optimizer", "added", f"slot {slot}", b=f"{len(slots_b[slot])} tensors")
            )
            continue
        sa, sb = slots_a[slot], slots_b[slot]
        for name, x in sa.items():
            if name not in sb:
                changes.append(Change(where, "removed", name, a=_short(x)))
                continue
            y = sb[name]
            if np.shape(x) != np.shape(y):
                changes.append(Change(where, "changed", name, _short(x), _short(y)))
                continue
            d = _delta(name, np.asarray(x), np.asarray(y))
            if not d.equal:
                changes.append(
                    Change(
                        where,
                        "changed",
                        name,
                        b=f"max abs diff {d.max_abs_diff:.4g}, rel L2 {d.rel_l2:.4g}",
                    )
                )
        for name, y in sb.items():
            if name not in sa:
                changes.append(Change(where, "added", name, b=_short(y)))


def _rng_state(rng: Any) -> Any:
    return None if rng is None else rng.bit_generator.state


def diff_models(a: Any, b: Any) -> ModelDiff:
    """Everything that differs between two :class:`~rgraph.Model` s (see the module doc)."""
    result = ModelDiff()
    result.structure, result.op_counts = diff_graphs(a.graph, b.graph)
    result.weights = diff_weights(a.params, b.params)
    state = result.state
    _diff_optimizer(a.optimizer, b.optimizer, state)
    ra, rb = _rng_state(a.rng), _rng_state(b.rng)
    if not _same(ra, rb):
        state.append(
            Change(
                "rng",
                "changed",
                "state",
                "absent" if ra is None else "a generator state",
                "absent" if rb is None else "another state",
            )
        )
    if a.step != b.step:
        state.append(Change("step", "changed", "step", _short(a.step), _short(b.step)))
    _diff_mapping(a.metadata or {}, b.metadata or {}, "metadata", state)
    result.summary_a, result.summary_b = _summary(a), _summary(b)
    files = [(getattr(m, "producer", None), getattr(m, "format_version", None)) for m in (a, b)]
    if files[0] != files[1]:
        result.notes.append(
            f"written by {files[0][0]} (format {_version(a)}) and {files[1][0]}"
            f" (format {_version(b)}): not counted as a difference"
        )
    return result


def _version(m: Any) -> str:
    v = getattr(m, "format_version", None)
    return ".".join(map(str, v)) if v else "?"


def _summary(m: Any) -> str:
    g = m.graph
    count = sum(_histogram(g).values())
    size = sum(int(np.asarray(p).size) for p in m.params.values())
    return (
        f"graph '{g.name}', {_plural(count, 'node')}, {_plural(len(g.params), 'parameter')}"
        f" ({size:,} values)" + (f", step {m.step}" if m.step is not None else "")
    )
