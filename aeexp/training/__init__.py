"""The shared trainer, its stages, resume and run-directory safety; importing registers
optimizers and schedulers."""

from aeexp.training import optim  # noqa: F401  (registration)
from aeexp.training.trainer import Trainer

__all__ = ["Trainer"]
