"""The data a trained run is evaluated on: its three splits, loaded once per process.

The model itself comes back through :func:`aeexp.runs.load_run`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import DictConfig, OmegaConf

from aeexp.registry import DATASETS
from aeexp.runs import RunDirError

@dataclass
class EvalData:
    """uint8 images (N, C, H, W) and labels of the three splits; the notes say how the
    validation and test splits were made. Training used train and validation only."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    val_note: str
    test_note: str

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]


_DATA: dict[str, EvalData] = {}


def load_splits(cfg: DictConfig) -> EvalData:
    """The run's three splits, on the CPU: training images for PCA, probes and kNN, the
    validation split that selected ``best.pt``, and the test split that nothing selected on.
    Loaded sets are kept for the process, so a sweep reads each dataset once."""
    key = OmegaConf.to_yaml(cfg.dataset)
    if key in _DATA:
        return _DATA[key]
    splits = DATASETS.build(cfg.dataset)
    if not all(isinstance(t, torch.Tensor) for t in (splits.train_images, splits.val_images, splits.test_images)):
        raise RunDirError(
            "evaluation keeps the images in memory, but this run streamed them from disk "
            "(dataset.in_memory=false, or larger than dataset.memory_limit_mb)"
        )
    data = EvalData(splits.train_images.cpu(), splits.train_labels.cpu().long(),
                    splits.val_images.cpu(), splits.val_labels.cpu().long(),
                    splits.test_images.cpu(), splits.test_labels.cpu().long(), splits.val_note, splits.test_note)
    _DATA[key] = data
    return data
