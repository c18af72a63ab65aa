"""``dataset=sparse_features``: synthetic activations whose true features are known.

Each sample is a sparse non-negative combination of ``num_features`` unit vectors (the true
dictionary, ``F x d``) plus Gaussian noise::

    x = sum_i a_i f_i + noise_std * eps,   a_i >= 0, most a_i = 0

the toy model of superposition that sparse autoencoders are checked on (Sharkey et al. 2022,
"Taking features out of superposition with sparse autoencoders"; Elhage et al. 2022): with
more features than dimensions no basis recovers them, while a sparse dictionary can. A trained
model's decoder atoms are then compared with the true dictionary
(:func:`aeexp.metrics.feature_recovery`: mean max cosine similarity and the fraction recovered).

Each feature fires independently with probability ``active / num_features`` (or
``probability``), or, with ``correlated: true``, through a Gaussian copula of rank
``correlation_rank``: feature i fires when ``g_i > Phi^-1(1 - p)``, ``g = sqrt(c) L u +
sqrt(1 - c) e`` with ``L`` (F x rank) unit rows, so each feature keeps its firing
probability while features with similar rows of ``L`` fire together (and opposite rows
avoid each other). A firing feature's magnitude is drawn from ``magnitude``: ``uniform``
U(0, 2), ``exponential`` Exp(1) or ``constant`` 1 (each of mean 1).

Everything comes from ``seed``: the dictionary, the copula factors, train, validation and
test each from a stream of their own, so evaluation regenerates the same data and the same
dictionary, the correlated and uncorrelated variants share their dictionary, and the
validation and test sets do not depend on ``num_train``. Labels: none by default (every
label 0, so evaluation skips its probes, as for unlabelled ``dataset=vectors``), or with
``labels: strongest`` the index of each sample's largest activation (``num_features`` when
none fired): F + 1 classes, which makes evaluation's probes slow.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from aeexp.config import require, require_choice
from aeexp.data.images import ImageSplits
from aeexp.data.vectors import VECTOR_DATASETS
from aeexp.registry import DATASETS

VECTOR_DATASETS.add("sparse_features")  # vectors: conv models and pixel noise are refused before any data

MAGNITUDES = ("uniform", "exponential", "constant")
LABELS = ("none", "strongest")
CHUNK = 8192  # samples generated at once (bounds the dense (chunk, F) activation matrix)


@dataclass
class SparseFeaturesConfig:
    """``dim`` (d) dimensions, ``num_features`` (F) true features; ``active`` features per
    sample on average (each fires with probability active / F) unless ``probability`` sets
    that probability directly; ``magnitude`` of a firing feature; ``correlated`` firing
    (a Gaussian copula of rank ``correlation_rank`` and strength ``correlation`` in [0, 1));
    ``noise_std`` Gaussian noise per coordinate; ``labels``: ``none`` (all 0) or ``strongest``
    (each sample's largest feature); ``seed`` decides everything."""

    name: str = "sparse_features"
    dim: int = 256
    num_features: int = 1024
    active: float = 5.0
    probability: Optional[float] = None
    magnitude: str = "uniform"
    correlated: bool = False
    correlation: float = 0.5
    correlation_rank: int = 16
    noise_std: float = 0.01
    num_train: int = 65536
    num_val: int = 8192
    num_test: int = 8192
    labels: str = "none"
    seed: int = 0

    def __post_init__(self) -> None:
        for key in ("dim", "num_features", "num_train", "num_val", "num_test", "correlation_rank"):
            require(getattr(self, key) >= 1, key, getattr(self, key), "an integer >= 1")
        require(0 < self.active <= self.num_features, "active", self.active,
                f"an expected count of active features in (0, num_features={self.num_features}]")
        require(self.probability is None or 0 < self.probability <= 1, "probability", self.probability,
                "null (active / num_features) or a firing probability in (0, 1]")
        require_choice("magnitude", self.magnitude, MAGNITUDES)
        require_choice("labels", self.labels, LABELS)
        require(0 <= self.correlation < 1, "correlation", self.correlation, "a copula strength in [0, 1)")
        require(self.noise_std >= 0, "noise_std", self.noise_std, "a standard deviation >= 0")


@dataclass
class SparseFeatureSet:
    """The generated splits (float32 (N, d)), their labels, and the true dictionary (F, d)."""

    train: torch.Tensor
    train_labels: torch.Tensor
    val: torch.Tensor
    val_labels: torch.Tensor
    test: torch.Tensor
    test_labels: torch.Tensor
    dictionary: torch.Tensor
    firing_probability: float


def _generator(seed: int, stream: int) -> torch.Generator:
    """Stream 0: the dictionary; 1, 2, 3: train, validation, test; 4: the copula factors."""
    return torch.Generator().manual_seed(5 * int(seed) + stream)


def true_dictionary(dim: int, num_features: int, seed: int) -> torch.Tensor:
    """``num_features`` random unit vectors in ``dim`` dimensions, (F, d) float32."""
    g = _generator(seed, 0)
    features = torch.randn(num_features, dim, generator=g)
    return features / features.norm(dim=1, keepdim=True)


def _copula_factors(num_features: int, rank: int, seed: int) -> torch.Tensor:
    """(F, rank) unit rows: features whose rows point the same way fire together."""
    g = _generator(seed, 4)
    factors = torch.randn(num_features, rank, generator=g)
    return factors / factors.norm(dim=1, keepdim=True)


def sample_activations(n: int, num_features: int, probability: float, magnitude: str, g: torch.Generator,
                       factors: torch.Tensor | None = None, correlation: float = 0.0) -> torch.Tensor:
    """(n, F) non-negative activations: each feature fires with ``probability`` (through the
    copula of ``factors`` when given), firing ones get a ``magnitude`` draw."""
    if factors is None:
        fires = torch.rand(n, num_features, generator=g) < probability
    else:
        shared = torch.randn(n, factors.shape[1], generator=g) @ factors.T
        own = torch.randn(n, num_features, generator=g)
        latent = correlation ** 0.5 * shared + (1 - correlation) ** 0.5 * own  # each entry N(0, 1)
        threshold = torch.special.ndtri(torch.tensor(1.0 - probability, dtype=torch.float64)).float()
        fires = latent > threshold
    if magnitude == "uniform":
        values = 2 * torch.rand(n, num_features, generator=g)
    elif magnitude == "exponential":
        values = torch.empty(n, num_features).exponential_(1.0, generator=g)
    else:
        values = torch.ones(n, num_features)
    return values * fires


def _sample_split(n: int, dictionary: torch.Tensor, probability: float, magnitude: str, noise_std: float,
                  g: torch.Generator, factors: torch.Tensor | None, correlation: float, labels: str):
    xs, ys = [], []
    num_features, dim = dictionary.shape
    for begin in range(0, n, CHUNK):
        m = min(CHUNK, n - begin)
        a = sample_activations(m, num_features, probability, magnitude, g, factors, correlation)
        x = a @ dictionary
        if noise_std > 0:
            x += noise_std * torch.randn(m, dim, generator=g)
        strongest, index = a.max(1)
        xs.append(x)
        ys.append(torch.where(strongest > 0, index, num_features) if labels == "strongest"
                  else torch.zeros(m, dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def generate(
    dim: int = SparseFeaturesConfig.dim,
    num_features: int = SparseFeaturesConfig.num_features,
    active: float = SparseFeaturesConfig.active,
    probability: Optional[float] = SparseFeaturesConfig.probability,
    magnitude: str = SparseFeaturesConfig.magnitude,
    correlated: bool = SparseFeaturesConfig.correlated,
    correlation: float = SparseFeaturesConfig.correlation,
    correlation_rank: int = SparseFeaturesConfig.correlation_rank,
    noise_std: float = SparseFeaturesConfig.noise_std,
    num_train: int = SparseFeaturesConfig.num_train,
    num_val: int = SparseFeaturesConfig.num_val,
    num_test: int = SparseFeaturesConfig.num_test,
    labels: str = SparseFeaturesConfig.labels,
    seed: int = SparseFeaturesConfig.seed,
) -> SparseFeatureSet:
    """The three splits and the true dictionary, all determined by the arguments."""
    p = probability if probability is not None else active / num_features
    dictionary = true_dictionary(dim, num_features, seed)
    factors = _copula_factors(num_features, correlation_rank, seed) if correlated else None
    splits = [_sample_split(n, dictionary, p, magnitude, noise_std, _generator(seed, stream), factors, correlation,
                            labels)
              for stream, n in ((1, num_train), (2, num_val), (3, num_test))]
    (train, train_y), (val, val_y), (test, test_y) = splits
    return SparseFeatureSet(train, train_y, val, val_y, test, test_y, dictionary, p)


@DATASETS.register("sparse_features", schema=SparseFeaturesConfig)
def load_sparse_features(**settings) -> ImageSplits:
    """The splits as float32 vectors (N, d), with the true dictionary as ``ground_truth``;
    every key comes from a node checked against :class:`SparseFeaturesConfig` (the defaults
    are :func:`generate`'s, the schema's)."""
    s = generate(**settings)
    expected = s.firing_probability * s.dictionary.shape[0]
    what = f"sparse_features (F={s.dictionary.shape[0]}, {expected:.3g} active per sample)"
    return ImageSplits(s.train, s.train_labels, s.val, s.val_labels, s.test, s.test_labels, name="sparse_features",
                       val_note=f"{len(s.val)} generated validation vectors, {what}",
                       test_note=f"{len(s.test)} generated test vectors, drawn apart from training and validation",
                       ground_truth=s.dictionary)
