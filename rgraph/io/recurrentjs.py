"""RecurrentJS interop: the character demo's saved JSON <-> rgraph character models.

RecurrentJS's character demo (``character_demo.html``) saves a model as one JSON object::

    {"hidden_sizes": [20, 20], "generator": "lstm" | "rnn", "letter_size": 5,
     "model": {name: {"n": rows, "d": cols, "w": values}},
     "solver": {"decay_rate": 0.999, "smooth_eps": 1e-8, "step_cache": {name: {"n", "d", "w"}}},
     "letterToIndex": {letter: index}, "indexToLetter": {"index": letter}, "vocab": [letter, ...]}

``w`` holds the ``n x d`` values row-major, as a JSON array or as an object keyed
``"0"``, ``"1"``, ... (what ``JSON.stringify`` makes of a ``Float64Array``); both are read.
Letters have indices from 1 in ``vocab`` order; index 0 is START (input) and END (target).

:func:`import_json` turns such a file into an :class:`rgraph.Model` whose graph is
``rgraph.nn.language_model(g, len(vocab) + 1, kind=generator, hidden_sizes=...,
letter_size=..., dtype="float64")``: the same parameter names (``Wil``, ``Wix0``, ...,
``Whd``, ``bd``) and shapes, except that RecurrentJS's ``(n, 1)`` bias columns become
``(n,)`` vectors. The solver's step cache becomes an :class:`rgraph.RMSProp` state
(``decay = decay_rate``, ``eps = smooth_eps``, slot ``"cache"``; parameters the cache does
not list start from zeros, as in RecurrentJS). The JSON does not hold the demo's
learning rate, ``regc`` and ``clipval``: the state gets the demo's defaults (0.01, 1e-6,
5), its step count is 0. :func:`export_json` / :func:`write_json` do the inverse, and
``rgraph convert`` does both from the command line.

Metadata
--------
An imported model's ``metadata`` (what :func:`export_json` reads back) has these keys:

``"generator"``
    ``"lstm"`` or ``"rnn"``: the recurrent cell (RecurrentJS's ``generator``).
``"hidden_sizes"``
    list of int, one per layer.
``"letter_size"``
    int, the size of a letter embedding (the columns of ``Wil``).
``"vocab"``
    list of str, one character each: ``vocab[i]`` has index ``i + 1``.
``"letter_to_index"``
    ``{letter: index}`` (RecurrentJS's ``letterToIndex``).
``"index_to_letter"``
    ``{str(index): letter}`` (RecurrentJS's ``indexToLetter``; string keys, as in JSON).

The last two are redundant with ``vocab`` and always agree with it.

Exporting
---------
:func:`export_json` accepts a model whose parameters are exactly those of
``language_model`` with ``kind`` ``"lstm"`` or ``"rnn"`` (a GRU has no RecurrentJS
counterpart); ``generator``, ``hidden_sizes`` and ``letter_size`` are read from the
parameter shapes (and checked against the metadata if it has them). ``metadata["vocab"]``
is required, with ``len(vocab) + 1`` rows in ``Wil``; each letter must be a single
character of the Basic Multilingual Plane, since the demo looks letters up by UTF-16 code
unit. float32 parameters are upcast to float64, which is exact. Only parameters are
written: the graph is implied by the generator, and the RMSProp state's ``lr``, ``regc``,
``clipval`` and ``clip_norm``, the step count, the RNG and other metadata have no place in
the JSON. Without RMSProp state the step cache is written as zeros (what the demo's solver
starts from); with another optimiser's state, the export is refused unless
``include_optimizer=False``.

Every malformed input raises :class:`rgraph.errors.FormatError` whose message starts with
the key path at fault, e.g. ``model.Wix1.w[7]: expected a number, got null``.

>>> import rgraph as rg
>>> from rgraph.io import recurrentjs
>>> g = rg.Graph("char_rnn")
>>> _ = rg.nn.language_model(g, 4, kind="rnn", hidden_sizes=[3], letter_size=2)
>>> model = rg.Model(graph=g.ir, params=rg.init_params(g, seed=0), metadata={"vocab": list("abc")})
>>> j = recurrentjs.export_json(model)
>>> j["generator"], j["hidden_sizes"], j["letter_size"], j["letterToIndex"], j["model"]["bd"]["n"]
('rnn', [3], 2, {'a': 1, 'b': 2, 'c': 3}, 4)
>>> back = recurrentjs.import_json(j)
>>> bool((back.params["Whh0"] == model.params["Whh0"]).all()), back.metadata["vocab"]
(True, ['a', 'b', 'c'])
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from rgraph.builder import Graph
from rgraph.errors import FormatError, OptimizerStateError
from rgraph.exec.optim import Optimizer, RMSProp
from rgraph.io.atomic import replace_atomically
from rgraph.io.format import Model
from rgraph.ir.graph import GraphIR
from rgraph.nn import language_model

__all__ = [
    "DEMO_HYPER",
    "GENERATORS",
    "META_KEYS",
    "char_model_graph",
    "export_json",
    "import_json",
    "read_json",
    "write_json",
]

GENERATORS = ("lstm", "rnn")
META_KEYS = (
    "generator",
    "hidden_sizes",
    "letter_size",
    "vocab",
    "letter_to_index",
    "index_to_letter",
)
# What the demo trains with but does not save (its "newnet" box), and its Solver's defaults.
DEMO_HYPER = {"lr": 0.01, "regc": 1e-6, "clipval": 5.0}
SOLVER_DEFAULTS = {"decay_rate": 0.999, "smooth_eps": 1e-8}
_FIRST_WEIGHT = {"lstm": "Wix{d}", "rnn": "Wxh{d}", "gru": "Wrx{d}"}
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# --- key paths and checks -------------------------------------------------------------


class _Obj(dict):
    """A parsed JSON object that remembers keys it had more than once."""

    duplicates: tuple[str, ...] = ()


def _key(path: str, key: Any) -> str:
    """``path.key`` for identifier keys, ``path['key']`` otherwise."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if isinstance(key, str) and _IDENT.match(key):
        return f"{path}.{key}" if path else key
    return f"{path}[{key!r}]"


def _show(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, (list, tuple)):
        return "an array"
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


class _Checker:
    """Raises FormatErrors that name the source and the key path."""

    def __init__(self, origin: str | None):
        self.origin = origin

    def fail(self, path: str, message: str) -> FormatError:
        where = f"{path}: " if path else ""
        prefix = f"{self.origin}: " if self.origin else ""
        return FormatError(f"{prefix}{where}{message}")

    def mapping(self, value: Any, path: str) -> Mapping[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(path, f"expected an object, got {_show(value)}")
        dups = getattr(value, "duplicates", ())
        if dups:
            raise self.fail(_key(path, dups[0]), "the key appears more than once")
        return value

    def get(self, obj: Mapping[str, Any], key: str, path: str) -> Any:
        if key not in obj:
            raise self.fail(_key(path, key), "missing")
        return obj[key]

    def integer(self, value: Any, path: str, low: int = 1) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
            raise self.fail(path, f"expected an integer, got {_show(value)}")
        if value < low:
            raise self.fail(path, f"expected an integer >= {low}, got {value}")
        return int(value)

    def number(self, value: Any, path: str) -> float:
        if isinstance(value, (bool, np.bool_)) or not isinstance(
            value, (int, float, np.integer, np.floating)
        ):
            raise self.fail(path, f"expected a number, got {_show(value)}")
        try:
            x = float(value)
        except OverflowError:
            x = math.inf
        if not math.isfinite(x):
            raise self.fail(path, f"expected a finite number, got {_show(value)}")
        return x

    def mat(self, value: Any, path: str, shape: tuple[int, int], why: str = "") -> np.ndarray:
        """A RecurrentJS Mat ``{n, d, w}`` of the given ``(n, d)`` as an ``(n, d)`` array."""
        obj = self.mapping(value, path)
        n = self.integer(self.get(obj, "n", path), _key(path, "n"))
        d = self.integer(self.get(obj, "d", path), _key(path, "d"))
        if (n, d) != shape:
            because = f" {why}" if why else ""
            raise self.fail(path, f"is {n} x {d}, expected {shape[0]} x {shape[1]}{because}")
        w = self.get(obj, "w", path)
        wpath = _key(path, "w")
        size = n * d
        if isinstance(w, Mapping):
            self.mapping(w, wpath)
            if len(w) != size:
                raise self.fail(wpath, f"has {len(w)} entries, expected n*d = {size}")
            values = []
            for i in range(size):
                k = str(i)
                if k not in w:
                    odd = next(key for key in w if not _is_index(key, size))
                    raise self.fail(
                        wpath,
                        f"has key {odd!r}; the keys of an object w must be exactly "
                        f"'0' ... '{size - 1}'",
                    )
                values.append(w[k])
            paths = (f"{wpath}[{str(i)!r}]" for i in range(size))
        elif isinstance(w, (list, tuple)):
            if len(w) != size:
                raise self.fail(wpath, f"has {len(w)} values, expected n*d = {size}")
            values = list(w)
            paths = (f"{wpath}[{i}]" for i in range(size))
        else:
            raise self.fail(wpath, f"expected an array or an object, got {_show(w)}")
        numeric = (int, float, np.integer, np.floating)
        if not all(isinstance(v, numeric) and not isinstance(v, (bool, np.bool_)) for v in values):
            for v, p in zip(values, paths):
                self.number(v, p)
        try:
            arr = np.array(values, dtype=np.float64)
        except OverflowError:
            arr = np.array([self.number(v, "") for v in values], dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(arr))
        if bad.size:
            i = int(bad[0])
            p = f"{wpath}[{str(i)!r}]" if isinstance(w, Mapping) else f"{wpath}[{i}]"
            raise self.fail(p, f"expected a finite number, got {_show(values[i])}")
        return arr.reshape(n, d)


def _is_index(key: str, size: int) -> bool:
    return key.isdigit() and str(int(key)) == key and int(key) < size


# --- reading --------------------------------------------------------------------------


def read_json(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a JSON file strictly: UTF-8, no NaN/Infinity literals, no duplicate keys.

    Duplicate keys are reported when :func:`import_json` reaches them, with their path.
    """
    name = os.fspath(path)

    def pairs(items: list[tuple[str, Any]]) -> _Obj:
        obj = _Obj(items)
        if len(obj) != len(items):
            seen: set[str] = set()
            obj.duplicates = tuple(k for k, _ in items if k in seen or seen.add(k))
        return obj

    def constant(token: str) -> Any:
        raise ValueError(f"{token} is not valid JSON (JSON has no NaN or Infinity)")

    try:
        with open(path, encoding="utf-8-sig") as f:
            return json.load(f, object_pairs_hook=pairs, parse_constant=constant)
    except OSError as e:
        raise FormatError(f"cannot read {name!r}: {e.strerror or e}") from None
    except UnicodeDecodeError as e:
        raise FormatError(f"{name!r}: not UTF-8 text (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise FormatError(f"{name!r}: not valid JSON: {e}") from None
    except ValueError as e:
        raise FormatError(f"{name!r}: not valid JSON: {e}") from None
    except RecursionError:
        raise FormatError(f"{name!r}: JSON nested too deeply") from None


def char_model_graph(
    generator: str, hidden_sizes: Sequence[int], letter_size: int, vocab_size: int
) -> GraphIR:
    """The graph of RecurrentJS's character model: ``rgraph.nn.language_model``, float64."""
    g = Graph(f"char_{generator}")
    language_model(
        g,
        vocab_size,
        kind=generator,
        hidden_sizes=list(hidden_sizes),
        letter_size=letter_size,
        dtype="float64",
    )
    return g.ir


def _json_shape(shape: Sequence[Any]) -> tuple[int, int]:
    """RecurrentJS's ``(n, d)`` of an rgraph parameter shape: ``(n,)`` biases are columns."""
    return (int(shape[0]), 1) if len(shape) == 1 else (int(shape[0]), int(shape[1]))


def _check_letter(c: _Checker, letter: Any, path: str) -> str:
    if not isinstance(letter, str) or len(letter) != 1:
        raise c.fail(path, f"expected a one-character string, got {_show(letter)}")
    if 0xD800 <= ord(letter) <= 0xDFFF:
        raise c.fail(
            path,
            f"{letter!r} is half of a UTF-16 surrogate pair (the demo splits characters "
            "outside the Basic Multilingual Plane in two); rgraph vocabularies hold "
            "whole Unicode characters",
        )
    return letter


def _vocabulary(
    c: _Checker, vocab: Any, to_index: Any, to_letter: Any, names: tuple[str, str, str]
) -> list[str]:
    """Check that a vocab list and its two index maps agree; return the list."""
    vname, lname, iname = names
    if not isinstance(vocab, (list, tuple)):
        raise c.fail(vname, f"expected an array of letters, got {_show(vocab)}")
    letters: list[str] = []
    where: dict[str, int] = {}
    for i, letter in enumerate(vocab):
        p = f"{vname}[{i}]"
        _check_letter(c, letter, p)
        if letter in where:
            raise c.fail(p, f"{letter!r} is already vocab[{where[letter]}]")
        where[letter] = i
        letters.append(letter)
    if to_index is not None:
        c.mapping(to_index, lname)
        for letter, i in where.items():
            p = _key(lname, letter)
            if letter not in to_index:
                raise c.fail(p, f"missing: {vname}[{i}] is {letter!r}")
            got = c.integer(to_index[letter], p, low=0)
            if got != i + 1:
                raise c.fail(p, f"is {got}, but {vname} puts {letter!r} at index {i + 1}")
        extra = [k for k in to_index if k not in where]
        if extra:
            raise c.fail(_key(lname, extra[0]), f"{extra[0]!r} is not in {vname}")
    if to_letter is not None:
        c.mapping(to_letter, iname)
        for letter, i in where.items():
            p = _key(iname, str(i + 1))
            if str(i + 1) not in to_letter:
                raise c.fail(p, f"missing: {vname}[{i}] is {letter!r}")
            got = to_letter[str(i + 1)]
            if got != letter:
                raise c.fail(p, f"is {_show(got)}, but {vname}[{i}] is {letter!r}")
        extra = [k for k in to_letter if not (_is_index(k, len(letters) + 1) and k != "0")]
        if extra:
            raise c.fail(
                _key(iname, extra[0]),
                f"not an index of {vname} (1 ... {len(letters)})",
            )
    return letters


def _metadata(generator: str, hidden: list[int], letter_size: int, vocab: list[str]) -> dict:
    return {
        "generator": generator,
        "hidden_sizes": list(hidden),
        "letter_size": letter_size,
        "vocab": list(vocab),
        "letter_to_index": {ch: i + 1 for i, ch in enumerate(vocab)},
        "index_to_letter": {str(i + 1): ch for i, ch in enumerate(vocab)},
    }


def import_json(source: str | os.PathLike | Mapping[str, Any]) -> Model:
    """A RecurrentJS character-demo model (a JSON file's path, or its parsed object).

    Returns an :class:`rgraph.Model` with the ``language_model`` graph, float64 parameters,
    an RMSProp state dict in ``optimizer`` and the vocabulary in ``metadata`` (see the
    module docstring for the keys).

    Raises
    ------
    FormatError
        For anything malformed: a missing key, a Mat whose ``n x d`` disagrees with
        ``hidden_sizes``/``letter_size``/``vocab`` or with its ``w``, a non-numeric or
        non-finite weight, an unknown generator, a vocabulary that disagrees with
        ``letterToIndex``/``indexToLetter``, a step cache for an unknown parameter. The
        message names the key path.
    """
    if isinstance(source, (str, os.PathLike)):
        c = _Checker(repr(os.fspath(source)))
        data: Any = read_json(source)
    else:  # already parsed
        c = _Checker("RecurrentJS JSON")
        data = source
    top = c.mapping(data, "")
    generator = c.get(top, "generator", "")
    if generator not in GENERATORS:
        raise c.fail(
            "generator",
            f"{_show(generator)} is not a RecurrentJS generator; expected 'lstm' or 'rnn'",
        )
    hidden_raw = c.get(top, "hidden_sizes", "")
    if not isinstance(hidden_raw, (list, tuple)) or not hidden_raw:
        raise c.fail(
            "hidden_sizes", f"expected a non-empty array of sizes, got {_show(hidden_raw)}"
        )
    hidden = [c.integer(h, f"hidden_sizes[{i}]") for i, h in enumerate(hidden_raw)]
    letter_size = c.integer(c.get(top, "letter_size", ""), "letter_size")
    vocab = _vocabulary(
        c,
        c.get(top, "vocab", ""),
        c.get(top, "letterToIndex", ""),
        c.get(top, "indexToLetter", ""),
        ("vocab", "letterToIndex", "indexToLetter"),
    )
    graph = char_model_graph(generator, hidden, letter_size, len(vocab) + 1)
    shapes = {p.name: tuple(p.type.shape) for p in graph.params}

    mats = c.mapping(c.get(top, "model", ""), "model")
    for name in mats:
        if name not in shapes:
            raise c.fail(
                _key("model", name),
                f"not a parameter of a RecurrentJS {generator} with hidden_sizes {hidden}",
            )
    why = (
        f"for an {generator} with hidden_sizes {hidden}, letter_size {letter_size} and "
        f"{len(vocab)} letters + START/END"
    )
    params = {}
    for name, shape in shapes.items():
        path = _key("model", name)
        if name not in mats:
            raise c.fail(path, "missing")
        params[name] = c.mat(mats[name], path, _json_shape(shape), why).reshape(shape)

    solver = c.mapping(c.get(top, "solver", ""), "solver")
    decay = c.number(c.get(solver, "decay_rate", "solver"), "solver.decay_rate")
    if not 0.0 <= decay < 1.0:
        raise c.fail("solver.decay_rate", f"must be in [0, 1), got {decay!r}")
    eps = c.number(c.get(solver, "smooth_eps", "solver"), "solver.smooth_eps")
    if not eps > 0.0:
        raise c.fail("solver.smooth_eps", f"must be > 0, got {eps!r}")
    cache_json = c.mapping(c.get(solver, "step_cache", "solver"), "solver.step_cache")
    cache = {}
    for name, value in cache_json.items():
        path = _key("solver.step_cache", name)
        if name not in shapes:
            raise c.fail(path, "not a parameter of the model")
        mat = c.mat(value, path, _json_shape(shapes[name]), f"(the shape of model.{name})")
        cache[name] = mat.reshape(shapes[name])
    optimizer = RMSProp(**DEMO_HYPER, decay=decay, eps=eps).state_dict()
    optimizer["slots"] = {"cache": cache}

    return Model(
        graph=graph,
        params=params,
        optimizer=optimizer,
        metadata=_metadata(generator, hidden, letter_size, vocab),
        producer="recurrentjs",
    )


# --- writing --------------------------------------------------------------------------


def _structure(c: _Checker, params: Mapping[str, Any]) -> tuple[str, list[int], int, int]:
    """Generator, hidden sizes, letter size and vocab size read from parameter shapes."""
    gen = next((k for k, w in _FIRST_WEIGHT.items() if w.format(d=0) in params), None)
    if gen == "gru":
        raise c.fail(
            "params",
            "a GRU has no RecurrentJS counterpart (its generator is 'lstm' or 'rnn')",
        )
    if gen is None or "Wil" not in params:
        raise c.fail(
            "params",
            "not a RecurrentJS character model: it needs 'Wil' and 'Wix0' (LSTM) or "
            "'Wxh0' (RNN), as rgraph.nn.language_model makes",
        )
    hidden = []
    while _FIRST_WEIGHT[gen].format(d=len(hidden)) in params:
        shape = np.shape(params[_FIRST_WEIGHT[gen].format(d=len(hidden))])
        if len(shape) != 2:
            raise c.fail(f"params.{_FIRST_WEIGHT[gen].format(d=len(hidden))}", "is not a matrix")
        hidden.append(int(shape[0]))
    wil = np.shape(params["Wil"])
    if len(wil) != 2:
        raise c.fail("params.Wil", f"expected a matrix, got shape {list(wil)}")
    return gen, hidden, int(wil[1]), int(wil[0])


def _float64(c: _Checker, a: Any, path: str) -> np.ndarray:
    arr = np.asarray(a)
    if arr.dtype not in (np.float32, np.float64):
        raise c.fail(path, f"is {arr.dtype}; RecurrentJS stores float64 (float32 is upcast)")
    arr = arr.astype(np.float64)
    bad = np.flatnonzero(~np.isfinite(arr.ravel()))
    if bad.size:
        raise c.fail(path, f"element {int(bad[0])} is {arr.ravel()[bad[0]]}: JSON has no NaN/inf")
    return arr


def _mat_json(arr: np.ndarray) -> dict[str, Any]:
    n, d = _json_shape(arr.shape)
    return {"n": n, "d": d, "w": arr.ravel().tolist()}


def export_json(model: Model, *, include_optimizer: bool = True) -> dict[str, Any]:
    """The RecurrentJS character demo's JSON object for ``model`` (see the module docstring).

    Parameters
    ----------
    model
        An :class:`rgraph.Model` of ``rgraph.nn.language_model`` (LSTM or RNN), with
        ``metadata["vocab"]``; e.g. from :func:`rgraph.load` or :func:`import_json`.
    include_optimizer
        Write the RMSProp cache as the solver's ``step_cache``. False writes zeros
        (a fresh solver), as does a model without optimiser state.

    Raises
    ------
    FormatError
        The model is not a RecurrentJS-shaped character model (a GRU, other parameters,
        a missing or inconsistent vocabulary, non-float or non-finite values), or its
        optimiser state is not RMSProp's; the message says which and why.
    """
    c = _Checker("cannot export to RecurrentJS JSON")
    params = model.params
    generator, hidden, letter_size, vocab_size = _structure(c, params)
    expected = char_model_graph(generator, hidden, letter_size, vocab_size)
    shapes = {p.name: tuple(p.type.shape) for p in expected.params}
    graph = getattr(model.graph, "ir", model.graph)
    declared = {p.name: tuple(p.type.shape) for p in getattr(graph, "params", ())}
    for where, have in (
        ("params", {k: np.shape(v) for k, v in params.items()}),
        ("graph.params", declared),
    ):
        extra = sorted(set(have) - set(shapes))
        missing = [k for k in shapes if k not in have]
        if extra or missing:
            what = f"has {extra[0]!r}" if extra else f"lacks {missing[0]!r}"
            raise c.fail(
                where,
                f"{what}: not the parameters of a RecurrentJS {generator} with hidden_sizes "
                f"{hidden} (rgraph.nn.language_model's)",
            )
        for name, shape in shapes.items():
            if tuple(have[name]) != shape:
                raise c.fail(
                    f"{where}.{name}",
                    f"has shape {list(have[name])}, expected {list(shape)} for a "
                    f"{generator} with hidden_sizes {hidden} and letter_size {letter_size}",
                )

    meta = model.metadata or {}
    found = {"generator": generator, "hidden_sizes": hidden, "letter_size": letter_size}
    for key, value in found.items():
        have = meta.get(key, value)
        if isinstance(have, tuple):
            have = list(have)
        if have != value or type(have) is not type(value):
            raise c.fail(
                f"metadata.{key}",
                f"is {_show(meta[key])}, but the parameters are of {key} {value!r}",
            )
    if "vocab" not in meta:
        raise c.fail("metadata.vocab", "missing: a RecurrentJS model needs its vocabulary")
    vocab = _vocabulary(
        c,
        meta["vocab"],
        meta.get("letter_to_index"),
        meta.get("index_to_letter"),
        ("metadata.vocab", "metadata.letter_to_index", "metadata.index_to_letter"),
    )
    for i, letter in enumerate(vocab):
        if ord(letter) > 0xFFFF:
            raise c.fail(
                f"metadata.vocab[{i}]",
                f"{letter!r} is outside the Basic Multilingual Plane: the demo looks "
                "letters up by UTF-16 code unit and would never find it",
            )
    if len(vocab) + 1 != vocab_size:
        raise c.fail(
            "metadata.vocab",
            f"has {len(vocab)} letters, but Wil has {vocab_size} rows (letters + START/END)",
        )

    mats = {name: _mat_json(_float64(c, params[name], f"params.{name}")) for name in shapes}
    solver: dict[str, Any] = dict(SOLVER_DEFAULTS)
    state = model.optimizer if include_optimizer else None
    if state is None:
        cache = {name: np.zeros(_json_shape(shape)) for name, shape in shapes.items()}
    else:
        kind = state.get("kind") if isinstance(state, Mapping) else None
        if kind != RMSProp.kind:
            raise c.fail(
                "optimizer",
                f"the state is of kind {kind!r}, but RecurrentJS's solver is RMSProp; "
                "export with include_optimizer=False to write a fresh (zero) step cache",
            )
        try:
            opt = Optimizer.from_state_dict(state, params)
        except OptimizerStateError as e:
            raise c.fail("optimizer", str(e)) from None
        solver = {"decay_rate": opt.decay, "smooth_eps": opt.eps}
        table = opt.slots.get("cache", {})
        cache = {name: table[name] for name in shapes if name in table}
    solver["step_cache"] = {
        name: _mat_json(_float64(c, a, f"optimizer.cache.{name}")) for name, a in cache.items()
    }
    meta_out = _metadata(generator, hidden, letter_size, vocab)
    return {
        "hidden_sizes": hidden,
        "generator": generator,
        "letter_size": letter_size,
        "model": mats,
        "solver": solver,
        "letterToIndex": meta_out["letter_to_index"],
        "indexToLetter": meta_out["index_to_letter"],
        "vocab": vocab,
    }


def write_json(
    path: str | os.PathLike, model: Model, *, include_optimizer: bool = True, fsync: bool = True
) -> None:
    """Write :func:`export_json`'s object to ``path`` atomically (temp file + rename).

    Compact UTF-8 JSON, as the demo's ``JSON.stringify`` writes it; every float is written
    in its shortest round-trip form, so reading it back gives the same bits.
    """
    text = json.dumps(
        export_json(model, include_optimizer=include_optimizer),
        ensure_ascii=False,
        allow_nan=False,
        separators=(",", ":"),
    )
    with replace_atomically(path, suffix=".json", text=True, fsync=fsync) as f:
        f.write(text)
        f.write("\n")
