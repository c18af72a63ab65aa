"""Soft sparsity: penalties added to the loss (``sparsity=l1``, ``sparsity=kl``)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aeexp.config import ConfigError, cross_check, require, require_choice
from aeexp.registry import SPARSITY
from aeexp.sparsity.base import Sparsity, as_matrix


@dataclass
class L1Config:
    name: str = "l1"
    weight: float = 1e-3

    def __post_init__(self) -> None:
        require(self.weight >= 0, "weight", self.weight, "a penalty weight >= 0")


@SPARSITY.register("l1", schema=L1Config)
class L1Sparsity(Sparsity):
    """``weight * mean |z|`` over every code entry (the second seed's sparse autoencoder)."""

    def __init__(self, weight: float = L1Config.weight):
        super().__init__()
        self.weight = weight

    def penalty(self, z: torch.Tensor) -> torch.Tensor:
        return self.weight * z.abs().mean()


@dataclass
class KLConfig:
    """``normalize``: how the code is mapped into (0, 1) before rho_hat is taken.
    ``auto`` uses the code as is when the model's ``code_activation`` is ``sigmoid`` and
    applies a sigmoid otherwise; ``none`` demands a sigmoid code."""

    name: str = "kl"
    weight: float = 1e-2
    rho: float = 0.05
    normalize: str = "auto"

    def __post_init__(self) -> None:
        require(self.weight >= 0, "weight", self.weight, "a penalty weight >= 0")
        require(0 < self.rho < 1, "rho", self.rho, "a target activation in (0, 1)")
        require_choice("normalize", self.normalize, ("auto", "sigmoid", "none"))


def kl_divergence(rho: float, rho_hat: torch.Tensor) -> torch.Tensor:
    """KL(rho || rho_hat) between Bernoulli distributions, elementwise."""
    return rho * torch.log(rho / rho_hat) + (1 - rho) * torch.log((1 - rho) / (1 - rho_hat))


@SPARSITY.register("kl", schema=KLConfig)
class KLSparsity(Sparsity):
    """``weight * mean_j KL(rho || rho_hat_j)``, rho_hat_j the batch mean of feature j.

    rho_hat is clamped to [eps, 1 - eps] so a feature saturated at 0 or 1 gives a large
    finite penalty instead of inf or NaN.
    """

    eps = 1e-6

    def __init__(self, weight: float = KLConfig.weight, rho: float = KLConfig.rho, normalize: str = KLConfig.normalize):
        super().__init__()
        if normalize == "auto":  # resolved by aeexp.config.validate; a direct user gets sigmoid
            normalize = "sigmoid"
        self.weight, self.rho, self.normalize = weight, rho, normalize

    def penalty(self, z: torch.Tensor) -> torch.Tensor:
        code = as_matrix(z).float()
        if self.normalize == "sigmoid":
            code = torch.sigmoid(code)
        rho_hat = code.mean(0).clamp(self.eps, 1 - self.eps)
        return self.weight * kl_divergence(self.rho, rho_hat).mean()


@cross_check
def resolve_kl_normalize(cfg: dict) -> None:
    """``sparsity=kl`` needs a code in (0, 1): decide ``auto``, refuse an unbounded code."""
    sparsity, model = cfg["sparsity"], cfg["model"]
    if sparsity.get("name") != "kl" or "_target_" in sparsity:
        return
    code_activation = model.get("code_activation")
    bounded = code_activation == "sigmoid"
    if sparsity["normalize"] == "auto":
        sparsity["normalize"] = "none" if bounded else "sigmoid"
    elif sparsity["normalize"] == "none" and not bounded:
        raise ConfigError(
            "sparsity.normalize",
            f"got 'none', but the code is not bounded to (0, 1) (model.code_activation="
            f"{code_activation!r}); allowed: set model.code_activation=sigmoid, or "
            "sparsity.normalize=sigmoid (or auto) to map the code into (0, 1) first",
        )
