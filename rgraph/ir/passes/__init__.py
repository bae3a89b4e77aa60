"""Compiler passes: pure functions from IR to IR, each printable afterwards."""

from rgraph.ir.passes.activations import merge_activations
from rgraph.ir.passes.autodiff import autodiff
from rgraph.ir.passes.contract import contract
from rgraph.ir.passes.cse import cse
from rgraph.ir.passes.fold import specialize
from rgraph.ir.passes.hoist import hoist
from rgraph.ir.passes.identities import forward_identities
from rgraph.ir.passes.loop_io import pack_loop_io
from rgraph.ir.passes.losses import fuse_losses
from rgraph.ir.passes.merge import merge_matmuls
from rgraph.ir.passes.pieces import merge_pieces
from rgraph.ir.passes.prune import prune
from rgraph.ir.passes.scales import fold_scales
from rgraph.ir.passes.schedule import schedule
from rgraph.ir.passes.sink import sink
from rgraph.ir.passes.tile import tile
from rgraph.ir.passes.transposes import fold_transposes

__all__ = [
    "autodiff",
    "contract",
    "cse",
    "fold_scales",
    "fold_transposes",
    "forward_identities",
    "fuse_losses",
    "hoist",
    "merge_activations",
    "merge_matmuls",
    "merge_pieces",
    "pack_loop_io",
    "prune",
    "schedule",
    "sink",
    "specialize",
    "tile",
]
