"""``sparsity=none``: the code passes through unchanged and costs nothing."""

from __future__ import annotations

from aeexp.registry import SPARSITY
from aeexp.sparsity.base import Sparsity


@SPARSITY.register("none")
class NoSparsity(Sparsity):
    """Identity constraint, zero penalty: the plain autoencoder."""
