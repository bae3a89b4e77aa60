"""Training throughput of RecurrentJS's character LSTM: rgraph next to its references.

Run by hand (never imported by rgraph, never run in CI)::

    python benchmarks/char_lstm.py                 # A, B, C in float64 and float32
    python benchmarks/char_lstm.py --quick         # fewer steps and repetitions
    python benchmarks/char_lstm.py --check         # loss and gradients equal rgraph's
    python benchmarks/char_lstm.py --profile A,C   # where rgraph's training step goes
    pip install torch==2.13.0                      # optional: the PyTorch columns

The task: one training step of the character model of :func:`rgraph.nn.language_model`
(embedding ``Wil`` -> 2-layer LSTM with RecurrentJS's equations -> decoder ``Whd, bd`` ->
softmax cross-entropy summed over the characters, divided by the batch size), backward,
and RecurrentJS's RMSProp (cache of the unclipped gradient, clip 5, regc 1e-6, lr 0.01),
on batches of sentences of the built-in corpus drawn with a fixed seed, padded to
``(T, B)`` with a mask. Throughput is predicted characters per second (a sentence of n
characters predicts n + 1: each character, then END).

Configs: A: letter 5, hidden [20, 20], batch 1 (the demo); B: letter 32, hidden [128, 128],
batch 1; C: letter 32, hidden [128, 128], batch 32.

Implementations (each starts from the same ``rg.init_params(graph, seed)`` and trains on
the same batches, so rgraph and the hand-written version follow the same losses):

- ``rgraph``: ``rg.compile(g, ["loss", "nll", "count"], loss="loss", specialize={"mask":
  1.0})`` (as ``rg.Trainer`` compiles: batches without padding skip the mask) +
  ``rg.RMSProp``;
- ``handwritten``: ``benchmarks/handwritten_lstm.py``, the fastest numpy step we could
  write (the bar: rgraph must reach 0.9x of it);
- ``torch``: ``torch.nn.LSTM`` (fused kernels), eager autograd; ``torch-cell``: the same
  equations step by step in Python with autograd (``benchmarks/torch_lstm.py``), both only
  when ``import torch`` works, with torch's default threads.

Each implementation runs in its own process (so torch's threads or allocator do not touch
the numpy ones). A process builds the model, runs ``--warmup`` training steps, then one
forward and backward on a batch of every sequence length the measurement will see
(parameters untouched: shape caches warm up, rgraph's with the optimiser's gradient
buffers its steps write into); then the parent asks the processes in turn, in a
rotating order, for repetitions of ``--steps`` training steps on the next batches, and
reports medians; and the median of rgraph's rate over each reference's, round by round
(the machine's slower and faster spells then touch both sides of a ratio). Peak memory
of config C: ``tracemalloc``'s peak for the numpy implementations (from building the
model to the end of a few training steps) and, for every implementation, the growth of
the peak RSS over the RSS before building.
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import platform
import pstats
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np

import rgraph as rg
from rgraph import charlm

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from handwritten_lstm import HandwrittenLSTM  # noqa: E402


@dataclass(frozen=True)
class Config:
    name: str
    letter: int
    hidden: tuple[int, ...]
    batch: int
    steps: int  # training steps per repetition
    warmup: int  # training steps before the repetitions

    def describe(self) -> str:
        return f"letter {self.letter}, hidden {list(self.hidden)}, batch {self.batch}"


CONFIGS = {
    # (A and B: repetitions of about half a second; shorter ones caught single spells of
    # a VM whose speed changes every few seconds)
    "A": Config("A", 5, (20, 20), 1, steps=200, warmup=5),
    "B": Config("B", 32, (128, 128), 1, steps=80, warmup=3),
    "C": Config("C", 32, (128, 128), 32, steps=5, warmup=2),
}
IMPLS = ("rgraph", "handwritten", "torch", "torch-cell")
SEED = 0
LR, REGC, CLIP = 0.01, 1e-6, 5.0


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


# --- the task -------------------------------------------------------------------------


class Task:
    """Corpus, vocabulary, graph and initial parameters of one config and dtype."""

    def __init__(self, cfg: Config, dtype: str):
        self.cfg, self.dtype = cfg, dtype
        self.sentences = charlm.read_corpus()
        self.vocab = charlm.Vocabulary.from_sentences(self.sentences)
        self.encoded = [self.vocab.encode(s) for s in self.sentences]
        self.max_steps = max(len(s) for s in self.encoded) + 1
        self.graph = self.build_graph()
        self.params = rg.init_params(self.graph, SEED)

    def build_graph(self) -> rg.Graph:
        g = rg.Graph(f"char_lstm_{self.cfg.name}")
        rg.nn.language_model(
            g,
            self.vocab.size,
            hidden_sizes=list(self.cfg.hidden),
            letter_size=self.cfg.letter,
            dtype=self.dtype,
        )
        return g

    def batches(self, count: int, seed: int = SEED) -> list[dict[str, np.ndarray]]:
        """``count`` batches of ``B`` sentences drawn with replacement, padded, fixed seed."""
        rng = np.random.default_rng(seed)
        out = []
        for _ in range(count):
            picks = rng.integers(0, len(self.encoded), self.cfg.batch)
            out.append(rg.train.pad_sequences([self.encoded[i] for i in picks], dtype=self.dtype))
        return out


class RgraphTrainer:
    """rgraph's training step: ``rg.Trainer`` (the compiled program, specialised to masks of
    ones, and rg.RMSProp, in place on a packed store; the program writes the gradients
    where the optimiser reads them)."""

    def __init__(self, task: Task):
        optimizer = rg.RMSProp(lr=LR, regc=REGC, clipval=CLIP)
        self.trainer = rg.Trainer(task.graph, optimizer, params=dict(task.params))
        self.program, self.params = self.trainer.program, self.trainer.params

    def forward_backward(self, tokens, targets, mask):
        feeds = {"tokens": tokens, "targets": targets, "mask": mask}
        into = self.trainer.optimizer.gradient_buffers()  # (as a step runs, once there is one)
        r = self.program.run(feeds, self.params, grads_into=into)
        self.last = r
        return float(r.outputs["loss"]), float(r.outputs["nll"]), float(r.outputs["count"])

    def grads(self) -> dict[str, np.ndarray]:
        return self.last.grads

    def step(self, feeds) -> float:
        return self.trainer.step(feeds).loss


def make(impl: str, task: Task, **options):
    cfg, dtype = task.cfg, task.dtype
    hyper = {"lr": LR, "regc": REGC, "clipval": CLIP}
    if impl == "rgraph":
        return RgraphTrainer(task)
    if impl == "handwritten":
        return HandwrittenLSTM(
            task.params,
            cfg.hidden,
            batch=cfg.batch,
            max_steps=task.max_steps,
            dtype=dtype,
            **hyper,
            **options,
        )
    if impl in ("torch", "torch-cell"):
        from torch_lstm import TorchLSTM

        kind = "nn" if impl == "torch" else "cell"
        return TorchLSTM(task.params, cfg.hidden, batch=cfg.batch, dtype=dtype, kind=kind, **hyper)
    raise ValueError(f"unknown implementation {impl!r}")


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _maxrss_mb() -> float:
    """This process's peak RSS. Not getrusage's ru_maxrss: on Linux a child started by
    fork + exec inherits the parent's peak there (here, a parent that imported torch)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# --- worker processes -----------------------------------------------------------------


def worker(impl: str, cfg: Config, dtype: str, steps: int, reps: int, warmup: int) -> None:
    """Serve repetitions over stdin/stdout as JSON lines (see :func:`measure`)."""
    if impl.startswith("torch"):
        import warnings

        import torch  # noqa: F401

        warnings.filterwarnings("ignore", category=UserWarning)
    task = Task(cfg, dtype)
    batches = task.batches(warmup + steps * reps)
    rss0 = _rss_mb()
    t0 = time.perf_counter()
    model = make(impl, task)
    t1 = time.perf_counter()
    loss = float("nan")
    for b in batches[:warmup]:
        loss = model.step(b)
    t2 = time.perf_counter()
    # Then one forward and backward per sequence length to come (parameters untouched).
    seen: set[tuple[int, ...]] = set()
    for b in batches:
        if b["tokens"].shape not in seen:
            seen.add(b["tokens"].shape)
            model.forward_backward(b["tokens"], b["targets"], b["mask"])
    t3 = time.perf_counter()
    _send(
        {
            "ready": True,
            "build_s": t1 - t0,
            "shapes": len(seen),
            "warmup_s": t2 - t1,
            "shape_warmup_s": t3 - t2,
        }
    )
    for line in sys.stdin:
        cmd = line.split()
        if cmd[0] == "run":
            rep = int(cmd[1])
            chunk = batches[warmup + rep * steps : warmup + (rep + 1) * steps]
            chars = sum(float(b["mask"].sum()) for b in chunk)
            gc.collect()
            start = time.perf_counter()
            for b in chunk:
                loss = model.step(b)
            seconds = time.perf_counter() - start
            _send({"rep": rep, "seconds": seconds, "chars": chars, "loss": loss})
        elif cmd[0] == "done":
            _send({"loss": loss, "rss_growth_mb": _maxrss_mb() - rss0, "rss_before_mb": rss0})
            return


def memory_worker(impl: str, cfg: Config, dtype: str, steps: int) -> None:
    """tracemalloc's peak over building the model and ``steps`` training steps."""
    task = Task(cfg, dtype)
    batches = task.batches(steps)
    gc.collect()
    tracemalloc.start()
    model = make(impl, task)
    for b in batches:
        model.step(b)
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    _send({"traced_peak_mb": peak / 2**20})


def compile_worker(cfgs: list[Config], chain_sizes: list[int], reps: int, chain_reps: int) -> None:
    """Compile times of the character model's training program and of long chains.

    Each is timed ``reps`` (``chain_reps``) times from a fresh graph; both the minimum and
    the median are kept. The machine's own speed is timed beside them: a fixed
    pure-Python loop (:func:`_reference_loop`) before each char model's compile. On a
    shared VM it swings by 2x from one second to the next, and compile times with it.
    """
    out: dict = {"char_model": {}, "chain": {}, "reference_ms": []}
    for cfg in cfgs:
        task = Task(cfg, "float64")
        builds, compiles = [], []
        for _ in range(reps):
            out["reference_ms"].append(1e3 * _reference_loop())
            t0 = time.perf_counter()
            g = task.build_graph()
            t1 = time.perf_counter()
            program = rg.compile(g, ["loss", "nll", "count"], loss="loss")
            t2 = time.perf_counter()
            builds.append(t1 - t0)
            compiles.append(t2 - t1)
        out["char_model"][cfg.name] = {
            "build_ms": 1e3 * statistics.median(builds),
            "compile_ms": 1e3 * statistics.median(compiles),
            "compile_min_ms": 1e3 * min(compiles),
            "compile_all_ms": [1e3 * c for c in compiles],
            "nodes": len(g.ir.nodes),
            "nodes_compiled": _count_nodes(program.ir),
        }
    for n in chain_sizes:
        builds, compiles = [], []
        for _ in range(chain_reps):
            gc.collect()
            t0 = time.perf_counter()
            g, loss = _chain(n)
            t1 = time.perf_counter()
            rg.compile(g, loss=loss, wrt=["w"])
            t2 = time.perf_counter()
            builds.append(t1 - t0)
            compiles.append(t2 - t1)
            nodes = len(g.ir.nodes)
            del g, loss
        out["chain"][n] = {
            "build_s": statistics.median(builds),
            "compile_s": statistics.median(compiles),
            "compile_min_s": min(compiles),
            "compile_all_s": compiles,
            "nodes": nodes,
        }
    _send(out)


def _reference_loop() -> float:
    """Seconds of a fixed pure-Python workload (dict stores, f-strings: what a compiler
    pass does), a gauge of the machine's speed at the moment."""
    t0 = time.perf_counter()
    d = {}
    for i in range(20000):
        d[f"x{i}"] = i
    return time.perf_counter() - t0


def _chain(n: int) -> tuple[rg.Graph, rg.Value]:
    """A chain of ``n`` elementwise ops on a small vector, and its sum (the loss)."""
    g = rg.Graph("chain")
    x = g.input("x", (3,))
    w = g.param("w", (3,))
    up, down, step = g.const(2.0), g.const(0.5), g.const(0.25)
    h = x * w
    for _ in range(n // 4):  # four elementwise ops per round, as tests/test_passes.py
        h = h * up + step
        h = h * down + step
    return g, g.sum(h)


def _count_nodes(ir) -> int:
    """Nodes of an IR including those of nested bodies (scan)."""
    total = 0
    for node in ir.nodes:
        total += 1
        for body in (getattr(node, "bodies", None) or {}).values():
            total += _count_nodes(body)
    return total


def _send(obj: dict) -> None:
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def _spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), *args],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        bufsize=1,
    )


def _receive(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    if not line:
        proc.wait()
        raise RuntimeError(f"worker {proc.args[2:]} died (exit {proc.returncode})")
    return json.loads(line)


def _run_once(*args: str) -> dict:
    proc = _spawn(*args)
    out = _receive(proc)
    proc.stdin.close()
    proc.wait()
    return out


# --- the measurement ------------------------------------------------------------------


def measure(impls, cfg: Config, dtype: str, steps: int, reps: int, warmup: int) -> dict:
    """Chars/s of each implementation: rotating-order repetitions, one process each."""
    procs, info = {}, {}
    for impl in impls:
        proc = _spawn("--worker", impl, cfg.name, dtype, str(steps), str(reps), str(warmup))
        info[impl] = _receive(proc)
        procs[impl] = proc
    rates: dict[str, list[float]] = {impl: [] for impl in impls}
    for rep in range(reps):
        order = impls[rep % len(impls) :] + impls[: rep % len(impls)]
        for impl in order:
            time.sleep(0.3)  # let the previous process's threads go idle
            procs[impl].stdin.write(f"run {rep}\n")
            r = _receive(procs[impl])
            rates[impl].append(r["chars"] / r["seconds"])
    out = {}
    for impl in impls:
        procs[impl].stdin.write("done\n")
        end = _receive(procs[impl])
        procs[impl].stdin.close()
        procs[impl].wait()
        out[impl] = {
            "chars_per_s": statistics.median(rates[impl]),
            "min": min(rates[impl]),
            "max": max(rates[impl]),
            "rates": rates[impl],
            "final_loss": end["loss"],
            "rss_growth_mb": end["rss_growth_mb"],
            **info[impl],
        }
    return out


def machine() -> dict:
    info = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "nproc": os.cpu_count(),
        "cpu": _cpu_model(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "rgraph": f"{rg.__version__} ({_git_state()})",
        "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE", "(unset)"),
        "OPENBLAS_L2_SIZE": os.environ.get("OPENBLAS_L2_SIZE", "(unset)"),
        "loadavg": os.getloadavg()[0],
    }
    try:
        from threadpoolctl import threadpool_info

        info["blas"] = [
            {k: p.get(k) for k in ("internal_api", "version", "architecture", "num_threads")}
            for p in threadpool_info()
            if p.get("user_api") == "blas"
        ]
    except ImportError:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        info["blas"] = [{k: blas.get(k) for k in ("name", "version", "openblas configuration")}]
    if torch_available():
        import torch

        info["torch"] = f"{torch.__version__}, {torch.get_num_threads()} threads"
    return info


def _git_state() -> str:
    """The checkout's commit, and whether rgraph/ has uncommitted changes."""
    root = os.path.dirname(HERE)
    try:
        head = subprocess.run(
            ["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", root, "status", "--porcelain", "--", "rgraph"],
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "no git"
    return f"commit {head}" + (", rgraph/ modified" if dirty else "")


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _fmt_rate(r: dict | None) -> str:
    return "-" if r is None else f"{r['chars_per_s']:,.0f}"


def print_table(results: dict, impls: list[str]) -> None:
    refs = [i for i in impls if i != "rgraph"]
    head = ["config", "dtype", *impls] + [f"rgraph/{r}" for r in refs if "rgraph" in impls]
    rows = []
    for (cfg, dtype), res in results.items():
        row = [cfg, dtype] + [_fmt_rate(res.get(i)) for i in impls]
        if "rgraph" in impls:
            for r in refs:
                row.append(f"{res['rgraph']['chars_per_s'] / res[r]['chars_per_s']:.2f}x")
        rows.append(row)
    _print_rows(head, rows)


def paired_ratios(res: dict, ref: str) -> list[float]:
    """rgraph's rate over ``ref``'s, round by round: a round runs every implementation
    once, one right after the other, so a slower or faster spell of the machine touches
    both sides of a ratio (medians of the rates alone compare different spells)."""
    return [a / b for a, b in zip(res["rgraph"]["rates"], res[ref]["rates"])]


def print_paired(results: dict, impls: list[str]) -> None:
    refs = [i for i in impls if i != "rgraph"]
    head = ["config", "dtype", *(f"rgraph/{r}" for r in refs)]
    rows = []
    for (cfg, dtype), res in results.items():
        row = [cfg, dtype]
        for r in refs:
            ratios = paired_ratios(res, r)
            row.append(f"{statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})")
        rows.append(row)
    _print_rows(head, rows)


def _print_rows(head: list[str], rows: list[list]) -> None:
    widths = [max(len(str(x)) for x in col) for col in zip(head, *rows)]
    line = "| " + " | ".join(h.ljust(w) for h, w in zip(head, widths)) + " |"
    print(line)
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in rows:
        print("| " + " | ".join(str(x).rjust(w) for x, w in zip(row, widths)) + " |")


# --- correctness ----------------------------------------------------------------------


def check(cfgs: list[Config], dtypes: list[str], impls: list[str]) -> bool:
    """Loss and gradients of every implementation against rgraph's, same params and batch.

    The parameters are rgraph's initial ones with random biases (so that every bias path
    counts). Then one training step (forward, backward, RMSProp) from there: the updated
    parameters must agree too. Later steps are not compared: RMSProp's first updates
    (``lr g / sqrt(0.001 g^2 + 1e-8)``, about ``0.3`` per weight) saturate gates, after
    which the trajectories of any two correct implementations part (chaotic, not wrong).
    """
    ok = True
    tol = {"float64": 1e-10, "float32": 1e-3}
    print(
        "max |x - rgraph| / max |rgraph| per tensor, worst tensor;"
        " must be <= 1e-10 in float64 (float32: <= 1e-3, a sanity bound)"
    )
    for cfg in cfgs:
        for dtype in dtypes:
            task = Task(cfg, dtype)
            rng = np.random.default_rng(SEED + 1)
            for name, value in task.params.items():
                if name.startswith("b"):
                    value[...] = rng.uniform(-0.5, 0.5, value.shape)
            (b,) = task.batches(1, seed=SEED + 1)
            ref = RgraphTrainer(task)
            want = ref.forward_backward(b["tokens"], b["targets"], b["mask"])
            want_grads = ref.grads()
            ref.step(b)
            variants = []
            for impl in impls:
                if impl == "handwritten":  # every activation form, not only the chosen one
                    variants += [
                        (f"hand {g}/{c}", impl, {"gate_act": g, "cell_act": c})
                        for g in ("tanh", "exp")
                        for c in ("tanh", "exp")
                    ]
                elif impl != "rgraph":
                    variants.append((impl, impl, {}))
            for label, impl, options in variants:
                model = make(impl, task, **options)
                got = model.forward_backward(b["tokens"], b["targets"], b["mask"])
                grads = model.grads()
                loss_err = abs(got[0] - want[0]) / abs(want[0])
                grad_err = max(_rel(grads[k], want_grads[k]) for k in want_grads)
                count_ok = got[2] == want[2]
                model.step(b)
                got_p = model.params()
                param_err = max(_rel(got_p[k], ref.params[k]) for k in ref.params)
                errs = (loss_err, grad_err, param_err)
                good = max(errs) <= tol[dtype] and count_ok
                ok &= good
                print(
                    f"  {cfg.name} {dtype} {label:14s} loss {loss_err:.1e}  grads {grad_err:.1e}"
                    f"  count {'ok' if count_ok else 'WRONG'}"
                    f"  params after a step {param_err:.1e}"
                    f"  {'ok' if good else 'FAIL'}",
                    flush=True,
                )
    return ok


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-300))


# --- profile --------------------------------------------------------------------------


def profile(cfg: Config, dtype: str, steps: int, top: int) -> None:
    task = Task(cfg, dtype)
    batches = task.batches(cfg.warmup + steps)
    model = RgraphTrainer(task)
    for b in batches[: cfg.warmup]:  # as a worker: steps first, then the shapes
        model.step(b)
    for b in batches:
        model.forward_backward(b["tokens"], b["targets"], b["mask"])
    prof = cProfile.Profile()
    chars = sum(float(b["mask"].sum()) for b in batches[cfg.warmup :])
    t0 = time.perf_counter()
    prof.enable()
    for b in batches[cfg.warmup :]:
        model.step(b)
    prof.disable()
    seconds = time.perf_counter() - t0
    print(
        f"\n## rgraph profile: config {cfg.name} ({cfg.describe()}), {dtype}, {steps} steps,"
        f" {chars / steps:.0f} chars/step, {1e3 * seconds / steps:.1f} ms/step under cProfile"
    )
    for key in ("tottime", "cumulative"):
        s = io.StringIO()
        pstats.Stats(prof, stream=s).sort_stats(key).print_stats(top)
        text = s.getvalue()
        print(text[text.index("   ncalls") :].rstrip())


def tune_activations(cfgs: list[Config], dtypes: list[str], steps: int, reps: int) -> None:
    """Chars/s of the hand-written step with each activation form (in this process)."""
    for cfg in cfgs:
        for dtype in dtypes:
            task = Task(cfg, dtype)
            batches = task.batches(steps + 2)
            chars = sum(float(b["mask"].sum()) for b in batches[2:])
            res = {}
            for gate in ("tanh", "exp"):
                for cell in ("tanh", "exp"):
                    m = HandwrittenLSTM(
                        task.params,
                        cfg.hidden,
                        batch=cfg.batch,
                        max_steps=task.max_steps,
                        dtype=dtype,
                        gate_act=gate,
                        cell_act=cell,
                    )
                    rates = []
                    for _ in range(reps):
                        for b in batches[:2]:
                            m.step(b)
                        t0 = time.perf_counter()
                        for b in batches[2:]:
                            m.step(b)
                        rates.append(chars / (time.perf_counter() - t0))
                    res[f"{gate}/{cell}"] = statistics.median(rates)
            m = HandwrittenLSTM(task.params, cfg.hidden, batch=cfg.batch, max_steps=1, dtype=dtype)
            chosen = f"{m.gate_act}/{m.cell_act}"
            print(
                f"{cfg.name} {dtype}: "
                + ", ".join(f"{k} {v:,.0f}" for k, v in res.items())
                + f"  (chosen: {chosen})"
            )


# --- command line ---------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--configs", default="A,B,C")
    ap.add_argument("--dtypes", default="float64,float32")
    ap.add_argument("--impls", default=",".join(IMPLS))
    ap.add_argument("--steps", type=int, help="training steps per repetition (default per config)")
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--quick", action="store_true", help="3 repetitions of fewer steps")
    ap.add_argument("--check", action="store_true", help="compare loss and gradients only")
    ap.add_argument("--profile", metavar="CONFIGS", help="cProfile rgraph's step only")
    ap.add_argument("--tune-activations", action="store_true")
    ap.add_argument("--no-compile", action="store_true", help="skip the compile times")
    ap.add_argument("--no-memory", action="store_true", help="skip config C's memory")
    ap.add_argument("--chain-sizes", default="25000,50000,100000")
    ap.add_argument(
        "--threads",
        type=int,
        help="threads for BLAS and torch in the workers (default: the libraries' defaults)",
    )
    ap.add_argument("--json", metavar="PATH", help="also write all results as JSON")
    ap.add_argument("--worker", nargs=6, help=argparse.SUPPRESS)
    ap.add_argument("--memory-worker", nargs=4, help=argparse.SUPPRESS)
    ap.add_argument("--compile-reps", type=int, default=15, help="compiles of each char model")
    ap.add_argument("--chain-reps", type=int, default=3, help="compiles of each chain")
    ap.add_argument("--compile-worker", nargs=4, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.worker:
        impl, cfg, dtype, steps, reps, warmup = args.worker
        worker(impl, CONFIGS[cfg], dtype, int(steps), int(reps), int(warmup))
        return 0
    if args.memory_worker:
        impl, cfg, dtype, steps = args.memory_worker
        memory_worker(impl, CONFIGS[cfg], dtype, int(steps))
        return 0
    if args.compile_worker:
        cfgs, sizes, reps, chain_reps = args.compile_worker
        compile_worker(
            [CONFIGS[c] for c in cfgs.split(",")],
            [int(n) for n in sizes.split(",") if n],
            int(reps),
            int(chain_reps),
        )
        return 0

    if args.threads:  # read by OpenBLAS and torch when a worker imports them
        for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[var] = str(args.threads)
    cfgs = [CONFIGS[c.strip().upper()] for c in args.configs.split(",")]
    dtypes = [d.strip() for d in args.dtypes.split(",")]
    impls = [i.strip() for i in args.impls.split(",")]
    if not torch_available():
        impls = [i for i in impls if not i.startswith("torch")]
    if args.check:
        return 0 if check(cfgs, dtypes, impls) else 1
    if args.profile:
        for c in args.profile.split(","):
            cfg = CONFIGS[c.strip().upper()]
            for dtype in dtypes:
                profile(cfg, dtype, args.steps or max(cfg.steps // 5, 2), top=25)
        return 0
    if args.tune_activations:
        tune_activations(cfgs, dtypes, args.steps or 10, args.reps)
        return 0

    reps = 3 if args.quick else args.reps
    info = machine()
    info["threads"] = args.threads or "library defaults (BLAS: see blas num_threads)"
    print("# char_lstm benchmark")
    for k, v in info.items():
        print(f"  {k}: {v}")
    results: dict = {}
    for cfg in cfgs:
        steps = args.steps or (max(cfg.steps // 5, 2) if args.quick else cfg.steps)
        warmup = 1 if args.quick else cfg.warmup
        for dtype in dtypes:
            print(f"\n{cfg.name} ({cfg.describe()}) {dtype}: {reps} x {steps} steps", flush=True)
            res = measure(impls, cfg, dtype, steps, reps, warmup)
            results[(cfg.name, dtype)] = res
            for impl, r in res.items():
                print(
                    f"  {impl:12s} {r['chars_per_s']:>10,.0f} chars/s"
                    f"  (min {r['min']:,.0f}, max {r['max']:,.0f})"
                    f"  loss after {warmup + reps * steps} steps {r['final_loss']:.6g}"
                    f"  shape warm-up {r['shape_warmup_s']:.2f} s ({r['shapes']} shapes)",
                    flush=True,
                )
    print("\nchars/s (medians):")
    print_table(results, impls)
    if "rgraph" in impls and len(impls) > 1:
        print("\nrgraph / reference, round by round: median (min-max) of the rounds' ratios:")
        print_paired(results, impls)

    memory: dict = {}
    if not args.no_memory and any(c.name == "C" for c in cfgs):
        print("\nconfig C peak memory (MB): tracemalloc peak / peak RSS growth")
        for dtype in dtypes:
            for impl in impls:
                traced = None
                if not impl.startswith("torch"):
                    traced = _run_once("--memory-worker", impl, "C", dtype, "2")["traced_peak_mb"]
                rss = results[("C", dtype)][impl]["rss_growth_mb"]
                memory[(dtype, impl)] = {"traced_peak_mb": traced, "rss_growth_mb": rss}
                t = "-" if traced is None else f"{traced:.1f}"
                print(f"  {dtype} {impl:12s} {t:>8} / {rss:.1f}")

    compile_times = None
    if not args.no_compile:
        sizes = "100000" if args.quick else args.chain_sizes
        compile_times = _run_once(
            "--compile-worker",
            ",".join(c.name for c in cfgs),
            sizes,
            str(args.compile_reps),
            str(args.chain_reps),
        )
        print("\ncompile times, min / median (target: char model < 50 ms, 100k nodes < 2 s):")
        for name, r in compile_times["char_model"].items():
            print(
                f"  char model {name}: build {r['build_ms']:.1f} ms, compile"
                f" {r['compile_min_ms']:.1f} / {r['compile_ms']:.1f} ms of {args.compile_reps}"
                f" ({r['nodes']} nodes built, {r['nodes_compiled']} compiled incl. scan bodies)"
            )
        for n, r in compile_times["chain"].items():
            print(
                f"  chain of {int(n):,} ops: build {r['build_s']:.2f} s, compile"
                f" {r['compile_min_s']:.2f} / {r['compile_s']:.2f} s of {args.chain_reps}"
            )
        ref = compile_times["reference_ms"]
        print(
            f"  the machine's speed meanwhile: a fixed Python loop took {min(ref):.1f} ms at"
            f" best, {statistics.median(ref):.1f} ms median, {max(ref):.1f} ms at worst"
        )
    info["loadavg_end"] = os.getloadavg()[0]
    print(f"\nload average: {info['loadavg']:.2f} at start, {info['loadavg_end']:.2f} at end")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(
                {
                    "machine": info,
                    "results": {f"{c} {d}": r for (c, d), r in results.items()},
                    "memory": {f"{d} {i}": r for (d, i), r in memory.items()},
                    "compile": compile_times,
                },
                f,
                indent=1,
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
