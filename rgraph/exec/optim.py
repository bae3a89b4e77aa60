"""Optimisers: RecurrentJS's RMSProp, SGD with momentum, Adam; and gradient clipping.

An optimiser updates a *parameter store* (a dict name -> ``np.ndarray``, as
:func:`rgraph.init_params` makes) **in place** from the gradients a
:class:`~rgraph.Program` returns, so the store keeps the same array objects from step to
step. Per-parameter state (RMSProp's cache, Adam's moments, SGD's velocity) is created
lazily, as zeros of the parameter's dtype, the first time a parameter gets a gradient; a
float32 store stays float32.

A training loop:

>>> import numpy as np, rgraph as rg
>>> g = rg.Graph("fit")
>>> x = g.input("x", (3, "B")); y = g.input("y", (1, "B"))
>>> W = g.param("W", (1, 3)); b = g.param("b", (1, 1))
>>> d = W @ x + b - y
>>> loss = g.output(g.mean(d * d), name="loss")
>>> prog = rg.compile(g, loss=loss)
>>> params = rg.init_params(g)
>>> X = np.random.default_rng(0).normal(size=(3, 32)); Y = np.array([[1.0, 2.0, 3.0]]) @ X
>>> opt = rg.Adam(lr=0.1)
>>> for _ in range(300):
...     result = prog.run({"x": X, "y": Y}, params)
...     stats = opt.step(params, result.grads)
>>> bool(result["loss"] < 1e-4), params["W"].round(2).tolist()
(True, [[1.0, 2.0, 3.0]])

The whole state is plain data (str, int, float, bool and ``np.ndarray``), so training can
resume exactly, e.g. from a model file:

>>> state = opt.state_dict()
>>> state["kind"], state["step"], sorted(state["slots"])
('adam', 300, ['m', 'v'])
>>> again = rg.Optimizer.from_state_dict(state)  # an Adam, bit for bit the same state

Clipping by value or by global norm works with any optimiser, as pure functions
(:func:`clip_by_value`, :func:`clip_by_global_norm`) or with the ``clip_norm=`` option.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from rgraph.errors import OptimizerError, OptimizerStateError

__all__ = [
    "SGD",
    "Adam",
    "Optimizer",
    "RMSProp",
    "StepStats",
    "clip_by_global_norm",
    "clip_by_value",
    "global_norm",
]

_STATE_KEYS = ("kind", "hyper", "step", "slots")


# --- clipping helpers ---------------------------------------------------------------------


def global_norm(grads: Mapping[str, Any]) -> float:
    """The L2 norm of all gradients taken together, accumulated in float64.

    >>> import numpy as np
    >>> global_norm({"a": np.array([3.0]), "b": np.array([[4.0, 0.0]])})
    5.0
    """
    total = 0.0
    for g in grads.values():
        a = np.asarray(g, dtype=np.float64).ravel()
        total += float(np.dot(a, a))
    return math.sqrt(total)


def clip_by_value(grads: Mapping[str, Any], limit: float) -> dict[str, np.ndarray]:
    """Clip every gradient element to ``[-limit, limit]``.

    Pure: returns a new dict of new arrays (of the same dtypes) and leaves ``grads`` as it
    was. NaNs stay NaN.

    Parameters
    ----------
    grads
        Name -> gradient array, e.g. ``Program.run(...).grads``.
    limit
        A positive number.

    Examples
    --------
    >>> import numpy as np
    >>> clip_by_value({"w": np.array([-7.0, 0.5, 6.0])}, 5.0)["w"].tolist()
    [-5.0, 0.5, 5.0]
    """
    c = _positive("clip_by_value", "limit", limit)
    return {name: np.clip(np.asarray(g), -c, c) for name, g in grads.items()}


def clip_by_global_norm(
    grads: Mapping[str, Any], max_norm: float
) -> tuple[dict[str, np.ndarray], float]:
    """Scale all gradients together so that their global norm is at most ``max_norm``.

    If the global norm ``n`` (see :func:`global_norm`) exceeds ``max_norm``, every gradient
    is multiplied by ``max_norm / n``; otherwise they are returned unchanged. This keeps the
    direction of the whole update, unlike clipping each element. Pure: returns a new dict
    of new arrays (of the same dtypes). A non-finite norm (a NaN or infinite gradient) is
    returned as it is, with the gradients unscaled: finding where it came from is the job
    of ``rg.compile(..., check_finite=True)``.

    Parameters
    ----------
    grads
        Name -> gradient array, e.g. ``Program.run(...).grads``.
    max_norm
        A positive number.

    Returns
    -------
    (clipped, norm)
        The clipped gradients and the global norm *before* clipping.

    Examples
    --------
    >>> import numpy as np
    >>> clipped, norm = clip_by_global_norm({"a": np.array([3.0]), "b": np.array([4.0])}, 1.0)
    >>> norm, clipped["a"].tolist(), clipped["b"].tolist()
    (5.0, [0.6000000000000001], [0.8])
    """
    limit = _positive("clip_by_global_norm", "max_norm", max_norm)
    norm = global_norm(grads)
    scale = _norm_scale(norm, limit)
    if scale is None:
        return {name: np.array(g, copy=True) for name, g in grads.items()}, norm
    return {name: np.asarray(g) * scale for name, g in grads.items()}, norm


def _norm_scale(norm: float, max_norm: float | None) -> float | None:
    """The factor global-norm clipping multiplies by, or None to leave gradients alone."""
    if max_norm is None or not math.isfinite(norm) or norm <= max_norm:
        return None
    return max_norm / norm


# --- hyperparameter checks ----------------------------------------------------------------


def _number(where: str, name: str, value: Any) -> float:
    if isinstance(value, (bool, np.bool_)) or not isinstance(
        value, (int, float, np.integer, np.floating)
    ):
        raise OptimizerError(f"{where}: {name} must be a number, got {value!r}")
    return float(value)


def _checked(where: str, name: str, value: Any, ok: Callable[[float], bool], need: str) -> float:
    v = _number(where, name, value)
    if not ok(v):
        raise OptimizerError(f"{where}: {name} must be {need}, got {v!r}")
    return v


def _nonneg(where: str, name: str, value: Any) -> float:
    return _checked(where, name, value, lambda v: 0.0 <= v < math.inf, "finite and >= 0")


def _positive(where: str, name: str, value: Any) -> float:
    return _checked(where, name, value, lambda v: 0.0 < v < math.inf, "finite and > 0")


def _unit(where: str, name: str, value: Any) -> float:
    return _checked(where, name, value, lambda v: 0.0 <= v < 1.0, "in [0, 1)")


def _limit(where: str, name: str, value: Any) -> float | None:
    """A clipping threshold: positive, or None / inf for no clipping."""
    if value is None:
        return None
    v = _checked(where, name, value, lambda v: v > 0.0, "> 0 (or None for no clipping)")
    return None if v == math.inf else v


def _flag(where: str, name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise OptimizerError(f"{where}: {name} must be True or False, got {value!r}")
    return bool(value)


def _names(names: Iterable[str], limit: int = 8) -> str:
    names = sorted(names)
    shown = ", ".join(repr(n) for n in names[:limit])
    return shown + (f", ... ({len(names)} in all)" if len(names) > limit else "")


def _describe(a: np.ndarray) -> str:
    return f"{a.dtype}{list(a.shape)}"


# --- the optimisers -----------------------------------------------------------------------


@dataclass(frozen=True)
class StepStats:
    """What one :meth:`Optimizer.step` reports.

    Attributes
    ----------
    step
        The number of the step just taken (1 for the first).
    ratio_clipped
        The fraction of gradient elements clipped by value (RMSProp's ``clipval``;
        RecurrentJS's ``ratio_clipped``); 0.0 for optimisers that do not clip by value.
    grad_norm
        The global L2 norm of the gradients as given, before any clipping.
    """

    step: int
    ratio_clipped: float
    grad_norm: float


class Optimizer:
    """Base class: the step loop, lazy per-parameter state, and state export/import.

    A subclass sets ``kind``, ``hyper_names`` and ``slot_names``, validates its
    hyperparameters in ``_set_hyper`` and updates one parameter in ``_update``.

    ``state_dict()`` returns plain data::

        {"kind": "rmsprop" | "sgd" | "adam",
         "hyper": {name: float | bool},      # None thresholds are stored as inf
         "step": int,                        # steps taken so far
         "slots": {slot: {param: np.ndarray}}}  # copies, each of its param's shape/dtype

    and ``load_state_dict(state)`` / ``Optimizer.from_state_dict(state)`` restore it exactly.
    """

    kind: ClassVar[str] = ""
    hyper_names: ClassVar[tuple[str, ...]] = ()
    _kinds: ClassVar[dict[str, type[Optimizer]]] = {}

    step_count: int
    slots: dict[str, dict[str, np.ndarray]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("kind"):
            Optimizer._kinds[cls.kind] = cls

    def __init__(self, **hyper: Any) -> None:
        self._set_hyper(hyper)
        self.step_count = 0
        self.slots = {}

    # -- what subclasses provide ------------------------------------------------------------

    @property
    def slot_names(self) -> tuple[str, ...]:
        """The names of the per-parameter state arrays this optimiser keeps."""
        return ()

    def _set_hyper(self, hyper: dict[str, Any]) -> None:
        raise NotImplementedError

    def _update(self, w: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray]) -> int:
        """Update ``w`` in place; return how many elements of ``g`` were clipped."""
        raise NotImplementedError

    # -- hyperparameters --------------------------------------------------------------------

    @property
    def hyper(self) -> dict[str, Any]:
        """The hyperparameters as plain data (a None threshold is given as ``inf``)."""
        out = {}
        for name in self.hyper_names:
            value = getattr(self, name)
            out[name] = math.inf if value is None else value
        return out

    def __repr__(self) -> str:
        args = ", ".join(f"{n}={getattr(self, n)!r}" for n in self.hyper_names)
        return f"{type(self).__name__}({args}) at step {self.step_count}"

    # -- stepping ---------------------------------------------------------------------------

    def step(self, params: Mapping[str, np.ndarray], grads: Mapping[str, Any]) -> StepStats:
        """Update, in place, every parameter that has a gradient in ``grads``.

        Parameters
        ----------
        params
            The parameter store, name -> array; its arrays are modified in place.
        grads
            Name -> gradient (``Program.run(...).grads``), each of its parameter's shape;
            a gradient of another float dtype is cast to the parameter's. Parameters
            without a gradient are left alone. ``grads`` is not modified.

        Returns
        -------
        StepStats
            The step number, ``ratio_clipped`` and the pre-clip gradient norm.

        Raises
        ------
        OptimizerError
            A gradient names no parameter or has another shape, or a parameter is not a
            writeable float array. Checked for all parameters before any is changed.
        OptimizerStateError
            Existing state of a parameter does not match its shape or dtype.
        """
        work = self._check(params, grads)
        norm = global_norm({name: g for name, _, g in work})
        scale = _norm_scale(norm, self.clip_norm)
        self.step_count += 1
        clipped = total = 0
        for name, w, g in work:
            if scale is not None:
                g = g * scale
            clipped += self._update(w, g, self._state(name, w))
            total += g.size
        return StepStats(
            step=self.step_count,
            ratio_clipped=clipped / total if total else 0.0,
            grad_norm=norm,
        )

    def _check(
        self, params: Mapping[str, np.ndarray], grads: Mapping[str, Any]
    ) -> list[tuple[str, np.ndarray, np.ndarray]]:
        where = f"{type(self).__name__}.step"
        unknown = [name for name in grads if name not in params]
        if unknown:
            raise OptimizerError(
                f"{where}: gradients for {_names(unknown)}, which are not in the parameter "
                f"store (it has {_names(params)})"
            )
        work = []
        for name, grad in grads.items():
            w = params[name]
            if not isinstance(w, np.ndarray) or w.dtype.kind != "f":
                got = _describe(w) if isinstance(w, np.ndarray) else type(w).__name__
                raise OptimizerError(
                    f"{where}: parameter '{name}' must be a float numpy array, got {got}"
                )
            if not w.flags.writeable:
                raise OptimizerError(
                    f"{where}: parameter '{name}' is read-only; optimisers update the "
                    "parameter arrays in place"
                )
            g = np.asarray(grad)
            if g.shape != w.shape:
                raise OptimizerError(
                    f"{where}: gradient of '{name}' is {_describe(g)} but the parameter is "
                    f"{_describe(w)}"
                )
            if g.dtype != w.dtype:
                g = g.astype(w.dtype)
            for slot in self.slot_names:
                s = self.slots.get(slot, {}).get(name)
                if s is not None and (s.shape != w.shape or s.dtype != w.dtype):
                    raise OptimizerStateError(
                        f"{where}: {self.kind} state '{slot}' of '{name}' is {_describe(s)} "
                        f"but the parameter is {_describe(w)}"
                    )
            work.append((name, w, g))
        return work

    def _state(self, name: str, w: np.ndarray) -> dict[str, np.ndarray]:
        """The state arrays of one parameter, created as zeros on first use."""
        state = {}
        for slot in self.slot_names:
            table = self.slots.setdefault(slot, {})
            if name not in table:
                table[name] = np.zeros(w.shape, dtype=w.dtype)
            state[slot] = table[name]
        return state

    # -- state ------------------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """The whole optimiser state as plain data; arrays are copies.

        Examples
        --------
        >>> import numpy as np, rgraph as rg
        >>> opt = rg.SGD(lr=0.1, momentum=0.9)
        >>> _ = opt.step({"w": np.zeros(2)}, {"w": np.ones(2)})
        >>> opt.state_dict()
        {'kind': 'sgd', 'hyper': {'lr': 0.1, 'momentum': 0.9, 'nesterov': False, \
'weight_decay': 0.0, 'clip_norm': inf}, 'step': 1, 'slots': {'velocity': {'w': array([1., 1.])}}}
        """
        return {
            "kind": self.kind,
            "hyper": self.hyper,
            "step": int(self.step_count),
            "slots": {
                slot: {name: a.copy() for name, a in self.slots.get(slot, {}).items()}
                for slot in self.slot_names
            },
        }

    def load_state_dict(
        self, state: Mapping[str, Any], params: Mapping[str, np.ndarray] | None = None
    ) -> None:
        """Replace this optimiser's hyperparameters, step count and state with ``state``.

        Everything is checked before anything changes. The arrays are copied.

        Parameters
        ----------
        state
            What :meth:`state_dict` returned (perhaps read back from a file).
        params
            If given, the parameter store the state will be used with: every state array
            must belong to one of its parameters and have that parameter's shape and
            dtype. (Without it, the same is checked at the next :meth:`step`.)

        Raises
        ------
        OptimizerStateError
            The state is of another kind of optimiser, misses or has unknown entries, has
            bad hyperparameters, or an array that is not a float array of the right shape
            and dtype; the message names the slot and parameter.
        """
        kind = type(self).__name__
        if not isinstance(state, Mapping):
            raise OptimizerStateError(
                f"{kind} state must be a mapping with keys {list(_STATE_KEYS)}, "
                f"got {type(state).__name__}"
            )
        _exact_keys(f"{kind} state", state, _STATE_KEYS)
        if state["kind"] != self.kind:
            raise OptimizerStateError(
                f"optimizer state is for kind {state['kind']!r}, but this is a {kind} "
                f"(kind {self.kind!r}); Optimizer.from_state_dict(state) builds the "
                "optimizer the state is for"
            )
        hyper = state["hyper"]
        if not isinstance(hyper, Mapping):
            raise OptimizerStateError(f"{kind} state: 'hyper' must be a mapping")
        _exact_keys(f"{kind} state 'hyper'", hyper, self.hyper_names)
        try:
            probe = type(self)(**hyper)
        except OptimizerError as e:
            raise OptimizerStateError(f"{kind} state: bad hyperparameter: {e}") from e
        step = state["step"]
        if isinstance(step, (bool, np.bool_)) or not isinstance(step, (int, np.integer)):
            raise OptimizerStateError(f"{kind} state: 'step' must be an int, got {step!r}")
        if step < 0:
            raise OptimizerStateError(f"{kind} state: 'step' must be >= 0, got {step}")
        slots = state["slots"]
        if not isinstance(slots, Mapping):
            raise OptimizerStateError(f"{kind} state: 'slots' must be a mapping")
        _exact_keys(f"{kind} state 'slots'", slots, probe.slot_names)
        new_slots = _checked_slots(kind, slots, probe.slot_names, params)

        self._set_hyper(dict(hyper))
        self.step_count = int(step)
        self.slots = new_slots

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Any], params: Mapping[str, np.ndarray] | None = None
    ) -> Optimizer:
        """A new optimiser with exactly the state of ``state`` (see :meth:`load_state_dict`).

        Called on :class:`Optimizer` itself, it builds whichever kind ``state["kind"]``
        names; called on a subclass, the state must be of that kind.

        Examples
        --------
        >>> import numpy as np, rgraph as rg
        >>> opt = rg.RMSProp(lr=0.02)
        >>> _ = opt.step({"w": np.zeros(2)}, {"w": np.ones(2)})
        >>> rg.Optimizer.from_state_dict(opt.state_dict())
        RMSProp(lr=0.02, regc=1e-06, clipval=5.0, decay=0.999, eps=1e-08, clip_norm=None) at step 1
        """
        target: type[Optimizer] = cls
        if not cls.kind:
            kind = state.get("kind") if isinstance(state, Mapping) else None
            if kind not in Optimizer._kinds:
                raise OptimizerStateError(
                    f"optimizer state has kind {kind!r}; known kinds: {_names(Optimizer._kinds)}"
                )
            target = Optimizer._kinds[kind]
        opt = target()
        opt.load_state_dict(state, params)
        return opt


def _exact_keys(what: str, mapping: Mapping[str, Any], expected: Iterable[str]) -> None:
    expected = list(expected)
    missing = [k for k in expected if k not in mapping]
    unknown = [k for k in mapping if k not in expected]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"misses {_names(missing)}")
        if unknown:
            parts.append(f"has unknown {_names(map(str, unknown))}")
        raise OptimizerStateError(
            f"{what} {' and '.join(parts)}; expected exactly {_names(expected) or 'nothing'}"
        )


def _checked_slots(
    kind: str,
    slots: Mapping[str, Any],
    slot_names: tuple[str, ...],
    params: Mapping[str, np.ndarray] | None,
) -> dict[str, dict[str, np.ndarray]]:
    """Validated copies of the state arrays (native byte order, C-contiguous, writeable)."""
    out: dict[str, dict[str, np.ndarray]] = {}
    seen: dict[str, tuple[str, np.ndarray]] = {}  # param -> (first slot, its array)
    for slot in slot_names:
        table = slots[slot]
        if not isinstance(table, Mapping):
            raise OptimizerStateError(
                f"{kind} state: slot '{slot}' must map parameter names to arrays"
            )
        out[slot] = {}
        for name, a in table.items():
            where = f"{kind} state '{slot}' of '{name}'"
            if not isinstance(name, str):
                raise OptimizerStateError(
                    f"{kind} state: slot '{slot}' has a non-string key {name!r}"
                )
            if not isinstance(a, np.ndarray) or a.dtype.kind != "f":
                got = _describe(a) if isinstance(a, np.ndarray) else type(a).__name__
                raise OptimizerStateError(f"{where} must be a float numpy array, got {got}")
            a = np.array(a, dtype=a.dtype.newbyteorder("="), order="C", copy=True)
            if params is not None:
                if name not in params:
                    raise OptimizerStateError(
                        f"{where}: there is no parameter '{name}' in the parameter store"
                    )
                w = np.asarray(params[name])
                if a.shape != w.shape or a.dtype != w.dtype:
                    raise OptimizerStateError(
                        f"{where} is {_describe(a)} but the parameter is {_describe(w)}"
                    )
            if name in seen:
                first, b = seen[name]
                if a.shape != b.shape or a.dtype != b.dtype:
                    raise OptimizerStateError(
                        f"{where} is {_describe(a)} but its '{first}' is {_describe(b)}"
                    )
            else:
                seen[name] = (slot, a)
            out[slot][name] = a
    for slot in slot_names:
        lacking = [name for name in seen if name not in out[slot]]
        if lacking:
            raise OptimizerStateError(
                f"{kind} state: slot '{slot}' lacks {_names(lacking)}, which other slots have"
            )
    return out


class RMSProp(Optimizer):
    """RMSProp exactly as RecurrentJS's ``Solver``.

    Per parameter element, with ``g`` its gradient::

        cache = decay * cache + (1 - decay) * g * g      # the *unclipped* g
        g     = clip(g, -clipval, clipval)                # counted in ratio_clipped
        w    += -lr * g / sqrt(cache + eps) - regc * w

    ``regc`` is RecurrentJS's L2 regularisation: it shrinks ``w`` directly, not scaled by
    ``lr``. Only parameters with a gradient are updated (and decayed).

    Parameters
    ----------
    lr
        Learning rate (the demo's 0.01).
    regc
        L2 regularisation strength (the demo's 1e-6).
    clipval
        Clip each gradient element to ``[-clipval, clipval]`` after updating the cache
        (the demo's 5); None for no clipping.
    decay
        Decay rate of the squared-gradient cache (RecurrentJS's ``decay_rate``).
    eps
        Added to the cache inside the square root (RecurrentJS's ``smooth_eps``).
    clip_norm
        If given, first scale all gradients so that their global norm is at most this
        (see :func:`clip_by_global_norm`); the cache then sees the scaled gradients.

    Examples
    --------
    >>> import numpy as np, rgraph as rg
    >>> params = {"w": np.array([1.0, -2.0])}
    >>> opt = rg.RMSProp(lr=0.01, regc=0.0, clipval=5.0)
    >>> stats = opt.step(params, {"w": np.array([10.0, 0.5])})
    >>> stats.ratio_clipped
    0.5
    >>> params["w"].round(4).tolist(), opt.slots["cache"]["w"].tolist()
    ([0.8419, -2.3162], [0.10000000000000009, 0.0002500000000000002])
    """

    kind = "rmsprop"
    hyper_names = ("lr", "regc", "clipval", "decay", "eps", "clip_norm")

    def __init__(
        self,
        lr: float = 0.01,
        *,
        regc: float = 1e-6,
        clipval: float | None = 5.0,
        decay: float = 0.999,
        eps: float = 1e-8,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(
            lr=lr, regc=regc, clipval=clipval, decay=decay, eps=eps, clip_norm=clip_norm
        )

    @property
    def slot_names(self) -> tuple[str, ...]:
        return ("cache",)

    def _set_hyper(self, hyper: dict[str, Any]) -> None:
        where = "RMSProp"
        self.lr = _nonneg(where, "lr", hyper["lr"])
        self.regc = _nonneg(where, "regc", hyper["regc"])
        self.clipval = _limit(where, "clipval", hyper["clipval"])
        self.decay = _unit(where, "decay", hyper["decay"])
        self.eps = _positive(where, "eps", hyper["eps"])
        self.clip_norm = _limit(where, "clip_norm", hyper["clip_norm"])

    def _update(self, w: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray]) -> int:
        cache = state["cache"]
        cache *= self.decay
        cache += (1.0 - self.decay) * g * g
        clipped = 0
        if self.clipval is not None:
            c = self.clipval
            clipped = int(np.count_nonzero(g > c)) + int(np.count_nonzero(g < -c))
            if clipped:
                g = np.clip(g, -c, c)
        delta = (-self.lr * g) / np.sqrt(cache + self.eps)
        if self.regc:
            delta -= self.regc * w
        w += delta
        return clipped


class SGD(Optimizer):
    """Stochastic gradient descent with optional momentum, Nesterov and weight decay.

    The PyTorch formulation, per parameter::

        g  = g + weight_decay * w
        v  = momentum * v + g                       # if momentum
        w -= lr * v                                 # or, nesterov: lr * (g + momentum * v)

    Without momentum it is plain ``w -= lr * g`` and keeps no state.

    Parameters
    ----------
    lr
        Learning rate.
    momentum
        Momentum factor (0 for none).
    nesterov
        Use Nesterov momentum (needs ``momentum > 0``).
    weight_decay
        L2 penalty added to the gradient.
    clip_norm
        If given, first clip the gradients to this global norm (:func:`clip_by_global_norm`).

    Examples
    --------
    >>> import numpy as np, rgraph as rg
    >>> params = {"w": np.array([1.0, 2.0])}
    >>> opt = rg.SGD(lr=0.1, momentum=0.5)
    >>> for _ in range(2):
    ...     _ = opt.step(params, {"w": np.array([1.0, -1.0])})
    >>> params["w"].tolist()   # steps of 0.1, then 0.1 * (0.5 * 1 + 1)
    [0.75, 2.25]
    """

    kind = "sgd"
    hyper_names = ("lr", "momentum", "nesterov", "weight_decay", "clip_norm")

    def __init__(
        self,
        lr: float = 0.01,
        *,
        momentum: float = 0.0,
        nesterov: bool = False,
        weight_decay: float = 0.0,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(
            lr=lr,
            momentum=momentum,
            nesterov=nesterov,
            weight_decay=weight_decay,
            clip_norm=clip_norm,
        )

    @property
    def slot_names(self) -> tuple[str, ...]:
        return ("velocity",) if self.momentum else ()

    def _set_hyper(self, hyper: dict[str, Any]) -> None:
        where = "SGD"
        lr = _nonneg(where, "lr", hyper["lr"])
        momentum = _nonneg(where, "momentum", hyper["momentum"])
        nesterov = _flag(where, "nesterov", hyper["nesterov"])
        if nesterov and momentum == 0.0:
            raise OptimizerError(f"{where}: nesterov=True needs momentum > 0")
        self.lr, self.momentum, self.nesterov = lr, momentum, nesterov
        self.weight_decay = _nonneg(where, "weight_decay", hyper["weight_decay"])
        self.clip_norm = _limit(where, "clip_norm", hyper["clip_norm"])

    def _update(self, w: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray]) -> int:
        if self.weight_decay:
            g = g + self.weight_decay * w
        if self.momentum:
            v = state["velocity"]
            v *= self.momentum
            v += g
            g = g + self.momentum * v if self.nesterov else v
        w -= self.lr * g
        return 0


class Adam(Optimizer):
    """Adam (Kingma & Ba, 2015) with bias correction and optional weight decay.

    Per parameter, at step ``t`` (1, 2, ...)::

        g    = g + weight_decay * w                 # unless decoupled_weight_decay
        m    = beta1 * m + (1 - beta1) * g
        v    = beta2 * v + (1 - beta2) * g**2
        mhat = m / (1 - beta1**t);  vhat = v / (1 - beta2**t)
        w   -= lr * mhat / (sqrt(vhat) + eps)

    With ``decoupled_weight_decay=True`` (AdamW), the decay is instead applied to the
    weights, ``w *= 1 - lr * weight_decay``, before the update. ``t`` is the optimiser's
    step count: a parameter that first gets a gradient at a later step is bias-corrected
    with that step's ``t``.

    Parameters
    ----------
    lr
        Learning rate (step size).
    beta1, beta2
        Decay rates of the first and second moment estimates.
    eps
        Added to ``sqrt(vhat)``.
    weight_decay
        L2 penalty (added to the gradient, or decoupled; see above).
    decoupled_weight_decay
        Apply ``weight_decay`` to the weights directly (AdamW).
    clip_norm
        If given, first clip the gradients to this global norm (:func:`clip_by_global_norm`).

    Examples
    --------
    >>> import numpy as np, rgraph as rg
    >>> params = {"w": np.array([1.0, 2.0])}
    >>> opt = rg.Adam(lr=0.1)
    >>> _ = opt.step(params, {"w": np.array([3.0, -0.5])})
    >>> params["w"].round(6).tolist()   # the first step moves each weight by about lr
    [0.9, 2.1]
    """

    kind = "adam"
    hyper_names = (
        "lr",
        "beta1",
        "beta2",
        "eps",
        "weight_decay",
        "decoupled_weight_decay",
        "clip_norm",
    )

    def __init__(
        self,
        lr: float = 0.001,
        *,
        beta1: float = 0.9,
        beta2: float = 0.999,
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        decoupled_weight_decay: bool = False,
        clip_norm: float | None = None,
    ) -> None:
        super().__init__(
            lr=lr,
            beta1=beta1,
            beta2=beta2,
            eps=eps,
            weight_decay=weight_decay,
            decoupled_weight_decay=decoupled_weight_decay,
            clip_norm=clip_norm,
        )

    @property
    def slot_names(self) -> tuple[str, ...]:
        return ("m", "v")

    def _set_hyper(self, hyper: dict[str, Any]) -> None:
        where = "Adam"
        self.lr = _nonneg(where, "lr", hyper["lr"])
        self.beta1 = _unit(where, "beta1", hyper["beta1"])
        self.beta2 = _unit(where, "beta2", hyper["beta2"])
        self.eps = _positive(where, "eps", hyper["eps"])
        self.weight_decay = _nonneg(where, "weight_decay", hyper["weight_decay"])
        self.decoupled_weight_decay = _flag(
            where, "decoupled_weight_decay", hyper["decoupled_weight_decay"]
        )
        self.clip_norm = _limit(where, "clip_norm", hyper["clip_norm"])

    def _update(self, w: np.ndarray, g: np.ndarray, state: dict[str, np.ndarray]) -> int:
        t = self.step_count
        if self.weight_decay:
            if self.decoupled_weight_decay:
                w *= 1.0 - self.lr * self.weight_decay
            else:
                g = g + self.weight_decay * w
        m, v = state["m"], state["v"]
        m *= self.beta1
        m += (1.0 - self.beta1) * g
        v *= self.beta2
        v += (1.0 - self.beta2) * np.square(g)
        mhat = m / (1.0 - self.beta1**t)
        vhat = v / (1.0 - self.beta2**t)
        w -= self.lr * mhat / (np.sqrt(vhat) + self.eps)
        return 0
