"""The trainer's validation pass: what ``best.pt``, the scheduler and sweepers look at.

In eval mode (so lifetime sparsity is off, as in the seed), through
:mod:`aeexp.metrics`, the same figures ``evaluate.py`` reports: ``val_mse`` is the mean over
every pixel (or vector entry) of the validation set (reconstruction only), ``val_fvu`` the
fraction of its variance left unexplained (1 - explained variance), ``val_l0`` nonzero code entries
per sample, ``dead_fraction`` features never nonzero over the pass, ``val_mean_activation``
mean |z|, ``firing_rate`` per feature (a tensor, for the histogram). With noise on
validation: ``val_denoise_mse`` (reconstructions of noisy inputs against the clean images)
and ``val_noisy_mse`` (the noisy inputs' own error); the noise comes from a fixed-seed
generator, so it is identical every epoch. With data that knows its true features
(``dataset=sparse_features``), :func:`ground_truth_figures` adds ``mmcs`` and ``recovered_90``.
"""

from __future__ import annotations

from typing import Any

import torch

from aeexp.data.images import index_batches
from aeexp.device import autocast
from aeexp.metrics import DenoisingStats, ReconstructionStats, model_feature_recovery


@torch.no_grad()
def validation_figures(model: torch.nn.Module, images, batch_size: int, device: torch.device, precision: str,
                       noise=None) -> dict[str, Any]:
    model.eval()
    stats = ReconstructionStats()
    for clean in index_batches(images, batch_size):
        with autocast(device, precision):
            x_hat, z = model(clean)
        stats.update(clean, x_hat, z)
    f = stats.figures()
    figures = {"val_mse": f["mse"], "val_fvu": f["fvu"], "val_l0": f["l0"], "dead_fraction": f["dead_fraction"],
               "val_mean_activation": f["mean_activation"], "firing_rate": f["firing_rate"]}
    if noise is not None and noise.active and noise.on_val:
        denoising, generator = DenoisingStats(), noise.val_generator(device)
        for clean in index_batches(images, batch_size):
            noisy = noise(clean, generator)
            with autocast(device, precision):
                x_hat, _ = model(noisy)
            denoising.update(clean, noisy, x_hat)
        f = denoising.figures()
        figures.update(val_denoise_mse=f["mse"], val_noisy_mse=f["noisy_mse"])
    return figures


def ground_truth_figures(model: torch.nn.Module, data, code_size: int) -> dict[str, float]:
    """``mmcs`` and ``recovered_90`` (:func:`aeexp.metrics.feature_recovery`) of the model's
    decoder atoms against the true dictionary of data that has one (``data.ground_truth``,
    ``dataset=sparse_features``); nothing for any other data. A property of the weights, not
    of a split: the same for validation and test."""
    truth = getattr(data, "ground_truth", None)
    return {} if truth is None else model_feature_recovery(model, truth, code_size)


def monitored_metric(monitor: str, noise=None) -> str:
    """``trainer.monitor`` resolved: ``auto`` is ``val_denoise_mse`` for a denoiser (its best
    epoch is its best at denoising, not at copying clean inputs it was not trained for),
    else ``val_mse``."""
    if monitor != "auto":
        return monitor
    return "val_denoise_mse" if noise is not None and noise.active and noise.on_val else "val_mse"


@torch.no_grad()
def validation_codes(model: torch.nn.Module, images, labels: torch.Tensor,
                     batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The codes of the whole validation set, in order (eval mode), and their labels."""
    model.eval()
    codes = [model.encode(clean).float().reshape(len(clean), -1) for clean in index_batches(images, batch_size)]
    return torch.cat(codes), labels
