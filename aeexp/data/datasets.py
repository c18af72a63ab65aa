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
import math
import os
import shutil
import struct
import tempfile
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

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

# The torchvision dataset class of each name (its name is also the folder torchvision uses).
TORCHVISION_CLASSES = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST", "kmnist": "KMNIST"}


def torchvision_class(name: str) -> type:
    """torchvision's dataset class for ``name``, imported only when data is read: importing
    torchvision costs about 2 s, which a refused command or ``aeexp.load_run`` need not pay."""
    from torchvision import datasets

    return getattr(datasets, TORCHVISION_CLASSES[name])

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
    return Path(root) / TORCHVISION_CLASSES[name] / "raw"


def _has_idx_files(folder: Path) -> bool:
    return all((folder / f).is_file() for f in IDX_FILES)


# IDX headers: two zero bytes, 0x08 (unsigned bytes), the number of dimensions.
IDX_NDIM = {"images": 3, "labels": 1}


class DataFileError(DataNotFoundError):
    """A data file that is there but unusable (garbage, truncated, wrong size); names the file."""


def check_idx_file(path: Path) -> int:
    """Check an IDX file's header against its size; return its item count, or raise
    DataFileError naming the file and what is wrong with it."""
    ndim = IDX_NDIM["labels" if "labels" in path.name else "images"]
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            header = handle.read(4 + 4 * ndim)
    except OSError as err:
        raise DataFileError(f"{path}: cannot be read ({err.strerror or err})") from None
    if len(header) < 4 + 4 * ndim or header[:3] != b"\x00\x00\x08" or header[3] != ndim:
        raise DataFileError(f"{path}: not an IDX file of {ndim}-D unsigned bytes (header {header[:4].hex() or 'empty'}); "
                            "delete it and the loader will prepare the file again")
    dims = struct.unpack(f">{ndim}I", header[4:])
    expected = 4 + 4 * ndim + math.prod(dims)
    if size != expected:
        raise DataFileError(f"{path}: {size} bytes, but its header {list(dims)} needs {expected} "
                            f"({'truncated' if size < expected else 'extra bytes'}); delete it and the loader "
                            "will prepare the file again")
    if ndim == 3 and dims[1:] != (28, 28):
        raise DataFileError(f"{path}: images of {dims[1]}x{dims[2]} pixels, but this dataset's are 28x28")
    return dims[0]


def check_idx_set(folder: Path) -> None:
    """The four files of ``folder`` are sound and each split has as many labels as images."""
    counts = {f: check_idx_file(folder / f) for f in IDX_FILES}
    for split in ("train", "t10k"):
        images, labels = counts[f"{split}-images-idx3-ubyte"], counts[f"{split}-labels-idx1-ubyte"]
        if images != labels:
            raise DataFileError(f"{folder / f'{split}-labels-idx1-ubyte'}: {labels} labels for {images} images in "
                                f"{split}-images-idx3-ubyte; delete both and the loader will prepare them again")


def _copy_idx_files(name: str, folders: list[Path], target: Path) -> Path | None:
    """Decompress (or copy) IDX files found in one of ``folders`` into torchvision's layout;
    return the folder they came from."""
    for folder in folders:
        for suffix in ("", ".gz"):
            sources = [folder / f"{f}{suffix}" for f in IDX_FILES]
            if not all(p.is_file() for p in sources):
                continue
            try:
                target.mkdir(parents=True, exist_ok=True)
                for source, filename in zip(sources, IDX_FILES):
                    _prepare_one(source, target / filename, gzipped=bool(suffix))
            except PermissionError as err:
                raise DataFileError(f"dataset.root: cannot write {target} ({err.strerror}); point dataset.root at a "
                                    "writable folder (the IDX files are prepared there once)") from None
            log.info("prepared %s IDX files from %s in %s", name, folder, target)
            return folder
    return None


def _prepare_one(source: Path, destination: Path, gzipped: bool) -> None:
    """Decompress or copy ``source`` to ``destination`` through a temporary file of its own
    (so jobs preparing the same root at once cannot collide), checked before it takes its
    place and removed on any failure."""
    fd, tmp = tempfile.mkstemp(prefix=f".{destination.name}.", suffix=".tmp", dir=destination.parent)
    try:
        try:
            with (gzip.open if gzipped else open)(source, "rb") as fin, os.fdopen(fd, "wb") as fout:
                shutil.copyfileobj(fin, fout)
        except (gzip.BadGzipFile, EOFError, zlib.error) as err:
            raise DataFileError(f"{source}: cannot be read as gzipped IDX ({type(err).__name__}: {err})") from None
        _check_copy(Path(tmp), source)
        os.replace(tmp, destination)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _check_copy(tmp: Path, source: Path) -> None:
    """Check a freshly prepared file (its temporary name starts with the IDX name, which
    tells images from labels) before it takes its place; a bad one names its source."""
    try:
        check_idx_file(tmp)
    except DataFileError as err:
        raise DataFileError(f"{source}: {str(err).split(': ', 1)[1]}") from None


def ensure_idx_files(name: str, root: str | Path, download: bool) -> Path:
    """Make sure ``<root>/<ClassName>/raw`` holds the four IDX files, sound; return that folder.

    Looks in the raw folder itself (plain or .gz files put there by hand), then in the
    system folders; downloads only if neither has them. Files that are there but broken
    stop the run with a line naming the file (and any good copy elsewhere on the machine),
    rather than being read as garbage or silently replaced.
    """
    target = raw_folder(name, root)
    systems = SYSTEM_DIRS.get(name, [])
    if _has_idx_files(target):
        try:
            check_idx_set(target)
        except DataFileError as err:
            good = [str(d) for d in systems if all((d / f"{f}.gz").is_file() or (d / f).is_file() for f in IDX_FILES)]
            also = f" (good files of {name} are in {good[0]}: delete the broken one to use them)" if good else ""
            raise DataFileError(f"{err}{also}") from None
        return target
    source = _copy_idx_files(name, [target, *systems], target)
    if source is not None:
        check_idx_set(target)
        if source != target:
            log.info("%s: using the IDX files of %s", name, source)
        return target
    looked = [str(target)] + [str(p) for p in systems]
    reason = "dataset.download=false"
    if download:
        try:
            torchvision_class(name)(str(root), train=True, download=True)
            torchvision_class(name)(str(root), train=False, download=True)
            return target
        except Exception as err:  # URLError, RuntimeError, socket errors: all mean "not fetched"
            reason = f"download failed ({str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__})"
    raise DataNotFoundError(
        f"dataset '{name}' not found: looked for {', '.join(IDX_FILES)} (or .gz) in "
        f"{' and '.join(looked)}; {reason}. How to get it: {HOW_TO_GET[name]} "
        f"Or point dataset.root=<dir> at a folder holding {TORCHVISION_CLASSES[name]}/raw/."
    )


def load_torchvision(
    name: str,
    root: str = TorchvisionDatasetConfig.root,
    val_size: int = TorchvisionDatasetConfig.val_size,
    download: bool = TorchvisionDatasetConfig.download,
    split_seed: int = TorchvisionDatasetConfig.split_seed,
) -> ImageSplits:
    """Train / validation carved from the official training split, and the official test split."""
    ensure_idx_files(name, root, download)
    cls = torchvision_class(name)
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
    num_train: int = SyntheticDatasetConfig.num_train,
    num_val: int = SyntheticDatasetConfig.num_val,
    num_test: int = SyntheticDatasetConfig.num_test,
    channels: int = SyntheticDatasetConfig.channels,
    height: int = SyntheticDatasetConfig.height,
    width: int = SyntheticDatasetConfig.width,
    num_classes: int = SyntheticDatasetConfig.num_classes,
    seed: int = SyntheticDatasetConfig.seed,
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
