"""Train a batched character LSTM language model, built with scan, on a few sentences.

Run it: ``python examples/train_lm.py``. It prints the perplexity falling as the model
learns the sentences by heart.
"""

from __future__ import annotations

import rgraph as rg

SENTENCES = [
    "the cat sat on the mat",
    "a dog ran in the park",
    "birds sing at dawn",
    "rain falls on the roof",
    "the sun is warm today",
]


def build(vocab_size: int) -> tuple[rg.Graph, rg.nn.LanguageModel]:
    """Embedding -> 2-layer LSTM (one scan node per layer) -> decoder -> masked loss."""
    g = rg.Graph("char_lstm")
    lm = rg.nn.language_model(g, vocab_size, kind="lstm", hidden_sizes=[32, 32], letter_size=8)
    return g, lm


def train(steps: int = 300, seed: int = 0, report_every: int = 50) -> list[float]:
    """Train on all sentences as one padded batch; return the perplexity per step."""
    letters = sorted(set("".join(SENTENCES)))
    index = {ch: i + 1 for i, ch in enumerate(letters)}  # 0 is START and END
    batch = rg.train.pad_sequences([[index[ch] for ch in s] for s in SENTENCES])
    g, _ = build(len(letters) + 1)
    trainer = rg.Trainer(g, rg.RMSProp(lr=0.01), seed=seed)
    history = []
    for _ in range(steps):
        report = trainer.step(batch)
        history.append(report.perplexity)
        if report.step % report_every == 0 or report.step == 1:
            ppl = report.perplexity
            print(f"step {report.step:4d}  loss {report.loss:8.3f}  perplexity {ppl:.3f}")
    return history


if __name__ == "__main__":
    train()
