"""What every sparsity method shares: the interface and the handling of code shapes.

A sparsity method is an ``nn.Module`` placed between encoder and decoder (the full
interface a user's ``_target_`` class must have is in docs/guide.md, section 3):

- ``forward(z)`` applies a hard constraint to the code (top-k, winner-take-all) or none;
- ``penalty(z)`` returns a scalar loss term added to the reconstruction error (L1, KL) or zero;
- ``auxiliary(code, residual, decode)`` returns a scalar extra loss computed from the dense
  code before the constraint (AuxK against dead latents) or zero;
- ``bind(code_features, batch_size)``, optional (this base class has none), is called once
  by :func:`aeexp.models.factory.build_model` when the code's width is known: it sizes what
  depends on it and raises :class:`aeexp.config.ConfigError` for settings that cannot work
  (top-k's ``k`` above the code width, lifetime's ``k`` above the batch size).

Codes of any shape work: constraints act on the code flattened to (batch, features), so a
convolutional code is sparsified over all its entries.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn


class Sparsity(nn.Module):
    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return z

    def penalty(self, z: torch.Tensor) -> torch.Tensor:
        return z.new_zeros((), dtype=torch.float32)

    def auxiliary(
        self, code: torch.Tensor, residual: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        return code.new_zeros((), dtype=torch.float32)


def as_matrix(z: torch.Tensor) -> torch.Tensor:
    """(batch, ...) -> (batch, features), a view where possible."""
    return z.reshape(z.shape[0], -1)
