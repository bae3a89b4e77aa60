"""The exceptions rgraph raises.

Every error a user can provoke with bad input is one of these classes, and its message
says what is wrong and where: the node, the value, and the line of the user's script.

>>> import rgraph as rg
>>> issubclass(rg.errors.ShapeError, rg.errors.RgraphError)
True
"""

from __future__ import annotations


class RgraphError(Exception):
    """Base class of every error rgraph raises on purpose."""


class GraphError(RgraphError):
    """A graph (built in Python or given as IR data) is invalid."""


class ShapeError(GraphError):
    """Shapes of an op's inputs do not agree, or a dim cannot be derived."""


class DTypeError(GraphError):
    """An op got a dtype it does not accept, or inputs of mixed dtypes."""


class UnknownOpError(GraphError):
    """A node names an op that is not in the op registry."""


class BadAttributeError(GraphError):
    """A node's attributes do not match its op's attribute schema."""


class ArityError(GraphError):
    """A node has the wrong number of inputs for its op."""


class UndefinedValueError(GraphError):
    """A node or output refers to a value that nothing defines."""


class DuplicateValueError(GraphError):
    """Two definitions (inputs, params, consts or node outputs) share one name."""


class CycleError(GraphError):
    """The nodes of a graph given as data depend on each other in a cycle."""


class NotDifferentiableError(GraphError):
    """A gradient was requested through an op that has no VJP rule."""


class FeedError(RgraphError):
    """A feed or parameter given to a Program is missing or has the wrong shape or dtype."""


class ExecutionError(RgraphError):
    """A kernel failed while a Program ran; the message names the node and source line."""


class NonFiniteError(ExecutionError):
    """In debug mode (``check_finite``), a node produced a NaN or an infinity.

    The message names the first node that *produced* it (its inputs were finite), its
    op, statistics of its inputs, the user's source line and, inside a scan, the step.
    """


class OptimizerError(RgraphError):
    """An optimiser got bad hyperparameters, or gradients that do not fit the parameters."""


class OptimizerStateError(OptimizerError):
    """Optimiser state (from ``state_dict`` or a file) is malformed or does not fit.

    The message names the optimiser kind, the slot and the parameter at fault.
    """


class GradientCheckError(RgraphError):
    """The generated backward disagrees with finite differences."""


class FormatError(RgraphError):
    """A model file is malformed, corrupt, hostile or of an unsupported version."""
