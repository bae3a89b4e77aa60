"""RecurrentJS README example (a), define-then-run: the gradient of one output of h = W x + b.

In RecurrentJS the graph is a tape recorded while the numbers are computed:

    var W = new R.RandMat(10, 4);  var x = new R.RandMat(4, 1);  var b = new R.RandMat(10, 1);
    var G = new R.Graph();
    var h = G.add(G.mul(W, x), b);
    h.dw[0] = 1.0;      // the gradient flowing into h: 1 at its first element
    G.backward();       // fills W.dw, x.dw and b.dw

In rgraph the same three steps are: *define* the graph (no numbers yet), *compile* it (the
backward pass is generated as IR), *run* it on arrays. Run it with ``python
examples/affine.py``.
"""

from __future__ import annotations

import numpy as np

import rgraph as rg

# RecurrentJS's RandMat(n, d, 0, 0.08) draws uniformly from [-0.08, 0.08].
SCALE = 0.08


def build() -> tuple[rg.Graph, rg.Value]:
    """Define h = W x + b. Nothing is computed here: values only have types."""
    g = rg.Graph("affine")
    x = g.input("x", (4, 1))
    W = g.param("W", (10, 4), init="uniform", low=-SCALE, high=SCALE)
    b = g.param("b", (10, 1), init="uniform", low=-SCALE, high=SCALE)
    h = g.output(g.add(g.mul(W, x), b), name="h")  # or simply: W @ x + b
    return g, h


def run(seed: int = 0) -> dict:
    """Build, compile and run the example; return every array it produced."""
    g, h = build()

    # cotangents=[h]: the caller supplies the gradient flowing into h at run time (h.dw).
    # wrt: what to differentiate with respect to; the input x as well as W and b.
    program = rg.compile(g, cotangents=[h], wrt=["W", "x", "b"])

    # The parameter store, drawn from each param's initializer; x is fed like data.
    params = rg.init_params(g, seed=seed)
    rng = np.random.default_rng(seed + 1)
    x = rng.uniform(-SCALE, SCALE, size=(4, 1))

    # h.dw[0] = 1.0: RecurrentJS indexes the flat buffer; element 0 is h[0, 0].
    h_ct = np.zeros((10, 1))
    h_ct[0, 0] = 1.0

    result = program.run({"x": x}, params, cotangents={"h": h_ct})
    return {
        "program": program,
        "x": x,
        "W": params["W"],
        "b": params["b"],
        "h_ct": h_ct,
        "h": result.outputs["h"],
        "grads": result.grads,  # {"W": dW, "x": dx, "b": db}
    }


def main() -> None:
    out = run()
    np.set_printoptions(precision=5, suppress=True, linewidth=100)
    print("The compiled program (forward, then the generated backward):")
    print(out["program"])
    print()
    print("h (10x1, shown as a row):", out["h"].ravel())
    print("\ndh[0]/dW (10x4): only row 0 is non-zero, and it equals x:")
    print(out["grads"]["W"])
    print("\ndh[0]/dx (4x1, shown as a row): row 0 of W:", out["grads"]["x"].ravel())
    print("dh[0]/db (10x1, shown as a row):", out["grads"]["b"].ravel())


if __name__ == "__main__":
    main()
