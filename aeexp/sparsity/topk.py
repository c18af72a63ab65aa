"""Hard sparsity by selection: ``sparsity=topk`` (per sample) and ``sparsity=batch_topk``.

Both keep the values, and so the gradients, of the selected code entries only: the output
is a scatter of the selected values into zeros, so autograd routes gradient to exactly
those entries and nowhere else. Both can add the AuxK loss of Gao et al. (2024), which
lets latents that have not fired for a while (``dead_after`` training samples) learn to
reconstruct what the live ones miss.

``relu``: the seed article's top-k keeps the k largest values as they are, negative ones
included (``relu: false``, the default); SAELens and OpenAI's top-k SAEs apply a ReLU to the
kept values (``relu: true``), so a kept negative value becomes 0 and passes no gradient. Selection comes first either way, so the same entries are chosen.

``aux_normalize``: AuxK's MSE is divided by the batch's mean squared residual,
mean((x - x_hat)^2) (``mean_square``, the default, as aeexp always did), or by the residual's
variance about its batch mean, mean((e - mean_batch(e))^2) (``variance``: Gao et al.'s
normalised MSE as OpenAI's ``normalized_mse`` and EleutherAI's ``sae`` compute it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from aeexp.config import require, require_choice
from aeexp.registry import SPARSITY
from aeexp.sparsity.base import Sparsity, as_matrix


AUX_NORMALIZE = ("mean_square", "variance")


@dataclass
class TopKConfig:
    """``k`` entries kept per sample; ``relu``: a ReLU on the kept values. AuxK: ``aux_weight``
    (0 turns it off), ``aux_k`` dead latents used (null: 2k), ``dead_after`` samples without
    firing = dead, ``aux_normalize`` what its MSE is divided by (module docstring)."""

    name: str = "topk"
    k: int = 16
    relu: bool = False
    aux_weight: float = 1 / 32
    aux_k: Optional[int] = None
    dead_after: int = 10000
    aux_normalize: str = "mean_square"

    def __post_init__(self) -> None:
        require(self.k >= 1, "k", self.k, "an integer >= 1 (and <= the code size)")
        require(self.aux_weight >= 0, "aux_weight", self.aux_weight, "a weight >= 0 (0: no AuxK loss)")
        require(self.aux_k is None or self.aux_k >= 1, "aux_k", self.aux_k, "null (2k) or an integer >= 1")
        require(self.dead_after >= 1, "dead_after", self.dead_after, "a number of samples >= 1")
        require_choice("aux_normalize", self.aux_normalize, AUX_NORMALIZE)


@dataclass
class BatchTopKConfig(TopKConfig):
    """As topk, but the batch's k x batch_size largest entries are kept wherever they fall
    (exactly that many: ties at the smallest kept value are broken by position).
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


def topk_per_sample(flat: torch.Tensor, k: int, relu: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep each row's ``k`` largest values (through a ReLU with ``relu``); return (sparse
    code, indices kept)."""
    values, indices = flat.topk(k, dim=1, sorted=False)
    if relu:
        values = F.relu(values)
    return torch.zeros_like(flat).scatter(1, indices, values), indices


def batch_topk_mask(flat: torch.Tensor, keep: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(mask of exactly ``keep`` entries of ``flat`` holding its ``keep`` largest values, the
    smallest kept value). Entries tied with that value are kept in storage order until the
    count is reached, so integer-valued or saturated codes keep ``keep`` entries, not every tie.
    Found by selection (``kthvalue``, linear time), not a full sort."""
    values = flat.detach().flatten()
    smallest_kept = values.kthvalue(values.numel() - keep + 1).values
    at_least = values >= smallest_kept
    ties = values == smallest_kept
    needed = keep - torch.count_nonzero(at_least) + torch.count_nonzero(ties)  # ties to keep
    # Distinct values tie only with themselves; checking that costs a device sync, free on a CPU.
    if flat.device.type == "cpu" and int(needed) == int(torch.count_nonzero(ties)):
        return at_least.view_as(flat), smallest_kept
    count = torch.int32 if values.numel() < 2**31 else torch.int64
    mask = (values > smallest_kept) | (ties & (ties.cumsum(0, dtype=count) <= needed))
    return mask.view_as(flat), smallest_kept


class _SelectionSparsity(Sparsity):
    """Shared by the selection methods: the ``k`` check, dead-latent tracking and AuxK."""

    def __init__(self, k: int, aux_weight: float, aux_k: int | None, dead_after: int, relu: bool = False,
                 aux_normalize: str = "mean_square"):
        super().__init__()
        self.k, self.aux_weight, self.aux_k, self.dead_after = k, aux_weight, aux_k, dead_after
        self.relu, self.aux_normalize = relu, aux_normalize
        # Training samples since each latent last fired; sized by bind() once the code width is known.
        self.register_buffer("samples_since_fired", torch.zeros(0, dtype=torch.long))

    def bind(self, code_features: int, batch_size: int) -> None:
        from aeexp.config import ConfigError

        if self.k > code_features:
            raise ConfigError("sparsity.k", f"got {self.k}, allowed: 1 to the code size, {code_features}")
        self.samples_since_fired = torch.zeros(code_features, dtype=torch.long, device=self.samples_since_fired.device)

    @torch.no_grad()
    def _record_firing(self, fired: torch.Tensor, batch: int) -> None:
        """``fired``: (features,) bool, which latents were nonzero for some sample. A kept
        entry whose value is 0 (a saturated code, or zeroed by ``relu``) did not fire, so it
        cannot hide a dead latent from AuxK."""
        if self.training and self.samples_since_fired.numel():
            self.samples_since_fired.copy_(torch.where(fired, 0, self.samples_since_fired + batch))

    def dead_latents(self) -> torch.Tensor:
        return self.samples_since_fired > self.dead_after

    def auxiliary(
        self, code: torch.Tensor, residual: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor]
    ) -> torch.Tensor:
        """AuxK: the top ``aux_k`` dead latents of the dense code (through a ReLU with
        ``relu``) reconstruct the residual ``e = x - x_hat``.

        The loss is ``aux_weight x mean((decode(aux) - decode(0) - e)^2) / N``, with N the
        mean squared residual mean(e^2) (``aux_normalize=mean_square``) or its variance about
        the batch mean, mean((e - mean_batch(e))^2) (``variance``, Gao et al.). It is exactly
        zero, and costs nothing, when no latent is dead.
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
        if self.relu:
            values = F.relu(values)
        aux_code = torch.zeros_like(flat).scatter(1, indices, values).view_as(code)
        with torch.no_grad():
            residual = residual.detach().float()
            if self.aux_normalize == "variance":
                flat_residual = as_matrix(residual)
                scale = (flat_residual - flat_residual.mean(0)).pow(2).mean().clamp_min(1e-12)
            else:
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
        aux_normalize: str = TopKConfig.aux_normalize,
        relu: bool = TopKConfig.relu,
    ):
        super().__init__(k, aux_weight, aux_k, dead_after, relu, aux_normalize)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat = as_matrix(z)
        sparse, _ = topk_per_sample(flat, self.k, self.relu)
        if self.training:
            self._record_firing((sparse != 0).any(0), flat.shape[0])
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
        aux_normalize: str = BatchTopKConfig.aux_normalize,
        eval_mode: str = BatchTopKConfig.eval_mode,
        threshold_momentum: float = BatchTopKConfig.threshold_momentum,
        relu: bool = BatchTopKConfig.relu,
    ):
        super().__init__(k, aux_weight, aux_k, dead_after, relu, aux_normalize)
        self.eval_mode, self.momentum = eval_mode, threshold_momentum
        self.register_buffer("threshold", torch.zeros(()))
        self.register_buffer("threshold_ready", torch.zeros((), dtype=torch.bool))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        flat = as_matrix(z)
        if self.training:
            mask, smallest_kept = batch_topk_mask(flat, min(self.k * flat.shape[0], flat.numel()))
            sparse = (F.relu(flat) if self.relu else flat) * mask.to(flat.dtype)
            # With the ReLU nothing below 0 survives, so evaluation's threshold is at least 0.
            self._update_threshold(smallest_kept.clamp_min(0) if self.relu else smallest_kept)
            self._record_firing((sparse != 0).any(0), flat.shape[0])
        elif self.eval_mode == "threshold" and bool(self.threshold_ready):
            sparse = (F.relu(flat) if self.relu else flat) * (flat > self.threshold).to(flat.dtype)
        else:
            sparse, _ = topk_per_sample(flat, self.k, self.relu)
        return sparse.view_as(z)

    @torch.no_grad()
    def _update_threshold(self, smallest_kept: torch.Tensor) -> None:
        smallest_kept = smallest_kept.detach().to(self.threshold.dtype)
        blended = torch.lerp(self.threshold, smallest_kept, self.momentum)
        self.threshold.copy_(torch.where(self.threshold_ready, blended, smallest_kept))
        self.threshold_ready.fill_(True)
