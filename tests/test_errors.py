"""The error hierarchy: every exception rgraph raises on purpose is an ``RgraphError``.

Users catch ``rg.errors.RgraphError`` for everything, ``GraphError`` for problems of a
graph (built in Python or given as data); runtime problems are not graph problems.
"""

from __future__ import annotations

import inspect

import pytest

import rgraph as rg
from rgraph import errors

ERROR_CLASSES = [
    cls
    for _, cls in inspect.getmembers(errors, inspect.isclass)
    if issubclass(cls, BaseException) and cls.__module__ == errors.__name__
]

GRAPH_ERRORS = {
    "ShapeError",
    "DTypeError",
    "UnknownOpError",
    "BadAttributeError",
    "ArityError",
    "UndefinedValueError",
    "DuplicateValueError",
    "CycleError",
    "NotDifferentiableError",
}
RUNTIME_ERRORS = {"FeedError", "ExecutionError", "GradientCheckError", "FormatError"}


def test_the_module_defines_the_documented_classes():
    names = {cls.__name__ for cls in ERROR_CLASSES}
    assert {"RgraphError", "GraphError"} | GRAPH_ERRORS | RUNTIME_ERRORS <= names


@pytest.mark.parametrize("cls", ERROR_CLASSES, ids=lambda c: c.__name__)
def test_every_error_class_is_an_rgraph_error(cls):
    assert issubclass(cls, errors.RgraphError)
    assert issubclass(cls, Exception)
    assert cls.__doc__, f"{cls.__name__} has no docstring saying when it is raised"


@pytest.mark.parametrize("name", sorted(GRAPH_ERRORS))
def test_graph_problems_are_graph_errors(name):
    assert issubclass(getattr(errors, name), errors.GraphError)


@pytest.mark.parametrize("name", sorted(RUNTIME_ERRORS))
def test_runtime_problems_are_not_graph_errors(name):
    cls = getattr(errors, name)
    assert issubclass(cls, errors.RgraphError)
    assert not issubclass(cls, errors.GraphError)


def test_errors_are_reachable_from_the_package():
    assert rg.errors is errors


def test_a_real_error_is_caught_as_rgraph_error():
    g = rg.Graph("e")
    x = g.input("x", (2, 3))
    with pytest.raises(errors.RgraphError) as info:
        x @ x
    assert type(info.value) is errors.ShapeError
