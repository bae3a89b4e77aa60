"""What a model file holds of a graph, written independently of ``rgraph.io``."""

from __future__ import annotations

from pathlib import Path

import rgraph as rg


def as_saved(ir: rg.GraphIR) -> rg.GraphIR:
    """``ir`` as a file holds it: each source location names its file without folders."""

    def strip(x):
        if isinstance(x, dict):
            if set(x) == {"file", "line", "function"}:
                return {**x, "file": Path(x["file"]).name}
            return {k: strip(v) for k, v in x.items()}
        return [strip(v) for v in x] if isinstance(x, list) else x

    return rg.GraphIR.model_validate(strip(ir.model_dump(mode="json")))
