"""The numpy interpreter: a scheduled graph prepared as a flat list of numpy calls.

Values live in numbered slots; each step reads its input slots, writes its output slots
and clears the slots whose last use it was, so memory is freed as soon as possible. The
prepared steps depend on the sizes of symbolic dims, so they are cached per binding.
"""

from __future__ import annotations

import functools
import operator
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from rgraph.errors import ExecutionError, FeedError, NonFiniteError
from rgraph.exec.arena import ThreadArenas, small
from rgraph.exec.packing import tiled
from rgraph.exec.placement import Placement, plan
from rgraph.exec.stacks import references
from rgraph.ir import dims
from rgraph.ir.graph import GraphIR, Node
from rgraph.ir.op import KernelContext, get_op
from rgraph.ir.types import TensorType


@dataclass(frozen=True)
class Step:
    kernel: Any
    inputs: tuple[int, ...]
    outputs: tuple[int, ...]
    free: tuple[int, ...]
    node: int


class Interpreter:
    """Runs one scheduled :class:`GraphIR` on numpy arrays.

    >>> import numpy as np, rgraph as rg
    >>> g = rg.Graph(); x = g.input("x", (2,)); _ = g.output(x.tanh(), name="y")
    >>> rg.Interpreter(g.ir).run({"x": np.zeros(2)})["y"]
    array([0., 0.])
    """

    def __init__(
        self,
        graph: GraphIR,
        *,
        check_finite: bool = False,
        loop_body: bool = False,
        memory: Any = None,
    ):
        self.graph = graph
        # Debug mode: stop at the first node that produces a NaN or an infinity.
        self.check_finite = check_finite
        # Large values are made in memory kept across runs (a loop body's own values are
        # planned by its loop: see _out_plan); ``memory`` gives it: the arenas of the
        # outermost interpreter, which trims them after each run.
        self.loop_body = loop_body
        self.arenas = None if memory is not None else ThreadArenas()
        self.memory = memory or self.arenas
        self._types = names = graph.types()
        self.slot: dict[str, int] = dict(zip(names, range(len(names))))
        self.consts = [
            (self.slot[c.name], np.array(c.data, dtype=c.type.dtype).reshape(c.type.shape))
            for c in graph.consts
        ]
        self._last_use = self._plan_frees()
        self._joined, self._joins = self._plan_joins()
        self._param_joins = self._plan_param_joins()
        used = self._read | set(graph.outputs)  # read by a node, or an output
        # Inputs whose dims are plain names bind them before product dims are checked.
        self.inputs = sorted(
            (v for v in graph.inputs if v.name in used),
            key=lambda v: any(isinstance(d, str) and "*" in d for d in v.type.shape),
        )
        self.params = [p for p in graph.params if p.name in used]
        # A parameter store passes the same kind of arrays run after run: a parameter
        # of concrete shape that is an array of its type needs no further check.
        self._param_kinds = [
            (p, self.slot[p.name], p.type.np_dtype, _concrete(p.type.shape)) for p in self.params
        ]
        self._output_names = list(graph.outputs)
        self._output_at = [self.slot[name] for name in graph.outputs]
        # Feeds already checked: input shapes -> the dims they bound (see _known_binding).
        self._feed_kinds = [(v.name, v.type.np_dtype) for v in graph.inputs]
        self._params_bind_nothing = all(shape is not None for *_, shape in self._param_kinds)
        self._bindings: dict[tuple, dict[str, int]] = {}
        self._prepared: dict[tuple, list[Step]] = {}
        self._quiet: set[tuple] = set()  # bindings whose loop is quiet (see _overflows)
        # Kernels that do not depend on dim sizes, and nested interpreters, are kept
        # across bindings (a new sequence length must not mean preparing all again).
        self._kernels: dict[int, Any] = {}
        self._cache: dict = {}
        self._flat: FlatSchedule | None = None
        self._loop: LoopSchedule | None = None
        # A loop's small step buffers, per thread, by their shapes and dtypes: those of
        # every sequence length alike (see loop).
        self._buffers: dict[tuple, threading.local] = {}
        self._runs: dict[int, tuple[list[Step], Any]] = {}  # id of steps -> (steps, bound)
        # Where runs given arrays for outputs write them (see run's ``into``), by binding.
        self._placements: dict[tuple, list[Placement]] = {}
        self._recent: Placement | None = None
        self._input_whats = [f"input '{v.name}'" for v in self.inputs]
        self._param_whats = [f"parameter '{p.name}'" for p in self.params]
        self._param_slots = [slot for _, slot, _, _ in self._param_kinds]
        self._param_names = [p.name for p in self.params]
        self._param_types = (np.ndarray,) * len(self.params)
        self._param_dtypes = tuple(dtype for _, _, dtype, _ in self._param_kinds)
        self._param_shapes = tuple(shape for *_, shape in self._param_kinds)

    def _plan_frees(self) -> list[tuple[int, ...]]:
        """The slots each step frees: those of the values it is the last to use, outputs
        kept. One sweep over the nodes, by name; also notes the inputs and params read."""
        nodes, outputs, slot = self.graph.nodes, self.graph.outputs, self.slot
        for name in outputs:
            slot[name]  # an undefined output: KeyError, as before the nodes
        last: dict[str, int] = {}
        setdefault = last.setdefault
        for i, node in enumerate(nodes):
            for name in node.inputs:
                last[name] = i
            outs = node.outputs
            if len(outs) == 1:
                setdefault(outs[0].name, i)
            else:
                for out in outs:
                    setdefault(out.name, i)
        # Single assignment: an input or a param is among these names iff a node reads it.
        self._read = {
            v.name for g in (self.graph.inputs, self.graph.params) for v in g
        } & last.keys()
        keep = set(outputs)
        frees: list[tuple[int, ...]] = [()] * len(nodes)
        for name, i in last.items():  # in the order of first appearance, as slots
            if name not in keep:
                frees[i] += (slot[name],)
        return frees

    def _steps(self, binding: Mapping[str, int]) -> list[Step]:
        key = tuple(sorted(binding.items()))
        steps = self._prepared.get(key)
        if steps is None:
            ctx = KernelContext(dict(binding), self.check_finite, self._cache, self.memory)
            if self._overflows(ctx):  # (a loop then runs with numpy's overflow warnings off)
                ctx = replace(ctx, quiet_overflow=True)
                self._quiet.add(key)
            steps = []
            # Values that depend on nothing but dim sizes, computed now (see _computed);
            # not in loop bodies (their values are planned by the loop) nor in debug mode
            # (which checks each node as it runs).
            fixing = not (self.loop_body or self.check_finite)
            known = {c.name: arr for c, (_, arr) in zip(self.graph.consts, self.consts)}
            for i, node in enumerate(self.graph.nodes):
                op = get_op(node.op)
                try:
                    kernel = self._kernels.get(i)
                    if kernel is None:
                        kernel = op.kernel(op.node_attrs(node), self._context(ctx, op, i))
                        if not op.uses_dims:
                            self._kernels[i] = kernel
                    if (
                        fixing
                        and not (node.bodies or node.op == "concat" or i in self._joined)
                        and (not op.reads_values or all(map(known.__contains__, node.inputs)))
                    ):
                        kernel = self._computed(kernel, node, known, binding)
                    top = not self.loop_body and i not in self._joined  # (joined: see below)
                    if i in self._param_joins:
                        kernel = ParamJoin(self._param_joins[i])
                    elif top and op.writes_out and len(node.outputs) == 1:
                        kernel = self._in_arena(kernel, i, binding)
                    step = Step(
                        kernel=kernel,
                        inputs=tuple(self.slot[n] for n in node.inputs),
                        outputs=tuple(self.slot[o.name] for o in node.outputs),
                        free=self._last_use[i],
                        node=i,
                    )
                    if i in self._joins:
                        steps.append(self._allocation(self._joins[i], binding))
                    if i in self._joined or i in self._joins.values():
                        step = self._in_place(step, binding)
                except KeyError as e:
                    raise ExecutionError(
                        f"{_describe(node)} needs dim {e} which no input binds"
                        f" (bound: {dict(binding) or 'none'})"
                    ) from None
                steps.append(step)
            self._prepared[key] = steps
        return steps

    def _overflows(self, ctx: KernelContext) -> bool:
        """Whether a loop over this body, in ``ctx``'s binding, runs with numpy's overflow
        warnings off: some node may overflow harmlessly (``Op.overflows``)."""
        return self.loop_body and any(
            op.overflows(op.node_attrs(node), self._context(ctx, op, i))
            for i, node in enumerate(self.graph.nodes)
            for op in (get_op(node.op),)
        )

    def _placed_steps(self, steps: list[Step], placement: Placement) -> list[Step]:
        """``steps`` (of ``placement``'s binding) with the nodes it roots writing their
        values where it says, and the splits of what they wrote giving the caller's arrays
        (views of the same memory): made once per placement."""
        if placement.steps is None:
            ctx = KernelContext(placement.binding, self.check_finite, self._cache, self.memory)
            roots, pieces = placement.roots, placement.pieces
            placement.steps = [
                replace(st, kernel=self._writer(st.node, ctx, roots[st.node]))
                if st.node in roots
                else replace(st, kernel=functools.partial(_given, pieces[st.node]))
                if st.node in pieces
                else st
                for st in steps
            ]
        return placement.steps

    def _writer(self, i: int, ctx: KernelContext, out: np.ndarray) -> Any:
        """Node ``i``'s kernel writing its value into ``out``."""
        kernel = self._kernels.get(i)
        if kernel is None:  # (a kernel that depends on dim sizes)
            node = self.graph.nodes[i]
            op = get_op(node.op)
            kernel = op.kernel(op.node_attrs(node), self._context(ctx, op, i))
        return functools.partial(kernel, out=out)

    def _writes_in_place(self, i: int) -> bool:
        """Whether node ``i`` can write its value into an array a caller gives (``out=``):
        a top-level node of one output whose op takes ``out=``, and that no concat or
        parameter view plans otherwise."""
        node = self.graph.nodes[i]
        return (
            not self.loop_body
            and len(node.outputs) == 1
            and not node.bodies
            and get_op(node.op).writes_out
            and i not in self._joined
            and i not in self._param_joins
            and i not in self._joins.values()
        )

    def _placement(self, into: Mapping[str, Any], binding: Mapping[str, int]) -> Placement:
        """Where a run in ``binding`` writes the outputs ``into`` gives arrays for: planned
        once per binding and set of arrays (a caller passes the same arrays run after run)."""
        recent = self._recent  # (a caller passes the same arrays, run after run)
        if recent is not None and recent.binding == binding and recent.matches(into):
            return recent
        key = tuple(sorted(binding.items()))
        known = self._placements.setdefault(key, [])
        for placement in known:
            if placement.matches(into):
                self._recent = placement
                return placement
        placement = plan(self.graph, binding, into, self.slot, self._writes_in_place)
        placement.others = [name for name in self._output_names if name not in into]
        if len(known) >= 4:  # (a bounded memory: callers keep one set, or a few)
            gone = known.pop(0)
            self._runs.pop(id(gone.steps), None)  # (its bound schedule goes with it)
        known.append(placement)
        self._recent = placement
        return placement

    def _computed(
        self, kernel: Any, node: Node, known: dict[str, Any], binding: Mapping[str, int]
    ) -> Any:
        """A kernel giving ``node``'s value, which depends on nothing but dim sizes: its
        op reads no values (``full``, ``full_like``, ``numel``), or it reads only values
        in ``known`` (consts, and those computed so far). Computed now, once per binding,
        as read-only arrays (added to ``known``). ``kernel`` itself if an output is large
        (kept per binding, it would hold its memory) or computing it fails (the run then
        says where)."""
        types = [o.type for o in node.outputs]
        shapes = [tuple(dims.evaluate(d, binding) for d in t.shape) for t in types]
        if not all(small(shape, t.np_dtype) for shape, t in zip(shapes, types)):
            return kernel
        if get_op(node.op).reads_values:
            args = [known[name] for name in node.inputs]
        else:  # only their types count
            args = [
                np.empty(tuple(dims.evaluate(d, binding) for d in t.shape), t.np_dtype)
                for t in (self._types[name] for name in node.inputs)
            ]
        try:
            result = kernel(*args)
        except Exception:  # (left to the run, which says where)
            return kernel
        values = [result] if len(node.outputs) == 1 else list(result)
        for var, value in zip(node.outputs, values):
            if isinstance(value, np.ndarray):
                value.flags.writeable = False  # (run() copies an output that is one)
            known[var.name] = value
        if node.op == "identity":  # (inlined: no call to save)
            return kernel
        return (lambda *args: result) if len(values) == 1 else (lambda *args: tuple(values))

    def _context(self, ctx: KernelContext, op: Any, i: int) -> KernelContext:
        """``ctx`` for node ``i``'s kernel: with its inputs' types if the op specialises on
        them, and whether its ``out=`` is always C-contiguous (not so for a value written
        into a concat's array, see :meth:`_plan_joins`)."""
        if not op.specializes:
            return ctx
        return replace(
            ctx,
            inputs=tuple(self._types[name] for name in self.graph.nodes[i].inputs),
            contiguous_out=i not in self._joined,
        )

    def _plan_joins(self) -> tuple[dict[int, int], dict[int, int]]:
        """Concats whose inputs are written straight into the concat's array: node
        index -> concat index for each such input's maker, and the index of the first
        maker -> its concat (the array is allocated before it runs).

        A maker qualifies when it writes ``out=`` and its value is read by nothing but
        the concat (not even as an output): the value then lives only in the array, and
        the concat copies only its other inputs. Top-level graphs only (a loop body's
        values are planned by its loop), and not in debug mode, which checks every value
        (the array is unset until its pieces are written).
        """
        if self.loop_body or self.check_finite or "concat" not in self.graph.ops():
            return {}, {}
        nodes = self.graph.nodes
        uses = self.graph.use_counts()
        maker = {o.name: i for i, n in enumerate(nodes) for o in n.outputs}
        joined: dict[int, int] = {}
        first: dict[int, int] = {}
        for c, node in enumerate(nodes):
            if node.op != "concat":
                continue
            for name in node.inputs:
                i = maker.get(name)
                if i is None or uses.get(name) != 1:
                    continue
                made = nodes[i]  # (not a concat: it may be filled in place itself)
                if made.op == "concat" or made.bodies or len(made.outputs) != 1:
                    continue
                if get_op(made.op).writes_out:
                    joined[i] = c
                    first[c] = min(first.get(c, i), i)  # the array exists before any runs
        return joined, {i: c for c, i in first.items()}

    def _plan_param_joins(self) -> dict[int, int]:
        """Top-level concats of parameters only: node index -> axis. They run as
        :class:`ParamJoin`, a read-only view of a packed store (:meth:`run` copies an
        output that is one, or a view of one)."""
        if self.loop_body or "concat" not in self.graph.ops():
            return {}
        params = {p.name for p in self.graph.params}
        concat = get_op("concat")
        return {
            i: concat.node_attrs(node).axis
            for i, node in enumerate(self.graph.nodes)
            if node.op == "concat" and all(name in params for name in node.inputs)
        }

    def _pieces(self, c: int, binding: Mapping[str, int]) -> tuple[tuple, list[tuple]]:
        """The shape of concat ``c``'s array and the index of each input in it."""
        node, types = self.graph.nodes[c], self.graph.types()
        out = node.outputs[0].type
        axis = get_op("concat").node_attrs(node).axis % out.rank
        index, start = [], 0
        for name in node.inputs:
            size = dims.evaluate(types[name].shape[axis], binding)
            index.append((*(slice(None),) * axis, slice(start, start + size)))
            start += size
        return tuple(dims.evaluate(d, binding) for d in out.shape), index

    def _allocation(self, c: int, binding: Mapping[str, int]) -> Step:
        """The step making concat ``c``'s array, into the concat's own slot."""
        shape, _ = self._pieces(c, binding)
        make = self.memory.maker(shape, self.graph.nodes[c].outputs[0].type.np_dtype, (id(self), c))
        slot = self.slot[self.graph.nodes[c].outputs[0].name]
        return Step(kernel=make, inputs=(), outputs=(slot,), free=(), node=c)

    def _in_place(self, step: Step, binding: Mapping[str, int]) -> Step:
        """A maker writing into its slice of the concat's array, or the concat copying
        in only its other inputs."""
        node = self.graph.nodes[step.node]
        c = self._joined.get(step.node)
        if c is not None:  # a maker: out= its slice; its own value is read no more
            concat = self.graph.nodes[c]
            _, index = self._pieces(c, binding)
            where = index[concat.inputs.index(node.outputs[0].name)]
            kernel = step.kernel
            array = self.slot[concat.outputs[0].name]
            return Step(
                kernel=lambda *args: kernel(*args[:-1], out=args[-1][where]),
                inputs=(*step.inputs, array),
                outputs=step.outputs,
                free=(*step.free, *step.outputs),
                node=step.node,
            )
        _, index = self._pieces(step.node, binding)
        made = {
            self.slot[self.graph.nodes[i].outputs[0].name]
            for i, joined in self._joined.items()
            if joined == step.node
        }
        rest = [(s, where) for s, where in zip(step.inputs, index) if s not in made]
        wheres = [where for _, where in rest]

        def fill(*args):
            array = args[-1]
            for value, where in zip(args, wheres):
                array[where] = value
            return array

        return Step(
            kernel=fill,
            inputs=(*(s for s, _ in rest), *step.outputs),
            outputs=step.outputs,
            free=tuple(f for f in step.free if f not in made),
            node=step.node,
        )

    def _in_arena(self, kernel: Any, i: int, binding: Mapping[str, int]) -> Any:
        """Node ``i``'s ``kernel`` writing its value into the arena, if the value is large."""
        t = self.graph.nodes[i].outputs[0].type
        shape = tuple(dims.evaluate(d, binding) for d in t.shape)
        if small(shape, t.np_dtype):
            return kernel
        make = self.memory.maker(shape, t.np_dtype, (id(self), i))
        return lambda *args: kernel(*args, out=make())

    def run(
        self,
        feeds: Mapping[str, Any] | None = None,
        params: Mapping[str, np.ndarray] | None = None,
        *,
        into: Mapping[str, np.ndarray] | None = None,
    ) -> dict[str, np.ndarray]:
        """Outputs by name, from feeds for the graph's inputs and a parameter store.

        ``into`` maps outputs to arrays of their type (writeable, C-contiguous, sharing no
        memory with the feeds, the parameters or each other) that receive them: the run
        returns these arrays, written by the nodes that make the values where it can (see
        :mod:`rgraph.exec.placement`), else copied into.
        """
        given = feeds or {}
        feeds = dict(given)
        params = params or {}
        values: list[Any] = [None] * len(self.slot)
        bound_by: dict[str, str] = {}
        known = self._known_binding(feeds)
        binding = {} if known is None else dict(known)  # (the run may add to it)
        for v in self.inputs:
            if known is not None:  # feeds of a kind checked before
                values[self.slot[v.name]] = feeds.pop(v.name)
                continue
            if v.name not in feeds:
                declared = ", ".join(f"{x.name}: {x.type}" for x in self.inputs)
                raise FeedError(f"missing feed for input '{v.name}' (inputs: {declared})")
            values[self.slot[v.name]] = _check(
                feeds.pop(v.name), v.type, "input", v.name, binding, bound_by
            )
        if self.check_finite:
            for v in self.inputs:
                arr = values[self.slot[v.name]]
                if v.type.is_float and not np.all(np.isfinite(arr)):
                    raise NonFiniteError(f"input '{v.name}' holds {_nonfinite(arr)}")
        arrays = list(map(params.get, self._param_names))
        if (  # a store of arrays of the parameters' kinds, as is usual: checked in C loops
            self._params_bind_nothing
            and not self.check_finite
            and tuple(map(type, arrays)) == self._param_types
            and tuple(map(_DTYPE, arrays)) == self._param_dtypes
            and tuple(map(_SHAPE, arrays)) == self._param_shapes
        ):
            any(map(values.__setitem__, self._param_slots, arrays))
        else:
            for (p, slot, dtype, shape), arr in zip(self._param_kinds, arrays):
                if (
                    type(arr) is not np.ndarray
                    or (arr.dtype is not dtype and arr.dtype != dtype)
                    or arr.shape != shape
                ):
                    if p.name not in params:
                        raise FeedError(f"the parameter store has no '{p.name}' ({p.type})")
                    arr = _check(arr, p.type, "param", p.name, binding, bound_by, strict=True)
                values[slot] = arr
                if self.check_finite and p.type.is_float and not np.all(np.isfinite(arr)):
                    raise NonFiniteError(f"param '{p.name}' holds {_nonfinite(arr)}")
        if known is None:
            for v in self.graph.inputs:  # fed though unused: still binds its dims
                if v.name in feeds:
                    _check(feeds.pop(v.name), v.type, "input", v.name, binding, bound_by)
            unknown = set(feeds)
            if unknown:
                raise FeedError(
                    f"feeds {sorted(unknown)} are not inputs of graph '{self.graph.name}'"
                    f" (inputs: {', '.join(v.name for v in self.graph.inputs)})"
                )
            self._remember_binding(given, binding)
        placement = None
        steps = self._steps(binding)
        if into:
            placement = self._placement(into, binding)
            placement.check_apart(
                self._input_whats, [values[self.slot[v.name]] for v in self.inputs]
            )
            placement.check_params_apart(self._param_whats, values, self._param_slots)
            steps = self._placed_steps(steps, placement)
        try:
            self._execute(values, steps)
            if placement is not None:
                placement.finish(values)
        finally:
            if self.arenas is not None:
                self.arenas.trim()
        outputs = map(values.__getitem__, self._output_at)
        if placement is None:
            return {
                name: out if type(out) is np.ndarray and out.flags.writeable else _own(out)
                for name, out in zip(self._output_names, outputs)
            }
        result = dict(zip(self._output_names, outputs))  # (the caller's arrays: their own)
        for name in placement.others:
            result[name] = _own(result[name])
        return result

    def _known_binding(self, feeds: Mapping[str, Any]) -> dict[str, int] | None:
        """The dims bound by an earlier run's feeds of these shapes, if the feeds are
        ndarrays of their inputs' dtypes: those passed every check then, so these pass
        them too. None: check them."""
        if not self._bindings:
            return None
        key = self._feed_key(feeds)
        return None if key is None else self._bindings.get(key)

    def _feed_key(self, feeds: Mapping[str, Any]) -> tuple | None:
        """The shape fed to each graph input (None: not fed), if every feed is an
        ndarray of its input's dtype and names an input; else None."""
        shapes, fed = [], 0
        for name, dtype in self._feed_kinds:
            a = feeds.get(name)
            if a is None:
                shapes.append(None)
                continue
            if type(a) is not np.ndarray or a.dtype != dtype:
                return None
            shapes.append(a.shape)
            fed += 1
        return tuple(shapes) if fed == len(feeds) else None

    def _remember_binding(self, feeds: Mapping[str, Any], binding: dict[str, int]) -> None:
        """Keep the binding of checked ``feeds`` for :meth:`_known_binding` (unless a
        parameter of symbolic shape binds dims too)."""
        key = self._feed_key(feeds) if self._params_bind_nothing else None
        if key is None:
            return
        if len(self._bindings) >= 256:  # (sequence lengths seen: a bounded memory)
            self._bindings.clear()
        self._bindings[key] = dict(binding)

    def positional(self, binding: Mapping[str, int]) -> Any:
        """A fast callable ``f(*inputs) -> list of outputs`` with no feed checks.

        For nested bodies, whose inputs the enclosing op already checked; the inputs are
        given in the graph's input order, and ``binding`` sizes the symbolic dims.
        """
        steps = self._steps(dict(binding))
        in_slots = [self.slot[v.name] for v in self.graph.inputs]
        out_slots = [self.slot[name] for name in self.graph.outputs]
        size = len(self.slot)

        def run(*arrays: Any) -> list[Any]:
            values: list[Any] = [None] * size
            for slot, arr in zip(in_slots, arrays):
                values[slot] = arr
            self._execute(values, steps)
            return [values[slot] for slot in out_slots]

        return run

    def loop(
        self, binding: Mapping[str, int], num_carry: int, num_xs: int, *, blocks: bool = False
    ) -> Any:
        """This graph as a loop body: ``f(carries, xs, invariants, ys, order, rows=None)
        -> carries``.

        The inputs are the graph's, in order: ``num_carry`` carries, ``num_xs`` per-step
        values given stacked as ``xs`` (step ``t`` reads ``x[t]``), then invariants. The
        body runs once per step ``t`` in ``order``, writes its outputs after the carries
        into ``ys[j][t]`` and returns the final carries. Errors name the step. With
        ``blocks`` (a map's), each ``t`` is a slice, a block of rows that keeps the
        leading axis the body's values have.

        The function's ``y_sources`` lists the rows it writes and reads from ``ys``: ``(j,
        None)`` for those of ``ys[j]``, ``(j, index)`` for those of the piece
        ``ys[j][index]``. A caller that keeps them made (:mod:`rgraph.exec.stacks`) gives
        them as ``rows``, in ``order``; else the loop makes them. None: it takes no rows.
        """
        nc, nx = num_carry, num_xs
        steps = self._steps(dict(binding))
        in_slots = [self.slot[v.name] for v in self.graph.inputs]
        out_slots = [self.slot[name] for name in self.graph.outputs]
        if self.check_finite or len(steps) > FlatSchedule.MAX_NODES:
            return self._stepwise_loop(binding, nc, nx)
        if self._loop is None:  # the code depends only on the graph, not on the binding
            into = _out_plan(self.graph, nc)
            types = self.graph.types()
            scalar = [j for j, name in enumerate(self.graph.outputs[nc:]) if not types[name].rank]
            cut = self._cut_rows(steps, in_slots[nc : nc + nx], into, binding)
            viewed = self._viewed_rows(steps, into, binding)
            self._loop = LoopSchedule(steps, in_slots, out_slots, nc, nx, into, scalar, cut, viewed)
        sched = self._loop
        run = self._bound(sched, steps)
        if tuple(sorted(binding.items())) in self._quiet:
            run = _quietly(run)
        nodes = self.graph.nodes
        consts: list[Any] = [None] * len(self.slot)  # (read only: runs may share it)
        for slot, arr in self.consts:
            consts[slot] = arr
        kinds = [
            (
                tuple(dims.evaluate(d, binding) for d in nodes[i].outputs[0].type.shape),
                nodes[i].outputs[0].type.np_dtype,
            )
            for i in sched.buffered
        ]
        makers = [self.memory.maker(*kind, (id(self), i)) for kind, i in zip(kinds, sched.buffered)]
        # Where each row comes from: a stacked array, or a piece cut from it (its index
        # there has one more leading axis than in a row, which a block keeps).
        ctx = KernelContext(dict(binding))
        lead = () if blocks else (slice(None),)

        def source(n: int, piece: tuple[str, int, int] | None) -> tuple[int, tuple | None]:
            if piece is None:
                return n, None
            facet, i, k = piece
            return n, (*lead, *_facet(facet, nodes[steps[i].node], ctx)[k])

        x_sources = [source(n, piece) for kind, n, piece in sched.sources if kind == "x"]
        y_sources = [source(n, piece) for kind, n, piece in sched.sources if kind == "y"]

        kept = None
        if all(small(*kind) for kind in kinds):
            kept = self._buffers.setdefault(tuple(kinds), threading.local())

        def take_buffers() -> list[np.ndarray]:
            """This thread's small buffers of before if no value made from them lives on (a
            final carry the caller keeps: see Stacks), else new ones; large ones come from
            the arena (which holds them apart in the same way)."""
            if kept is None:
                return [make() for make in makers]
            held = getattr(kept, "buffers", None)
            if held is None or references(held[0]) != held[1]:
                arrays = [make() for make in makers]
                held = kept.buffers = (arrays, references(arrays))
            return held[0]

        def loop(carries, xs, invariants, ys, order, rows=None):
            buffers = take_buffers()  # (per thread: concurrent runs share nothing)
            each = [_rows(xs[n] if c is None else xs[n][c], order) for n, c in x_sources]
            if rows is None:
                rows = [_rows(ys[n] if c is None else ys[n][c], order) for n, c in y_sources]
            try:
                return run(consts, carries, invariants, ys, order, buffers, each + rows)
            except Exception as e:
                index, args, local = sched.locate(e)
                if index is None:
                    raise
                node = nodes[index]
                if isinstance(e, ExecutionError):  # from a nested body
                    error = type(e)(f"in {_describe(node)}: {e}")
                else:
                    error = _execution_error(node, args, e)
                raise type(error)(f"at {_loop_step(local.get('t'))}: {error}") from e

        loop.y_sources = y_sources  # type: ignore[attr-defined]
        return loop

    def _cut_rows(
        self,
        steps: list[Step],
        xs: list[int],
        into: Mapping[int, int | None],
        binding: Mapping[str, int],
    ) -> dict[int, tuple[str, int]]:
        """The steps whose outputs are views of a row the loop reads (an ``x``) or writes
        (a ``y``, straight from the node that makes it), by basic slicing (``Op.views``):
        step -> ``("x", i)`` or ``("y", j)``, that stacked array (see LoopSchedule)."""
        stacked = {slot: ("x", k) for k, slot in enumerate(xs)}
        stacked.update({steps[i].outputs[0]: ("y", j) for i, j in into.items() if j is not None})
        ctx = KernelContext(dict(binding))
        return {
            i: stacked[st.inputs[0]]
            for i, st in enumerate(steps)
            if st.inputs
            and st.inputs[0] in stacked
            and _facet("views", self.graph.nodes[st.node], ctx) is not None
        }

    def _viewed_rows(
        self, steps: list[Step], into: Mapping[int, int | None], binding: Mapping[str, int]
    ) -> dict[int, int]:
        """The steps that write into a row of a stacked output and take pieces of it made
        (``Op.out_views``): step -> how many."""
        ctx = KernelContext(dict(binding))
        counts = {
            i: _facet("out_views", self.graph.nodes[steps[i].node], ctx)
            for i, j in into.items()
            if j is not None
        }
        return {i: len(views) for i, views in counts.items() if views is not None}

    def _stepwise_loop(self, binding: Mapping[str, int], nc: int, nx: int) -> Any:
        """:meth:`loop` running the body once per step through the general path (debug
        mode checks every value; very large bodies are not compiled)."""
        run_body = self.positional(binding)

        def loop(carries, xs, invariants, ys, order, rows=None):
            carry = list(carries)
            for t in order:
                try:
                    outs = run_body(*carry, *(x[t] for x in xs), *invariants)
                except ExecutionError as e:
                    raise type(e)(f"at {_loop_step(t)}: {e}") from e
                carry = outs[:nc]
                for buf, y in zip(ys, outs[nc:]):
                    buf[t] = y
            return carry

        run = _quietly(loop) if tuple(sorted(binding.items())) in self._quiet else loop
        run.y_sources = None  # type: ignore[attr-defined]  # (it indexes the ys)
        return run

    def _check_finite(self, node: Node, step: Step, values: list[Any]) -> None:
        for var, slot in zip(node.outputs, step.outputs):
            out = values[slot]
            if var.type.is_float and not np.all(np.isfinite(out)):
                args = [values[i] for i in step.inputs]
                ins = ", ".join(f"{n}: {_stats(a)}" for n, a in zip(node.inputs, args))
                raise NonFiniteError(
                    f"{_describe(node)} produced {_nonfinite(out)} in '{var.name}'"
                    f" from inputs ({ins})"
                )

    def _execute(self, values: list[Any], steps: list[Step]) -> None:
        for slot, arr in self.consts:
            values[slot] = arr
        nodes = self.graph.nodes
        if self.check_finite:
            # In debug mode non-finite values are reported as errors, not numpy warnings.
            with np.errstate(all="ignore"):
                self._run_steps(values, steps, nodes)
            return
        run = self._flat_run(steps)
        if run is None:
            self._run_steps(values, steps, nodes)
            return
        flat = self._flat
        try:
            run(values)
        except Exception as e:
            index, args, _ = flat.locate(e)
            if index is None:
                raise
            node = nodes[index]
            if isinstance(e, ExecutionError):  # from a nested body: say which node holds it
                raise type(e)(f"in {_describe(node)}: {e}") from e
            raise _execution_error(node, args, e) from e

    def _flat_run(self, steps: list[Step]) -> Any:
        """The compiled schedule bound to these kernels (None for very large graphs)."""
        if len(steps) > FlatSchedule.MAX_NODES:
            return None
        if self._flat is None:  # the code depends only on the graph, not on the binding
            self._flat = FlatSchedule(steps)
        return self._bound(self._flat, steps)

    def _bound(self, schedule: FlatSchedule, steps: list[Step]) -> Any:
        """``schedule`` bound to the kernels of ``steps``, once per steps list: kept with
        the list it was bound for (an id alone may be that of a list since freed)."""
        held = self._runs.get(id(steps))
        if held is None or held[0] is not steps:
            held = self._runs[id(steps)] = (steps, schedule.bind([st.kernel for st in steps]))
        return held[1]

    def _run_steps(self, values: list[Any], steps: list[Step], nodes: tuple[Node, ...]) -> None:
        for step in steps:
            try:
                result = step.kernel(*[values[i] for i in step.inputs])
            except ExecutionError as e:  # from a nested body: say which node holds it
                raise type(e)(f"in {_describe(nodes[step.node])}: {e}") from e
            except Exception as e:
                raise _execution_error(nodes[step.node], [values[i] for i in step.inputs], e) from e
            if len(step.outputs) == 1:
                values[step.outputs[0]] = result
            else:
                for slot, r in zip(step.outputs, result):
                    values[slot] = r
            if self.check_finite:
                self._check_finite(nodes[step.node], step, values)
            for slot in step.free:
                values[slot] = None


class ParamJoin:
    """A concatenation of parameters: the view :func:`~rgraph.exec.packing.tiled` when they
    are adjacent blocks of one buffer (a packed store), else a copy.

    A store passes the same arrays run after run, so the answer is kept for the arrays
    of the last run (which it keeps alive): the next run with them pays a few identity
    checks. Their shapes are checked by the run; their memory cannot move.
    """

    __slots__ = ("axis", "last")

    def __init__(self, axis: int):
        self.axis = axis
        self.last: tuple[tuple, np.ndarray | None] = ((), None)  # (arrays, their view)

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        seen, view = self.last  # (one read: runs in other threads may replace it)
        if len(seen) != len(arrays) or not all(map(operator.is_, arrays, seen)):
            view = tiled(arrays, self.axis)
            self.last = (arrays, view)
        return np.concatenate(arrays, axis=self.axis) if view is None else view


def _given(arrays: tuple[np.ndarray, ...], *_: Any) -> tuple[np.ndarray, ...]:
    """A placed split's kernel: the caller's arrays, which are its pieces."""
    return arrays


def _concrete(shape: tuple) -> tuple[int, ...] | None:
    """``shape`` if all its dims are numbers (None: some are symbolic)."""
    return shape if all(isinstance(d, int) for d in shape) else None


def _check(
    value: Any,
    t: TensorType,
    kind: str,
    name: str,
    binding: dict[str, int],
    bound_by: dict[str, str],
    strict: bool = False,
) -> np.ndarray:
    """A feed as an array of type ``t``; binds symbolic dims and checks they agree."""
    if isinstance(value, np.ndarray) or strict:
        arr = np.asarray(value) if not isinstance(value, np.ndarray) else value
        if arr.dtype != t.np_dtype:
            raise FeedError(f"{kind} '{name}' must be {t.dtype}, got {arr.dtype} (declared {t})")
    else:
        try:
            arr = np.asarray(value, dtype=t.np_dtype)
        except (TypeError, ValueError) as e:
            raise FeedError(f"{kind} '{name}' is not convertible to {t.dtype}: {e}") from None
    if arr.ndim != t.rank:
        raise FeedError(f"{kind} '{name}' must have rank {t.rank} ({t}), got shape {arr.shape}")
    for axis, (dim, size) in enumerate(zip(t.shape, arr.shape)):
        if isinstance(dim, int):
            if dim != size:
                raise FeedError(f"{kind} '{name}' must have shape {t}, got {arr.shape}")
            continue
        dim_names = dims.names(dim)
        if len(dim_names) == 1 and dims.factors(dim)[0] == 1 and dim_names[0] not in binding:
            binding[dim_names[0]] = size
            bound_by[dim_names[0]] = f"{kind} '{name}' axis {axis}"
        try:
            expected = dims.evaluate(dim, binding)
        except KeyError:
            raise FeedError(
                f"{kind} '{name}' axis {axis}: dim {dim!r} is not bound by any feed"
            ) from None
        if expected != size:
            origin = ", ".join(f"{n}={binding[n]} from {bound_by[n]}" for n in dim_names)
            raise FeedError(
                f"{kind} '{name}' axis {axis} has size {size},"
                f" but dim {dim!r} is {expected} ({origin})"
            )
    return arr


def _out_plan(graph: GraphIR, num_carry: int) -> dict[int, int | None]:
    """Which nodes of a loop body write with ``out=``: node index -> the output ``ys``
    index it writes into at each step, or None for a buffer of its own.

    A buffer is overwritten at the next step, so no value that may share memory with a
    carry (which lives on into the next step) gets one: the carries, and through ops
    that may return views of their inputs, whatever they were made from. The exception
    is a carry whose node makes no view and runs after every read of the carry it
    replaces (:func:`_carry_buffers`). ``ys[j][t]`` is written once, so any value may go
    there, carries too.
    """
    producer = {o.name: i for i, n in enumerate(graph.nodes) for o in n.outputs}
    shared: set[str] = set()
    viewed: set[str] = set()  # (what a node that may return a view of it reads)
    pending = list(graph.outputs[:num_carry])
    while pending:
        name = pending.pop()
        if name in shared:
            continue
        shared.add(name)
        i = producer.get(name)
        if i is not None and not _writes_out(graph.nodes[i]):
            viewed.update(graph.nodes[i].inputs)
            pending.extend(graph.nodes[i].inputs)
    first_y: dict[str, int] = {}
    for j, name in enumerate(graph.outputs[num_carry:]):
        first_y.setdefault(name, j)
    plan: dict[int, int | None] = {}
    for i, node in enumerate(graph.nodes):
        out = node.outputs[0]
        if _writes_out(node):
            j = first_y.get(out.name)
            if j is not None and out.type.rank >= 1:
                plan[i] = j
            elif out.name not in shared:
                plan[i] = None
    for i in _carry_buffers(graph, num_carry, producer, viewed):
        plan.setdefault(i, None)
    return plan


def _writes_out(node: Node) -> bool:
    return get_op(node.op).writes_out and len(node.outputs) == 1 and not node.bodies


def _carry_buffers(
    graph: GraphIR, num_carry: int, producer: Mapping[str, int], viewed: set[str]
) -> list[int]:
    """The nodes that may write a carry into one buffer, reused at every step (a backward
    loop's carried gradients, else new arrays at every step): each makes the carry
    itself, no other carry being a view of it, and runs after every read of the carry
    it replaces or of a view of that, which the body does not return either.
    """
    outputs = set(graph.outputs)
    found = []
    for name in dict.fromkeys(graph.outputs[:num_carry]):
        i = producer.get(name)
        if i is None or not _writes_out(graph.nodes[i]) or name in viewed:
            continue
        old = {graph.inputs[k].name for k in range(num_carry) if graph.outputs[k] == name}
        for node in graph.nodes:  # (in order: views of the old carry, then their views)
            if not _writes_out(node) and old.intersection(node.inputs):
                old.update(o.name for o in node.outputs)
        readers = [k for k, node in enumerate(graph.nodes) if old.intersection(node.inputs)]
        if not old & outputs and all(k < i for k in readers):
            found.append(i)
    return found


def _loop_step(t: int | slice | None) -> str:
    """Where a loop was: a scan's step, or a map's block of rows."""
    if isinstance(t, slice):
        return f"map rows {t.start}:{t.stop}"
    return f"scan step {t}"


def _stats(arr: Any) -> str:
    arr = np.asarray(arr)
    if arr.dtype.kind in "fiu" and arr.size:
        finite = arr[np.isfinite(arr)] if arr.dtype.kind == "f" else arr
        nonfinite = arr.size - finite.size
        rng = f" min {finite.min():.4g} max {finite.max():.4g}" if finite.size else ""
        return f"{arr.dtype}{list(arr.shape)}{rng}" + (
            f" non-finite {nonfinite}" if nonfinite else ""
        )
    return f"{arr.dtype}{list(arr.shape)}"


def _describe(node: Node) -> str:
    where = f" at {node.loc}" if node.loc is not None else ""
    outs = ", ".join(o.name for o in node.outputs)
    return f"node '{outs} = {node.op}({', '.join(node.inputs)})'{where}"


def _nonfinite(arr: np.ndarray) -> str:
    nan, inf = int(np.isnan(arr).sum()), int(np.isinf(arr).sum())
    return " and ".join(p for p in (f"{nan} NaN" if nan else "", f"{inf} inf" if inf else "") if p)


def _execution_error(node: Node, args: list[Any], e: Exception) -> ExecutionError:
    ins = ", ".join(f"{n}: {_stats(a)}" for n, a in zip(node.inputs, args))
    return ExecutionError(
        f"while executing {_describe(node)} with inputs ({ins}): {type(e).__name__}: {e}"
    )


def _call_lines(
    steps: list[Step],
    indent: str,
    free: bool,
    into: Mapping[int, str] | None = None,
    pieces: Mapping[int, list[str]] | None = None,
) -> list[str]:
    """One line per node, ``v7 = k3(v2, v5)`` (``v7 = v2`` for an identity), ending values'
    lives with ``del`` if asked; node ``i`` in ``into`` writes into that array
    (``k3(v2, v5, out=b3)``), and gives the ``pieces`` of it (``Op.out_views``) after it."""
    lines = []
    identity = get_op("identity").fn
    for i, st in enumerate(steps):
        args = ", ".join(f"v{j}" for j in st.inputs)
        target = into.get(i) if into else None
        given = pieces.get(i) if pieces else None
        if given:
            args += ", ".join(["", target, *given])
        elif target is not None:  # a ufunc takes out= positionally, a little faster
            args += f", {target}" if isinstance(st.kernel, np.ufunc) else f", out={target}"
        # An identity is its input itself: no call.
        call = args if st.kernel is identity and target is None else f"k{i}({args})"
        outs = ", ".join(f"v{j}" for j in st.outputs)
        line = f"{indent}{outs}{',' if len(st.outputs) > 1 else ''} = {call}"
        if free and st.free:
            line += "; del " + ", ".join(f"v{f}" for f in st.free)
        lines.append(line)
    return lines


def _unpack(names: list[str], source: str, indent: str = "    ") -> list[str]:
    """The line ``a, b, = source`` (none for no names)."""
    return [f"{indent}{''.join(f'{n}, ' for n in names)}= {source}"] if names else []


def _compile(lines: list[str], names: Mapping[str, Any] | None = None) -> Any:
    namespace: dict[str, Any] = dict(names or {})
    exec(compile("\n".join(lines), "<rgraph schedule>", "exec"), namespace)
    return namespace["make"]


_DTYPE, _SHAPE = operator.attrgetter("dtype"), operator.attrgetter("shape")


def _own(out: Any) -> np.ndarray:
    """An output as an array of the caller's own: a copy if it is read-only (a view of
    parameters, ParamJoin's or of one, which an optimiser changes next)."""
    out = np.asarray(out)
    return out if out.flags.writeable else out.copy()


def _facet(facet: str, node: Node, ctx: KernelContext) -> list[tuple] | None:
    """``Op.views`` (the index of each output in its one input) or ``Op.out_views`` (of
    pieces of its output) of ``node``, or None."""
    op = get_op(node.op)
    if facet == "views" and len(node.inputs) != 1:
        return None
    return getattr(op, facet)(op.node_attrs(node), ctx)


def _quietly(run: Any) -> Any:
    """``run`` with numpy's overflow warnings off while it runs (see ``Op.overflows``)."""

    def quiet(*args: Any) -> Any:
        with np.errstate(over="ignore"):
            return run(*args)

    return quiet


def _rows(stacked: np.ndarray, order: Any) -> Any:
    """The rows ``stacked[t]`` for ``t`` in ``order``, in order: the array itself when the
    steps go forward over all of it, reversed when backward (iterating gives the views
    faster than indexing), else a list of them (a map's blocks)."""
    if type(order) is range and len(order) == len(stacked):
        if order.step == 1:
            return stacked
        if order.step == -1:
            return stacked[::-1]
    return [stacked[t] for t in order]


class FlatSchedule:
    """A prepared schedule compiled to one straight-line Python function.

    Each node becomes one line, ``v7 = k3(v2, v5)``, its values plain local variables and
    ``del`` ending each value's life after its last use: the interpreter's per-node cost
    is a call and a few local stores. Graphs above ``MAX_NODES`` use the plain loop
    (compiling the source would cost more than it saves).
    """

    MAX_NODES = 20_000

    def __init__(self, steps: list[Step]):
        self.steps = steps
        used = {i for st in steps for i in st.inputs} | {o for st in steps for o in st.outputs}
        lines = [
            "def make(kernels):",
            *_unpack([f"k{i}" for i in range(len(steps))], "kernels", "  "),
            "  def run(values):",
        ]
        # Slots fed from outside (inputs, params, consts) are read once at the start.
        produced = {o for st in steps for o in st.outputs}
        lines += [f"    v{i} = values[{i}]" for i in sorted(used - produced)]
        self.first_line = len(lines) + 1
        lines += _call_lines(steps, "    ", free=True)
        # Values still alive at the end (the outputs) go back into the slots.
        alive = set(used)
        for st in steps:
            alive -= set(st.free)
        lines += [f"    values[{i}] = v{i}" for i in sorted(alive)]
        if len(lines) == self.first_line - 1:
            lines.append("    pass")
        lines.append("  return run")
        self.source = "\n".join(lines)  # for reading what runs
        self.make = _compile(lines)
        self.code = self.bind([None] * len(steps)).__code__

    def bind(self, kernels: list[Any]) -> Any:
        """The schedule's function running these kernels (one per node, in order)."""
        return self.make(kernels)

    def locate(self, error: BaseException) -> tuple[int | None, list[Any], dict[str, Any]]:
        """The index of the node that raised ``error``, the arrays it was given, and the
        generated function's local variables at that moment."""
        tb = error.__traceback__
        while tb is not None and tb.tb_frame.f_code is not self.code:
            tb = tb.tb_next
        if tb is None:
            return None, [], {}
        index = tb.tb_lineno - self.first_line
        if not 0 <= index < len(self.steps):
            return None, [], {}
        local = tb.tb_frame.f_locals
        return index, [local.get(f"v{j}") for j in self.steps[index].inputs], local


class LoopSchedule(FlatSchedule):
    """A loop body's schedule compiled together with the loop that runs it.

    ``run(consts, carries, invariants, ys, order, buffers, each)`` takes the body's
    constants in their slots of the list ``consts``, the carries and invariant inputs in
    order, the stacked ``ys`` (written at each step ``t`` of ``order``), and in ``each``
    the rows the steps read and write, in ``order``: those of the ``xs`` and of the pieces
    cut from them, then those of the ``ys`` (but the ``scalar`` ones) and of the pieces
    cut from them (:attr:`sources` says which is which). It returns the final carries. The
    loop, the per-step rows and the carry hand-over are plain Python in one function: a
    step costs its nodes' calls and nothing per step besides. Nodes in ``into`` write
    their value with ``out=``: into their row of ``ys[j]`` when it is output ``j`` (no
    copy), else into their own entry of ``buffers``, reused at every step. ``ys`` in
    ``scalar`` (one number per step) are written by index, their rows not being arrays.
    The steps in ``cut`` (step -> ``("x", i)`` or ``("y", j)``, the stacked array of the
    row it reads) make views of that row (``Op.views``): their outputs are rows of that
    array cut, and the steps make no call. The steps in ``viewed`` (step -> how many)
    write into a row of a stacked output and are given pieces of it after it, rows of
    that array cut too (``Op.out_views``).
    """

    def __init__(
        self,
        steps: list[Step],
        inputs: list[int],
        outputs: list[int],
        nc: int,
        nx: int,
        into: Mapping[int, int | None],
        scalar: Sequence[int] = (),
        cut: Mapping[int, tuple[str, int]] | None = None,
        viewed: Mapping[int, int] | None = None,
    ):
        self.steps = steps
        self.buffered = [i for i in sorted(into) if into[i] is None]
        self.cut = dict(sorted((cut or {}).items()))
        targets = {i: f"b{i}" if j is None else f"y{j}" for i, j in into.items()}
        direct = {j for j in into.values() if j is not None}
        carries, xs, invariants = inputs[:nc], inputs[nc : nc + nx], inputs[nc + nx :]
        produced = {o for st in steps for o in st.outputs}
        read = {i for st in steps for i in st.inputs} | set(outputs)
        consts = sorted(read - produced - set(inputs))
        ys = outputs[nc:]
        rows = [j for j in range(len(ys)) if j not in scalar]
        # The pieces of rows of each kind: (the facet that gives its index, the step, the
        # position, the name in the loop's code, the index of the stacked array). A cut
        # step's outputs, and those of a row a step writes that it takes made.
        pieces = {
            kind: [
                ("views", i, k, f"v{o}", n)
                for i, (kind_, n) in self.cut.items()
                if kind_ == kind
                for k, o in enumerate(steps[i].outputs)
            ]
            for kind in ("x", "y")
        }
        given = {i: [f"w{i}_{k}" for k in range(count)] for i, count in (viewed or {}).items()}
        pieces["y"] += [
            ("out_views", i, k, name, into[i])
            for i, names in given.items()
            for k, name in enumerate(names)
        ]
        # What each row comes from: (kind, index of the stacked array, None for its rows or
        # (facet, step, position) for a piece's).
        self.sources = [
            *(("x", k, None) for k in range(nx)),
            *(("x", n, (f, i, k)) for f, i, k, _, n in pieces["x"]),
            *(("y", j, None) for j in rows),
            *(("y", n, (f, i, k)) for f, i, k, _, n in pieces["y"]),
        ]
        each = [
            *(f"v{i}" for i in xs),
            *(name for *_, name, _ in pieces["x"]),
            *(f"y{j}" for j in rows),
            *(name for *_, name, _ in pieces["y"]),
        ]
        lines = [
            "def make(kernels):",
            *_unpack([f"k{i}" for i in range(len(steps))], "kernels", "  "),
            "  def run(consts, carries, invariants, ys, order, buffers, each):",
            *_unpack([f"v{i}" for i in carries], "carries"),
            *_unpack([f"v{i}" for i in invariants], "invariants"),
            *(f"    v{i} = consts[{i}]" for i in consts),
            *_unpack([f"b{i}" for i in self.buffered], "buffers"),
            *(f"    Y{j} = ys[{j}]" for j in scalar),
            (
                f"    for t, {', '.join(each)} in zip(order, *each):"
                if each
                else "    for t in order:"
            ),
        ]
        self.first_line = len(lines) + 1
        calls = _call_lines(steps, "      ", free=False, into=targets, pieces=given)
        for i in self.cut:  # (the line stays: an error is located by its line)
            calls[i] = f"      pass  # {', '.join(f'v{o}' for o in steps[i].outputs)}: iterated"
        lines += calls
        lines += [
            f"      y{j}[...] = v{slot}" if j in rows else f"      Y{j}[t] = v{slot}"
            for j, slot in enumerate(ys)
            if j not in direct
        ]
        if nc:
            new = ", ".join(f"v{slot}" for slot in outputs[:nc])
            lines.append(f"      {', '.join(f'v{i}' for i in carries)}, = {new},")
        lines.append("      pass")
        lines.append(f"    return [{', '.join(f'v{i}' for i in carries)}]")
        lines.append("  return run")
        self.source = "\n".join(lines)  # for reading what runs
        self.make = _compile(lines)
        self.code = self.bind([None] * len(steps)).__code__
