"""``sparsity=lifetime``: winner-take-all across the batch (Makhzani & Frey 2015).

For each feature only its ``k`` largest values over the samples of the batch survive, so
every feature is forced to specialise on a few samples. The constraint shapes training
only: in evaluation the code passes through unchanged, as in the first seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aeexp.config import ConfigError, require
from aeexp.registry import SPARSITY
from aeexp.sparsity.base import Sparsity, as_matrix


@dataclass
class LifetimeConfig:
    """``k``: a fraction of the batch in (0, 1) (0.05 = top 5% of samples per feature), or
    a whole count of samples >= 1 (at most trainer.batch_size)."""

    name: str = "lifetime"
    k: float = 0.05

    def __post_init__(self) -> None:
        require(
            0 < self.k < 1 or (self.k >= 1 and float(self.k).is_integer()),
            "k", self.k, "a fraction of the batch in (0, 1), or a whole number of samples >= 1",
        )


@SPARSITY.register("lifetime", schema=LifetimeConfig)
class LifetimeSparsity(Sparsity):
    def __init__(self, k: float = LifetimeConfig.k):
        super().__init__()
        self.k = k

    def winners(self, batch: int) -> int:
        """How many samples each feature keeps in a batch of this size (a short last
        batch keeps proportionally fewer for a fraction, at most all of them for a count)."""
        if self.k < 1:
            return max(1, round(self.k * batch))
        return min(int(self.k), batch)

    def bind(self, code_features: int, batch_size: int) -> None:
        if self.k >= 1 and self.k > batch_size:
            raise ConfigError(
                "sparsity.k",
                f"got {self.k:g} samples per feature, allowed: at most trainer.batch_size ({batch_size}), "
                "or a fraction in (0, 1)",
            )

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return z
        flat = as_matrix(z)
        values, indices = flat.topk(self.winners(flat.shape[0]), dim=0)
        return torch.zeros_like(flat).scatter(0, indices, values).view_as(z)
