"""Datasets (images and vectors), device-resident batching and noise; importing this package registers them."""

from aeexp.data import datasets, image_folder, noise, sparse_features, vectors  # noqa: F401  (registration)
from aeexp.data.datasets import DataNotFoundError
from aeexp.data.images import ImageSplits, index_batches, to_float

__all__ = ["DataNotFoundError", "ImageSplits", "index_batches", "to_float"]
