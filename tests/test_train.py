"""Training support: batches, perplexity, determinism, evaluation."""

import math

import numpy as np
import pytest

import rgraph as rg

SENTENCES = [[3, 1, 2], [2, 2], [1, 3, 3, 1]]


def make_trainer(seed=0, kind="lstm", optimizer=None):
    g = rg.Graph("lm")
    rg.nn.language_model(g, vocab=4, kind=kind, hidden_sizes=[6, 5], letter_size=3)
    return rg.Trainer(g, optimizer or rg.RMSProp(lr=0.02), seed=seed)


def test_pad_sequences_follows_recurrentjs_start_end_convention():
    feeds = rg.train.pad_sequences([[5, 6, 7], [8]])
    assert feeds["tokens"].dtype == np.int32 and feeds["tokens"].shape == (4, 2)
    assert feeds["tokens"][:, 0].tolist() == [0, 5, 6, 7]
    assert feeds["targets"][:, 0].tolist() == [5, 6, 7, 0]
    assert feeds["tokens"][:, 1].tolist() == [0, 8, 0, 0]
    assert feeds["targets"][:, 1].tolist() == [8, 0, 0, 0]
    assert feeds["mask"].T.tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_perplexity_is_exp_of_mean_nll():
    assert rg.train.perplexity(3 * math.log(2.0), 3) == pytest.approx(2.0)
    with pytest.raises(rg.errors.RgraphError):
        rg.train.perplexity(1.0, 0)


def test_step_reports_loss_nll_count_and_perplexity_of_the_batch():
    trainer = make_trainer()
    batch = rg.train.pad_sequences(SENTENCES)
    nll_before, count = trainer.evaluate([batch])
    grads = trainer.program.run(batch, trainer.params).grads
    report = trainer.step(batch)
    trainer.step(batch)  # (the norm of the first step is still its own)
    assert report.grad_norm == rg.global_norm(grads) > 0.0
    assert report.step == 1
    assert report.count == count == sum(len(s) + 1 for s in SENTENCES)
    # The step's figures are those of the parameters before the update.
    assert report.nll == pytest.approx(nll_before, rel=1e-12)
    assert report.loss == pytest.approx(nll_before / len(SENTENCES), rel=1e-12)
    assert report.perplexity == pytest.approx(math.exp(nll_before / count), rel=1e-12)
    # An untrained model over 4 classes is close to uniform.
    assert 3.0 < report.perplexity < 5.0
    assert 0.0 <= report.ratio_clipped <= 1.0


def test_same_seed_gives_bit_identical_losses_run_after_run():
    def run(seed):
        trainer = make_trainer(seed)
        rng = np.random.default_rng(seed)
        losses = []
        for _ in range(8):
            picked = rng.choice(len(SENTENCES), size=2, replace=False)
            losses.append(trainer.step(rg.train.pad_sequences([SENTENCES[i] for i in picked])).loss)
        return losses

    first, second = run(7), run(7)
    assert first == second  # exact, not approximate
    assert run(8) != first


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn"])
def test_training_lowers_the_perplexity(kind):
    # Adam: RMSProp's first steps (|g| / sqrt(0.001 g^2) ~ 32 lr) kill this small ReLU RNN.
    trainer = make_trainer(kind=kind, optimizer=rg.Adam(lr=0.02))
    batch = rg.train.pad_sequences(SENTENCES)
    start = rg.train.perplexity(*trainer.evaluate([batch]))
    for _ in range(60):
        trainer.step(batch)
    end = rg.train.perplexity(*trainer.evaluate([batch]))
    assert end < 0.7 * start
