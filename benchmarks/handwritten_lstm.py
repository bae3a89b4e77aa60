"""The character LSTM's training step written by hand in numpy: the bar rgraph must reach.

Benchmark code only (``benchmarks/char_lstm.py`` runs it); rgraph never imports it. It
trains exactly the model of :func:`rgraph.nn.language_model` with RecurrentJS's LSTM and
Solver (RMSProp), on the same ``(T, B)`` padded batches with a mask, and gives the same
loss and gradients as rgraph's compiled program (``char_lstm.py --check``):

- embedding ``Wil`` -> LSTM layers (``i, f, o = sigmoid(x Wx.T + h Wh.T + b)``,
  ``g = tanh(...)``, ``c = f c + i g``, ``h = o tanh(c)``; a padded step keeps the state:
  ``new = m * new + (1 - m) * old``) -> decoder ``Whd, bd`` -> softmax cross-entropy summed
  over the unmasked characters; ``loss = nll / B``;
- RMSProp as RecurrentJS: ``cache = decay cache + (1 - decay) g^2`` with the unclipped
  gradient, clip to ``[-clipval, clipval]``, ``w += -lr g / sqrt(cache + eps) - regc w``.

What makes it fast (every trick a careful numpy programmer would use):

- All parameters live in one flat vector (and their gradients, RMSProp's cache, in
  others): the optimiser is a dozen numpy calls for the whole model.
- Stacked gate weights: one ``(4H, in)`` input and one ``(4H, H)`` recurrent matrix per
  layer, gate order ``o, i, f, g``, so each time step makes one matrix product.
- Everything that does not depend on the recurrent state runs once per batch, outside
  the time loop: the embedding lookup folded into layer 0's input projection (a
  ``(V, 4H)`` table gathered by token), the other layers' input projections, the
  decoder and the loss over all steps, and all weight gradients (one matrix product
  each after the reverse loop). The activations' derivatives that backward multiplies
  by are made for all steps at once too when a step is small (fewest calls); when it is
  large (``B H >= 1024``) they are made step by step inside the backward loop, while
  the step's values are in cache (fewer passes over memory, and no ``(T, B, 6H)``
  buffer).
- Memory: a layer keeps only what its backward reads (gates, cells, ``tanh(c)``,
  hidden states); the input projections, the backward's scratch and the incoming
  gradients live in buffers the layers share in turn.
- Activations with the fewest numpy calls: the per-gate scale (``1/2`` for the sigmoid's
  ``0.5 + 0.5 tanh(z / 2)``, or ``-1`` / ``-2`` for the ``exp`` form) is folded into a
  scaled copy of the weights (exact: powers of two), so one ``tanh`` (or one ``exp``)
  covers all four gates. numpy's float64 ``tanh`` is scalar code while ``exp`` is
  vectorised, so large float64 (and float32) steps use ``exp``
  (``sigmoid(z) = 1 / (1 + exp(-z))``, ``tanh(z) = 2 sigmoid(2 z) - 1``) and small ones
  ``tanh`` (fewer calls): see :func:`choose_activations`.
- ``f c_prev + i g`` as one product of two ``(B, 2, H)`` strided views and one add.
- Backward per step: one broadcast product makes the input, forget and cell-write
  pre-activation gradients and the carried cell gradient together.
- Every buffer is preallocated for the longest batch, every per-step view is made once,
  every numpy call writes with ``out=``: the time loops allocate nothing.
- Masks: a step whose mask row is all ones skips the blend (it is the identity there);
  other steps blend as rgraph does. With ``B = 1`` no step blends.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.lib.stride_tricks import as_strided

GATES = ("o", "i", "f", "c")  # stacked order; RecurrentJS names Wox, Wix, Wfx, Wcx, ...


def choose_activations(batch: int, hidden: int, dtype: str) -> tuple[str, str]:
    """``(gate form, cell form)``, each ``"tanh"`` or ``"exp"``, for a step of this size.

    ``tanh`` needs the fewest calls (best when calls, not elements, cost); ``exp`` is
    faster per element (numpy's float64 tanh is not vectorised). Thresholds measured on
    the benchmark machine (``char_lstm.py --tune-activations``).
    """
    f64 = np.dtype(dtype) == np.float64
    gates = "exp" if batch * 4 * hidden >= (512 if f64 else 2048) else "tanh"
    cell = "exp" if f64 and batch * hidden >= 512 else "tanh"
    return gates, cell


class _Layer:
    """Parameters' views, buffers and per-step views of one LSTM layer."""

    def __init__(self, model: HandwrittenLSTM, d: int, n_in: int, hidden: int):
        self.d, self.n_in, self.H = d, n_in, hidden
        self.Wx = model._param(f"Wx{d}", (4 * hidden, n_in))
        self.Wh = model._param(f"Wh{d}", (4 * hidden, hidden))
        self.b = model._param(f"b{d}", (4 * hidden,))

    def allocate(self, model: HandwrittenLSTM, T: int, B: int, shared: dict) -> None:
        dt, H = model.dtype, self.H
        H4, H5 = 4 * H, 5 * H
        # Scaled copies of the weights (views into model.ws), set by the model.
        self.Wxs, self.Whs, self.bs = (model._scaled(f"{p}{self.d}") for p in ("Wx", "Wh", "b"))
        # Forward, kept until this layer's backward: A[t + 1] = [o, i, f, g, c] after
        # step t (c: the carried cell; A[0]'s c block is the initial cell, zeros).
        self.A = np.zeros((T + 1, B, H5), dt)
        self.hs = np.zeros((T + 1, B, H), dt)  # hs[0] initial, hs[t + 1] after step t
        self.tc = np.zeros((T, B, H), dt)  # tanh(c_new)
        # Scratch that layers take turns with (shared, sized for the widest layer):
        # xp, the input projections, lives only during this layer's forward, and D
        # (rows [dZ (4H), d c_prev]) only during its backward: the same memory. K[t]
        # = [Ko, Ki, Kf, Kg, f] and Kc[t] are what backward multiplies by; dH[t] the
        # gradient into hs[t + 1] from above (and, during the loop, from step t + 1).
        self.xp = shared["xd"][: T * B * H4].reshape(T, B, H4)
        self.D = shared["xd"][: (T + 1) * B * H5].reshape(T + 1, B, H5)
        if model.step_derivatives:  # one step's K, made in the backward loop, in cache
            self.K = np.zeros((1, B, H5), dt)
            self.Kc = np.zeros((1, B, H), dt)
        else:
            self.K = shared["K"][: T * B * H5].reshape(T, B, H5)
            self.Kc = shared["Kc"][: T * B * H].reshape(T, B, H)
        self.dH = shared["dH"][: T * B * H].reshape(T, B, H)
        self.ztmp = np.zeros((B, H4), dt)
        self.prod = np.zeros((B, 2, H), dt)
        self.tmp = [np.zeros((B, H), dt) for _ in range(3)]
        self.htmp = np.zeros((B, H), dt)
        A, K, D = self.A, self.K, self.D
        it = A.itemsize
        # Per-step views.
        self.v_gates = [A[t + 1, :, :H4] for t in range(T)]
        self.v_o = [A[t + 1, :, :H] for t in range(T)]
        self.v_ifo = [A[t + 1, :, : 3 * H] for t in range(T)]
        self.v_g = [A[t + 1, :, 3 * H : H4] for t in range(T)]
        self.v_if = [A[t + 1, :, H : 3 * H].reshape(B, 2, H) for t in range(T)]
        # [g_t, c_{t-1}] as a (B, 2, H) view: g of row t + 1, c of row t.
        self.v_gc = [
            as_strided(
                A[t + 1, :, 3 * H :],
                shape=(B, 2, H),
                strides=(H5 * it, (H - B * H5) * it, it),
                writeable=False,
            )
            for t in range(T)
        ]
        self.v_c = [A[t, :, H4:] for t in range(T + 1)]  # v_c[t]: carried cell before step t
        self.v_h = [self.hs[t] for t in range(T + 1)]
        self.v_xp = [self.xp[t] for t in range(T)]
        self.v_tc = [self.tc[t] for t in range(T)]
        self.v_i = [A[t + 1, :, H : 2 * H] for t in range(T)]
        self.v_f = [A[t + 1, :, 2 * H : 3 * H] for t in range(T)]
        k = (lambda t: 0) if model.step_derivatives else (lambda t: t)
        self.v_Ko = [K[k(t), :, :H] for t in range(T)]
        self.v_K4 = [K[k(t), :, H:].reshape(B, 4, H) for t in range(T)]
        self.v_Kc = [self.Kc[k(t)] for t in range(T)]
        self.v_dZ = [D[t, :, :H4] for t in range(T)]
        self.v_do = [D[t, :, :H] for t in range(T)]
        self.v_D4 = [D[t, :, H:].reshape(B, 4, H) for t in range(T)]
        self.v_dc = [D[t, :, H4:] for t in range(T + 1)]  # d carried cell before step t
        self.v_dH = [self.dH[t] for t in range(T)]


class HandwrittenLSTM:
    """The character LSTM, trained by hand-written numpy.

    Parameters
    ----------
    params
        rgraph's parameters of the language model (``rg.init_params``), by rgraph's
        names; they are copied into this model's own flat, gate-stacked layout.
    hidden_sizes
        One size per layer.
    batch
        The batch size B (the batches' second dimension).
    max_steps
        The longest batch (T) to expect; buffers grow if a longer one comes.
    dtype
        float32 or float64.
    gate_act, cell_act
        ``"tanh"`` or ``"exp"`` forms of the activations (default: :func:`choose_activations`).
    """

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        hidden_sizes: Sequence[int],
        *,
        batch: int,
        max_steps: int,
        dtype: str = "float64",
        lr: float = 0.01,
        regc: float = 1e-6,
        clipval: float = 5.0,
        decay: float = 0.999,
        eps: float = 1e-8,
        gate_act: str | None = None,
        cell_act: str | None = None,
        step_derivatives: bool | None = None,
    ):
        self.dtype = dt = np.dtype(dtype)
        self.hidden_sizes = list(hidden_sizes)
        self.B = batch
        self.lr, self.regc, self.clipval, self.decay, self.eps = lr, regc, clipval, decay, eps
        auto = choose_activations(batch, max(self.hidden_sizes), dtype)
        self.gate_act = gate_act or auto[0]
        self.cell_act = cell_act or auto[1]
        if step_derivatives is None:
            step_derivatives = batch * max(self.hidden_sizes) >= 1024
        self.step_derivatives = step_derivatives
        V, E = params["Wil"].shape
        self.V, self.E = V, E
        # Layout of the flat parameter vector: Wil, then per layer Wx, Wh, b, then Whd, bd.
        self._slots: dict[str, tuple[int, tuple[int, ...]]] = {}
        self._size = 0
        self._reserve("Wil", (V, E))
        n_in = E
        for d, H in enumerate(self.hidden_sizes):
            self._reserve(f"Wx{d}", (4 * H, n_in))
            self._reserve(f"Wh{d}", (4 * H, H))
            self._reserve(f"b{d}", (4 * H,))
            n_in = H
        self._reserve("Whd", (V, n_in))
        self._reserve("bd", (V,))
        self.w = np.zeros(self._size, dt)
        self.grad = np.zeros(self._size, dt)
        self.cache = np.zeros(self._size, dt)
        self._t1 = np.zeros(self._size, dt)
        self._t2 = np.zeros(self._size, dt)
        # The LSTM weights' section, its per-element activation scale and scaled copy.
        lo, hi = self._slots["Wx0"][0], self._slots["Whd"][0]
        self._lo, self._hi = lo, hi
        self._scale = np.ones(hi - lo, dt)
        self.ws = np.zeros(hi - lo, dt)
        self.Wil = self._param("Wil", (V, E))
        self.Whd = self._param("Whd", (V, n_in))
        self.bd = self._param("bd", (V,))
        self.layers: list[_Layer] = []
        n_in = E
        for d, H in enumerate(self.hidden_sizes):
            layer = _Layer(self, d, n_in, H)
            s_ifo, s_g = (0.5, 1.0) if self.gate_act == "tanh" else (-1.0, -2.0)
            for name in (f"Wx{d}", f"Wh{d}", f"b{d}"):
                off, shape = self._slots[name]
                block = self._scale[off - lo : off - lo + int(np.prod(shape))].reshape(shape)
                block[: 3 * H] = s_ifo
                block[3 * H :] = s_g
            self.layers.append(layer)
            n_in = H
        # exp(-z) may overflow to inf for a very negative z: 1 / (1 + inf) = 0 is right.
        self._uses_exp = "exp" in (self.gate_act, self.cell_act)
        self._grads = {name: self._view(self.grad, name) for name in self._slots}
        self.set_params(params)
        self.T = 0
        self._allocate(max_steps)

    # --- layout ----------------------------------------------------------------------

    def _reserve(self, name: str, shape: tuple[int, ...]) -> None:
        self._slots[name] = (self._size, shape)
        self._size += int(np.prod(shape))

    def _view(self, flat: np.ndarray, name: str) -> np.ndarray:
        off, shape = self._slots[name]
        return flat[off : off + int(np.prod(shape))].reshape(shape)

    def _param(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        assert self._slots[name][1] == shape
        return self._view(self.w, name)

    def _scaled(self, name: str) -> np.ndarray:
        """The view of ``self.ws`` that holds parameter ``name``'s scaled copy."""
        off, shape = self._slots[name]
        return self.ws[off - self._lo : off - self._lo + int(np.prod(shape))].reshape(shape)

    def _grad(self, name: str) -> np.ndarray:
        return self._grads[name]

    def _allocate(self, T: int) -> None:
        self.T = T
        n, B, dt = T * self.B, self.B, self.dtype
        widest = max(self.hidden_sizes)
        shared = {
            "xd": np.zeros((T + 1) * B * 5 * widest, dt),
            "dH": np.zeros(T * B * widest, dt),
        }
        if not self.step_derivatives:
            shared["K"] = np.zeros(T * B * 5 * widest, dt)
            shared["Kc"] = np.zeros(T * B * widest, dt)
        for layer in self.layers:
            layer.allocate(self, T, B, shared)
        self.table = np.zeros((self.V, 4 * self.hidden_sizes[0]), dt)
        self.x0 = np.zeros((n, self.E), dt)
        self.dx0 = np.zeros((n, self.E), dt)
        self.logits = np.zeros((n, self.V), dt)
        self.probs = np.zeros((n, self.V), dt)
        self.rowmax = np.zeros((n, 1), dt)
        self.rowsum = np.zeros((n, 1), dt)
        self.m = np.zeros((T, B, 1), dt)
        self.m0 = np.zeros((T, B, 1), dt)
        self.v_m = [self.m[t] for t in range(T)]
        self.v_m0 = [self.m0[t] for t in range(T)]
        self.rows = np.arange(n)
        self.emb_index = np.zeros((n, self.E), np.intp)
        self.emb_cols = np.arange(self.E)

    # --- parameters in rgraph's names ---------------------------------------------------

    def set_params(self, params: Mapping[str, np.ndarray]) -> None:
        """Copy rgraph-named parameters into the flat, stacked layout."""
        self.Wil[...] = params["Wil"]
        self.Whd[...] = params["Whd"]
        self.bd[...] = params["bd"]
        for d, layer in enumerate(self.layers):
            for k, gate in enumerate(GATES):
                rows = slice(k * layer.H, (k + 1) * layer.H)
                layer.Wx[rows] = params[f"W{gate}x{d}"]
                layer.Wh[rows] = params[f"W{gate}h{d}"]
                layer.b[rows] = params[f"b{gate}{d}"]

    def _unstack(self, flat: np.ndarray) -> dict[str, np.ndarray]:
        out = {name: self._view(flat, name).copy() for name in ("Wil", "Whd", "bd")}
        for d, layer in enumerate(self.layers):
            Wx, Wh, b = (self._view(flat, f"{p}{d}") for p in ("Wx", "Wh", "b"))
            for k, gate in enumerate(GATES):
                rows = slice(k * layer.H, (k + 1) * layer.H)
                out[f"W{gate}x{d}"] = Wx[rows].copy()
                out[f"W{gate}h{d}"] = Wh[rows].copy()
                out[f"b{gate}{d}"] = b[rows].copy()
        return out

    def params(self) -> dict[str, np.ndarray]:
        """The parameters by rgraph's names (copies)."""
        return self._unstack(self.w)

    def grads(self) -> dict[str, np.ndarray]:
        """The last :meth:`forward_backward`'s gradients by rgraph's names (copies)."""
        return self._unstack(self.grad)

    # --- training ----------------------------------------------------------------------

    def step(self, feeds: Mapping[str, np.ndarray]) -> float:
        """Forward, backward and one RMSProp update on one batch; returns the loss."""
        loss, _, _ = self.forward_backward(feeds["tokens"], feeds["targets"], feeds["mask"])
        self.rmsprop()
        return loss

    def rmsprop(self) -> None:
        """RecurrentJS's Solver.step on the whole flat parameter vector."""
        w, g, cache, t1, t2 = self.w, self.grad, self.cache, self._t1, self._t2
        np.multiply(cache, self.decay, out=cache)
        np.multiply(g, 1.0 - self.decay, out=t1)
        np.multiply(t1, g, out=t1)
        np.add(cache, t1, out=cache)
        np.clip(g, -self.clipval, self.clipval, out=g)
        np.multiply(g, -self.lr, out=t1)
        np.add(cache, self.eps, out=t2)
        np.sqrt(t2, out=t2)
        np.divide(t1, t2, out=t1)
        np.multiply(w, self.regc, out=t2)
        np.subtract(t1, t2, out=t1)
        np.add(w, t1, out=w)

    def forward_backward(
        self, tokens: np.ndarray, targets: np.ndarray, mask: np.ndarray
    ) -> tuple[float, float, float]:
        """Loss, summed NLL and count of one batch; the gradients go to ``self.grad``."""
        T, B = tokens.shape
        if B != self.B:
            raise ValueError(f"this model was built for batches of {self.B}, got {B}")
        if T > self.T:
            self._allocate(T)
        n = T * B
        np.multiply(self.w[self._lo : self._hi], self._scale, out=self.ws)
        tok = tokens.reshape(n)
        # Masks: steps whose row is all ones need no blend.
        m = self.m[:T]
        m[:, :, 0] = mask
        np.subtract(1.0, m, out=self.m0[:T])
        full = mask.all(axis=1).tolist()
        with np.errstate(over="ignore") if self._uses_exp else contextlib.nullcontext():
            # Layer 0's input projection: the embedding folded into a (V, 4H) table.
            first = self.layers[0]
            np.dot(self.Wil, first.Wxs.T, out=self.table)
            np.add(self.table, first.bs, out=self.table)
            np.take(self.table, tok, axis=0, out=first.xp[:T].reshape(n, -1))
            below = None
            for layer in self.layers:
                if below is not None:
                    x = below.hs[1 : T + 1].reshape(n, below.H)
                    xp = layer.xp[:T].reshape(n, -1)
                    np.dot(x, layer.Wxs.T, out=xp)
                    np.add(xp, layer.bs, out=xp)
                self._forward(layer, T, full)
                below = layer
            # Decoder and loss over all steps at once.
            top = self.layers[-1]
            htop = top.hs[1 : T + 1].reshape(n, top.H)
            z, p = self.logits[:n], self.probs[:n]
            np.dot(htop, self.Whd.T, out=z)
            np.add(z, self.bd, out=z)
            rowmax, rowsum = self.rowmax[:n], self.rowsum[:n]
            np.maximum.reduce(z, axis=1, keepdims=True, out=rowmax)
            np.subtract(z, rowmax, out=z)
            np.exp(z, out=p)
            np.add.reduce(p, axis=1, keepdims=True, out=rowsum)
            rows, tgt = self.rows[:n], targets.reshape(n)
            mflat = mask.reshape(n)
            nll = -float(np.dot(z[rows, tgt] - np.log(rowsum[:, 0]), mflat))
            np.divide(p, rowsum, out=p)
            p[rows, tgt] -= 1.0
            np.multiply(p, (mflat / B)[:, None], out=p)
        # Backward.
        np.dot(p.T, htop, out=self._grad("Whd"))
        np.add.reduce(p, axis=0, out=self._grad("bd"))
        np.dot(p, self.Whd, out=top.dH[:T].reshape(n, top.H))
        for d in range(len(self.layers) - 1, -1, -1):
            layer = self.layers[d]
            if not self.step_derivatives:
                self._derivatives(layer, T)
            self._backward(layer, T, full)
            dz = layer.D[:T].reshape(n, 5 * layer.H)[:, : 4 * layer.H]
            np.matmul(dz.T, layer.hs[:T].reshape(n, layer.H), out=self._grad(f"Wh{d}"))
            np.add.reduce(dz, axis=0, out=self._grad(f"b{d}"))
            if d > 0:
                below = self.layers[d - 1]
                x = below.hs[1 : T + 1].reshape(n, below.H)
                np.matmul(dz.T, x, out=self._grad(f"Wx{d}"))
                np.matmul(dz, layer.Wx, out=below.dH[:T].reshape(n, below.H))
            else:
                x0, dx0 = self.x0[:n], self.dx0[:n]
                np.take(self.Wil, tok, axis=0, out=x0)
                np.matmul(dz.T, x0, out=self._grad("Wx0"))
                np.matmul(dz, layer.Wx, out=dx0)
                # Embedding gradient: a scatter-add of rows, as one bincount.
                index = self.emb_index[:n]
                np.multiply(tok[:, None], self.E, out=index)
                np.add(index, self.emb_cols, out=index)
                self._grad("Wil").reshape(-1)[...] = np.bincount(
                    index.reshape(-1), weights=dx0.reshape(-1), minlength=self.V * self.E
                )
        return nll / B, nll, float(mask.sum())

    # --- one layer ---------------------------------------------------------------------

    def _forward(self, L: _Layer, T: int, full: list[bool]) -> None:
        dot, add, sub, mul, tanh, exp = (
            np.dot,
            np.add,
            np.subtract,
            np.multiply,
            np.tanh,
            np.exp,
        )
        recip, div = np.reciprocal, np.divide
        WhsT, ztmp, prod = L.Whs.T, L.ztmp, L.prod
        p0, p1 = prod[:, 0], prod[:, 1]
        cn, hn, tmp = L.tmp
        gates_tanh = self.gate_act == "tanh"
        cell_tanh = self.cell_act == "tanh"
        v_gates, v_ifo, v_g, v_if, v_gc = L.v_gates, L.v_ifo, L.v_g, L.v_if, L.v_gc
        v_c, v_h, v_xp, v_tc, v_o = L.v_c, L.v_h, L.v_xp, L.v_tc, L.v_o
        v_m, v_m0 = self.v_m, self.v_m0
        for t in range(T):
            gates = v_gates[t]
            dot(v_h[t], WhsT, ztmp)
            add(ztmp, v_xp[t], gates)
            if gates_tanh:  # sigmoid(z) = 0.5 + 0.5 tanh(z / 2); the 1/2 is in the weights
                tanh(gates, gates)
                ifo = v_ifo[t]
                mul(ifo, 0.5, ifo)
                add(ifo, 0.5, ifo)
            else:  # the weights hold -z (gates) and -2z (cell write)
                exp(gates, gates)
                add(gates, 1.0, gates)
                recip(gates, gates)
                g = v_g[t]
                mul(g, 2.0, g)
                sub(g, 1.0, g)
            mul(v_if[t], v_gc[t], prod)  # [i g, f c_prev]
            if full[t]:
                c = v_c[t + 1]
                add(p0, p1, c)
            else:
                c = cn
                add(p0, p1, cn)
            tc = v_tc[t]
            if cell_tanh:
                tanh(c, tc)
            else:
                mul(c, -2.0, tc)
                exp(tc, tc)
                add(tc, 1.0, tc)
                div(2.0, tc, tc)
                sub(tc, 1.0, tc)
            if full[t]:
                mul(v_o[t], tc, v_h[t + 1])
            else:  # new = m * new + (1 - m) * old
                m, m0 = v_m[t], v_m0[t]
                mul(v_o[t], tc, hn)
                mul(m, cn, cn)
                mul(m0, v_c[t], tmp)
                add(cn, tmp, v_c[t + 1])
                mul(m, hn, hn)
                mul(m0, v_h[t], tmp)
                add(hn, tmp, v_h[t + 1])

    def _derivatives(self, L: _Layer, T: int) -> None:
        """What backward multiplies by, for all steps at once (no recurrence in it)."""
        H = L.H
        A, K = L.A[1 : T + 1], L.K[:T]
        o, i, f, g = (A[:, :, k * H : (k + 1) * H] for k in range(4))
        ifo, c_prev, tc = A[:, :, : 3 * H], L.A[:T, :, 4 * H :], L.tc[:T]
        Kifo, Ko, Ki, Kf, Kg = K[:, :, : 3 * H], *(K[:, :, k * H : (k + 1) * H] for k in range(4))
        np.subtract(1.0, ifo, Kifo)
        np.multiply(Kifo, ifo, Kifo)  # s (1 - s)
        np.multiply(Ko, tc, Ko)  # dh -> dz_o
        np.multiply(Ki, g, Ki)  # dc -> dz_i
        np.multiply(Kf, c_prev, Kf)  # dc -> dz_f
        np.multiply(g, g, Kg)
        np.subtract(1.0, Kg, Kg)
        np.multiply(Kg, i, Kg)  # dc -> dz_g
        K[:, :, 4 * H :] = f  # dc -> dc_prev
        Kc = L.Kc[:T]
        np.multiply(tc, tc, Kc)
        np.subtract(1.0, Kc, Kc)
        np.multiply(Kc, o, Kc)  # dh -> dc

    def _backward(self, L: _Layer, T: int, full: list[bool]) -> None:
        add, mul, matmul = np.add, np.multiply, np.matmul
        Wh = L.Wh
        dc, htmp = L.tmp[0], L.htmp
        dhn, tmp = L.tmp[1], L.tmp[2]
        dc3 = dc[:, None, :]
        v_dH, v_do, v_Ko, v_Kc, v_dc = L.v_dH, L.v_do, L.v_Ko, L.v_Kc, L.v_dc
        v_K4, v_D4, v_dZ = L.v_K4, L.v_D4, L.v_dZ
        v_m, v_m0 = self.v_m, self.v_m0
        v_dc[T][...] = 0.0
        step_derivatives = self.step_derivatives
        if step_derivatives:
            sub, copyto = np.subtract, np.copyto
            H = L.H
            K, Kc = L.K[0], L.Kc[0]
            Kifo, Ko, Ki, Kf, Kg, K5 = K[:, : 3 * H], *(K[:, k * H : (k + 1) * H] for k in range(5))
            v_ifo, v_o, v_i, v_f, v_g = L.v_ifo, L.v_o, L.v_i, L.v_f, L.v_g
            v_c, v_tc = L.v_c, L.v_tc
        for t in range(T - 1, -1, -1):
            if step_derivatives:  # as _derivatives, for step t only
                ifo, tc, g, i = v_ifo[t], v_tc[t], v_g[t], v_i[t]
                sub(1.0, ifo, Kifo)
                mul(Kifo, ifo, Kifo)
                mul(Ko, tc, Ko)
                mul(Ki, g, Ki)
                mul(Kf, v_c[t], Kf)
                mul(g, g, Kg)
                sub(1.0, Kg, Kg)
                mul(Kg, i, Kg)
                copyto(K5, v_f[t])
                mul(tc, tc, Kc)
                sub(1.0, Kc, Kc)
                mul(Kc, v_o[t], Kc)
            gh = v_dH[t]  # d loss / d h_t (carried): from above and from step t + 1
            gc = v_dc[t + 1]  # d loss / d c_t (carried), from step t + 1
            if full[t]:
                mul(gh, v_Ko[t], v_do[t])
                mul(gh, v_Kc[t], dc)
                add(dc, gc, dc)
                mul(dc3, v_K4[t], v_D4[t])  # dz_i, dz_f, dz_g, dc_prev
                if t:
                    matmul(v_dZ[t], Wh, htmp)
                    add(v_dH[t - 1], htmp, v_dH[t - 1])
            else:
                m, m0 = v_m[t], v_m0[t]
                mul(gh, m, dhn)
                mul(dhn, v_Ko[t], v_do[t])
                mul(dhn, v_Kc[t], dc)
                mul(gc, m, tmp)
                add(dc, tmp, dc)
                mul(dc3, v_K4[t], v_D4[t])
                mul(gc, m0, tmp)
                add(v_dc[t], tmp, v_dc[t])
                if t:
                    matmul(v_dZ[t], Wh, htmp)
                    add(v_dH[t - 1], htmp, v_dH[t - 1])
                    mul(gh, m0, tmp)
                    add(v_dH[t - 1], tmp, v_dH[t - 1])
