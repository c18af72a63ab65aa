"""``dataset=image_folder``: a user's own folder of images, through torchvision's ImageFolder.

The folder holds one subfolder per class (``root/cat/001.png``); a folder of images with
no class subfolders is fine too if they sit in a single subfolder. Every image is resized
(shorter side) and centre-cropped to ``size`` and converted to ``channels`` (1 or 3). A set
whose uint8 tensor fits ``memory_limit_mb`` is decoded once and kept on the training
device like MNIST; a larger one, or ``in_memory=false``, is streamed from disk through a
DataLoader with ``num_workers`` workers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import torch
from torch.utils.data import DataLoader, Subset
from torchvision import datasets as tv_datasets
from torchvision.transforms import v2 as transforms

from aeexp.config import require, require_choice
from aeexp.data.datasets import DataNotFoundError
from aeexp.data.images import ImageSplits, StreamedImages
from aeexp.registry import DATASETS


@dataclass
class ImageFolderConfig:
    """``size``: [height, width] (a single value in the list means square). ``val_fraction``
    and ``test_fraction`` of the images (chosen by ``split_seed``) validate and test; the
    rest trains."""

    name: str = "image_folder"
    root: str = "???"
    size: list[int] = field(default_factory=lambda: [64, 64])
    channels: int = 3
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    in_memory: Optional[bool] = None
    memory_limit_mb: int = 4096
    num_workers: int = 2

    def __post_init__(self) -> None:
        require(len(self.size) in (1, 2) and all(s >= 1 for s in self.size), "size", list(self.size),
                "[height, width] or [side], each >= 1")
        require_choice("channels", self.channels, (1, 3))
        require(0.0 < self.val_fraction < 1.0, "val_fraction", self.val_fraction, "a fraction in (0, 1)")
        require(0.0 < self.test_fraction < 1.0 and self.val_fraction + self.test_fraction < 1.0, "test_fraction",
                self.test_fraction, f"a fraction in (0, 1) with val_fraction ({self.val_fraction}) + test_fraction < 1")
        require(self.memory_limit_mb >= 0, "memory_limit_mb", self.memory_limit_mb, "megabytes >= 0")
        require(self.num_workers >= 0, "num_workers", self.num_workers, "an integer >= 0")


def image_transform(size: tuple[int, int], channels: int) -> transforms.Compose:
    """PIL image -> uint8 tensor (channels, height, width)."""
    colour = transforms.Grayscale(num_output_channels=1) if channels == 1 else transforms.RGB()
    return transforms.Compose([
        colour,
        transforms.Resize(min(size)),
        transforms.CenterCrop(size),
        transforms.PILToTensor(),
    ])


def _stack(dataset, num_workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every image once (in parallel) into one uint8 tensor."""
    loader = DataLoader(dataset, batch_size=256, num_workers=num_workers)
    images, labels = zip(*loader)
    return torch.cat(images), torch.cat(labels)


@DATASETS.register("image_folder", schema=ImageFolderConfig)
def load_image_folder(
    root: str,
    size: list[int] = (64, 64),
    channels: int = 3,
    val_fraction: float = 0.1,
    test_fraction: float = 0.1,
    split_seed: int = 0,
    in_memory: bool | None = None,
    memory_limit_mb: int = 4096,
    num_workers: int = 2,
) -> ImageSplits:
    folder = Path(root)
    if root == "???" or not folder.is_dir():
        raise DataNotFoundError(
            f"dataset.root={root!r} is not a folder; dataset=image_folder needs "
            "dataset.root=<folder with one subfolder of images per class>"
        )
    hw = (size[0], size[0]) if len(size) == 1 else (size[0], size[1])
    try:
        dataset = tv_datasets.ImageFolder(str(folder), transform=image_transform(hw, channels))
    except (FileNotFoundError, RuntimeError) as err:
        raise DataNotFoundError(f"dataset.root={root!r}: {err}") from None
    if len(dataset) < 3:
        raise DataNotFoundError(f"dataset.root={root!r} holds {len(dataset)} image(s); at least 3 are needed "
                                "(train, validation and test each need one)")
    order = torch.randperm(len(dataset), generator=torch.Generator().manual_seed(split_seed)).tolist()
    n_val = max(1, round(len(dataset) * val_fraction))
    n_test = max(1, round(len(dataset) * test_fraction))
    n_val = min(n_val, len(dataset) - 2)
    n_test = min(n_test, len(dataset) - 1 - n_val)
    parts = {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}
    shape = (channels, *hw)
    megabytes = len(dataset) * math.prod(shape) / 2**20
    if in_memory is None:
        in_memory = megabytes <= memory_limit_mb
    labels = torch.tensor(dataset.targets)
    notes = dict(name="image_folder", val_note=f"{n_val} images of {root} (val_fraction {val_fraction}, split_seed {split_seed})",
                 test_note=f"{n_test} images of {root} (test_fraction {test_fraction}, split_seed {split_seed})")
    if in_memory:
        stacked = [_stack(Subset(dataset, parts[split]), num_workers) for split in ("train", "val", "test")]
        return ImageSplits(*(t for pair in stacked for t in pair), **notes)
    streamed = [(StreamedImages(Subset(dataset, parts[split]), shape, num_workers), labels[parts[split]])
                for split in ("train", "val", "test")]
    return ImageSplits(*(t for pair in streamed for t in pair), **notes)
