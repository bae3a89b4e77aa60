"""RecurrentJS's character demo, written with rgraph and read top to bottom.

    python examples/char_rnn.py [corpus.txt] [steps]

Sentences -> vocabulary -> graph -> compile -> batched training with RMSProp ->
perplexity -> samples -> a model file. ``rgraph train`` runs the same pieces
(:mod:`rgraph.charlm`) with checkpoints, resuming and a progress bar.
"""

from __future__ import annotations

import sys

import numpy as np

import rgraph as rg
from rgraph import charlm

corpus = sys.argv[1] if len(sys.argv) > 1 and sys.argv[1] else None
steps = int(sys.argv[2]) if len(sys.argv) > 2 else 300

# 1. Sentences, one per line, and their characters. Index 0 is START as an input and END
#    as a target; the letters are 1, 2, ...
sentences = charlm.read_corpus(corpus)
vocab = charlm.Vocabulary.from_sentences(sentences)
train, valid = charlm.split(sentences, fraction=0.05, seed=0)
print(f"{len(train)} training and {len(valid)} validation sentences, {vocab.size} classes")

# 2. The model, defined before anything runs: letter embeddings Wil, a 2-layer LSTM (one
#    scan node per layer, any sentence length), the decoder Whd/bd and a masked
#    cross-entropy over a padded batch of sentences.
config = charlm.Config(kind="lstm", hidden_sizes=(20, 20), letter_size=5, batch_size=16)
g = rg.Graph("char_lstm")
lm = rg.nn.language_model(
    g,
    vocab.size,
    kind=config.kind,
    hidden_sizes=list(config.hidden_sizes),
    letter_size=config.letter_size,
)
print(f"graph: {len(g.ir.nodes)} nodes, {len(g.ir.params)} parameters, loss {lm.loss.type}")

# 3. Compile forward and generated backward, and train with RecurrentJS's RMSProp.
optimizer = rg.RMSProp(lr=config.lr, regc=config.regc, clipval=config.clip)
trainer = rg.Trainer(g, optimizer, seed=config.seed)
rng = np.random.default_rng([config.seed, 1])  # the batch stream of `rgraph train --seed 0`
encoded = [vocab.encode(s) for s in train]
model = charlm.CharModel(config, vocab, trainer.params)  # shares the trained arrays
sampler = charlm.Sampler(model)

for step in range(1, steps + 1):
    picked = rng.integers(0, len(encoded), size=config.batch_size)
    report = trainer.step(rg.train.pad_sequences([encoded[i] for i in picked]))
    if step % 100 == 0 or step == steps:
        # 4. Perplexity on held-out sentences: exp of the mean NLL per predicted character.
        valid_ppl = rg.train.perplexity(*trainer.evaluate(charlm.batches(valid, vocab, 64)))
        print(f"step {step}: train perplexity {report.perplexity:.2f}, validation {valid_ppl:.2f}")
        # 5. Samples: the most likely sentence, and a few drawn at temperature 1.
        print("  argmax:", sampler.generate(1, argmax=True)[0])
        draws = np.random.default_rng([config.seed, 2, step])  # leaves the batch stream alone
        for text in sampler.generate(3, temperature=1.0, rng=draws):
            print("  sample:", text)

# 6. One file holds the graph, weights, optimiser state, RNG, step and vocabulary:
#    `rgraph sample char_rnn.rgraph` generates from it alone.
rg.save(
    "char_rnn.rgraph",
    g,
    trainer.params,
    optimizer=optimizer,
    rng=rng,
    step=trainer.step_count,
    metadata=model.metadata(),
)
print("saved char_rnn.rgraph")
