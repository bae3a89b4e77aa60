"""The character-level language model of RecurrentJS's demo, as library pieces.

Sentences -> :class:`Vocabulary` (index 0 is START as input and END as target) -> the
graph of :func:`rgraph.nn.language_model` -> batched training with RMSProp
(:func:`train`) -> perplexity -> samples (:class:`Sampler`) -> a model file whose
metadata holds the vocabulary, so ``rgraph sample`` needs nothing but the file.
``examples/char_rnn.py`` and the ``rgraph train`` / ``rgraph sample`` commands both run
these pieces.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from importlib import resources
from typing import Any

import numpy as np

from rgraph.builder import Graph
from rgraph.errors import RgraphError
from rgraph.exec.optim import Optimizer, RMSProp
from rgraph.exec.program import Program, compile
from rgraph.io.format import Model, save
from rgraph.nn import CELLS, STATE_NAMES, language_model, step_model
from rgraph.train import Trainer, pad_sequences, perplexity

TASK = "char_lm"
BUILTIN_CORPUS = "sentences.txt"


class CharModelError(RgraphError):
    """Bad input to the character model: corpus, vocabulary, options or model file."""


# --- corpus and vocabulary ------------------------------------------------------------


def read_corpus(path: str | None = None) -> list[str]:
    """Sentences, one per line, blank lines dropped (RecurrentJS's demo); the built-in
    corpus (sentences written for rgraph, shipped with the package) when ``path`` is None."""
    try:
        if path is None:
            text = resources.files("rgraph.data").joinpath(BUILTIN_CORPUS).read_text("utf-8")
        else:
            with open(path, encoding="utf-8") as f:
                text = f.read()
    except FileNotFoundError:
        raise CharModelError(f"corpus {path!r} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CharModelError(f"cannot read corpus {path!r}: {e}") from None
    sentences = [line.strip("\r") for line in text.split("\n") if line.strip()]
    if not sentences:
        raise CharModelError(f"corpus {path or BUILTIN_CORPUS!r} holds no sentences")
    return sentences


def corpus_digest(sentences: Sequence[str]) -> str:
    """A SHA-256 of the sentences, so a resumed run can check it has the same corpus."""
    return hashlib.sha256("\n".join(sentences).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class Vocabulary:
    """The characters of a corpus: ``letters[i]`` has index ``i + 1``; 0 is START/END."""

    letters: tuple[str, ...]

    @classmethod
    def from_sentences(cls, sentences: Sequence[str]) -> Vocabulary:
        letters = tuple(sorted(set("".join(sentences))))
        if len(letters) < 2:
            raise CharModelError(
                f"the corpus uses {len(letters)} distinct character(s)"
                f" ({''.join(letters)!r}): a language model needs at least 2"
            )
        return cls(letters)

    @classmethod
    def from_metadata(cls, metadata: dict[str, Any]) -> Vocabulary:
        vocab = metadata.get("vocab")
        if not isinstance(vocab, list) or not all(
            isinstance(c, str) and len(c) == 1 for c in vocab
        ):
            raise CharModelError("the model file has no character vocabulary (metadata.vocab)")
        return cls(tuple(vocab))

    @property
    def size(self) -> int:
        """Number of classes: the letters plus START/END."""
        return len(self.letters) + 1

    def encode(self, text: str) -> list[int]:
        index = self._index
        missing = sorted({c for c in text if c not in index})
        if missing:
            raise CharModelError(
                f"character(s) {''.join(missing)!r} of {text!r} are not in the vocabulary"
            )
        return [index[c] for c in text]

    def decode(self, indices: Sequence[int]) -> str:
        return "".join(self.letters[i - 1] for i in indices if i > 0)

    @property
    def _index(self) -> dict[str, int]:
        return {c: i + 1 for i, c in enumerate(self.letters)}

    def metadata(self) -> dict[str, Any]:
        """The file metadata of the vocabulary (the keys RecurrentJS interop uses too)."""
        return {
            "vocab": list(self.letters),
            "letter_to_index": self._index,
            "index_to_letter": {str(i + 1): c for i, c in enumerate(self.letters)},
        }


def split(sentences: Sequence[str], fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """A seeded train/validation split; the validation part has at least one sentence
    when ``fraction > 0`` and there are two or more sentences."""
    order = np.random.default_rng(seed).permutation(len(sentences))
    n_valid = min(
        max(round(fraction * len(sentences)), 1 if fraction > 0 else 0), len(sentences) - 1
    )
    valid = sorted(order[:n_valid].tolist())
    keep = sorted(order[n_valid:].tolist())
    return [sentences[i] for i in keep], [sentences[i] for i in valid]


def unigram_perplexity(train: Sequence[str], valid: Sequence[str], vocab: Vocabulary) -> float:
    """Perplexity of a unigram model (character frequencies of ``train`` incl. END, add-one
    smoothed) on ``valid``: the baseline a language model must beat."""
    counts = np.ones(vocab.size)
    for s in train:
        np.add.at(counts, vocab.encode(s), 1)
        counts[0] += 1
    logp = np.log(counts / counts.sum())
    nll, n = 0.0, 0
    for s in valid:
        ids = [i for i in (vocab._index.get(c) for c in s) if i is not None] + [0]
        nll -= float(logp[ids].sum())
        n += len(ids)
    return math.exp(nll / max(n, 1))


# --- the model ------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    """The model and its training; the defaults follow the RecurrentJS demo."""

    kind: str = "lstm"
    hidden_sizes: tuple[int, ...] = (20, 20)
    letter_size: int = 5
    dtype: str = "float64"
    batch_size: int = 16
    lr: float = 0.01
    regc: float = 1e-6
    clip: float = 5.0
    seed: int = 0
    valid_fraction: float = 0.05

    def __post_init__(self) -> None:
        if self.kind not in CELLS:
            raise CharModelError(f"unknown model {self.kind!r}: use one of {', '.join(CELLS)}")
        sizes = {"batch size": self.batch_size, "letter size": self.letter_size}
        sizes.update({f"hidden size {h}": h for h in self.hidden_sizes})
        for what, value in sizes.items():
            if not isinstance(value, int) or value <= 0:
                raise CharModelError(f"{what} must be a positive integer, got {value!r}")
        if not self.hidden_sizes:
            raise CharModelError("give at least one hidden size")
        if self.dtype not in ("float32", "float64"):
            raise CharModelError(f"dtype must be float32 or float64, got {self.dtype!r}")
        if not (self.lr > 0 and self.regc >= 0 and self.clip > 0):
            raise CharModelError("lr and clip must be positive, regc non-negative")
        if not 0 <= self.valid_fraction < 1:
            raise CharModelError("the validation fraction must be in [0, 1)")


def build_graph(config: Config, vocab: Vocabulary) -> Graph:
    """The training graph: embedding, recurrent layers with scan, decoder, masked loss."""
    g = Graph(f"char_{config.kind}")
    language_model(
        g,
        vocab.size,
        kind=config.kind,
        hidden_sizes=list(config.hidden_sizes),
        letter_size=config.letter_size,
        dtype=config.dtype,
    )
    return g


@dataclass
class CharModel:
    """A character model: configuration, vocabulary and parameters."""

    config: Config
    vocab: Vocabulary
    params: dict[str, np.ndarray]

    def metadata(self, **extra: Any) -> dict[str, Any]:
        c = self.config
        return {
            "task": TASK,
            "generator": c.kind,
            "hidden_sizes": list(c.hidden_sizes),
            "letter_size": c.letter_size,
            **self.vocab.metadata(),
            "config": {**asdict(c), "hidden_sizes": list(c.hidden_sizes)},
            **extra,
        }

    @classmethod
    def from_file(cls, model: Model) -> CharModel:
        """The character model in a loaded file; a clear error if it is not one."""
        meta = model.metadata or {}
        if "vocab" not in meta or "generator" not in meta:
            raise CharModelError(
                "this model file is not a character model (its metadata has no vocabulary)"
            )
        vocab = Vocabulary.from_metadata(meta)
        stored = dict(meta.get("config") or {})
        stored.setdefault("kind", meta["generator"])
        stored.setdefault("hidden_sizes", meta.get("hidden_sizes", []))
        stored.setdefault("letter_size", meta.get("letter_size"))
        dtype = next(iter(model.params.values())).dtype.name if model.params else "float64"
        stored.setdefault("dtype", dtype)
        try:
            config = Config(**{**stored, "hidden_sizes": tuple(stored["hidden_sizes"])})
        except (TypeError, ValueError) as e:
            raise CharModelError(
                f"the model file's character-model settings are bad: {e}"
            ) from None
        expected = {p.name: p.type for p in build_graph(config, vocab).ir.params}
        for name, t in expected.items():
            arr = model.params.get(name)
            if arr is None or list(arr.shape) != list(t.shape):
                raise CharModelError(
                    f"this model file is not a {config.kind} character model of its stated"
                    f" sizes: parameter {name!r} is missing or has another shape"
                )
        return cls(config, vocab, {k: np.array(v) for k, v in model.params.items()})


class Sampler:
    """Generates sentences one character at a time with the step graph.

    Several samples run as one batch. Each starts from START (and an optional priming
    text) and ends at END or after ``max_chars`` characters; the next character is drawn
    from ``softmax(logits / temperature)``, or is the most likely with ``argmax``.
    """

    def __init__(self, model: CharModel):
        self.model = model
        c = model.config
        g = Graph(f"char_{c.kind}_step")
        self.step = step_model(
            g,
            model.vocab.size,
            kind=c.kind,
            hidden_sizes=list(c.hidden_sizes),
            letter_size=c.letter_size,
            dtype=c.dtype,
        )
        self.program: Program = compile(g)
        self.state_names = [v.name for layer in self.step.state for v in layer]

    def generate(
        self,
        n: int = 1,
        *,
        temperature: float = 1.0,
        argmax: bool = False,
        prime: str = "",
        max_chars: int = 100,
        rng: np.random.Generator | None = None,
    ) -> list[str]:
        """``n`` sentences (the priming text included)."""
        if n <= 0 or max_chars <= 0:
            raise CharModelError("the number of samples and --max-chars must be positive")
        if not argmax and not temperature > 0:
            raise CharModelError(f"temperature must be positive, got {temperature}")
        rng = rng if rng is not None else np.random.default_rng()
        primed = self.model.vocab.encode(prime)
        c = self.model.config
        dtype = np.dtype(c.dtype)
        state = {
            f"{name}{d}": np.zeros((n, h), dtype)
            for d, h in enumerate(c.hidden_sizes)
            for name in STATE_NAMES[len(self.step.state[0])]
        }
        out = [list(primed) for _ in range(n)]
        done = np.zeros(n, bool)
        token = np.zeros(n, np.int32)
        for t in range(len(primed) + max_chars):
            res = self.program.run({"token": token, **state}, self.model.params).outputs
            state = {name: res[name + "_next"] for name in state}
            if t < len(primed):
                token = np.full(n, primed[t], np.int32)
                continue
            if len(out[0]) - len(primed) >= max_chars or done.all():
                break
            token = self._choose(res["logits"].astype(np.float64), temperature, argmax, rng)
            for i in np.flatnonzero(~done):
                if token[i] == 0:
                    done[i] = True
                else:
                    out[i].append(int(token[i]))
        return [self.model.vocab.decode(ids) for ids in out]

    @staticmethod
    def _choose(logits, temperature, argmax, rng) -> np.ndarray:
        if argmax:
            return np.argmax(logits, axis=1).astype(np.int32)
        z = logits / temperature
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        u = rng.random((len(p), 1))
        picked = (np.cumsum(p, axis=1) < u).sum(axis=1)
        return np.minimum(picked, p.shape[1] - 1).astype(np.int32)


# --- training -------------------------------------------------------------------------


@dataclass
class Report:
    """One progress report of :func:`train`."""

    step: int
    epoch: float
    seconds: float
    train_perplexity: float
    valid_perplexity: float | None
    chars_per_second: float
    argmax: str = ""
    samples: list[str] = field(default_factory=list)


@dataclass
class Session:
    """Everything a training run holds; what a checkpoint saves and a resume restores."""

    model: CharModel
    optimizer: Optimizer
    rng: np.random.Generator
    step: int
    train: list[str]
    valid: list[str]
    corpus: str  # SHA-256 of the sentences
    history: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0

    def save(self, path: str) -> None:
        """An atomic checkpoint: weights, optimiser, RNG, step, vocabulary and history."""
        save(
            path,
            build_graph(self.model.config, self.model.vocab),
            self.model.params,
            optimizer=self.optimizer,
            rng=self.rng,
            step=self.step,
            metadata=self.model.metadata(
                corpus_sha256=self.corpus, history=self.history, seconds=self.seconds
            ),
        )


def start(config: Config, sentences: Sequence[str]) -> Session:
    """A fresh session: vocabulary, split and initial weights from ``config.seed``."""
    from rgraph.init import init_params

    vocab = Vocabulary.from_sentences(sentences)
    train_part, valid_part = split(sentences, config.valid_fraction, config.seed)
    graph = build_graph(config, vocab)
    model = CharModel(config, vocab, init_params(graph, config.seed))
    optimizer = RMSProp(lr=config.lr, regc=config.regc, clipval=config.clip)
    rng = np.random.default_rng([config.seed, 1])
    return Session(model, optimizer, rng, 0, train_part, valid_part, corpus_digest(sentences))


def resume(file: Model, sentences: Sequence[str]) -> Session:
    """The session saved in ``file``, checked against the corpus it was trained on."""
    model = CharModel.from_file(file)
    meta = file.metadata
    digest = corpus_digest(sentences)
    if meta.get("corpus_sha256") not in (None, digest):
        raise CharModelError("the model was trained on another corpus: give the same --corpus")
    if file.optimizer is None or file.rng is None or file.step is None:
        raise CharModelError("the model file has no training state (optimiser, RNG, step)")
    optimizer = Optimizer.from_state_dict(file.optimizer, model.params)
    train_part, valid_part = split(sentences, model.config.valid_fraction, model.config.seed)
    return Session(
        model,
        optimizer,
        file.rng,
        file.step,
        train_part,
        valid_part,
        digest,
        history=list(meta.get("history") or []),
        seconds=float(meta.get("seconds") or 0.0),
    )


def batches(
    sentences: Sequence[str], vocab: Vocabulary, size: int, dtype: str = "float64"
) -> Iterator[dict]:
    """Padded batches of consecutive sentences, sorted by length to waste little padding."""
    ordered = sorted(sentences, key=len)
    for i in range(0, len(ordered), size):
        yield pad_sequences([vocab.encode(s) for s in ordered[i : i + size]], dtype=dtype)


def train(
    session: Session,
    *,
    steps: int | None = None,
    seconds: float | None = None,
    report_every: int = 50,
    samples: int = 5,
    temperature: float = 1.0,
    on_report: Callable[[Report], None] = lambda r: None,
    on_step: Callable[[Session, float, float], None] = lambda s, cps, ppl: None,
    checkpoint: Callable[[Session], None] = lambda s: None,
    checkpoint_every: float = 30.0,
) -> Session:
    """Train until ``session.step`` reaches ``steps`` or ``seconds`` have passed.

    Each step draws ``batch_size`` random sentences from the training part (as RecurrentJS
    draws one per tick) with the session's RNG, so a resumed session continues exactly
    where it stopped. Every ``report_every`` steps (and at the end) it calls ``on_report``
    with train and validation perplexity, the argmax sentence and samples; reports draw
    from their own RNG, so how often one reports changes nothing in the training.
    ``on_step`` gets the session, characters per second and the training perplexity
    since the last report after every step; ``checkpoint`` is called every
    ``checkpoint_every`` seconds and at the end.
    """
    model, config = session.model, session.model.config
    graph = build_graph(config, model.vocab)
    trainer = Trainer(graph, session.optimizer, params=model.params, step=session.step)
    sampler = Sampler(model)
    encoded = [model.vocab.encode(s) for s in session.train]
    window_nll = window_count = 0.0
    window_chars, window_start = 0, time.perf_counter()
    last_checkpoint = time.perf_counter()
    began = time.perf_counter()
    offset = session.seconds

    def done() -> bool:
        if steps is not None and session.step >= steps:
            return True
        return seconds is not None and time.perf_counter() - began >= seconds

    while not done():
        rng_state = session.rng.bit_generator.state
        picked = session.rng.integers(0, len(encoded), size=config.batch_size)
        feeds = pad_sequences([encoded[i] for i in picked], dtype=config.dtype)
        before = trainer.step_count
        try:
            with _ctrl_c_after_the_step():
                step_report = trainer.step(feeds)
                session.step = trainer.step_count
                session.seconds = offset + time.perf_counter() - began
        except BaseException:
            if trainer.step_count == before:  # the step did not happen, nor did its draw
                session.rng.bit_generator.state = rng_state
            raise
        window_nll += step_report.nll
        window_count += step_report.count
        window_chars += int(step_report.count)
        del step_report  # (held into the next step, its norm and clip count get measured)
        cps = window_chars / max(time.perf_counter() - window_start, 1e-9)
        on_step(session, cps, perplexity(window_nll, window_count))
        last = done()
        if session.step % report_every == 0 or last:
            report = _report(
                session, trainer, sampler, window_nll, window_count, cps, samples, temperature
            )
            session.history.append(
                {
                    "step": report.step,
                    "seconds": report.seconds,
                    "train": report.train_perplexity,
                    "valid": report.valid_perplexity,
                }
            )
            on_report(report)
            window_nll = window_count = 0.0
            window_chars, window_start = 0, time.perf_counter()
        if last or time.perf_counter() - last_checkpoint >= checkpoint_every:
            checkpoint(session)
            last_checkpoint = time.perf_counter()
    return session


@contextlib.contextmanager
def _ctrl_c_after_the_step() -> Iterator[None]:
    """Hold a Ctrl-C that arrives during a step (its update is half done) until the step
    has finished, so an interrupted session is always at a step boundary."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def evaluate(trainer: Trainer, model: CharModel, sentences: Sequence[str]) -> float | None:
    """Perplexity of ``model`` (whose parameters ``trainer`` trains) on ``sentences`` (None
    when there are none), with the trainer's evaluation program: compiled once."""
    if not sentences:
        return None
    return perplexity(*trainer.evaluate(batches(sentences, model.vocab, 64, model.config.dtype)))


def _report(session, trainer, sampler, nll, count, cps, samples, temperature) -> Report:
    rng = np.random.default_rng([session.model.config.seed, 2, session.step])
    return Report(
        step=session.step,
        epoch=session.step * session.model.config.batch_size / len(session.train),
        seconds=session.seconds,
        train_perplexity=perplexity(nll, count) if count else float("nan"),
        valid_perplexity=evaluate(trainer, session.model, session.valid),
        chars_per_second=cps,
        argmax=sampler.generate(1, argmax=True)[0],
        samples=sampler.generate(samples, temperature=temperature, rng=rng) if samples else [],
    )
