"""Tied weights: each decoder Linear uses the transpose of its mirror encoder Linear's weight.

The first seed trains a symmetric fully-connected autoencoder with shared weights and then
unties them for fine-tuning. Here the shared weight is one ``nn.Parameter``, registered once,
in the encoder: it appears once in the state dict and once in the optimizer, and the
gradients of both of its uses add up on it. The decoder layer keeps its own bias.

Layers are paired by position (the i-th encoder Linear with the i-th decoder Linear from the
end) and every pair is checked: a decoder layer that does not have its mirror's shape
transposed is an error naming both layers, never a silent reshape.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from aeexp.config import ConfigError


class TiedLinear(nn.Module):
    """A decoder Linear whose weight is ``source.weight.t()``; only the bias is its own.

    ``source`` is kept outside ``_modules`` so the shared weight is not registered twice.
    The forward pass uses a contiguous copy of the transpose, which computes bit for bit
    what the untied copy of this layer (a plain ``nn.Linear``) will compute, so untying
    leaves the model's output exactly unchanged; gradients still flow to ``source.weight``.
    """

    def __init__(self, source: nn.Linear, bias: torch.Tensor | None, source_name: str = ""):
        super().__init__()
        self.__dict__["source"] = source  # not a submodule: one registration of the weight
        self.source_name = source_name
        self.in_features = source.out_features
        self.out_features = source.in_features
        self.bias = nn.Parameter(bias.detach().clone()) if bias is not None else None

    @property
    def weight(self) -> torch.Tensor:
        return self.source.weight.t()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.source.weight.t().contiguous(), self.bias)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"weight=transpose of {self.source_name or 'its mirror'}")


def _describe(name: str, layer: nn.Module) -> str:
    return f"{name} ({layer.in_features}->{layer.out_features})"


def mirror_pairs(model: nn.Module) -> list[tuple[str, nn.Linear, str, nn.Module]]:
    """``(encoder_name, encoder_linear, decoder_name, decoder_layer)`` for each mirrored pair:
    the i-th encoder Linear with the i-th decoder Linear counted from the output.

    Raises ConfigError (key ``model.tied``) naming the layers that do not mirror.
    """
    encoder = [(f"encoder.{n}", m) for n, m in model.encoder.named_modules() if isinstance(m, nn.Linear)]
    decoder = [(f"decoder.{n}", m) for n, m in model.decoder.named_modules() if isinstance(m, (nn.Linear, TiedLinear))]
    if not encoder or len(encoder) != len(decoder):
        raise ConfigError("model.tied", (
            f"tying needs as many decoder Linear layers as encoder ones, mirrored; the encoder has "
            f"{len(encoder)} ({', '.join(_describe(n, m) for n, m in encoder) or 'none'}), the decoder "
            f"{len(decoder)} ({', '.join(_describe(n, m) for n, m in decoder) or 'none'}); allowed: "
            "model.tied=false, or a decoder whose hidden sizes are the encoder's reversed"))
    pairs = []
    wrong = []
    for (enc_name, enc), (dec_name, dec) in zip(encoder, reversed(decoder)):
        if (dec.in_features, dec.out_features) != (enc.out_features, enc.in_features):
            wrong.append(f"{_describe(dec_name, dec)} does not mirror {_describe(enc_name, enc)}")
        pairs.append((enc_name, enc, dec_name, dec))
    if wrong:
        raise ConfigError("model.tied", (
            f"{'; '.join(wrong)}; allowed: model.tied=false, or a decoder whose layers are the "
            "encoder's mirrored (each decoder Linear maps out_features back to in_features of its mirror)"))
    return pairs


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, child = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, child, module)


def is_tied(model: nn.Module) -> bool:
    return any(isinstance(m, TiedLinear) for m in model.modules())


def tie(model: nn.Module) -> nn.Module:
    """Tie every mirrored pair in place; the decoder layers' own weights are dropped (their
    biases are kept). Already tied pairs stay as they are. Returns ``model``."""
    for enc_name, enc, dec_name, dec in mirror_pairs(model):
        if isinstance(dec, TiedLinear):
            continue
        _replace(model, dec_name, TiedLinear(enc, dec.bias, source_name=enc_name))
    return model


def untie(model: nn.Module) -> nn.Module:
    """Give every tied decoder layer its own ``nn.Linear`` holding a copy of the shared
    weight, transposed, and its bias: the output is unchanged. Returns ``model``."""
    for name, module in list(model.named_modules()):
        if isinstance(module, TiedLinear):
            weight = module.weight.detach()
            linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None,
                               device=weight.device, dtype=weight.dtype)
            with torch.no_grad():
                linear.weight.copy_(weight)
                if module.bias is not None:
                    linear.bias.copy_(module.bias)
            linear.weight.requires_grad_(module.source.weight.requires_grad)
            if module.bias is not None:
                linear.bias.requires_grad_(module.bias.requires_grad)
            _replace(model, name, linear)
    return model


def untied_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict the model would have untied: every decoder weight under its own name.
    Stage changes carry weights over from this, so tied and untied models line up."""
    if not is_tied(model):
        return model.state_dict()
    return untie(copy.deepcopy(model)).state_dict()
