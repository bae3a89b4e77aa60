"""Parameter initializers, drawn from a seedable ``numpy.random.Generator``.

>>> import rgraph as rg
>>> g = rg.Graph()
>>> W = g.param("W", (3, 4), init="uniform", low=-0.08, high=0.08)
>>> store = rg.init_params(g, seed=0)
>>> store["W"].shape, bool(abs(store["W"]).max() <= 0.08)
((3, 4), True)
"""

from __future__ import annotations

import math

import numpy as np

from rgraph.ir.graph import GraphIR, Init, Param


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    """Fan-in and fan-out of a weight used as ``W @ x``: (..., out, in)."""
    if len(shape) < 2:
        size = math.prod(shape)
        return size, size
    receptive = math.prod(shape[:-2])
    return shape[-1] * receptive, shape[-2] * receptive


def draw(init: Init, shape: tuple[int, ...], dtype: str, rng: np.random.Generator) -> np.ndarray:
    """One tensor drawn from ``init``; zeros and constants use no randomness."""
    kind = init.kind
    if kind in ("zeros", "ones", "constant"):
        value = {"zeros": 0.0, "ones": 1.0}.get(kind, init.value)
        return np.full(shape, value, dtype=dtype)
    if kind == "uniform":
        out = rng.uniform(init.low, init.high, size=shape)
    elif kind == "normal":
        out = rng.normal(init.mean, init.std, size=shape)
    else:
        fan_in, fan_out = _fans(shape)
        if kind == "glorot_uniform":
            limit = math.sqrt(6.0 / max(fan_in + fan_out, 1))
            out = rng.uniform(-limit, limit, size=shape)
        else:
            out = rng.normal(0.0, math.sqrt(2.0 / max(fan_in + fan_out, 1)), size=shape)
    return out.astype(dtype, copy=False)


def init_params(graph, seed: int | np.random.Generator = 0) -> dict[str, np.ndarray]:
    """A parameter store for ``graph`` (a builder or IR): name -> freshly drawn array.

    Parameters are drawn in declaration order from one generator, so the same seed gives
    the same store, bit for bit.
    """
    ir: GraphIR = getattr(graph, "ir", graph)
    rng = seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)
    return {p.name: _draw_param(p, rng) for p in ir.params}


def _draw_param(p: Param, rng: np.random.Generator) -> np.ndarray:
    return draw(p.init, tuple(p.type.shape), p.type.dtype, rng)  # type: ignore[arg-type]
