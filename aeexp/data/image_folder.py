"""``dataset=image_folder``: a user's own folder of images, through torchvision's ImageFolder.

The folder holds one subfolder per class (``root/cat/001.png``); a folder of images with
no class subfolders is fine too if they sit in a single subfolder. Every image is resized
(shorter side) and centre-cropped to ``size`` and converted to ``channels`` (1 or 3). A set
whose uint8 tensor fits ``memory_limit_mb`` is decoded once and kept on the training
device like MNIST; a larger one, or ``in_memory=false``, is streamed from disk through a
DataLoader with ``num_workers`` workers.

An image that cannot be read (garbage bytes, a 0-byte or truncated file) stops loading with
one line naming it; ``skip_bad_files=true`` leaves such files out instead and logs how many
(and which, the first few). In-memory loading decodes every image before the split, so it
sees every bad file; streaming checks every file's header and integrity first, and a file
that only fails later, while it is decoded for a batch, still stops the run with its name.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import torch
from torch.utils.data import DataLoader, Dataset, Subset

if TYPE_CHECKING:  # torchvision is imported where it is used: the import costs ~2 s
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2 as transforms

from aeexp.config import require, require_choice
from aeexp.data.datasets import DataFileError, DataNotFoundError
from aeexp.data.images import ImageSplits, StreamedImages, fraction_split
from aeexp.registry import DATASETS

log = logging.getLogger(__name__)

SHOWN_BAD_FILES = 5  # named in the log when skip_bad_files leaves files out


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
    skip_bad_files: bool = False

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
    from torchvision.transforms import v2 as transforms

    colour = transforms.Grayscale(num_output_channels=1) if channels == 1 else transforms.RGB()
    return transforms.Compose([
        colour,
        transforms.Resize(min(size)),
        transforms.CenterCrop(size),
        transforms.PILToTensor(),
    ])


class BadImageError(DataFileError):
    """An image file that cannot be decoded; the message names it.

    Raised inside a DataLoader worker, it reaches the main process as
    ``BadImageError("Caught BadImageError in DataLoader worker ... Original Traceback ...")``;
    the constructor keeps only our own last line of that, so the user still sees one line.
    """

    def __init__(self, message: str):
        if "Original Traceback" in message:
            last = message.strip().splitlines()[-1]
            message = last.split(": ", 1)[1] if ": " in last else last
        super().__init__(message)


BAD_LABEL = -1


class CheckedImages(Dataset):
    """ImageFolder items, with a file that cannot be decoded either marked (``mark_bad``: a
    zero image with label -1, so one pass finds every bad file) or refused by name."""

    def __init__(self, folder: ImageFolder, shape: tuple[int, int, int], mark_bad: bool):
        self.folder, self.shape, self.mark_bad = folder, shape, mark_bad

    def __len__(self) -> int:
        return len(self.folder)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        try:
            return self.folder[index]
        except (OSError, ValueError, SyntaxError, MemoryError) as err:  # what PIL raises for a broken file
            if self.mark_bad:
                return torch.zeros(self.shape, dtype=torch.uint8), BAD_LABEL
            raise BadImageError(bad_file_message(self.folder.samples[index][0], err)) from None


def bad_file_message(path: str, err: BaseException) -> str:
    from PIL import UnidentifiedImageError

    if isinstance(err, UnidentifiedImageError):
        reason = "not an image file PIL can identify: empty, garbage or an unsupported format"
    else:
        reason = f"{type(err).__name__}: " + (str(err).strip().splitlines()[0] if str(err).strip() else "no detail")
    return (f"{path}: cannot be read as an image ({reason}); replace or delete it, "
            "or pass dataset.skip_bad_files=true to leave unreadable files out")


class _Verified(Dataset):
    """Whether each file opens and passes PIL's integrity check (no full decode)."""

    def __init__(self, paths: list[str]):
        self.paths = paths

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> str:
        from PIL import Image

        try:
            with Image.open(self.paths[index]) as image:
                image.verify()
        except (OSError, ValueError, SyntaxError, MemoryError) as err:
            return bad_file_message(self.paths[index], err)
        return ""


def _loader(dataset, num_workers: int, batch_size: int = 256, collate=None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers,
                      **({"collate_fn": collate} if collate else {}))


def _stack(dataset, num_workers: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode every image once (in parallel) into one uint8 tensor."""
    images, labels = zip(*_loader(dataset, num_workers))
    return torch.cat(images), torch.cat(labels)


def _reason(dataset: ImageFolder, index: int) -> str:
    """The one-line message for a file a worker could not decode (decoded again, here, for its error)."""
    try:
        dataset[index]
    except (OSError, ValueError, SyntaxError, MemoryError) as err:
        return bad_file_message(dataset.samples[index][0], err)
    return bad_file_message(dataset.samples[index][0], OSError("could not be decoded"))


def _refuse_or_skip(root: str, bad: dict[int, str], skip: bool) -> None:
    """``bad``: index -> its one-line message. Raise for the first, or log what is skipped."""
    if not bad:
        return
    first = bad[min(bad)]
    if not skip:
        more = f" ({len(bad) - 1} more unreadable file(s) in {root})" if len(bad) > 1 else ""
        raise BadImageError(first.replace("; replace or delete it", f"{more}; replace or delete it", 1))
    names = [message.split(": cannot be read", 1)[0] for _, message in sorted(bad.items())]
    shown = ", ".join(names[:SHOWN_BAD_FILES]) + (", ..." if len(names) > SHOWN_BAD_FILES else "")
    log.warning("dataset.skip_bad_files=true: skipped %d unreadable image file(s) of %s: %s", len(bad), root, shown)


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
    skip_bad_files: bool = False,
) -> ImageSplits:
    folder = Path(root)
    if root == "???" or not folder.is_dir():
        raise DataNotFoundError(
            f"dataset.root={root!r} is not a folder; dataset=image_folder needs "
            "dataset.root=<folder with one subfolder of images per class>"
        )
    hw = (size[0], size[0]) if len(size) == 1 else (size[0], size[1])
    try:
        from torchvision.datasets import ImageFolder

        dataset = ImageFolder(str(folder), transform=image_transform(hw, channels))
    except (FileNotFoundError, RuntimeError) as err:
        raise DataNotFoundError(f"dataset.root={root!r}: {err}") from None
    _require_three(root, len(dataset), "image(s)")
    shape = (channels, *hw)
    megabytes = len(dataset) * math.prod(shape) / 2**20
    if in_memory is None:
        in_memory = megabytes <= memory_limit_mb
    if in_memory:  # decode everything once: every unreadable file shows up here
        images, labels = _stack(CheckedImages(dataset, shape, mark_bad=True), num_workers)
        bad_rows = (labels == BAD_LABEL).nonzero().flatten().tolist()
        bad = {i: _reason(dataset, i) for i in bad_rows}
    else:  # open and check every file's integrity without decoding it
        checked = _loader(_Verified([path for path, _ in dataset.samples]), num_workers, collate=list)
        found = [message for batch in checked for message in batch]
        bad = {i: message for i, message in enumerate(found) if message}
        labels = torch.tensor(dataset.targets)
    good = [i for i in range(len(dataset)) if i not in bad]
    if bad and skip_bad_files:
        _require_three(root, len(good), f"readable image(s) ({len(bad)} unreadable)")
    _refuse_or_skip(root, bad, skip_bad_files)
    parts = {split: [good[i] for i in positions]
             for split, positions in fraction_split(len(good), val_fraction, test_fraction, split_seed).items()}
    n_val, n_test = len(parts["val"]), len(parts["test"])
    notes = dict(name="image_folder", val_note=f"{n_val} images of {root} (val_fraction {val_fraction}, split_seed {split_seed})",
                 test_note=f"{n_test} images of {root} (test_fraction {test_fraction}, split_seed {split_seed})")
    if in_memory:
        split_tensors = [(images[parts[split]], labels[parts[split]]) for split in ("train", "val", "test")]
        return ImageSplits(*(t for pair in split_tensors for t in pair), **notes)
    streaming = CheckedImages(dataset, shape, mark_bad=False)  # a file that fails only now is named, in one line
    streamed = [(StreamedImages(Subset(streaming, parts[split]), shape, num_workers), labels[parts[split]])
                for split in ("train", "val", "test")]
    return ImageSplits(*(t for pair in streamed for t in pair), **notes)


def _require_three(root: str, count: int, what: str) -> None:
    if count < 3:
        raise DataNotFoundError(f"dataset.root={root!r} holds {count} {what}; at least 3 are needed "
                                "(train, validation and test each need one)")
