"""Noise transforms applied to whole batches on the training device.

The trainer corrupts the input and keeps the clean batch as the target, so a denoising
autoencoder is the same training loop with a different transform; ``noise=none`` returns
the batch itself at no cost. Every transform draws from the generator it is given (None:
torch's default generator on the batch's device, which checkpoints save and restore), so
validation can use a fixed-seed generator and see identical noise every epoch.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from aeexp.config import ConfigError, cross_check, require
from aeexp.registry import NOISE


class Noise:
    """Identity; subclasses corrupt. ``active`` says whether there is any corruption at all."""

    active = True

    def __init__(self, on_val: bool = True, val_seed: int = 1234):
        self.on_val, self.val_seed = on_val, val_seed

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return x

    def val_generator(self, device: torch.device) -> torch.Generator:
        """A generator that gives the same validation noise every time it is made."""
        return torch.Generator(device=device).manual_seed(self.val_seed)


@dataclass
class NoNoiseConfig:
    name: str = "none"


@NOISE.register("none", schema=NoNoiseConfig)
class NoNoise(Noise):
    active = False

    def __init__(self):
        super().__init__(on_val=False)


@dataclass
class GaussianNoiseConfig:
    """``std`` is a standard deviation (the first seed's transform took a variance)."""

    name: str = "gaussian"
    std: float = 0.3
    clamp: bool = True
    on_val: bool = True
    val_seed: int = 1234

    def __post_init__(self) -> None:
        require(self.std >= 0, "std", self.std, "a standard deviation >= 0")


@NOISE.register("gaussian", schema=GaussianNoiseConfig)
class GaussianNoise(Noise):
    """x + std * N(0, 1), clamped back to [0, 1] unless ``clamp=false``."""

    def __init__(
        self,
        std: float = GaussianNoiseConfig.std,
        clamp: bool = GaussianNoiseConfig.clamp,
        on_val: bool = GaussianNoiseConfig.on_val,
        val_seed: int = GaussianNoiseConfig.val_seed,
    ):
        super().__init__(on_val, val_seed)
        self.std, self.clamp = std, clamp

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        noise = torch.randn(x.shape, generator=generator, device=x.device, dtype=x.dtype)
        noisy = x + self.std * noise
        return noisy.clamp_(0.0, 1.0) if self.clamp else noisy


@dataclass
class MaskingNoiseConfig:
    name: str = "masking"
    fraction: float = 0.25
    value: float = 0.0
    on_val: bool = True
    val_seed: int = 1234

    def __post_init__(self) -> None:
        require(0.0 <= self.fraction <= 1.0, "fraction", self.fraction, "a fraction in [0, 1]")


def random_pixels(
    x: torch.Tensor, fraction: float, generator: torch.Generator | None, shuffled: bool = False
) -> torch.Tensor:
    """Indices (batch, n) of exactly ``n = round(fraction x pixels)`` distinct random
    entries of each sample: the n smallest of one uniform draw per entry. ``shuffled``
    returns them in random order (sorted by their draw), not in an arbitrary one."""
    flat_size = x[0].numel()
    count = round(fraction * flat_size)
    scores = torch.rand((len(x), flat_size), generator=generator, device=x.device)
    return scores.topk(count, dim=1, largest=False, sorted=shuffled).indices


@NOISE.register("masking", schema=MaskingNoiseConfig)
class MaskingNoise(Noise):
    """Exactly ``fraction`` of each sample's entries set to ``value`` (0: dropped pixels)."""

    def __init__(
        self,
        fraction: float = MaskingNoiseConfig.fraction,
        value: float = MaskingNoiseConfig.value,
        on_val: bool = MaskingNoiseConfig.on_val,
        val_seed: int = MaskingNoiseConfig.val_seed,
    ):
        super().__init__(on_val, val_seed)
        self.fraction, self.value = fraction, value

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        indices = random_pixels(x, self.fraction, generator)
        return x.reshape(len(x), -1).scatter(1, indices, self.value).view_as(x)


@dataclass
class SaltPepperNoiseConfig:
    name: str = "salt_pepper"
    fraction: float = 0.1
    on_val: bool = True
    val_seed: int = 1234

    def __post_init__(self) -> None:
        require(0.0 <= self.fraction <= 1.0, "fraction", self.fraction, "a fraction in [0, 1]")


@NOISE.register("salt_pepper", schema=SaltPepperNoiseConfig)
class SaltPepperNoise(Noise):
    """Exactly ``fraction`` of each sample's entries replaced: half by 0, half by 1."""

    def __init__(
        self,
        fraction: float = SaltPepperNoiseConfig.fraction,
        on_val: bool = SaltPepperNoiseConfig.on_val,
        val_seed: int = SaltPepperNoiseConfig.val_seed,
    ):
        super().__init__(on_val, val_seed)
        self.fraction = fraction

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        indices = random_pixels(x, self.fraction, generator, shuffled=True)
        # The selection is in random order, so its first half is a random half.
        values = torch.ones(indices.shape, dtype=x.dtype, device=x.device)
        values[:, : indices.shape[1] // 2] = 0.0
        return x.reshape(len(x), -1).scatter(1, indices, values).view_as(x)


@cross_check
def monitor_needs_validated_noise(cfg: dict) -> None:
    """``trainer.monitor=val_denoise_mse`` only exists when validation sees noise."""
    noise = cfg["noise"]
    if cfg["trainer"]["monitor"] != "val_denoise_mse" or "_target_" in noise:
        return
    if noise.get("name") == "none" or not noise.get("on_val", True):
        raise ConfigError(
            "trainer.monitor",
            f"got 'val_denoise_mse', but validation sees no noise (noise={noise.get('name')}, "
            f"noise.on_val={noise.get('on_val')}); allowed: auto or val_mse, or turn noise and noise.on_val on",
        )
