"""Reconstruction and latent figures of a split (validation or test), in one pass of the model.

Units: ``test_mse`` is per pixel (PyTorch's mean over every pixel of the set);
``test_sse_per_image`` is the same error summed over an image's pixels (x pixels), the
unit of Hinton & Salakhutdinov 2006; ``test_psnr`` is 10 log10(1 / test_mse) for pixels in
[0, 1]; ``test_fvu`` divides the MSE by the data's variance around its mean image (the
error of always predicting that mean), the normalized MSE of Gao et al. 2024: 1 means the
model learned nothing, 0 is perfect.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from tqdm import tqdm

from aeexp.data.images import to_float


def float_batches(images: torch.Tensor, batch_size: int, device: torch.device, desc: str | None = None,
                  progress: bool = True) -> Iterator[torch.Tensor]:
    """uint8 images in order, as float batches in [0, 1] on ``device``, with a tqdm bar."""
    starts = range(0, len(images), batch_size)
    bar = tqdm(starts, desc=desc, leave=False, dynamic_ncols=True, disable=None if progress and desc else True)
    for begin in bar:
        yield to_float(images[begin : begin + batch_size].to(device))


@torch.no_grad()
def encode_all(model: torch.nn.Module, images: torch.Tensor, batch_size: int, device: torch.device,
               desc: str | None = None, progress: bool = True) -> torch.Tensor:
    """The codes (N, features) of every image, on the CPU, in eval mode."""
    model.eval()
    codes = [model.encode(x).reshape(len(x), -1).float().cpu()
             for x in float_batches(images, batch_size, device, desc, progress)]
    return torch.cat(codes)


def psnr(mse: float) -> float:
    """Peak signal-to-noise ratio in dB for pixels in [0, 1]."""
    return 10.0 * math.log10(1.0 / mse) if mse > 0 else math.inf


@torch.no_grad()
def reconstruction_metrics(model: torch.nn.Module, images: torch.Tensor, batch_size: int,
                           device: torch.device, progress: bool = True,
                           split: str = "test") -> tuple[dict[str, float], torch.Tensor]:
    """Reconstruction and sparsity figures of one split's images (keys ``<split>_mse``, ...),
    and their codes (CPU)."""
    model.eval()
    squared_error = torch.zeros((), dtype=torch.float64)
    pixel_sum = torch.zeros(images.shape[1:], dtype=torch.float64)
    pixel_square_sum = torch.zeros(images.shape[1:], dtype=torch.float64)
    codes = []
    for x in float_batches(images, batch_size, device, f"{split} reconstruction", progress):
        x_hat, z = model(x)
        squared_error += (x_hat.float() - x).pow(2).sum(dtype=torch.float64).cpu()
        pixel_sum += x.sum(0, dtype=torch.float64).cpu()
        pixel_square_sum += x.double().pow(2).sum(0).cpu()
        codes.append(z.reshape(len(z), -1).float().cpu())
    codes = torch.cat(codes)
    n, pixels = len(images), images[0].numel()
    mse = (squared_error / (n * pixels)).item()
    # Variance around the mean image, per pixel: the MSE of predicting the test set's mean.
    variance = ((pixel_square_sum - pixel_sum.pow(2) / n).sum() / (n * pixels)).item()
    fired = (codes != 0).sum(0)
    figures = {
        f"{split}_mse": mse,
        f"{split}_sse_per_image": mse * pixels,
        f"{split}_psnr": psnr(mse),
        f"{split}_fvu": mse / variance if variance > 0 else math.nan,
        f"{split}_l0": (codes != 0).sum(1).double().mean().item(),
    }
    dead = (fired == 0).double().mean().item()
    if split == "test":  # the test split's keep their established names
        figures.update(mean_image_mse=variance, dead_fraction=dead, code_size=codes.shape[1])
    else:
        figures.update({f"{split}_mean_image_mse": variance, f"{split}_dead_fraction": dead})
    return figures, codes
