"""Model files: the ``.rgraph`` msgpack format and RecurrentJS interop."""

from rgraph.io.format import Model, load, save

__all__ = ["Model", "load", "save"]
