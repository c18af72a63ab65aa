"""The baselines beside a run's figures, computed once per data and settings for a whole sweep.

PCA at the model's code size is the best any linear autoencoder can do: a nonlinear
autoencoder should beat it at the same code width, so ``mse_vs_pca`` below 1 is the first
thing to check. scikit-learn's PCA is fitted on the training split and scored on the test
split in the same unit as ``test_mse`` (per pixel). ``covariance_eigh`` is exact and fast when
samples far outnumber pixels (60k x 784: about a second); it decomposes the whole covariance
whatever the number of components, so in that regime one fit keeps every component and PCA
at any code size is its leading rows (one fit per sweep, not one per code size). Other shapes
go to scikit-learn's automatic choice, one fit per code size.

The linear probe on raw pixels is the baseline of the probe on codes; the mean image's error
(``mean_image_mse``) comes with the model's own reconstruction pass, at no extra cost.
:func:`pca_baseline` and :func:`pixel_probe_baseline` go through a
:class:`~aeexp.evaluation.baseline_cache.BaselineCache`, keyed by fingerprints of the tensors
used and the settings that change the result.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
import torch

if TYPE_CHECKING:  # scikit-learn is imported where PCA is fitted: the import costs ~1.5 s
    from sklearn.decomposition import PCA

from aeexp.data.images import to_float
from aeexp.evaluation.baseline_cache import BaselineCache

WHOLE_SPECTRUM_MAX_FEATURES = 2048  # above this the kept (D, D) components would weigh more than 16 MB


def _flat(images: torch.Tensor) -> np.ndarray:
    return to_float(images).reshape(len(images), -1).numpy()


def _solver(x_shape: tuple[int, int]) -> str:
    return "covariance_eigh" if x_shape[0] >= 10 * x_shape[1] else "auto"


def fit_pca(train_images: torch.Tensor, components: int, seed: int = 0) -> PCA:
    from sklearn.decomposition import PCA

    x = _flat(train_images)
    components = min(components, *x.shape)
    return PCA(n_components=components, svd_solver=_solver(x.shape), random_state=seed).fit(x)


@dataclass
class PCABasis:
    """A fitted PCA as tensors: the training mean (D,) and orthonormal components (K, D), by
    decreasing variance. Projection and reconstruction are scikit-learn's (``whiten=False``):
    ``(x - mean) @ components.T @ components + mean``."""

    mean: torch.Tensor
    components: torch.Tensor

    @classmethod
    def of(cls, pca: PCA) -> PCABasis:
        return cls(torch.from_numpy(np.asarray(pca.mean_, dtype=np.float32)),
                   torch.from_numpy(np.asarray(pca.components_, dtype=np.float32)))

    def top(self, k: int) -> PCABasis:
        return PCABasis(self.mean, self.components[:k])

    def reconstruct(self, images: torch.Tensor) -> torch.Tensor:
        """Images projected onto the principal subspace and back, shaped like ``images`` (float)."""
        x = to_float(images).reshape(len(images), -1) - self.mean
        return ((x @ self.components.T) @ self.components + self.mean).reshape(images.shape)

    def mse(self, images: torch.Tensor, batch_size: int = 4096) -> float:
        """MSE per pixel of the reconstruction of ``images`` (float64 sums)."""
        total = 0.0
        for begin in range(0, len(images), batch_size):
            chunk = images[begin : begin + batch_size]
            total += (self.reconstruct(chunk) - to_float(chunk)).double().pow(2).sum().item()
        return total / images.numel()


def pca_reconstruct(pca: PCA | PCABasis, images: torch.Tensor) -> torch.Tensor:
    """Images projected onto the principal subspace and back, shaped like ``images`` (float)."""
    return (pca if isinstance(pca, PCABasis) else PCABasis.of(pca)).reconstruct(images)


def pca_mse(pca: PCA | PCABasis, images: torch.Tensor, batch_size: int = 4096) -> float:
    """Test MSE per pixel of the PCA reconstruction (float64 sums)."""
    return (pca if isinstance(pca, PCABasis) else PCABasis.of(pca)).mse(images, batch_size)


def _basis_key(train: torch.Tensor, train_id: str, code_size: int, seed: int) -> tuple[dict[str, Any], int, bool]:
    """(the key of the fit that serves ``code_size``, its components, whether it is the whole
    spectrum), for training data of shape ``train`` (N, ...)."""
    shape = (len(train), int(np.prod(train.shape[1:])))
    components = min(code_size, *shape)
    whole = _solver(shape) == "covariance_eigh" and shape[1] <= WHOLE_SPECTRUM_MAX_FEATURES
    key = {"train": train_id, "components": "all" if whole else components,
           "solver": _solver(shape), "seed": 0 if whole else seed}  # covariance_eigh draws no random numbers
    return key, components, whole


def pca_basis(cache: BaselineCache, train: torch.Tensor, train_id: str, code_size: int, seed: int) -> PCABasis:
    """PCA at ``code_size`` components fitted on ``train`` (fingerprint ``train_id``), from ``cache``."""
    key, components, whole = _basis_key(train, train_id, code_size, seed)
    values = cache.get("pca_basis", key, lambda: vars(PCABasis.of(
        fit_pca(train, min(train[0].numel(), len(train)) if whole else components, seed))),
        label=f"PCA fit ({'every component' if whole else f'{components} components'})")
    return PCABasis(values["mean"], values["components"]).top(components)


def pca_baseline(cache: BaselineCache, train: torch.Tensor, train_id: str, test: torch.Tensor, test_id: str,
                 code_size: int, seed: int) -> dict[str, Any]:
    """``{"pca_mse", "pca_components"}``: PCA at ``code_size`` scored on ``test``. Only the
    numbers are cached here: a warm cache gives them without loading the fit (or scikit-learn)."""
    key, components, _ = _basis_key(train, train_id, code_size, seed)
    return cache.get("pca_test", {"basis": key, "k": components, "test": test_id}, lambda: {
        "pca_mse": pca_basis(cache, train, train_id, code_size, seed).mse(test), "pca_components": components,
    }, label=f"PCA at {components} components")


def pixel_probe_baseline(cache: BaselineCache, ids: dict[str, str], settings: dict[str, Any],
                         compute: Callable[[], float]) -> float:
    """The linear probe's test accuracy on raw pixels, for data fingerprinted by ``ids`` and probe
    ``settings``; ``compute`` fits it when the cache has none."""
    values = cache.get("pixel_probe", {**ids, **settings}, lambda: {"accuracy": compute()}, label="pixel probe")
    return float(values["accuracy"])
