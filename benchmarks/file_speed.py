"""How fast rgraph saves and loads a large model file, next to its peers.

Run by hand (never imported by rgraph, never run in CI)::

    pip install -e '.[bench]'          # safetensors, for comparison only
    python benchmarks/file_speed.py    # --reps 7 --tensors 50 --elements 1000000 --dir PATH

The parameter set is ``--tensors`` float32 tensors of ``--elements`` values each (the
default, 50 x 1M, is 200 MB: the issue's measurement). Every method saves the same arrays
into the same folder and loads them back as numpy arrays ready to use; results are
checked against the originals once, outside the timings. Each repetition deletes the
file before saving again, so every save creates a new file, and loads read a file that
was just written (page cache warm: this measures the software, not the disk). Methods
are interleaved within each repetition, in a new random order each time (a load that
allocates 200 MB is faster or slower depending on what the previous method left in the
allocator and the kernel's free huge pages), and the table shows medians and minima.

Methods:

- raw bytes: one ``write`` per tensor / ``readinto`` one preallocated buffer (the floor);
- rgraph: ``rg.save`` (``fsync=False`` and ``True``), ``rg.load`` (reads the file into
  one buffer and checks every CRC-32), ``rg.load(lazy=True)`` (memory map, no CRC check;
  arrays are read-only views, pages are read on first touch: timed alone and with a touch
  of every page);
- safetensors: ``safetensors.numpy.save_file`` / ``load_file``;
- pickle: protocol 5 of a dict of arrays, ``pickle.dump`` / ``pickle.load`` on the file;
- numpy: ``np.savez`` / ``np.load`` and reading every array out of the archive;
- naive msgpack: one map of ``{name: {dtype, shape, data: bin}}``, ``packb`` then one
  write / one read, ``unpackb``, then ``np.frombuffer`` (read-only views of the bytes
  objects ``unpackb`` made).
"""

from __future__ import annotations

import argparse
import gc
import os
import pickle
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable

import msgpack
import numpy as np

import rgraph as rg

Arrays = dict[str, np.ndarray]


def make_arrays(n: int, elements: int, seed: int = 0) -> Arrays:
    rng = np.random.default_rng(seed)
    return {f"W{i:02d}": rng.standard_normal(elements, dtype=np.float32) for i in range(n)}


def make_graph(arrays: Arrays) -> rg.Graph:
    """A graph that declares every tensor as a parameter (each one scales the input)."""
    g = rg.Graph("file_speed")
    (first,) = {a.shape for a in arrays.values()}
    x = g.input("x", first, dtype="float32")
    for name, a in arrays.items():
        x = x * g.param(name, a.shape, dtype="float32")
    g.output(x, name="y")
    return g


# --- the methods: save(path, arrays) and load(path) -> arrays ----------------------------


def raw_save(path: str, arrays: Arrays) -> None:
    with open(path, "wb") as f:
        for a in arrays.values():
            f.write(memoryview(a).cast("B"))


def raw_load_factory(arrays: Arrays) -> Callable[[str], Arrays]:
    layout = [(k, a.dtype, a.shape, a.nbytes) for k, a in arrays.items()]

    def raw_load(path: str) -> Arrays:
        buf = np.empty(os.path.getsize(path), np.uint8)
        with open(path, "rb") as f:
            f.readinto(memoryview(buf))
        out, pos = {}, 0
        for k, dtype, shape, nbytes in layout:
            out[k] = buf[pos : pos + nbytes].view(dtype).reshape(shape)
            pos += nbytes
        return out

    return raw_load


def rgraph_methods(graph: rg.Graph) -> dict[str, tuple[Callable, Callable]]:
    def save(fsync: bool) -> Callable[[str, Arrays], None]:
        return lambda path, arrays: rg.save(path, graph, arrays, fsync=fsync)

    def load(path: str) -> Arrays:
        return rg.load(path).params

    def load_lazy(path: str) -> Arrays:
        return rg.load(path, lazy=True).params

    def load_lazy_touch(path: str) -> Arrays:
        params = rg.load(path, lazy=True).params
        for a in params.values():
            a.reshape(-1).view(np.uint8)[::4096].sum()  # fault in every page
        return params

    return {
        "rgraph (fsync=False / load)": (save(False), load),
        "rgraph (fsync=True / load)": (save(True), load),
        "rgraph lazy (mmap, no CRC)": (save(False), load_lazy),
        "rgraph lazy + touch every page": (save(False), load_lazy_touch),
    }


def safetensors_methods() -> dict[str, tuple[Callable, Callable]]:
    try:
        import safetensors.numpy as stn
    except ImportError:
        print("safetensors is not installed (pip install -e '.[bench]'): skipped", file=sys.stderr)
        return {}
    return {"safetensors": (lambda path, arrays: stn.save_file(arrays, path), stn.load_file)}


def pickle_save(path: str, arrays: Arrays) -> None:
    with open(path, "wb") as f:
        pickle.dump(arrays, f, protocol=5)


def pickle_load(path: str) -> Arrays:
    with open(path, "rb") as f:
        return pickle.load(f)


def npz_save(path: str, arrays: Arrays) -> None:
    with open(path, "wb") as f:  # a file object: np.savez would append ".npz" to a name
        np.savez(f, **arrays)


def npz_load(path: str) -> Arrays:
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def msgpack_save(path: str, arrays: Arrays) -> None:
    doc = {
        k: {"dtype": a.dtype.str, "shape": list(a.shape), "data": a.tobytes()}
        for k, a in arrays.items()
    }
    with open(path, "wb") as f:
        f.write(msgpack.packb(doc, use_bin_type=True))


def msgpack_load(path: str) -> Arrays:
    with open(path, "rb") as f:
        doc = msgpack.unpackb(f.read(), raw=False, max_bin_len=2**32 - 1)
    return {
        k: np.frombuffer(d["data"], dtype=np.dtype(d["dtype"])).reshape(d["shape"])
        for k, d in doc.items()
    }


# --- timing --------------------------------------------------------------------------------


def timed(fn: Callable, *args: object) -> tuple[float, object]:
    gc.collect()
    t = time.perf_counter()
    out = fn(*args)
    return time.perf_counter() - t, out


def fsync_cost(path: str, arrays: Arrays, reps: int) -> list[float]:
    """Time of one fsync of a freshly written file of the same size (raw bytes)."""
    times = []
    for _ in range(reps):
        raw_save(path, arrays)
        fd = os.open(path, os.O_RDONLY)
        try:
            t = time.perf_counter()
            os.fsync(fd)
            times.append(time.perf_counter() - t)
        finally:
            os.close(fd)
        os.unlink(path)
    return times


def filesystem_of(folder: str) -> str:
    """The mount point and type of the file system holding ``folder`` (Linux)."""
    try:
        with open("/proc/mounts") as f:
            mounts = [line.split()[1:3] for line in f]
    except OSError:
        return "unknown"
    folder = os.path.realpath(folder)
    best = max(
        (m for m in mounts if folder == m[0] or folder.startswith(m[0].rstrip("/") + "/")),
        key=lambda m: len(m[0]),
        default=None,
    )
    return f"{best[1]} at {best[0]}" if best else "unknown"


# Phases of rg.save / rg.load as cProfile sees them: (label, function, file name, or "~"
# for built-ins). Times are cumulative (callees included) and measured on the main thread,
# so CRC-32s computed in worker threads count as the time the caller waits for them.
SAVE_PHASES = [
    ("check and convert the arrays", "_as_saveable", "format.py"),
    ("CRC-32 of the tensors", "_crc32s", "format.py"),
    ("header: graph dump, msgpack, offsets", "encode", "format.py"),
    ("create the temporary file", "mkstemp", "tempfile.py"),
    ("write", "<method 'write' of '_io.BufferedWriter' objects>", "~"),
    ("fsync (the file, then the folder)", "<built-in method posix.fsync>", "~"),
    ("rename (os.replace)", "<built-in method posix.replace>", "~"),
]
LOAD_PHASES = [
    ("allocate the buffer (np.empty)", "<built-in method numpy.empty>", "~"),
    ("read the file (readinto)", "<method 'readinto' of '_io.BufferedReader' objects>", "~"),
    ("header: msgpack unpack", "_next", "format.py"),
    ("header: pydantic validation", "_validate", "format.py"),
    ("graph verify", "verify", "verify.py"),
    ("CRC-32 (and bool) checks", "_check_contents", "format.py"),
    ("tensor views (np.frombuffer)", "_tensor", "format.py"),
]


def breakdown(
    fn: Callable[[], object], phases: list, reps: int, before: Callable[[], None]
) -> list[tuple[str, float]]:
    """Median seconds in each phase of ``fn()`` over ``reps`` profiled runs (each after an
    untimed ``before()``), then the rest and the total."""
    import cProfile
    import pstats

    rows: dict[str, list[float]] = {label: [] for label, _, _ in phases}
    rows["rest (Python glue, small calls)"] = []
    rows["total (under the profiler)"] = []
    for _ in range(reps):
        before()
        gc.collect()
        prof = cProfile.Profile()
        t = time.perf_counter()
        prof.runcall(fn)
        total = time.perf_counter() - t
        stats = pstats.Stats(prof).stats  # type: ignore[attr-defined]
        found = 0.0
        for label, func, file in phases:
            cum = sum(
                v[3] for (f, _, name), v in stats.items() if name == func and f.endswith(file)
            )
            rows[label].append(cum)
            found += cum
        rows["rest (Python glue, small calls)"].append(total - found)
        rows["total (under the profiler)"].append(total)
    return [(label, statistics.median(ts)) for label, ts in rows.items()]


def phase_tables(graph: rg.Graph, arrays: Arrays, path: str, reps: int) -> list[str]:
    """Markdown tables of where rg.save and rg.load spend their time."""

    def drop() -> None:  # each save creates a new file, as in the main table
        if os.path.exists(path):
            os.unlink(path)

    def nothing() -> None:
        pass

    def save(fsync: bool) -> Callable[[], None]:
        return lambda: rg.save(path, graph, arrays, fsync=fsync)

    lines = []
    for title, fn, phases, before in [
        ("rg.save, fsync=True", save(True), SAVE_PHASES, drop),
        ("rg.save, fsync=False", save(False), SAVE_PHASES, drop),
        ("rg.load", lambda: rg.load(path), LOAD_PHASES, nothing),
        ("rg.load(lazy=True)", lambda: rg.load(path, lazy=True), LOAD_PHASES, nothing),
    ]:
        rows = breakdown(fn, phases, reps, before)
        lines += ["", f"{title} (median of {reps}, ms)", "", "| phase | ms |", "|---|---:|"]
        lines += [f"| {label} | {t * 1e3:.1f} |" for label, t in rows if t >= 0.05e-3]
    return lines


def check(loaded: Arrays, arrays: Arrays, name: str) -> None:
    assert loaded.keys() == arrays.keys(), name
    for k, a in arrays.items():
        b = loaded[k]
        assert isinstance(b, np.ndarray) and b.dtype == a.dtype and b.shape == a.shape, name
        assert np.array_equal(b, a), f"{name}: {k} differs"


LOAD_ONLY = {"rgraph lazy (mmap, no CRC)", "rgraph lazy + touch every page"}  # saves as above


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tensors", type=int, default=50)
    ap.add_argument("--elements", type=int, default=1_000_000)
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--dir", default=None, help="folder for the files (default: a temp dir)")
    ap.add_argument(
        "--only", action="append", help="run only methods whose name contains this (repeatable)"
    )
    ap.add_argument("--breakdown", action="store_true", help="also profile rgraph's phases")
    args = ap.parse_args(argv)

    arrays = make_arrays(args.tensors, args.elements)
    nbytes = sum(a.nbytes for a in arrays.values())
    graph = make_graph(arrays)
    methods: dict[str, tuple[Callable, Callable]] = {
        "raw bytes (write / readinto)": (raw_save, raw_load_factory(arrays)),
        **rgraph_methods(graph),
        **safetensors_methods(),
        "pickle (protocol 5)": (pickle_save, pickle_load),
        "np.savez / np.load": (npz_save, npz_load),
        "naive msgpack (bin per tensor)": (msgpack_save, msgpack_load),
    }
    if args.only:
        keep = [w.lower() for w in args.only]
        methods = {k: v for k, v in methods.items() if any(w in k.lower() for w in keep)}

    folder = tempfile.mkdtemp(prefix="rgraph-bench-", dir=args.dir)
    path = os.path.join(folder, "model.bin")
    print(
        f"{args.tensors} float32 tensors x {args.elements} = {nbytes / 1e6:.0f} MB,"
        f" {args.reps} repetitions; folder {folder} ({filesystem_of(folder)})"
    )
    print(
        f"python {sys.version.split()[0]}, numpy {np.__version__}, msgpack"
        f" {'.'.join(map(str, msgpack.version))}, {os.cpu_count()} CPUs"
    )

    saves: dict[str, list[float]] = {m: [] for m in methods}
    loads: dict[str, list[float]] = {m: [] for m in methods}
    sizes: dict[str, int] = {}
    try:
        for name, (save, load) in methods.items():  # warm-up and correctness, untimed
            save(path, arrays)
            check(load(path), arrays, name)
            sizes[name] = os.path.getsize(path)
            os.unlink(path)
        order, shuffle = list(methods), random.Random(0).shuffle
        for _ in range(args.reps):
            shuffle(order)  # the memory state a method inherits from the one before varies
            for name in order:
                save, load = methods[name]
                dt, _ = timed(save, path, arrays)
                saves[name].append(dt)
                dt, loaded = timed(load, path)
                loads[name].append(dt)
                del loaded
                os.unlink(path)
        fsyncs = fsync_cost(path, arrays, args.reps)
        phases = phase_tables(graph, arrays, path, args.reps) if args.breakdown else []
    finally:
        if os.path.exists(path):
            os.unlink(path)
        os.rmdir(folder)

    def cell(ts: list[float], base: list[float] | None) -> str:
        med = statistics.median(ts)
        ratio = f" | {med / statistics.median(base):.2f}x" if base else ""
        return f"{med * 1e3:.1f} | {min(ts) * 1e3:.1f} | {nbytes / med / 1e9:.2f}{ratio}"

    raw = "raw bytes (write / readinto)"
    rs, rl = (saves[raw], loads[raw]) if raw in methods else (None, None)
    print()
    print(
        "| method | file MB | save ms (median) | min | GB/s | vs raw"
        " | load ms (median) | min | GB/s | vs raw |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for name in methods:
        s = "(as above) | |" + (" |" if rs else "")
        s = s if name in LOAD_ONLY else cell(saves[name], rs)
        print(f"| {name} | {sizes[name] / 1e6:.1f} | {s} | {cell(loads[name], rl)} |")
    print()
    print(
        f"fsync of a fresh {nbytes / 1e6:.0f} MB file (raw bytes): median"
        f" {statistics.median(fsyncs) * 1e3:.1f} ms, min {min(fsyncs) * 1e3:.1f},"
        f" max {max(fsyncs) * 1e3:.1f}"
    )
    on, off = "rgraph (fsync=True / load)", "rgraph (fsync=False / load)"
    if on in methods and off in methods:
        extra = statistics.median(saves[on]) - statistics.median(saves[off])
        print(f"rg.save: fsync=True costs {extra * 1e3:.1f} ms more than fsync=False (medians)")
    print("\n".join(phases))


if __name__ == "__main__":
    main()
