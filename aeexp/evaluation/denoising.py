"""Denoising on the test split at several noise levels.

The level means what the run's noise type means by it: the standard deviation for
``gaussian``, the fraction of pixels for ``masking`` and ``salt_pepper``; a run trained
without noise is tested with Gaussian noise. Each level reports the reconstruction of the
noisy input against the clean image beside the noisy input's own error (what doing nothing
scores), both as MSE per pixel and PSNR. The noise comes from a fixed-seed generator, so
every run of a sweep sees the same corrupted images.
"""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from aeexp.data.noise import Noise
from aeexp.evaluation.reconstruction import float_batches
from aeexp.metrics import DenoisingStats
from aeexp.registry import NOISE

LEVEL_KEY = {"gaussian": "std", "masking": "fraction", "salt_pepper": "fraction"}


def noise_at(run_noise: DictConfig | dict, level: float, seed: int) -> tuple[str, Noise]:
    """The run's noise type (Gaussian for runs without a built-in one) at ``level``."""
    node = OmegaConf.to_container(run_noise, resolve=True) if isinstance(run_noise, DictConfig) else dict(run_noise)
    if node.get("name") not in LEVEL_KEY or "_target_" in node:
        node = {"name": "gaussian"}
    node.update({LEVEL_KEY[node["name"]]: float(level), "on_val": True, "val_seed": seed})
    return node["name"], NOISE.build(node)


@torch.no_grad()
def denoising_metrics(model: torch.nn.Module, images: torch.Tensor, run_noise: DictConfig, levels: list[float],
                      batch_size: int, device: torch.device, seed: int = 0,
                      progress: bool = True) -> list[dict[str, Any]]:
    model.eval()
    rows = []
    for level in levels:
        kind, noise = noise_at(run_noise, level, seed)
        generator, stats = noise.val_generator(device), DenoisingStats()
        for x in float_batches(images, batch_size, device, f"denoising {kind} {level:g}", progress):
            noisy = noise(x, generator)
            stats.update(x, noisy, model(noisy)[0])
        rows.append({"noise": kind, "level": float(level), **stats.figures()})
    return rows
