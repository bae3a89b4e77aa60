"""Looking at models: a summary, the IR at any compiler stage, and a list of problems.

The library behind ``rgraph inspect``, ``rgraph show`` and ``rgraph validate``; each
function takes a loaded :class:`~rgraph.io.format.Model`, a :class:`~rgraph.ir.GraphIR`
or a builder :class:`~rgraph.Graph`, so graphs built in Python get the same views as
model files.

>>> import rgraph as rg
>>> g = rg.Graph("affine"); x = g.input("x", ("B", 3)); W = g.param("W", (4, 3))
>>> _ = g.output(g.matmul(x, W, transpose_b=True), name="y")
>>> s = summary(g, dims={"B": 32})
>>> str(s.cost["forward"].flops), s.to_json()["cost"]["forward"]["flops"]["value"]
('24*B', 768)
>>> validate(g)
[]
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rgraph.errors import FormatError, GraphError, RgraphError
from rgraph.exec.program import Program
from rgraph.exec.program import compile as compile_graph
from rgraph.io.format import READER_VERSION, Model, load
from rgraph.ir.cost import Cost, Poly, graph_cost, node_costs
from rgraph.ir.graph import GraphIR
from rgraph.ir.types import TensorType
from rgraph.ir.verify import problems

LOSS = "loss"  # the output a backward is generated for

# --- what is being looked at -------------------------------------------------------------


def _parts(source: Any, params: Mapping[str, np.ndarray] | None) -> tuple[GraphIR, Any, Any]:
    """The graph, the parameter store and the Model (or None) of a source."""
    if isinstance(source, Model):
        return source.graph, source.params if params is None else params, source
    graph = getattr(source, "ir", source)  # a builder Graph
    if not isinstance(graph, GraphIR):
        raise TypeError(f"expected a Model, a GraphIR or a Graph, got {type(source).__name__}")
    return graph, params, None


def loss_output(graph: GraphIR) -> str | None:
    """The output the backward is generated for: a float scalar named ``loss``, else None."""
    if LOSS not in graph.outputs:
        return None
    t = graph.types().get(LOSS)
    return LOSS if t is not None and t.shape == () and t.is_float else None


def _require_loss(graph: GraphIR) -> str:
    loss = loss_output(graph)
    if loss is None:
        outs = ", ".join(f"{n}: {graph.types().get(n, '?')}" for n in graph.outputs) or "none"
        raise GraphError(
            f"graph '{graph.name}' has no scalar float output named '{LOSS}' to generate a"
            f" backward for (its outputs: {outs}); mark one with g.output(value, name='loss')"
        )
    return loss


def training_program(graph: GraphIR) -> Program:
    """The compiled program with the generated backward of the ``loss`` output."""
    return compile_graph(graph, loss=_require_loss(graph))


# --- show --------------------------------------------------------------------------------


def stage(source: Any, *, backward: bool = False, after: str | None = None) -> GraphIR:
    """The IR to show: the graph as given; with ``backward`` the compiled program with the
    generated backward of its ``loss`` output; with ``after`` the IR that compiler pass
    produced (a key of :attr:`rgraph.Program.stages`).

    Raises GraphError when ``backward`` is asked of a graph without a scalar ``loss``
    output, RgraphError for an unknown pass (naming the known ones).
    """
    graph, _, _ = _parts(source, None)
    if not backward and after is None:
        return graph
    program = training_program(graph) if backward else compile_graph(graph)
    if after is None:
        return program.ir
    if after not in program.stages:
        known = ", ".join(program.stages)
        hint = "" if backward else "; 'autodiff' runs with --backward (backward=True)"
        raise RgraphError(f"unknown pass {after!r}; the passes of this program: {known}{hint}")
    return program.stages[after]


# --- validate ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """One thing wrong: the error class's name and its message."""

    kind: str
    message: str

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "message": self.message}


def validate(source: Any, params: Mapping[str, np.ndarray] | None = None) -> list[Problem]:
    """Every problem of a graph (the verifier's), and of its parameter store if given:
    missing parameters and ones of the wrong dtype or shape. Empty when all is well."""
    graph, params, _ = _parts(source, params)
    found = [_problem(e) for e in problems(graph)]
    if params is not None:
        for p in graph.params:
            if p.name not in params:
                found.append(Problem("FeedError", f"no value for parameter '{p.name}'"))
                continue
            arr = np.asarray(params[p.name])
            if arr.dtype.name != p.type.dtype or tuple(arr.shape) != tuple(p.type.shape):
                found.append(
                    Problem(
                        "FeedError",
                        f"parameter '{p.name}' is {arr.dtype}{list(arr.shape)},"
                        f" the graph declares {p.type}",
                    )
                )
    return found


def validate_file(path: str | os.PathLike) -> list[Problem]:
    """Every problem of a model file: each problem of its graph, and the first problem of
    the file itself (its layout, header, tensors; reading stops there). Empty when the
    file loads. Graph problems read as :func:`rgraph.load` words them (``header.graph:``)."""
    found: list[GraphError] = []
    try:
        load(path, graph_problems=found)
        file_problem = None
    except FormatError as e:
        file_problem = _problem(e)
    out = [Problem(type(e).__name__, f"header.graph: {e}") for e in found]
    return out + ([file_problem] if file_problem else [])


def _problem(e: Exception) -> Problem:
    return Problem(type(e).__name__, str(e))


# --- inspect -----------------------------------------------------------------------------


@dataclass(frozen=True)
class ParamStats:
    """One parameter: its type, size and (when its values are known) value statistics.

    ``min``, ``max``, ``mean`` and ``std`` are over the finite values; ``nonfinite``
    counts NaNs and infinities. All four are None when the values are unknown or there
    are no finite ones.
    """

    name: str
    type: TensorType
    count: int
    nbytes: int
    min: float | None = None
    max: float | None = None
    mean: float | None = None
    std: float | None = None
    nonfinite: int | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.type.dtype,
            "shape": list(self.type.shape),
            "count": self.count,
            "bytes": self.nbytes,
            "min": self.min,
            "max": self.max,
            "mean": self.mean,
            "std": self.std,
            "nonfinite": self.nonfinite,
        }


def param_stats(name: str, t: TensorType, value: Any = None) -> ParamStats:
    """Statistics of one parameter of declared type ``t`` (``value`` None: unknown)."""
    count = math.prod(t.shape)  # parameters have concrete shapes
    nbytes = count * t.np_dtype.itemsize
    if value is None:
        return ParamStats(name, t, count, nbytes)
    arr = np.asarray(value)
    nonfinite = 0
    values = arr
    if arr.dtype.kind in "fc":
        finite = np.isfinite(arr)
        nonfinite = arr.size - int(np.count_nonzero(finite))
        if nonfinite:
            values = arr[finite]
    if values.size == 0:
        return ParamStats(name, t, arr.size, arr.nbytes, nonfinite=nonfinite)
    values = values.astype(np.float64, copy=False)
    return ParamStats(
        name,
        t,
        arr.size,
        arr.nbytes,
        min=float(values.min()),
        max=float(values.max()),
        mean=float(values.mean()),
        std=float(values.std()),
        nonfinite=nonfinite,
    )


@dataclass
class Summary:
    """What ``rgraph inspect`` reports; ``str()`` is the text, :meth:`to_json` the JSON.

    ``ops`` maps each op to its number of nodes in the graph and in loop bodies (at any
    depth); ``nodes`` and ``cost`` have a ``forward`` entry (the graph as given) and,
    when a backward was generated, a ``backward`` entry (the nodes the compiler
    generated for the gradients of ``loss``, after its optimisations).
    """

    name: str
    inputs: list[tuple[str, TensorType]]
    outputs: list[tuple[str, TensorType]]
    params: list[ParamStats]
    ops: dict[str, tuple[int, int]]
    nodes: dict[str, tuple[int, int]]
    cost: dict[str, Cost]
    dims: list[str]
    binding: dict[str, int] = field(default_factory=dict)
    format_version: tuple[int, int] | None = None
    min_reader_version: tuple[int, int] | None = None
    producer: str | None = None
    step: int | None = None
    rng: bool = False
    optimizer: dict[str, Any] | None = None
    metadata_keys: list[str] = field(default_factory=list)
    reader_version: tuple[int, int] = READER_VERSION
    path: str | None = None  # of the model file, when there is one

    def value(self, p: Poly) -> int | None:
        """``p`` evaluated at :attr:`binding`, or None if a dim it needs is not bound."""
        if any(n not in self.binding for n in p.names):
            return None
        return p.evaluate(self.binding)

    def to_json(self) -> dict[str, Any]:
        """Plain data (``rgraph inspect --json``), with the keys ``path``, ``name``,
        ``format_version``, ``min_reader_version``, ``reader_version`` ("1.0", or None for
        a graph built in Python), ``producer``, ``step``, ``rng`` (saved or not),
        ``optimizer`` (``kind``, ``step``, ``slots``, ``hyper``; or None),
        ``metadata_keys``, ``inputs`` and ``outputs`` (``name``, ``dtype``, ``shape``),
        ``params`` (``name``, ``dtype``, ``shape``, ``count``, ``bytes``, ``min``,
        ``max``, ``mean``, ``std``, ``nonfinite``), ``param_count``, ``param_bytes``,
        ``ops`` (op -> ``graph``, ``bodies``), ``nodes`` (``forward``, and ``backward``
        when generated -> ``graph``, ``bodies``), ``dims``, ``binding`` and ``cost``
        (``forward``/``backward`` -> ``flops``/``bytes`` -> ``formula``, ``terms``,
        ``value``, the latter None unless ``binding`` sizes every dim it needs).
        """

        def poly(p: Poly) -> dict[str, Any]:
            return {"formula": str(p), "terms": p.to_json(), "value": self.value(p)}

        def version(v: tuple[int, int] | None) -> str | None:
            return None if v is None else f"{v[0]}.{v[1]}"

        return {
            "path": self.path,
            "name": self.name,
            "format_version": version(self.format_version),
            "min_reader_version": version(self.min_reader_version),
            "reader_version": version(self.reader_version),
            "producer": self.producer,
            "step": self.step,
            "rng": self.rng,
            "optimizer": self.optimizer,
            "metadata_keys": list(self.metadata_keys),
            "inputs": [_var_json(n, t) for n, t in self.inputs],
            "outputs": [_var_json(n, t) for n, t in self.outputs],
            "params": [p.to_json() for p in self.params],
            "param_count": sum(p.count for p in self.params),
            "param_bytes": sum(p.nbytes for p in self.params),
            "ops": {op: {"graph": g, "bodies": b} for op, (g, b) in self.ops.items()},
            "nodes": {k: {"graph": g, "bodies": b} for k, (g, b) in self.nodes.items()},
            "dims": list(self.dims),
            "binding": dict(self.binding),
            "cost": {
                k: {"flops": poly(c.flops), "bytes": poly(c.bytes)} for k, c in self.cost.items()
            },
        }

    def __str__(self) -> str:
        return format_summary(self)


def _var_json(name: str, t: TensorType) -> dict[str, Any]:
    return {"name": name, "dtype": t.dtype, "shape": list(t.shape)}


def summary(
    source: Any,
    params: Mapping[str, np.ndarray] | None = None,
    *,
    dims: Mapping[str, int] | None = None,
    backward: bool = False,
) -> Summary:
    """Summarise a model or graph; ``dims`` sizes symbolic dims to evaluate the costs.

    With ``backward`` the backward of the ``loss`` output is generated (compiled) and its
    nodes and cost are reported too (GraphError if there is no scalar ``loss`` output).
    Parameter statistics need values: a Model's own, or ``params``.
    """
    graph, params, model = _parts(source, params)
    types = graph.types()
    stats = [
        param_stats(p.name, p.type, None if params is None else params.get(p.name))
        for p in graph.params
    ]
    ops: dict[str, list[int]] = {}
    for depth, node in _walk(graph):
        ops.setdefault(node.op, [0, 0])[depth > 0] += 1
    nodes = {"forward": _count(graph.nodes)}
    cost = {"forward": graph_cost(graph)}
    if backward:
        nodes["backward"], cost["backward"] = _backward(graph)
    names = {d for v in graph.inputs for d in _dim_names(v.type)}
    names.update(n for c in cost.values() for p in (c.flops, c.bytes) for n in p.names)
    names.update(d for o in graph.outputs if o in types for d in _dim_names(types[o]))
    s = Summary(
        name=graph.name,
        inputs=[(v.name, v.type) for v in graph.inputs],
        outputs=[(o, types[o]) for o in graph.outputs if o in types],
        params=stats,
        ops={op: (g, b) for op, (g, b) in sorted(ops.items())},
        nodes=nodes,
        cost=cost,
        dims=sorted(names),
        binding=dict(dims or {}),
    )
    if model is not None:
        s.format_version = model.format_version
        s.min_reader_version = model.min_reader_version
        s.producer = model.producer
        s.step = model.step
        s.rng = model.rng is not None
        s.metadata_keys = list(model.metadata)
        if model.optimizer is not None:
            o = model.optimizer
            s.optimizer = {
                "kind": o["kind"],
                "step": o["step"],
                "slots": list(o["slots"]),
                "hyper": {k: _finite_or_str(v) for k, v in o["hyper"].items()},
            }
    return s


def _finite_or_str(v: Any) -> Any:
    """JSON has no infinity: ``clip_norm=inf`` becomes ``"inf"``."""
    return str(v) if isinstance(v, float) and not math.isfinite(v) else v


def _dim_names(t: TensorType) -> Iterator[str]:
    for d in t.shape:
        if isinstance(d, str):
            yield from Poly.of_dim(d).names


def _walk(graph: GraphIR) -> Iterator[tuple[int, Any]]:
    """Every node with its loop depth (0: the graph itself), iteratively."""
    todo = [(graph, 0)]
    while todo:
        g, depth = todo.pop()
        for node in g.nodes:
            yield depth, node
            todo.extend((body, depth + 1) for body in node.bodies.values())


def _count(nodes: Any) -> tuple[int, int]:
    """Nodes, and the nodes in their loop bodies at any depth."""
    inner = 0
    for node in nodes:
        for body in node.bodies.values():
            inner += sum(1 for _ in _walk(body))
    return len(nodes), inner


def _backward(graph: GraphIR) -> tuple[tuple[int, int], Cost]:
    """Node counts and cost of the generated backward in the compiled training program:
    the nodes whose outputs the forward program (the stage before autodiff) lacks."""
    program = training_program(graph)
    names = list(program.stages)
    forward = program.stages[names[names.index("autodiff") - 1]].types()
    rows = []  # a map's nodes in its place: it runs forward and backward nodes together
    for node, c in node_costs(program.ir):
        rows += node_costs(node.bodies["body"]) if node.op == "map" else [(node, c)]
    generated = [(n, c) for n, c in rows if not any(o.name in forward for o in n.outputs)]
    flops, size = Poly(), Poly()
    for _, c in generated:
        flops, size = flops + c.flops, size + c.bytes
    return _count([n for n, _ in generated]), Cost(flops, size)


# --- text ---------------------------------------------------------------------------------


def format_summary(s: Summary) -> str:
    """The text form of a summary: aligned sections, costs as formulas of the dims."""

    def version(v: tuple[int, int] | None) -> str:
        return "-" if v is None else f"{v[0]}.{v[1]}"

    reader = version(s.reader_version)
    if s.format_version is None:
        fmt = f"- (a graph built in Python; this reader reads format {reader})"
    else:
        fmt = (
            f"{version(s.format_version)} (needs a reader of {version(s.min_reader_version)};"
            f" this one reads {reader})"
        )
    head = [("file", s.path)] if s.path else []
    head += [
        ("graph", s.name),
        ("format", fmt),
        ("producer", s.producer or "-"),
        ("step", "-" if s.step is None else str(s.step)),
    ]
    if s.optimizer is None:
        head.append(("optimizer", "none"))
    else:
        o = s.optimizer
        slots = ", ".join(o["slots"]) or "none"
        head.append(("optimizer", f"{o['kind']}, step {o['step']} (slots: {slots})"))
    head.append(("rng", "saved" if s.rng else "none"))
    head.append(("metadata", ", ".join(s.metadata_keys) or "none"))
    dims = ", ".join(s.dims) or "none"
    if s.binding:
        dims += " (" + ", ".join(f"{k}={v}" for k, v in s.binding.items()) + ")"
    head.append(("dims", dims))
    lines = _columns([[k, v] for k, v in head], "<<")

    lines += ["", "inputs"]
    lines += _indent(_columns([[n, str(t)] for n, t in s.inputs], "<<") or ["none"])
    lines += ["", "outputs"]
    lines += _indent(_columns([[n, str(t)] for n, t in s.outputs], "<<") or ["none"])

    count = sum(p.count for p in s.params)
    size = sum(p.nbytes for p in s.params)
    lines += ["", f"parameters ({len(s.params)} tensors, {count:,} values, {_bytes(size)})"]
    if s.params:
        rows = [["name", "shape", "dtype", "count", "bytes", "min", "max", "mean", "std"]]
        rows[0].append("non-finite")
        for p in s.params:
            shape = "[" + ",".join(str(d) for d in p.type.shape) + "]"
            stats = [_num(x) for x in (p.min, p.max, p.mean, p.std)]
            nonfinite = "-" if p.nonfinite is None else str(p.nonfinite)
            rows.append([p.name, shape, p.type.dtype, f"{p.count:,}", f"{p.nbytes:,}"])
            rows[-1] += [*stats, nonfinite]
        lines += _indent(_columns(rows, "<<<>>>>>>>"))

    total = sum(g + b for g, b in s.ops.values())
    inner = sum(b for _, b in s.ops.values())
    lines += ["", f"ops ({len(s.ops)} kinds, {total:,} nodes, {inner:,} of them in loop bodies)"]
    if s.ops:
        rows = [["op", "graph", "bodies"]]
        rows += [[op, f"{g:,}", f"{b:,}"] for op, (g, b) in s.ops.items()]
        lines += _indent(_columns(rows, "<>>"))

    lines += ["", "nodes"]
    rows = [[k, f"{g:,}", f"(+{b:,} in loop bodies)"] for k, (g, b) in s.nodes.items()]
    if "backward" not in s.nodes:
        rows.append(["backward", "-", "(not generated: use --backward)"])
    lines += _indent(_columns(rows, "<><"))

    where = ", ".join(f"{k}={v}" for k, v in s.binding.items())
    lines += ["", "cost per run (estimated" + (f"; at {where})" if where else ")")]
    rows = []
    for k, c in s.cost.items():
        for what, p in (("FLOPs", c.flops), ("bytes", c.bytes)):
            v = s.value(p)
            rows.append([f"{k} {what}", str(p), "" if v is None else f"= {v:,}"])
    lines += _indent(_columns(rows, "<<<"))
    unbound = [n for n in s.dims if n not in s.binding]
    if unbound:
        example = ",".join(f"{n}=..." for n in unbound)
        lines.append(f"  (give sizes with --dims {example} to evaluate)")
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.4g}"


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} bytes"


def _indent(lines: list[str]) -> list[str]:
    return ["  " + line for line in lines]


def _columns(rows: list[list[str]], align: str) -> list[str]:
    """Rows of cells as aligned lines; ``align`` has one ``<`` or ``>`` per column."""
    if not rows:
        return []
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    out = []
    for r in rows:
        cells = [c.ljust(w) if a == "<" else c.rjust(w) for c, w, a in zip(r, widths, align)]
        out.append("  ".join(cells).rstrip())
    return out
