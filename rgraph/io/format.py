"""The ``.rgraph`` model file: one msgpack stream holding graph, tensors and training state.

Layout (``docs/format.md`` is the specification)::

    array32 [ "RGRAPH", prelude, header, pad, blob, blob, ... ]

``prelude`` is a small map with the format version, the minimum reader version and the
size and CRC-32 of ``header``; ``header`` holds the graph IR, metadata, optimiser and RNG
state, and a table of tensors with absolute file offsets, sizes and CRC-32s; ``pad`` is a
``bin`` that aligns the first blob's payload to 64 bytes; each ``blob`` is a ``bin32``
of raw little-endian tensor bytes, each tensor 64-byte aligned. A reader can so
memory-map the file and view tensors in place.

Reading trusts nothing: sizes are checked before anything is allocated, msgpack runs
with small limits and no ext types, duplicate keys are rejected, and every problem is a
:class:`~rgraph.errors.FormatError` naming what is wrong and where.
"""

from __future__ import annotations

import itertools
import math
import mmap
import os
import struct
import zlib
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Annotated, Any, Literal

import msgpack
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, Strict, StringConstraints, ValidationError

from rgraph.errors import FormatError, GraphError
from rgraph.io.atomic import replace_atomically
from rgraph.ir.graph import GraphIR
from rgraph.ir.types import DTYPES, gc_paused
from rgraph.ir.verify import problems as graph_problems_of
from rgraph.ir.verify import verify as verify_graph

MAGIC = "RGRAPH"
FORMAT_VERSION = (1, 0)  # what this writer writes
READER_VERSION = (1, 0)  # the newest format this reader understands
MIN_READER_VERSION = (1, 0)  # what a file written here asks of its readers
ALIGN = 64
MAX_BLOB = 2**32 - 1  # a msgpack bin32 payload
MAX_RANK = 8
MAX_HEADER = 256 * 2**20  # bytes
MAX_OBJECTS = 8_000_000  # msgpack items in a header, all containers together
MAX_BLOBS = 2**16
MAX_LOOP_DEPTH = 32  # loop bodies nested in loop bodies
MAX_PRELUDE = 4096  # bytes of the magic and the prelude together
PRODUCER = "rgraph"
_CRC_THREADS_FROM = 16 * 2**20  # bytes of tensors: below this, one thread is faster

_MAX_STR = 16 * 2**20  # bytes of one string
_LIMITS = dict(
    raw=False,
    strict_map_key=True,
    max_str_len=_MAX_STR,
    max_bin_len=0,
    max_ext_len=0,
    max_array_len=4_000_000,
    max_map_len=1_000_000,
)

_STRICT = ConfigDict(extra="forbid", frozen=True)
Name = Annotated[str, StringConstraints(min_length=1, max_length=200)]
# Integers are strict: ``true``, ``1.0`` or ``"1"`` where the spec says int is an error.
Short = Annotated[int, Strict(), Field(ge=0, le=65535)]
Version = tuple[Short, Short]
Size = Annotated[int, Strict(), Field(ge=0, le=2**62)]
Crc = Annotated[int, Strict(), Field(ge=0, lt=2**32)]


class Prelude(BaseModel):
    """The file's second item: versions, and the size and CRC-32 of the header's bytes."""

    model_config = _STRICT

    format_version: Version
    min_reader_version: Version
    header_size: Annotated[int, Strict(), Field(ge=0, le=MAX_HEADER)]
    header_crc32: Crc


class TensorEntry(BaseModel):
    """Where one tensor's bytes are: absolute file offset, size and CRC-32."""

    model_config = _STRICT

    name: Name
    dtype: Literal["float32", "float64", "int32", "int64", "bool"]
    shape: Annotated[tuple[Size, ...], Field(max_length=MAX_RANK)]
    offset: Size
    nbytes: Size
    crc32: Crc


Plain = Annotated[
    Any, Field(description="str, int, float, bool, None, or lists/maps of these (depth <= 16)")
]


class OptimizerRecord(BaseModel):
    """An optimiser's ``state_dict()``; its per-parameter arrays as tensor entries."""

    model_config = _STRICT

    kind: Name
    hyper: dict[Name, bool | int | float | str | None]
    step: Size
    slots: dict[Name, list[TensorEntry]]


class RngRecord(BaseModel):
    """A numpy PCG64 generator's state; its 128-bit integers as decimal strings."""

    model_config = _STRICT

    bit_generator: Literal["PCG64"]
    state: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,40}$")]
    inc: Annotated[str, StringConstraints(pattern=r"^[0-9]{1,40}$")]
    has_uint32: Annotated[int, Strict(), Field(ge=0, le=1)]
    uinteger: Crc


class Header(BaseModel):
    """The file's third item: the graph, the tensor table, training state and metadata."""

    model_config = _STRICT

    producer: Annotated[str, StringConstraints(max_length=200)]
    graph: GraphIR
    params: list[TensorEntry]
    optimizer: OptimizerRecord | None = None
    rng: RngRecord | None = None
    step: Size | None = None
    metadata: dict[Name, Plain] = {}


@dataclass
class Model:
    """What :func:`load` returns: enough to run the model or to resume training exactly.

    ``optimizer`` is an optimiser's ``state_dict()`` (or None), ``rng`` a generator in
    the saved state (or None), ``step`` the saved step counter.
    """

    graph: GraphIR
    params: dict[str, np.ndarray]
    optimizer: dict[str, Any] | None = None
    rng: np.random.Generator | None = None
    step: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    format_version: tuple[int, int] = FORMAT_VERSION
    producer: str = PRODUCER
    min_reader_version: tuple[int, int] = MIN_READER_VERSION


# --- writing ---------------------------------------------------------------------------


def save(
    path: str | os.PathLike,
    graph: Any,
    params: Mapping[str, np.ndarray],
    *,
    optimizer: Any = None,
    rng: np.random.Generator | None = None,
    step: int | None = None,
    metadata: Mapping[str, Any] | None = None,
    fsync: bool = True,
) -> None:
    """Write a model file atomically: a temporary file in the same folder, then a rename.

    Parameters
    ----------
    graph
        A builder :class:`~rgraph.Graph` or a :class:`~rgraph.ir.GraphIR`.
    params
        The parameter store; it must hold every parameter of the graph.
    optimizer
        An optimiser (anything with ``state_dict()``) or its state dict, to resume
        training exactly.
    rng, step, metadata
        A numpy ``Generator`` (PCG64), a step counter and user data (str keys; str, int,
        float, bool, None, lists and maps).
    fsync
        Flush to disk before the rename, so that a crash leaves the old or the new file.

    Examples
    --------
    >>> import rgraph as rg, numpy as np, tempfile, os
    >>> g = rg.Graph(); W = g.param("W", (2, 2)); _ = g.output(W * 2.0, name="y")
    >>> path = os.path.join(tempfile.mkdtemp(), "m.rgraph")
    >>> rg.save(path, g, {"W": np.eye(2)})
    >>> rg.load(path).params["W"].tolist()
    [[1.0, 0.0], [0.0, 1.0]]
    """
    ir: GraphIR = getattr(graph, "ir", graph)
    tensors: list[tuple[str, np.ndarray]] = []
    for p in ir.params:
        if p.name not in params:
            raise FormatError(f"cannot save: the parameter store has no '{p.name}'")
        arr = _as_saveable(params[p.name], p.name)
        if arr.dtype.name != p.type.dtype or list(arr.shape) != list(p.type.shape):
            raise FormatError(
                f"cannot save: parameter '{p.name}' is {arr.dtype}{list(arr.shape)},"
                f" the graph declares {p.type}"
            )
        tensors.append((p.name, arr))
    opt_state = optimizer.state_dict() if hasattr(optimizer, "state_dict") else optimizer
    slot_tensors: list[tuple[str, str, np.ndarray]] = []
    declared = {p.name: p.type for p in ir.params}
    if opt_state is not None:
        for slot, arrays in opt_state["slots"].items():
            for name, arr in arrays.items():
                arr = _as_saveable(arr, f"{slot}/{name}")
                t = declared.get(name)
                if t is None or arr.dtype.name != t.dtype or list(arr.shape) != list(t.shape):
                    raise FormatError(
                        f"cannot save: optimizer slot '{slot}' of '{name}' is"
                        f" {arr.dtype}{list(arr.shape)}, "
                        + (f"the graph declares {t}" if t else "which is not a parameter")
                    )
                slot_tensors.append((slot, name, arr))
    _check_plain(dict(metadata or {}), "metadata")
    for key in metadata or {}:
        if not 1 <= len(key) <= 200:
            raise FormatError(f"cannot save: metadata key {key[:50]!r} is not 1 to 200 characters")
    if step is not None and (type(step) is not int or not 0 <= step <= 2**62):
        raise FormatError(f"cannot save: step must be an int in 0..2**62, got {step!r}")

    arrays = [arr for _, arr in tensors] + [arr for _, _, arr in slot_tensors]
    crcs = _crc32s([_bytes_of(arr) for arr in arrays])
    groups = _group(arrays)

    def entry(name: str, i: int, offsets: list[int]) -> dict[str, Any]:
        arr = arrays[i]
        shape = list(arr.shape)
        return dict(
            name=name,
            dtype=arr.dtype.name,
            shape=shape,
            offset=offsets[i],
            nbytes=arr.nbytes,
            crc32=crcs[i],
        )

    graph_data = _portable(ir.model_dump(mode="json"))  # once: encode runs until offsets settle

    def encode(offsets: list[int]) -> bytes:
        header: dict[str, Any] = {
            "producer": PRODUCER,
            "graph": graph_data,
            "params": [entry(name, i, offsets) for i, (name, _) in enumerate(tensors)],
            "optimizer": None,
            "rng": _rng_record(rng),
            "step": step,
            "metadata": dict(metadata or {}),
        }
        if opt_state is not None:
            slots: dict[str, list[dict]] = {slot: [] for slot in opt_state["slots"]}  # even empty
            for i, (slot, name, _) in enumerate(slot_tensors, start=len(tensors)):
                slots.setdefault(slot, []).append(entry(name, i, offsets))
            header["optimizer"] = {
                "kind": opt_state["kind"],
                "hyper": dict(opt_state["hyper"]),
                "step": int(opt_state["step"]),
                "slots": slots,
            }
        body = msgpack.packb(header, use_bin_type=True)
        prelude = {
            "format_version": list(FORMAT_VERSION),
            "min_reader_version": list(MIN_READER_VERSION),
            "header_size": len(body),
            "header_crc32": zlib.crc32(body),
        }
        top = b"\xdd" + struct.pack(">I", 4 + len(groups))  # magic, prelude, header, pad
        return top + msgpack.packb(MAGIC) + msgpack.packb(prelude) + body

    # Offsets live in the header and depend on its size: iterate to a fixed point.
    plan = _plan(0, arrays, groups)
    for _ in range(8):
        head = encode(plan.offsets)
        new = _plan(len(head), arrays, groups)
        if new == plan:
            break
        plan = new
    else:  # pragma: no cover - offsets settle in two or three rounds
        raise FormatError("internal error: tensor offsets did not settle")
    _write_atomic(path, head, plan, arrays, groups, fsync)


def _as_saveable(value: Any, name: str) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.name not in DTYPES:
        raise FormatError(f"cannot save '{name}': dtype {arr.dtype} is not one of {DTYPES}")
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    if arr.nbytes > MAX_BLOB:
        raise FormatError(
            f"cannot save '{name}': {arr.nbytes} bytes; tensors over 4 GiB - 1 are not supported"
        )
    return arr if arr.flags.c_contiguous else arr.copy(order="C")  # keeps 0-d arrays 0-d


def _group(arrays: list[np.ndarray]) -> list[list[int]]:
    """Tensor indices per blob: consecutive tensors while a blob stays under 4 GiB."""
    groups: list[list[int]] = [[]]
    size = 0
    for i, arr in enumerate(arrays):
        need = _round_up(size, ALIGN) + arr.nbytes
        if need > MAX_BLOB - ALIGN and groups[-1]:
            groups.append([])
            need = arr.nbytes
        groups[-1].append(i)
        size = need
    return groups


@dataclass
class _Plan:
    pad: int  # payload bytes of the pad bin
    offsets: list[int]  # absolute file offset of each tensor
    blob_sizes: list[int]  # payload bytes of each blob


def _plan(head_size: int, arrays: list[np.ndarray], groups: list[list[int]]) -> _Plan:
    """Where everything goes after a head of ``head_size`` bytes: every blob payload and
    every tensor starts at a multiple of ALIGN; the gaps are zero bytes."""
    pad = (-(head_size + 5 + 5)) % ALIGN
    offsets = [0] * len(arrays)
    sizes = []
    payload = head_size + 5 + pad + 5
    for members in groups:
        end = payload
        for i in members:
            offsets[i] = _round_up(end, ALIGN)
            end = offsets[i] + arrays[i].nbytes
        end += (-(end + 5)) % ALIGN  # the next blob's payload is aligned too
        sizes.append(end - payload)
        payload = end + 5
    return _Plan(pad, offsets, sizes)


def _bytes_of(arr: np.ndarray) -> memoryview:
    return memoryview(arr).cast("B") if arr.size else memoryview(b"")


def _crc32s(buffers: Sequence[Any]) -> list[int]:
    """The CRC-32 of each buffer; of large ones in two threads (zlib releases the GIL)."""
    if len(buffers) < 2 or sum(len(b) for b in buffers) < _CRC_THREADS_FROM:
        return [zlib.crc32(b) for b in buffers]
    try:
        with ThreadPoolExecutor(2) as pool:
            return list(pool.map(zlib.crc32, buffers))
    except RuntimeError:  # no new threads at interpreter shutdown (a save in an atexit hook)
        return [zlib.crc32(b) for b in buffers]


def _round_up(n: int, k: int) -> int:
    return -(-n // k) * k


def _write_atomic(
    path: str | os.PathLike,
    head: bytes,
    plan: _Plan,
    arrays: list[np.ndarray],
    groups: list[list[int]],
    fsync: bool,
) -> None:
    """Write the file: head, pad, blobs, atomically (see :mod:`rgraph.io.atomic`)."""
    with replace_atomically(path, suffix=".rgraph", fsync=fsync) as f:
        f.write(head)
        f.write(b"\xc6" + struct.pack(">I", plan.pad) + bytes(plan.pad))
        pos = len(head) + 5 + plan.pad
        for members, blob_size in zip(groups, plan.blob_sizes):
            f.write(b"\xc6" + struct.pack(">I", blob_size))
            end = pos + 5 + blob_size
            pos += 5
            for i in members:
                f.write(bytes(plan.offsets[i] - pos))
                f.write(_bytes_of(arrays[i]))
                pos = plan.offsets[i] + arrays[i].nbytes
            f.write(bytes(end - pos))
            pos = end


def _rng_record(rng: np.random.Generator | None) -> dict[str, Any] | None:
    if rng is None:
        return None
    state = rng.bit_generator.state
    if state.get("bit_generator") != "PCG64":
        raise FormatError(f"cannot save RNG {state.get('bit_generator')}: only PCG64 is stored")
    return {
        "bit_generator": "PCG64",
        "state": str(state["state"]["state"]),
        "inc": str(state["state"]["inc"]),
        "has_uint32": int(state["has_uint32"]),
        "uinteger": int(state["uinteger"]),
    }


def _check_plain(value: Any, where: str, depth: int = 0) -> None:
    """Metadata must be plain data: no bytes, no objects, bounded depth."""
    if depth > 16:
        raise FormatError(f"{where}: nested deeper than 16 levels")
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise FormatError(f"{where}: key {k!r} is not a string")
            _check_plain(k, f"{where} key", depth)
            _check_plain(v, f"{where}.{k}", depth + 1)
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            _check_plain(v, f"{where}[{i}]", depth + 1)
    elif not (value is None or isinstance(value, (str, bool, int, float))):
        raise FormatError(f"{where}: {type(value).__name__} is not plain data")
    elif isinstance(value, str):
        try:
            n = len(value.encode("utf-8"))
        except UnicodeEncodeError:
            raise FormatError(f"{where}: a string that is not valid UTF-8") from None
        if n > _MAX_STR:
            raise FormatError(f"{where}: a string of {n} bytes (at most {_MAX_STR})")
    elif isinstance(value, int) and not -(2**63) <= value < 2**64:
        raise FormatError(f"{where}: integer {value} does not fit 64 bits")


# --- reading ---------------------------------------------------------------------------


def load(
    path: str | os.PathLike, *, lazy: bool = False, graph_problems: list | None = None
) -> Model:
    """Read a model file, checking everything (see ``docs/format.md``).

    With ``lazy=True`` the file is memory-mapped and parameters are read-only views
    into it, so opening is fast whatever the size; checksums are then not verified
    (call :func:`verify_tensors` to do so). ``graph_problems``: see :func:`decode`.

    Raises
    ------
    FormatError
        For any malformed, corrupt, hostile or too new file; the message names the
        field, tensor or byte offset.
    """
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if lazy:
                buf: Any = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if size else b""
            else:
                buf = np.empty(size, np.uint8)  # uninitialised: the read is the one copy
                if f.readinto(memoryview(buf)) != size:
                    raise FormatError(f"{os.fspath(path)!r} changed while it was read")
    except OSError as e:
        raise FormatError(f"cannot read {os.fspath(path)!r}: {e.strerror or e}") from None
    return decode(buf, check_crc=not lazy, graph_problems=graph_problems)


def decode(buf: Any, *, check_crc: bool = True, graph_problems: list | None = None) -> Model:
    """A :class:`Model` from a file's bytes (a bytes-like object or a memory map).

    The checks run in the order of ``docs/format.md`` ("What a reader checks"): nothing
    is allocated for a tensor before its size is known to fit inside the file.

    Given a list as ``graph_problems``, every problem the verifier finds in the graph is
    appended to it (a :class:`~rgraph.errors.GraphError`) instead of the first being
    raised, and reading goes on; the Model may then hold an invalid graph. ``rgraph
    validate`` uses this to list all problems.
    """
    with gc_paused():  # a large graph is millions of objects that all stay alive
        return _decode(buf, check_crc=check_crc, graph_problems=graph_problems)


def _decode(buf: Any, *, check_crc: bool = True, graph_problems: list | None = None) -> Model:
    view = memoryview(buf)
    size = len(view)
    if size < 5 or view[0] != 0xDD:
        raise FormatError("not an rgraph file: it does not start with a msgpack array32 (0xdd)")
    count = struct.unpack(">I", view[1:5])[0]
    if not 4 <= count <= 4 + MAX_BLOBS:
        raise FormatError(
            f"byte 1: the top-level array has {count} items, expected 4 to {4 + MAX_BLOBS}"
            " (magic, prelude, header, pad, blobs)"
        )
    unpacker = _unpacker()
    unpacker.feed(view[5 : 5 + min(size - 5, MAX_PRELUDE)])
    magic = _next(unpacker, "magic", 5)
    if magic != MAGIC:
        raise FormatError(f"not an rgraph file: magic is {magic!r:.40}, expected {MAGIC!r}")
    prelude_at = 5 + unpacker.tell()
    raw_prelude = _next(unpacker, "prelude", prelude_at)
    _check_version(raw_prelude)  # before the strict schema: a newer prelude may differ
    prelude = _validate(Prelude, raw_prelude, "prelude")
    head_at = 5 + unpacker.tell()
    head_end = head_at + prelude.header_size
    if head_end > size:
        raise FormatError(
            f"byte {head_at}: the header ({prelude.header_size} bytes) runs past the end"
            f" of the file ({size} bytes)"
        )
    head = view[head_at:head_end]
    if zlib.crc32(head) != prelude.header_crc32:
        raise FormatError(f"byte {head_at}: header checksum mismatch: the header is corrupt")
    unpacker = _unpacker()
    unpacker.feed(head)
    raw = _next(unpacker, "header", head_at)
    if unpacker.tell() != prelude.header_size:
        raise FormatError(f"byte {head_at}: the header is not exactly one msgpack object")
    header = _validate(Header, raw, "header")
    blobs = _blob_ranges(view, head_end, count - 4)
    _check_loop_depth(header.graph)
    try:
        if graph_problems is not None:
            graph_problems.extend(graph_problems_of(header.graph))
        else:
            verify_graph(header.graph)
    except GraphError as e:
        raise FormatError(f"header.graph: {e}") from None
    except RecursionError:  # pragma: no cover - bounded by _check_loop_depth
        raise FormatError("header.graph: nested too deeply") from None

    # Every tensor entry is checked against the graph and the layout before any is read.
    declared = {p.name: p.type for p in header.graph.params}
    located: list[tuple[TensorEntry, str]] = []
    names: set[str] = set()
    for e in header.params:
        if e.name in names:
            raise FormatError(f"header.params: tensor '{e.name}' appears twice")
        names.add(e.name)
        _check_declared(e, declared, "header.params", f"param '{e.name}'")
        located.append((e, f"param '{e.name}'"))
    missing = declared.keys() - names
    if missing:
        raise FormatError(f"header.params: no tensor for parameters {sorted(missing)}")
    if header.optimizer is not None:
        for slot, es in header.optimizer.slots.items():
            names = set()
            for e in es:
                what = f"optimizer slot '{slot}' of '{e.name}'"
                if e.name in names:
                    raise FormatError(f"header.optimizer.slots: {what} appears twice")
                names.add(e.name)
                _check_declared(e, declared, "header.optimizer.slots", what)
                located.append((e, what))
    _check_layout(located, blobs)
    if check_crc:
        _check_contents(view, located)
    arrays = [_tensor(buf, e) for e, _ in located]

    params = {e.name: arrays[i] for i, e in enumerate(header.params)}
    optimizer = None
    if header.optimizer is not None:
        o = header.optimizer
        it = iter(arrays[len(header.params) :])
        slots = {slot: {e.name: next(it) for e in es} for slot, es in o.slots.items()}
        optimizer = {"kind": o.kind, "hyper": dict(o.hyper), "step": o.step, "slots": slots}
    return Model(
        graph=header.graph,
        params=params,
        optimizer=optimizer,
        rng=_rng_from(header.rng),
        step=header.step,
        metadata=_check_metadata(header.metadata),
        format_version=tuple(prelude.format_version),  # type: ignore[arg-type]
        producer=header.producer,
        min_reader_version=tuple(prelude.min_reader_version),  # type: ignore[arg-type]
    )


def _unpacker() -> msgpack.Unpacker:
    budget = MAX_OBJECTS  # items of all containers together (called per container: inlined)

    def pairs(items: list) -> dict:
        nonlocal budget
        budget -= len(items)
        if budget < 0:
            raise ValueError(f"more than {MAX_OBJECTS} objects in the header")
        out = dict(items)
        if len(out) != len(items):
            seen: set = set()
            dup = next(k for k, _ in items if k in seen or seen.add(k))  # type: ignore[func-returns-value]
            raise ValueError(f"duplicate map key {dup!r:.80}")
        return out

    def lists(items: list) -> list:
        nonlocal budget
        budget -= len(items)
        if budget < 0:
            raise ValueError(f"more than {MAX_OBJECTS} objects in the header")
        return items

    return msgpack.Unpacker(**_LIMITS, object_pairs_hook=pairs, list_hook=lists, use_list=True)


def _next(unpacker: msgpack.Unpacker, what: str, at: int) -> Any:
    try:
        return unpacker.unpack()
    except msgpack.OutOfData:
        raise FormatError(f"byte {at}: the file ends inside the {what}") from None
    except Exception as e:  # msgpack's own errors (limits, ext types, bad bytes, depth)
        raise FormatError(f"byte {at}: malformed {what}: {_explain(e)}") from None


def _explain(e: Exception) -> str:
    """msgpack's error, with the common hostile cases said plainly."""
    text = str(e)
    if isinstance(e, msgpack.StackError):
        return "nested too deeply (msgpack containers over 1024 levels deep)"
    if "max_ext_len" in text:
        return f"msgpack ext types are not allowed ({text})"
    if "max_bin_len" in text:
        return f"bin (raw bytes) values are not allowed here ({text})"
    return f"{type(e).__name__}: {text}"


def _validate(model: type[BaseModel], data: Any, where: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        loc = ".".join(str(p) for p in (where, *err["loc"]))
        more = f" (and {len(e.errors()) - 1} more problems)" if len(e.errors()) > 1 else ""
        raise FormatError(f"{loc}: {err['msg']}{more}") from None
    except RecursionError:  # pragma: no cover - msgpack's depth limit comes first
        raise FormatError(f"{where}: nested too deeply") from None


def _version_of(raw: Any, key: str) -> tuple[int, int]:
    v = raw.get(key)
    if isinstance(v, list) and len(v) == 2 and all(type(x) is int and 0 <= x <= 65535 for x in v):
        return v[0], v[1]
    raise FormatError(f"prelude.{key}: expected [major, minor] (two ints 0..65535), got {v!r:.80}")


def _check_version(raw: Any) -> None:
    """A reader takes a file iff the majors match and ``min_reader_version`` <= its own."""
    if not isinstance(raw, dict):
        raise FormatError(f"prelude: expected a map, got {type(raw).__name__}")
    fv = _version_of(raw, "format_version")
    need = _version_of(raw, "min_reader_version")
    file_v, need_v, ours = (f"{v[0]}.{v[1]}" for v in (fv, need, READER_VERSION))
    if fv[0] > READER_VERSION[0]:
        raise FormatError(
            f"this file is rgraph format {file_v}, a newer major version than this reader's"
            f" format {ours}: upgrade rgraph to read it"
        )
    if fv[0] < READER_VERSION[0]:
        raise FormatError(
            f"this file is rgraph format {file_v}, an older major version than this reader's"
            f" format {ours}: read it with an older rgraph and save it again"
        )
    if need > READER_VERSION:
        raise FormatError(
            f"this file needs an rgraph reader of format {need_v} or newer (it is written in"
            f" format {file_v}); this reader supports format {ours}: upgrade rgraph"
        )
    if need > fv:
        raise FormatError(
            f"prelude: min_reader_version {need_v} is newer than the file's format_version {file_v}"
        )


def _check_loop_depth(graph: GraphIR) -> None:
    """Loop bodies may nest, but not without bound (the compiler recurses into them)."""
    todo = [(graph, 0)]
    while todo:
        g, depth = todo.pop()
        if depth > MAX_LOOP_DEPTH:
            raise FormatError(
                f"header.graph: loop bodies nested deeper than {MAX_LOOP_DEPTH} levels"
            )
        todo.extend((body, depth + 1) for node in g.nodes for body in node.bodies.values())


def _check_declared(e: TensorEntry, declared: dict[str, Any], where: str, what: str) -> None:
    t = declared.get(e.name)
    if t is None:
        raise FormatError(f"{where}: {what} names no parameter of the graph")
    if e.dtype != t.dtype or list(e.shape) != list(t.shape):
        raise FormatError(f"{where}: {what} is {e.dtype}{list(e.shape)}, the graph declares {t}")


def _blob_ranges(view: memoryview, pos: int, nblobs: int) -> list[tuple[int, int]]:
    """Parse the pad and the blobs' bin32 headers; their payload ranges, end to end."""
    ranges = []
    for i in range(nblobs + 1):
        what = "pad" if i == 0 else f"blob {i - 1}"
        if pos + 5 > len(view):
            raise FormatError(
                f"byte {pos}: the file ends where the {what} should be (the top-level array"
                f" declares {nblobs} blobs)"
            )
        if view[pos] != 0xC6:
            raise FormatError(f"byte {pos}: expected the {what} as a msgpack bin32 (0xc6)")
        length = struct.unpack(">I", view[pos + 1 : pos + 5])[0]
        if pos + 5 + length > len(view):
            raise FormatError(f"byte {pos}: the {what} ({length} bytes) runs past the end")
        if i:
            ranges.append((pos + 5, pos + 5 + length))
        pos += 5 + length
    if pos != len(view):
        raise FormatError(f"byte {pos}: {len(view) - pos} trailing bytes after the last blob")
    return ranges


def _portable(data: Any) -> Any:
    """The dumped graph ``data`` with each node's source file named without its folders:
    a file exchanged with others does not tell where its author keeps their code."""
    if isinstance(data, dict):
        out = {key: _portable(value) for key, value in data.items()}
        loc = out.get("loc")
        if isinstance(loc, dict) and isinstance(loc.get("file"), str):
            out["loc"] = {**loc, "file": _file_name(loc["file"])}
        return out
    if isinstance(data, list):
        return [_portable(item) for item in data]
    return data


def _file_name(path: str) -> str:
    """``path``'s last part, whichever separator the saving system used."""
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def _check_layout(located: list[tuple[TensorEntry, str]], blobs: list[tuple[int, int]]) -> None:
    """Sizes agree with shapes, tensors are aligned, inside a blob and do not overlap."""
    spans = []
    for e, what in located:
        itemsize = np.dtype(e.dtype).itemsize
        expected = math.prod(e.shape) * itemsize  # Python ints: no overflow
        if expected != e.nbytes:
            raise FormatError(
                f"tensor {what}: shape {list(e.shape)} of {e.dtype} needs {expected} bytes,"
                f" the header says {e.nbytes}"
            )
        if e.offset % ALIGN:
            raise FormatError(f"tensor {what}: offset {e.offset} is not a multiple of {ALIGN}")
        if not any(start <= e.offset and e.offset + e.nbytes <= end for start, end in blobs):
            raise FormatError(
                f"tensor {what}: bytes {e.offset}..{e.offset + e.nbytes} are not inside a blob"
            )
        if e.nbytes:
            spans.append((e.offset, e.offset + e.nbytes, what))
    spans.sort()
    for (_, end, a), (start, _, b) in itertools.pairwise(spans):
        if start < end:
            raise FormatError(f"tensors {a} and {b} overlap at byte {start}")


def _check_contents(view: memoryview, located: list[tuple[TensorEntry, str]]) -> None:
    """Checksums, then bool bytes, tensor by tensor in table order."""
    data = [view[e.offset : e.offset + e.nbytes] for e, _ in located]
    for (e, what), d, crc in zip(located, data, _crc32s(data)):
        if crc != e.crc32:
            raise FormatError(
                f"tensor {what}: checksum mismatch at byte {e.offset}: data is corrupt"
            )
        if e.dtype == "bool" and e.nbytes and np.frombuffer(d, np.uint8).max() > 1:
            raise FormatError(f"tensor {what}: a bool byte is neither 0 nor 1")


def _tensor(buf: Any, e: TensorEntry) -> np.ndarray:
    """A tensor as a view into the file's bytes (already checked by :func:`_check_layout`)."""
    dtype = np.dtype(e.dtype).newbyteorder("<")
    arr = np.frombuffer(buf, dtype=dtype, count=math.prod(e.shape), offset=e.offset)
    return arr.reshape(e.shape)


def _rng_from(r: RngRecord | None) -> np.random.Generator | None:
    if r is None:
        return None
    bitgen = np.random.PCG64()
    try:
        bitgen.state = {
            "bit_generator": "PCG64",
            "state": {"state": int(r.state), "inc": int(r.inc)},
            "has_uint32": r.has_uint32,
            "uinteger": r.uinteger,
        }
    except (ValueError, TypeError, OverflowError) as e:
        raise FormatError(f"header.rng: not a valid PCG64 state: {e}") from None
    return np.random.Generator(bitgen)


def _check_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    _check_plain(metadata, "header.metadata")
    return metadata


def verify_tensors(path: str | os.PathLike) -> None:
    """Check every tensor's checksum (what a lazy :func:`load` skips)."""
    load(path)
