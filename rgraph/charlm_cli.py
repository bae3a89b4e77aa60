"""``rgraph train`` and ``rgraph sample``: the character demo on the command line.

Both run :mod:`rgraph.charlm`; this module only turns options into calls and reports
into text, a progress bar or JSON lines.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from typing import Any

import numpy as np

from rgraph.charlm import (
    CharModel,
    CharModelError,
    Config,
    Report,
    Sampler,
    Session,
    read_corpus,
    resume,
    start,
    train,
    unigram_perplexity,
)
from rgraph.cli_args import check_model_path, non_negative_int, positive_float, positive_int
from rgraph.io.format import load

DEFAULT_SECONDS = 60.0
EXIT_INTERRUPTED = 130


def _sizes(text: str) -> tuple[int, ...]:
    try:
        sizes = tuple(int(part) for part in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated positive integers such as 20,20, got {text!r}"
        ) from None
    if not sizes or min(sizes) <= 0:
        raise argparse.ArgumentTypeError(f"sizes must be positive, got {text!r}")
    return sizes


# --- train ------------------------------------------------------------------------------


def train_arguments(p: argparse.ArgumentParser) -> None:
    d = Config()
    p.add_argument("--corpus", metavar="FILE", help="sentences, one per line (default: built-in)")
    p.add_argument("--model", choices=["lstm", "rnn", "gru"], default=d.kind)
    p.add_argument("--hidden", type=_sizes, default=d.hidden_sizes, metavar="20,20")
    p.add_argument("--letter-size", type=positive_int, default=d.letter_size)
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size)
    p.add_argument("--lr", type=positive_float, default=d.lr)
    p.add_argument("--regc", type=float, default=d.regc, help="L2 regularisation strength")
    p.add_argument("--clip", type=positive_float, default=d.clip, help="gradient clip value")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--seconds", type=positive_float, help=f"default {DEFAULT_SECONDS:g}")
    length.add_argument("--epochs", type=positive_float, help="passes over the training part")
    length.add_argument("--steps", type=positive_int, help="total number of training steps")
    p.add_argument("--seed", type=non_negative_int, default=d.seed)
    p.add_argument("--dtype", choices=["float32", "float64"], default=d.dtype)
    p.add_argument("--out", default="model.rgraph", help="checkpoint file (default model.rgraph)")
    p.add_argument("--resume", metavar="MODEL", help="continue the training saved in MODEL")
    p.add_argument("--temperature", type=positive_float, default=1.0, help="of the samples")
    p.add_argument("--report-every", type=positive_int, default=100, metavar="STEPS")
    p.add_argument("--samples", type=int, default=5, help="samples shown per report")
    p.add_argument("--json", action="store_true", help="one JSON object per report, no bar")
    p.add_argument("--plot", metavar="PNG", help="draw train/validation perplexity over time")


def run_train(args: argparse.Namespace) -> int:
    _check_out(args.out)
    sentences = read_corpus(args.corpus)
    if args.resume:
        session = resume(_load(args.resume), sentences)
    else:
        config = Config(
            kind=args.model,
            hidden_sizes=tuple(args.hidden),
            letter_size=args.letter_size,
            dtype=args.dtype,
            batch_size=args.batch_size,
            lr=args.lr,
            regc=args.regc,
            clip=args.clip,
            seed=args.seed,
        )
        session = start(config, sentences)
    steps, seconds = _length(args, session)
    if steps is not None and steps <= session.step:
        raise CharModelError(
            f"{args.resume!r} is already at step {session.step} and --steps/--epochs count"
            f" all steps: ask for more than {session.step} (got {steps})"
        )
    out = _Output(args, session)
    try:
        train(
            session,
            steps=steps,
            seconds=seconds,
            report_every=args.report_every,
            samples=max(args.samples, 0),
            temperature=args.temperature,
            on_report=out.report,
            on_step=out.step,
            checkpoint=lambda s: _save(s, args.out),
        )
    except KeyboardInterrupt:
        out.close()
        _save(session, args.out)
        print(f"interrupted at step {session.step}; saved to {args.out}", file=sys.stderr)
        return EXIT_INTERRUPTED
    out.close()
    if args.plot:
        _plot(session, args.plot)
    return 0


def _check_out(path: str) -> None:
    """Fail before training, not at the first checkpoint, when --out cannot be a file."""
    if os.path.isdir(path):
        raise CharModelError(f"--out {path!r} is a folder: give a file name such as model.rgraph")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CharModelError(f"cannot write {path!r}: folder {folder!r} does not exist")


def _save(session: Session, path: str) -> None:
    try:
        session.save(path)
    except OSError as e:
        from rgraph.cli import EXIT_FAILED, _Failure

        raise _Failure(f"cannot write {path!r}: {e.strerror or e}", EXIT_FAILED) from None


def _load(path: str) -> Any:
    check_model_path(path)
    return load(path)


def _length(args: argparse.Namespace, session: Session) -> tuple[int | None, float | None]:
    if args.steps is not None:
        return args.steps, None
    if args.epochs is not None:
        per_epoch = len(session.train) / session.model.config.batch_size
        return max(1, math.ceil(args.epochs * per_epoch)), None
    return None, args.seconds if args.seconds is not None else DEFAULT_SECONDS


class _Output:
    """A tqdm progress bar with the demo's reports, or JSON lines with ``--json``."""

    def __init__(self, args: argparse.Namespace, session: Session):
        self.json = args.json
        self.bar = None
        model = session.model
        baseline = unigram_perplexity(session.train, session.valid, model.vocab)
        intro = {
            "event": "start",
            "step": session.step,
            "model": model.config.kind,
            "hidden_sizes": list(model.config.hidden_sizes),
            "vocab_size": model.vocab.size,
            "train_sentences": len(session.train),
            "valid_sentences": len(session.valid),
            "unigram_valid_perplexity": baseline,
            "out": args.out,
        }
        if self.json:
            print(json.dumps(intro), flush=True)
            return
        print(
            f"{model.config.kind} {list(model.config.hidden_sizes)}, vocabulary of"
            f" {model.vocab.size - 1} characters, {len(session.train)} training and"
            f" {len(session.valid)} validation sentences; a unigram model's validation"
            f" perplexity is {baseline:.2f}",
            file=sys.stderr,
        )
        from tqdm import tqdm

        self.bar = tqdm(initial=session.step, unit="step", dynamic_ncols=True, file=sys.stderr)

    def step(self, session: Session, chars_per_second: float, perplexity: float) -> None:
        if self.bar is not None:
            epoch = session.step * session.model.config.batch_size / len(session.train)
            self.bar.update(1)
            self.bar.set_postfix_str(
                f"epoch {epoch:.2f}, perplexity {perplexity:.2f}, {chars_per_second:,.0f} chars/s"
            )

    def report(self, r: Report) -> None:
        if self.json:
            print(json.dumps({"event": "report", **_plain(r)}), flush=True)
            return
        valid = f"{r.valid_perplexity:.2f}" if r.valid_perplexity is not None else "-"
        lines = [
            f"step {r.step} (epoch {r.epoch:.2f}, {r.seconds:.0f} s): perplexity train"
            f" {r.train_perplexity:.2f}, validation {valid}; {r.chars_per_second:,.0f} chars/s",
            f"  argmax: {r.argmax}",
            *(f"  sample: {s}" for s in r.samples),
        ]
        self.bar.write("\n".join(lines), file=sys.stderr)  # type: ignore[union-attr]

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _plain(r: Report) -> dict[str, Any]:
    return {
        "step": r.step,
        "epoch": r.epoch,
        "seconds": r.seconds,
        "train_perplexity": r.train_perplexity,
        "valid_perplexity": r.valid_perplexity,
        "chars_per_second": r.chars_per_second,
        "argmax": r.argmax,
        "samples": r.samples,
    }


def _plot(session: Session, path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "--plot needs matplotlib: pip install 'rgraph[plot]' (or pip install matplotlib)",
            file=sys.stderr,
        )
        return
    steps = [h["step"] for h in session.history]
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(steps, [h["train"] for h in session.history], label="train")
    valid = [(h["step"], h["valid"]) for h in session.history if h["valid"] is not None]
    if valid:
        ax.plot(*zip(*valid), label="validation")
    ax.set_xlabel("step")
    ax.set_ylabel("perplexity")
    ax.set_yscale("log")
    ax.legend()
    ax.grid(True, alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# --- sample -----------------------------------------------------------------------------


def sample_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", help="a character model file (.rgraph)")
    p.add_argument("-n", type=positive_int, default=5, help="number of samples (default 5)")
    p.add_argument("--temperature", type=positive_float, default=1.0)
    p.add_argument("--argmax", action="store_true", help="always the most likely character")
    p.add_argument("--prime", default="", metavar="TEXT", help="text the samples start with")
    p.add_argument("--max-chars", type=positive_int, default=100)
    p.add_argument("--seed", type=non_negative_int, default=None)


def run_sample(args: argparse.Namespace) -> int:
    model = CharModel.from_file(_load(args.model))
    texts = Sampler(model).generate(
        args.n,
        temperature=args.temperature,
        argmax=args.argmax,
        prime=args.prime,
        max_chars=args.max_chars,
        rng=np.random.default_rng(args.seed),
    )
    for text in texts:
        print(text)
    return 0
