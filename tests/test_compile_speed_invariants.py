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
        assert gc.get_freeze_count() == frozen
    finally:
        gc.unfreeze()
