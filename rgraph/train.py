"""Training: compiled steps over batches, with loss and perplexity reports.

>>> import rgraph as rg
>>> g = rg.Graph("lm")
>>> lm = rg.nn.language_model(g, vocab=4, hidden_sizes=[8])
>>> trainer = rg.Trainer(g, rg.RMSProp(), seed=0)
>>> batch = rg.train.pad_sequences([[1, 2, 3], [3, 1]])
>>> report = trainer.step(batch)
>>> report.step, report.count
(1, 7.0)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rgraph.builder import Graph
from rgraph.errors import RgraphError
from rgraph.exec.program import compile
from rgraph.init import init_params
from rgraph.ir.graph import GraphIR


def perplexity(nll: float, count: float) -> float:
    """``exp(nll / count)``: the standard perplexity from a summed negative log-likelihood."""
    if count <= 0:
        raise RgraphError("perplexity of zero predicted tokens is undefined")
    return math.exp(nll / count)


def pad_sequences(
    sequences: Sequence[Sequence[int]], *, start: int = 0, end: int = 0, dtype: str = "float64"
) -> dict[str, np.ndarray]:
    """Feeds of a language model for a batch of token sequences of different lengths.

    Each sequence becomes inputs ``start, s0, s1, ...`` and targets ``s0, s1, ..., end``
    (RecurrentJS's convention, where index 0 is both START and END), padded to the longest
    with a mask of 0. Returns ``tokens`` and ``targets`` (``(T, B)`` int32) and ``mask``.

    >>> f = pad_sequences([[5, 6], [7]])
    >>> f["tokens"].T.tolist(), f["targets"].T.tolist(), f["mask"].T.tolist()
    ([[0, 5, 6], [0, 7, 0]], [[5, 6, 0], [7, 0, 0]], [[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    """
    if not sequences:
        raise RgraphError("pad_sequences needs at least one sequence")
    steps = max(len(s) for s in sequences) + 1
    tokens = np.zeros((steps, len(sequences)), np.int32)
    targets = np.zeros_like(tokens)
    mask = np.zeros(tokens.shape, dtype)
    for b, seq in enumerate(sequences):
        n = len(seq) + 1
        tokens[:n, b] = [start, *seq]
        targets[:n, b] = [*seq, end]
        mask[:n, b] = 1
    return {"tokens": tokens, "targets": targets, "mask": mask}


@dataclass
class StepReport:
    """One training step: the loss, summed NLL over ``count`` tokens, and the update
    (``stats``: what the optimiser's ``step`` returned)."""

    step: int
    loss: float
    nll: float
    count: float
    stats: Any = None

    @property
    def perplexity(self) -> float:
        return perplexity(self.nll, self.count)

    @property
    def ratio_clipped(self) -> float:
        return float(getattr(self.stats, "ratio_clipped", 0.0))

    @property
    def grad_norm(self) -> float:
        """The gradients' global norm (NaN if the optimiser does not report one), computed
        when first read (see :class:`~rgraph.exec.optim.StepStats`)."""
        return float(getattr(self.stats, "grad_norm", float("nan")))


class Trainer:
    """Runs training steps of a graph with an optimiser, in place on a parameter store.

    The graph must output a scalar ``loss`` and, for perplexity, the summed negative
    log-likelihood ``nll`` and the number of predicted tokens ``count`` (as
    :func:`rgraph.nn.language_model` does). The same seed and the same batches give
    bit-identical losses run after run.

    Parameters
    ----------
    graph
        The model's graph.
    optimizer
        An optimiser from :mod:`rgraph.exec.optim` (``step(params, grads)``).
    params
        A parameter store to train, in place; default ``init_params(graph, seed)``. Its
        arrays are first replaced (in the store, if it is a dict) by copies laid out for
        the training program (:meth:`Program.pack`): the same values, faster to train.
    step
        The step counter to start from (when resuming).
    mask
        The graph's padding-mask input, if it has one (:func:`pad_sequences` makes it):
        batches with no padding run a program specialised to a mask of all ones (see
        :func:`rgraph.compile`'s ``specialize``), as fast as an unmasked model.
    """

    def __init__(
        self,
        graph: Graph | GraphIR,
        optimizer: Any,
        *,
        params: Mapping[str, np.ndarray] | None = None,
        seed: int = 0,
        step: int = 0,
        loss: str = "loss",
        nll: str = "nll",
        count: str = "count",
        check_finite: bool = False,
        mask: str | None = "mask",
    ):
        self.graph = graph
        self.optimizer = optimizer
        self.names = (loss, nll, count)
        ir = graph.ir if isinstance(graph, Graph) else graph
        masks = [v.name for v in ir.inputs if v.name == mask and v.type.is_float]
        full = dict.fromkeys(masks, 1.0)
        names = list(self.names)
        self.program = compile(graph, names, loss=loss, check_finite=check_finite, specialize=full)
        self.evaluator = compile(graph, names, check_finite=check_finite, specialize=full)
        if params is None:
            store = init_params(graph, seed)
        else:
            store = params if isinstance(params, dict) else dict(params)
        store.update(self.program.pack(store))
        self.params = store
        self.step_count = step

    def step(self, feeds: Mapping[str, Any]) -> StepReport:
        """Forward, backward and one optimiser update on one batch.

        With an optimiser that has :meth:`~rgraph.exec.optim.Optimizer.gradient_buffers`,
        the program writes the gradients where the update reads them.
        """
        buffers = getattr(self.optimizer, "gradient_buffers", None)
        into = buffers() if buffers is not None else None
        result = self.program.run(feeds, self.params, grads_into=into)
        stats = self.optimizer.step(self.params, result.grads)
        self.step_count += 1
        loss, nll, count = (float(result.outputs[n]) for n in self.names)
        return StepReport(step=self.step_count, loss=loss, nll=nll, count=count, stats=stats)

    def evaluate(self, batches: Iterable[Mapping[str, Any]]) -> tuple[float, float]:
        """Summed NLL and token count over ``batches``, without updating anything.

        ``perplexity(*trainer.evaluate(batches))`` is the perplexity of the data.
        """
        total, count = 0.0, 0.0
        _, nll_name, count_name = self.names
        for feeds in batches:
            out = self.evaluator.run(feeds, self.params).outputs
            total += float(out[nll_name])
            count += float(out[count_name])
        return total, count
