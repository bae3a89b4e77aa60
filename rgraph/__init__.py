"""rgraph: a define-then-run graph compiler for recurrent networks.

>>> import numpy as np, rgraph as rg
>>> g = rg.Graph("affine")
>>> x = g.input("x", (2, 1)); W = g.param("W", (3, 2)); b = g.param("b", (3, 1))
>>> h = g.output(g.add(g.mul(W, x), b), name="h")
>>> prog = rg.compile(g, cotangents=[h])
>>> res = prog.run({"x": np.ones((2, 1))}, {"W": np.ones((3, 2)), "b": np.zeros((3, 1))},
...                cotangents={"h": np.array([[1.0], [0.0], [0.0]])})
>>> res.grads["W"].tolist()
[[1.0, 1.0], [0.0, 0.0], [0.0, 0.0]]
"""

from rgraph import errors, nn, train
from rgraph.builder import Graph, Value
from rgraph.exec import (
    SGD,
    Adam,
    Interpreter,
    Optimizer,
    Program,
    Result,
    RMSProp,
    StepStats,
    clip_by_global_norm,
    clip_by_value,
    compile,
    global_norm,
)
from rgraph.gradcheck import GradcheckReport, gradcheck
from rgraph.init import init_params
from rgraph.io import Model, load, save
from rgraph.ir import GraphIR, Init, TensorType
from rgraph.train import Trainer

__version__ = "0.1.0"

__all__ = [
    "SGD",
    "Adam",
    "GradcheckReport",
    "Graph",
    "GraphIR",
    "Init",
    "Interpreter",
    "Model",
    "Optimizer",
    "Program",
    "RMSProp",
    "Result",
    "StepStats",
    "TensorType",
    "Trainer",
    "Value",
    "__version__",
    "clip_by_global_norm",
    "clip_by_value",
    "compile",
    "errors",
    "global_norm",
    "gradcheck",
    "init_params",
    "load",
    "nn",
    "save",
    "train",
]
