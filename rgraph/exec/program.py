"""``compile``: the pass pipeline from a graph to a runnable :class:`Program`."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rgraph.builder import Graph, Value
from rgraph.errors import FeedError, GraphError
from rgraph.exec.interpreter import Interpreter
from rgraph.exec.packing import pack
from rgraph.ir.graph import GraphIR
from rgraph.ir.passes import (
    autodiff,
    contract,
    cse,
    fold_scales,
    fold_transposes,
    forward_identities,
    fuse_losses,
    hoist,
    merge_activations,
    merge_matmuls,
    merge_pieces,
    pack_loop_io,
    prune,
    schedule,
    sink,
    tile,
)
from rgraph.ir.passes import specialize as specialize_pass
from rgraph.ir.passes.autodiff import cotangent_name, grad_name
from rgraph.ir.types import gc_paused
from rgraph.ir.verify import verify


@dataclass
class Result:
    """What one run returns: outputs and gradients, by name."""

    outputs: dict[str, np.ndarray]
    grads: dict[str, np.ndarray] = field(default_factory=dict)

    def __getitem__(self, name: str) -> np.ndarray:
        return self.outputs[name]


class Program:
    """A compiled graph: the final IR, every pass's result, and an interpreter.

    ``stages`` maps each pass name to the IR it produced, in pipeline order, so any stage
    can be printed; ``ir`` is the last one.
    """

    def __init__(
        self,
        stages: dict[str, GraphIR],
        outputs: Sequence[str],
        wrt: Sequence[str] = (),
        cotangents: Sequence[str] = (),
        check_finite: bool = False,
        specialized: Callable[[], Program] | None = None,
        filled: Mapping[str, float] | None = None,
    ):
        self.stages = stages
        self.ir = list(stages.values())[-1]
        self.outputs = tuple(outputs)
        self.wrt = tuple(wrt)
        self._grad_of = [grad_name(w) for w in self.wrt]
        self._grad_name = dict(zip(self.wrt, self._grad_of))
        self._last_grads_into: tuple[tuple[str, ...], tuple[str, ...]] = ((), ())
        self.cotangents = tuple(cotangents)
        self.interpreter = Interpreter(self.ir, check_finite=check_finite)
        # compile(specialize=...): the program for feeds filled with these values, made
        # at the first run that has them.
        self.filled = dict(filled or {})
        self._make_specialized = specialized
        self._specialized: Program | None = None

    @property
    def specialized(self) -> Program | None:
        """The program compiled for runs whose ``filled`` inputs hold their values
        everywhere (see :func:`compile`'s ``specialize``), made on first use."""
        if self._specialized is None and self._make_specialized is not None:
            self._specialized = self._make_specialized()
        return self._specialized

    def _for(self, feeds: Mapping[str, Any]) -> Program:
        """The program to run these feeds: the specialised one if they hold its values."""
        for name, value in self.filled.items():
            arr = feeds.get(name)
            if type(arr) is not np.ndarray or arr.dtype.kind != "f" or not (arr == value).all():
                return self
        return self.specialized or self

    def _outputs_of(self, params: tuple[str, ...]) -> tuple[str, ...]:
        """The names of the gradients of ``params`` (a caller passes the same, run after
        run: the answer for the last is kept)."""
        last, names = self._last_grads_into
        if params == last:
            return names
        unknown = [w for w in params if w not in self._grad_name]
        if unknown:
            raise FeedError(
                f"grads_into names {sorted(unknown)}, which are not parameters this"
                f" program differentiates (wrt: {', '.join(self.wrt) or 'none'})"
            )
        names = tuple(self._grad_name[w] for w in params)
        self._last_grads_into = (params, names)
        return names

    def __str__(self) -> str:
        return str(self.ir)

    def pack(self, params: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A copy of the parameter store ``params`` laid out for this program: one buffer
        per dtype, the parameters it concatenates (stacked gate weights) adjacent in it.

        Runs then read those concatenations as views instead of copying them, and an
        optimiser updates adjacent parameters as one vector. Values, names, shapes and
        dtypes are unchanged; results are bit for bit the same.

        >>> import numpy as np, rgraph as rg
        >>> g = rg.Graph(); x = g.input("x", (1, 2))
        >>> a, b = g.param("a", (2, 2)), g.param("b", (1, 2))
        >>> _ = g.output((x @ g.concat([a, b], axis=0).T).sum(), name="y")
        >>> store = rg.compile(g, ["y"]).pack(rg.init_params(g))
        >>> store["a"].base is store["b"].base  # one buffer, "b" right after "a"
        True
        """
        return pack(params, self.ir)

    def run(
        self,
        feeds: Mapping[str, Any] | None = None,
        params: Mapping[str, np.ndarray] | None = None,
        cotangents: Mapping[str, Any] | None = None,
        *,
        grads_into: Mapping[str, np.ndarray] | None = None,
    ) -> Result:
        """Run forward (and backward, if compiled with gradients).

        ``cotangents`` gives, for each output compiled as a cotangent output, the
        gradient flowing into it (RecurrentJS's ``h.dw``).

        ``grads_into`` gives arrays for some gradients, by parameter name (an optimiser's
        :meth:`~rgraph.exec.optim.Optimizer.gradient_buffers`): the result's gradients
        are these arrays, written in place by the nodes that make them where they can.
        Each must be a writeable C-contiguous array of its gradient's type, sharing no
        memory with the feeds, the parameters or the others.
        """
        feeds = dict(feeds or {})
        given = dict(cotangents or {})
        for name in self.cotangents:
            if name not in given:
                raise FeedError(f"missing cotangent for output '{name}'")
            feeds[cotangent_name(name)] = given.pop(name)
        if given:
            raise FeedError(f"{sorted(given)} are not outputs compiled with cotangents")
        into = None
        if grads_into:
            into = dict(zip(self._outputs_of(tuple(grads_into)), grads_into.values()))
        values = self._for(feeds).interpreter.run(feeds, params, into=into)
        get = values.__getitem__
        return Result(
            outputs=dict(zip(self.outputs, map(get, self.outputs))),
            grads=dict(zip(self.wrt, map(get, self._grad_of))),
        )


def _names(values: Sequence[Value | str] | Value | str | None) -> list[str]:
    if values is None:
        return []
    if isinstance(values, (Value, str)):
        values = [values]
    return [v.name if isinstance(v, Value) else v for v in values]


def compile(
    graph: Graph | GraphIR,
    outputs: Sequence[Value | str] | None = None,
    *,
    loss: Value | str | None = None,
    wrt: Sequence[Value | str] | None = None,
    cotangents: Sequence[Value | str] | None = None,
    optimize: bool = True,
    check_finite: bool = False,
    specialize: Mapping[str, float] | None = None,
) -> Program:
    """Compile a graph into a :class:`Program`: verify, schedule, prune, differentiate, CSE.

    Parameters
    ----------
    graph
        A builder :class:`~rgraph.Graph` or IR given as data (which is verified first).
    outputs
        Values to return; default the graph's outputs. ``loss`` is always returned.
    loss
        A scalar to differentiate (its cotangent seed is 1).
    wrt
        What to differentiate with respect to; default every float parameter.
    cotangents
        Outputs whose cotangents the caller gives at run time (instead of, or besides, a
        loss), e.g. RecurrentJS's ``h.dw[0] = 1``.
    optimize
        Merge products that share an operand (``merge_matmuls``), move work out of
        loops, before them (``hoist``) and after them (``sink``), merge common
        subexpressions (``cse``) and sum per-step products as one (``contract``).
    check_finite
        Debug mode: stop with :class:`~rgraph.errors.NonFiniteError` at the first node,
        forward or backward, that produces a NaN or an infinity (slower). Work is then
        not moved out of loops, so a value made in a loop is reported with its step.
    specialize
        Input name -> value: runs whose feed of each of these float inputs holds that
        value everywhere (a padding mask of all ones) use a second program, compiled at
        the first such run, with the values folded in (``specialize`` pass): ``m * x``
        is ``x`` and ``(1 - m) * y`` vanishes, in loops too. The results are those of
        the general program, but for the sign of a zero and non-finite values that
        would have been multiplied by zero. Ignored in debug mode.

    Examples
    --------
    >>> import numpy as np, rgraph as rg
    >>> g = rg.Graph(); x = g.input("x", (3,)); W = g.param("W", (3,))
    >>> loss = g.sum(W * x)
    >>> prog = rg.compile(g, loss=loss)
    >>> prog.run({"x": np.arange(3.0)}, {"W": np.ones(3)}).grads["W"]
    array([0., 1., 2.])
    """
    with gc_paused():
        program = _compile(graph, outputs, loss, wrt, cotangents, optimize, check_finite)
    if not specialize or check_finite:
        return program
    unknown = sorted(set(specialize) - {v.name for v in program.stages["schedule"].inputs})
    if unknown:
        raise GraphError(f"specialize names {unknown}, which are not inputs of the graph")
    values = {name: float(v) for name, v in specialize.items()}

    def make() -> Program:
        with gc_paused():
            general = program.stages["schedule"]
            filled = specialize_pass(general, values)
            made = _compile(filled, outputs, loss, wrt, cotangents, optimize, check_finite)
        made.stages = {"specialize": filled, **made.stages}
        return made

    program.filled, program._make_specialized = values, make
    return program


def _compile(graph, outputs, loss, wrt, cotangents, optimize, check_finite) -> Program:
    ir = graph.ir if isinstance(graph, Graph) else verify(graph)
    names = _names(outputs) or list(ir.outputs)
    loss_name = _names(loss)[0] if loss is not None else None
    cot = _names(cotangents)
    if loss_name is not None and loss_name not in names:
        names.append(loss_name)
    if not names:
        raise GraphError(f"graph '{ir.name}' has no outputs: mark some with g.output(...)")
    stages: dict[str, GraphIR] = {}
    stages["schedule"] = ir = schedule(ir)
    stages["prune"] = ir = prune(ir, names)
    if optimize and not check_finite:  # debug mode reports values where the user made them
        stages["merge_matmuls"] = ir = merge_matmuls(ir)
        stages["hoist"] = ir = hoist(ir)
        stages["merge_hoisted"] = ir = merge_matmuls(ir)
    targets: list[str] = []
    if loss_name is not None or cot:
        targets = _names(wrt) if wrt is not None else [p.name for p in ir.params if p.type.is_float]
        stages["autodiff"] = ir = autodiff(ir, targets, loss_name, cot)
    if optimize:
        stages["forward_identities"] = ir = forward_identities(ir)
        if not check_finite:
            stages["sink"] = ir = sink(ir)
            stages["contract"] = ir = contract(ir)
        stages["cse"] = ir = cse(ir)
        if not check_finite:
            for suffix in ("", ".2", ".3"):  # each can expose work for the other
                before = ir
                stages["merge_pieces" + suffix] = ir = merge_pieces(ir)
                stages["merge_activations" + suffix] = ir = merge_activations(ir)
                stages["pack_loop_io" + suffix] = ir = pack_loop_io(ir)
                if ir is before:
                    break
            before = ir
            stages["hoist_packed"] = ir = hoist(ir)
            if ir is not before:  # what hoist split into xs again goes in whole
                stages["pack_hoisted"] = ir = pack_loop_io(ir)
                stages["merge_hoisted_pieces"] = ir = merge_pieces(ir)
            stages["fold_transposes"] = ir = fold_transposes(ir)
            stages["fold_scales"] = ir = fold_scales(ir)
            stages["fuse_losses"] = ir = fuse_losses(ir)
            stages["tile"] = ir = tile(ir)
        stages["prune_after_cse"] = ir = prune(ir)
    return Program(stages, names, targets, cot, check_finite)
