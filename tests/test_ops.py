"""Table-driven op tests: every row of ``tests/op_cases.py`` expanded into

1. shape/dtype inference against the numpy reference's output,
2. kernel values against the reference (tight in float64, looser in float32),
3. finite-difference gradient checks of every differentiable input (and exact zeros, or
   NotDifferentiableError, where an op has no gradient to give),
4. coverage: every registered op has rows, and their gradient disposition matches the op,
5. symbolic dims: names survive inference and one program runs at two sizes.

Hypothesis adds broadcasting shapes, reshape targets, reduction axes and slice bounds.
"""

from __future__ import annotations

import zlib
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import rgraph as rg
from rgraph.errors import NotDifferentiableError, ShapeError
from rgraph.ir import dims
from rgraph.ir.op import REGISTRY, KernelContext, get_op
from rgraph.ir.verify import problems

try:  # run as a package (tests/__init__.py) or as a rootless test directory
    from tests import op_cases
except ImportError:  # pragma: no cover - depends on how pytest imports the tests
    import op_cases  # type: ignore[no-redef]

CASES = op_cases.CASES
Case = op_cases.Case

FAST = settings(max_examples=25, deadline=None, derandomize=True)


# --- helpers -----------------------------------------------------------------------------


def concrete(shape: tuple[Any, ...], binding: dict[str, int]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) else dims.evaluate(d, binding) for d in shape)


def arrays_for(case: Case, dtype: str, binding: dict[str, int], salt: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(zlib.crc32(case.id.encode()) + salt)
    out = []
    for arg in case.args:
        want = np.dtype(arg.resolve_dtype(dtype))
        arr = np.asarray(arg.gen(rng, concrete(arg.shape, binding), want))
        assert arr.dtype == want, f"{case.id}: generator gave {arr.dtype}, want {want}"
        out.append(arr)
    return out


def build(
    case: Case,
    dtype: str,
    *,
    binding: dict[str, int] | None = None,
    as_params: frozenset[int] = frozenset(),
) -> tuple[rg.Graph, list[rg.Value]]:
    """``op(*args)`` on fresh inputs ``x0, x1, ...`` (concrete shapes if ``binding``)."""
    g = rg.Graph(case.id.replace("-", "_"))
    pos, kw = [], {}
    for i, arg in enumerate(case.args):
        shape = arg.shape if binding is None else concrete(arg.shape, binding)
        dt = arg.resolve_dtype(dtype)
        v = g.param(f"x{i}", shape, dt) if i in as_params else g.input(f"x{i}", shape, dt)
        if arg.keyword:
            kw[arg.keyword] = v
        else:
            pos.append(v)
    out = g.op(case.op, *pos, **kw, **case.attrs_for(dtype))
    outs = list(out) if isinstance(out, tuple) else [out]
    for k, o in enumerate(outs):
        g.output(o, name=f"y{k}")
    return g, outs


def as_tuple(x: Any) -> tuple[np.ndarray, ...]:
    return tuple(np.asarray(v) for v in x) if isinstance(x, tuple) else (np.asarray(x),)


def upcast(arrays: list[np.ndarray]) -> list[np.ndarray]:
    return [a.astype(np.float64) if a.dtype == np.float32 else a for a in arrays]


def reference(case: Case, dtype: str, arrays: list[np.ndarray]):
    """(dtypes of the reference at the row's dtype, values computed in float64)."""
    kw, kw64 = {}, {}
    if case.ref_dtype:
        kw = {"dtype": dtype}
        kw64 = {"dtype": "float64" if dtype == "float32" else dtype}
    at_dtype = as_tuple(case.ref(*[a.copy() for a in arrays], **kw))
    values = as_tuple(case.ref(*upcast([a.copy() for a in arrays]), **kw64))
    return [v.dtype for v in at_dtype], values


def assert_matches(case: Case, actual, expected_dtype, expected, what: str) -> None:
    assert actual.dtype == expected_dtype, f"{what}: dtype {actual.dtype} != {expected_dtype}"
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if actual.dtype.kind == "f":
        rtol, atol = case.tol[actual.dtype.name]
        np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=what)
    else:
        np.testing.assert_array_equal(actual, expected, err_msg=what)


def feeds_of(arrays: list[np.ndarray], skip: frozenset[int] = frozenset()) -> dict[str, Any]:
    return {f"x{i}": a for i, a in enumerate(arrays) if i not in skip}


def diff_args(case: Case) -> list[int]:
    return [i for i, a in enumerate(case.args) if a.differentiable("float64")]


def rows(pred=lambda c: True) -> list[Any]:
    return [pytest.param(c, id=c.id) for c in CASES if pred(c)]


def rows_by_dtype(pred=lambda c: True) -> list[Any]:
    return [pytest.param(c, d, id=f"{c.id}-{d}") for c in CASES if pred(c) for d in c.dtypes]


# --- 1. shape and dtype inference ---------------------------------------------------------


@pytest.mark.parametrize(("case", "dtype"), rows_by_dtype())
def test_infer_matches_reference(case: Case, dtype: str) -> None:
    g, outs = build(case, dtype)
    assert problems(g.ir) == [], "the verifier re-derives a different type"
    for binding in case.bindings:  # symbolic rows: the inferred dims at each size
        want_dtypes, want = reference(case, dtype, arrays_for(case, dtype, binding))
        assert len(outs) == len(want), f"{len(outs)} outputs, reference has {len(want)}"
        for out, dt, ref in zip(outs, want_dtypes, want):
            assert out.dtype == dt.name
            assert concrete(out.shape, binding) == ref.shape


# --- 2. kernels ---------------------------------------------------------------------------


@pytest.mark.parametrize(("case", "dtype"), rows_by_dtype(lambda c: not c.symbolic))
def test_kernel_matches_reference(case: Case, dtype: str) -> None:
    g, _ = build(case, dtype)
    arrays = arrays_for(case, dtype, {})
    result = rg.compile(g).run(feeds_of(arrays))
    want_dtypes, want = reference(case, dtype, arrays)
    for k, (dt, ref) in enumerate(zip(want_dtypes, want)):
        assert_matches(case, result[f"y{k}"], dt, ref, f"{case.id} output {k}")


def _writes_out(case: Case) -> bool:
    return get_op(case.op).writes_out


@pytest.mark.parametrize("layout", ["contiguous", "strided"])
@pytest.mark.parametrize(
    ("case", "dtype"), rows_by_dtype(lambda c: not c.symbolic and _writes_out(c))
)
def test_out_kernels_write_the_value_they_return(case: Case, dtype: str, layout: str) -> None:
    """A loop gives ``writes_out`` kernels a buffer, and the interpreter a slice of a
    concat's array (strided): the same bits must land in it."""
    g, _ = build(case, dtype)
    node = next(n for n in g.ir.nodes if n.op == case.op)
    op = get_op(node.op)
    kernel = op.kernel(op.node_attrs(node), KernelContext({}))
    arrays = arrays_for(case, dtype, {})
    want = np.asarray(kernel(*[a.copy() for a in arrays]))
    if layout == "strided" and want.ndim == 0:
        pytest.skip("a 0-d value has no strided layout")
    stale = np.nan if want.dtype.kind == "f" else -7  # stale contents must not leak through
    if layout == "strided":  # a slice along the last axis, as of a concat's array
        out = np.full((*want.shape[:-1], want.shape[-1] + 3), stale, want.dtype)[..., 1:-2]
    else:
        out = np.full(want.shape, stale, want.dtype)
    got = kernel(*[a.copy() for a in arrays], out=out)
    assert got is out, f"{case.id}: the kernel returned another array than out"
    np.testing.assert_array_equal(out, want, err_msg=case.id)


@pytest.mark.parametrize(
    ("case", "dtype"),
    rows_by_dtype(lambda c: not c.symbolic and _writes_out(c)),
)
def test_out_kernels_write_a_column_of_a_wider_array(case: Case, dtype: str) -> None:
    """A concat's piece of width 1, read from a column of a wider array (a split's piece)
    and written into a column of the concat's array. (NumPy 2.4's ``np.negative`` reads
    the wrong elements there: rgraph's ``neg`` must not.)"""
    g, _ = build(case, dtype)
    node = next(n for n in g.ir.nodes if n.op == case.op)
    op = get_op(node.op)
    kernel = op.kernel(op.node_attrs(node), KernelContext({}))
    arrays = arrays_for(case, dtype, {})
    if any(a.ndim < 2 or a.shape != arrays[0].shape for a in arrays):
        pytest.skip("not elementwise on arrays of one shape with rows")
    columns = [np.ascontiguousarray(a[..., 1:2]) for a in arrays]
    want = np.asarray(kernel(*[c.copy() for c in columns]))
    if want.ndim == 0 or want.shape[-1] != 1:
        pytest.skip("its value has no column to write (a reduction over the last axis)")
    # Strided columns of 8-column arrays: the stride at which NumPy 2.4.6's np.negative
    # reads wrong elements.
    wide = []
    for c in columns:
        w = np.zeros((*c.shape[:-1], 8), c.dtype)
        w[..., 1:2] = c
        wide.append(w[..., 1:2])
    assert all(np.array_equal(w, c) and not w.flags.c_contiguous for w, c in zip(wide, columns))
    stale = np.nan if want.dtype.kind == "f" else -7
    out = np.full((*want.shape[:-1], 5), stale, want.dtype)[..., 2:3]
    got = kernel(*wide, out=out)
    assert got is out, f"{case.id}: the kernel returned another array than out"
    np.testing.assert_array_equal(out, want, err_msg=case.id)


# --- 3. gradients -------------------------------------------------------------------------


def _analytic_grads(g: rg.Graph, arrays, params, wrt) -> dict[str, np.ndarray]:
    """The compiled backward's gradients for random cotangents of every output."""
    outs = list(g.ir.outputs)
    feeds, p = feeds_of(arrays, params), {f"x{i}": arrays[i] for i in params}
    first = rg.compile(g).run(feeds, p)
    rng = np.random.default_rng(1)
    cts = {n: rng.standard_normal(first[n].shape).astype(first[n].dtype) for n in outs}
    return rg.compile(g, cotangents=outs, wrt=wrt).run(feeds, p, cotangents=cts).grads


@pytest.mark.parametrize("case", rows(lambda c: c.grad == "check"))
def test_gradient_matches_finite_differences(case: Case) -> None:
    wrt_idx = diff_args(case)
    wrt = [f"x{i}" for i in wrt_idx]
    for binding in case.bindings:
        # Concrete rows take their float inputs as parameters, symbolic rows as inputs.
        params = frozenset() if case.symbolic else frozenset(wrt_idx)
        g, _ = build(case, "float64", as_params=params)
        arrays = arrays_for(case, "float64", binding)
        p = {f"x{i}": arrays[i] for i in params}
        report = rg.gradcheck(g, feeds_of(arrays, params), p, wrt=wrt)
        assert report.ok and [t.name for t in report.tensors] == wrt

        # Not vacuous: a gradient that should flow is non-zero; one that should not is 0.
        grads = _analytic_grads(g, arrays, params, wrt)
        for i in wrt_idx:
            grad = grads[f"x{i}"]
            assert grad.shape == arrays[i].shape and grad.dtype == arrays[i].dtype
            if case.args[i].zero_grad:
                assert np.all(grad == 0), f"input {i} should get an exactly zero gradient"
            elif grad.size:
                assert np.any(grad != 0), f"input {i} got an all-zero gradient"


@pytest.mark.parametrize("case", rows(lambda c: c.grad == "raises"))
def test_no_vjp_raises_not_differentiable(case: Case) -> None:
    g, _ = build(case, "float64")
    arrays = arrays_for(case, "float64", case.bindings[0])
    wrt = [f"x{i}" for i in diff_args(case)]
    assert wrt, "a row expecting NotDifferentiableError needs a float input"
    with pytest.raises(NotDifferentiableError, match=case.op):
        rg.gradcheck(g, feeds_of(arrays), wrt=wrt)


@pytest.mark.parametrize("case", rows(lambda c: any(a.zero_grad for a in c.args)))
def test_zero_gradient_inputs_are_exactly_zero_in_float32(case: Case) -> None:
    # float64 is covered by the gradient test; float32 graphs differentiate too.
    wrt_idx = diff_args(case)
    g, _ = build(case, "float32")
    arrays = arrays_for(case, "float32", case.bindings[0])
    grads = _analytic_grads(g, arrays, frozenset(), [f"x{i}" for i in wrt_idx])
    for i in wrt_idx:
        assert grads[f"x{i}"].dtype == np.float32
        if case.args[i].zero_grad:
            assert np.all(grads[f"x{i}"] == 0)


# --- 4. the table covers the registry -----------------------------------------------------


def test_every_registered_op_has_a_row() -> None:
    covered = {c.op for c in CASES}
    missing = sorted(set(REGISTRY) - covered)
    assert not missing, f"ops without a row in tests/op_cases.py: {missing}"
    unknown = sorted(covered - set(REGISTRY))
    assert not unknown, f"rows for ops that are not registered: {unknown}"


def test_gradient_dispositions_match_the_ops() -> None:
    for name, op in REGISTRY.items():
        kinds = {c.grad for c in CASES if c.op == name}
        if op.arity[1] == 0:  # no inputs, nothing to differentiate
            continue
        want = "check" if op.differentiable else "raises"
        assert want in kinds, f"op '{name}' needs a row with grad={want!r}"
    for c in CASES:
        op = REGISTRY[c.op]
        if c.grad == "check":
            assert op.differentiable, f"{c.id}: op has no VJP but the row checks gradients"
            assert "float64" in c.dtypes and diff_args(c), f"{c.id}: nothing to gradcheck"
        elif c.grad == "raises":
            assert not op.differentiable, f"{c.id}: op is differentiable"


def test_table_has_non_square_and_symbolic_rows() -> None:
    def non_square(c: Case) -> bool:
        return any(len(set(a.shape)) > 1 for a in c.args if len(a.shape) >= 2)

    for name in REGISTRY:
        mine = [c for c in CASES if c.op == name]
        if any(len(a.shape) >= 2 for c in mine for a in c.args):
            assert any(non_square(c) for c in mine), f"op '{name}' has only square rows"
    assert sum(c.symbolic for c in CASES) >= 20


# --- 5. symbolic dims ---------------------------------------------------------------------


@pytest.mark.parametrize(("case", "dtype"), rows_by_dtype(lambda c: c.symbolic))
def test_symbolic_dims_keep_names_and_run_at_two_sizes(case: Case, dtype: str) -> None:
    g, outs = build(case, dtype)
    assert [o.shape for o in outs] == [tuple(s) for s in case.sym_out]
    assert len({tuple(sorted(b.items())) for b in case.bindings}) >= 2
    prog = rg.compile(g)  # one program, run at every size
    for binding in case.bindings:
        arrays = arrays_for(case, dtype, binding)
        result = prog.run(feeds_of(arrays))
        want_dtypes, want = reference(case, dtype, arrays)
        for k, (out, dt, ref) in enumerate(zip(outs, want_dtypes, want)):
            assert concrete(out.shape, binding) == ref.shape
            what = f"{case.id} output {k} at {binding}"
            assert_matches(case, result[f"y{k}"], dt, ref, what)


# --- hypothesis: shapes drawn at random ---------------------------------------------------


def _run_single(g: rg.Graph, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return rg.compile(g).run(feeds)["y"]


@FAST
@given(
    op=st.sampled_from(sorted(op_cases.BINARY_REFS)),
    shapes=hnp.mutually_broadcastable_shapes(num_shapes=2, min_dims=0, max_dims=3, max_side=3),
    dtype=st.sampled_from(op_cases.FLOATS),
)
def test_binary_broadcasting(op: str, shapes, dtype: str) -> None:
    sa, sb = shapes.input_shapes
    rng = np.random.default_rng(0)
    a = rng.uniform(-2, 2, sa).astype(dtype)
    b = op_cases.away(0.5, 2.0)(rng, sb, np.dtype(dtype))
    g = rg.Graph("binary")
    y = g.op(op, g.input("a", sa, dtype), g.input("b", sb, dtype))
    assert y.shape == np.broadcast_shapes(sa, sb) == shapes.result_shape
    assert y.dtype == dtype
    g.output(y, name="y")
    out = _run_single(g, {"a": a, "b": b})
    want = op_cases.BINARY_REFS[op](a.astype(np.float64), b.astype(np.float64))
    rtol, atol = op_cases.DEFAULT_TOL[dtype]
    assert out.dtype == dtype
    np.testing.assert_allclose(out, want, rtol=rtol, atol=atol)
    if dtype == "float64":  # gradients are reduced back over the broadcast axes
        assert rg.gradcheck(g, {"a": a, "b": b}, wrt=["a", "b"]).ok


@st.composite
def reshape_targets(draw):
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=0, max_size=4)))
    n = int(np.prod(shape, dtype=np.int64))
    factors: list[int] = []
    rest = n
    for p in (2, 3):
        while rest % p == 0:
            factors.append(p)
            rest //= p
    factors = draw(st.permutations(factors))
    target: list[int] = []
    for f in factors:  # group the prime factors into dims, with some 1s thrown in
        if target and draw(st.booleans()):
            target[-1] *= f
        else:
            target.append(f)
        if draw(st.integers(0, 4)) == 0:
            target.append(1)
    if target and draw(st.booleans()):
        target[draw(st.integers(0, len(target) - 1))] = -1
    return shape, target


@FAST
@given(shape_target=reshape_targets())
def test_reshape_targets(shape_target) -> None:
    shape, target = shape_target
    x = np.random.default_rng(0).uniform(-1, 1, shape)
    want = x.reshape(target)
    g = rg.Graph("reshape")
    y = g.reshape(g.input("x", shape), shape=target)
    assert y.shape == want.shape
    g.output(y, name="y")
    np.testing.assert_array_equal(_run_single(g, {"x": x}), want)
    assert rg.gradcheck(g, {"x": x}, wrt=["x"]).ok


@FAST
@given(
    data=st.data(),
    shape=st.lists(st.integers(1, 3), min_size=1, max_size=4).map(tuple),
    op=st.sampled_from(["sum", "mean"]),
    keepdims=st.booleans(),
)
def test_reduction_axes(data, shape, op: str, keepdims: bool) -> None:
    rank = len(shape)
    picked = data.draw(st.lists(st.integers(0, rank - 1), unique=True, max_size=rank))
    axes = [ax - rank if data.draw(st.booleans()) else ax for ax in picked]
    x = np.random.default_rng(0).uniform(-1, 1, shape)
    want = getattr(np, op)(x, axis=tuple(axes), keepdims=keepdims)
    g = rg.Graph("reduce")
    y = g.op(op, g.input("x", shape), axes=axes, keepdims=keepdims)
    assert y.shape == want.shape
    g.output(y, name="y")
    np.testing.assert_allclose(_run_single(g, {"x": x}), want, rtol=1e-12, atol=1e-14)
    assert rg.gradcheck(g, {"x": x}, wrt=["x"]).ok


@FAST
@given(
    dim=st.integers(0, 6),
    start=st.none() | st.integers(-8, 8),
    stop=st.none() | st.integers(-8, 6),
    step=st.integers(1, 3),
)
def test_slice_bounds(dim: int, start, stop, step: int) -> None:
    x = np.random.default_rng(0).uniform(-1, 1, (2, dim))
    g = rg.Graph("slice")
    attrs = {"axis": 1, "start": start, "stop": stop, "step": step}
    if stop is not None and stop > dim:
        with pytest.raises(ShapeError, match="past"):
            g.slice(g.input("x", (2, dim)), **attrs)
        return
    want = x[:, start:stop:step]
    y = g.slice(g.input("x", (2, dim)), **attrs)
    assert y.shape == want.shape
    g.output(y, name="y")
    np.testing.assert_array_equal(_run_single(g, {"x": x}), want)
    assert rg.gradcheck(g, {"x": x}, wrt=["x"]).ok
