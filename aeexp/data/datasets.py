"""Dataset loaders: MNIST-family sets through torchvision, and a generated set for tests.

The MNIST family is read by torchvision's own classes from its folder layout
(``<root>/<ClassName>/raw/``). Offline, IDX files already on the machine are copied into
that layout first: Debian's ``dataset-fashion-mnist`` package installs gzipped IDX files
at ``/usr/share/datasets/fashion-mnist/`` (their .gz checksums differ from torchvision's,
the decompressed content is the same). A download is attempted only when the files are
nowhere on disk and ``dataset.download`` is true.
"""

from __future__ import annotations

import gzip
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torchvision import datasets as tv_datasets

from aeexp.config import require
from aeexp.data.images import ImageSplits, carve_validation
from aeexp.registry import DATASETS

log = logging.getLogger(__name__)

IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

TORCHVISION_CLASSES = {
    "mnist": tv_datasets.MNIST,
    "fashion_mnist": tv_datasets.FashionMNIST,
    "kmnist": tv_datasets.KMNIST,
}

# Where Debian (and similar) packages put IDX files; searched after dataset.root.
SYSTEM_DIRS = {
    "mnist": [Path("/usr/share/datasets/mnist")],
    "fashion_mnist": [Path("/usr/share/datasets/fashion-mnist")],
    "kmnist": [Path("/usr/share/datasets/kmnist")],
}

HOW_TO_GET = {
    "mnist": "MNIST is downloaded by torchvision where the machine is online; offline, "
    "copy the four IDX files there (or use dataset=fashion_mnist, which Debian packages).",
    "fashion_mnist": "on Debian/Ubuntu: `sudo apt-get install dataset-fashion-mnist` "
    "(installs /usr/share/datasets/fashion-mnist/), or run once online to download.",
    "kmnist": "KMNIST is downloaded by torchvision where the machine is online; offline, "
    "copy the four IDX files there.",
}


class DataNotFoundError(FileNotFoundError):
    """The data is not on disk and could not be fetched; the message says where we looked."""


@dataclass
class TorchvisionDatasetConfig:
    """``root``: the folder holding ``<ClassName>/raw/`` (relative paths: from the launch
    directory). ``val_size`` images are held out of the official training split for
    validation, chosen by ``split_seed`` alone (the same images for every run and every
    model seed); the official test split is for ``evaluate.py`` only."""

    name: str
    root: str = "data"
    val_size: int = 5000
    download: bool = True
    split_seed: int = 0

    def __post_init__(self) -> None:
        require(self.val_size >= 1, "val_size", self.val_size,
                "an integer >= 1 (images held out of the training split for validation)")


def raw_folder(name: str, root: str | Path) -> Path:
    return Path(root) / TORCHVISION_CLASSES[name].__name__ / "raw"


def _has_idx_files(folder: Path) -> bool:
    return all((folder / f).is_file() for f in IDX_FILES)


def _copy_idx_files(name: str, folders: list[Path], target: Path) -> bool:
    """Decompress (or copy) IDX files found in one of ``folders`` into torchvision's layout."""
    for folder in folders:
        for suffix in ("", ".gz"):
            sources = [folder / f"{f}{suffix}" for f in IDX_FILES]
            if not all(p.is_file() for p in sources):
                continue
            target.mkdir(parents=True, exist_ok=True)
            for source, filename in zip(sources, IDX_FILES):
                opener = gzip.open if suffix else open
                tmp = target / f".{filename}.tmp"
                with opener(source, "rb") as fin, open(tmp, "wb") as fout:
                    shutil.copyfileobj(fin, fout)
                os.replace(tmp, target / filename)
            log.info("prepared %s IDX files from %s in %s", name, folder, target)
            return True
    return False


def ensure_idx_files(name: str, root: str | Path, download: bool) -> Path:
    """Make sure ``<root>/<ClassName>/raw`` holds the four IDX files; return that folder.

    Looks in the raw folder itself (plain or .gz files put there by hand), then in the
    system folders; downloads only if neither has them.
    """
    target = raw_folder(name, root)
    if _has_idx_files(target):
        return target
    if _copy_idx_files(name, [target, *SYSTEM_DIRS.get(name, [])], target):
        return target
    looked = [str(target)] + [str(p) for p in SYSTEM_DIRS.get(name, [])]
    reason = "dataset.download=false"
    if download:
        try:
            TORCHVISION_CLASSES[name](str(root), train=True, download=True)
            TORCHVISION_CLASSES[name](str(root), train=False, download=True)
            return target
        except Exception as err:  # URLError, RuntimeError, socket errors: all mean "not fetched"
            reason = f"download failed ({str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__})"
    raise DataNotFoundError(
        f"dataset '{name}' not found: looked for {', '.join(IDX_FILES)} (or .gz) in "
        f"{' and '.join(looked)}; {reason}. How to get it: {HOW_TO_GET[name]} "
        f"Or point dataset.root=<dir> at a folder holding {TORCHVISION_CLASSES[name].__name__}/raw/."
    )


def load_torchvision(
    name: str, root: str = "data", val_size: int = 5000, download: bool = True, split_seed: int = 0
) -> ImageSplits:
    """Train / validation carved from the official training split, and the official test split."""
    ensure_idx_files(name, root, download)
    cls = TORCHVISION_CLASSES[name]
    train = cls(str(root), train=True, download=False)
    test = cls(str(root), train=False, download=False)
    train_x, train_y = train.data.unsqueeze(1), train.targets
    require(val_size < len(train_x), "dataset.val_size", val_size,
            f"1 to {len(train_x) - 1} (the training split of {name} holds {len(train_x)} images)")
    train_x, train_y, val_x, val_y = carve_validation(train_x, train_y, val_size, split_seed)
    return ImageSplits(
        train_x.contiguous(), train_y, val_x.contiguous(), val_y, test.data.unsqueeze(1).contiguous(), test.targets,
        name=name,
        val_note=f"{val_size} images held out of the training split (dataset.split_seed={split_seed})",
        test_note=f"the official {name} test split",
    )


for _name in TORCHVISION_CLASSES:
    DATASETS.register(_name, schema=TorchvisionDatasetConfig)(
        lambda _n=_name, **kwargs: load_torchvision(**{**kwargs, "name": _n})
    )


@dataclass
class SyntheticDatasetConfig:
    """A small generated image set: smooth class prototypes plus random smooth variations."""

    name: str = "synthetic"
    num_train: int = 2048
    num_val: int = 512
    num_test: int = 512
    channels: int = 1
    height: int = 28
    width: int = 28
    num_classes: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("num_train", "num_val", "num_test", "channels", "height", "width"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "an integer >= 1")
        require(self.num_classes >= 2, "num_classes", self.num_classes, "an integer >= 2")


def _smooth_patterns(count: int, channels: int, height: int, width: int, g: torch.Generator) -> torch.Tensor:
    """``count`` images made of a few Gaussian blobs each, values in [0, 1]."""
    blobs = 4
    ys = torch.linspace(0, 1, height).view(1, 1, height, 1)
    xs = torch.linspace(0, 1, width).view(1, 1, 1, width)
    cy = torch.rand(count, blobs, 1, 1, generator=g) * 0.7 + 0.15
    cx = torch.rand(count, blobs, 1, 1, generator=g) * 0.7 + 0.15
    sigma = torch.rand(count, blobs, 1, 1, generator=g) * 0.12 + 0.05
    amplitude = torch.rand(count, blobs, 1, 1, generator=g) * 0.5 + 0.5
    field = amplitude * torch.exp(-((ys - cy) ** 2 + (xs - cx) ** 2) / (2 * sigma**2))
    image = field.sum(1, keepdim=True).clamp(0, 1)
    tint = torch.rand(count, channels, 1, 1, generator=g) * 0.5 + 0.5 if channels > 1 else 1.0
    return image * tint


@DATASETS.register("synthetic", schema=SyntheticDatasetConfig)
def load_synthetic(
    num_train: int = 2048,
    num_val: int = 512,
    num_test: int = 512,
    channels: int = 1,
    height: int = 28,
    width: int = 28,
    num_classes: int = 10,
    seed: int = 0,
) -> ImageSplits:
    """Each image: its class's prototype plus a random mix of shared variation patterns;
    train, validation and test are independent draws.

    The data has structure an autoencoder can learn (a low-dimensional manifold and
    classes a probe can separate) and is generated in well under a second.
    """
    g = torch.Generator().manual_seed(seed)
    prototypes = _smooth_patterns(num_classes, channels, height, width, g)
    components = _smooth_patterns(8, channels, height, width, g)

    def sample(n: int) -> tuple[torch.Tensor, torch.Tensor]:
        labels = torch.randint(num_classes, (n,), generator=g)
        weights = torch.rand(n, 8, generator=g) * 0.6
        variation = torch.einsum("nk,kchw->nchw", weights, components)
        brightness = torch.rand(n, 1, 1, 1, generator=g) * 0.4 + 0.6
        images = (prototypes[labels] * brightness + variation - 0.25).clamp(0, 1)
        return (images * 255).round().to(torch.uint8), labels

    train_x, train_y = sample(num_train)
    val_x, val_y = sample(num_val)
    test_x, test_y = sample(num_test)  # drawn last, so train and validation do not depend on num_test
    return ImageSplits(train_x, train_y, val_x, val_y, test_x, test_y, name="synthetic",
                       val_note=f"{num_val} generated validation images", test_note=f"{num_test} generated test images")
