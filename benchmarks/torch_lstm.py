"""The character LSTM's training step in PyTorch (CPU, eager, autograd): a peer to compare with.

Benchmark code only (``benchmarks/char_lstm.py`` runs it when ``import torch`` works);
PyTorch is never a dependency of rgraph. Same model, batches and RMSProp as rgraph's
:func:`rgraph.nn.language_model` + :class:`rgraph.RMSProp` (``char_lstm.py --check``
compares loss and gradients). Two forms:

- ``"nn"``: what a PyTorch user writes: ``torch.nn.LSTM`` (its fused kernels) over the
  padded batch, the loss masked. RecurrentJS's single bias per gate is ``bias_ih``;
  ``bias_hh`` stays zero and untrained. ``nn.LSTM`` does not hold the state on padded
  steps as rgraph's mask does, but padding only ever follows a sentence's end, so the
  state it computes there reaches no unmasked loss term: loss and gradients are the
  same.
- ``"cell"``: RecurrentJS's equations step by step in Python with autograd (stacked
  gate weights, input projections hoisted out of the loop, rgraph's masked state blend).

The update is RecurrentJS's Solver (RMSProp) written with torch's multi-tensor
``_foreach`` ops, as ``torch.optim`` does internally.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

TORCH_GATES = ("i", "f", "c", "o")  # nn.LSTM's gate order (i, f, g, o)


class TorchLSTM:
    """The character LSTM trained with PyTorch; ``params`` by rgraph's names."""

    def __init__(
        self,
        params: Mapping[str, np.ndarray],
        hidden_sizes: Sequence[int],
        *,
        batch: int,
        dtype: str = "float64",
        kind: str = "nn",
        lr: float = 0.01,
        regc: float = 1e-6,
        clipval: float = 5.0,
        decay: float = 0.999,
        eps: float = 1e-8,
    ):
        self.kind = kind
        self.B = batch
        self.hidden_sizes = list(hidden_sizes)
        self.dtype = getattr(torch, dtype)
        self.lr, self.regc, self.clipval, self.decay, self.eps = lr, regc, clipval, decay, eps
        t = self._tensor
        self.Wil = t(params["Wil"])
        self.Whd = t(params["Whd"])
        self.bd = t(params["bd"])
        self.layers: list = []  # nn: nn.LSTM modules; cell: (Wx, Wh, b) stacked i, f, c, o
        trained = [self.Wil]
        if kind == "nn":
            equal = len(set(self.hidden_sizes)) == 1
            groups = [self.hidden_sizes] if equal else [[h] for h in self.hidden_sizes]
            n_in, d = self.Wil.shape[1], 0
            for group in groups:
                lstm = torch.nn.LSTM(n_in, group[0], num_layers=len(group), dtype=self.dtype)
                for k in range(len(group)):
                    Wx, Wh, b = self._stacked(params, d)
                    with torch.no_grad():
                        getattr(lstm, f"weight_ih_l{k}").copy_(Wx)
                        getattr(lstm, f"weight_hh_l{k}").copy_(Wh)
                        getattr(lstm, f"bias_ih_l{k}").copy_(b)
                        getattr(lstm, f"bias_hh_l{k}").zero_()
                    getattr(lstm, f"bias_hh_l{k}").requires_grad_(False)
                    trained += [getattr(lstm, f"{p}_l{k}") for p in ("weight_ih", "weight_hh")]
                    trained.append(getattr(lstm, f"bias_ih_l{k}"))
                    d += 1
                self.layers.append(lstm)
                n_in = group[0]
        elif kind == "cell":
            for d in range(len(self.hidden_sizes)):
                stacked = [t(a.numpy()) for a in self._stacked(params, d)]
                self.layers.append(stacked)
                trained += stacked
        else:
            raise ValueError(f"kind must be 'nn' or 'cell', got {kind!r}")
        trained += [self.Whd, self.bd]
        self.trained = trained
        with torch.no_grad():
            self.cache = [torch.zeros_like(p) for p in trained]

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.tensor(np.asarray(a), dtype=self.dtype, requires_grad=True)

    def _stacked(self, params: Mapping[str, np.ndarray], d: int):
        """Layer ``d``'s weights stacked in nn.LSTM's gate order."""
        names = ("W{g}x{d}", "W{g}h{d}", "b{g}{d}")
        cat = [np.concatenate([params[f.format(g=g, d=d)] for g in TORCH_GATES]) for f in names]
        return [torch.tensor(a, dtype=self.dtype) for a in cat]

    # --- training ----------------------------------------------------------------------

    def loss(self, tokens: np.ndarray, targets: np.ndarray, mask: np.ndarray):
        """``(loss, nll)`` of one batch as tensors of the autograd graph."""
        tok = torch.from_numpy(tokens.astype(np.int64))
        tgt = torch.from_numpy(targets.astype(np.int64)).reshape(-1)
        m = torch.from_numpy(mask).to(self.dtype)
        x = F.embedding(tok, self.Wil)  # (T, B, E)
        if self.kind == "nn":
            for lstm in self.layers:
                x, _ = lstm(x)
        else:
            for Wx, Wh, b in self.layers:
                x = self._cell_layer(x, Wx, Wh, b, m)
        logits = F.linear(x, self.Whd, self.bd)
        ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt, reduction="none")
        nll = torch.dot(ce, m.reshape(-1))
        return nll / tokens.shape[1], nll

    @staticmethod
    def _cell_layer(x, Wx, Wh, b, m):
        T, B, _ = x.shape
        H = Wh.shape[1]
        xp = F.linear(x, Wx, b)  # all input projections at once
        h = c = x.new_zeros((B, H))
        keep = m.unsqueeze(-1)
        full = m.bool().all(dim=1).tolist()
        hs = []
        for t in range(T):
            z = torch.addmm(xp[t], h, Wh.t())
            i, f, g, o = z.split(H, dim=1)
            i, f, o = torch.sigmoid(i), torch.sigmoid(f), torch.sigmoid(o)
            c_new = f * c + i * torch.tanh(g)
            h_new = o * torch.tanh(c_new)
            if full[t]:
                h, c = h_new, c_new
            else:
                k = keep[t]
                h = k * h_new + (1.0 - k) * h
                c = k * c_new + (1.0 - k) * c
            hs.append(h)
        return torch.stack(hs)

    def forward_backward(self, tokens, targets, mask) -> tuple[float, float, float]:
        for p in self.trained:
            p.grad = None
        loss, nll = self.loss(tokens, targets, mask)
        loss.backward()
        return float(loss.detach()), float(nll.detach()), float(mask.sum())

    def step(self, feeds: Mapping[str, np.ndarray]) -> float:
        """Forward, backward and one RMSProp update on one batch; returns the loss."""
        loss, _, _ = self.forward_backward(feeds["tokens"], feeds["targets"], feeds["mask"])
        self.rmsprop()
        return loss

    @torch.no_grad()
    def rmsprop(self) -> None:
        """RecurrentJS's Solver.step: the cache sees the unclipped gradient."""
        w = self.trained
        g = [p.grad for p in w]
        torch._foreach_mul_(self.cache, self.decay)
        torch._foreach_addcmul_(self.cache, g, g, value=1.0 - self.decay)
        torch._foreach_clamp_min_(g, -self.clipval)
        torch._foreach_clamp_max_(g, self.clipval)
        denom = torch._foreach_add(self.cache, self.eps)
        torch._foreach_sqrt_(denom)
        delta = torch._foreach_div(g, denom)
        torch._foreach_mul_(delta, -self.lr)
        torch._foreach_add_(delta, w, alpha=-self.regc)
        torch._foreach_add_(w, delta)

    # --- parameters in rgraph's names ---------------------------------------------------

    def _named(self, get) -> dict[str, np.ndarray]:
        out = {n: get(p) for n, p in (("Wil", self.Wil), ("Whd", self.Whd), ("bd", self.bd))}
        stacked = []
        if self.kind == "nn":
            for lstm in self.layers:
                for k in range(lstm.num_layers):
                    stacked.append(
                        [getattr(lstm, f"{p}_l{k}") for p in ("weight_ih", "weight_hh", "bias_ih")]
                    )
        else:
            stacked = self.layers
        for d, tensors in enumerate(stacked):
            H = self.hidden_sizes[d]
            for fmt, tensor in zip(("W{g}x{d}", "W{g}h{d}", "b{g}{d}"), tensors):
                a = get(tensor)
                for k, gate in enumerate(TORCH_GATES):
                    out[fmt.format(g=gate, d=d)] = a[k * H : (k + 1) * H].copy()
        return out

    def params(self) -> dict[str, np.ndarray]:
        return self._named(lambda p: p.detach().numpy().copy())

    def grads(self) -> dict[str, np.ndarray]:
        return self._named(lambda p: p.grad.numpy().copy())
