"""The shared trainer, checkpoints, TensorBoard logging; importing registers optimizers and schedulers."""

from aeexp.training import optim  # noqa: F401  (registration)
from aeexp.training.files import CheckpointError, load_checkpoint
from aeexp.training.trainer import Trainer

__all__ = ["CheckpointError", "Trainer", "load_checkpoint"]
