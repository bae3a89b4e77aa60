"""Fuzzing the model-file reader: whatever the bytes, ``decode`` returns a Model or raises
``FormatError``, never another exception; quickly (no hang) and without a large allocation.

The valid starting point is the tiny model of ``tests/data/attacks/make_attacks.py`` (with
optimiser state, RNG and metadata, under 1 KB): every truncation of it, random bytes, bit
flips, and mutations of its decoded header and prelude, re-encoded with the header's size
and CRC-32 recomputed so that each mutation gets past the checksum to the validation.
"""

from __future__ import annotations

import copy
import importlib.util
import sys
import time
import tracemalloc
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rgraph.errors import FormatError
from rgraph.io import format as fmt

DATA = Path(__file__).parent / "data" / "attacks"


def _import_attacks():
    spec = importlib.util.spec_from_file_location("make_attacks", DATA / "make_attacks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_attacks", module)
    spec.loader.exec_module(module)
    return module


mk = _import_attacks()

BASE = mk.assemble(mk.tiny_header(), mk.tiny_payload())
SLOW = 2.0  # seconds: a decode of a file this small taking longer counts as a hang
BIG = 32 * 2**20  # bytes: the most a decode of a file this small may allocate
FUZZ = settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def outcome(data: bytes) -> str:
    """Decode with and without tensor checksums; "ok" or "error", nothing else."""
    results = []
    for check_crc in (True, False):
        start = time.perf_counter()
        try:
            fmt.decode(data, check_crc=check_crc)
            results.append("ok")
        except FormatError as e:
            assert str(e), "a FormatError must say what is wrong"
            results.append("error")
        took = time.perf_counter() - start
        assert took < SLOW, f"decoding {len(data)} bytes took {took:.1f} s"
    return results[0]


def bounded(data: bytes) -> str:
    """:func:`outcome`, tracking allocations (numpy's included) to catch a huge one."""
    tracemalloc.start()
    try:
        result = outcome(data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < BIG, f"decoding {len(data)} bytes allocated {peak} bytes"
    return result


def test_the_base_file_loads():
    assert outcome(BASE) == "ok"


def test_every_truncation_is_an_error():
    for n in range(len(BASE)):
        with pytest.raises(FormatError):
            fmt.decode(BASE[:n])


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes(data):
    assert outcome(data) == "error"


@FUZZ
@given(st.integers(0, len(BASE)), st.binary(max_size=256))
def test_a_valid_prefix_then_random_bytes(cut, tail):
    outcome(BASE[:cut] + tail)


@FUZZ
@given(st.lists(st.integers(0, len(BASE) * 8 - 1), min_size=1, max_size=4))
def test_bit_flips(bits):
    data = bytearray(BASE)
    for bit in bits:
        data[bit // 8] ^= 1 << (bit % 8)
    outcome(bytes(data))


@FUZZ
@given(st.integers(0, len(BASE)), st.integers(0, 16), st.binary(max_size=16))
def test_spliced_bytes(at, length, new):
    outcome(BASE[:at] + new + BASE[at + length :])


def _header_span(data: bytes) -> tuple[int, int]:
    unpacker = msgpack.Unpacker(raw=False)
    unpacker.feed(data[5:])
    unpacker.skip()
    prelude = unpacker.unpack()
    start = 5 + unpacker.tell()
    return start, start + prelude["header_size"]


HEADER_AT, HEADER_END = _header_span(BASE)


@FUZZ
@given(st.lists(st.integers(0, (HEADER_END - HEADER_AT) * 8 - 1), min_size=1, max_size=3))
def test_header_bit_flips_with_a_valid_checksum(bits):
    # The CRC is recomputed, so the damaged msgpack reaches the decoder and the schema.
    header = bytearray(BASE[HEADER_AT:HEADER_END])
    for bit in bits:
        header[bit // 8] ^= 1 << (bit % 8)
    outcome(mk.assemble(None, mk.tiny_payload(), raw_header=bytes(header)))


# --- field-level mutations ----------------------------------------------------------------

NASTY = [
    None,
    True,
    False,
    0,
    -1,
    1,
    3,
    64,
    2**31,
    2**32,
    2**40,
    2**62,
    2**62 + 1,
    2**63,
    2**64 - 1,
    -(2**63),
    0.5,
    -0.0,
    float("nan"),
    float("inf"),
    "",
    "x" * 201,
    "B*T",
    "T",
    "float64",
    "bool",
    "object",
    "<f8",
    "RGRAPH",
    "scan",
    "W",
    "y",
    [],
    {},
    [2**20, 2**20],
    [2**62, 2**62],
    [2**40],
    [1] * 9,
    [-1],
    ["T"],
    [0.5],
    [True],
    [None],
    [1, 0],
    [2, 0],
    [1, 9],
    [65536, 0],
    {"": 1},
    {"kind": "zeros"},
    {"dtype": "float64", "shape": [2, 1]},
]

RAW = [
    mk.Raw(b"\xd4\x01\x00"),  # an ext type (fixext 1)
    mk.Raw(b"\xc7\x03\x05abc"),  # an ext 8
    mk.Raw(b"\xc4\x02\x80\x04"),  # a bin (a pickle's first bytes)
    mk.Raw(b"\xc1"),  # the byte msgpack never uses
    mk.Raw(b"\xdc\xff\xff"),  # an array16 that claims 65535 items and has none
    mk.Raw(b"\xdf\x7f\xff\xff\xff"),  # a map32 that claims 2**31 pairs
    mk.Raw(b"\xdb\x7f\xff\xff\xff"),  # a str32 that claims 2 GiB
    mk.Raw(b"\x82\xa1a\x01\xa1a\x02"),  # {"a": 1, "a": 2}
]

nasty = st.one_of(
    st.sampled_from(NASTY),
    st.sampled_from(RAW),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(),
    st.text(max_size=12),
    st.lists(st.integers(-2, 2**40), max_size=9),
    st.builds(lambda n: mk.Raw(b"\x91" * n + b"\xc0"), st.integers(1, 1500)),  # deep
    st.builds(lambda n: [0] * n, st.integers(0, 2000)),
    st.recursive(
        st.none() | st.integers(-3, 3) | st.text(max_size=3),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
        max_leaves=10,
    ),
)


def _scan_header() -> dict[str, Any]:
    h = mk.tiny_header()
    h["graph"] = mk.nested_loops(2)
    return h


BASES = [mk.tiny_header(), _scan_header()]


def _paths(value: Any, path: tuple = ()) -> list[tuple]:
    out = [path] if path else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, (*path, i))
    return out


PATHS = [(b, p) for b, h in enumerate(BASES) for p in _paths(h)]


def mutate(header: dict, path: tuple, kind: str, value: Any) -> Any:
    header = copy.deepcopy(header)
    parent = header
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    if kind == "replace":
        parent[key] = value
    elif kind == "wrap":
        parent[key] = [parent[key]]
    elif kind == "delete":
        del parent[key]
    elif kind == "extra" and isinstance(parent, dict):
        parent["zz_extra"] = value
    elif kind == "extra":
        parent.append(value)
    elif kind == "duplicate" and isinstance(parent, dict):
        # the same key again, as the parent map's last pair
        pairs = mk.Pairs([(k, v) for k, v in parent.items()] + [(key, value)])
        if len(path) == 1:
            return pairs
        grand = header
        for k in path[:-2]:
            grand = grand[k]
        grand[path[-2]] = pairs
    elif kind == "duplicate":
        parent.insert(key, parent[key])  # a list item twice (tensor entries, nodes, ...)
    return header


@FUZZ
@given(
    st.sampled_from(PATHS),
    st.sampled_from(["replace", "replace", "replace", "wrap", "delete", "extra", "duplicate"]),
    nasty,
)
def test_header_field_mutations(where, kind, value):
    base, path = where
    header = mutate(BASES[base], path, kind, value)
    bounded(mk.assemble(header, mk.tiny_payload()))


PRELUDE_KEYS = ["format_version", "min_reader_version", "header_size", "header_crc32", "zz"]


@FUZZ
@given(st.sampled_from(PRELUDE_KEYS), st.booleans(), nasty)
def test_prelude_field_mutations(key, remove, value):
    change = {key: None if remove else (mk.Raw(b"\xc0") if value is None else value)}
    bounded(mk.assemble(mk.tiny_header(), mk.tiny_payload(), prelude=change))


@FUZZ
@given(nasty, st.integers(0, 70000), st.sampled_from([True, False]))
def test_top_level_mutations(magic, count, with_header):
    header = mk.tiny_header() if with_header else mk.Raw(b"\xc0")
    bounded(mk.assemble(header, mk.tiny_payload(), magic=magic, count=count))


def test_huge_shapes_are_refused_before_allocation():
    # 2**40 elements, consistent everywhere except that the bytes are not in the file.
    for dims in ([2**40], [2**20, 2**20], [2**10] * 4, [2**62, 1], [2**31, 2**31]):
        h = mk.tiny_header()
        h["graph"]["params"][0]["type"]["shape"] = dims
        h["graph"]["nodes"], h["graph"]["outputs"], h["optimizer"] = [], ["W"], None
        h["params"][0]["shape"] = dims
        n = 8
        for d in dims:
            n *= d
        h["params"][0]["nbytes"] = min(n, 2**62)
        assert bounded(mk.assemble(h, mk.tiny_payload())) == "error"
