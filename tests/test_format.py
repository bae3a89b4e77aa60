"""The model file (``docs/format.md``): round trips, exact resume, layout, versions, safety.

Hostile files live in ``tests/data/attacks/`` (made by ``make_attacks.py`` there, which is
also an independent writer of the format); :data:`ATTACKS` says what each must give.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import struct
import sys
import tracemalloc
import zlib
from pathlib import Path

import msgpack
import numpy as np
import pytest

import rgraph as rg
from rgraph.errors import FormatError
from rgraph.io import format as fmt
from rgraph.io import schema
from tests.saved import as_saved

DATA = Path(__file__).parent / "data" / "attacks"
DOCS = Path(__file__).parent.parent / "docs"


def _import_attacks():
    spec = importlib.util.spec_from_file_location("make_attacks", DATA / "make_attacks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_attacks", module)
    spec.loader.exec_module(module)
    return module


mk = _import_attacks()


# --- models used below -----------------------------------------------------------------


def lm_graph() -> rg.Graph:
    g = rg.Graph("lm")
    rg.nn.language_model(g, vocab=6, hidden_sizes=[5, 4], letter_size=3)
    return g


def batch_of(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A batch drawn with ``rng`` (so that resuming must restore the RNG exactly)."""
    n = int(rng.integers(1, 4))
    seqs = [rng.integers(1, 6, size=int(rng.integers(1, 7))).tolist() for _ in range(n)]
    return rg.train.pad_sequences(seqs)


def trained(steps: int = 3, losses: list | None = None):
    """An LM trained a few steps with RMSProp: trainer and the RNG that drew its batches."""
    g = lm_graph()
    trainer = rg.Trainer(g, rg.RMSProp(lr=0.05), seed=1)
    rng = np.random.default_rng(7)
    for _ in range(steps):
        loss = trainer.step(batch_of(rng)).loss
        if losses is not None:
            losses.append(loss)
    return g, trainer, rng


VOCAB = {"letterToIndex": {"a": 1, "b": 2, "é": 3}, "indexToLetter": {"1": "a", "2": "b"}}


def mixed_graph() -> rg.Graph:
    """Params of every dtype: float64 and float32 used in ops, int32/int64/bool stored."""
    g = rg.Graph("mixed")
    x = g.input("x", (3, "B"))
    z = g.input("z", (2, "B"), "float32")
    W = g.param("W", (2, 3), init="uniform")
    b = g.param("b", (2, 1))
    V = g.param("V", (2, 2), "float32", init="uniform")
    g.param("ids", (4,), "int64")
    g.param("counts", (2, 3), "int32")
    g.param("flags", (5,), "bool")
    g.param("empty", (0, 3))
    y = g.output((W @ x + b).tanh(), name="y")
    y32 = g.output((V @ z).sigmoid(), name="y32")
    g.output(g.sum(y * y) + g.cast(g.sum(y32 * y32), dtype="float64"), name="loss")
    return g


def mixed_params() -> dict[str, np.ndarray]:
    params = rg.init_params(mixed_graph(), 3)
    r = np.random.default_rng(5)
    params["ids"] = r.integers(-(2**62), 2**62, size=4, dtype=np.int64)
    params["counts"] = r.integers(-(2**31), 2**31, size=(2, 3), dtype=np.int32)
    params["flags"] = np.array([True, False, True, True, False])
    # Values that a careless text or float path would change.
    params["W"][0, :] = [-0.0, np.nextafter(0.0, 1.0), np.nan]
    params["V"][1, 1] = np.float32(np.inf)
    return params


def save_bytes(tmp_path: Path, *args, name: str = "m.rgraph", **kwargs) -> bytes:
    path = tmp_path / name
    rg.save(path, *args, **kwargs)
    return path.read_bytes()


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


# --- round trips -------------------------------------------------------------------------


def test_save_load_save_is_byte_identical(tmp_path):
    g, trainer, rng = trained()
    first = save_bytes(
        tmp_path,
        g,
        trainer.params,
        optimizer=trainer.optimizer,
        rng=rng,
        step=trainer.step_count,
        metadata={"vocab": VOCAB, "hidden": [5, 4], "temperature": 0.7, "note": None},
    )
    m = rg.load(tmp_path / "m.rgraph")
    assert m.step == 3 and m.optimizer["step"] == 3 and m.optimizer["kind"] == "rmsprop"
    assert m.metadata["vocab"] == VOCAB and m.metadata["temperature"] == 0.7
    assert m.format_version == fmt.FORMAT_VERSION and m.producer == "rgraph"
    second = save_bytes(
        tmp_path,
        m.graph,
        m.params,
        optimizer=m.optimizer,
        rng=m.rng,
        step=m.step,
        metadata=m.metadata,
        name="again.rgraph",
    )
    assert first == second
    # The optimiser state came back bit for bit (RMSProp's cache is in the file).
    state = trainer.optimizer.state_dict()
    assert m.optimizer["hyper"] == state["hyper"]
    assert m.optimizer["slots"].keys() == state["slots"].keys() == {"cache"}
    for name, arr in state["slots"]["cache"].items():
        assert same_bits(m.optimizer["slots"]["cache"][name], arr)


def test_saved_source_locations_name_files_without_their_folders(tmp_path):
    # A model file goes to other people: it names the script that made each node (for
    # error messages), not where its author keeps it.
    g = lm_graph()
    ir = g.ir
    first = ir.nodes[0]
    windows = first.loc.model_copy(update={"file": "C:\\Users\\me\\model.py"})
    ir = ir.replace(nodes=(first.model_copy(update={"loc": windows}), *ir.nodes[1:]))
    folder = str(Path(__file__).parent)
    assert any(folder in n.loc.file for n in ir.nodes[1:])
    rg.save(tmp_path / "m.rgraph", ir, rg.init_params(g))
    raw = (tmp_path / "m.rgraph").read_bytes()
    assert folder.encode() not in raw and b"Users" not in raw
    loaded = rg.load(tmp_path / "m.rgraph").graph

    def locs(graph):
        for n in graph.nodes:
            yield n.loc
            for body in n.bodies.values():
                yield from locs(body)

    assert {loc.file for loc in locs(loaded) if loc is not None} == {
        "model.py",
        Path(__file__).name,
    }


def test_params_come_back_bit_for_bit_in_every_dtype(tmp_path):
    g, params = mixed_graph(), mixed_params()
    rg.save(tmp_path / "m.rgraph", g, params)
    loaded = rg.load(tmp_path / "m.rgraph").params
    assert loaded.keys() == params.keys()
    for name, arr in params.items():
        assert same_bits(loaded[name], arr), name
        assert loaded[name].dtype.byteorder in "=<|"
    assert np.isnan(loaded["W"][0, 2]) and np.signbit(loaded["W"][0, 0])


def test_big_endian_arrays_are_stored_little_endian(tmp_path):
    g = rg.Graph("be")
    g.output(g.param("W", (2, 3)) * 2.0, name="y")
    W = np.arange(6.0).reshape(2, 3).astype(">f8")
    data = save_bytes(tmp_path, g, {"W": W})
    assert np.arange(6.0).astype("<f8").tobytes() in data
    loaded = rg.load(tmp_path / "m.rgraph").params["W"]
    assert np.array_equal(loaded, W) and loaded.dtype == np.dtype("<f8")


def test_loaded_graph_compiles_to_bit_identical_outputs_and_gradients(tmp_path):
    g, params = mixed_graph(), mixed_params()
    params["W"][0, 2] = 0.25  # finite values, so that gradients are comparable
    params["V"][1, 1] = -0.5
    rg.save(tmp_path / "m.rgraph", g, params)
    m = rg.load(tmp_path / "m.rgraph")
    assert m.graph == as_saved(g.ir) and str(m.graph) == str(as_saved(g.ir))
    r = np.random.default_rng(0)
    feeds = {"x": r.normal(size=(3, 4)), "z": r.normal(size=(2, 4)).astype(np.float32)}
    before = rg.compile(g, loss="loss").run(feeds, params)
    after = rg.compile(m.graph, loss="loss").run(feeds, m.params)
    assert before.outputs.keys() == after.outputs.keys()
    for name in before.outputs:
        assert same_bits(np.asarray(after.outputs[name]), np.asarray(before.outputs[name]))
    assert before.grads.keys() == after.grads.keys() == {"W", "b", "V", "empty"}
    for name in before.grads:
        assert same_bits(after.grads[name], before.grads[name]), name


def test_resumed_training_continues_bit_identically(tmp_path):
    # One run of 6 steps without stopping...
    straight_losses: list[float] = []
    _, trainer, rng = trained(steps=6, losses=straight_losses)
    # ...and one that stops after 3, saves, loads in a fresh Trainer and does 3 more.
    first_losses: list[float] = []
    g2, first, rng2 = trained(steps=3, losses=first_losses)
    assert first_losses == straight_losses[:3]
    rg.save(
        tmp_path / "ckpt.rgraph",
        g2,
        first.params,
        optimizer=first.optimizer,
        rng=rng2,
        step=first.step_count,
        metadata={"vocab": VOCAB},
    )
    del first, rng2
    m = rg.load(tmp_path / "ckpt.rgraph")
    opt = rg.Optimizer.from_state_dict(m.optimizer)
    resumed = rg.Trainer(m.graph, opt, params=m.params, step=m.step)
    resumed_losses = [resumed.step(batch_of(m.rng)).loss for _ in range(3)]
    assert resumed_losses == straight_losses[3:]
    assert len(set(straight_losses)) == 6  # (training does move)
    assert resumed.step_count == trainer.step_count == 6
    assert resumed.params.keys() == trainer.params.keys()
    for name in trainer.params:
        assert same_bits(resumed.params[name], trainer.params[name]), name
    a, b = opt.state_dict(), trainer.optimizer.state_dict()
    assert a["step"] == b["step"] == 6
    for name, arr in b["slots"]["cache"].items():
        assert same_bits(a["slots"]["cache"][name], arr), name
    assert m.rng.bit_generator.state == rng.bit_generator.state


@pytest.mark.parametrize(
    "opt", [rg.RMSProp(), rg.SGD(lr=0.1), rg.SGD(lr=0.1, momentum=0.9), rg.Adam()]
)
def test_every_optimizer_state_round_trips_even_before_its_first_step(tmp_path, opt):
    g = rg.Graph("o")
    g.output(g.sum(g.param("W", (2, 3)) * 2.0), name="loss")
    params = {"W": np.ones((2, 3))}
    for steps in (0, 2):
        for _ in range(steps):
            opt.step(params, {"W": np.full((2, 3), 0.5)})
        rg.save(tmp_path / "m.rgraph", g, params, optimizer=opt)
        state = rg.load(tmp_path / "m.rgraph").optimizer
        again = rg.Optimizer.from_state_dict(state)
        want, got = opt.state_dict(), again.state_dict()
        assert got["kind"] == want["kind"] and got["hyper"] == want["hyper"]
        assert got["step"] == want["step"] == steps and got["slots"].keys() == want["slots"].keys()
        for slot, arrays in want["slots"].items():
            assert arrays.keys() == got["slots"][slot].keys()
            assert all(same_bits(got["slots"][slot][k], v) for k, v in arrays.items())


def test_rng_state_round_trips_mid_stream(tmp_path):
    g = rg.Graph("r")
    g.output(g.param("W", (1,)) * 1.0, name="y")
    rng = np.random.default_rng(123)
    rng.random(3)
    rng.integers(0, 10, dtype=np.int32)  # leaves a buffered 32-bit half (has_uint32)
    assert rng.bit_generator.state["has_uint32"] == 1
    rg.save(tmp_path / "m.rgraph", g, {"W": np.zeros(1)}, rng=rng)
    loaded = rg.load(tmp_path / "m.rgraph").rng
    assert loaded.bit_generator.state == rng.bit_generator.state
    assert (
        loaded.integers(0, 2**31, 5, dtype=np.int32).tolist()
        == rng.integers(0, 2**31, 5, dtype=np.int32).tolist()
    )


def test_lazy_load_gives_read_only_views_equal_to_eager(tmp_path):
    g, params = mixed_graph(), mixed_params()
    rg.save(tmp_path / "m.rgraph", g, params)
    eager = rg.load(tmp_path / "m.rgraph")
    lazy = rg.load(tmp_path / "m.rgraph", lazy=True)
    assert lazy.graph == eager.graph
    for name, arr in eager.params.items():
        assert same_bits(lazy.params[name], arr)
        assert not lazy.params[name].flags.writeable
        assert eager.params[name].flags.writeable  # an optimiser can update it in place
    with pytest.raises(ValueError):
        lazy.params["W"][0, 0] = 1.0


def test_lazy_load_skips_tensor_checksums_and_verify_tensors_checks_them(tmp_path):
    g, params = mixed_graph(), mixed_params()
    path = tmp_path / "m.rgraph"
    rg.save(path, g, params)
    data = bytearray(path.read_bytes())
    entry = _entries(bytes(data))["W"]
    data[entry["offset"] + 9] ^= 0x10
    path.write_bytes(bytes(data))
    lazy = rg.load(path, lazy=True)
    assert not same_bits(lazy.params["W"], params["W"])
    with pytest.raises(FormatError, match="param 'W': checksum mismatch"):
        fmt.verify_tensors(path)


def test_model_with_no_params_round_trips(tmp_path):
    g = rg.Graph("noparams")
    x = g.input("x", (2,))
    g.output(x * 3.0, name="y")
    data = save_bytes(tmp_path, g, {})
    m = rg.load(tmp_path / "m.rgraph")
    assert m.params == {} and m.optimizer is None and m.rng is None and m.step is None
    assert m.metadata == {} and msgpack.unpackb(data)[0] == "RGRAPH"


# --- the layout ----------------------------------------------------------------------------


def _entries(data: bytes) -> dict[str, dict]:
    header = msgpack.unpackb(data)[2]
    return {e["name"]: e for e in header["params"]}


def test_file_is_one_msgpack_array_with_aligned_tensors(tmp_path):
    g, trainer, rng = trained()
    data = save_bytes(tmp_path, g, trainer.params, optimizer=trainer.optimizer, rng=rng)
    # Any msgpack library reads the whole file as one array (bin32 items included).
    top = msgpack.unpackb(data, raw=False)
    magic, prelude, header, pad, *blobs = top
    assert data[0] == 0xDD and struct.unpack(">I", data[1:5])[0] == len(top) == 4 + len(blobs)
    assert magic == "RGRAPH" and len(blobs) == 1
    assert prelude["format_version"] == [1, 0] and prelude["min_reader_version"] == [1, 0]
    head = msgpack.packb(header)
    assert prelude["header_size"] == len(head) and prelude["header_crc32"] == zlib.crc32(head)
    assert set(pad) <= {0}
    # The blob's payload starts 64-byte aligned; so does every tensor; gaps are zeros.
    blob_at = len(data) - len(blobs[0])
    # (each blob is padded so that a following blob's payload would be aligned too)
    assert blob_at % 64 == 0 and (len(data) + 5) % 64 == 0
    slots = [e for es in header["optimizer"]["slots"].values() for e in es]
    entries = header["params"] + slots
    assert len(entries) == 2 * len(trainer.params)
    covered = bytearray(len(data))
    for e in entries:
        assert e["offset"] % 64 == 0 and blob_at <= e["offset"] <= len(data) - e["nbytes"]
        raw = data[e["offset"] : e["offset"] + e["nbytes"]]
        assert zlib.crc32(raw) == e["crc32"]
        covered[e["offset"] : e["offset"] + e["nbytes"]] = b"\x01" * e["nbytes"]
    for e in header["params"]:
        assert raw_equal(data, e, trainer.params[e["name"]])
    gaps = bytes(b for b, c in zip(data[blob_at:], covered[blob_at:]) if not c)
    assert set(gaps) <= {0}


def raw_equal(data: bytes, e: dict, arr: np.ndarray) -> bool:
    little = arr.astype(arr.dtype.newbyteorder("<"))
    return data[e["offset"] : e["offset"] + e["nbytes"]] == little.tobytes()


def test_an_independent_writer_produces_the_same_bytes(tmp_path):
    # make_attacks.assemble follows docs/format.md without importing rgraph.
    m = fmt.decode(mk.assemble(mk.tiny_header(), mk.tiny_payload()))
    assert m.params["W"].tolist() == [[1.0, 2.0], [3.0, 4.0]]
    assert m.optimizer["slots"]["cache"]["W"].tolist() == [[0.5, 0.25], [0.125, 0.0625]]
    assert m.rng.bit_generator.state["state"] == mk.RNG
    data = save_bytes(
        tmp_path,
        rg.GraphIR.model_validate(mk.tiny_graph()),
        m.params,
        optimizer=m.optimizer,
        rng=m.rng,
        step=m.step,
        metadata=m.metadata,
    )
    assert data == mk.assemble(mk.tiny_header(), mk.tiny_payload())


def test_large_models_are_split_into_several_blobs(tmp_path, monkeypatch):
    # Blobs are msgpack bin32 (< 4 GiB): shrink the limit to see the split without 4 GiB.
    monkeypatch.setattr(fmt, "MAX_BLOB", 300)
    g = rg.Graph("split")
    ps = [g.param(f"p{i}", (3, 4)) for i in range(5)]  # 96 bytes each
    g.output(g.sum(ps[0]) + g.sum(ps[4]), name="y")
    params = {f"p{i}": np.full((3, 4), float(i)) for i in range(5)}
    data = save_bytes(tmp_path, g, params)
    top = msgpack.unpackb(data)
    assert len(top) >= 6 and all(len(b) <= 300 for b in top[4:])
    loaded = rg.load(tmp_path / "m.rgraph").params
    assert all(same_bits(loaded[k], v) for k, v in params.items())


def test_tensors_over_4_gib_are_refused_before_anything_is_written(tmp_path):
    g = rg.Graph("huge")
    g.output(g.param("W", (2**30, 5)) * 1.0, name="y")
    huge = np.broadcast_to(np.zeros(1), (2**30, 5))  # 40 GiB, but a zero-stride view
    with pytest.raises(FormatError, match="tensors over 4 GiB - 1 are not supported"):
        rg.save(tmp_path / "m.rgraph", g, {"W": huge})
    assert list(tmp_path.iterdir()) == []


# --- versions ------------------------------------------------------------------------------


def with_prelude(data: bytes, **changes) -> bytes:
    """``data`` with prelude fields changed in place (the encoding keeps its length)."""
    prelude = msgpack.unpackb(data)[1]
    old = msgpack.packb(prelude)
    new = msgpack.packb({**prelude, **changes})
    assert len(new) == len(old) and data.count(old) == 1
    return data.replace(old, new)


@pytest.fixture
def small_file(tmp_path) -> bytes:
    g, params = mixed_graph(), mixed_params()
    return save_bytes(tmp_path, g, params, metadata={"vocab": VOCAB})


def test_newer_major_version_is_refused_naming_both_versions(small_file):
    data = with_prelude(small_file, format_version=[2, 0], min_reader_version=[2, 0])
    with pytest.raises(FormatError, match=r"format 2\.0.*newer major.*format 1\.0.*upgrade"):
        fmt.decode(data)
    # Even if its minimum reader is old: another major means another layout.
    data = with_prelude(small_file, format_version=[2, 1], min_reader_version=[1, 0])
    with pytest.raises(FormatError, match=r"2\.1.*1\.0"):
        fmt.decode(data)


def test_newer_min_reader_version_is_refused_naming_both_versions(small_file):
    data = with_prelude(small_file, format_version=[1, 5], min_reader_version=[1, 5])
    with pytest.raises(
        FormatError,
        match=r"needs an rgraph reader of format 1\.5.*supports"
        r" format 1\.0",
    ):
        fmt.decode(data)


def test_versions_a_reader_accepts(small_file, monkeypatch):
    expected = fmt.decode(small_file)
    # A newer minor that asks only for 1.0 (its writer used nothing new) loads.
    newer = fmt.decode(with_prelude(small_file, format_version=[1, 3]))
    assert newer.format_version == (1, 3) and newer.graph == expected.graph
    # A newer reader reads older and equal minors, up to its own.
    monkeypatch.setattr(fmt, "READER_VERSION", (1, 3))
    for fv, need in [([1, 0], [1, 0]), ([1, 2], [1, 2]), ([1, 3], [1, 3]), ([1, 9], [1, 3])]:
        m = fmt.decode(with_prelude(small_file, format_version=fv, min_reader_version=need))
        assert m.format_version == tuple(fv)
        assert all(same_bits(m.params[k], v) for k, v in expected.params.items())
    with pytest.raises(FormatError, match=r"1\.4.*1\.3"):
        fmt.decode(with_prelude(small_file, format_version=[1, 4], min_reader_version=[1, 4]))


def test_older_major_and_inconsistent_versions_are_refused(small_file, monkeypatch):
    with pytest.raises(FormatError, match=r"format 0\.9, an older major.*format 1\.0"):
        fmt.decode(with_prelude(small_file, format_version=[0, 9], min_reader_version=[0, 9]))
    # A writer never asks for a reader newer than its own format.
    monkeypatch.setattr(fmt, "READER_VERSION", (1, 5))
    data = with_prelude(small_file, format_version=[1, 2], min_reader_version=[1, 3])
    with pytest.raises(
        FormatError,
        match=r"min_reader_version 1\.3 is newer than the file's"
        r" format_version 1\.2",
    ):
        fmt.decode(data)


def test_version_is_checked_before_the_rest_of_a_newer_prelude():
    # A 2.0 prelude may have fields 1.0 does not know: the version error comes first.
    data = mk.assemble(
        mk.tiny_header(), mk.tiny_payload(), version=([2, 0], [2, 0]), prelude={"zstd": 1}
    )
    with pytest.raises(FormatError, match=r"format 2\.0, a newer major"):
        fmt.decode(data)


# --- integrity -----------------------------------------------------------------------------


def test_a_corrupt_tensor_byte_names_the_tensor(small_file):
    entries = _entries(small_file)
    for name in ["W", "counts", "V"]:
        data = bytearray(small_file)
        data[entries[name]["offset"] + entries[name]["nbytes"] - 1] ^= 0x01
        with pytest.raises(FormatError, match=f"tensor param '{name}': checksum mismatch"):
            fmt.decode(bytes(data))


def test_a_corrupt_optimizer_slot_names_the_slot(tmp_path):
    g, trainer, _ = trained()
    data = bytearray(save_bytes(tmp_path, g, trainer.params, optimizer=trainer.optimizer))
    cache = msgpack.unpackb(bytes(data))[2]["optimizer"]["slots"]["cache"]
    whd = next(e for e in cache if e["name"] == "Whd")
    data[whd["offset"]] ^= 0x80
    with pytest.raises(FormatError, match="optimizer slot 'cache' of 'Whd': checksum"):
        fmt.decode(bytes(data))


def test_a_corrupt_header_byte_fails_the_header_checksum(small_file):
    prelude_end = (
        5 + len(msgpack.packb("RGRAPH")) + len(msgpack.packb(msgpack.unpackb(small_file)[1]))
    )
    for at in [prelude_end, prelude_end + 100, prelude_end + 300]:
        data = bytearray(small_file)
        data[at] ^= 0x04
        with pytest.raises(FormatError, match="header checksum mismatch"):
            fmt.decode(bytes(data))


def test_bool_tensors_must_hold_0_or_1():
    header = mk.tiny_header()
    header["graph"]["params"][0]["type"]["dtype"] = "bool"
    header["graph"]["params"][0]["type"]["shape"] = [4]
    header["graph"]["nodes"], header["graph"]["outputs"], header["optimizer"] = [], ["W"], None
    payload = b"\x00\x01\x02\x01"
    header["params"] = [dict(mk.entry("W", payload, 0, [4]), dtype="bool")]
    with pytest.raises(FormatError, match="bool byte is neither 0 nor 1"):
        fmt.decode(mk.assemble(header, payload))
    payload = b"\x00\x01\x01\x01"
    header["params"] = [dict(mk.entry("W", payload, 0, [4]), dtype="bool")]
    assert fmt.decode(mk.assemble(header, payload)).params["W"].tolist() == [0, 1, 1, 1]


# --- saving: atomic, and only what can be read back ----------------------------------------


@pytest.fixture
def saved(tmp_path):
    g, params = mixed_graph(), mixed_params()
    path = tmp_path / "m.rgraph"
    rg.save(path, g, params)
    return g, params, path, path.read_bytes()


def test_a_refused_save_leaves_the_previous_file(saved):
    g, params, path, before = saved
    bad = dict(params, W=np.zeros((3, 2)))
    with pytest.raises(
        FormatError,
        match=r"parameter 'W' is float64\[3, 2\], the graph"
        r" declares f64\[2,3\]",
    ):
        rg.save(path, g, bad)
    with pytest.raises(FormatError, match="has no 'b'"):
        rg.save(path, g, {k: v for k, v in params.items() if k != "b"})
    assert path.read_bytes() == before and os.listdir(path.parent) == ["m.rgraph"]


@pytest.mark.parametrize("where", ["write", "fsync", "replace", "interrupt"])
def test_a_save_failing_midway_leaves_the_previous_file_and_no_temp_file(saved, monkeypatch, where):
    g, params, path, before = saved
    new = {k: v + 1 if v.dtype.kind == "f" else v for k, v in params.items()}

    class Boom(Exception):
        pass

    if where == "write":  # fail while tensor bytes are being written
        calls = []
        real = fmt._bytes_of

        def bytes_of(arr):
            calls.append(1)
            if len(calls) > len(params) + 2:  # past the checksums, into the writing
                assert any(n.endswith(".rgraph.tmp") for n in os.listdir(path.parent))
                raise Boom
            return real(arr)

        monkeypatch.setattr(fmt, "_bytes_of", bytes_of)
    elif where == "fsync":
        monkeypatch.setattr(fmt.os, "fsync", lambda fd: (_ for _ in ()).throw(Boom()))
    elif where == "replace":
        monkeypatch.setattr(fmt.os, "replace", lambda a, b: (_ for _ in ()).throw(Boom()))
    else:
        monkeypatch.setattr(fmt.os, "fsync", lambda fd: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises((Boom, KeyboardInterrupt)):
        rg.save(path, g, new)
    monkeypatch.undo()
    assert path.read_bytes() == before and os.listdir(path.parent) == ["m.rgraph"]
    rg.save(path, g, new)  # and the next save works
    assert rg.load(path).params["b"].tolist() == (params["b"] + 1).tolist()


@pytest.mark.parametrize(
    "value, message",
    [
        (np.array([object(), 1], dtype=object), "dtype object is not one of"),
        (np.ones((2, 3), np.complex128), "dtype complex128 is not one of"),
        (np.ones((2, 3), np.float16), "dtype float16 is not one of"),
        (np.zeros(2, dtype=[("a", "f8")]), "is not one of"),
    ],
)
def test_unsupported_dtypes_are_refused(tmp_path, value, message):
    g = rg.Graph("d")
    g.output(g.param("W", (2, 3)) * 1.0, name="y")
    with pytest.raises(FormatError, match=message):
        rg.save(tmp_path / "m.rgraph", g, {"W": value})
    assert list(tmp_path.iterdir()) == []


def deep_list(depth: int) -> list:
    value: list = [1]
    for _ in range(depth - 1):
        value = [value]
    return value


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(metadata={"blob": b"\x80\x04"}), "metadata.blob: bytes is not plain data"),
        (dict(metadata={"x": [np.int64(3)]}), r"metadata.x\[0\]: int64 is not plain data"),
        (dict(metadata={"x": {1: "a"}}), "key 1 is not a string"),
        (dict(metadata={"": 1}), "metadata key '' is not 1 to 200 characters"),
        (dict(metadata={"k" * 201: 1}), "is not 1 to 200 characters"),
        (dict(metadata={"x": "\ud800"}), "not valid UTF-8"),
        (dict(metadata={"x": 2**64}), "does not fit 64 bits"),
        (dict(metadata={"x": deep_list(18)}), "deeper than 16"),
        (dict(step=-1), "step must be an int"),
        (dict(step=2.0), "step must be an int"),
        (dict(rng=np.random.Generator(np.random.MT19937(0))), "only PCG64"),
    ],
)
def test_what_a_reader_would_refuse_is_refused_at_save(tmp_path, kwargs, message):
    g = rg.Graph("d")
    g.output(g.param("W", (2,)) * 1.0, name="y")
    with pytest.raises(FormatError, match=message):
        rg.save(tmp_path / "m.rgraph", g, {"W": np.zeros(2)}, **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_optimizer_slots_must_match_their_parameters(tmp_path):
    g = rg.Graph("o")
    g.output(g.param("W", (2,)) * 1.0, name="y")
    state = {"kind": "sgd", "hyper": {}, "step": 1, "slots": {"velocity": {"W": np.zeros(3)}}}
    with pytest.raises(FormatError, match=r"slot 'velocity' of 'W' is float64\[3\]"):
        rg.save(tmp_path / "m.rgraph", g, {"W": np.zeros(2)}, optimizer=state)
    state["slots"]["velocity"] = {"V": np.zeros(2)}
    with pytest.raises(FormatError, match="which is not a parameter"):
        rg.save(tmp_path / "m.rgraph", g, {"W": np.zeros(2)}, optimizer=state)


def test_load_errors_for_missing_paths_and_folders(tmp_path):
    with pytest.raises(FormatError, match="cannot read"):
        rg.load(tmp_path / "nope.rgraph")
    with pytest.raises(FormatError, match="cannot read"):
        rg.load(tmp_path)


# --- hostile files -------------------------------------------------------------------------

# file -> a substring of the FormatError it must give.
ATTACKS = {
    "empty.rgraph": "not an rgraph file: it does not start with a msgpack array32",
    "png.rgraph": "not an rgraph file: it does not start with a msgpack array32",
    "not_rgraph_magic.rgraph": "not an rgraph file: magic is 'PICKLE'",
    "newer_major.rgraph": "rgraph format 2.0, a newer major version than this reader's format 1.0",
    "newer_min_reader.rgraph": "needs an rgraph reader of format 1.7 or newer",
    "older_major.rgraph": "rgraph format 0.9, an older major version",
    "header_size_past_end.rgraph": "the header (1000000 bytes) runs past the end of the file",
    "header_crc.rgraph": "header checksum mismatch",
    "array_count.rgraph": "the file ends where the blob 1 should be",
    "trailing_bytes.rgraph": "3 trailing bytes after the last blob",
    "huge_shape.rgraph": "param 'W': bytes 576..8796093022784 are not inside a blob",
    "negative_dim.rgraph": "header.params.0.shape.0: Input should be greater than or equal to 0",
    "nbytes_mismatch.rgraph": "shape [2, 2] of float64 needs 32 bytes, the header says 16",
    "offset_outside_blob.rgraph": "param 'W': bytes 0..32 are not inside a blob",
    "offset_past_end.rgraph": "are not inside a blob",
    "misaligned_offset.rgraph": "offset 840 is not a multiple of 64",
    "overlapping_tensors.rgraph": "and param 'W' overlap at byte 832",
    "object_dtype.rgraph": "header.params.0.dtype: Input should be 'float32'",
    "tensor_crc.rgraph": "tensor param 'W': checksum mismatch",
    "duplicate_keys.rgraph": "duplicate map key 'step'",
    "duplicate_tensor.rgraph": "tensor 'W' appears twice",
    "ext_type.rgraph": "msgpack ext types are not allowed",
    "bin_in_header.rgraph": "bin (raw bytes) values are not allowed",
    "deep_nesting.rgraph": "nested too deeply",
    "deep_metadata.rgraph": "nested deeper than 16 levels",
    "deep_loops.rgraph": "loop bodies nested deeper than 32 levels",
    "unknown_op.rgraph": "unknown op 'pickle.loads'",
    "cycle.rgraph": "has a cycle of 2 nodes",
    "extra_field.rgraph": "header.code: Extra inputs are not permitted",
    "missing_field.rgraph": "header.params: Field required",
    "bool_as_int.rgraph": "header.params.0.nbytes: Input should be a valid integer",
    "undeclared_tensor.rgraph": "'V' names no parameter of the graph",
}


def test_every_attack_file_is_in_the_table_and_up_to_date():
    made = mk.attacks()
    on_disk = {p.name: p.read_bytes() for p in DATA.glob("*.rgraph")}
    assert sorted(made) == sorted(on_disk) == sorted(ATTACKS)
    stale = [name for name in made if made[name] != on_disk[name]]
    assert not stale, f"run python tests/data/attacks/make_attacks.py ({stale} are stale)"
    assert all(len(data) < 12_000 for data in made.values())


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_files_give_a_clear_format_error(name):
    path = DATA / name
    for lazy in (False, True):
        if name == "tensor_crc.rgraph" and lazy:
            rg.load(path, lazy=True)  # lazy loads leave tensor checksums to verify_tensors
            continue
        with pytest.raises(FormatError) as info:
            rg.load(path, lazy=lazy)
        assert ATTACKS[name] in str(info.value)
    with pytest.raises(FormatError, match=re.escape(ATTACKS[name])):
        fmt.verify_tensors(path)


def test_a_huge_declared_shape_is_refused_without_allocating():
    tracemalloc.start()
    try:
        with pytest.raises(FormatError, match="not inside a blob"):
            rg.load(DATA / "huge_shape.rgraph")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20


def test_the_base_of_the_attacks_is_a_valid_file():
    # Each attack changes one thing in this file, so each error is about that one thing.
    m = fmt.decode(mk.assemble(mk.tiny_header(), mk.tiny_payload()))
    assert m.graph.name == "tiny" and m.step == 3 and m.metadata == {"vocab": {"a": 1, "b": 2}}


# --- the published spec and schema ---------------------------------------------------------


def test_published_json_schema_is_up_to_date():
    committed = (DOCS / "ir.schema.json").read_text()
    assert committed == schema.render(), "run: python -m rgraph.io.schema > docs/ir.schema.json"


def test_json_schema_accepts_real_graphs_and_headers_and_rejects_bad_ones(tmp_path):
    jsonschema = pytest.importorskip("jsonschema")
    doc = json.loads((DOCS / "ir.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(doc)
    graph_ok = jsonschema.Draft202012Validator(doc)
    for g in (lm_graph(), mixed_graph()):
        graph_ok.validate(g.ir.model_dump(mode="json"))
    header_ok = jsonschema.Draft202012Validator({**doc, "$ref": "#/$defs/Header"})
    prelude_ok = jsonschema.Draft202012Validator({**doc, "$ref": "#/$defs/Prelude"})
    g, trainer, rng = trained()
    top = msgpack.unpackb(
        save_bytes(
            tmp_path,
            g,
            trainer.params,
            optimizer=trainer.optimizer,
            rng=rng,
            step=3,
            metadata={"vocab": VOCAB},
        )
    )
    prelude_ok.validate(top[1])
    header_ok.validate(top[2])
    bad = lm_graph().ir.model_dump(mode="json")
    bad["inputs"][0]["type"]["shape"] = ["T*", 2]
    assert not graph_ok.is_valid(bad)
    bad["inputs"][0]["type"]["shape"] = [-1]
    assert not graph_ok.is_valid(bad)
    assert not graph_ok.is_valid({**lm_graph().ir.model_dump(mode="json"), "extra": 1})


def hexdump(data: bytes, start: int, stop: int) -> str:
    lines = []
    for at in range(start - start % 16, stop, 16):
        row = data[at : min(at + 16, stop)]
        hexes = " ".join(f"{b:02x}" for b in row)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in row)
        lines.append(f"{at:08x}  {hexes:<47}  |{text}|")
    return "\n".join(lines)


def worked_example(tmp_path) -> tuple[bytes, str]:
    """The file that docs/format.md dissects, and its hex dump as printed there."""
    g = rg.Graph("tiny")
    x = g.input("x", (2, "B"), "float32")
    W = g.param("W", (2, 2), "float32")
    g.output(W @ x, name="y")
    ir = g.ir.model_copy(
        update={"nodes": tuple(n.model_copy(update={"loc": None}) for n in g.ir.nodes)}
    )
    W0 = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)
    data = save_bytes(tmp_path, ir, {"W": W0}, name="tiny.rgraph")
    entry = _entries(data)["W"]
    head = hexdump(data, 0, 96)
    tail = hexdump(data, entry["offset"] - 64 - 5 - 16, len(data))
    return data, head + "\n...\n" + tail


def test_the_worked_example_in_the_spec_is_real(tmp_path):
    data, dump = worked_example(tmp_path)
    doc = (DOCS / "format.md").read_text()
    assert dump in doc, "docs/format.md's hex dump is stale:\n" + dump
    assert f"{len(data)} bytes" in doc


def test_the_minimal_reader_in_the_spec_reads_real_files(tmp_path):
    doc = (DOCS / "format.md").read_text()
    sketch = doc.split("<!-- reader-sketch -->")[1].split("<!-- /reader-sketch -->")[0]
    code = sketch.strip().removeprefix("```python").removesuffix("```")
    namespace: dict = {}
    exec(compile(code, "docs/format.md", "exec"), namespace)
    g, trainer, rng = trained()
    rg.save(tmp_path / "m.rgraph", g, trainer.params, optimizer=trainer.optimizer, rng=rng)
    graph, tensors = namespace["read"](tmp_path / "m.rgraph")
    assert rg.GraphIR.model_validate(graph) == as_saved(g.ir)
    assert tensors.keys() == trainer.params.keys()
    assert all(same_bits(tensors[k], v) for k, v in trainer.params.items())


def test_a_scalar_parameter_round_trips_as_a_scalar(tmp_path):
    g = rg.Graph("scalar")
    w = g.param("w", ())
    g.output(w * 2.0, name="y")
    rg.save(tmp_path / "m.rgraph", g, {"w": np.array(3.0)})
    got = rg.load(tmp_path / "m.rgraph").params["w"]
    assert got.shape == () and got.dtype == np.float64 and got == 3.0
