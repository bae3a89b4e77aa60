"""Checks shared by the tests of IR -> IR passes."""

import numpy as np

import rgraph as rg
from rgraph.ir.graph import GraphIR
from rgraph.ir.verify import verify


def same_results(before: GraphIR, after: GraphIR, feeds, params=None) -> dict:
    """``after`` verifies, keeps the output names and computes what ``before`` does."""
    verify(after)
    assert after.outputs == before.outputs
    want = rg.Interpreter(before).run(dict(feeds), params or {})
    got = rg.Interpreter(after).run(dict(feeds), params or {})
    assert list(got) == list(want)
    for name in want:
        assert got[name].shape == want[name].shape
        np.testing.assert_allclose(got[name], want[name], rtol=1e-13, atol=0)
    return got
