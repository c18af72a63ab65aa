"""What the trainer asks of a model besides its forward pass, where the model has it.

A model may define any of these methods (``model=sae`` has all three); a model without them
is left alone, so every other model trains exactly as before:

- ``initialize_from_data(sample)``: once, at the start of a fresh run (never on resume, whose
  checkpoint already holds what it set), with the first ``init_sample_size`` training inputs
  (default 4096) as floats on the model's device;
- ``before_optimizer_step()``: after the backward pass, before the optimizer step (and before
  gradient clipping), e.g. to project the gradients;
- ``after_optimizer_step()``: after each optimizer step, e.g. to renormalise weights.
"""

from __future__ import annotations

from typing import Any

from torch import nn

DEFAULT_INIT_SAMPLES = 4096


def initialize_from_data(model: nn.Module, train_images: Any, fresh: bool = True) -> None:
    """Call ``model.initialize_from_data`` with the head of the training split as floats
    (``train_images``: the trainer's ``data.train_images``, a tensor or streamed split), if
    ``fresh``: the trainer passes ``global_step == 0``, so a resumed run, whose checkpoint
    holds what this sets, never re-estimates it."""
    initialize = getattr(model, "initialize_from_data", None)
    if not fresh or not callable(initialize):
        return
    from aeexp.data.images import head, to_float

    initialize(to_float(head(train_images, int(getattr(model, "init_sample_size", DEFAULT_INIT_SAMPLES)))))


def before_optimizer_step(model: nn.Module) -> None:
    hook = getattr(model, "before_optimizer_step", None)
    if callable(hook):
        hook()


def after_optimizer_step(model: nn.Module) -> None:
    hook = getattr(model, "after_optimizer_step", None)
    if callable(hook):
        hook()
