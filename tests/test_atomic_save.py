"""Atomic saves: an interrupted ``rg.save`` leaves the previous file intact.

The crash test SIGKILLs a process at random moments of a ~24 MB save over an existing
small file, many times; after every kill the path must load and hold exactly the old
model or exactly the new one, byte for byte. A SIGKILL gives the process no chance to
clean up, so it can leave its temporary file (``.<random>.rgraph.tmp`` beside the
target); the test allows at most one per kill, checks that the target is then still the
old file, and removes it.

To keep the test fast, one child Python process (a "zygote") imports rgraph and builds
the big model once, then forks a fresh process for each save; the test kills that
process by pid.

Also here: failures inside the save (an I/O error at fsync or rename, a Ctrl-C, a write
that fails half way) leave the old file byte-identical and no temporary file; and a
large save still works in an ``atexit`` hook, when no new thread can start.
"""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

import rgraph as rg
from tests.saved import as_saved

N_TENSORS = 6
SIDE = 1000  # 6 float32 tensors of 1000 x 1000: 24 MB
KILLS = 32
SEED = 20240611

# Built identically in the test and in the child.
BIG_MODEL = textwrap.dedent(
    """
    def big_model(rg, np):
        g = rg.Graph("big")
        x = g.input("x", (1, SIDE), dtype="float32")
        params = {}
        rng = np.random.default_rng(7)
        for i in range(N_TENSORS):
            W = g.param(f"W{i}", (SIDE, SIDE), dtype="float32")
            x = (x @ W).tanh()
            params[f"W{i}"] = rng.standard_normal((SIDE, SIDE), dtype=np.float32)
        g.output(x, name="y")
        return g, params
    """
)

ZYGOTE = textwrap.dedent(
    """
    import os, statistics, sys, time
    import numpy as np
    import rgraph as rg
    ns = {{"N_TENSORS": {n}, "SIDE": {side}}}
    exec({big_model!r}, ns)  # the same source, lines and all, as in the test
    graph, params = ns["big_model"](rg, np)
    target, reference = sys.argv[1], sys.argv[2]
    durations = []
    for _ in range(3):
        t = time.perf_counter()
        rg.save(reference, graph, params)
        durations.append(time.perf_counter() - t)
    print("ready", statistics.median(durations), flush=True)
    for line in sys.stdin:
        if line.strip() == "save":
            pid = os.fork()
            if pid == 0:
                code = 1
                try:
                    rg.save(target, graph, params)
                    code = 0
                finally:
                    os._exit(code)
            print(pid, flush=True)
        elif line.strip() == "reap":
            _, status = os.waitpid(pid, 0)
            print(status, flush=True)
    """
)


def _namespace() -> dict:
    ns: dict = {"N_TENSORS": N_TENSORS, "SIDE": SIDE}
    exec(BIG_MODEL, ns)
    return ns


def _small_model() -> tuple[rg.Graph, dict[str, np.ndarray]]:
    g = rg.Graph("small")
    x = g.input("x", ("B", 3))
    W = g.param("W", (2, 3))
    b = g.param("b", (2,))
    g.output((x @ W.T + b).tanh(), name="y")
    return g, {"W": np.arange(6.0).reshape(2, 3) / 7, "b": np.array([0.5, -1.25])}


def _readline(proc: subprocess.Popen, timeout: float = 30.0) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        raise AssertionError("the child process did not answer in time")
    line = proc.stdout.readline()
    if not line:
        raise AssertionError(f"the child process died: {proc.stderr.read()}")
    return line.strip()


def _temp_files(folder: Path) -> list[Path]:
    return sorted(folder.glob(".*.rgraph.tmp"))


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork and SIGKILL")
def test_sigkill_during_save_leaves_old_or_new_file(tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    target = folder / "model.rgraph"
    reference = tmp_path / "reference.rgraph"

    small, small_params = _small_model()
    rg.save(target, small, small_params)
    old_bytes = target.read_bytes()
    big, big_params = _namespace()["big_model"](rg, np)

    source = ZYGOTE.format(n=N_TENSORS, side=SIDE, big_model=BIG_MODEL)
    proc = subprocess.Popen(
        [sys.executable, "-c", source, str(target), str(reference)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        word, duration = _readline(proc).split()
        assert word == "ready"
        duration = float(duration)
        new_bytes = reference.read_bytes()
        new = rg.load(reference)  # the child's save holds the model built here
        assert set(new.params) == set(big_params)
        for name, value in big_params.items():
            assert new.params[name].dtype == value.dtype
            assert np.array_equal(new.params[name], value)
        assert new.graph == as_saved(big.ir)

        rng = np.random.default_rng(SEED)
        outcomes = {"old": 0, "new": 0, "temp left": 0, "finished": 0}
        for round_ in range(KILLS + 1):  # round 0 lets the save finish
            rg.save(target, small, small_params, fsync=False)
            assert target.read_bytes() == old_bytes
            delay = rng.uniform(0.0, 1.25 * duration) if round_ else None
            proc.stdin.write("save\n")
            proc.stdin.flush()
            pid = int(_readline(proc))
            if delay is not None:
                # The process stays a zombie until "reap", so this pid cannot be reused.
                select.select([], [], [], delay)
                os.kill(pid, signal.SIGKILL)
            proc.stdin.write("reap\n")
            proc.stdin.flush()
            status = int(_readline(proc))
            killed = os.WIFSIGNALED(status)
            if not killed:
                assert os.WEXITSTATUS(status) == 0
                outcomes["finished"] += 1

            where = (
                f"round {round_} (kill after {delay * 1e3:.1f} ms)"
                if delay is not None
                else "round 0"
            )
            left = _temp_files(folder)
            assert set(folder.iterdir()) == {target, *left}, where
            assert len(left) <= (1 if killed else 0), f"{where}: {left}"
            data = target.read_bytes()
            if delay is None:
                assert not killed and data == new_bytes, "the save did not complete"
            intact = data in (old_bytes, new_bytes)  # (no diff of 24 MB in the message)
            assert intact, f"{where}: the file is neither the old model nor the new one"
            model = rg.load(target)
            if data == old_bytes:
                outcomes["old"] += 1
                assert model.graph == as_saved(small.ir)
                expected = small_params
            else:
                outcomes["new"] += 1
                assert not left, f"{where}: renamed, yet a temporary file remains"
                expected = big_params
            assert model.params.keys() == expected.keys()
            for name, value in expected.items():
                assert model.params[name].dtype == value.dtype
                assert np.array_equal(model.params[name], value), f"{where}: {name}"
            if left:
                outcomes["temp left"] += 1
                for tmp in left:
                    tmp.unlink()
    finally:
        proc.stdin.close()
        proc.kill()
        proc.wait()

    # The delays spread over the save, so kills must have landed in the middle of it.
    assert outcomes["old"] >= KILLS // 8, outcomes
    assert outcomes["temp left"] >= KILLS // 8, outcomes


# --- failures inside the save ---------------------------------------------------------


@pytest.fixture
def saved(tmp_path: Path) -> tuple[Path, bytes]:
    g, params = _small_model()
    target = tmp_path / "model.rgraph"
    rg.save(target, g, params)
    return target, target.read_bytes()


def _new_model() -> tuple[rg.Graph, dict[str, np.ndarray]]:
    g = rg.Graph("other")
    x = g.input("x", (1, 300), dtype="float32")
    W = g.param("W", (300, 400), dtype="float32")
    g.output(x @ W, name="y")
    return g, {"W": np.ones((300, 400), np.float32)}


@pytest.mark.parametrize("where", ["fsync", "replace"])
@pytest.mark.parametrize("exc", [OSError(errno.EIO, "I/O error"), KeyboardInterrupt()])
def test_failed_save_keeps_old_file_and_removes_temp(
    saved: tuple[Path, bytes], monkeypatch: pytest.MonkeyPatch, where: str, exc: BaseException
) -> None:
    target, old_bytes = saved
    calls = []

    def boom(*args: object) -> None:
        calls.append(args)
        raise exc

    monkeypatch.setattr(os, where, boom)
    g, params = _new_model()
    with pytest.raises(type(exc)):
        rg.save(target, g, params, fsync=True)
    monkeypatch.undo()
    assert calls, f"save never called os.{where}"
    assert target.read_bytes() == old_bytes
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]
    assert rg.load(target).graph == as_saved(_small_model()[0].ir)


WRITE_LIMITED = textwrap.dedent(
    """
    import resource, signal, sys
    import numpy as np
    import rgraph as rg
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit raise EFBIG
    g = rg.Graph("other")
    x = g.input("x", (1, 1000), dtype="float32")
    W = g.param("W", (1000, 4000), dtype="float32")
    g.output(x @ W, name="y")
    resource.setrlimit(resource.RLIMIT_FSIZE, (1_000_000, resource.RLIM_INFINITY))
    try:
        rg.save(sys.argv[1], g, {"W": np.ones((1000, 4000), np.float32)})
    except OSError as e:
        print("errno", e.errno)
    else:
        print("saved")
    """
)


@pytest.mark.skipif(sys.platform == "win32", reason="needs RLIMIT_FSIZE")
def test_write_error_midway_keeps_old_file_and_removes_temp(saved: tuple[Path, bytes]) -> None:
    """A real I/O error part way through the tensor bytes (file size limit, like a full disk)."""
    target, old_bytes = saved
    out = subprocess.run(
        [sys.executable, "-c", WRITE_LIMITED, str(target)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert out.stdout.split() == ["errno", str(errno.EFBIG)], out.stderr
    assert target.read_bytes() == old_bytes
    assert sorted(p.name for p in target.parent.iterdir()) == [target.name]


AT_EXIT = textwrap.dedent(
    """
    import atexit, sys
    import numpy as np
    import rgraph as rg
    g = rg.Graph("other")
    x = g.input("x", (1, 1000), dtype="float32")
    params = {}
    for i in range(5):  # 20 MB: enough for the CRC-32s to use threads
        x = x @ g.param(f"W{i}", (1000, 1000), dtype="float32")
        params[f"W{i}"] = np.full((1000, 1000), i, np.float32)
    g.output(x, name="y")

    def at_exit():
        rg.save(sys.argv[1], g, params)
        loaded = rg.load(sys.argv[1]).params
        print(sorted(float(a.sum()) for a in loaded.values()))

    atexit.register(at_exit)
    """
)


def test_save_and_load_work_in_an_atexit_hook(tmp_path: Path) -> None:
    """No new threads can start at interpreter shutdown: large saves fall back to one."""
    target = tmp_path / "model.rgraph"
    out = subprocess.run(
        [sys.executable, "-c", AT_EXIT, str(target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and not out.stderr, out.stderr
    assert out.stdout.strip() == str([float(i * 10**6) for i in range(5)])
