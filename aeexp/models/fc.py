"""Fully-connected autoencoders (``model=fc``, ``model=mlp``, any stack written in YAML)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from torch import nn

from aeexp.config import ConfigError, require
from aeexp.models.autoencoder import Autoencoder
from aeexp.models.layers import LayerConfig, check_activation, linear_block, linear_stack
from aeexp.models.tied import tie
from aeexp.registry import MODELS


@dataclass
class FCModelConfig:
    """Encoder: hidden ``encoder`` layers, then a Linear to ``latent_dim`` with ``code_activation``.
    Decoder: hidden ``decoder`` layers, then a Linear back to the input size with
    ``output_activation``; the input size comes from the dataset.

    ``tied``: each decoder Linear uses the transpose of its mirror encoder Linear's weight
    (see :mod:`aeexp.models.tied`); the decoder's hidden sizes must be the encoder's reversed."""

    name: str = "fc"
    latent_dim: int = 64
    encoder: list[LayerConfig] = field(default_factory=list)
    code_activation: str = "leaky_relu"
    decoder: list[LayerConfig] = field(default_factory=list)
    output_activation: str = "leaky_relu"
    tied: bool = False

    def __post_init__(self) -> None:
        require(self.latent_dim >= 1, "latent_dim", self.latent_dim, "an integer >= 1")
        check_activation("code_activation", self.code_activation)
        check_activation("output_activation", self.output_activation)
        for part in ("encoder", "decoder"):
            for i, layer in enumerate(getattr(self, part)):
                layer.check(f"{part}[{i}]")
        if self.tied:
            encoder, decoder = hidden_sizes(self.encoder), hidden_sizes(self.decoder)
            if decoder != encoder[::-1]:
                raise ConfigError("tied", (
                    f"got True, but the decoder's hidden sizes {decoder} do not mirror the encoder's "
                    f"{encoder}; allowed: tied=false, or decoder hidden sizes {encoder[::-1]}"))


def hidden_sizes(layers: list[LayerConfig]) -> list[int]:
    """The hidden layer widths the descriptors expand to (``repeat`` unrolled)."""
    return [layer.out_features for layer in layers for _ in range(layer.repeat)]


@MODELS.register("fc", schema=FCModelConfig)
def build_fc(
    *,
    input_shape: tuple[int, ...],
    bottleneck: nn.Module,
    latent_dim: int = FCModelConfig.latent_dim,
    encoder: list[dict] = (),
    code_activation: str = FCModelConfig.code_activation,
    decoder: list[dict] = (),
    output_activation: str = FCModelConfig.output_activation,
    tied: bool = FCModelConfig.tied,
) -> Autoencoder:
    """Through ``MODELS`` every key comes from a node checked against :class:`FCModelConfig`;
    the defaults here are the schema's own, for a node that names only a few keys."""
    in_features = math.prod(input_shape)
    hidden, size = linear_stack(in_features, list(encoder))
    encoder_net = nn.Sequential(
        nn.Flatten(), *hidden, linear_block(size, latent_dim, code_activation)
    )
    hidden, size = linear_stack(latent_dim, list(decoder))
    decoder_net = nn.Sequential(
        *hidden,
        linear_block(size, in_features, output_activation),
        nn.Unflatten(1, tuple(input_shape)),
    )
    model = Autoencoder(encoder_net, bottleneck, decoder_net)
    return tie(model) if tied else model
