"""Optimizers and learning-rate schedulers, by name (``optimizer=adam``, ``scheduler=plateau``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable

import torch
from torch.optim.lr_scheduler import CosineAnnealingLR, ReduceLROnPlateau

from aeexp.config import require
from aeexp.registry import OPTIMIZERS, SCHEDULERS


def _check_lr(lr: float, weight_decay: float) -> None:
    require(lr > 0, "lr", lr, "a learning rate > 0")
    require(weight_decay >= 0, "weight_decay", weight_decay, "a value >= 0")


@dataclass
class AdamConfig:
    name: str = "adam"
    lr: float = 1e-3
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    eps: float = 1e-8
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _check_lr(self.lr, self.weight_decay)
        require(
            len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas),
            "betas", list(self.betas), "two numbers in [0, 1)",
        )
        require(self.eps > 0, "eps", self.eps, "a value > 0")


@dataclass
class AdamWConfig(AdamConfig):
    """Adam with decoupled weight decay; 1e-2 by default, as ``conf/optimizer/adamw.yaml``
    and ``torch.optim.AdamW`` have it."""

    name: str = "adamw"
    weight_decay: float = 1e-2


@dataclass
class SGDConfig:
    name: str = "sgd"
    lr: float = 1e-2
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0

    def __post_init__(self) -> None:
        _check_lr(self.lr, self.weight_decay)
        require(0 <= self.momentum < 1, "momentum", self.momentum, "a value in [0, 1)")


# The builders keep defaults, read from their schemas: a stage override that names another
# optimizer or scheduler (``trainer.stages[i].optimizer: {name: sgd, lr: 0.1}``) is built from
# its own keys alone (aeexp.training.stages.stage_group), so the rest come from here.


@OPTIMIZERS.register("adam", schema=AdamConfig)
def build_adam(params: Iterable, lr: float, betas=(0.9, 0.999), eps: float = AdamConfig.eps,
               weight_decay: float = AdamConfig.weight_decay):
    return torch.optim.Adam(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("adamw", schema=AdamWConfig)
def build_adamw(params: Iterable, lr: float, betas=(0.9, 0.999), eps: float = AdamWConfig.eps,
                weight_decay: float = AdamWConfig.weight_decay):
    return torch.optim.AdamW(params, lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay)


@OPTIMIZERS.register("sgd", schema=SGDConfig)
def build_sgd(params: Iterable, lr: float, momentum: float = SGDConfig.momentum, nesterov: bool = SGDConfig.nesterov,
              weight_decay: float = SGDConfig.weight_decay):
    return torch.optim.SGD(params, lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay)


@dataclass
class PlateauConfig:
    """The first seed's schedule: divide the lr by 10 after ``patience`` epochs without a
    better value of ``trainer.monitor`` (validation MSE, or the denoising error for a denoiser), and
    stop training once the lr falls below ``stop_lr``."""

    name: str = "plateau"
    factor: float = 0.1
    patience: int = 10
    stop_lr: float = 1e-5

    def __post_init__(self) -> None:
        require(0 < self.factor < 1, "factor", self.factor, "a value in (0, 1)")
        require(self.patience >= 0, "patience", self.patience, "an integer >= 0")
        require(self.stop_lr >= 0, "stop_lr", self.stop_lr, "a value >= 0 (0: never stop early)")


class PlateauScheduler(ReduceLROnPlateau):
    """ReduceLROnPlateau that also says when the run should stop (lr below ``stop_lr``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, factor: float, patience: int, stop_lr: float):
        super().__init__(optimizer, mode="min", factor=factor, patience=patience)
        self.stop_lr = stop_lr

    def should_stop(self) -> bool:
        return any(group["lr"] < self.stop_lr for group in self.optimizer.param_groups)


@SCHEDULERS.register("plateau", schema=PlateauConfig)
def build_plateau(optimizer, epochs: int, factor: float = PlateauConfig.factor, patience: int = PlateauConfig.patience,
                  stop_lr: float = PlateauConfig.stop_lr):
    return PlateauScheduler(optimizer, factor=factor, patience=patience, stop_lr=stop_lr)


@dataclass
class CosineConfig:
    name: str = "cosine"
    min_lr: float = 0.0

    def __post_init__(self) -> None:
        require(self.min_lr >= 0, "min_lr", self.min_lr, "a value >= 0")


@SCHEDULERS.register("cosine", schema=CosineConfig)
def build_cosine(optimizer, epochs: int, min_lr: float = CosineConfig.min_lr):
    return CosineAnnealingLR(optimizer, T_max=epochs, eta_min=min_lr)


@SCHEDULERS.register("none")
def build_no_scheduler(optimizer, epochs: int):
    return None


def step_scheduler(scheduler, val_mse: float) -> None:
    """Advance a scheduler once per epoch; plateau-style schedulers need the metric."""
    if scheduler is None:
        return
    if isinstance(scheduler, ReduceLROnPlateau):
        scheduler.step(val_mse)
    else:
        scheduler.step()


def should_stop(scheduler) -> bool:
    stop = getattr(scheduler, "should_stop", None)
    return bool(stop()) if stop is not None else False
