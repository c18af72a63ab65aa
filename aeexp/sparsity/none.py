"""``sparsity=none``: the code passes through unchanged and costs nothing."""

from __future__ import annotations

import torch
from torch import nn

from aeexp.registry import SPARSITY


@SPARSITY.register("none")
class NoSparsity(nn.Module):
    """The interface every sparsity method follows.

    ``forward(z)`` applies a hard constraint to the code (here: none) and ``penalty(z)``
    returns the loss term added to the reconstruction error (here: zero).
    """

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def penalty(self, z: torch.Tensor) -> torch.Tensor:
        return z.new_zeros(())
