"""Hard sparsity by selection: ``sparsity=topk`` (per sample) and ``sparsity=batch_topk``.

Both keep the values, and so the gradients, of the selected code entries only: the output
is a scatter of the selected values into zeros, so autograd routes gradient to exactly
those entries and nowhere else. Both can add the AuxK loss of Gao et al. (2024), which
lets latents that have not fired for a while (``dead_after`` training samples) learn to
reconstruct what the live ones miss.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from aeexp.config import require, require_choice
from aeexp.registry import SPARSITY
from aeexp.sparsity.base import Sparsity, as_matrix


@dataclass
class TopKConfig:
    """``k`` entries kept per sample. AuxK: ``aux_weight`` (0 turns it off), ``aux_k``
    dead latents used (null: 2k), ``dead_after`` samples without firing = dead."""

    name: str = "topk"
    k: int = 16
    aux_weight: float = 1 / 32
    aux_k: Optional[int] = None
    dead_after: int = 10000

    def __post_init__(self) -> None:
        require(self.k >= 1, "k", self.k, "an integer >= 1 (and <= the code size)")
        require(self.aux_weight >= 0, "aux_weight", self.aux_weight, "a weight >= 0 (0: no AuxK loss)")
        require(self.aux_k is None or self.aux_k >= 1, "aux_k", self.aux_k, "null (2k) or an integer >= 1")
        require(self.dead_after >= 1, "dead_after", self.dead_after, "a number of samples >= 1")


@dataclass
class BatchTopKConfig(TopKConfig):
    """As topk, but the batch's k x batch_size largest entries are kept wherever they fall.
    ``eval_mode``: ``threshold`` keeps entries above the running average of the smallest
    kept value seen in training (the BatchTopK paper's inference rule); ``topk`` keeps k per
    sample."""

    name: str = "batch_topk"
    eval_mode: str = "threshold"
    threshold_momentum: float = 0.01

    def __post_init__(self) -> None:
        super().__post_init__()
        require_choice("eval_mode", self.eval_mode, ("threshold", "topk"))
        require(0 < self.threshold_momentum <= 1, "threshold_momentum", self.threshold_momentum, "a value in (0, 1]")


def topk_per_sample(flat: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep each row's ``k`` largest values; return (sparse code, indices kept)."""
    values, indices = flat.topk(k, dim=1, sorted=False)
    return torch.zeros_like(flat).scatter(1, indices, values), indices


class _SelectionSparsity(Sparsity):
    """Shared by the selection methods: the ``k`` check, dead-latent tracking and AuxK."""

    def __init__(self, k: int, aux_weight: float, aux_k: int | None, dead_after: int):
        super().__init__()
        self.k, self.aux_weight, self.aux_k, self.dead_after = k, aux_weight, aux_k, dead_after
        # Training samples since each latent last fired; sized by bind() once the code width is known.
        self.register_buffer("samples_since_fired", torch.zeros(0, dtype=torch.long))

    def bind(self, code_features: int, batch_size: int) -> None:
        from aeexp.config import ConfigError

        if self.k > code_features:
            raise ConfigError("sparsity.k", f"got {self.k}, allowed: 1 to the code size, {code_features}")
        self.samples_since_fired = torch.zeros(code_features, dtype=torch.long, device=self.samples_since_fired.device)

    @torch.no_grad()
    def _record_firing(self, fired: torch.Tensor, batch: int) -> None:
        """``fired``: (features,) bool, which latents were nonzero for some sample."""
        if self.training and self.samples_since_fired.numel():
            self.samples_since_fired.copy_(torch.where(fired, 0, self.samples_since_fired + batch))

    def dead_latents(self) -> torch.Tensor:
        return self.samples_since_fired > self.dead_after

    def auxiliary(
        self, code: torch.Tensor, residual: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """AuxK: the top ``aux_k`` dead latents of the dense code reconstruct the residual.

        The loss is the residual's normalised MSE (as in Gao et al.), times ``aux_weight``;
        it is exactly zero, and costs nothing, when no latent is dead.
        """
        zero = code.new_zeros((), dtype=torch.float32)
        if self.aux_weight == 0 or not self.training or not self.samples_since_fired.numel():
            return zero
        dead = self.dead_latents()
        if not bool(dead.any()):
            return zero
        flat = as_matrix(code)
        aux_k = min(self.aux_k or 2 * self.k, flat.shape[1])
        candidates = flat.masked_fill(~dead, float("-inf"))
        values, indices = candidates.topk(aux_k, dim=1)
        values = torch.where(torch.isfinite(values), values, torch.zeros_like(values))
        aux_code = torch.zeros_like(flat).scatter(1, indices, values).view_as(code)
        with torch.no_grad():
            residual = residual.detach().float()
            scale = residual.pow(2).mean().clamp_min(1e-12)
            # decode(aux) - decode(empty code) should match the residual; moving the empty
            # code's output to the target side keeps the batch-sized graph one op shorter.
            target = residual + decode(torch.zeros_like(code[:1])).float()
        return self.aux_weight * F.mse_loss(decode(aux_code).float(), target) / scale


@SPARSITY.register("topk", schema=TopKConfig)
class TopKSparsity(_SelectionSparsity):
    """Each sample keeps its ``k`` largest code entries (training and evaluation alike)."""

    def __init__(
        self,
        k: int = TopKConfig.k,
        aux_weight: float = TopKConfig.aux_weight,
        aux_k: int | None = TopKConfig.aux_k,
        dead_after: int = TopKConfig.dead_after,
    ):
        super().__init__(k, aux_weight, aux_k, dead_after)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat = as_matrix(z)
        sparse, indices = topk_per_sample(flat, self.k)
        if self.training:
            fired = torch.zeros(flat.shape[1], dtype=torch.bool, device=flat.device)
            self._record_firing(fired.index_fill_(0, indices.flatten(), True), flat.shape[0])
        return sparse.view_as(z)


@SPARSITY.register("batch_topk", schema=BatchTopKConfig)
class BatchTopKSparsity(_SelectionSparsity):
    """The batch keeps its ``k x batch_size`` largest entries, however they fall on samples,
    so an easy sample may use fewer latents and a hard one more (Bussmann et al. 2024).

    In evaluation a sample's code must not depend on its batch-mates, so entries above a
    threshold learned in training are kept (``eval_mode=threshold``, the running average of
    the smallest kept value), or each sample keeps its own top k (``eval_mode=topk``, also
    used before any training step has set the threshold).
    """

    def __init__(
        self,
        k: int = BatchTopKConfig.k,
        aux_weight: float = BatchTopKConfig.aux_weight,
        aux_k: int | None = BatchTopKConfig.aux_k,
        dead_after: int = BatchTopKConfig.dead_after,
        eval_mode: str = BatchTopKConfig.eval_mode,
        threshold_momentum: float = BatchTopKConfig.threshold_momentum,
    ):
        super().__init__(k, aux_weight, aux_k, dead_after)
        self.eval_mode, self.momentum = eval_mode, threshold_momentum
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_ready", torch.zeros((), dtype=torch.bool))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat = as_matrix(z)
        if self.training:
            keep = min(self.k * flat.shape[0], flat.numel())
            # The keep-th largest entry by selection (linear time), not a full top-k sort.
            smallest_kept = flat.detach().flatten().kthvalue(flat.numel() - keep + 1).values
            mask = flat >= smallest_kept
            sparse = flat * mask.to(flat.dtype)
            self._update_threshold(smallest_kept)
            self._record_firing(mask.any(0), flat.shape[0])
        elif self.eval_mode == "threshold" and bool(self.threshold_ready):
            sparse = flat * (flat > self.threshold).to(flat.dtype)
        else:
            sparse, _ = topk_per_sample(flat, self.k)
        return sparse.view_as(z)

    @torch.no_grad()
    def _update_threshold(self, smallest_kept: torch.Tensor) -> None:
        smallest_kept = smallest_kept.detach().float()
        blended = torch.lerp(self.threshold, smallest_kept, self.momentum)
        self.threshold.copy_(torch.where(self.threshold_ready, blended, smallest_kept))
        self.threshold_ready.fill_(True)
