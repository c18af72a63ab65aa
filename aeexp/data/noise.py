"""Noise transforms applied to whole batches on the training device.

The trainer corrupts the input and keeps the clean batch as the target, so denoising is
just a different transform; ``noise=none`` returns the batch itself at no cost.
"""

from __future__ import annotations

import torch

from aeexp.registry import NOISE


@NOISE.register("none")
class NoNoise:
    """Identity: the input is the clean batch."""

    active = False

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x
