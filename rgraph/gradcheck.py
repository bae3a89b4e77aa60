"""Checking generated backward passes against central finite differences."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rgraph.builder import Graph, Value
from rgraph.errors import GradientCheckError
from rgraph.exec.program import compile
from rgraph.ir.graph import Const, GraphIR, Node, Param, Var
from rgraph.ir.types import make_type


@dataclass
class TensorReport:
    """How one tensor's analytic gradient compares with finite differences."""

    name: str
    max_abs_error: float
    max_rel_error: float
    worst_index: tuple[int, ...]
    analytic: float
    numeric: float
    ok: bool
    checked: int = -1  # how many elements were compared


@dataclass
class GradcheckReport:
    """Per-tensor results of :func:`gradcheck`; ``ok`` when every tensor passed."""

    tensors: list[TensorReport] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(t.ok for t in self.tensors)

    def __str__(self) -> str:
        rows = [
            f"{'ok  ' if t.ok else 'FAIL'} {t.name}: max abs err {t.max_abs_error:.3g},"
            f" max rel err {t.max_rel_error:.3g} at {list(t.worst_index)}"
            f" (analytic {t.analytic:.6g}, numeric {t.numeric:.6g})"
            for t in self.tensors
        ]
        return "\n".join(rows)


def as_float64(graph: GraphIR) -> GraphIR:
    """The same graph with every float32 type (and dtype attribute) made float64."""

    def t64(t):
        return make_type("float64", t.shape) if t.dtype == "float32" else t

    def node64(n: Node) -> Node:
        attrs = n.attrs
        if attrs.get("dtype") == "float32":  # cast's target, full's dtype
            attrs = {**attrs, "dtype": "float64"}
        outs = tuple(Var.model_construct(name=o.name, type=t64(o.type)) for o in n.outputs)
        bodies = {k: as_float64(b) for k, b in n.bodies.items()}
        return n.model_copy(update={"outputs": outs, "attrs": attrs, "bodies": bodies})

    return graph.replace(
        inputs=tuple(Var.model_construct(name=v.name, type=t64(v.type)) for v in graph.inputs),
        params=tuple(
            Param.model_construct(name=p.name, type=t64(p.type), init=p.init) for p in graph.params
        ),
        consts=tuple(
            Const.model_construct(name=c.name, type=t64(c.type), data=c.data) for c in graph.consts
        ),
        nodes=tuple(node64(n) for n in graph.nodes),
    )


def gradcheck(
    graph: Graph | GraphIR,
    feeds: Mapping[str, Any] | None = None,
    params: Mapping[str, np.ndarray] | None = None,
    *,
    outputs: Sequence[Value | str] | None = None,
    wrt: Sequence[Value | str] | None = None,
    eps: float = 1e-6,
    atol: float = 1e-6,
    rtol: float = 1e-5,
    seed: int = 0,
    raise_on_failure: bool = True,
    max_elements: int | None = None,
) -> GradcheckReport:
    """Compare the generated backward with central finite differences, in float64.

    The outputs are projected on random directions ``r`` (a scalar ``sum(r * out)``), its
    gradient taken by the compiled backward and by ``(f(x + eps) - f(x - eps)) / 2 eps``
    for every element of every ``wrt`` tensor (default: all float parameters). An element
    passes when ``|analytic - numeric| <= atol + rtol * |numeric|``. ``max_elements``
    limits the cost: at most that many elements per tensor, drawn at random (from
    ``seed``; half among those with a nonzero analytic gradient, so that a sparse gradient
    such as an embedding's is not checked on zeros only), are perturbed and compared;
    default all.

    Raises
    ------
    GradientCheckError
        When an element fails and ``raise_on_failure`` (the report is in the message).

    Examples
    --------
    >>> import numpy as np, rgraph as rg
    >>> g = rg.Graph(); x = g.input("x", (3,)); _ = g.output(g.tanh(x) * x, name="y")
    >>> rg.gradcheck(g, {"x": np.array([0.1, -0.5, 2.0])}, wrt=["x"]).ok
    True
    """
    if max_elements is not None and max_elements < 1:
        raise ValueError(f"max_elements must be at least 1, got {max_elements}")
    ir = as_float64(graph.ir if isinstance(graph, Graph) else graph)
    out_names = [v.name if isinstance(v, Value) else v for v in outputs or ir.outputs]
    types = ir.types()
    out_names = [n for n in out_names if types[n].is_float]
    targets = (
        [v.name if isinstance(v, Value) else v for v in wrt]
        if wrt is not None
        else [p.name for p in ir.params if p.type.is_float]
    )
    feeds64 = {k: _to64(v) for k, v in (feeds or {}).items()}
    params64 = {k: _to64(v) for k, v in (params or {}).items()}

    forward = compile(ir, out_names, optimize=False)
    first = forward.run(feeds64, params64).outputs
    rng = np.random.default_rng(seed)
    directions = {n: rng.standard_normal(first[n].shape) for n in out_names}
    backward = compile(ir, out_names, wrt=targets, cotangents=out_names)
    analytic = backward.run(feeds64, params64, cotangents=directions).grads

    def objective() -> float:
        outs = forward.run(feeds64, params64).outputs
        return float(sum(np.sum(directions[n] * outs[n]) for n in out_names))

    report = GradcheckReport()
    pick = np.random.default_rng([seed, 1])  # which elements, apart from the directions
    for name in targets:
        store = params64 if name in params64 else feeds64
        x = store[name]
        numeric = np.zeros_like(x)
        chosen = None
        indices: Any = np.ndindex(x.shape)
        if max_elements is not None and x.size > max_elements:
            flat = _pick(pick, analytic[name], max_elements)
            indices = zip(*np.unravel_index(flat, x.shape))
            chosen = np.zeros(x.shape, bool)
            chosen.flat[flat] = True
        for i in indices:
            saved = x[i]
            x[i] = saved + eps
            up = objective()
            x[i] = saved - eps
            down = objective()
            x[i] = saved
            numeric[i] = (up - down) / (2 * eps)
        report.tensors.append(_compare(name, analytic[name], numeric, atol, rtol, chosen))
    if raise_on_failure and not report.ok:
        raise GradientCheckError(f"gradient check failed:\n{report}")
    return report


def _pick(rng: np.random.Generator, grad: np.ndarray, n: int) -> np.ndarray:
    """``n`` distinct flat indices: up to half where ``grad`` is nonzero, the rest uniform."""
    nonzero = np.flatnonzero(grad)
    first = rng.choice(nonzero, size=min(n // 2, nonzero.size), replace=False)
    rest = np.setdiff1d(np.arange(grad.size), first, assume_unique=True)
    second = rng.choice(rest, size=n - first.size, replace=False)
    return np.sort(np.concatenate([first, second]))


def _to64(value: Any) -> np.ndarray:
    arr = np.array(value)  # a copy: the check perturbs it in place
    return arr.astype(np.float64) if arr.dtype.kind == "f" else arr


def _compare(
    name: str,
    analytic: np.ndarray,
    numeric: np.ndarray,
    atol: float,
    rtol: float,
    chosen: np.ndarray | None = None,
):
    err = np.abs(analytic - numeric)
    if err.size == 0:
        return TensorReport(name, 0.0, 0.0, (), 0.0, 0.0, True, 0)
    excess = err - (atol + rtol * np.abs(numeric))
    if chosen is not None:  # only the perturbed elements count
        err = np.where(chosen, err, 0.0)
        excess = np.where(chosen, excess, -np.inf)
    worst = np.unravel_index(int(np.argmax(excess)), err.shape)
    rel = err / np.maximum(np.abs(numeric), 1e-12)
    return TensorReport(
        name=name,
        max_abs_error=float(err.max()),
        max_rel_error=float(rel.max()),
        worst_index=tuple(int(i) for i in worst),
        analytic=float(analytic[worst]),
        numeric=float(numeric[worst]),
        ok=bool(np.all(excess <= 0)),
        checked=int(err.size if chosen is None else np.count_nonzero(chosen)),
    )
