"""The ``rgraph`` command (also ``python -m rgraph``)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from rgraph import __version__


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="rgraph",
        description="rgraph: a define-then-run graph compiler for recurrent networks.",
        epilog="Define graphs in Python with rgraph.Graph; see README.md for a quick start.",
    )
    p.add_argument("--version", action="version", version=f"rgraph {__version__}")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the process exit status."""
    parser().parse_args(argv)
    parser().print_help()
    return 0
