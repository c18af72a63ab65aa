"""``dataset=vectors``: float vectors (activations, embeddings) from your own files.

``dataset.path`` is a ``.npy``, ``.pt`` or ``.safetensors`` file of shape (N, D), or a
directory of shards of one of those formats (read in name order; :mod:`aeexp.data.vector_files`).
Labels, optional, come from ``dataset.labels_path`` or a ``labels`` tensor inside ``.pt`` /
``.safetensors`` shards; without them every label is 0 (and evaluation skips the probes).
``val_fraction`` and ``test_fraction`` of the rows, chosen by ``split_seed`` alone, validate
and test, as for ``dataset=image_folder``; each split keeps the file order of its rows.

A set whose stored size fits ``max_memory_mb`` is read once and kept on the training device
in its stored dtype; a larger one, or ``stream=true``, is streamed from its shards
(:class:`~aeexp.data.vector_stream.StreamedVectors`: seeded shard order, a shuffle buffer of
``shuffle_buffer`` samples across shards, a prefetch thread; resumable inside an epoch).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np
import torch

from aeexp.config import ConfigError, cross_check, require
from aeexp.data.datasets import DataNotFoundError
from aeexp.data.images import ImageSplits, fraction_split
from aeexp.data.vector_files import VectorSource, check_finite, read_labels
from aeexp.data.vector_stream import StreamedVectors
from aeexp.registry import DATASETS

log = logging.getLogger(__name__)

# Datasets whose samples are vectors (N, D): image-only models and noise are refused on them
# before any data is read. Another vector dataset adds its registered name here.
VECTOR_DATASETS = {"vectors"}
IMAGE_ONLY_MODELS = {"conv"}  # registered models that need (C, H, W) images
CHECK_ROWS = 65536  # rows checked for NaN/inf at a time


@dataclass
class VectorsConfig:
    """``path``: a .npy / .pt / .safetensors file (N, D) or a directory of shards; ``key``: the
    tensor's name inside a .pt dict or .safetensors file (null: ``vectors``, ``activations``,
    ``data``, ``x``, or the only tensor besides ``labels``)."""

    name: str = "vectors"
    path: str = "???"
    labels_path: Optional[str] = None
    key: Optional[str] = None
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    split_seed: int = 0
    stream: Optional[bool] = None
    max_memory_mb: int = 4096
    shuffle_buffer: int = 65536
    prefetch: int = 8

    def __post_init__(self) -> None:
        require(0.0 < self.val_fraction < 1.0, "val_fraction", self.val_fraction, "a fraction in (0, 1)")
        require(0.0 < self.test_fraction < 1.0 and self.val_fraction + self.test_fraction < 1.0, "test_fraction",
                self.test_fraction, f"a fraction in (0, 1) with val_fraction ({self.val_fraction}) + test_fraction < 1")
        require(self.max_memory_mb >= 0, "max_memory_mb", self.max_memory_mb, "megabytes >= 0")
        require(self.shuffle_buffer >= 1, "shuffle_buffer", self.shuffle_buffer,
                "samples >= 1 (memory: shuffle_buffer x D x bytes per value)")
        require(self.prefetch >= 1, "prefetch", self.prefetch, "batches >= 1 read ahead of training")


@DATASETS.register("vectors", schema=VectorsConfig)
def load_vectors(
    path: str = VectorsConfig.path,
    labels_path: Optional[str] = VectorsConfig.labels_path,
    key: Optional[str] = VectorsConfig.key,
    val_fraction: float = VectorsConfig.val_fraction,
    test_fraction: float = VectorsConfig.test_fraction,
    split_seed: int = VectorsConfig.split_seed,
    stream: Optional[bool] = VectorsConfig.stream,
    max_memory_mb: int = VectorsConfig.max_memory_mb,
    shuffle_buffer: int = VectorsConfig.shuffle_buffer,
    prefetch: int = VectorsConfig.prefetch,
) -> ImageSplits:
    source = VectorSource(path, key)
    n = len(source)
    if n < 3:
        raise DataNotFoundError(f"dataset.path={path!r} holds {n} vector(s); at least 3 are needed (train, "
                                "validation and test each need one)")
    labels = read_labels(labels_path, n) if labels_path is not None else source.stored_labels()
    if labels is None:
        labels = torch.zeros(n, dtype=torch.int64)
    parts = {split: np.sort(np.asarray(rows, dtype=np.int64))
             for split, rows in fraction_split(n, val_fraction, test_fraction, split_seed).items()}
    if stream is None:
        stream = source.nbytes() > max_memory_mb * 2**20
    where = f"{path} ({n} x {source.width} {str(source.dtype).replace('torch.', '')}, {len(source.shards)} file(s))"
    notes = dict(name="vectors",
                 val_note=f"{len(parts['val'])} vectors of {path} (val_fraction {val_fraction}, split_seed {split_seed})",
                 test_note=f"{len(parts['test'])} vectors of {path} (test_fraction {test_fraction}, "
                           f"split_seed {split_seed})")
    splits: list[Any] = []
    for split in ("train", "val", "test"):
        rows = parts[split]
        if stream:
            samples: Any = StreamedVectors(source, rows, shuffle_buffer, prefetch)
        else:
            samples = source.gather(rows)  # every row read, so every row is checked for NaN/inf
        splits += [samples, labels[torch.from_numpy(rows)]]
    if stream:
        _check_sample(source)
        log.info("dataset %s: streamed from disk (%s; shuffle buffer %d samples)", where,
                 "dataset.stream=true" if stream is True and source.nbytes() <= max_memory_mb * 2**20
                 else f"{source.nbytes() / 2**20:.0f} MB > dataset.max_memory_mb={max_memory_mb}", shuffle_buffer)
    else:
        log.info("dataset %s: in memory", where)
    return ImageSplits(*splits, **notes)


def _check_sample(source: VectorSource) -> None:
    """Before streaming: the first rows of every shard are read and checked for NaN/inf (the
    rest are checked as they are read)."""
    for index, shard in enumerate(source.shards):
        rows = np.arange(min(shard.rows, CHECK_ROWS), dtype=np.int64)
        check_finite(source.read(index, rows), shard.path, rows)


@cross_check
def check_vector_models(cfg: dict[str, Any]) -> None:
    """On a vector dataset, image-only models and pixel noise are refused before any data is read."""
    dataset, model, noise = cfg.get("dataset") or {}, cfg.get("model") or {}, cfg.get("noise") or {}
    if not isinstance(dataset, dict) or dataset.get("name") not in VECTOR_DATASETS or "_target_" in dataset:
        return
    name = dataset["name"]
    if isinstance(model, dict) and "_target_" not in model and model.get("name") in IMAGE_ONLY_MODELS:
        raise ConfigError("model", f"model={model['name']} needs images (C, H, W), but dataset={name} gives vectors "
                          f"(N, D); allowed: model=fc (or another model that flattens its input)")
    if isinstance(noise, dict) and "_target_" not in noise:
        if noise.get("name") == "salt_pepper":
            raise ConfigError("noise", f"noise=salt_pepper sets values to 0 or 1 (pixels), but dataset={name} gives "
                              "vectors; allowed: noise=none, gaussian (with noise.clamp=false) or masking")
        if noise.get("name") == "gaussian" and noise.get("clamp", True):
            raise ConfigError("noise.clamp", f"got True, which clamps to [0, 1] (pixels), but dataset={name} gives "
                              "vectors; allowed: noise.clamp=false")


def vector_run_notes(cfg: Any) -> None:
    """What a run on vectors does differently, said once at its start."""
    from aeexp.pictures import IMAGE_ONLY_NOTE

    if cfg.trainer.get("image_every"):
        log.info("%s", IMAGE_ONLY_NOTE)
    activation = cfg.model.get("output_activation")
    if activation not in (None, "none"):
        log.warning("model.output_activation=%s on vectors: the decoder's output passes through %s, so a signed "
                    "vector cannot be reconstructed exactly; model.output_activation=none is the usual choice for "
                    "activations", activation, activation)
