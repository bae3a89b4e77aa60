"""The character model's library pieces: corpus, vocabulary, split, baseline, sampler,
training sessions and model files (``rgraph train`` / ``sample`` are in test_cli_train.py)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

import rgraph as rg
from rgraph import charlm
from rgraph.charlm import CharModelError, Config, Sampler, Vocabulary

SENTENCES = ["the cat sat.", "the dog ran.", "a cat ran.", "the dog sat on a mat.", "a mat."]
SMALL = {"hidden_sizes": (6,), "letter_size": 3, "batch_size": 4}


def small(**changes) -> Config:
    return Config(**{**SMALL, **changes})


# --- vocabulary and corpus ------------------------------------------------------------


def test_vocabulary_reserves_index_0_and_round_trips():
    vocab = Vocabulary.from_sentences(["ba", "cab", "é a"])
    assert vocab.letters == (" ", "a", "b", "c", "é")
    assert vocab.size == 6  # five characters and START/END
    assert vocab.encode("cab é") == [4, 2, 3, 1, 5]
    assert vocab.decode([0, 4, 2, 3, 1, 5, 0]) == "cab é"  # 0 (START/END) decodes to nothing
    assert vocab.decode(vocab.encode("é ba")) == "é ba"

    meta = vocab.metadata()
    assert meta == {
        "vocab": [" ", "a", "b", "c", "é"],
        "letter_to_index": {" ": 1, "a": 2, "b": 3, "c": 4, "é": 5},
        "index_to_letter": {"1": " ", "2": "a", "3": "b", "4": "c", "5": "é"},
    }
    assert Vocabulary.from_metadata(meta) == vocab


def test_vocabulary_errors_name_the_problem():
    vocab = Vocabulary.from_sentences(["abc"])
    with pytest.raises(CharModelError, match=r"'dz' of 'adz' are not in the vocabulary"):
        vocab.encode("adz")
    with pytest.raises(CharModelError, match="1 distinct character"):
        Vocabulary.from_sentences(["aaa", "a"])
    for bad in ({}, {"vocab": "abc"}, {"vocab": ["ab", "c"]}, {"vocab": [1, 2]}):
        with pytest.raises(CharModelError, match="no character vocabulary"):
            Vocabulary.from_metadata(bad)


def test_read_corpus_drops_blank_lines_only(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"one two\n\n   \n\t\r\n  indented \r\nlast")
    assert charlm.read_corpus(str(path)) == ["one two", "  indented ", "last"]


def test_read_corpus_errors(tmp_path):
    with pytest.raises(CharModelError, match="does not exist"):
        charlm.read_corpus(str(tmp_path / "missing.txt"))
    (tmp_path / "blank.txt").write_text("\n \n\n")
    with pytest.raises(CharModelError, match="holds no sentences"):
        charlm.read_corpus(str(tmp_path / "blank.txt"))


def test_builtin_corpus_is_many_sentences():
    sentences = charlm.read_corpus()
    assert len(sentences) > 100 and all(s.strip() for s in sentences)
    assert len(Vocabulary.from_sentences(sentences).letters) > 26


def test_split_is_seeded_disjoint_and_complete():
    sentences = [f"sentence {i}" for i in range(20)]
    train, valid = charlm.split(sentences, 0.25, seed=3)
    assert len(valid) == 5 and len(train) == 15
    assert set(train).isdisjoint(valid) and set(train) | set(valid) == set(sentences)
    assert charlm.split(sentences, 0.25, seed=3) == (train, valid)
    assert charlm.split(sentences, 0.25, seed=4)[1] != valid
    assert charlm.split(sentences, 0.0, seed=3) == (sentences, [])
    assert len(charlm.split(sentences[:3], 0.01, seed=0)[1]) == 1  # at least one
    assert charlm.split(sentences[:1], 0.5, seed=0) == (sentences[:1], [])  # keep one to train


def test_unigram_perplexity_by_hand():
    vocab = Vocabulary.from_sentences(["ab", "a", "ba"])  # END=0, a=1, b=2
    # add-one counts over the train part ["ab", "a"]: END 1+2, a 1+2, b 1+1 -> /8
    p = {"END": 3 / 8, "a": 3 / 8, "b": 2 / 8}
    expected = math.exp(-(math.log(p["b"]) + math.log(p["a"]) + math.log(p["END"])) / 3)
    assert charlm.unigram_perplexity(["ab", "a"], ["ba"], vocab) == pytest.approx(expected)
    expected2 = math.exp(-(2 * math.log(p["a"]) + 2 * math.log(p["END"])) / 4)
    assert charlm.unigram_perplexity(["ab", "a"], ["a", "a"], vocab) == pytest.approx(expected2)


def test_config_rejects_bad_settings():
    for bad in (
        {"kind": "transformer"},
        {"hidden_sizes": ()},
        {"hidden_sizes": (4, 0)},
        {"letter_size": 0},
        {"batch_size": -1},
        {"dtype": "int32"},
        {"lr": 0.0},
        {"regc": -1e-6},
        {"clip": 0.0},
        {"valid_fraction": 1.0},
    ):
        with pytest.raises(CharModelError):
            small(**bad)


# --- the sampler ----------------------------------------------------------------------


def fixed_output_model(bias: dict[str, float], kind: str = "rnn") -> charlm.CharModel:
    """A model whose next-character logits are ``bias`` whatever the input ("" is END)."""
    config = small(kind=kind, hidden_sizes=(3,), letter_size=2)
    vocab = Vocabulary.from_sentences(["abc"])
    params = rg.init_params(charlm.build_graph(config, vocab), 0)
    params["Whd"][:] = 0
    params["bd"][:] = -30
    for letter, value in bias.items():
        params["bd"][vocab.encode(letter)[0] if letter else 0] = value
    return charlm.CharModel(config, vocab, params)


def test_sampler_stops_at_end_and_at_max_chars():
    ends = Sampler(fixed_output_model({"": 5.0, "b": 0.0}))
    assert ends.generate(3, argmax=True) == ["", "", ""]
    assert ends.generate(2, argmax=True, prime="cab") == ["cab", "cab"]
    assert ends.generate(2, rng=np.random.default_rng(0)) == ["", ""]
    never_ends = Sampler(fixed_output_model({"b": 5.0}))
    assert never_ends.generate(2, argmax=True, prime="ca", max_chars=6) == ["cabbbbbb"] * 2
    assert never_ends.generate(1, argmax=True) == ["b" * 100]  # RecurrentJS's limit


def test_samples_of_a_batch_end_independently():
    # P(END) = P("a") = 1/2 at every step: lengths are geometric with mean 1.
    sampler = Sampler(fixed_output_model({"": 0.0, "a": 0.0}))
    texts = sampler.generate(400, max_chars=60, rng=np.random.default_rng(1))
    assert all(set(t) <= {"a"} for t in texts)
    lengths = np.array([len(t) for t in texts])
    assert abs(lengths.mean() - 1.0) < 0.25
    assert np.mean(lengths == 0) == pytest.approx(0.5, abs=0.08)
    assert lengths.max() >= 4  # some run on while others have ended


def trained_like_model(kind: str) -> charlm.CharModel:
    """An untrained model with weights large enough to make sharp, context-dependent logits."""
    config = small(kind=kind, hidden_sizes=(7, 5), letter_size=4)
    vocab = Vocabulary.from_sentences(SENTENCES)
    params = rg.init_params(charlm.build_graph(config, vocab), 0)
    return charlm.CharModel(config, vocab, {k: v * 25 for k, v in params.items()})


def sequence_logits(model: charlm.CharModel, prefix: list[int]) -> np.ndarray:
    """The training graph's logits (scan over the whole prefix) at the last position."""
    program = rg.compile(charlm.build_graph(model.config, model.vocab), ["logits"])
    feeds = rg.train.pad_sequences([prefix], dtype=model.config.dtype)
    return program.run(feeds, model.params).outputs["logits"][-1, 0]


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_argmax_sampling_is_greedy_decoding_of_the_training_graph(kind):
    model = trained_like_model(kind)
    greedy = {}
    for prime in ("the ", ""):
        expected = model.vocab.encode(prime)
        for _ in range(12):
            nxt = int(np.argmax(sequence_logits(model, expected)))
            if nxt == 0:  # END
                break
            expected.append(nxt)
        greedy[prime] = model.vocab.decode(expected)
        got = Sampler(model).generate(2, argmax=True, prime=prime, max_chars=12)
        assert got == [greedy[prime]] * 2
    assert len(set(greedy[""])) >= 2  # something worth comparing, not one repeated character


def test_sampling_draws_from_softmax_of_logits_over_temperature():
    model = trained_like_model("lstm")
    temperature, n = 0.7, 6000
    z = sequence_logits(model, model.vocab.encode("th")) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    texts = Sampler(model).generate(
        n, temperature=temperature, prime="th", max_chars=1, rng=np.random.default_rng(0)
    )
    counts = np.zeros(model.vocab.size)
    for t in texts:
        counts[model.vocab.encode(t[2:])[0] if len(t) > 2 else 0] += 1
    assert p.max() < 0.9 and (p > 0.02).sum() >= 3  # a distribution worth checking
    assert np.abs(counts / n - p).max() < 5 * math.sqrt(0.25 / n)


def test_sampler_seeds_and_bad_arguments():
    sampler = Sampler(trained_like_model("rnn"))
    a = sampler.generate(4, rng=np.random.default_rng(3))
    assert sampler.generate(4, rng=np.random.default_rng(3)) == a
    assert sampler.generate(4, rng=np.random.default_rng(4)) != a
    with pytest.raises(CharModelError, match="'Q'"):
        sampler.generate(1, prime="tQ")
    for bad in ({"n": 0}, {"max_chars": 0}, {"temperature": 0.0}, {"temperature": -1.0}):
        with pytest.raises(CharModelError):
            sampler.generate(**{"n": 1, **bad})


# --- model files ----------------------------------------------------------------------


def test_char_model_from_file_rejects_other_files(tmp_path):
    g = rg.Graph("affine")
    x = g.input("x", (2,))
    g.output(g.param("w", (2,), init="uniform") * x, name="y")
    path = str(tmp_path / "affine.rgraph")
    rg.save(path, g, rg.init_params(g, 0), metadata={"task": "something else"})
    with pytest.raises(CharModelError, match="not a character model"):
        charlm.CharModel.from_file(rg.load(path))


def test_char_model_from_file_checks_parameter_shapes(tmp_path):
    session = charlm.start(small(), SENTENCES)
    path = str(tmp_path / "m.rgraph")
    session.save(path)
    model = rg.load(path)
    loaded = charlm.CharModel.from_file(model)
    assert loaded.config == session.model.config and loaded.vocab == session.model.vocab
    assert all(np.array_equal(loaded.params[k], v) for k, v in session.model.params.items())

    model.metadata["config"]["hidden_sizes"] = [9]
    with pytest.raises(CharModelError, match="missing or has another shape"):
        charlm.CharModel.from_file(model)
    model.metadata["config"]["hidden_sizes"] = [6]
    model.metadata["config"]["kind"] = "nonsense"
    with pytest.raises(CharModelError):
        charlm.CharModel.from_file(model)


def test_resume_checks_corpus_and_training_state(tmp_path):
    session = charlm.start(small(), SENTENCES)
    path = str(tmp_path / "m.rgraph")
    session.save(path)
    with pytest.raises(CharModelError, match="another corpus"):
        charlm.resume(rg.load(path), SENTENCES[:-1])
    bare = dataclasses.replace(rg.load(path), optimizer=None)
    with pytest.raises(CharModelError, match="no training state"):
        charlm.resume(bare, SENTENCES)


# --- training -------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_each_kind_trains_saves_and_resumes(kind, tmp_path):
    session = charlm.start(small(kind=kind), SENTENCES)
    reports: list[charlm.Report] = []
    saved: list[int] = []
    charlm.train(
        session,
        steps=24,
        report_every=8,
        samples=2,
        on_report=reports.append,
        checkpoint=lambda s: saved.append(s.step),
    )
    assert session.step == 24 and saved == [24]
    assert [r.step for r in reports] == [8, 16, 24]
    assert [h["step"] for h in session.history] == [8, 16, 24]
    assert reports[-1].train_perplexity < 0.7 * reports[0].train_perplexity
    assert all(len(r.samples) == 2 and r.valid_perplexity > 1 for r in reports)

    path = str(tmp_path / "m.rgraph")
    session.save(path)
    resumed = charlm.resume(rg.load(path), SENTENCES)
    assert resumed.step == 24 and resumed.model.config.kind == kind
    assert resumed.history == session.history
    charlm.train(resumed, steps=26, report_every=100, samples=0)
    charlm.train(session, steps=26, report_every=100, samples=0)
    for name, value in session.model.params.items():
        assert np.array_equal(resumed.model.params[name], value), name


def test_training_measures_no_step_it_does_not_report(monkeypatch):
    # The optimiser computes a step's gradient norm and clipped count only for stats
    # still held at the next step: the training loop holds none.
    measured = []
    layout = rg.exec.optim._Layout
    norm, clipped = layout.norm, layout.clipped
    monkeypatch.setattr(layout, "norm", lambda self: measured.append("norm") or norm(self))
    monkeypatch.setattr(
        layout, "clipped", lambda self, c: measured.append("clip") or clipped(self, c)
    )
    session = charlm.start(small(), SENTENCES)
    charlm.train(session, steps=5, report_every=100, samples=0)
    assert session.step == 5 and measured == []


def test_reports_evaluate_with_the_trainers_own_programs(monkeypatch):
    # A report measures the validation perplexity without compiling anything or packing
    # the store again: the arrays trained stay the same objects, report after report.
    session = charlm.start(small(), SENTENCES)
    compiles = []
    compile_ = rg.train.compile
    monkeypatch.setattr(
        rg.train, "compile", lambda *a, **k: compiles.append(1) or compile_(*a, **k)
    )
    arrays = {}
    reports = []

    def seen(report):
        reports.append(report.valid_perplexity)
        arrays[report.step] = dict(session.model.params)

    charlm.train(session, steps=9, report_every=3, samples=0, on_report=seen)
    assert len(reports) == 3 and all(r is not None and r > 1.0 for r in reports)
    assert len(compiles) == 2  # the trainer's step and evaluation programs, once
    assert all(arrays[6][k] is arrays[3][k] and arrays[9][k] is arrays[3][k] for k in arrays[3])


def test_float32_training_stays_float32(tmp_path):
    session = charlm.start(small(dtype="float32"), SENTENCES)
    reports: list[charlm.Report] = []
    charlm.train(session, steps=16, report_every=8, samples=1, on_report=reports.append)
    assert {a.dtype for a in session.model.params.values()} == {np.dtype(np.float32)}
    assert reports[-1].train_perplexity < reports[0].train_perplexity
    assert all(math.isfinite(r.valid_perplexity) for r in reports)
    path = str(tmp_path / "m.rgraph")
    session.save(path)
    loaded = charlm.CharModel.from_file(rg.load(path))
    assert loaded.config.dtype == "float32"
    assert all(isinstance(t, str) for t in Sampler(loaded).generate(2, max_chars=10))


def test_train_for_seconds_stops_and_checkpoints():
    session = charlm.start(small(), SENTENCES)
    saved: list[int] = []
    charlm.train(session, seconds=0.05, samples=0, checkpoint=lambda s: saved.append(s.step))
    assert session.step >= 1 and saved == [session.step]
    assert session.history[-1]["step"] == session.step
