"""Tensor types: a dtype from a small allowlist and a shape of ints and symbolic dims."""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict

from rgraph.ir import dims

DType = Literal["float32", "float64", "int32", "int64", "bool"]
DTYPES: tuple[str, ...] = ("float32", "float64", "int32", "int64", "bool")
FLOAT_DTYPES: tuple[str, ...] = ("float32", "float64")
INT_DTYPES: tuple[str, ...] = ("int32", "int64")
SHORT = {"float32": "f32", "float64": "f64", "int32": "i32", "int64": "i64", "bool": "bool"}


def _check_dim(value: int | str) -> int | str:
    if type(value) is int and value >= 0:  # the common case, already canonical
        return value
    if not dims.is_dim(value):
        raise ValueError(
            f"dim {value!r} is neither a non-negative int nor a symbolic name like 'T' or 'B*T'"
        )
    return dims.canonical(value)


def _refuse_coercion(value: object) -> object:
    # Lax validation would turn ``true`` into 1 and ``1.0`` into 1: a dim is an int or a name.
    if isinstance(value, (bool, float)):
        raise ValueError(f"dim {value!r} is neither a non-negative int nor a symbolic name")
    return value


Dim = Annotated[int | str, BeforeValidator(_refuse_coercion), AfterValidator(_check_dim)]


class TensorType(BaseModel):
    """The static type of a value: dtype plus shape; dims may be symbolic names.

    >>> str(TensorType(dtype="float64", shape=("B", 20)))
    'f64[B,20]'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    dtype: DType
    shape: tuple[Dim, ...] = ()

    @property
    def rank(self) -> int:
        return len(self.shape)

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    @property
    def is_concrete(self) -> bool:
        return all(isinstance(d, int) for d in self.shape)

    @property
    def np_dtype(self) -> np.dtype:
        return np.dtype(self.dtype)

    def with_shape(self, shape: tuple[int | str, ...]) -> TensorType:
        return make_type(self.dtype, shape)

    def with_dtype(self, dtype: str) -> TensorType:
        return make_type(dtype, self.shape)

    def __str__(self) -> str:
        return f"{SHORT[self.dtype]}[{','.join(str(d) for d in self.shape)}]"


_setattr = object.__setattr__
_new = object.__new__


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector while building or reading a large IR.

    Compiling or loading allocates millions of small objects that all stay alive; the
    collector would scan them again and again (a quarter of the time, or more). Cycles
    made meanwhile are collected with the oldest generation.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            if gc.get_freeze_count() == 0:  # (never undo a program's own gc.freeze())
                # What was made meanwhile and still lives is the result, long-lived: move
                # it to the oldest generation as it is (O(1)), so that the first
                # allocation after this does not have the collector scan all of it.
                gc.freeze()
                gc.unfreeze()
            gc.enable()


class _Layout:
    """What :func:`construct` sets besides the fields, worked out once per model class."""

    __slots__ = ("fields_set", "names", "private")

    def __init__(self, cls: type[BaseModel]):
        self.names = frozenset(cls.model_fields)
        # Shared by every instance given all its fields: nothing mutates a frozen model's
        # fields set (``model_copy`` copies it first), and one set per node is memory.
        self.fields_set = set(self.names)
        self.private = {k: p.default for k, p in cls.__private_attributes__.items()} or None


_LAYOUTS: dict[type, _Layout] = {}


def construct(cls: type[BaseModel], **fields: Any) -> Any:
    """A model from fields the compiler derived itself: all given, none validated.

    Like pydantic's ``model_construct`` without its defaults handling, for hot paths
    (a generated backward can have many thousands of nodes).
    """
    layout = _LAYOUTS.get(cls)
    if layout is None:
        layout = _LAYOUTS[cls] = _Layout(cls)
    obj = _new(cls)
    _setattr(obj, "__dict__", fields)
    given = layout.fields_set if fields.keys() == layout.names else set(fields)
    _setattr(obj, "__pydantic_fields_set__", given)
    _setattr(obj, "__pydantic_extra__", None)
    _setattr(obj, "__pydantic_private__", None if layout.private is None else dict(layout.private))
    return obj


# Types the compiler derived, by (dtype, shape): a long chain has one type, not one per
# node. TensorType is frozen, so sharing one instance is safe. Bounded (cleared when full)
# so that a process building graphs of ever new shapes does not grow it without end.
_TYPES: dict[tuple[str, tuple[int | str, ...]], TensorType] = {}
_TYPES_MAX = 65536


def make_type(dtype: str, shape: tuple[int | str, ...]) -> TensorType:
    """A TensorType from values the compiler derived itself (no re-validation)."""
    shape = tuple(shape)
    key = (dtype, shape)
    t = _TYPES.get(key)
    if t is None:
        t = construct(TensorType, dtype=dtype, shape=shape)
        # Only plain dims are kept: an equal key (np.int64(3) == 3) then gets plain ints.
        if all(type(d) is int or type(d) is str for d in shape):
            if len(_TYPES) >= _TYPES_MAX:
                _TYPES.clear()
            _TYPES[key] = t
    return t


def dtype_name(dtype: object) -> str:
    """Normalise a numpy dtype, a Python type or a string to an allowlisted dtype name."""
    name = {float: "float64", int: "int64", bool: "bool"}.get(dtype)  # type: ignore[call-overload]
    if name is None:
        name = np.dtype(dtype).name  # type: ignore[call-overload]
    if name not in DTYPES:
        raise ValueError(f"dtype {name!r} is not one of {', '.join(DTYPES)}")
    return name
