"""The Autoencoder every model builder returns: encoder -> bottleneck -> decoder."""

from __future__ import annotations

import torch
from torch import nn


class Autoencoder(nn.Module):
    """``forward(x) -> (x_hat, z)``.

    The bottleneck is the sparsity module (identity for ``sparsity=none``); it sits between
    encoder and decoder so a hard constraint such as top-k shapes the code the decoder sees,
    and the trainer asks it for its ``penalty(z)``. ``x_hat`` has the shape of ``x``.
    """

    def __init__(self, encoder: nn.Module, bottleneck: nn.Module, decoder: nn.Module):
        super().__init__()
        self.encoder = encoder
        self.bottleneck = bottleneck
        self.decoder = decoder

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        return self.bottleneck(self.encoder(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        return self.decoder(z)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x_hat, z, _ = self.forward_parts(x)
        return x_hat, z

    def forward_parts(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_hat, z, code)``: ``code`` is the encoder's dense output before the
        bottleneck, which auxiliary losses such as AuxK need."""
        code = self.encoder(x)
        z = self.bottleneck(code)
        return self.decoder(z), z, code
