"""``rgraph train`` and ``rgraph sample`` end to end on a tiny corpus.

Most runs call :func:`rgraph.cli.main` in-process (the same code the ``rgraph`` script
runs, without the start-up cost); one test runs the installed ``rgraph`` script itself.
"""

from __future__ import annotations

import builtins
import contextlib
import errno
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rgraph as rg
from rgraph import charlm
from rgraph.cli import main

# Six sentences (one held out for validation) and two blank lines, which are dropped.
LINES = ["the cat sat.", "the dog ran.", "", "a cat ran.", "   ", "the dog sat on a mat."]
CORPUS = "\n".join([*LINES, "a mat.", "the rat ate."]) + "\n"
# A model small enough that a step takes milliseconds and still learns the corpus.
SMALL = ["--hidden", "8", "--letter-size", "4", "--batch-size", "4", "--samples", "2"]
START_KEYS = {
    "event",
    "step",
    "model",
    "hidden_sizes",
    "vocab_size",
    "train_sentences",
    "valid_sentences",
    "unigram_valid_perplexity",
    "out",
}
REPORT_KEYS = {
    "event",
    "step",
    "epoch",
    "seconds",
    "train_perplexity",
    "valid_perplexity",
    "chars_per_second",
    "argmax",
    "samples",
}
# What a report says that does not depend on the clock.
DETERMINISTIC = ["step", "epoch", "train_perplexity", "valid_perplexity", "argmax", "samples"]


def run(*argv: object) -> tuple[int, str, str]:
    """``rgraph ARGV`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def train(corpus, out, steps, *extra: object) -> tuple[int, list[dict], str]:
    """``rgraph train --json`` of the small model: (status, JSON events, stderr)."""
    status, stdout, stderr = run(
        "train", "--corpus", corpus, "--steps", steps, "--out", out, "--json", *SMALL, *extra
    )
    return status, [json.loads(line) for line in stdout.splitlines()], stderr


def reports(events: list[dict]) -> list[dict]:
    return [e for e in events if e["event"] == "report"]


def assert_bad_input(status: int, stdout: str, stderr: str, command: str, *fragments: str):
    """Exit status 2 and exactly one line on stderr naming the command, no traceback."""
    assert status == 2, (status, stderr)
    assert stdout == ""
    assert "Traceback" not in stderr
    assert stderr.endswith("\n") and stderr.count("\n") == 1, stderr
    assert stderr.startswith(f"rgraph {command}: error: "), stderr
    for fragment in fragments:
        assert fragment in stderr, (fragment, stderr)


def assert_same_training_state(path_a, path_b, keys=("step", "train", "valid")):
    """Same weights, optimiser state, RNG, step and history (the ``keys`` of its entries)."""
    a, b = rg.load(str(path_a)), rg.load(str(path_b))
    assert a.step == b.step
    assert a.params.keys() == b.params.keys()
    for name in a.params:
        assert a.params[name].dtype == b.params[name].dtype
        assert np.array_equal(a.params[name], b.params[name]), name
    assert a.optimizer["kind"] == b.optimizer["kind"] == "rmsprop"
    assert a.optimizer["hyper"] == b.optimizer["hyper"]
    assert a.optimizer["step"] == b.optimizer["step"] == a.step
    assert a.optimizer["slots"].keys() == b.optimizer["slots"].keys()
    for slot, arrays in a.optimizer["slots"].items():
        assert arrays.keys() == b.optimizer["slots"][slot].keys() == a.params.keys()
        for name, value in arrays.items():
            assert np.array_equal(value, b.optimizer["slots"][slot][name]), (slot, name)
    assert a.rng.bit_generator.state == b.rng.bit_generator.state
    history = [{k: h[k] for k in keys} for h in a.metadata["history"]]
    assert history == [{k: h[k] for k in keys} for h in b.metadata["history"]]


@pytest.fixture
def corpus(tmp_path) -> str:
    path = tmp_path / "tiny.txt"
    path.write_text(CORPUS, encoding="utf-8")
    return str(path)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[str, str]:
    """A model trained for 30 steps on the tiny corpus: (corpus path, model path)."""
    folder = tmp_path_factory.mktemp("trained")
    corpus = folder / "tiny.txt"
    corpus.write_text(CORPUS, encoding="utf-8")
    model = folder / "model.rgraph"
    status, _, stderr = train(corpus, model, 30, "--report-every", 30, "--samples", 0)
    assert status == 0, stderr
    return str(corpus), str(model)


def lines_of(stdout: str) -> list[str]:
    assert stdout.endswith("\n")
    return stdout[:-1].split("\n")


# --- train -> file -> sample ----------------------------------------------------------


def test_train_writes_a_model_file_and_perplexity_falls(corpus, tmp_path):
    out = tmp_path / "a.rgraph"
    status, events, stderr = train(corpus, out, 40, "--report-every", 10)
    assert status == 0, stderr
    assert stderr == ""  # --json: no progress bar, no intro on the terminal either

    start, *rest = events
    assert set(start) == START_KEYS and start["event"] == "start"
    assert start["step"] == 0 and start["model"] == "lstm" and start["hidden_sizes"] == [8]
    letters = sorted(set(CORPUS) - {"\n"})
    assert start["vocab_size"] == len(letters) + 1  # the characters and START/END
    assert start["train_sentences"] + start["valid_sentences"] == 6  # blank lines dropped
    assert start["valid_sentences"] == 1 and start["out"] == str(out)
    assert all(set(e) == REPORT_KEYS and e["event"] == "report" for e in rest)
    assert [e["step"] for e in rest] == [10, 20, 30, 40]
    assert [e["epoch"] for e in rest] == [s * 4 / 5 for s in (10, 20, 30, 40)]
    assert all(len(e["samples"]) == 2 for e in rest)
    first, last = rest[0]["train_perplexity"], rest[-1]["train_perplexity"]
    assert last < 0.5 * first, (first, last)
    assert last < start["unigram_valid_perplexity"]

    model = rg.load(str(out))
    assert model.step == 40 and model.metadata["task"] == "char_lm"
    char = charlm.CharModel.from_file(model)
    assert list(char.vocab.letters) == letters
    assert char.config.hidden_sizes == (8,) and char.config.letter_size == 4
    assert [h["step"] for h in model.metadata["history"]] == [10, 20, 30, 40]

    status, stdout, stderr = run("sample", out, "-n", 3, "--seed", 0)
    assert status == 0 and stderr == ""
    texts = lines_of(stdout)
    assert len(texts) == 3
    assert all(set(t) <= set(letters) and len(t) <= 100 for t in texts)
    assert run("sample", out, "-n", 3, "--seed", 0)[1] == stdout  # seeded: reproducible


def test_resume_after_n_steps_equals_n_plus_m_steps_uninterrupted(corpus, tmp_path):
    a, b, c = (str(tmp_path / f"{x}.rgraph") for x in "abc")
    every = ["--report-every", 4]
    status, events_a, _ = train(corpus, a, 12, *every)
    assert status == 0
    status, events_b, _ = run_resume(corpus, a, b, 20, *every)
    assert status == 0
    status, events_c, _ = train(corpus, c, 20, *every)
    assert status == 0

    assert events_b[0]["step"] == 12
    assert_same_training_state(b, c)
    assert rg.load(a).step == 12
    by_step = {r["step"]: r for r in reports(events_c)}
    resumed = reports(events_a) + reports(events_b)
    assert [r["step"] for r in resumed] == [4, 8, 12, 16, 20] == sorted(by_step)
    for r in resumed:
        assert [r[k] for k in DETERMINISTIC] == [by_step[r["step"]][k] for k in DETERMINISTIC]


def run_resume(corpus, model, out, steps, *extra: object) -> tuple[int, list[dict], str]:
    status, stdout, stderr = run(
        "train", "--corpus", corpus, "--resume", model, "--steps", steps, "--out", out, "--json",
        "--samples", 2, *extra,
    )  # fmt: skip
    return status, [json.loads(line) for line in stdout.splitlines()], stderr


def test_how_often_one_reports_changes_nothing_in_the_training(corpus, tmp_path):
    a, b = str(tmp_path / "a.rgraph"), str(tmp_path / "b.rgraph")
    assert train(corpus, a, 9, "--report-every", 2)[0] == 0
    assert train(corpus, b, 9, "--report-every", 100, "--samples", 0)[0] == 0
    a_model, b_model = rg.load(a), rg.load(b)
    assert all(np.array_equal(a_model.params[k], b_model.params[k]) for k in a_model.params)


def test_near_zero_temperature_samples_the_argmax(trained):
    _, model = trained
    argmax = {}
    for prime in ("", "th", "a c"):
        common = ["sample", model, "-n", 3, "--seed", 7, "--max-chars", 40, "--prime", prime]
        status, cold, _ = run(*common, "--temperature", 1e-6)
        assert status == 0
        status, argmax[prime], _ = run(*common, "--argmax")
        assert status == 0
        assert cold == argmax[prime]
        assert len(set(lines_of(cold))) == 1  # argmax ignores the RNG: all samples agree
    warm = run("sample", model, "-n", 3, "--seed", 7, "--max-chars", 40, "--temperature", 2)[1]
    assert warm != argmax[""]  # at a real temperature the samples differ from the argmax


def test_prime_starts_each_sample_and_max_chars_bounds_the_rest(trained):
    _, model = trained
    status, stdout, _ = run(
        "sample", model, "-n", 8, "--prime", "the ", "--max-chars", 3, "--temperature", 3,
        "--seed", 1,
    )  # fmt: skip
    assert status == 0
    texts = lines_of(stdout)
    assert len(texts) == 8
    assert all(t.startswith("the ") and len(t) <= 4 + 3 for t in texts), texts
    assert any(len(t) == 7 for t in texts)  # at a high temperature some run to the limit


def test_max_chars_stops_a_sample_that_never_ends(tmp_path):
    # A model that always predicts "b": its argmax sample only stops at --max-chars.
    session = charlm.start(charlm.Config(hidden_sizes=(3,), letter_size=2), ["abc", "cab"])
    params = session.model.params
    params["Whd"][:] = 0
    params["bd"][:] = 0
    params["bd"][session.model.vocab.encode("b")[0]] = 5
    path = str(tmp_path / "bbb.rgraph")
    session.save(path)
    status, stdout, _ = run("sample", path, "--argmax", "-n", 2, "--max-chars", 7, "--prime", "ca")
    assert status == 0
    assert stdout == "cabbbbbbb\ncabbbbbbb\n"
    assert run("sample", path, "--argmax", "-n", 1)[1] == "b" * 100 + "\n"  # default 100


def test_batch_size_one_trains_one_sentence_per_step(corpus, tmp_path):
    out = str(tmp_path / "one.rgraph")
    status, events, _ = train(corpus, out, 30, "--batch-size", 1, "--report-every", 10)
    assert status == 0
    assert [r["epoch"] for r in reports(events)] == [10 / 5, 20 / 5, 30 / 5]
    assert reports(events)[-1]["train_perplexity"] < reports(events)[0]["train_perplexity"]
    model = rg.load(out)
    assert model.step == 30
    assert charlm.CharModel.from_file(model).config.batch_size == 1


def test_epochs_count_passes_over_the_training_sentences(corpus, tmp_path):
    out = str(tmp_path / "e.rgraph")
    status, stdout, _ = run("train", "--corpus", corpus, "--epochs", 2, "--out", out, *SMALL)
    assert status == 0 and stdout == ""
    assert rg.load(out).step == 3  # ceil(2 epochs * 5 sentences / batches of 4)


def test_gru_float32_model_trains_and_samples(corpus, tmp_path):
    out = str(tmp_path / "gru.rgraph")
    status, events, _ = train(corpus, out, 20, "--model", "gru", "--dtype", "float32")
    assert status == 0 and events[0]["model"] == "gru"
    model = rg.load(out)
    assert {a.dtype for a in model.params.values()} == {np.dtype(np.float32)}
    assert charlm.CharModel.from_file(model).config.kind == "gru"
    status, stdout, _ = run("sample", out, "-n", 2, "--seed", 0)
    assert status == 0 and len(lines_of(stdout)) == 2


def test_without_json_the_bar_and_reports_go_to_stderr(corpus, tmp_path):
    out = str(tmp_path / "bar.rgraph")
    status, stdout, stderr = run(
        "train", "--corpus", corpus, "--steps", 4, "--out", out, "--report-every", 2, *SMALL
    )
    assert status == 0 and stdout == ""
    assert "step 2 (epoch" in stderr and "step 4 (epoch" in stderr
    assert "argmax: " in stderr and "sample: " in stderr and "unigram" in stderr


# --- --plot ---------------------------------------------------------------------------


def matplotlib_available() -> bool:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        return False
    return True


def test_plot_draws_a_png_or_says_how_to_install_matplotlib(corpus, tmp_path):
    png = tmp_path / "ppl.png"
    status, stdout, stderr = run(
        "train", "--corpus", corpus, "--steps", 6, "--out", tmp_path / "m.rgraph",
        "--report-every", 2, "--json", "--plot", png, *SMALL,
    )  # fmt: skip
    assert status == 0
    assert all(json.loads(line) for line in stdout.splitlines())
    if matplotlib_available():
        assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
        assert stderr == ""
    else:
        assert not png.exists()
        assert stderr.count("\n") == 1 and "pip install" in stderr and "matplotlib" in stderr


def test_plot_without_matplotlib_prints_the_install_hint_and_succeeds(
    corpus, tmp_path, monkeypatch
):
    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    png = tmp_path / "ppl.png"
    status, _, stderr = run(
        "train", "--corpus", corpus, "--steps", 2, "--out", tmp_path / "m.rgraph", "--json",
        "--plot", png, *SMALL,
    )  # fmt: skip
    assert status == 0
    assert not png.exists()
    assert stderr == (
        "--plot needs matplotlib: pip install 'rgraph[plot]' (or pip install matplotlib)\n"
    )
    assert rg.load(str(tmp_path / "m.rgraph")).step == 2  # the model is saved all the same


# --- Ctrl-C and atomic checkpoints ----------------------------------------------------


def interrupt_step(monkeypatch, at: int) -> list[int]:
    """Make the ``at``-th training step raise KeyboardInterrupt (as Ctrl-C would)."""
    calls: list[int] = []
    real_step = charlm.Trainer.step

    def step(self, feeds):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return real_step(self, feeds)

    monkeypatch.setattr(charlm.Trainer, "step", step)
    return calls


def temp_files(folder) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


def test_ctrl_c_saves_the_finished_steps_and_exits_130(corpus, tmp_path, monkeypatch):
    out = tmp_path / "m.rgraph"
    out.write_bytes(b"an older file that is not a model")  # replaced, never appended to
    calls = interrupt_step(monkeypatch, at=6)
    status, stdout, stderr = run(
        "train", "--corpus", corpus, "--steps", 20, "--out", out, "--json", *SMALL
    )
    assert status == 130 and len(calls) == 6
    assert stderr == f"interrupted at step 5; saved to {out}\n"
    assert [json.loads(line)["event"] for line in stdout.splitlines()] == ["start"]
    model = rg.load(str(out))
    assert model.step == 5 and model.optimizer["step"] == 5
    assert temp_files(tmp_path) == []


def test_resuming_an_interrupted_run_equals_the_uninterrupted_run(corpus, tmp_path, monkeypatch):
    a, b, c = (str(tmp_path / f"{x}.rgraph") for x in "abc")
    interrupt_step(monkeypatch, at=7)
    assert run("train", "--corpus", corpus, "--steps", 12, "--out", a, *SMALL)[0] == 130
    monkeypatch.undo()
    assert run_resume(corpus, a, b, 12)[0] == 0
    assert train(corpus, c, 12)[0] == 0
    # the resumed run's train perplexity covers steps 7-12 only, not 1-12
    assert_same_training_state(b, c, keys=("step", "valid"))


def test_ctrl_c_while_writing_a_checkpoint_leaves_the_old_file_whole(corpus, tmp_path, monkeypatch):
    out = str(tmp_path / "m.rgraph")
    assert train(corpus, out, 3)[0] == 0
    before = Path(out).read_bytes()
    real_replace = os.replace
    seen: list[bytes] = []

    def interrupted_replace(src, dst, *args, **kwargs):
        if not seen:  # the first checkpoint: Ctrl-C just before the rename
            seen.append(Path(dst).read_bytes())
            assert os.path.exists(src)
            raise KeyboardInterrupt
        return real_replace(src, dst, *args, **kwargs)

    monkeypatch.setattr(os, "replace", interrupted_replace)
    status, _, stderr = run_resume(corpus, out, out, 8)
    assert status == 130 and stderr == f"interrupted at step 8; saved to {out}\n"
    assert seen == [before]  # while the new file was being written, the old one was intact
    assert rg.load(out).step == 8
    assert temp_files(tmp_path) == []


def test_a_checkpoint_that_cannot_be_written_is_a_one_line_failure(corpus, tmp_path, monkeypatch):
    def disk_full(src, dst, *args, **kwargs):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "replace", disk_full)
    out = tmp_path / "m.rgraph"
    status, _, stderr = run("train", "--corpus", corpus, "--steps", 2, "--out", out, *SMALL)
    assert status == 1
    assert stderr.splitlines()[-1] == f"rgraph train: error: cannot write {str(out)!r}: " + (
        os.strerror(errno.ENOSPC)
    )
    assert "Traceback" not in stderr and not out.exists() and temp_files(tmp_path) == []


# --- bad input ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("", "holds no sentences"),
        ("\n\n   \n\t\n", "holds no sentences"),
        ("aaaa\naa\n\naaa\n", "distinct character"),
    ],
)
def test_a_corpus_that_cannot_train_is_bad_input(tmp_path, text, fragment):
    path = tmp_path / "bad.txt"
    path.write_text(text, encoding="utf-8")
    out = tmp_path / "m.rgraph"
    assert_bad_input(*run("train", "--corpus", path, "--steps", 2, "--out", out), "train", fragment)
    assert not out.exists()


def test_a_corpus_that_is_not_utf8_is_bad_input(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    assert_bad_input(*run("train", "--corpus", path), "train", "cannot read corpus")


@pytest.mark.parametrize(
    "argv",
    [
        ["--hidden", "0"],
        ["--hidden", "20,0"],
        ["--hidden", "20,x"],
        ["--hidden", ""],
        ["--hidden", "20,,20"],
        ["--hidden", "2.5"],
        ["--batch-size", "0"],
        ["--letter-size", "-1"],
        ["--letter-size", "x"],
        ["--steps", "0"],
        ["--lr", "0"],
        ["--lr", "nan"],
        ["--clip", "-5"],
        ["--temperature", "0"],
        ["--report-every", "0"],
        ["--seed", "-1"],
        ["--model", "transformer"],
        ["--steps", "2", "--seconds", "1"],
    ],
)
def test_a_bad_train_option_is_bad_input(corpus, tmp_path, argv):
    out = tmp_path / "m.rgraph"
    status, stdout, stderr = run("train", "--corpus", corpus, "--out", out, *argv)
    assert_bad_input(status, stdout, stderr, "train", f"argument {argv[0]}")
    assert not out.exists()


def test_negative_regularisation_is_bad_input(corpus, tmp_path):
    status, stdout, stderr = run("train", "--corpus", corpus, "--regc", "-1", "--steps", 1)
    assert_bad_input(status, stdout, stderr, "train", "regc")


@pytest.mark.parametrize(
    "argv",
    [["-n", "0"], ["-n", "-2"], ["--max-chars", "0"], ["--temperature", "0"], ["--seed", "-1"]],
)
def test_a_bad_sample_option_is_bad_input(trained, argv):
    _, model = trained
    assert_bad_input(*run("sample", model, *argv), "sample", f"argument {argv[0]}")


def test_missing_paths_are_bad_input(trained, tmp_path):
    corpus, _ = trained
    missing = str(tmp_path / "missing")
    assert_bad_input(*run("train", "--corpus", missing), "train", "does not exist", missing)
    assert_bad_input(*run("sample", missing), "sample", "does not exist", missing)
    status, stdout, stderr = run("train", "--corpus", corpus, "--resume", missing)
    assert_bad_input(status, stdout, stderr, "train", "does not exist", missing)


def test_an_out_path_in_a_missing_folder_is_bad_input_before_training(corpus, tmp_path):
    out = str(tmp_path / "no" / "such" / "folder" / "m.rgraph")
    status, stdout, stderr = run("train", "--corpus", corpus, "--steps", 2, "--out", out)
    assert_bad_input(status, stdout, stderr, "train", out, "does not exist")
    status, stdout, stderr = run("train", "--corpus", corpus, "--steps", 2, "--out", tmp_path)
    assert_bad_input(status, stdout, stderr, "train", "is a folder")


def test_a_prime_with_a_character_outside_the_vocabulary_is_named(trained):
    _, model = trained
    assert_bad_input(*run("sample", model, "--prime", "thQ"), "sample", "'Q'", "vocabulary")


def test_a_file_that_is_not_a_character_model_is_bad_input(trained, tmp_path):
    corpus, _ = trained
    g = rg.Graph("affine")
    x = g.input("x", (2,))
    g.output(g.param("w", (2,), init="uniform") * x, name="y")
    path = str(tmp_path / "affine.rgraph")
    rg.save(path, g, rg.init_params(g, 0))
    assert_bad_input(*run("sample", path), "sample", "not a character model")
    status, stdout, stderr = run("train", "--corpus", corpus, "--resume", path)
    assert_bad_input(status, stdout, stderr, "train", "not a character model")

    garbage = tmp_path / "garbage.rgraph"
    garbage.write_text("hello\n")
    assert_bad_input(*run("sample", garbage), "sample", "not an rgraph file")


def test_resuming_on_another_corpus_is_bad_input(trained, tmp_path):
    _, model = trained
    other = tmp_path / "other.txt"
    other.write_text("xyz\nzyx\n")
    status, stdout, stderr = run(
        "train", "--corpus", other, "--resume", model, "--steps", 40, "--out", tmp_path / "o"
    )
    assert_bad_input(status, stdout, stderr, "train", "another corpus")


def test_resuming_to_no_more_steps_than_were_done_is_bad_input(trained, tmp_path):
    corpus, model = trained  # trained for 30 steps; --steps counts the total
    out = tmp_path / "more.rgraph"
    for steps in (30, 10):
        status, stdout, stderr = run(
            "train", "--corpus", corpus, "--resume", model, "--steps", steps, "--out", out
        )
        assert_bad_input(status, stdout, stderr, "train", "step 30", f"{steps}")
        assert not out.exists()


# --- the installed script -------------------------------------------------------------


def test_the_rgraph_script_trains_and_exits_zero(corpus, tmp_path):
    script = shutil.which("rgraph", path=os.path.dirname(sys.executable)) or shutil.which("rgraph")
    assert script, "the rgraph console script is not installed (pip install -e .)"
    out = tmp_path / "m.rgraph"
    done = subprocess.run(
        [script, "train", "--corpus", corpus, "--steps", "3", "--out", out, "--json", *SMALL],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert [e["event"] for e in events] == ["start", "report"] and events[1]["step"] == 3
    assert rg.load(str(out)).step == 3
