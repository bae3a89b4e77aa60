"""Graphviz DOT for a graph: ops as boxes, values on the edges with their types.

Parameters are filled boxes, inputs and outputs filled ellipses (outputs doubly outlined),
constants notes, ops rounded boxes. A loop body (a ``scan``'s ``body``) is drawn once, as
a ``subgraph cluster_...`` with its own nodes whatever the number of steps (a ``map``'s
body likewise): edges from the enclosing graph enter the cluster at the body's inputs
(carries, per-step slices and captured values), the body's results leave it for the loop
node, and dashed edges show each carry going round to the next step. With ``forward=``
(the graph before autodiff), nodes the backward pass added are tinted.

Node ids are generated (``n0``, ``n1``, ...), so value names never need to be valid DOT
ids; names and labels are quoted and escaped. The text is built as a list of lines and
joined once: linear in the size of the graph.

>>> import rgraph as rg
>>> g = rg.Graph("affine")
>>> x = g.input("x", ("B", 3)); W = g.param("W", (2, 3))
>>> _ = g.output(g.tanh(x @ W.T), name="y")
>>> text = to_dot(g)
>>> text.splitlines()[0]
'digraph "affine" {'
>>> '[label="f64[B,2]"' in text
True
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

from rgraph.ir.graph import Const, GraphIR, Node
from rgraph.ir.printer import format_init

# Styles, one place to change the look.
STYLE_INPUT = 'shape=ellipse, style=filled, fillcolor="#cfe2ff"'
STYLE_OUTPUT = 'shape=ellipse, style="filled,bold", peripheries=2, fillcolor="#d1f2d1"'
STYLE_PARAM = 'shape=box, style=filled, fillcolor="#ffe08a"'
STYLE_CONST = 'shape=note, style=filled, fillcolor="#eeeeee", fontsize=8'
STYLE_OP = 'shape=box, style="rounded,filled", fillcolor="#ffffff"'
STYLE_BACKWARD_OP = 'shape=box, style="rounded,filled", fillcolor="#f9d6d5"'
STYLE_BODY_INPUT = 'shape=ellipse, style="dashed,filled", fillcolor="#eef5ff"'
STYLE_CLUSTER = 'style="rounded,filled", color="#4a78c2", fillcolor="#f6f9ff"'
STYLE_CARRY_EDGE = 'style=dashed, color="#4a78c2", constraint=false'

MAX_ATTRS_SHOWN = 40  # characters of attributes in an op's label
MAX_NAMES_SHOWN = 4  # output names in an op's label
RENDER_FORMATS = ("svg", "png", "pdf")
INSTALL_HINT = (
    "the Graphviz 'dot' program is not installed: install it (e.g. `apt-get install graphviz`,"
    " `brew install graphviz`) or write the DOT text with -o FILE.dot"
)


def quote(text: str) -> str:
    """``text`` as a DOT double-quoted string (backslashes, quotes and newlines escaped).

    >>> quote('W.grad "x"')
    '"W.grad \\\\"x\\\\""'
    """
    return '"' + _escape(text) + '"'


def _escape(text: str) -> str:
    if "\\" not in text and '"' not in text and "\n" not in text:
        return text
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _label(*lines: str) -> str:
    """A quoted multi-line label: each line escaped, joined with DOT's ``\\n``."""
    return '"' + "\\n".join(_escape(line) for line in lines) + '"'


def to_dot(graph, *, forward: GraphIR | None = None, title: str | None = None) -> str:
    """The DOT text of ``graph`` (a ``GraphIR``, a builder ``Graph`` or a ``Model``).

    ``forward``: the same graph before autodiff; nodes whose outputs it does not define
    are drawn as backward nodes. ``title``: a caption (default: the graph's name and size).
    """
    ir = _ir(graph)
    known = set(forward.types()) if forward is not None else None
    w = _Writer(known)
    count, loops = _count(ir)
    caption = title or (
        f"{ir.name}: {count} node{'s' * (count != 1)}"
        + (f", {loops} loop{'s' * (loops != 1)}" if loops else "")
    )
    w.lines += [
        f"digraph {quote(ir.name)} {{",
        f"  graph [label={quote(caption)}, labelloc=t, fontname=Helvetica, fontsize=12,"
        " rankdir=TB];",
        "  node [fontname=Helvetica, fontsize=10];",
        '  edge [fontname=Helvetica, fontsize=8, color="#555555"];',
    ]
    w.top(ir)
    w.lines += w.edges
    w.lines.append("}")
    return "\n".join(w.lines) + "\n"


def _ir(graph) -> GraphIR:
    """The IR of a ``GraphIR``, a builder ``Graph`` or a loaded ``Model``."""
    if isinstance(graph, GraphIR):
        return graph
    return graph.ir if hasattr(graph, "ir") else graph.graph


def _count(ir: GraphIR) -> tuple[int, int]:
    """Nodes (bodies included) and loops of ``ir``, iteratively."""
    nodes = loops = 0
    stack = [ir]
    while stack:
        g = stack.pop()
        nodes += len(g.nodes)
        for n in g.nodes:
            if n.bodies:
                loops += 1
                stack.extend(n.bodies.values())
    return nodes, loops


class _Scope:
    """One graph's drawing state: the DOT id drawing each value, and its edge label."""

    __slots__ = ("ids", "labels", "types")

    def __init__(self, types: dict):
        self.ids: dict[str, str] = {}
        self.types = types
        self.labels: dict[str, str] = {}  # values of multi-output nodes: "t12: f64[B,3]"

    def label(self, name: str) -> str:
        return self.labels.get(name) or str(self.types[name])


class _Writer:
    """Accumulates node lines (per graph scope, clusters nested) and all edges.

    Edges are written at the top level, after every node: an edge written inside a
    cluster would pull the outer node at its tail into that cluster.
    """

    def __init__(self, forward_names: set[str] | None):
        self.lines: list[str] = []
        self.edges: list[str] = []
        self.next_id = 0
        self.forward_names = forward_names

    def new_id(self) -> str:
        self.next_id += 1
        return f"n{self.next_id}"

    def edge(self, src: str, dst: str, label: str, extra: str = "") -> None:
        attrs = f"label={quote(label)}" + (f", {extra}" if extra else "")
        self.edges.append(f"  {src} -> {dst} [{attrs}];")

    def top(self, ir: GraphIR) -> None:
        scope = _Scope(ir.types())
        add = self.lines.append
        for v in ir.inputs:
            scope.ids[v.name] = i = self.new_id()
            add(f"  {i} [{STYLE_INPUT}, label={_label(v.name, str(v.type))}];")
        self.values(ir, scope, "  ")
        self.nodes(ir, scope, "  ", self.forward_names)
        for name in ir.outputs:
            o = self.new_id()
            add(f"  {o} [{STYLE_OUTPUT}, label={_label(name, str(scope.types[name]))}];")
            if name in scope.ids:
                self.edge(scope.ids[name], o, scope.label(name))

    def values(self, ir: GraphIR, scope: _Scope, indent: str) -> None:
        add = self.lines.append
        for p in ir.params:
            scope.ids[p.name] = i = self.new_id()
            label = _label(p.name, str(p.type), "~ " + format_init(p.init))
            add(f"{indent}{i} [{STYLE_PARAM}, label={label}];")
        for c in ir.consts:
            scope.ids[c.name] = i = self.new_id()
            add(f"{indent}{i} [{STYLE_CONST}, label={_label(c.name + ' = ' + _const(c))}];")

    def nodes(self, ir: GraphIR, scope: _Scope, indent: str, forward: set[str] | None) -> None:
        add = self.lines.append
        ids = scope.ids
        for node in ir.nodes:
            i = self.new_id()
            style = STYLE_OP
            if forward is not None and not any(o.name in forward for o in node.outputs):
                style = STYLE_BACKWARD_OP
            add(f"{indent}{i} [{style}, label={_label(*_op_lines(node))}];")
            if node.bodies:
                for key, body in node.bodies.items():
                    self.cluster(node, key, body, scope, i, indent)
            else:
                for name in node.inputs:
                    if name in ids:
                        self.edge(ids[name], i, scope.label(name))
            multi = len(node.outputs) > 1
            for o in node.outputs:
                ids[o.name] = i
                if multi:
                    scope.labels[o.name] = f"{o.name}: {o.type}"

    def cluster(
        self, node: Node, key: str, body: GraphIR, outer: _Scope, loop_id: str, indent: str
    ) -> None:
        add = self.lines.append
        nc = int(node.attrs.get("num_carry") or 0)
        nx = int(node.attrs.get("num_xs") or 0)
        roles = _roles(len(body.inputs), nc, nx)
        inner = indent + "  "
        caption = (
            f"{node.op} {key} '{body.name}': {nc} carr{'ies' if nc != 1 else 'y'}, {nx} xs,"
            f" {len(body.inputs) - nc - nx} captured; {_steps(node, outer.types, nc, nx)}"
        )
        add(f"{indent}subgraph cluster_{self.new_id()} {{")
        add(f"{inner}graph [label={quote(caption)}, {STYLE_CLUSTER}];")
        scope = _Scope(body.types())
        positional = len(node.inputs) == len(body.inputs)
        input_ids = []
        for k, v in enumerate(body.inputs):
            scope.ids[v.name] = i = self.new_id()
            input_ids.append(i)
            label = _label(v.name, roles[k], str(v.type))
            add(f"{inner}{i} [{STYLE_BODY_INPUT}, label={label}];")
            if positional and node.inputs[k] in outer.ids:  # into the cluster
                self.edge(outer.ids[node.inputs[k]], i, outer.label(node.inputs[k]))
        if not positional:  # (malformed as a loop): draw the inputs into the loop node
            for name in node.inputs:
                if name in outer.ids:
                    self.edge(outer.ids[name], loop_id, outer.label(name))
        self.values(body, scope, inner)
        self.nodes(body, scope, inner, None)
        add(f"{indent}}}")
        for k, name in enumerate(body.outputs):
            if name not in scope.ids:
                continue
            kind = "carry" if k < nc else "y_t"
            self.edge(scope.ids[name], loop_id, f"{kind} {name}: {scope.types[name]}")
            if k < nc and k < len(input_ids):
                self.edge(scope.ids[name], input_ids[k], "next step", STYLE_CARRY_EDGE)


def _roles(n: int, nc: int, nx: int) -> list[str]:
    return ["(carry)" if k < nc else "(x_t)" if k < nc + nx else "(captured)" for k in range(n)]


def _steps(node: Node, types: dict, nc: int, nx: int) -> str:
    length = node.attrs.get("length")
    if length is None and nx and nc < len(node.inputs) and node.inputs[nc] in types:
        shape = types[node.inputs[nc]].shape
        length = shape[0] if shape else None
    order = "reverse, " if node.attrs.get("reverse") else ""
    return f"{order}{length} steps" if length is not None else f"{order}steps"


def _op_lines(node: Node) -> list[str]:
    lines = [node.op]
    if node.attrs:
        attrs = ", ".join(
            f"{k}={json.dumps(v, separators=(',', ':'))}"
            for k, v in node.attrs.items()
            if k not in node.bodies
        )
        if len(attrs) > MAX_ATTRS_SHOWN:
            attrs = attrs[: MAX_ATTRS_SHOWN - 3] + "..."
        if attrs:
            lines.append(attrs)
    if len(node.outputs) == 1:
        lines.append(node.outputs[0].name)
        return lines
    names = [o.name for o in node.outputs]
    if len(names) > MAX_NAMES_SHOWN:
        names = [*names[: MAX_NAMES_SHOWN - 1], f"... ({len(names)} outputs)"]
    lines.append(", ".join(names))
    return lines


def _const(c: Const) -> str:
    if not c.type.shape:
        return json.dumps(c.data[0]) if c.data else "?"
    return f"{c.type} ({len(c.data)} values)"


# --- the backward graph and rendering ---------------------------------------------------


def backward_dot(graph, loss: str = "loss") -> str:
    """DOT of the compiled program with the generated backward of the scalar ``loss``.

    Raises :class:`~rgraph.errors.GraphError` when ``graph`` has no scalar float output
    named ``loss``.
    """
    from rgraph.errors import GraphError
    from rgraph.exec.program import compile

    ir = _ir(graph)
    types = ir.types()
    if loss not in ir.outputs:
        outs = ", ".join(ir.outputs) or "none"
        raise GraphError(
            f"graph '{ir.name}' has no output named {loss!r} to differentiate"
            f" (outputs: {outs}); name the scalar loss with --loss"
        )
    t = types[loss]
    if t.shape or not t.is_float:
        raise GraphError(f"output {loss!r} is {t}, not a float scalar: it cannot be a loss")
    program = compile(ir, loss=loss)
    forward = program.stages["prune"]
    return to_dot(
        program.ir,
        forward=forward,
        title=f"{ir.name}: forward and generated backward of {loss!r}"
        f" ({_count(program.ir)[0]} nodes; backward tinted)",
    )


def render(text: str, path: str | os.PathLike, fmt: str | None = None) -> None:
    """Write ``text`` to ``path``: as is for ``.dot``/``.gv``, else rendered by Graphviz.

    Raises ``FileNotFoundError`` (with how to install it) when ``dot`` is not installed,
    ``RuntimeError`` when it fails, ``ValueError`` for an unknown format.
    """
    path = os.fspath(path)
    fmt = (fmt or os.path.splitext(path)[1].lstrip(".")).lower()
    if fmt in ("dot", "gv"):
        with open(path, "w", encoding="utf-8") as f:
            f.write(text)
        return
    if fmt not in RENDER_FORMATS:
        known = ", ".join(("dot", "gv", *RENDER_FORMATS))
        raise ValueError(f"cannot write {path!r}: unknown format {fmt!r}; known: {known}")
    program = shutil.which("dot")
    if program is None:
        raise FileNotFoundError(INSTALL_HINT)
    done = subprocess.run(
        [program, f"-T{fmt}", "-o", path], input=text.encode(), capture_output=True
    )
    if done.returncode != 0:
        message = " ".join(done.stderr.decode(errors="replace").split())
        raise RuntimeError(f"dot failed (status {done.returncode}): {message}")
