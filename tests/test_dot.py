"""``rgraph dot`` and :mod:`rgraph.dot`: DOT text that Graphviz accepts, loops as clusters.

Structural assertions on the text run always; the checks that Graphviz itself accepts the
text (and renders SVG/PNG) are skipped when the ``dot`` program is not installed.
"""

from __future__ import annotations

import contextlib
import functools
import io
import re
import shutil
import subprocess
import time

import pytest

import rgraph as rg
from rgraph import dot as dotlib
from rgraph import nn
from rgraph.cli import main
from rgraph.errors import GraphError
from rgraph.ir.graph import GraphIR, Node, Var
from rgraph.ir.types import construct, make_type

HAVE_DOT = shutil.which("dot") is not None
needs_dot = pytest.mark.skipif(not HAVE_DOT, reason="Graphviz's dot is not installed")

NODE_LINE = re.compile(r"^\s*(n\d+) \[(.*)\];$")
EDGE_LINE = re.compile(r'^\s*(n\d+) -> (n\d+) \[label="((?:[^"\\]|\\.)*)"(.*)\];$')


def run(*argv: object) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main([str(a) for a in argv])
    return status, out.getvalue(), err.getvalue()


def char_graph(steps: int | str = "T", vocab: int = 7) -> rg.Graph:
    g = rg.Graph("charlm")
    nn.language_model(g, vocab, hidden_sizes=(4,), letter_size=3, steps=steps)
    return g


class Parsed:
    """Node declarations (with the cluster each is declared in) and edges of DOT text."""

    def __init__(self, text: str):
        self.nodes: dict[str, str] = {}  # id -> attributes
        self.cluster_of: dict[str, str | None] = {}
        self.edges: list[tuple[str, str, str, str]] = []
        self.clusters: list[str] = []
        stack: list[str] = []
        for line in text.splitlines()[1:-1]:
            stripped = line.strip()
            if stripped.startswith("subgraph cluster_"):
                stack.append(stripped.split()[1])
                self.clusters.append(stack[-1])
            elif stripped == "}":
                stack.pop()
            elif m := EDGE_LINE.match(line):
                assert not stack, f"edge inside a cluster: {line}"
                self.edges.append(m.groups())
            elif m := NODE_LINE.match(line):
                self.nodes[m.group(1)] = m.group(2)
                self.cluster_of[m.group(1)] = stack[-1] if stack else None
        assert not stack

    def labelled(self, first_line: str, top: bool = True) -> list[str]:
        """Ids of nodes whose label starts with ``first_line`` (top-level ones only)."""
        return [
            i
            for i, attrs in self.nodes.items()
            if f'label="{first_line}\\n' in attrs and not (top and self.cluster_of[i])
        ]


# --- structure of the text (always) -----------------------------------------------------


def test_char_model_loop_body_is_a_cluster_with_its_own_nodes_and_captured_edges():
    g = char_graph()
    text = dotlib.to_dot(g)
    p = Parsed(text)
    assert text.startswith('digraph "charlm" {') and text.rstrip().endswith("}")
    assert len(p.clusters) == 1
    cluster = p.clusters[0]
    body = g.ir.nodes[[n.op for n in g.ir.nodes].index("scan")].bodies["body"]
    inside = [i for i, c in p.cluster_of.items() if c == cluster]
    # Every body input, body const and body node is declared inside the cluster.
    assert len(inside) == len(body.inputs) + len(body.consts) + len(body.nodes)
    # Every top-level node is outside it.
    assert len(p.nodes) - len(inside) == (
        len(g.ir.inputs) + len(g.ir.params) + len(g.ir.consts) + len(g.ir.nodes) + 4
    )
    # Captured weights: an edge from the top-level param node bi0 into the cluster.
    (bi0,) = p.labelled("bi0")
    assert p.cluster_of[bi0] is None
    targets = [dst for src, dst, _, _ in p.edges if src == bi0]
    assert targets and all(p.cluster_of[t] == cluster for t in targets)
    assert "(captured)" in p.nodes[targets[0]]
    # The per-step slice of the embeddings enters as an x_t, the carries go round.
    assert any("(x_t)" in p.nodes[i] for i in inside)
    assert sum("(carry)" in p.nodes[i] for i in inside) == 2
    assert sum(label == "next step" for _, _, label, _ in p.edges) == 2
    assert re.search(r'subgraph cluster_n\d+ \{\n\s+graph \[label="scan body', text)


def test_shapes_on_edges_and_styles_apart():
    g = char_graph(vocab=7)
    p = Parsed(dotlib.to_dot(g))
    labels = {label for _, _, label, _ in p.edges}
    assert {"f64[T,B,7]", "i32[T,B]", "f64[B,4]", "f64[7,4]", "f64[]"} <= labels
    # The scan node's outputs are named on their edges (it has three).
    assert any(re.fullmatch(r"t\d+: f64\[T,B,4\]", label) for label in labels)
    for param in g.ir.params:
        (i,) = p.labelled(param.name)
        assert p.nodes[i].startswith(dotlib.STYLE_PARAM)
    for v in g.ir.inputs:
        (i,) = p.labelled(v.name)
        assert p.nodes[i].startswith(dotlib.STYLE_INPUT)
    outputs = [i for i, a in p.nodes.items() if a.startswith(dotlib.STYLE_OUTPUT)]
    assert len(outputs) == len(g.ir.outputs) == 4
    ops = [i for i, a in p.nodes.items() if a.startswith(dotlib.STYLE_OP)]
    body = next(n for n in g.ir.nodes if n.bodies).bodies["body"]
    assert len(ops) == len(g.ir.nodes) + len(body.nodes)
    assert dotlib.STYLE_PARAM != dotlib.STYLE_OP and "box" in dotlib.STYLE_PARAM
    assert "ellipse" in dotlib.STYLE_INPUT and "peripheries=2" in dotlib.STYLE_OUTPUT


def test_loops_are_never_unrolled():
    short = Parsed(dotlib.to_dot(char_graph(steps=3)))
    long = Parsed(dotlib.to_dot(char_graph(steps=500)))
    assert len(short.nodes) == len(long.nodes) and len(short.edges) == len(long.edges)
    assert 'f64[500,B,4]"' in dotlib.to_dot(char_graph(steps=500))


def test_names_are_quoted_and_escaped():
    assert dotlib.quote('a"b\\c\nd') == '"a\\"b\\\\c\\nd"'
    g = rg.Graph("odd names")
    x = g.input("x.in", (2,))
    W = g.param("W.weight", (2,))
    g.output(g.sum(W * x), name="loss")
    text = dotlib.backward_dot(g)
    assert 'label="W.weight.grad\\nf64[2]"' in text
    assert text.startswith('digraph "odd names" {')
    ids = re.findall(r"^\s*(\S+) \[", text, re.M)
    assert all(re.fullmatch(r"n\d+|graph|node|edge", i) for i in ids)


def test_backward_graph_has_more_nodes_and_tints_them():
    g = char_graph()
    forward = Parsed(dotlib.to_dot(g))
    text = dotlib.backward_dot(g)
    backward = Parsed(text)
    # The forward graph, and at least a node per parameter's gradient besides.
    assert len(backward.nodes) > len(forward.nodes) + len(g.ir.params)
    # The forward scan, the reverse one (BPTT), and the map of the derivatives (tile).
    assert len(backward.clusters) == 3
    assert "reverse" in text
    tinted = [i for i, a in backward.nodes.items() if a.startswith(dotlib.STYLE_BACKWARD_OP)]
    assert len(tinted) > 10
    grads = [i for i, a in backward.nodes.items() if ".grad\\n" in a]
    assert len(grads) == len(g.ir.params)
    assert all(backward.nodes[i].startswith(dotlib.STYLE_OUTPUT) for i in grads)
    # The forward graph's own nodes are not tinted: the loss too, which the compiled
    # program makes together with its gradient (fuse_losses).
    (sce,) = [
        i for i, a in backward.nodes.items() if 'label="softmax_cross_entropy_and_grad\\n' in a
    ]
    assert backward.nodes[sce].startswith(dotlib.STYLE_OP)


def test_backward_needs_a_scalar_loss():
    g = rg.Graph("noloss")
    x = g.input("x", (3,))
    g.output(g.tanh(x), name="y")
    with pytest.raises(GraphError, match=r"no output named 'loss'.*outputs: y"):
        dotlib.backward_dot(g)
    with pytest.raises(GraphError, match="not a float scalar"):
        dotlib.backward_dot(g, loss="y")


# --- the command --------------------------------------------------------------------------


@pytest.fixture
def model_file(tmp_path):
    g = char_graph()
    path = tmp_path / "m.rgraph"
    rg.save(path, g, rg.init_params(g, 0), fsync=False)
    return path


def test_cli_writes_dot_to_stdout_and_to_a_file(model_file, tmp_path):
    status, out, err = run("dot", model_file)
    assert (status, err) == (0, "")
    assert out == dotlib.to_dot(rg.load(model_file).graph)
    status, _, err = run("dot", model_file, "--backward", "-o", tmp_path / "b.dot")
    assert (status, err) == (0, "")
    text = (tmp_path / "b.dot").read_text()
    assert text == dotlib.backward_dot(rg.load(model_file).graph)


def test_cli_bad_usage_exits_2(model_file, tmp_path):
    status, _, err = run("dot", model_file, "-o", tmp_path / "x.jpg")
    assert status == 2 and "unknown extension" in err and ".svg" in err
    status, _, err = run("dot", tmp_path / "missing.rgraph")
    assert status == 2 and "does not exist" in err
    status, _, err = run("dot", model_file, "--backward", "--loss", "logits")
    assert status == 2 and "not a float scalar" in err
    status, _, err = run("dot", model_file, "--backward", "--loss", "nope")
    assert status == 2 and err.count("\n") == 1 and "no output named 'nope'" in err


def test_cli_without_graphviz_says_how_to_install_it(model_file, tmp_path, monkeypatch):
    monkeypatch.setattr(shutil, "which", lambda name: None)
    status, out, err = run("dot", model_file, "-o", tmp_path / "x.svg")
    assert status == 1 and out == ""
    assert "apt-get install graphviz" in err and err.count("\n") == 1
    assert not (tmp_path / "x.svg").exists()
    status, _, _ = run("dot", model_file, "-o", tmp_path / "x.dot")
    assert status == 0 and (tmp_path / "x.dot").read_text().startswith("digraph")


@needs_dot
@pytest.mark.parametrize("backward", [False, True])
def test_graphviz_accepts_the_text(backward):
    g = char_graph()
    text = dotlib.backward_dot(g) if backward else dotlib.to_dot(g)
    done = subprocess.run(["dot", "-Tsvg"], input=text.encode(), capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    assert done.stderr == b""  # no warnings either
    svg = done.stdout.decode()
    assert "<svg" in svg and 'class="cluster"' in svg


@needs_dot
def test_cli_renders_svg_and_png(model_file, tmp_path):
    status, _, err = run("dot", model_file, "-o", tmp_path / "m.svg")
    assert (status, err) == (0, "")
    assert "<svg" in (tmp_path / "m.svg").read_text()
    status, _, err = run("dot", model_file, "-o", tmp_path / "m.png")
    assert (status, err) == (0, "")
    assert (tmp_path / "m.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@needs_dot
def test_graphviz_errors_are_reported(model_file, tmp_path, monkeypatch):
    monkeypatch.setattr(dotlib, "to_dot", lambda graph: "digraph { this is not dot")
    status, _, err = run("dot", model_file, "-o", tmp_path / "m.svg")
    assert status == 1 and "dot failed" in err


# --- a 100,000-node chain -----------------------------------------------------------------

CHAIN = 100_000


@functools.lru_cache(maxsize=1)
def chain_ir(n: int = CHAIN) -> GraphIR:
    """x -> tanh -> tanh -> ... (n nodes), built directly as IR (the builder is slower).

    Built once per test run (IR is immutable): test_diff.py uses it too.
    """
    t = make_type("float64", ("B", 4))
    nodes, prev = [], "x"
    for k in range(n):
        out = construct(Var, name=f"t{k}", type=t)
        nodes.append(
            construct(
                Node, op="tanh", inputs=(prev,), outputs=(out,), attrs={}, bodies={}, loc=None
            )
        )
        prev = out.name
    return construct(
        GraphIR,
        name="chain",
        inputs=(construct(Var, name="x", type=t),),
        params=(),
        consts=(),
        nodes=tuple(nodes),
        outputs=(prev,),
    )


def test_a_100k_node_chain_in_seconds():
    ir = chain_ir()
    start = time.perf_counter()
    text = dotlib.to_dot(ir)
    seconds = time.perf_counter() - start
    print(f"\ndot of a {CHAIN:,}-node chain: {seconds:.2f} s, {len(text) / 1e6:.1f} MB")
    assert seconds < 10  # about half a second on an idle machine; linear, not quadratic
    lines = text.splitlines()
    assert sum(" -> " in line for line in lines) == CHAIN + 1  # input, chain, output
    assert sum('label="tanh\\n' in line for line in lines) == CHAIN
    assert f'label="t{CHAIN - 1}\\nf64[B,4]"' in text


def test_builder_graph_and_its_ir_draw_the_same():
    g = char_graph()
    assert dotlib.to_dot(g) == dotlib.to_dot(g.ir)
