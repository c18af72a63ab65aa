"""The in-memory image set every dataset loader returns, and batching by index on the device."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Iterator

import torch


@dataclass
class ImageSplits:
    """Train and validation images as uint8 tensors of shape (N, C, H, W), with labels.

    uint8 keeps a 60k-image set at 47 MB, small enough to live on the training device, so
    a batch is one gather plus one conversion to float: no Python per sample.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    name: str = ""

    def __post_init__(self) -> None:
        for split in ("train", "val"):
            images = getattr(self, f"{split}_images")
            if images.dtype != torch.uint8 or images.dim() != 4:
                raise ValueError(f"{split}_images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
        if self.train_images.shape[1:] != self.val_images.shape[1:]:
            raise ValueError("train and validation images differ in shape")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of one image: what model builders size themselves by."""
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> "ImageSplits":
        return replace(
            self,
            train_images=self.train_images.to(device),
            train_labels=self.train_labels.to(device),
            val_images=self.val_images.to(device),
            val_labels=self.val_labels.to(device),
        )


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] -> float32 in [0, 1]."""
    return images.to(torch.float32).mul_(1.0 / 255.0)


def carve_validation(images: torch.Tensor, labels: torch.Tensor, fraction: float, seed: int):
    """Split a training set into (train, val) parts with a seeded permutation."""
    n_val = max(1, round(len(images) * fraction))
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    val, train = order[:n_val], order[n_val:]
    return images[train], labels[train], images[val], labels[val]


def index_batches(
    images: torch.Tensor, batch_size: int, order: torch.Tensor | None = None, start: int = 0
) -> Iterator[torch.Tensor]:
    """Yield float batches of ``images`` in ``order`` (all of them, the last one short),
    beginning at batch number ``start`` (used when resuming inside an epoch)."""
    n = len(images)
    for begin in range(start * batch_size, n, batch_size):
        if order is None:
            chunk = images[begin : begin + batch_size]
        else:
            chunk = images.index_select(0, order[begin : begin + batch_size])
        yield to_float(chunk)


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)
