"""Greedy layer-wise training: shallower views of a deep stack, weights carried over by
name and shape, and freezing.

A stage of depth k uses the first k Linear blocks of the encoder and the last k of the
decoder, under the *same module names* they have in the whole model (``encoder.1``,
``decoder.3``, ...). So a weight trained in one stage is found under the same name in the
next, and the last stage at full depth is exactly the model the config describes. The
first seed copies layers by position without checking shapes; here a name whose shape
differs between stages is an error naming both shapes.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from aeexp.config import ConfigError
from aeexp.models.autoencoder import Autoencoder
from aeexp.models.tied import TiedLinear


def _linear_blocks(stack: nn.Module, part: str, key: str) -> list[str]:
    """Names of the children of ``stack`` that hold parameters; each must be one Linear block."""
    names = []
    for name, child in stack.named_children():
        if not any(True for _ in child.parameters()):
            continue
        linears = [m for m in child.modules() if isinstance(m, (nn.Linear, TiedLinear))]
        others = [type(m).__name__ for m in child.modules()
                  if not isinstance(m, (nn.Linear, TiedLinear)) and any(True for _ in m.parameters(recurse=False))]
        if len(linears) != 1 or others:
            raise ConfigError(key, (
                f"{part}.{name} ({type(child).__name__}) is not one Linear block; allowed: depth on a "
                "fully-connected model (model=fc, mlp or deep_fc), or depth=null"))
        names.append(name)
    return names


def keep_depth(model: Autoencoder, depth: int, key: str = "depth") -> Autoencoder:
    """The autoencoder made of the first ``depth`` encoder blocks and the last ``depth``
    decoder blocks (plus the parameter-free Flatten/Unflatten), sharing their modules and
    module names with ``model``; the code is the output of encoder block ``depth``."""
    encoder_blocks = _linear_blocks(model.encoder, "encoder", key)
    decoder_blocks = _linear_blocks(model.decoder, "decoder", key)
    if len(encoder_blocks) != len(decoder_blocks):
        raise ConfigError(key, (
            f"the encoder has {len(encoder_blocks)} Linear blocks and the decoder {len(decoder_blocks)}; "
            "allowed: depth on a model whose decoder mirrors its encoder, or depth=null"))
    n = len(encoder_blocks)
    if not 1 <= depth <= n:
        raise ConfigError(key, f"got {depth}, allowed: 1 to the model's {n} encoder Linear layers")
    keep = set(encoder_blocks[:depth]) | {f"decoder.{name}" for name in decoder_blocks[n - depth:]}
    encoder = nn.Sequential(OrderedDict(
        (name, child) for name, child in model.encoder.named_children()
        if name in keep or name not in encoder_blocks))
    decoder = nn.Sequential(OrderedDict(
        (name, child) for name, child in model.decoder.named_children()
        if f"decoder.{name}" in keep or name not in decoder_blocks))
    return Autoencoder(encoder, model.bottleneck, decoder)


def carry_over(previous: dict[str, torch.Tensor], model: nn.Module, key: str = "stage") -> set[str]:
    """Copy every entry of ``previous`` (a state dict) whose name ``model`` also has into
    ``model``; return the names ``model`` has that ``previous`` lacks (the new layers,
    which keep their fresh initialisation). A shared name with another shape is an error."""
    target = model.state_dict()
    for name, tensor in previous.items():
        if name in target and target[name].shape != tensor.shape:
            raise ConfigError(key, (
                f"{name} has shape {tuple(tensor.shape)} in the previous stage and {tuple(target[name].shape)} "
                "in this one; allowed: stages that keep every carried-over layer's size"))
    with torch.no_grad():
        for name, tensor in target.items():
            if name in previous:
                tensor.copy_(previous[name])
    return set(target) - set(previous)


def layer_paths(model: nn.Module) -> list[str]:
    """The modules that own parameters (``encoder.1.0``, ...): what ``train`` may name."""
    return sorted({name.rpartition(".")[0] for name, _ in model.named_parameters()})


def describe_layers(model: nn.Module) -> str:
    """One line per Linear layer: its path, sizes, and whether it trains, is frozen or tied."""
    lines = []
    for name, module in model.named_modules():
        if isinstance(module, (nn.Linear, TiedLinear)):
            if isinstance(module, TiedLinear):
                state = f"tied to {module.source_name}"
            else:
                state = "trains" if module.weight.requires_grad else "frozen"
            lines.append(f"  {name}: {module.in_features}->{module.out_features} {state}")
    return "\n".join(lines)


def set_trainable(model: nn.Module, train: list[str], new: set[str], key: str = "train") -> list[nn.Parameter]:
    """Freeze everything except what ``train`` names: ``all``, ``new`` (the parameters in
    ``new``) and/or layer paths (a parameter trains if its name starts with one). Returns
    the parameters that train, in model order, for the optimizer."""
    paths = [p for p in train if p not in ("all", "new")]
    names = [name for name, _ in model.named_parameters()]
    for path in paths:
        if not any(name == path or name.startswith(path + ".") for name in names):
            raise ConfigError(key, (
                f"got {path!r}, which names no layer of this stage's model; allowed: all, new, or "
                f"layer paths: {', '.join(layer_paths(model))}"))
    trainable = []
    for name, param in model.named_parameters():
        trains = ("all" in train or ("new" in train and name in new)
                  or any(name == p or name.startswith(p + ".") for p in paths))
        param.requires_grad_(trains)
        if trains:
            trainable.append(param)
    if not trainable:
        raise ConfigError(key, (
            f"got {list(train)}, which leaves nothing to train in this stage (no new layers); allowed: "
            f"all, or layer paths: {', '.join(layer_paths(model))}"))
    return trainable
