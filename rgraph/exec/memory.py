"""Which memory an array uses: the object that owns it, and its byte range.

What the optimiser and the interpreter ask before they write into arrays a caller gave
them: whether two arrays may share memory.
"""

from __future__ import annotations

from typing import Any

import numpy as np

try:  # NumPy 2
    from numpy.lib.array_utils import byte_bounds
except ImportError:  # pragma: no cover - NumPy 1.x
    byte_bounds = np.byte_bounds

__all__ = ["byte_bounds", "owner"]


def owner(a: Any) -> Any:
    """The object owning the memory of array ``a``: the end of its chain of ``.base`` (and
    ``memoryview.obj``)."""
    while True:
        if isinstance(a, np.ndarray):
            if a.base is None:
                return a
            a = a.base
        elif isinstance(a, memoryview) and a.obj is not None:
            a = a.obj
        else:
            return a
