"""The text form of the IR (grammar in ``docs/ir.md``): one definition per line.

graph affine {
  input x: f64[5,1]
  param W: f64[3,5] ~ uniform(low=-0.08, high=0.08)
  t0: f64[3,1] = matmul(W, x)  # affine.py:9
  return t0
}
"""

from __future__ import annotations

import json
import os

from rgraph.ir.graph import Const, GraphIR, Init, Node

_INIT_ARGS = {
    "constant": ("value",),
    "uniform": ("low", "high"),
    "normal": ("mean", "std"),
}
MAX_CONST_SHOWN = 8


def format_graph(graph: GraphIR, indent: str = "") -> str:
    """The text form of ``graph``; nested bodies are indented under their node."""
    lines = [f"{indent}graph {graph.name} {{"]
    inner = indent + "  "
    lines += [f"{inner}input {v.name}: {v.type}" for v in graph.inputs]
    lines += [f"{inner}param {p.name}: {p.type} ~ {format_init(p.init)}" for p in graph.params]
    lines += [f"{inner}const {c.name}: {c.type} = {_format_data(c)}" for c in graph.consts]
    for node in graph.nodes:
        lines.append(inner + format_node(node))
        for key, body in node.bodies.items():
            lines.append(f"{inner}  {key}:")
            lines.append(format_graph(body, inner + "    "))
    lines.append(f"{inner}return {', '.join(graph.outputs)}".rstrip())
    lines.append(f"{indent}}}")
    return "\n".join(lines)


def format_node(node: Node) -> str:
    outs = ", ".join(f"{o.name}: {o.type}" for o in node.outputs)
    attrs = ""
    if node.attrs:
        attrs = "[" + ", ".join(f"{k}={_json(v)}" for k, v in node.attrs.items()) + "]"
    loc = f"  # {os.path.basename(node.loc.file)}:{node.loc.line}" if node.loc else ""
    return f"{outs} = {node.op}{attrs}({', '.join(node.inputs)}){loc}"


def format_init(init: Init) -> str:
    args = ", ".join(f"{k}={_json(getattr(init, k))}" for k in _INIT_ARGS.get(init.kind, ()))
    return f"{init.kind}({args})" if args else init.kind


def _format_data(c: Const) -> str:
    if not c.type.shape:
        return _json(c.data[0])
    if len(c.data) <= MAX_CONST_SHOWN:
        return _json(c.data)
    return f"<{len(c.data)} values>"


def _json(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), allow_nan=True)
