"""``rgraph inspect``, ``rgraph show`` and ``rgraph validate``: looking at model files.

Each runs :mod:`rgraph.inspect`; this module only turns options into calls and results
into text or JSON (``--json``: one JSON object on stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from rgraph.cli import EXIT_FAILED, EXIT_OK, _Failure
from rgraph.cli_args import check_model_path, dim_sizes
from rgraph.inspect import stage, summary, validate_file
from rgraph.io.format import Model, load
from rgraph.ir.types import gc_paused


def _model_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a model file (.rgraph)")


def _load(path: str) -> Model:
    check_model_path(path)
    return load(path)  # FormatError -> exit 2 with one line


def _json(data: Any, allow_nan: bool = False) -> str:
    """Compact JSON; only the IR may hold NaN and infinities (written as ``docs/ir.md``
    says, as Python's json module does)."""
    return json.dumps(data, separators=(",", ":"), allow_nan=allow_nan) + "\n"


def _write(text: str) -> None:
    """Write to stdout; a reader that stops early (``rgraph show MODEL | head``) is fine."""
    try:
        sys.stdout.write(text)
        sys.stdout.flush()
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


# --- inspect -----------------------------------------------------------------------------


def inspect_arguments(p: argparse.ArgumentParser) -> None:
    _model_argument(p)
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")
    p.add_argument(
        "--dims",
        type=dim_sizes,
        default={},
        metavar="B=32,T=50",
        help="sizes of symbolic dims, to evaluate the cost formulas",
    )
    p.add_argument(
        "--backward",
        action="store_true",
        help="also generate the backward of the 'loss' output: its nodes and cost",
    )


def run_inspect(args: argparse.Namespace) -> int:
    with gc_paused():  # the model is freed before the collector runs again
        s = summary(_load(args.model), backward=args.backward)
    unknown = [n for n in args.dims if n not in s.dims]
    if unknown:
        known = ", ".join(s.dims) or "none"
        raise _Failure(f"--dims: {', '.join(unknown)} not a dim of the graph (its dims: {known})")
    s.binding = dict(args.dims)
    s.path = args.model
    _write(_json(s.to_json()) if args.json else f"{s}\n")
    return EXIT_OK


# --- show --------------------------------------------------------------------------------


def show_arguments(p: argparse.ArgumentParser) -> None:
    _model_argument(p)
    p.add_argument("--json", action="store_true", help="the IR as JSON (as in the file)")
    p.add_argument(
        "--backward",
        action="store_true",
        help="the compiled program with the generated backward of the 'loss' output",
    )
    p.add_argument(
        "--after",
        metavar="PASS",
        help="the IR after a compiler pass, one of rgraph.Program.stages: schedule, prune,"
        " autodiff (with --backward), cse, prune_after_cse, ...",
    )


def run_show(args: argparse.Namespace) -> int:
    with gc_paused():  # the model is freed (on return) before the collector runs again
        text = _show(args)
    _write(text)
    return EXIT_OK


def _show(args: argparse.Namespace) -> str:
    ir = stage(_load(args.model), backward=args.backward, after=args.after)
    return _json(ir.model_dump(mode="json"), allow_nan=True) if args.json else f"{ir}\n"


# --- validate ----------------------------------------------------------------------------


def validate_arguments(p: argparse.ArgumentParser) -> None:
    _model_argument(p)
    p.add_argument("--json", action="store_true", help="one JSON object instead of text")


def run_validate(args: argparse.Namespace) -> int:
    check_model_path(args.model)
    with gc_paused():
        found = validate_file(args.model)
    if args.json:
        problems = [p.to_json() for p in found]
        text = _json({"path": args.model, "valid": not found, "problems": problems})
    elif not found:
        text = f"{args.model}: valid\n"
    else:
        n = len(found)
        lines = [f"{args.model}: {n} problem{'s' if n != 1 else ''}"]
        lines += [f"  {p.kind}: {' '.join(p.message.split())}" for p in found]
        text = "\n".join(lines) + "\n"
    _write(text)
    return EXIT_FAILED if found else EXIT_OK  # 1: problems found
