"""PCA at the model's code size: the best any linear autoencoder can do.

A nonlinear autoencoder should beat it at the same code width, so ``mse_vs_pca`` below 1
is the first thing to check. scikit-learn's PCA is fitted on the training split and scored
on the test split in the same unit as ``test_mse`` (per pixel). ``covariance_eigh`` is
exact and fast when samples far outnumber pixels (60k x 784: about a second); other shapes
go to scikit-learn's automatic choice.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:  # scikit-learn is imported where PCA is fitted: the import costs ~1.5 s
    from sklearn.decomposition import PCA

from aeexp.data.images import to_float


def _flat(images: torch.Tensor) -> np.ndarray:
    return to_float(images).reshape(len(images), -1).numpy()


def fit_pca(train_images: torch.Tensor, components: int, seed: int = 0) -> PCA:
    from sklearn.decomposition import PCA

    x = _flat(train_images)
    components = min(components, *x.shape)
    solver = "covariance_eigh" if x.shape[0] >= 10 * x.shape[1] else "auto"
    return PCA(n_components=components, svd_solver=solver, random_state=seed).fit(x)


def pca_reconstruct(pca: PCA, images: torch.Tensor) -> torch.Tensor:
    """Images projected onto the principal subspace and back, shaped like ``images`` (float)."""
    x = _flat(images)
    return torch.from_numpy(pca.inverse_transform(pca.transform(x))).float().reshape(images.shape)


def pca_mse(pca: PCA, images: torch.Tensor, batch_size: int = 4096) -> float:
    """Test MSE per pixel of the PCA reconstruction (float64 sums)."""
    total = 0.0
    for begin in range(0, len(images), batch_size):
        chunk = images[begin : begin + batch_size]
        total += (pca_reconstruct(pca, chunk) - to_float(chunk)).double().pow(2).sum().item()
    return total / images.numel()
