"""Convolutional autoencoders (``model=conv``, ``model=conv_fc``, any conv stack written in YAML).

The encoder is built from conv descriptors, VGG-style like the first seed's
``VGGStacked2DConv``. Every size after it (the flattened code, the Linear layers, the
decoder's ``output_padding``) is computed from the data's (C, H, W), so one config works
on 1x28x28, 3x32x32 or 1x64x48 images and a config never types a flatten size.

The ``transpose`` decoder is the encoder mirrored layer by layer: each Conv2d becomes a
ConvTranspose2d with the same kernel, stride and padding whose ``output_padding`` is chosen
so it gives back exactly the size its twin took in (a stride-2 conv maps 13 and 14 to 7;
only the encoder knows which it was), and each MaxPool2d becomes an Upsample to the size
before pooling. So x_hat always has the shape of x, whatever the image size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Optional

from torch import nn

from aeexp.config import ConfigError, require, require_choice
from aeexp.models.autoencoder import Autoencoder
from aeexp.models.layers import LayerConfig, check_activation, linear_block, linear_stack, make_activation
from aeexp.registry import MODELS

Shape = tuple[int, int, int]


@dataclass
class ConvLayerConfig:
    """One block: [Conv2d(channels, kernel, stride, padding) -> activation] x ``repeat``,
    then MaxPool2d(``pool``) once after the whole block (``pool: 1``: no pooling), the way
    the first seed pools once after its four convolutions."""

    channels: int
    kernel: int = 3
    stride: int = 1
    padding: int = 0
    activation: str = "relu"
    pool: int = 1
    repeat: int = 1

    def check(self, key: str) -> None:
        for name in ("channels", "kernel", "stride", "pool", "repeat"):
            value = getattr(self, name)
            require(value >= 1, f"{key}.{name}", value, "an integer >= 1")
        require(self.padding >= 0, f"{key}.padding", self.padding, "an integer >= 0")
        check_activation(f"{key}.activation", self.activation)


@dataclass
class ConvModelConfig:
    """Encoder: the ``encoder`` conv blocks, Flatten, then a Linear to ``latent_dim`` (null:
    the flattened feature map is the code), then ``code_activation``. Codes are always
    (batch, features), so sparsity, latent figures and the dictionary work unchanged.

    Decoder ``transpose``: a Linear back to the last feature map (when ``latent_dim`` is set),
    then the encoder mirrored in ConvTranspose2d layers; ``fc``: the hidden
    ``decoder_hidden`` Linear layers, then a Linear to C*H*W. Both end in
    ``output_activation`` at the data's channel count. The defaults are ``conf/model/conv.yaml``:
    two 3x3 stride-2 blocks of 16 and 32 channels, a 32-d code, a transpose decoder."""

    name: str = "conv"
    encoder: list[ConvLayerConfig] = field(default_factory=lambda: [
        ConvLayerConfig(channels=16, kernel=3, stride=2, padding=1, activation="relu"),
        ConvLayerConfig(channels=32, kernel=3, stride=2, padding=1, activation="relu"),
    ])
    latent_dim: Optional[int] = 32
    code_activation: str = "none"
    decoder: str = "transpose"
    decoder_hidden: list[LayerConfig] = field(default_factory=list)
    output_activation: str = "sigmoid"

    def __post_init__(self) -> None:
        require(len(self.encoder) >= 1, "encoder", self.encoder, "a list of at least one conv descriptor")
        for i, layer in enumerate(self.encoder):
            layer.check(f"encoder[{i}]")
        require(self.latent_dim is None or self.latent_dim >= 1, "latent_dim", self.latent_dim,
                "null (the flattened conv output is the code) or an integer >= 1")
        check_activation("code_activation", self.code_activation)
        require_choice("decoder", self.decoder, ("transpose", "fc"))
        hidden = [asdict(layer) for layer in self.decoder_hidden]
        require(self.decoder == "fc" or not hidden, "decoder_hidden", hidden,
                "[] with decoder=transpose (hidden Linear layers belong to decoder=fc)")
        for i, layer in enumerate(self.decoder_hidden):
            layer.check(f"decoder_hidden[{i}]")
        check_activation("output_activation", self.output_activation)


def conv_size(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


def conv_plan(input_shape: Shape, encoder: list[dict]) -> list[tuple[str, ConvLayerConfig, Shape, Shape]]:
    """The encoder as steps ``(kind, spec, shape_in, shape_out)``, kind ``conv`` or ``pool``.

    Sizes are worked out here, before any module exists, so a stack that shrinks the image
    below one pixel fails naming its descriptor instead of deep inside PyTorch.
    """
    steps = []
    shape = tuple(input_shape)
    for i, descriptor in enumerate(encoder):
        spec = ConvLayerConfig(**descriptor)
        key = f"model.encoder[{i}]"
        spec.check(key)
        for r in range(spec.repeat):
            _, h, w = shape
            out = (spec.channels, *(conv_size(n, spec.kernel, spec.stride, spec.padding) for n in (h, w)))
            which = f" (repeat {r + 1} of {spec.repeat})" if spec.repeat > 1 else ""
            conv = f"Conv2d kernel {spec.kernel}, stride {spec.stride}, padding {spec.padding}{which}"
            _require_pixels(key, out, shape, input_shape, conv)
            steps.append(("conv", spec, shape, out))
            shape = out
        if spec.pool > 1:
            c, h, w = shape
            out = (c, h // spec.pool, w // spec.pool)
            _require_pixels(key, out, shape, input_shape, f"MaxPool2d {spec.pool}")
            steps.append(("pool", spec, shape, out))
            shape = out
    return steps


def _require_pixels(key: str, out: Shape, shape: Shape, input_shape: Shape, what: str) -> None:
    if min(out[1:]) < 1:
        raise ConfigError(key, (
            f"{what} would shrink the {shape[1]}x{shape[2]} feature map to {out[1]}x{out[2]} "
            f"(input {'x'.join(map(str, input_shape))}); allowed: layers that keep at least 1x1 "
            "pixel: a smaller kernel, stride or pool, more padding, or fewer layers"))


def conv_encoder(steps: list) -> nn.Sequential:
    """Conv2d -> activation for each conv step, MaxPool2d for each pool step."""
    stack = nn.Sequential()
    for kind, spec, shape_in, shape_out in steps:
        if kind == "pool":
            stack.append(nn.MaxPool2d(spec.pool))
            continue
        stack.append(nn.Conv2d(shape_in[0], shape_out[0], spec.kernel, spec.stride, spec.padding))
        stack.append(make_activation(spec.activation))
    return stack


def transpose_decoder(steps: list, output_activation: str) -> nn.Sequential:
    """The encoder's steps reversed: each conv becomes a ConvTranspose2d that restores its
    twin's input shape exactly, each pool an Upsample to the size before pooling. Hidden
    layers keep their twin's activation; the last one (back to the data's channels) gets
    ``output_activation``."""
    stack = nn.Sequential()
    for n, (kind, spec, shape_in, shape_out) in enumerate(reversed(steps)):
        if kind == "pool":
            stack.append(nn.Upsample(size=shape_in[1:]))
            continue
        # (out - 1) * stride - 2 * padding + kernel falls short of the input size by the rows
        # the strided conv skipped; output_padding adds them back (always < stride).
        output_padding = tuple((s + 2 * spec.padding - spec.kernel) % spec.stride for s in shape_in[1:])
        stack.append(nn.ConvTranspose2d(shape_out[0], shape_in[0], spec.kernel, spec.stride, spec.padding,
                                        output_padding=output_padding))
        last = n == len(steps) - 1
        stack.append(make_activation(output_activation if last else spec.activation))
    return stack


@MODELS.register("conv", schema=ConvModelConfig)
def build_conv(
    *,
    input_shape: tuple[int, ...],
    bottleneck: nn.Module,
    encoder: list[dict],
    latent_dim: Optional[int],
    code_activation: str,
    decoder: str,
    decoder_hidden: list[dict],
    output_activation: str,
) -> Autoencoder:
    """Called through ``MODELS`` with a node checked against :class:`ConvModelConfig`, which
    holds the defaults (every key is filled in)."""
    if len(input_shape) != 3:
        raise ConfigError("model", f"model=conv needs images (C, H, W), but the data's samples have shape "
                          f"{tuple(input_shape)} (vectors); allowed: model=fc (or another model that flattens its input)")
    steps = conv_plan(tuple(input_shape), list(encoder))
    feature_shape = steps[-1][3]
    features = math.prod(feature_shape)
    code_size = features if latent_dim is None else latent_dim

    encoder_net = conv_encoder(steps).append(nn.Flatten())
    if latent_dim is not None:
        encoder_net.append(nn.Linear(features, latent_dim))
    if code_activation != "none":
        encoder_net.append(make_activation(code_activation))

    if decoder == "fc":
        hidden, size = linear_stack(code_size, list(decoder_hidden))
        decoder_net = nn.Sequential(
            *hidden,
            linear_block(size, math.prod(input_shape), output_activation),
            nn.Unflatten(1, tuple(input_shape)),
        )
    else:
        decoder_net = nn.Sequential()
        if latent_dim is not None:
            decoder_net.append(nn.Linear(latent_dim, features))
        decoder_net.append(nn.Unflatten(1, feature_shape))
        decoder_net.extend(transpose_decoder(steps, output_activation))
    return Autoencoder(encoder_net, bottleneck, decoder_net)
