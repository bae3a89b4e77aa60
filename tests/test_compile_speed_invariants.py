"""What the compile-time shortcuts rely on, checked against the slow computations they skip.

Passes keep caches beside the IR (a graph's types, the mark that its nodes are in order),
the builder and the verifier remember inferred types of attribute-less ops, and the IR
shares frozen objects (types, source locations, fields sets). None of it may change a
result or an error: each test compares with what is computed without the shortcut.
"""

from __future__ import annotations

import gc

import numpy as np
import pytest

import rgraph as rg
from rgraph import nn
from rgraph.errors import ShapeError, UndefinedValueError
from rgraph.ir import GraphIR
from rgraph.ir.graph import Node, Var
from rgraph.ir.passes import prune, schedule
from rgraph.ir.types import construct, gc_paused, make_type
from rgraph.ir.verify import problems


def chain(n: int) -> tuple[rg.Graph, rg.Value]:
    g = rg.Graph("chain")
    x = g.input("x", (3,))
    w = g.param("w", (3,))
    h = x * w
    for _ in range(n):
        h = h * 2.0 + 0.25
    return g, g.sum(h)


def programs() -> list[rg.Program]:
    g, loss = chain(20)
    out = [rg.compile(g, loss=loss, wrt=["w"]), rg.compile(g, loss=loss, optimize=False)]
    for kind, unroll in (("lstm", False), ("gru", True)):
        g = rg.Graph(f"lm_{kind}")
        nn.language_model(
            g, vocab=7, kind=kind, hidden_sizes=[5, 4], letter_size=3, dtype="float64",
            steps=4 if unroll else "T", batch=2 if unroll else "B", unroll=unroll,
        )  # fmt: skip
        out.append(rg.compile(g, ["loss", "nll"], loss="loss"))
        out.append(rg.compile(g, ["nll"], cotangents=["nll"]))
    return out


def unmarked(ir: GraphIR) -> GraphIR:
    """The same IR without any cache."""
    return GraphIR.model_validate(ir.model_dump())


def in_order(ir: GraphIR) -> bool:
    defined = {v.name for v in (*ir.inputs, *ir.params, *ir.consts)}
    made = {o.name for n in ir.nodes for o in n.outputs}
    for n in ir.nodes:
        if any(i in made and i not in defined for i in n.inputs):
            return False
        defined.update(o.name for o in n.outputs)
    return True


def test_every_stage_caches_the_types_it_would_compute_and_marks_only_ordered_nodes():
    checked = 0
    for program in programs():
        for stage, ir in program.stages.items():
            fresh = unmarked(ir)
            assert list(ir.types().items()) == list(fresh.types().items()), stage
            assert ir.ops() == fresh.ops(), stage
            if ir.known_scheduled:
                assert in_order(ir), stage
                checked += 1
            assert fresh == ir and not fresh.known_scheduled
    assert checked > 20  # the marks are used, not only allowed


def test_a_copy_with_other_nodes_is_not_taken_for_scheduled():
    g, _ = chain(3)
    ir = g.ir
    assert ir.known_scheduled
    shuffled = ir.model_copy(update={"nodes": ir.nodes[::-1]})  # private caches copied too
    assert not shuffled.known_scheduled
    assert schedule(shuffled).nodes == ir.nodes


def test_prune_sweeping_back_agrees_with_following_producers():
    g, loss = chain(6)
    g.output(loss, name="loss")
    ir = g.ir
    names = [o.name for n in ir.nodes for o in n.outputs]
    for outputs in ([names[3]], [names[0], names[7]], ["x", names[5]], ["w"], names[-2:]):
        fast, slow = prune(ir, outputs), prune(unmarked(ir), outputs)
        assert fast == slow and fast.known_scheduled
    for ir_ in (ir, unmarked(ir)):
        with pytest.raises(UndefinedValueError, match="output 'nope' is not a value"):
            prune(ir_, [names[2], "nope"])


def test_the_builders_types_and_prunes_carry_what_types_would_compute():
    # Declarations between nodes, and constants that pruning drops or keeps.
    g = rg.Graph("mixed")
    x = g.input("x", (3,))
    a = x * 2.0
    w = g.param("w", (3,))
    b = g.tanh(a * w) + g.const(np.ones(3), name="kept")
    dead = g.exp(a) * g.const(np.zeros(3), name="dropped")
    y = g.input("y", (3,))
    g.output(b * y, name="out")
    g.output(dead, name="dead")
    ir = g.ir
    assert ir.known_types() is not None
    assert ir.__pydantic_private__["_ops"] is not None  # noted by the builder, no sweep
    assert ir.ops() == unmarked(ir).ops()
    assert list(ir.types().items()) == list(unmarked(ir).types().items())
    for outputs in (["out"], ["dead"], ["out", "dead"], [a.name]):
        pruned = prune(ir, outputs)
        assert pruned.known_types() is not None, outputs
        assert list(pruned.types().items()) == list(unmarked(pruned).types().items()), outputs
    assert "dropped" not in prune(ir, ["out"]).types()


def test_a_copy_keeps_only_the_caches_that_still_hold():
    g, _ = chain(3)
    ir = g.ir
    ir.ops()
    renamed = ir.replace(name="other", outputs=ir.outputs[:1])
    assert renamed.known_types() is ir.known_types() and renamed.known_scheduled
    fewer = ir.replace(nodes=ir.nodes[:-1])
    assert fewer.known_types() is None and not fewer.known_scheduled
    only_add = ir.replace(nodes=tuple(n for n in ir.nodes if n.op == "add"))
    assert only_add.ops() == {"add"} and ir.ops() == {"eltmul", "add", "sum"}


def _first_ready_order(ir: GraphIR) -> list[int]:
    """The order schedule promises, the plain way: the first listed of the ready nodes."""
    made = {o.name: i for i, n in enumerate(ir.nodes) for o in n.outputs}
    done: list[int] = []
    while len(done) < len(ir.nodes):
        i = next(
            i
            for i, n in enumerate(ir.nodes)
            if i not in done and all(made.get(x, -1) in done or x not in made for x in n.inputs)
        )
        done.append(i)
    return done


def test_schedule_skipping_the_ordered_prefix_gives_the_first_ready_order():
    rng = np.random.default_rng(7)
    for trial in range(60):
        g = rg.Graph(f"random{trial}")
        values = [g.input("x", (2,))]
        for _ in range(int(rng.integers(2, 25))):
            a, b = (values[int(k)] for k in rng.integers(0, len(values), size=2))
            values.append(a + b if rng.random() < 0.5 else g.tanh(a))
        g.output(values[-1], name="y")
        ir = g.ir
        # A prefix in order, then a shuffled rest (as passes leave it: new nodes appended).
        cut = int(rng.integers(0, len(ir.nodes)))
        rest = list(ir.nodes[cut:])
        rng.shuffle(rest)
        shuffled = unmarked(ir.replace(nodes=(*ir.nodes[:cut], *rest)))
        expected = [shuffled.nodes[i] for i in _first_ready_order(shuffled)]
        assert list(schedule(shuffled).nodes) == expected, trial


def test_a_remembered_inference_does_not_hide_a_later_error():
    g = rg.Graph()
    a, b = g.input("a", (3,)), g.input("b", (4,))
    a + a  # remembered: add(f64[3], f64[3])
    with pytest.raises(
        ShapeError, match=r"test_compile_speed_invariants\.py:\d+: add\(a: f64\[3\]"
    ):
        a + b
    ir = GraphIR.model_validate(
        {
            "name": "v",
            "inputs": [{"name": "a", "type": {"dtype": "float64", "shape": [3]}}],
            "nodes": [
                {"op": "add", "inputs": ["a", "a"], "outputs": [{"name": "y", "type": t}]}
                for t in [{"dtype": "float64", "shape": [4]}]
            ],
            "outputs": ["y"],
        }
    )
    (err,) = problems(ir)
    assert isinstance(err, ShapeError) and "declared f64[4], op derives f64[3]" in str(err)


def test_shared_types_and_fields_sets_stay_apart_under_copies():
    t = make_type("float64", (3,))
    assert make_type("float64", (3,)) is t and make_type("float64", ("B",)) is not t
    assert make_type("float64", (np.int64(3),)) == t
    v = construct(Var, name="a", type=t)
    w = construct(Var, name="b", type=t)
    assert v.model_fields_set == {"name", "type"}
    n = construct(Node, op="neg", inputs=("a",), outputs=(w,), attrs={}, bodies={}, loc=None)
    m = n.model_copy(update={"inputs": ("c",)})
    assert m.inputs == ("c",) and n.inputs == ("a",)
    assert n.model_fields_set == {"op", "inputs", "outputs", "attrs", "bodies", "loc"}
    partial = construct(Var, name="c")
    assert partial.model_fields_set == {"name"} and v.model_fields_set == {"name", "type"}


def test_gc_paused_restores_the_collector_and_leaves_a_programs_freeze_alone():
    assert gc.isenabled()
    with gc_paused():
        assert not gc.isenabled()
        junk = [[] for _ in range(1000)]
    assert gc.isenabled() and gc.get_freeze_count() == 0
    del junk
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with gc_paused():
            pass
        # Not unfrozen (0), nor frozen again (more). It counts live objects: one frozen
        # above may have been freed meanwhile (seen once in a full run: 2 fewer).
        assert 0 < gc.get_freeze_count() <= frozen
    finally:
        gc.unfreeze()


def test_the_builders_short_path_makes_the_nodes_the_general_path_makes():
    g = rg.Graph()
    a, b = g.input("a", (3,)), g.input("b", (3,))
    first = a * b  # general path; remembers eltmul(f64[3], f64[3])
    again = a * b  # short path
    n1, n2 = g._nodes
    assert (n1.op, n1.inputs, n1.attrs, n1.bodies, n1.loc.function) == (
        n2.op, n2.inputs, n2.attrs, n2.bodies, n2.loc.function
    )  # fmt: skip
    assert n2.attrs is not n1.attrs  # each node its own attrs dict
    reference = construct(
        Node, op="eltmul", inputs=("a", "b"), outputs=(construct(Var, name=again.name,
        type=first.type),), attrs={}, bodies={}, loc=n2.loc,
    )  # fmt: skip
    assert n2 == reference and n2.outputs[0] == reference.outputs[0]
    for made, ref in ((n2, reference), (n2.outputs[0], reference.outputs[0])):
        assert made.model_fields_set == ref.model_fields_set
        assert made.__pydantic_extra__ is None and made.__pydantic_private__ is None
    assert n2.model_copy(update={"inputs": ("b", "a")}).inputs == ("b", "a")
    assert n2.inputs == ("a", "b")
    assert unmarked(g.ir) == g.ir  # validates: the nodes are well-formed models


def _plan_frees_reference(interp: rg.Interpreter) -> list[tuple[int, ...]]:
    """The interpreter's free plan computed the plain way, by slot."""
    keep = {interp.slot[n] for n in interp.graph.outputs}
    last: dict[int, int] = {}
    for i, node in enumerate(interp.graph.nodes):
        for name in node.inputs:
            last[interp.slot[name]] = i
        for out in node.outputs:
            last.setdefault(interp.slot[out.name], i)
    frees: list[list[int]] = [[] for _ in interp.graph.nodes]
    for slot, i in last.items():
        if slot not in keep:
            frees[i].append(slot)
    return [tuple(f) for f in frees]


def test_the_interpreters_plan_agrees_with_the_plain_computation():
    g = rg.Graph("unused")
    x, _ = g.input("x", (2,)), g.input("unused", (2,))
    w, _ = g.param("w", (2,)), g.param("spare", (2,))
    y = g.output(x * w + 1.0, name="y")
    g.output(x)  # an input that is also an output, read by nodes too
    for program in [*programs(), rg.compile(g, loss=g.sum(y))]:
        for ir in (program.ir, *program.stages.values()):
            interp = rg.Interpreter(ir)
            names = list(ir.types())
            assert list(interp.slot) == names and list(interp.slot.values()) == list(
                range(len(names))
            )
            assert interp._last_use == _plan_frees_reference(interp)
            used = {i for n in ir.nodes for i in n.inputs} | set(ir.outputs)
            assert [p.name for p in interp.params] == [p.name for p in ir.params if p.name in used]
            assert {v.name for v in interp.inputs} == {v.name for v in ir.inputs if v.name in used}
    interp = rg.Interpreter(rg.compile(g, loss=g.sum(y), wrt=["w"]).ir)
    assert [v.name for v in interp.inputs] == ["x"] and [p.name for p in interp.params] == ["w"]


def test_cse_renames_through_chains_of_duplicates():
    g = rg.Graph("dups")
    x = g.input("x", (3,))
    c1, c2 = g.const([1.0, 2.0, 3.0]), g.const([1.0, 2.0, 3.0])
    a1, a2 = x * c1, x * c2  # equal once c2 is c1
    b1, b2 = a1.tanh(), a2.tanh()  # equal once a2 is a1
    b1 * 3.0  # made before keep
    s1, s2 = g.split(b1 + b2, axis=0, sizes=[1, 2]), g.split(b2 + b1, axis=0, sizes=[1, 2])
    keep = g.output(b2 * 3.0)  # defines an output: kept, though equal to b1 * 3
    out = g.output(s1[0] + s2[0] + s1[1].sum() + s2[1].sum(), name="out")
    merged = rg.ir.passes.cse(g.ir)
    assert [n.op for n in merged.nodes].count("tanh") == 1
    assert [n.op for n in merged.nodes].count("split") == 1  # b2 + b1 is then b1 + b1
    assert [n.op for n in merged.nodes].count("eltmul") == 3  # x * c, b1 * 3, keep
    assert merged.outputs == (keep.name, out.name) and len(merged.consts) == 2
    assert merged.known_scheduled and in_order(merged)
    feeds = {"x": np.array([0.1, -0.2, 0.3])}
    for name in (keep.name, out.name):
        expect = rg.Interpreter(g.ir).run(feeds)[name]
        np.testing.assert_array_equal(rg.Interpreter(merged).run(feeds)[name], expect)


def test_autodiff_with_respect_to_an_intermediate_value_and_an_unreached_parameter():
    # The gradient of h was lost (zeros) when w, upstream of h, was also asked for.
    g = rg.Graph()
    x, w, v = g.input("x", (3,)), g.param("w", (3,)), g.param("v", (3,))
    h = (x * w).tanh()
    loss = g.sum(h * h)
    feeds = {"x": np.array([0.5, -1.0, 2.0])}
    params = {"w": np.array([0.3, 0.2, -0.1]), "v": np.ones(3)}
    result = rg.compile(g, loss=loss, wrt=[h, "w", "v"]).run(feeds, params)
    hv = np.tanh(feeds["x"] * params["w"])
    np.testing.assert_allclose(result.grads[h.name], 2 * hv, rtol=1e-12)
    np.testing.assert_allclose(result.grads["w"], 2 * hv * (1 - hv**2) * feeds["x"], rtol=1e-12)
    np.testing.assert_array_equal(result.grads["v"], np.zeros(3))
    alone = rg.compile(g, loss=loss, wrt=[h]).run(feeds, params)
    np.testing.assert_array_equal(alone.grads[h.name], result.grads[h.name])
    del v


def test_merge_matmuls_returns_a_graph_without_products_as_it_is():
    g, _ = chain(4)
    ir = g.ir
    assert rg.ir.passes.merge_matmuls(ir) is ir


def test_attrs_parsed_by_their_dicts_identity_follow_a_change_in_place():
    # A node of its own (the builder's nodes share the lists of equal attributes).
    t = make_type("float64", (2, 6))
    outs = (Var(name="a", type=make_type("float64", (2, 2))), Var(name="b", type=t))
    node = Node(op="split", inputs=("x",), outputs=outs, attrs={"axis": 1, "sizes": [2, 4]})
    op = rg.ir.op.get_op("split")
    assert list(op.attrs_of(node.attrs).sizes) == [2, 4]
    assert op.attrs_of(node.attrs) is op.attrs_of(node.attrs)  # cached
    node.attrs["sizes"][0] = 3  # (the IR is meant to be left alone; still, no stale answer)
    node.attrs["sizes"][1] = 3
    assert list(op.attrs_of(node.attrs).sizes) == [3, 3]
    node.attrs["axis"] = 0
    assert op.attrs_of(node.attrs).axis == 0


def test_nodes_made_from_equal_keywords_share_no_attribute_lists():
    g = rg.Graph("shared")
    x = g.input("x", (2, 6))
    a = g.split(x, axis=1, sizes=[2, 4])
    b = g.split(x * 2.0, axis=1, sizes=[2, 4])
    g.output(a[0] + b[0], name="y")
    first, second = (n for n in g.ir.nodes if n.op == "split")
    assert first.attrs == second.attrs
    assert first.attrs["sizes"] is not second.attrs["sizes"]
