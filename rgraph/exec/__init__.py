"""Running graphs: the numpy interpreter and compiled programs."""

from rgraph.exec.interpreter import Interpreter
from rgraph.exec.optim import (
    SGD,
    Adam,
    Optimizer,
    RMSProp,
    StepStats,
    clip_by_global_norm,
    clip_by_value,
    global_norm,
)
from rgraph.exec.program import Program, Result, compile

__all__ = [
    "SGD",
    "Adam",
    "Interpreter",
    "Optimizer",
    "Program",
    "RMSProp",
    "Result",
    "StepStats",
    "clip_by_global_norm",
    "clip_by_value",
    "compile",
    "global_norm",
]
