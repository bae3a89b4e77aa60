"""The ``rgraph`` command (also ``python -m rgraph``).

Each subcommand is one entry of :data:`COMMANDS`: a help line, a function that adds its
arguments to its parser, and a function that runs it and returns the exit status.

Exit status: 0 on success; 2 for bad usage or bad input (a missing or malformed file, an
unknown file extension); 1 when the command found a problem (``validate``, ``diff``,
``gradcheck``) or the output cannot be written.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from rgraph import __version__
from rgraph.errors import RgraphError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2


@dataclass(frozen=True)
class Command:
    """One subcommand: ``help`` (one line), ``arguments(parser)``, ``run(args) -> status``."""

    help: str
    arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]
    description: str = ""


class _Failure(Exception):
    """A one-line error for the user, with the exit status to end with."""

    def __init__(self, message: str, status: int = EXIT_BAD_INPUT):
        super().__init__(message)
        self.status = status


# --- convert ----------------------------------------------------------------------------


def _read_rgraph(path: str) -> Any:
    from rgraph.io.format import load

    return load(path)


def _write_rgraph(path: str, model: Any) -> None:
    from rgraph.io.format import save

    save(
        path,
        model.graph,
        model.params,
        optimizer=model.optimizer,
        rng=model.rng,
        step=model.step,
        metadata=model.metadata,
    )


def _read_recurrentjs(path: str) -> Any:
    from rgraph.io.recurrentjs import import_json

    return import_json(path)


def _write_recurrentjs(path: str, model: Any) -> None:
    from rgraph.io.recurrentjs import write_json

    write_json(path, model)


# Model formats by file extension: (description, reader, writer).
FORMATS: dict[str, tuple[str, Callable[[str], Any], Callable[[str, Any], None]]] = {
    ".rgraph": ("rgraph model file", _read_rgraph, _write_rgraph),
    ".json": ("RecurrentJS character demo JSON", _read_recurrentjs, _write_recurrentjs),
}


def _format_of(path: str, role: str) -> tuple[str, Callable, Callable]:
    ext = os.path.splitext(path)[1].lower()
    if ext not in FORMATS:
        known = ", ".join(f"{e} ({FORMATS[e][0]})" for e in FORMATS)
        got = f"extension {ext!r}" if ext else "no extension"
        raise _Failure(f"{role} {path!r} has {got}; known: {known}")
    return FORMATS[ext]


def _convert_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("input", metavar="IN", help="the model to read (.json or .rgraph)")
    p.add_argument("output", metavar="OUT", help="the file to write (.json or .rgraph)")


def _convert(args: argparse.Namespace) -> int:
    _, read, _ = _format_of(args.input, "input")
    _, _, write = _format_of(args.output, "output")
    if not os.path.exists(args.input):
        raise _Failure(f"input {args.input!r} does not exist")
    model = read(args.input)  # RgraphError -> bad input
    try:
        write(args.output, model)
    except OSError as e:
        raise _Failure(f"cannot write {args.output!r}: {e.strerror or e}", EXIT_FAILED) from None
    return EXIT_OK


COMMANDS: dict[str, Command] = {
    "train": Command(
        help="train the character-level language model (the RecurrentJS demo)",
        description=(
            "Train a character-level language model on sentences (one per line; the "
            "built-in corpus by default), reporting perplexity and samples as it goes and "
            "checkpointing atomically to --out. Ctrl-C saves and stops (exit status 130); "
            "--resume continues exactly where a saved run stopped."
        ),
        arguments=lambda p: _char_cli().train_arguments(p),
        run=lambda args: _char_cli().run_train(args),
    ),
    "sample": Command(
        help="generate text from a trained character model file",
        description="Generate sentences from a character model file alone.",
        arguments=lambda p: _char_cli().sample_arguments(p),
        run=lambda args: _char_cli().run_sample(args),
    ),
    "convert": Command(
        help="convert a model between RecurrentJS JSON (.json) and rgraph (.rgraph)",
        description=(
            "Convert a model file; the format of each side follows its extension: "
            ".json is the RecurrentJS character demo's saved model, .rgraph rgraph's model "
            "file. Weights, the RMSProp step cache and the vocabulary carry over."
        ),
        arguments=_convert_arguments,
        run=_convert,
    ),
    "inspect": Command(
        help="summarise a model file: interface, parameters, ops, estimated cost",
        description=(
            "A summary of a model file: format and reader versions, producer, inputs and"
            " outputs with symbolic shapes, parameters (shape, dtype, count, bytes, value"
            " statistics, non-finite values), optimiser state, metadata keys, op histogram,"
            " node counts and the estimated FLOPs and bytes per run as formulas of the"
            " symbolic dims (--dims B=32,T=50 evaluates them). --backward also generates"
            " the backward of the 'loss' output and reports its nodes and cost."
        ),
        arguments=lambda p: _inspect_cli().inspect_arguments(p),
        run=lambda args: _inspect_cli().run_inspect(args),
    ),
    "show": Command(
        help="print a model's IR as text (loop bodies indented), at any compiler stage",
        description=(
            "The text form of a model's graph IR (docs/ir.md), loop bodies indented under"
            " their node. --backward shows the compiled program with the generated backward"
            " of the 'loss' output; --after PASS the IR a compiler pass produced; --json the"
            " IR as JSON."
        ),
        arguments=lambda p: _inspect_cli().show_arguments(p),
        run=lambda args: _inspect_cli().run_show(args),
    ),
    "validate": Command(
        help="check a model file and list every problem found",
        description=(
            "Check everything the loader and the graph verifier check and list every"
            " problem of the graph (a problem of the file itself stops reading, so it is"
            " listed alone). Exit status 0 when valid, 1 when problems are found, 2 on bad"
            " usage."
        ),
        arguments=lambda p: _inspect_cli().validate_arguments(p),
        run=lambda args: _inspect_cli().run_validate(args),
    ),
    "dot": Command(
        help="draw a model's graph as Graphviz DOT (loop bodies as clusters)",
        description=(
            "Graphviz DOT of a model's graph on stdout, or -o FILE.dot/.svg/.png/.pdf (images"
            " need Graphviz's dot program): types on the edges, parameters as filled boxes,"
            " inputs and outputs as ellipses, loop bodies as clusters drawn once."
            " --backward draws the compiled program with the generated backward."
        ),
        arguments=lambda p: _tools_cli().dot_arguments(p),
        run=lambda args: _tools_cli().run_dot(args),
    ),
    "diff": Command(
        help="compare two model files: structure, weights, optimiser state, metadata",
        description=(
            "Structural differences (inputs, outputs, parameters, ops and nodes, loop bodies)"
            " and, for parameters in both, how far the weights moved (max abs diff, relative"
            " L2); then optimiser state, RNG, step and metadata. Exit status 0 when identical,"
            " 1 when they differ, 2 on bad input."
        ),
        arguments=lambda p: _tools_cli().diff_arguments(p),
        run=lambda args: _tools_cli().run_diff(args),
    ),
    "gradcheck": Command(
        help="check a model's generated backward against finite differences",
        description=(
            "Finite-difference check of the generated backward for each parameter, in"
            " float64, on random inputs of the declared shapes (valid indices for int"
            " inputs, ones for masks). Exit status 0 when every parameter passes, 1 when one"
            " fails, 2 on bad input."
        ),
        arguments=lambda p: _tools_cli().gradcheck_arguments(p),
        run=lambda args: _tools_cli().run_gradcheck(args),
    ),
}


def _char_cli() -> Any:
    from rgraph import charlm_cli

    return charlm_cli


def _inspect_cli() -> Any:
    from rgraph import inspect_cli

    return inspect_cli


def _tools_cli() -> Any:
    from rgraph import tools_cli

    return tools_cli


# --- the command line -------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line, exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_BAD_INPUT, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="rgraph",
        description="rgraph: a define-then-run graph compiler for recurrent networks.",
        epilog="Define graphs in Python with rgraph.Graph; see README.md for a quick start. "
        "Exit status: 0 success, 1 a problem found or output not written, 2 bad usage or input.",
    )
    p.add_argument("--version", action="version", version=f"rgraph {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, cmd in COMMANDS.items():
        cp = sub.add_parser(name, help=cmd.help, description=cmd.description or cmd.help)
        cmd.arguments(cp)
    return p


def _one_line(message: str) -> str:
    return " ".join(str(message).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status (argparse's own exits included)."""
    p = parser()
    try:
        args = p.parse_args(argv)
    except SystemExit as e:  # --help, --version, usage errors
        return e.code if isinstance(e.code, int) else EXIT_BAD_INPUT
    if args.command is None:
        p.print_help()
        return EXIT_OK
    try:
        return COMMANDS[args.command].run(args)
    except _Failure as e:
        status, message = e.status, str(e)
    except RgraphError as e:
        status, message = EXIT_BAD_INPUT, str(e)
    print(f"rgraph {args.command}: error: {_one_line(message)}", file=sys.stderr)
    return status
