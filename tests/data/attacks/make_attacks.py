"""Hand-made hostile ``.rgraph`` files, one per attack, and the writer that makes them.

Run ``python tests/data/attacks/make_attacks.py`` to regenerate the files in this folder.
The output is deterministic: ``tests/test_format.py`` rebuilds every file in memory and
fails if a committed one is stale, then loads each and checks the error it must give.

The writer here (:func:`assemble`) is a second, independent implementation of
``docs/format.md`` (it does not import rgraph): given a header as plain data and the
tensor bytes, it lays out the file exactly as the spec says. The tests check that it
produces byte for byte what ``rg.save`` writes for the same model, then use it to build
files that ``rg.save`` would never write.
"""

from __future__ import annotations

import struct
import sys
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgpack

HERE = Path(__file__).resolve().parent
ALIGN = 64
MAGIC = "RGRAPH"


# --- a msgpack encoder that can also write what msgpack-python refuses to -------------


class Pairs(list):
    """A map written from a list of (key, value) pairs: keys may repeat."""


class Raw(bytes):
    """Bytes written into the msgpack stream as they are (already encoded)."""


class Absolute(int):
    """A tensor offset that :func:`assemble` must not shift (it is already absolute)."""


def pack(obj: Any) -> bytes:
    """msgpack bytes of ``obj``, with containers written in their smallest form (as
    msgpack-python does); :class:`Pairs` become maps that may repeat keys."""
    if isinstance(obj, Raw):
        return bytes(obj)
    if isinstance(obj, msgpack.ExtType):
        return msgpack.packb(obj)
    if isinstance(obj, Pairs):
        return _head(len(obj), 0x80, 0xDE) + b"".join(pack(k) + pack(v) for k, v in obj)
    if isinstance(obj, dict):
        return pack(Pairs(obj.items()))
    if isinstance(obj, (list, tuple)):
        return _head(len(obj), 0x90, 0xDC) + b"".join(pack(v) for v in obj)
    if isinstance(obj, Absolute):
        obj = int(obj)
    return msgpack.packb(obj, use_bin_type=True)


def _head(n: int, fix: int, c16: int) -> bytes:
    if n < 16:
        return bytes([fix | n])
    if n < 2**16:
        return bytes([c16]) + struct.pack(">H", n)
    return bytes([c16 + 1]) + struct.pack(">I", n)


def bin32(payload: bytes) -> bytes:
    return b"\xc6" + struct.pack(">I", len(payload)) + payload


# --- the tiny model every attack starts from ------------------------------------------


def tiny_graph() -> dict[str, Any]:
    """``y = W @ x`` with a float64 ``W`` (2, 2), as plain IR data (``docs/ir.md``)."""
    f64 = "float64"
    init = {"kind": "uniform", "value": 0.0, "low": -0.08, "high": 0.08, "mean": 0.0, "std": 1.0}
    return {
        "name": "tiny",
        "inputs": [{"name": "x", "type": {"dtype": f64, "shape": [2, 1]}}],
        "params": [{"name": "W", "type": {"dtype": f64, "shape": [2, 2]}, "init": init}],
        "consts": [],
        "nodes": [
            {
                "op": "matmul",
                "inputs": ["W", "x"],
                "outputs": [{"name": "y", "type": {"dtype": f64, "shape": [2, 1]}}],
                "attrs": {},
                "bodies": {},
                "loc": None,
            }
        ],
        "outputs": ["y"],
    }


W_BYTES = struct.pack("<4d", 1.0, 2.0, 3.0, 4.0)  # W = [[1, 2], [3, 4]]
CACHE_BYTES = struct.pack("<4d", 0.5, 0.25, 0.125, 0.0625)  # RMSProp's cache of W
HYPER = {"lr": 0.01, "regc": 1e-06, "clipval": 5.0, "decay": 0.999, "eps": 1e-08}
RNG = {"state": 2**100 + 12345, "inc": 2**64 + 7}


def entry(name: str, data: bytes, offset: int, shape: list[int]) -> dict[str, Any]:
    """A tensor entry; ``offset`` is relative to the first blob's payload."""
    return {
        "name": name,
        "dtype": "float64",
        "shape": shape,
        "offset": offset,
        "nbytes": len(data),
        "crc32": zlib.crc32(data),
    }


def tiny_header() -> dict[str, Any]:
    """The header of the tiny model with optimiser state, RNG, step and metadata.

    Tensor offsets are relative to the blob payload; :func:`assemble` makes them absolute.
    """
    return {
        "producer": "rgraph",
        "graph": tiny_graph(),
        "params": [entry("W", W_BYTES, 0, [2, 2])],
        "optimizer": {
            "kind": "rmsprop",
            "hyper": dict(HYPER),
            "step": 3,
            "slots": {"cache": [entry("W", CACHE_BYTES, 64, [2, 2])]},
        },
        "rng": {
            "bit_generator": "PCG64",
            "state": str(RNG["state"]),
            "inc": str(RNG["inc"]),
            "has_uint32": 0,
            "uinteger": 0,
        },
        "step": 3,
        "metadata": {"vocab": {"a": 1, "b": 2}},
    }


def tiny_payload() -> bytes:
    """The blob payload for :func:`tiny_header`: W at 0, its cache at 64."""
    return W_BYTES + bytes(64 - len(W_BYTES)) + CACHE_BYTES


# --- laying out a file ----------------------------------------------------------------


def _entries(header: Any):
    """Every tensor entry of a header (skipping anything malformed)."""
    if not isinstance(header, dict):
        return
    params = header.get("params")
    if isinstance(params, list):
        yield from (e for e in params if isinstance(e, dict))
    opt = header.get("optimizer")
    slots = opt.get("slots") if isinstance(opt, dict) else None
    if isinstance(slots, dict):
        for es in slots.values():
            if isinstance(es, list):
                yield from (e for e in es if isinstance(e, dict))


def _shift(header: Any, base: int) -> Any:
    """A copy of ``header`` with relative int offsets made absolute."""
    if not isinstance(header, dict):
        return header
    out = dict(header)
    if isinstance(out.get("params"), list):
        out["params"] = [dict(e) if isinstance(e, dict) else e for e in out["params"]]
    opt = out.get("optimizer")
    if isinstance(opt, dict) and isinstance(opt.get("slots"), dict):
        opt = out["optimizer"] = dict(opt)
        opt["slots"] = {
            k: [dict(e) if isinstance(e, dict) else e for e in v] if isinstance(v, list) else v
            for k, v in opt["slots"].items()
        }
    for e in _entries(out):
        off = e.get("offset")
        if type(off) is int and off + base < 2**64:  # (else not a msgpack int: as is)
            e["offset"] = off + base
    return out


def assemble(
    header: Any,
    payload: bytes = b"",
    *,
    prelude: dict[str, Any] | None = None,
    version: tuple[list[int], list[int]] = ([1, 0], [1, 0]),
    magic: Any = MAGIC,
    count: int | None = None,
    trailing: bytes = b"",
    raw_header: bytes | None = None,
    extra_pairs: Sequence[tuple[Any, Any]] = (),
) -> bytes:
    """A file as ``docs/format.md`` lays it out.

    ``header`` is plain data whose tensor offsets are relative to the payload of the one
    blob (:class:`Absolute` offsets are left alone); the header's size and CRC-32 go in the
    prelude unless ``prelude`` overrides them (``prelude`` entries replace or add fields;
    a value of None removes one). ``raw_header`` replaces the encoded header bytes;
    ``extra_pairs`` are written into the header map after its own items (repeats allowed).
    """
    base = 0
    for _ in range(8):
        shifted = _shift(header, base)
        if extra_pairs:
            shifted = Pairs([*shifted.items(), *extra_pairs])
        body = raw_header if raw_header is not None else pack(shifted)
        fields: dict[str, Any] = {
            "format_version": version[0],
            "min_reader_version": version[1],
            "header_size": len(body),
            "header_crc32": zlib.crc32(body),
        }
        for k, v in (prelude or {}).items():
            if v is None:
                fields.pop(k, None)
            else:
                fields[k] = v
        n = 5 if count is None else count
        head = b"\xdd" + struct.pack(">I", n) + pack(magic) + pack(fields) + body
        pad = -(len(head) + 5 + 5) % ALIGN
        start = len(head) + 5 + pad + 5
        if start == base:
            break
        base = start
    else:  # pragma: no cover
        raise RuntimeError("offsets did not settle")
    blob = payload + bytes(-(start + len(payload) + 5) % ALIGN)
    return head + bin32(bytes(pad)) + bin32(blob) + trailing


# --- the attacks ----------------------------------------------------------------------


def _with(**changes: Any) -> dict[str, Any]:
    h = tiny_header()
    h.update(changes)
    return h


def _param(**changes: Any) -> dict[str, Any]:
    e = entry("W", W_BYTES, 0, [2, 2])
    e.update(changes)
    return _with(params=[e])


def _graph(**changes: Any) -> dict[str, Any]:
    g = tiny_graph()
    g.update(changes)
    return _with(graph=g)


def _nested(depth: int) -> Raw:
    """``[[[...[0]...]]]``, ``depth`` lists deep (written directly: no recursion here)."""
    return Raw(b"\x91" * depth + b"\x00")


def _cycle() -> dict[str, Any]:
    t = {"dtype": "float64", "shape": [2, 1]}
    nodes = [
        {"op": "tanh", "inputs": ["b"], "outputs": [{"name": "a", "type": t}]},
        {"op": "tanh", "inputs": ["a"], "outputs": [{"name": "b", "type": t}]},
        {"op": "matmul", "inputs": ["W", "b"], "outputs": [{"name": "y", "type": t}]},
    ]
    return _graph(nodes=nodes)


def _duplicate_keys() -> bytes:
    # msgpack-python cannot write a map with a repeated key; assemble() can.
    return assemble(tiny_header(), tiny_payload(), extra_pairs=[("step", 4)])


PNG = bytes.fromhex("89504e470d0a1a0a0000000d49484452000000010000000108060000001f15c489")


def attacks() -> dict[str, bytes]:
    """File name -> bytes of every hostile file (the test table says what each must give)."""
    payload = tiny_payload()
    out = {
        "empty.rgraph": b"",
        "png.rgraph": PNG,
        "not_rgraph_magic.rgraph": assemble(tiny_header(), payload, magic="PICKLE"),
        "newer_major.rgraph": assemble(
            tiny_header(), payload, version=([2, 0], [2, 0]), prelude={"codec": "zstd"}
        ),
        "newer_min_reader.rgraph": assemble(tiny_header(), payload, version=([1, 7], [1, 7])),
        "older_major.rgraph": assemble(tiny_header(), payload, version=([0, 9], [0, 9])),
        "header_size_past_end.rgraph": assemble(
            tiny_header(), payload, prelude={"header_size": 1_000_000}
        ),
        "header_crc.rgraph": assemble(tiny_header(), payload, prelude={"header_crc32": 12345}),
        "array_count.rgraph": assemble(tiny_header(), payload, count=9),
        "trailing_bytes.rgraph": assemble(tiny_header(), payload, trailing=b"\x00\x00\x00"),
        "huge_shape.rgraph": assemble(_huge_shape(), payload),
        "negative_dim.rgraph": assemble(_param(shape=[-2, 2]), payload),
        "nbytes_mismatch.rgraph": assemble(_param(nbytes=16), payload),
        "offset_outside_blob.rgraph": assemble(_param(offset=Absolute(0)), payload),
        "offset_past_end.rgraph": assemble(_param(offset=2**40), payload),
        "misaligned_offset.rgraph": assemble(_param(offset=8), payload),
        "overlapping_tensors.rgraph": assemble(_overlap(), payload),
        "object_dtype.rgraph": assemble(_param(dtype="object"), payload),
        "tensor_crc.rgraph": assemble(_param(crc32=zlib.crc32(W_BYTES) ^ 1), payload),
        "duplicate_keys.rgraph": _duplicate_keys(),
        "duplicate_tensor.rgraph": assemble(
            _with(params=[entry("W", W_BYTES, 0, [2, 2])] * 2), payload
        ),
        "ext_type.rgraph": assemble(
            _with(metadata={"x": msgpack.ExtType(1, b"os.system")}), payload
        ),
        "bin_in_header.rgraph": assemble(_with(metadata={"x": b"\x80\x04"}), payload),
        "deep_nesting.rgraph": assemble(_with(metadata={"x": _nested(5000)}), payload),
        "deep_metadata.rgraph": assemble(_with(metadata={"x": _nested(40)}), payload),
        "unknown_op.rgraph": assemble(_unknown_op(), payload),
        "deep_loops.rgraph": assemble(_with(graph=nested_loops(33)), payload),
        "bool_as_int.rgraph": assemble(_param(nbytes=True), payload),
        "undeclared_tensor.rgraph": assemble(
            _with(params=[entry("W", W_BYTES, 0, [2, 2]), entry("V", W_BYTES, 0, [2, 2])]),
            payload,
        ),
        "cycle.rgraph": assemble(_cycle(), payload),
        "extra_field.rgraph": assemble(_with(code="__import__('os')"), payload),
        "missing_field.rgraph": assemble(
            {k: v for k, v in tiny_header().items() if k != "params"}, payload
        ),
    }
    return out


def _huge_shape() -> dict[str, Any]:
    big = [2**20, 2**20]  # 2**40 elements: 8 TiB of float64
    g = tiny_graph()
    g["params"][0]["type"]["shape"] = big
    g["nodes"] = []
    g["outputs"] = ["W"]
    e = entry("W", W_BYTES, 0, big)
    e["nbytes"] = 8 * 2**40
    return _with(graph=g, params=[e], optimizer=None)


def _overlap() -> dict[str, Any]:
    h = tiny_header()
    h["optimizer"]["slots"]["cache"][0]["offset"] = 0  # the cache is W's bytes too
    h["optimizer"]["slots"]["cache"][0]["crc32"] = zlib.crc32(W_BYTES)
    return h


def nested_loops(depth: int) -> dict[str, Any]:
    """The tiny graph plus a scan whose body holds a scan whose body ... ``depth`` deep."""
    t = {"dtype": "float64", "shape": [2, 1]}
    ys = {"dtype": "float64", "shape": [3, 2, 1]}
    body: dict[str, Any] = {
        "name": "b0",
        "inputs": [{"name": "c", "type": t}],
        "outputs": ["c", "c"],
    }
    for i in range(depth):
        scan = {
            "op": "scan",
            "inputs": ["c"],
            "outputs": [{"name": "d", "type": t}, {"name": "e", "type": ys}],
            "attrs": {"num_carry": 1, "num_xs": 0, "length": 3},
            "bodies": {"body": body},
        }
        body = {
            "name": f"b{i + 1}",
            "inputs": [{"name": "c", "type": t}],
            "nodes": [scan],
            "outputs": ["d", "d"],
        }
    g = tiny_graph()
    outer = dict(body["nodes"][0], inputs=["x"]) if depth else None
    if outer is not None:
        g["nodes"].append(outer)
        g["outputs"].append("d")
    return g


def _unknown_op() -> dict[str, Any]:
    g = tiny_graph()
    g["nodes"][0]["op"] = "pickle.loads"
    return _with(graph=g)


def main(argv: list[str]) -> None:
    for old in HERE.glob("*.rgraph"):
        old.unlink()
    for name, data in attacks().items():
        (HERE / name).write_bytes(data)
    print(f"wrote {len(attacks())} files to {HERE}")


if __name__ == "__main__":
    main(sys.argv[1:])
