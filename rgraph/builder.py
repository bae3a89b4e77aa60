"""The define-then-run front end: a :class:`Graph` records ops on symbolic :class:`Value` s.

Building computes nothing. Each op call infers its output types at once, so a shape or
dtype mistake raises at the line of the user's script that made it.

>>> import rgraph as rg
>>> g = rg.Graph("affine")
>>> x = g.input("x", (5, 1))
>>> W = g.param("W", (3, 5), init="uniform")
>>> b = g.param("b", (3, 1))
>>> h = g.output(W @ x + b, name="h")
>>> h.type
TensorType(dtype='float64', shape=(3, 1))
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from rgraph.errors import DTypeError, DuplicateValueError, GraphError, UndefinedValueError
from rgraph.ir import dims
from rgraph.ir.graph import Const, GraphIR, Init, Node, Param, SourceLoc, Var
from rgraph.ir.op import REGISTRY, Op, freeze, get_op
from rgraph.ir.types import INT_DTYPES, TensorType, construct, dtype_name, make_type

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))

# Builder methods that are RecurrentJS names for registry ops.
ALIASES = {"mul": "matmul"}


@functools.lru_cache(maxsize=1024)
def _in_package(filename: str) -> bool:
    # With the separator: a user's ``rgraph_demo.py`` next to the package is not in it.
    return os.path.abspath(filename).startswith(_PACKAGE_DIR + os.sep)


# One SourceLoc per user line: a loop building 100,000 nodes on three lines shares three.
# SourceLoc is frozen; bounded like an LRU cache, cleared when full.
_LOCS: dict[tuple[str, int, str], SourceLoc] = {}
_LOCS_MAX = 65536


def caller_location() -> SourceLoc | None:
    """The innermost stack frame outside the rgraph package: the user's line."""
    frame = sys._getframe(1)
    while frame is not None:
        code = frame.f_code
        filename = code.co_filename
        if not _in_package(filename):
            key = (filename, frame.f_lineno, code.co_name)
            loc = _LOCS.get(key)
            if loc is None:
                if len(_LOCS) >= _LOCS_MAX:
                    _LOCS.clear()
                loc = _LOCS[key] = construct(SourceLoc, file=filename, line=key[1], function=key[2])
            return loc
        frame = frame.f_back  # type: ignore[assignment]
    return None


# What an op without attributes derives from its input types (dtype, shape): parsed attrs,
# their plain form and the output types. Inference is a pure function of these, and a
# long chain repeats a few combinations many thousands of times. Bounded: cleared when full.
_DERIVED: dict[tuple, tuple[Any, dict[str, Any], tuple[TensorType, ...]]] = {}
_DERIVED_MAX = 65536


def derive_without_attrs(
    op: Op, ins: Sequence[TensorType]
) -> tuple[Any, dict[str, Any], tuple[TensorType, ...]]:
    """Parsed attrs, plain attrs and output types of ``op`` given no attributes, applied
    to inputs of types ``ins``: arity check, attrs and inference, remembered. Raises what
    those raise. The plain attrs are shared: copy them before keeping them."""
    key = (op.name, *[(t.dtype, t.shape) for t in ins])
    known = _DERIVED.get(key)
    if known is None:
        op.check_arity(len(ins))
        a, plain = op.attrs_from_kwargs({})
        known = (a, plain, tuple(op.infer(list(ins), a)))
        if not op.body_names:
            if len(_DERIVED) >= _DERIVED_MAX:
                _DERIVED.clear()
            _DERIVED[key] = known
    return known


# What construct(Var, ...) and construct(Node, ...) make, for _record's inlined copies.
_new, _setattr = object.__new__, object.__setattr__
_VAR_SET = construct(Var, name="v", type=make_type("float64", ())).__pydantic_fields_set__
_NODE_SET = construct(
    Node, op="identity", inputs=(), outputs=(), attrs={}, bodies={}, loc=None
).__pydantic_fields_set__


class Value:
    """A symbolic tensor in a :class:`Graph`: a name and a type, no data.

    Python operators record ops: ``+ - * /`` are elementwise with numpy broadcasting,
    ``@`` is a matrix product, ``-x`` negates, ``x[a:b]`` slices, ``x.T`` transposes.
    """

    __slots__ = ("graph", "name", "type")

    def __init__(self, graph: Graph, name: str, type: TensorType):
        self.graph = graph
        self.name = name
        self.type = type

    @property
    def shape(self) -> tuple[dims.Dim, ...]:
        return self.type.shape

    @property
    def dtype(self) -> str:
        return self.type.dtype

    @property
    def ndim(self) -> int:
        return self.type.rank

    def __repr__(self) -> str:
        return f"Value({self.name}: {self.type})"

    def __bool__(self) -> bool:
        raise GraphError(
            f"the truth value of symbolic value '{self.name}' is not known while building"
            " a graph (define-then-run): use ops, not Python control flow on values"
        )

    __hash__ = object.__hash__

    def __add__(self, other: Any) -> Value:
        return self.graph.op("add", self, other)

    def __radd__(self, other: Any) -> Value:
        return self.graph.op("add", other, self)

    def __sub__(self, other: Any) -> Value:
        return self.graph.op("sub", self, other)

    def __rsub__(self, other: Any) -> Value:
        return self.graph.op("sub", other, self)

    def __mul__(self, other: Any) -> Value:
        return self.graph.op("eltmul", self, other)

    def __rmul__(self, other: Any) -> Value:
        return self.graph.op("eltmul", other, self)

    def __truediv__(self, other: Any) -> Value:
        return self.graph.op("div", self, other)

    def __rtruediv__(self, other: Any) -> Value:
        return self.graph.op("div", other, self)

    def __neg__(self) -> Value:
        return self.graph.op("neg", self)

    def __matmul__(self, other: Any) -> Value:
        return self.graph.op("matmul", self, other)

    def __rmatmul__(self, other: Any) -> Value:
        return self.graph.op("matmul", other, self)

    @property
    def T(self) -> Value:
        """The transpose of a matrix (the last two axes swapped)."""
        perm = list(range(self.ndim))
        perm[-2:] = perm[-1:-3:-1]
        return self.graph.op("transpose", self, perm=perm)

    def __getitem__(self, index: Any) -> Value:
        """Basic slicing: ``x[a:b]``, ``x[:, 2:5]``, ``x[3]`` (an int drops the axis)."""
        index = index if isinstance(index, tuple) else (index,)
        if len(index) > self.ndim:
            raise GraphError(f"too many indices ({len(index)}) for {self!r}")
        out, dropped = self, []
        for axis, ix in enumerate(index):
            if isinstance(ix, slice):
                if ix == slice(None):
                    continue
                out = self.graph.op(
                    "slice", out, axis=axis, start=ix.start, stop=ix.stop, step=ix.step or 1
                )
            elif isinstance(ix, (int, np.integer)) and not isinstance(ix, bool):
                stop = None if ix == -1 else int(ix) + 1
                out = self.graph.op("slice", out, axis=axis, start=int(ix), stop=stop)
                dropped.append(axis)
            else:
                raise GraphError(f"unsupported index {ix!r}: use ints and slices")
        if dropped:
            shape = [d for i, d in enumerate(out.shape) if i not in dropped]
            out = self.graph.op("reshape", out, shape=shape)
        return out

    def __getattr__(self, name: str) -> Any:
        """Registry ops as methods: ``x.tanh()``, ``x.sum(axes=[0])``."""
        if name.startswith("_"):
            raise AttributeError(name)
        opname = ALIASES.get(name, name)
        if opname not in REGISTRY:
            raise AttributeError(f"'Value' has no attribute or op {name!r}")
        return lambda *args, **kw: self.graph.op(opname, self, *args, **kw)


class Graph:
    """A graph under construction, define-then-run.

    ``input``, ``param`` and ``const`` declare values; every registry op is a method
    (``g.tanh(x)``, ``g.matmul(a, b, transpose_b=True)``), RecurrentJS's ``g.mul`` is
    ``matmul`` and ``g.eltmul`` the elementwise product; ``output`` marks results.
    ``g.ir`` is the validated-by-construction :class:`~rgraph.ir.graph.GraphIR`.
    """

    def __init__(self, name: str = "graph", *, parent: Graph | None = None):
        self.name = name
        # A loop body's builder: values of enclosing graphs used here become inputs.
        self.parent = parent
        self._captures: dict[tuple[int, str], Value] = {}
        self.captured: list[Value] = []
        self._inputs: list[Var] = []
        self._params: list[Param] = []
        self._consts: list[Const] = []
        self._nodes: list[Node] = []
        self._outputs: list[str] = []
        self._types: dict[str, TensorType] = {}
        self._ops: set[str] = set()  # of the nodes, as GraphIR.ops() gives them
        self._counter = 0
        self._loc_override: SourceLoc | None = None
        self._scalars: dict[tuple, str] = {}  # shared scalar constants
        # Nodes are appended once their inputs exist, so they stay in dependency order
        # unless built from IR not known to be, or a node is replaced (``ir`` marks it).
        self._in_order = True
        self._replaced = False  # whether replace_node was used (see ``ir``)

    # --- construction from existing IR (used by passes) ----------------------------

    @classmethod
    def from_ir(cls, ir: GraphIR) -> Graph:
        """A builder that extends a copy of ``ir`` (its nodes are kept as they are)."""
        g = cls(ir.name)
        g._inputs = list(ir.inputs)
        g._params = list(ir.params)
        g._consts = list(ir.consts)
        g._nodes = list(ir.nodes)
        g._outputs = list(ir.outputs)
        g._types = ir.types()
        g._ops = set(ir.ops())
        g._counter = len(g._types)
        g._in_order = ir.known_scheduled
        return g

    @property
    def ir(self) -> GraphIR:
        ir = GraphIR.model_construct(
            name=self.name,
            inputs=tuple(self._inputs),
            params=tuple(self._params),
            consts=tuple(self._consts),
            nodes=tuple(self._nodes),
            outputs=tuple(self._outputs),
        )
        if not self._replaced:
            # The names declared, then the nodes' outputs in node order: what ir.types()
            # computes, from dicts at hand (a pass building on a long graph asks for it).
            declared = {
                v.name: v.type for vs in (self._inputs, self._params, self._consts) for v in vs
            }
            types = self._types
            if list(itertools.islice(types, len(declared))) == list(declared):
                ir.cache_types(dict(types))  # a plain copy, much the faster
            else:
                ir.cache_types({**declared, **types})
            ir.cache_ops(self._ops)
        return ir.mark_scheduled() if self._in_order else ir

    def __str__(self) -> str:
        return str(self.ir)

    def value(self, name: str) -> Value:
        """The symbolic value defined under ``name``."""
        try:
            return Value(self, name, self._types[name])
        except KeyError:
            raise UndefinedValueError(f"graph '{self.name}' defines no value '{name}'") from None

    # --- declarations --------------------------------------------------------------

    def _claim(self, name: str) -> str:
        if name in self._types:
            raise DuplicateValueError(
                f"{_where()}value name '{name}' is already defined in graph '{self.name}'"
            )
        return name

    def fresh_name(self, prefix: str = "t") -> str:
        """A value name not yet used in this graph."""
        types = self._types
        counter = self._counter
        while True:
            name = f"{prefix}{counter}"
            counter += 1
            if name not in types:
                self._counter = counter
                return name

    def input(self, name: str, shape: Sequence[dims.Dim], dtype: Any = "float64") -> Value:
        """Declare a graph input fed at run time; dims may be symbolic (``("T", "B")``)."""
        var = Var(name=self._claim(name), type=TensorType(dtype=dtype_name(dtype), shape=shape))
        self._inputs.append(var)
        self._types[name] = var.type
        return Value(self, name, var.type)

    def param(
        self,
        name: str,
        shape: Sequence[int],
        dtype: Any = "float64",
        init: str | Init = "zeros",
        **init_args: float,
    ) -> Value:
        """Declare a trainable parameter of concrete shape, with its initializer.

        ``init`` is an :class:`~rgraph.ir.graph.Init` or its ``kind`` with keyword
        arguments, e.g. ``init="uniform", low=-0.08, high=0.08`` (RecurrentJS's weights).
        """
        if self.parent is not None:
            raise GraphError(f"{_where()}declare parameter '{name}' on the outermost graph")
        t = TensorType(dtype=dtype_name(dtype), shape=shape)
        if not t.is_concrete:
            raise GraphError(f"{_where()}parameter '{name}' needs a concrete shape, got {t}")
        spec = init if isinstance(init, Init) else Init(kind=init, **init_args)
        p = Param(name=self._claim(name), type=t, init=spec)
        self._params.append(p)
        self._types[name] = t
        return Value(self, name, t)

    def const(self, value: Any, dtype: Any = None, name: str | None = None) -> Value:
        """A constant tensor stored in the graph (Python scalars in ops become these).

        Unnamed scalar constants are shared: ``x * 2.0`` twice stores one ``2.0``.
        """
        arr = np.asarray(value, dtype=None if dtype is None else dtype_name(dtype))
        t = make_type(dtype_name(arr.dtype), arr.shape)
        data = arr.ravel().tolist()
        key = (t.dtype, freeze(data)) if name is None and not arr.shape else None
        if key is not None and key in self._scalars:
            return Value(self, self._scalars[key], t)
        name = self._claim(name) if name is not None else self.fresh_name("c")
        self._consts.append(construct(Const, name=name, type=t, data=data))
        self._types[name] = t
        if key is not None:
            self._scalars[key] = name
        return Value(self, name, t)

    def output(self, value: Value, name: str | None = None) -> Value:
        """Mark ``value`` as a graph output, optionally under a new ``name``."""
        value = self._own(value)
        if name is not None and name != value.name:
            value = self.op("identity", value, _name=name)
        if value.name not in self._outputs:
            self._outputs.append(value.name)
        return value

    # --- ops -----------------------------------------------------------------------

    @contextlib.contextmanager
    def location(self, loc: SourceLoc | None) -> Iterator[None]:
        """Attribute nodes built inside the block to ``loc`` (generated backward nodes)."""
        saved, self._loc_override = self._loc_override, loc
        try:
            yield
        finally:
            self._loc_override = saved

    def op(self, opname: str, *inputs: Any, _name: str | None = None, **kwargs: Any) -> Any:
        """Record ``opname`` applied to ``inputs``; returns a Value or a tuple of Values.

        Keyword arguments are the op's attributes, or its named optional inputs.
        Python numbers among the inputs become constants of the first Value's dtype.
        """
        op = REGISTRY.get(opname)
        if op is None:
            op = get_op(opname)  # raises UnknownOpError
        loc = self._loc_override or caller_location()
        if not kwargs and _name is None and inputs and not op.input_names:
            # The common case (``h * w``, every VJP rule): Values of this graph, no
            # attributes, inference known: what follows, without the general path.
            key = [opname]
            for v in inputs:
                if type(v) is not Value or v.graph is not self:
                    break
                t = v.type
                key.append((t.dtype, t.shape))
            else:
                known = _DERIVED.get(tuple(key))
                if known is not None and len(known[2]) == 1:
                    return self._record(opname, inputs, known[1], known[2][0], loc)
        if len(inputs) == 1 and isinstance(inputs[0], (list, tuple)):
            inputs = tuple(inputs[0])
        if op.input_names:
            inputs = list(inputs)
            for name in op.input_names:
                if name in kwargs:
                    extra = kwargs.pop(name)
                    if extra is not None:
                        inputs.append(extra)
        ref = None
        here = True  # every input a Value of this graph: the common case, no lifting
        for v in inputs:
            if isinstance(v, Value):
                if ref is None:
                    ref = v
                if v.graph is not self:
                    here = False
            else:
                here = False
        if here:
            values = inputs
        else:
            inner = self._innermost(v.graph for v in inputs if isinstance(v, Value))
            if inner is not self:
                return inner.op(opname, *inputs, _name=_name, **kwargs)
            values = [self._lift(v, ref) for v in inputs]
        try:
            if kwargs:
                op.check_arity(len(values))
                a, plain = op.attrs_from_kwargs(kwargs)
                out_types = op.infer([v.type for v in values], a)
            else:
                a, plain, out_types = derive_without_attrs(op, [v.type for v in values])
                plain = dict(plain)
        except GraphError as e:
            shapes = ", ".join(f"{v.name}: {v.type}" for v in values)
            raise type(e)(f"{_fmt_loc(loc)}{opname}({shapes}): {e}") from None
        types = self._types
        if len(out_types) == 1:
            t = out_types[0]
            if _name is None:  # self.fresh_name(), inlined: the hot path of a long chain
                counter = self._counter
                name = f"t{counter}"
                while name in types:
                    counter += 1
                    name = f"t{counter}"
                self._counter = counter + 1
            else:
                name = self._claim(_name)
            outs: tuple[Var, ...] = (construct(Var, name=name, type=t),)
        else:
            names = [self.fresh_name() for _ in out_types]
            outs = tuple(construct(Var, name=n, type=t) for n, t in zip(names, out_types))
        self._nodes.append(
            construct(
                Node,
                op=opname,
                inputs=tuple([v.name for v in values]),
                outputs=outs,
                attrs=plain,
                bodies={name: getattr(a, name) for name in op.body_names} if op.body_names else {},
                loc=loc,
            )
        )
        self._ops.add(opname)
        if op.body_names:
            self._ops.add("bodies")
        if len(outs) == 1:
            types[name] = t
            return Value(self, name, t)
        results = []
        for var in outs:
            types[var.name] = var.type
            results.append(Value(self, var.name, var.type))
        return tuple(results)

    def _record(
        self, opname: str, values: Sequence[Value], plain: dict, t: TensorType, loc: Any
    ) -> Value:
        """Append a node of one output of type ``t`` named freshly; ``op``'s tail."""
        types = self._types
        counter = self._counter  # self.fresh_name(), inlined
        name = f"t{counter}"
        while name in types:
            counter += 1
            name = f"t{counter}"
        self._counter = counter + 1
        var = _new(Var)
        _setattr(var, "__dict__", {"name": name, "type": t})
        _setattr(var, "__pydantic_fields_set__", _VAR_SET)
        _setattr(var, "__pydantic_extra__", None)
        _setattr(var, "__pydantic_private__", None)
        node = _new(Node)
        _setattr(
            node,
            "__dict__",
            {
                "op": opname,
                "inputs": tuple([v.name for v in values]),
                "outputs": (var,),
                "attrs": dict(plain),
                "bodies": {},
                "loc": loc,
            },
        )
        _setattr(node, "__pydantic_fields_set__", _NODE_SET)
        _setattr(node, "__pydantic_extra__", None)
        _setattr(node, "__pydantic_private__", None)
        self._nodes.append(node)
        self._ops.add(opname)
        types[name] = t
        return Value(self, name, t)

    def _ancestors(self) -> Iterator[Graph]:
        g = self.parent
        while g is not None:
            yield g
            g = g.parent

    def _own(self, v: Value) -> Value:
        """``v`` as a value of this graph: an enclosing graph's value is captured."""
        if v.graph is self:
            return v
        if not any(v.graph is a for a in self._ancestors()):
            raise GraphError(
                f"{_where()}value '{v.name}' belongs to graph '{v.graph.name}', not '{self.name}'"
                " or a graph enclosing it"
            )
        key = (id(v.graph), v.name)
        if key not in self._captures:
            outer = v if v.graph is self.parent else self.parent._own(v)  # type: ignore[union-attr]
            name = v.name if v.name not in self._types else self.fresh_name(f"{v.name}_")
            self._captures[key] = self.input(name, v.shape, v.dtype)
            self.captured.append(outer)
        return self._captures[key]

    def _lift(self, v: Any, ref: Value | None) -> Value:
        if isinstance(v, Value):
            return self._own(v)
        if isinstance(v, (int, float, np.number, np.ndarray, list)) and not isinstance(v, bool):
            dtype = ref.dtype if ref is not None else None
            if dtype in INT_DTYPES and not _fits(v, dtype):
                raise DTypeError(
                    f"{_where()}{v!r} cannot become a constant of {dtype}, the dtype of"
                    f" '{ref.name}' ({ref.type}), without changing its value; rgraph never"
                    " converts implicitly: use cast"
                )
            return self.const(v, dtype=dtype)
        raise GraphError(f"{_where()}expected a Value or a number, got {type(v).__name__}")

    def _innermost(self, graphs: Iterator[Graph]) -> Graph:
        """The most deeply nested graph among ``graphs`` if it is nested in this one.

        ``W @ x_t`` with ``W`` outside a loop body and ``x_t`` inside is recorded in the body.
        """
        best = self
        for g in graphs:
            if g is not best and any(a is best for a in g._ancestors()):
                best = g
        return best

    def replace_node(self, old: Node, new: Node) -> None:
        """Put ``new`` where ``old`` is (it keeps old's outputs and may add more)."""
        index = next(i for i, n in enumerate(self._nodes) if n is old)
        self._nodes[index] = new
        if new.inputs != old.inputs:  # its inputs may be made later
            self._in_order = False
        self._replaced = True
        for var in new.outputs:
            self._types[var.name] = var.type

    def scan(
        self,
        fn: Any,
        init: Value | Sequence[Value] = (),
        xs: Value | Sequence[Value] = (),
        *,
        length: dims.Dim | None = None,
        reverse: bool = False,
    ) -> tuple[list[Value], list[Value]]:
        """A loop over the leading (time) axis of ``xs``, recorded as one ``scan`` node.

        ``fn(body, carry, x)`` is called once, at build time, with the body's builder and
        lists of symbolic per-step values; it returns ``(new_carry, ys)`` (lists, or single
        Values). Values of this graph that ``fn`` uses (weights) become body inputs. The
        result is ``(final_carry, stacked_ys)``, each ``y`` with a leading time axis.

        >>> import rgraph as rg
        >>> g = rg.Graph(); xs = g.input("xs", ("T", "B", 3)); W = g.param("W", (3, 3))
        >>> def step(b, carry, x):
        ...     h = b.tanh(carry[0] @ W + x[0])
        ...     return [h], [h]
        >>> (h_last,), (hs,) = g.scan(step, init=[g.input("h0", ("B", 3))], xs=[xs])
        >>> hs.type
        TensorType(dtype='float64', shape=('T', 'B', 3))
        """
        init = [self._own(v) for v in _as_list(init)]
        xs = [self._own(v) for v in _as_list(xs)]
        for v in xs:
            if v.ndim < 1:
                raise GraphError(
                    f"{_where()}scan xs '{v.name}' needs a leading time axis: {v.type}"
                )
        body = Graph(self.fresh_name(f"{self.name}_scan"), parent=self)
        carry = [body.input(f"carry{i}", v.shape, v.dtype) for i, v in enumerate(init)]
        x_t = [body.input(f"x{i}", v.shape[1:], v.dtype) for i, v in enumerate(xs)]
        result = fn(body, carry, x_t)
        if not (isinstance(result, tuple) and len(result) == 2):
            raise GraphError(f"{_where()}a scan step function returns (new_carry, ys)")
        new_carry = [body._lift(v, None) for v in _as_list(result[0])]
        ys = [body._lift(v, None) for v in _as_list(result[1])]
        if len(new_carry) != len(init):
            raise GraphError(
                f"{_where()}scan step returned {len(new_carry)} carries for {len(init)} initial"
            )
        for value in new_carry + ys:
            if value.name in body._outputs:  # each body output is a distinct value
                value = body.op("identity", value)
            body._outputs.append(value.name)
        out = self.op(
            "scan",
            *init,
            *xs,
            *body.captured,
            body=body.ir,
            num_carry=len(init),
            num_xs=len(xs),
            length=length,
            reverse=reverse,
        )
        out = list(out) if isinstance(out, tuple) else [out]
        return out[: len(init)], out[len(init) :]

    def __getattr__(self, name: str) -> Any:
        """Registry ops as methods: ``g.tanh(x)``, ``g.eltmul(a, b)``, ``g.mul(W, x)``."""
        if name.startswith("_"):
            raise AttributeError(name)
        opname = ALIASES.get(name, name)
        if opname not in REGISTRY:
            raise AttributeError(f"'Graph' has no attribute or op {name!r}")
        return lambda *args, **kw: self.op(opname, *args, **kw)

    def __dir__(self) -> list[str]:
        return sorted(set(super().__dir__()) | set(REGISTRY) | set(ALIASES))


def _fits(value: Any, dtype: str) -> bool:
    """Whether a Python number (or array) converts to ``dtype`` without changing."""
    try:
        given = np.asarray(value)
        with np.errstate(all="ignore"):
            return bool(np.array_equal(given.astype(dtype), given))
    except (OverflowError, TypeError, ValueError):
        return False


def _fmt_loc(loc: SourceLoc | None) -> str:
    return f"{loc}: " if loc is not None else ""


def _where() -> str:
    return _fmt_loc(caller_location())


def _as_list(values: Any) -> list[Any]:
    return list(values) if isinstance(values, (list, tuple)) else [values]
