"""Symbolic dimensions: an int, a name such as ``"T"``, or a product such as ``"B*T"``.

Products appear when a reshape merges symbolic axes (``(T, B, D) -> (T*B, D)``). A dim is
kept in canonical form (integer coefficient first, names sorted) so that two dims are equal
exactly when they are the same product.

>>> product(["T", 2, "B"])
'2*B*T'
>>> evaluate("2*B*T", {"B": 3, "T": 5})
30
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping

Dim = int | str

NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
DIM_RE = re.compile(r"([1-9][0-9]*\*)?[A-Za-z_][A-Za-z0-9_]*(\*[A-Za-z_][A-Za-z0-9_]*)*")


def factors(dim: Dim) -> tuple[int, tuple[str, ...]]:
    """Split a dim into its integer coefficient and its sorted symbolic names."""
    if isinstance(dim, int):
        return dim, ()
    coef, names = 1, []
    for part in dim.split("*"):
        if part.isdigit():
            coef *= int(part)
        else:
            names.append(part)
    return coef, tuple(sorted(names))


def _join(coef: int, names: Iterable[str]) -> Dim:
    names = sorted(names)
    if not names or coef == 0:
        return coef
    return "*".join(([str(coef)] if coef != 1 else []) + names)


def canonical(dim: Dim) -> Dim:
    """The canonical spelling of ``dim`` (``"T*B"`` -> ``"B*T"``, ``"1*T"`` -> ``"T"``)."""
    return _join(*factors(dim))


def product(dims: Iterable[Dim]) -> Dim:
    """The product of several dims, symbolic where any factor is."""
    coef, names = 1, []
    for d in dims:
        c, n = factors(d)
        coef *= c
        names.extend(n)
    return _join(coef, names)


def divide(num: Dim, den: Dim) -> Dim | None:
    """``num / den`` when it is a whole dim, else None."""
    nc, nn = factors(num)
    dc, dn = factors(den)
    if dc == 0 or nc % dc:
        return None
    rest = list(nn)
    for name in dn:
        if name not in rest:
            return None
        rest.remove(name)
    return _join(nc // dc, rest)


def is_dim(value: object) -> bool:
    """Whether ``value`` is a well-formed dim (a non-negative int or a symbolic product)."""
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return value >= 0
    return isinstance(value, str) and DIM_RE.fullmatch(value) is not None


def names(dim: Dim) -> tuple[str, ...]:
    """The symbolic names a dim depends on."""
    return factors(dim)[1]


def evaluate(dim: Dim, binding: Mapping[str, int]) -> int:
    """The concrete size of ``dim`` given sizes of its names (KeyError if one is unbound)."""
    coef, dim_names = factors(dim)
    return coef * math.prod(binding[n] for n in dim_names)
