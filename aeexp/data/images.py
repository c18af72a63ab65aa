"""The splits every dataset loader returns, and batching by index on the device.

A split is uint8 images (N, C, H, W), scaled to [0, 1] by :func:`to_float`, or float vectors
(N, D) (``dataset=vectors``: activations, embeddings), kept in the dtype they are stored in
until a batch is on the device, where :func:`to_float` makes them float32 without scaling.
Either may be streamed from disk instead of held in memory (:class:`StreamedImages`,
:class:`aeexp.data.vector_stream.StreamedVectors`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from aeexp.data.vector_stream import StreamedVectors

VECTOR_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


class _Order(Sampler):
    """A sampler whose order is set before each pass, so one DataLoader (and its worker
    processes) serves every epoch."""

    def __init__(self) -> None:
        self.positions: list[int] = []

    def __iter__(self):
        return iter(self.positions)

    def __len__(self) -> int:
        return len(self.positions)


class StreamedImages:
    """Images read from disk batch by batch, for sets too large to keep on the device.

    Wraps a dataset of uint8 (C, H, W) tensors; batches come through a DataLoader whose
    workers decode images while the model trains (kept alive across epochs), and move to
    ``device`` as uint8.
    """

    def __init__(self, dataset: Dataset, shape: tuple[int, int, int], num_workers: int = 2,
                 device: torch.device | str = "cpu"):
        self.dataset, self.shape, self.num_workers = dataset, tuple(shape), num_workers
        self.device = torch.device(device)
        self._loaders: dict[int, tuple[DataLoader, _Order]] = {}

    def __len__(self) -> int:
        return len(self.dataset)

    def numel(self) -> int:
        return len(self) * math.prod(self.shape)

    def to(self, device: torch.device | str) -> "StreamedImages":
        return StreamedImages(self.dataset, self.shape, self.num_workers, device)

    def head(self, n: int) -> torch.Tensor:
        """The first ``n`` images as one uint8 tensor on the device (for fixed picture batches)."""
        return torch.stack([self.dataset[i][0] for i in range(min(n, len(self)))]).to(self.device)

    def batches(self, batch_size: int, order: list[int]) -> Iterator[torch.Tensor]:
        if batch_size not in self._loaders:
            sampler = _Order()
            loader = DataLoader(
                self.dataset, batch_size=batch_size, sampler=sampler, num_workers=self.num_workers,
                pin_memory=self.device.type == "cuda", persistent_workers=self.num_workers > 0,
            )
            self._loaders[batch_size] = (loader, sampler)
        loader, sampler = self._loaders[batch_size]
        sampler.positions = order
        for images, _ in loader:
            yield images.to(self.device, non_blocking=True)


@dataclass
class ImageSplits:
    """Train, validation and test samples with labels: uint8 images (N, C, H, W), or float
    vectors (N, D) (:attr:`kind`); tensors, or streamed from disk.

    Three disjoint splits, always: training fits the weights, validation selects (``best.pt``,
    the scheduler, early stopping, sweepers), and test is for ``evaluate.py`` alone, so a
    reported test figure never comes from the images that chose the model. The trainer gets
    :meth:`without_test`. uint8 keeps a 60k-image set at 47 MB, small enough to live on the
    training device, so a batch is one gather plus one conversion to float: no Python per sample.
    Vectors stay in their stored dtype (float16 halves a float32 set) on the device likewise.
    ``ground_truth``: the data's true features (F, D) where a generator knows them
    (``dataset=sparse_features``), against which training and evaluation measure the decoder.
    """

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor | None = None
    test_labels: torch.Tensor | None = None
    name: str = ""
    # How each split was made, in words, for logs and evaluation reports.
    val_note: str = "validation split"
    test_note: str = "test split"
    ground_truth: torch.Tensor | None = None

    def __post_init__(self) -> None:
        kinds = {}
        for split in ("train", "val", "test"):
            images = getattr(self, f"{split}_images")
            if images is not None:
                kinds[split] = sample_kind(images, f"{split}_images")
        if len(set(kinds.values())) > 1:
            raise ValueError(f"the splits mix images and vectors: {kinds}")
        if _sample_shape(self.train_images) != _sample_shape(self.val_images):
            raise ValueError("train and validation images differ in shape")
        if self.test_images is not None and _sample_shape(self.test_images) != _sample_shape(self.train_images):
            raise ValueError("train and test images differ in shape")

    @property
    def kind(self) -> str:
        """``images`` (uint8 (N, C, H, W)) or ``vectors`` (float (N, D))."""
        return sample_kind(self.train_images)

    @property
    def is_image(self) -> bool:
        return self.kind == "images"

    def without_test(self) -> "ImageSplits":
        """The splits training may see: the test images are dropped, not just left unused."""
        return replace(self, test_images=None, test_labels=None)

    @property
    def shape(self) -> tuple[int, ...]:
        """(channels, height, width) of one image, or (D,) of one vector: what model builders
        size themselves by."""
        return _sample_shape(self.train_images)

    def limited(self, train_images: int | None, val_images: int | None) -> "ImageSplits":
        """The first ``train_images`` / ``val_images`` samples of each split (None: all): the
        same few batches every epoch, for debugging and overfitting checks."""

        def first(images, labels, n):
            if n is None or n >= len(images):
                return images, labels
            if isinstance(images, StreamedImages):
                return StreamedImages(Subset(images.dataset, range(n)), images.shape, images.num_workers,
                                      images.device), labels[:n]
            if isinstance(images, StreamedVectors):
                return images.first(n), labels[:n]
            return images[:n], labels[:n]

        train_x, train_y = first(self.train_images, self.train_labels, train_images)
        val_x, val_y = first(self.val_images, self.val_labels, val_images)
        return replace(self, train_images=train_x, train_labels=train_y, val_images=val_x, val_labels=val_y)

    def to(self, device: torch.device | str) -> "ImageSplits":
        """Train and validation on ``device``; the test split, if any, stays where it is."""
        return replace(
            self,
            train_images=self.train_images.to(device),
            train_labels=self.train_labels.to(device),
            val_images=self.val_images.to(device),
            val_labels=self.val_labels.to(device),
        )


def sample_kind(samples, name: str = "images") -> str:
    """``images`` or ``vectors``; ValueError for anything else (float images, int vectors)."""
    if isinstance(samples, StreamedImages):
        return "images"
    if isinstance(samples, StreamedVectors):
        return "vectors"
    if samples.dtype == torch.uint8 and samples.dim() == 4:
        return "images"
    if samples.dtype in VECTOR_DTYPES and samples.dim() == 2:
        return "vectors"
    raise ValueError(f"{name} must be uint8 images (N, C, H, W) or float vectors (N, D) (float16, bfloat16, float32 "
                     f"or float64), got {samples.dtype} {tuple(samples.shape)}")


def _sample_shape(samples) -> tuple[int, ...]:
    if isinstance(samples, (StreamedImages, StreamedVectors)):
        return tuple(samples.shape)
    return tuple(samples.shape[1:])


def to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 in [0, 255] -> float32 in [0, 1]; float vectors -> float32 as they are (a copy:
    never a view of the stored set)."""
    if images.dtype != torch.uint8:
        return images.to(torch.float32, copy=True)
    return images.to(torch.float32).mul_(1.0 / 255.0)


def carve_validation(images: torch.Tensor, labels: torch.Tensor, n_val: int, seed: int):
    """Split a training set into (train, val) parts: ``n_val`` images chosen by a permutation
    seeded by ``seed`` alone, so every run with the same seed holds out the same images."""
    order = torch.randperm(len(images), generator=torch.Generator().manual_seed(seed))
    val, train = order[:n_val], order[n_val:]
    return images[train], labels[train], images[val], labels[val]


def fraction_split(count: int, val_fraction: float, test_fraction: float, seed: int) -> dict[str, list[int]]:
    """Positions 0..count-1 dealt into ``val``, ``test`` and ``train`` by a permutation seeded by
    ``seed`` alone (each list in that permutation's order): ``val_fraction`` and ``test_fraction``
    of ``count``, each at least one, and at least one left to train. ``count`` >= 3."""
    order = torch.randperm(count, generator=torch.Generator().manual_seed(seed)).tolist()
    n_val = max(1, round(count * val_fraction))
    n_test = max(1, round(count * test_fraction))
    n_val = min(n_val, count - 2)
    n_test = min(n_test, count - 1 - n_val)
    return {"val": order[:n_val], "test": order[n_val : n_val + n_test], "train": order[n_val + n_test :]}


def head(images: torch.Tensor | StreamedImages | StreamedVectors, n: int) -> torch.Tensor:
    """The first ``n`` samples as a tensor (as stored), wherever they live."""
    return images.head(n) if isinstance(images, (StreamedImages, StreamedVectors)) else images[:n]


def epoch_order(images, generator: torch.Generator, device: torch.device) -> torch.Tensor | int:
    """An epoch's order, drawn from ``generator``: a permutation of the samples on ``device``, or
    for streamed vectors the seed of their epoch stream (a permutation of a set larger than
    memory would not fit either)."""
    if isinstance(images, StreamedVectors):
        return int(torch.randint(2**62, (1,), generator=generator))
    return torch.randperm(len(images), generator=generator).to(device)


def index_batches(
    images: torch.Tensor | StreamedImages | StreamedVectors, batch_size: int, order: torch.Tensor | int | None = None,
    start: int = 0,
) -> Iterator[torch.Tensor]:
    """Yield float batches of ``images`` in ``order`` (all of them, the last one short),
    beginning at batch number ``start`` (used when resuming inside an epoch). ``order``: a
    permutation (:func:`epoch_order`), for streamed vectors the seed of an epoch, or None (in order)."""
    n = len(images)
    if isinstance(images, StreamedVectors):
        for chunk in images.batches(batch_size, order, start):
            yield to_float(chunk)
        return
    if isinstance(images, StreamedImages):
        positions = (order if order is not None else torch.arange(n)).tolist()[start * batch_size :]
        for chunk in images.batches(batch_size, positions):
            yield to_float(chunk)
        return
    for begin in range(start * batch_size, n, batch_size):
        if order is None:
            chunk = images[begin : begin + batch_size]
        else:
            chunk = images.index_select(0, order[begin : begin + batch_size])
        yield to_float(chunk)


def num_batches(n: int, batch_size: int) -> int:
    return -(-n // batch_size)
