"""``rgraph dot``, ``rgraph diff`` and ``rgraph gradcheck``: tools over model files.

The work is done by :mod:`rgraph.dot`, :mod:`rgraph.diff` and :func:`rgraph.gradcheck`;
this module turns options into calls and results into text or JSON, and draws the random
inputs a gradient check needs from the graph alone (:func:`random_feeds`).

Exit status: 0 success (identical models, gradients that pass), 1 a problem found (models
differ, a gradient fails, Graphviz missing or failing, output not written), 2 bad usage or
input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from rgraph.cli_args import UsageError, dim_sizes, non_negative_int, positive_float, read_model
from rgraph.ir import dims as dimlib
from rgraph.ir.graph import GraphIR, Node

EXIT_OK, EXIT_FOUND = 0, 1
DEFAULT_DIM = 2
DEFAULT_MAX_ELEMENTS = 20


def _failure(message: str) -> Exception:
    """A one-line error ending the command with exit status 1."""
    from rgraph.cli import EXIT_FAILED, _Failure

    return _Failure(message, EXIT_FAILED)


def _emit(text: str, end: str = "\n") -> None:
    """Print to stdout; a reader that stops early (``| head``) is no error."""
    try:
        sys.stdout.write(text + end)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would complain again when flushing stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# --- argument types ---------------------------------------------------------------------


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a non-negative number, got {text!r}")
    return value


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return names


# --- dot --------------------------------------------------------------------------------


def dot_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a model file (.rgraph, or RecurrentJS .json)")
    p.add_argument(
        "-o",
        "--output",
        metavar="FILE",
        help="write FILE.dot (or .gv) as text, or render FILE.svg/.png/.pdf with Graphviz's"
        " dot program; default: DOT text on stdout",
    )
    p.add_argument(
        "--backward",
        action="store_true",
        help="draw the compiled program with the generated backward of the loss",
    )
    p.add_argument(
        "--loss", default="loss", help="the scalar output to differentiate (default loss)"
    )


def run_dot(args: argparse.Namespace) -> int:
    from rgraph.dot import RENDER_FORMATS, backward_dot, render, to_dot

    fmt = None
    if args.output:
        fmt = os.path.splitext(args.output)[1].lstrip(".").lower()
        if fmt not in ("dot", "gv", *RENDER_FORMATS):
            known = ", ".join("." + f for f in ("dot", "gv", *RENDER_FORMATS))
            raise UsageError(f"-o {args.output!r}: unknown extension; known: {known}")
    model = read_model(args.model)
    text = backward_dot(model.graph, args.loss) if args.backward else to_dot(model.graph)
    if not args.output:
        _emit(text, end="")
        return EXIT_OK
    try:
        render(text, args.output, fmt)
    except FileNotFoundError as e:  # no Graphviz
        raise _failure(str(e)) from None
    except (OSError, RuntimeError) as e:
        raise _failure(
            f"cannot write {args.output!r}: {getattr(e, 'strerror', None) or e}"
        ) from None
    return EXIT_OK


# --- diff -------------------------------------------------------------------------------


def diff_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("a", metavar="A", help="the first model file")
    p.add_argument("b", metavar="B", help="the second model file")
    p.add_argument("--json", action="store_true", help="the differences as one JSON object")
    p.add_argument(
        "--all", action="store_true", help="list every difference (default: 20 per section)"
    )


def run_diff(args: argparse.Namespace) -> int:
    from rgraph.diff import diff_models

    a, b = read_model(args.a), read_model(args.b)
    result = diff_models(a, b)
    if args.json:
        _emit(json.dumps({"a_file": args.a, "b_file": args.b, **result.to_json()}))
    else:
        _emit(result.format(show_all=args.all))
    return EXIT_OK if result.identical else EXIT_FOUND


# --- gradcheck --------------------------------------------------------------------------


@dataclass
class InputPlan:
    """How one graph input is drawn: ``kind`` is ``normal``, ``ones`` or ``ints`` (in
    ``[0, high)``); ``why`` says what in the graph decided it."""

    name: str
    kind: str
    high: int = 0
    why: str = ""

    def describe(self) -> str:
        what = {"normal": "normal", "ones": "ones"}.get(self.kind, f"ints in [0, {self.high})")
        return f"{what} ({self.why})" if self.why else what


# Ops whose outputs carry their input's values on (an index or a mask stays one).
_PASS_THROUGH = frozenset(
    {
        "identity",
        "reshape",
        "transpose",
        "slice",
        "expand_dims",
        "concat",
        "split",
        "cast",
        "broadcast_like",
    }
)


def symbolic_dims(graph: GraphIR) -> list[str]:
    """The symbolic dim names of the graph's inputs, in order of appearance."""
    seen: dict[str, None] = {}
    for v in graph.inputs:
        for d in v.type.shape:
            for name in dimlib.names(d):
                seen.setdefault(name, None)
    return list(seen)


def bind_dims(
    graph: GraphIR, given: dict[str, int] | None, default: int = DEFAULT_DIM
) -> dict[str, int]:
    """Sizes for every symbolic dim of the inputs: ``given`` ones, else ``default``."""
    known = symbolic_dims(graph)
    unknown = sorted(set(given or {}) - set(known))
    if unknown:
        have = ", ".join(known) if known else "none"
        raise UsageError(
            f"--dims names {', '.join(unknown)}, not a dim of the graph's inputs (its dims: {have})"
        )
    return {name: (given or {}).get(name, default) for name in known}


def input_plans(graph: GraphIR, binding: dict[str, int]) -> dict[str, InputPlan]:
    """How to draw each input so that the model can run and be differentiated.

    Int inputs that index (``row_pluck``'s indices, ``softmax_cross_entropy``'s targets,
    followed through loops and reshapes) get ints below the number of rows or classes;
    float inputs in a cross-entropy's mask slot, or named like ``mask``, get ones; other
    float inputs standard normal values; bools ones.
    """
    consumers: dict[int, dict[str, list[tuple[Node, int]]]] = {}

    def uses(g: GraphIR) -> dict[str, list[tuple[Node, int]]]:
        if id(g) not in consumers:
            table: dict[str, list[tuple[Node, int]]] = {}
            for node in g.nodes:
                for slot, name in enumerate(node.inputs):
                    table.setdefault(name, []).append((node, slot))
            consumers[id(g)] = table
        return consumers[id(g)]

    plans = {}
    for v in graph.inputs:
        bounds: list[tuple[int, str]] = []
        mask_use = False
        stack, seen = [(graph, v.name)], set()
        while stack:
            g, name = stack.pop()
            if (id(g), name) in seen:
                continue
            seen.add((id(g), name))
            types = g.types()
            for node, slot in uses(g).get(name, ()):
                if node.op == "row_pluck" and slot == 1:
                    table = node.inputs[0]
                    bounds.append(
                        (dimlib.evaluate(types[table].shape[0], binding), f"rows of {table}")
                    )
                elif node.op == "softmax_cross_entropy" and slot == 1:
                    logits = types[node.inputs[0]]
                    bounds.append(
                        (dimlib.evaluate(logits.shape[-1], binding), "cross-entropy classes")
                    )
                elif node.op == "softmax_cross_entropy" and slot == 2:
                    mask_use = True
                elif node.bodies:
                    for body in node.bodies.values():
                        if len(body.inputs) == len(node.inputs):
                            stack.append((body, body.inputs[slot].name))
                elif node.op in _PASS_THROUGH:
                    stack.extend((g, o.name) for o in node.outputs)
        t = v.type
        if t.dtype in ("int32", "int64"):
            if bounds:
                high, why = min(bounds)
                plans[v.name] = InputPlan(v.name, "ints", high, why)
            else:
                plans[v.name] = InputPlan(v.name, "ints", DEFAULT_DIM, "no index use found")
        elif t.dtype == "bool":
            plans[v.name] = InputPlan(v.name, "ones", why="bool")
        elif mask_use:
            plans[v.name] = InputPlan(v.name, "ones", why="cross-entropy mask")
        elif "mask" in v.name.lower():
            plans[v.name] = InputPlan(v.name, "ones", why="named like a mask")
        else:
            plans[v.name] = InputPlan(v.name, "normal")
    return plans


def random_feeds(
    graph: GraphIR, binding: dict[str, int], seed: int = 0
) -> tuple[dict[str, np.ndarray], dict[str, InputPlan]]:
    """Random inputs of the declared shapes (symbolic dims from ``binding``), float64 for
    float inputs, valid indices for int ones (see :func:`input_plans`)."""
    rng = np.random.default_rng(seed)
    plans = input_plans(graph, binding)
    feeds = {}
    for v in graph.inputs:
        shape = tuple(dimlib.evaluate(d, binding) for d in v.type.shape)
        plan = plans[v.name]
        if plan.kind == "ints":
            feeds[v.name] = rng.integers(0, max(plan.high, 1), size=shape).astype(v.type.dtype)
        elif plan.kind == "ones":
            dtype = "float64" if v.type.is_float else v.type.dtype
            feeds[v.name] = np.ones(shape, dtype)
        else:
            feeds[v.name] = rng.standard_normal(shape)
    return feeds, plans


def gradcheck_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a model file (.rgraph, or RecurrentJS .json)")
    p.add_argument(
        "--dims",
        type=dim_sizes,
        default={},
        metavar="B=2,T=3",
        help=f"sizes of symbolic dims (default {DEFAULT_DIM} for each)",
    )
    p.add_argument(
        "--seed", type=non_negative_int, default=0, help="for the inputs, directions and elements"
    )
    p.add_argument(
        "--eps", type=positive_float, default=1e-6, help="finite-difference step (default 1e-6)"
    )
    p.add_argument(
        "--atol", type=_tolerance, default=1e-6, help="absolute tolerance (default 1e-6)"
    )
    p.add_argument(
        "--rtol", type=_tolerance, default=1e-5, help="relative tolerance (default 1e-5)"
    )
    p.add_argument(
        "--max-elements",
        type=non_negative_int,
        default=DEFAULT_MAX_ELEMENTS,
        metavar="N",
        help="check at most N random elements per parameter, 0 for all"
        f" (default {DEFAULT_MAX_ELEMENTS})",
    )
    p.add_argument(
        "--wrt", type=_names, metavar="W,b", help="only these parameters (default: all float ones)"
    )
    p.add_argument("--json", action="store_true", help="the report as one JSON object")


def run_gradcheck(args: argparse.Namespace) -> int:
    from rgraph.gradcheck import gradcheck

    model = read_model(args.model)
    graph = model.graph
    floats = [p.name for p in graph.params if p.type.is_float]
    wrt = args.wrt if args.wrt is not None else floats
    unknown = [n for n in wrt if n not in floats]
    if unknown:
        raise UsageError(
            f"--wrt names {', '.join(unknown)}, not float parameters of the model"
            f" (they are: {', '.join(floats) or 'none'})"
        )
    if not wrt:
        raise UsageError("the model has no float parameters to check")
    types = graph.types()
    if not any(types[n].is_float for n in graph.outputs):
        raise UsageError("the model has no float outputs to differentiate")
    binding = bind_dims(graph, args.dims)
    feeds, plans = random_feeds(graph, binding, args.seed)
    report = gradcheck(
        graph,
        feeds,
        model.params,
        wrt=wrt,
        eps=args.eps,
        atol=args.atol,
        rtol=args.rtol,
        seed=args.seed,
        raise_on_failure=False,
        max_elements=args.max_elements or None,
    )
    sizes = {p.name: p.type for p in graph.params}
    if args.json:
        _emit(json.dumps(_gradcheck_json(args, binding, plans, graph, report, sizes)))
    else:
        _emit(_gradcheck_text(args, binding, plans, graph, feeds, report, sizes))
    return EXIT_OK if report.ok else EXIT_FOUND


def _gradcheck_json(args, binding, plans, graph, report, types) -> dict[str, Any]:
    return {
        "model": args.model,
        "ok": report.ok,
        "dims": binding,
        "seed": args.seed,
        "eps": args.eps,
        "atol": args.atol,
        "rtol": args.rtol,
        "max_elements": args.max_elements or None,
        "inputs": [
            {
                "name": v.name,
                "type": str(v.type),
                "drawn": plans[v.name].kind,
                **({"high": plans[v.name].high} if plans[v.name].kind == "ints" else {}),
                "why": plans[v.name].why,
            }
            for v in graph.inputs
        ],
        "params": [
            {
                "name": t.name,
                "type": str(types[t.name]),
                "checked": t.checked,
                "max_abs_error": t.max_abs_error,
                "max_rel_error": t.max_rel_error,
                "worst_index": list(t.worst_index),
                "analytic": t.analytic,
                "numeric": t.numeric,
                "ok": t.ok,
            }
            for t in report.tensors
        ],
        "failed": [t.name for t in report.tensors if not t.ok],
    }


def _gradcheck_text(args, binding, plans, graph, feeds, report, types) -> str:
    dims_text = ", ".join(f"{k}={v}" for k, v in binding.items()) or "none"
    out = [
        f"gradcheck {args.model}: float64, dims {dims_text}; seed {args.seed}, eps {args.eps:g},"
        f" atol {args.atol:g}, rtol {args.rtol:g}"
    ]
    for v in graph.inputs:
        shape = ",".join(str(s) for s in feeds[v.name].shape)
        out.append(f"  input {v.name}: {v.type} as [{shape}] ~ {plans[v.name].describe()}")
    rows = []
    for t in report.tensors:
        size = int(np.prod([int(d) for d in types[t.name].shape], dtype=np.int64))
        rows.append(
            (
                "ok" if t.ok else "FAIL",
                t.name,
                str(types[t.name]),
                f"{t.checked} of {size}",
                f"max abs err {t.max_abs_error:.3g}",
                f"max rel err {t.max_rel_error:.3g}",
                ""
                if t.ok
                else f"worst at {list(t.worst_index)}: analytic {t.analytic:.6g},"
                f" numeric {t.numeric:.6g}",
            )
        )
    if rows:
        widths = [max(len(r[i]) for r in rows) for i in range(6)]
        for r in rows:
            out.append(
                ("  " + "  ".join(r[i].ljust(widths[i]) for i in range(6)) + "  " + r[6]).rstrip()
            )
    failed = [t.name for t in report.tensors if not t.ok]
    n = len(report.tensors)
    if failed:
        out.append(f"FAILED: {len(failed)} of {n} parameters: {', '.join(failed)}")
    else:
        out.append(f"passed: {n} of {n} parameters")
    return "\n".join(out)
