"""The settings of ``evaluate.py`` (``conf/eval.yaml``), checked before any work.

Evaluation has knobs that trade time for precision (probe iterations, how many training
samples the probes see, fine-tuning steps); a schema with range checks turns a typo into
one line naming the key, as ``train.py`` does for training configs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from omegaconf import DictConfig

from aeexp.config import ConfigError, check_node, require, require_choice, require_seed

# What each eval.level measures (README, Evaluate). quick: what a sweep's table is sorted and
# read by, in seconds; full: everything, for the runs worth a closer look.
LEVELS = ("quick", "full")


@dataclass
class EvalSettings:
    """``conf/eval.yaml``'s ``eval`` node; the README's Evaluate section explains each key."""

    level: Optional[str] = "full"
    cache: bool = True
    batch_size: int = 2048
    noise_levels: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5])
    probe_train_size: Optional[int] = None
    probe_max_iter: int = 150
    probe_l2: float = 1e-4
    knn_k: int = 5
    labels_per_class: list[int] = field(default_factory=lambda: [10, 100])
    head_hidden: int = 128
    head_steps: int = 300
    head_lr: float = 1e-3
    finetune_lr: float = 1e-4
    head_batch_size: int = 256
    weight_decay: float = 1e-4
    step_threads: Optional[int] = 1
    num_images: int = 8
    code_samples: int = 512
    scatter_samples: int = 2000
    figures: bool = True
    progress: bool = True
    seed: int = 0
    trust_targets: bool = False

    def __post_init__(self) -> None:
        require_choice("level", self.level, LEVELS)
        for key in ("batch_size", "probe_max_iter", "knn_k", "head_hidden", "head_steps", "head_batch_size",
                    "num_images", "code_samples", "scatter_samples"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "an integer >= 1")
        require(self.step_threads is None or self.step_threads >= 1, "step_threads", self.step_threads,
                "null (torch's default) or an integer >= 1")
        require(self.probe_train_size is None or self.probe_train_size >= 2, "probe_train_size",
                self.probe_train_size, "null (every training sample) or an integer >= 2")
        for i, level in enumerate(self.noise_levels):
            require(level >= 0, f"noise_levels[{i}]", level, "a noise std or fraction >= 0")
        for i, n in enumerate(self.labels_per_class):
            require(n >= 1, f"labels_per_class[{i}]", n, "an integer >= 1")
        for key in ("probe_l2", "weight_decay"):
            require(getattr(self, key) >= 0, key, getattr(self, key), "a number >= 0")
        for key in ("head_lr", "finetune_lr"):
            require(getattr(self, key) > 0, key, getattr(self, key), "a learning rate > 0")
        require_seed("seed", self.seed)


def check_settings(node: DictConfig | dict) -> DictConfig:
    """The ``eval`` node filled from the schema's defaults; ConfigError (``eval.<key>``) if bad."""
    from omegaconf import OmegaConf

    return OmegaConf.create(check_node("eval", node, EvalSettings))


def check_against_data(settings: Any, train_labels: torch.Tensor, test_labels: torch.Tensor) -> None:
    """The settings that depend on the run's data, checked once it is loaded and before any
    measure: ConfigError (``eval.<key>``) naming the value and the range this data allows."""
    n = len(train_labels)
    classes, counts = torch.unique(train_labels, return_counts=True)
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1 if n else 0
    if settings.knn_k >= n:
        raise ConfigError("eval.knn_k", f"got {settings.knn_k}, allowed: 1 to {max(n - 1, 1)} (fewer neighbours "
                          f"than the {n} training images of this run's data)")
    size = settings.probe_train_size
    if size is not None and size < num_classes:
        raise ConfigError("eval.probe_train_size", f"got {size}, allowed: null (all {n} training images) or an "
                          f"integer >= {num_classes} (at least one image per class; the labels have {num_classes})")
    smallest = int(counts.min()) if n else 0
    rare = int(classes[counts.argmin()]) if n else None
    for i, per_class in enumerate(settings.labels_per_class):
        if per_class > smallest:
            raise ConfigError(f"eval.labels_per_class[{i}]", f"got {per_class}, allowed: 1 to {smallest} (the "
                              f"smallest class of the training split, class {rare}, has {smallest} images)")
