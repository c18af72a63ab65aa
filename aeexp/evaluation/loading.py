"""The data a trained run is evaluated on: its three splits, loaded once per process.

The model itself comes back through :func:`aeexp.runs.load_run`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace

import torch
from omegaconf import DictConfig, OmegaConf

from aeexp.data.images import ImageSplits
from aeexp.data.vector_stream import StreamedVectors
from aeexp.evaluation.baseline_cache import fingerprint
from aeexp.registry import DATASETS
from aeexp.runs import RunDirError

log = logging.getLogger(__name__)


@dataclass
class EvalData:
    """uint8 images (N, C, H, W) or float vectors (N, D) (``kind``) and labels of the three
    splits; the notes say how the validation and test splits were made. Training used train
    and validation only. ``ground_truth``: the data's true features (F, D), where known
    (``dataset=sparse_features``)."""

    train_images: torch.Tensor
    train_labels: torch.Tensor
    val_images: torch.Tensor
    val_labels: torch.Tensor
    test_images: torch.Tensor
    test_labels: torch.Tensor
    val_note: str
    test_note: str
    kind: str = "images"
    ground_truth: torch.Tensor | None = None
    _fingerprints: dict[str, str] = field(default_factory=dict, repr=False, compare=False)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.train_images.shape[1:])  # type: ignore[return-value]

    @property
    def is_image(self) -> bool:
        return self.kind == "images"

    def fingerprint(self, name: str) -> str:
        """The digest of the tensor ``name`` (``"train_images"``, ``"test_labels"``, ...): what the
        baseline cache is keyed by. Worked out once per loaded data set."""
        if name not in self._fingerprints:
            self._fingerprints[name] = fingerprint(getattr(self, name))
        return self._fingerprints[name]

    def has_classes(self) -> bool:
        """Whether the training labels name at least two classes (unlabelled vectors are all 0)."""
        return len(torch.unique(self.train_labels)) >= 2


_DATA: dict[str, EvalData] = {}


def in_memory_vectors(splits: ImageSplits, dataset: DictConfig) -> ImageSplits:
    """Streamed vectors read into memory for evaluation: validation and test whole, the training
    split (PCA, probes) up to half of ``dataset.max_memory_mb``, its first rows in file order."""
    train = splits.train_images
    row_bytes = math.prod(train.shape) * torch.empty(0, dtype=train.dtype).element_size()
    budget = int(dataset.get("max_memory_mb", 4096)) * 2**20 // 2
    keep = min(len(train), max(1, budget // row_bytes))
    if keep < len(train):
        log.info("evaluation: the first %d of %d training vectors (half of dataset.max_memory_mb) fit the PCA "
                 "baseline and the probes", keep, len(train))
    return replace(splits, train_images=train.materialise(keep), train_labels=splits.train_labels[:keep],
                   val_images=splits.val_images.materialise(), test_images=splits.test_images.materialise())


def load_splits(cfg: DictConfig) -> EvalData:
    """The run's three splits, on the CPU: training images for PCA, probes and kNN, the
    validation split that selected ``best.pt``, and the test split that nothing selected on.
    Loaded sets are kept for the process, so a sweep reads each dataset once."""
    key = OmegaConf.to_yaml(cfg.dataset)
    if key in _DATA:
        return _DATA[key]
    splits = DATASETS.build(cfg.dataset)
    if isinstance(splits.train_images, StreamedVectors):
        splits = in_memory_vectors(splits, cfg.dataset)
    if not all(isinstance(t, torch.Tensor) for t in (splits.train_images, splits.val_images, splits.test_images)):
        raise RunDirError(
            "evaluation keeps the images in memory, but this run streamed them from disk "
            "(dataset.in_memory=false, or larger than dataset.memory_limit_mb)"
        )
    data = EvalData(splits.train_images.cpu(), splits.train_labels.cpu().long(),
                    splits.val_images.cpu(), splits.val_labels.cpu().long(),
                    splits.test_images.cpu(), splits.test_labels.cpu().long(), splits.val_note, splits.test_note,
                    splits.kind, splits.ground_truth)
    _DATA[key] = data
    return data
