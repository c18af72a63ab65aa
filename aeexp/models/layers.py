"""Fully-connected layer stacks built from descriptors written in YAML.

A descriptor says what one block is (``out_features``, ``activation``, ``dropout``) and how
many times to stack it (``repeat``), like the VGG-style descriptors of the first seed; input
sizes are chained automatically so a config never types them in.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from aeexp.config import ConfigError, require
from aeexp.registry import ACTIVATIONS

ACTIVATIONS.register("relu")(nn.ReLU)
ACTIVATIONS.register("leaky_relu")(nn.LeakyReLU)
ACTIVATIONS.register("sigmoid")(nn.Sigmoid)
ACTIVATIONS.register("tanh")(nn.Tanh)
ACTIVATIONS.register("gelu")(nn.GELU)
ACTIVATIONS.register("none")(nn.Identity)


@dataclass
class LayerConfig:
    """One block: Linear(out_features) -> activation -> Dropout, stacked ``repeat`` times."""

    out_features: int
    activation: str = "relu"
    repeat: int = 1
    dropout: float = 0.0

    def check(self, key: str) -> None:
        require(self.out_features >= 1, f"{key}.out_features", self.out_features, "an integer >= 1")
        require(self.repeat >= 1, f"{key}.repeat", self.repeat, "an integer >= 1")
        require(0.0 <= self.dropout < 1.0, f"{key}.dropout", self.dropout, "a probability in [0, 1)")
        check_activation(f"{key}.activation", self.activation)


def check_activation(key: str, name: str) -> None:
    if name not in ACTIVATIONS:
        raise ConfigError(key, f"got {name!r}, allowed: one of {', '.join(ACTIVATIONS.names())}")


def make_activation(name: str) -> nn.Module:
    return ACTIVATIONS.get(name)()


def linear_block(in_features: int, out_features: int, activation: str, dropout: float = 0.0) -> nn.Sequential:
    """Linear -> activation (-> Dropout): the unit every fully-connected stack is made of."""
    block = nn.Sequential(nn.Linear(in_features, out_features), make_activation(activation))
    if dropout > 0:
        block.append(nn.Dropout(dropout))
    return block


def linear_stack(in_features: int, layers: list[dict]) -> tuple[nn.Sequential, int]:
    """Chain the descriptors into one Sequential; return it with its output size."""
    stack = nn.Sequential()
    size = in_features
    for descriptor in layers:
        spec = LayerConfig(**descriptor)
        for _ in range(spec.repeat):
            stack.append(linear_block(size, spec.out_features, spec.activation, spec.dropout))
            size = spec.out_features
    return stack, size
