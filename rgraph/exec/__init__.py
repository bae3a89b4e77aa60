"""Running graphs: the numpy interpreter and compiled programs."""

from rgraph.exec.interpreter import Interpreter
from rgraph.exec.program import Program, Result, compile

__all__ = ["Interpreter", "Program", "Result", "compile"]
