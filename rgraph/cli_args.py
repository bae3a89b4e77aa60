"""Argument types and model-file opening shared by the ``rgraph`` subcommands.

Each parser raises ``argparse.ArgumentTypeError``, which the command line turns into a
one-line usage error (exit status 2).
"""

from __future__ import annotations

import argparse
import math
import os
from typing import Any

from rgraph.errors import RgraphError
from rgraph.ir import dims


class UsageError(RgraphError):
    """Bad options or input for a command (exit status 2)."""


def positive_int(text: str) -> int:
    value = _number(text, int, "a positive integer")
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def non_negative_int(text: str) -> int:
    value = _number(text, int, "a non-negative integer")
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def positive_float(text: str) -> float:
    value = _number(text, float, "a positive number")
    if not value > 0 or math.isinf(value):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def dim_sizes(text: str) -> dict[str, int]:
    """``"B=32,T=50"`` -> ``{"B": 32, "T": 50}``: sizes of symbolic dims."""
    out: dict[str, int] = {}
    for part in text.split(","):
        name, eq, value = (s.strip() for s in part.partition("="))
        if not eq or not dims.NAME_RE.fullmatch(name):
            raise argparse.ArgumentTypeError(
                f"expected NAME=SIZE pairs such as B=32,T=50, got {text!r}"
            )
        size = _number(value, int, f"an integer size for dim {name}")
        if size <= 0:
            raise argparse.ArgumentTypeError(f"dim {name}: expected a positive size, got {size}")
        if name in out:
            raise argparse.ArgumentTypeError(f"dim {name} is given twice")
        out[name] = size
    return out


def check_model_path(path: str) -> None:
    """A one-line error for a model path that does not name a file."""
    if not os.path.exists(path):
        raise UsageError(f"model file {path!r} does not exist")
    if os.path.isdir(path):
        raise UsageError(f"{path!r} is a folder, not a model file")


def read_model(path: str) -> Any:
    """A model from an ``.rgraph`` file, or from a RecurrentJS ``.json`` model."""
    check_model_path(path)
    if os.path.splitext(path)[1].lower() == ".json":
        from rgraph.io.recurrentjs import import_json

        return import_json(path)
    from rgraph.io.format import load

    return load(path)


def _number(text: str, kind: type, what: str) -> Any:
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
